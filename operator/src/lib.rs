//! tandem: a Kubernetes operator for highly available primary/standby
//! PostgreSQL clusters, and the same HA engine on local processes.

pub mod agent;
pub mod api;
pub mod controller;
pub mod crdgen;
pub use tandem_core::engine;
pub mod kubectl;
pub mod local;
pub mod logging;
pub mod pg;
pub mod platform;
