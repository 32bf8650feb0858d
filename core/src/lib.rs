//! tandem's domain, with no platform in it: the DbCluster spec and status
//! (`api`), the agent protocol, and the HA engine (`engine`) that decides
//! every transition from observations. Pure: no kube, no tokio, no I/O, no
//! clock; Cargo enforces it, since none of them is a dependency.

pub mod api;
pub mod engine;
