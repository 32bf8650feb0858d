//! The DbCluster API (`tandem.dev/v1alpha1`): the custom resource declared
//! here, and everything else (spec, status, keys, units, the agent protocol)
//! from `tandem-core`, re-exported so that `crate::api::…` names them all.

pub mod crd;

pub use crd::{CrdSpec, DbCluster};
pub use tandem_core::api::*;
