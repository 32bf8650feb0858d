//! Engine tests: fixtures, unit tests per behaviour, a simulated cluster and property tests.

mod drain;
mod failover;
mod fixtures;
mod operations;
mod promote;
mod props;
mod purity;
mod rejoin;
mod rollout;
mod sim;
mod switchover;
mod switchover_refusals;
mod transitions;
