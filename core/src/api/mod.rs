//! The DbCluster API (`tandem.dev/v1alpha1`), its label and annotation keys,
//! duration and size values, and the agent protocol shared by the agent and
//! its callers. Plain types: no I/O.

pub mod agent;
pub mod cluster;
pub mod keys;
pub mod replication;
pub mod status;
pub mod transition;
pub mod units;

pub use cluster::*;
pub use replication::{SyncState, WalReceiverState, WalSenderState};
pub use status::*;
pub use transition::{
    DurabilityData, FailoverData, HistoryKind, HistoryOutcome, RejoinData, RestartData,
    SwitchoverData, TransitionData, TransitionKind, TransitionStep,
};
pub use units::{ByteSize, DurationString, Lsn};
