//! The `DbCluster` custom resource (`tandem.dev/v1alpha1`): kind, names,
//! printer columns and status subresource around the spec and status of
//! `tandem-core`, which knows nothing of Kubernetes.

use std::ops::{Deref, DerefMut};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use tandem_core::api::{DbClusterSpec, DbClusterStatus};

// The spec is `DbClusterSpec` as it is: `CrdSpec` only names it for the
// derive, and `dc.spec.instances` reads through `Deref`.
/// A highly available PostgreSQL cluster: one primary and streaming standbys.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tandem.dev",
    version = "v1alpha1",
    kind = "DbCluster",
    plural = "dbclusters",
    singular = "dbcluster",
    shortname = "dbc",
    namespaced,
    status = "DbClusterStatus",
    category = "tandem",
    doc = "A tandem DbCluster: a highly available PostgreSQL cluster of one primary and streaming standbys.",
    printcolumn = r#"{"name":"Instances","type":"integer","jsonPath":".spec.instances"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readyInstances"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".status.currentPrimary"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.replication.mode"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.maxLagBytes","priority":1,"description":"The largest lag of a standby behind the primary, in bytes"}"#,
    printcolumn = r#"{"name":"Sync","type":"string","jsonPath":".status.syncStates","priority":1,"description":"Each standby's synchronous state as the primary reports it"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct CrdSpec(pub DbClusterSpec);

impl Deref for CrdSpec {
    type Target = DbClusterSpec;

    fn deref(&self) -> &DbClusterSpec {
        &self.0
    }
}

impl DerefMut for CrdSpec {
    fn deref_mut(&mut self) -> &mut DbClusterSpec {
        &mut self.0
    }
}

impl From<DbClusterSpec> for CrdSpec {
    fn from(spec: DbClusterSpec) -> Self {
        Self(spec)
    }
}
