//! The local platform (`tandem local …`): the instances of a DbCluster as
//! local processes (one agent each, supervising a postgres, each instance on
//! a loopback address of its own), the HA engine driving them, a control API,
//! and TCP endpoints standing in for the rw / ro Services. Does I/O.

pub mod apply;
pub mod args;
pub mod cli;
pub mod control;
pub mod driver;
pub mod hosts;
pub mod poll;
pub mod ports;
pub mod procs;
pub mod proxy;
pub mod report;
pub mod requests;
pub mod setup;
pub mod state;
pub mod up;

pub use cli::{run, LocalArgs};
