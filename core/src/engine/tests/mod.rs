//! Engine tests: fixtures, unit tests per behaviour, a simulated cluster and property tests.

mod checks;
mod config_slots;
mod drain;
mod durability;
mod failover;
mod fixtures;
mod operations;
mod pause;
mod promote;
mod props;
mod purity;
mod rejoin;
mod rollout;
mod sim;
mod switchover;
mod switchover_refusals;
mod transitions;
