//! Engine tests: fixtures, unit tests per behaviour, a simulated cluster and property tests.

mod failover;
mod fixtures;
mod operations;
mod rejoin;
mod switchover;
