//! Turning what the local platform sees into the engine's observations: the
//! mapping of an agent's status is shared with Kubernetes ([`crate::platform`]).

pub use crate::platform::report;
