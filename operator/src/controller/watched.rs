//! A DbCluster as the watch delivers it, readable or not (no I/O).
//!
//! The controller lists and watches this type instead of [`DbCluster`]: the
//! API server may store an object the operator cannot deserialize (a schema
//! written by an older or newer operator, a value the schema let through).
//! With the typed list, one such object fails the whole list and no cluster
//! is reconciled; here it becomes one entry whose [`WatchedDbCluster::parsed`]
//! holds the error, reported on that object alone.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::api::DbCluster;

/// Why a stored DbCluster could not be read: the path of the field and the decoder's message.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct Unreadable {
    /// Where in the object decoding failed (for example `spec.switchover.maxLagBytes`).
    pub path: String,
    /// The decoder's error.
    #[source]
    pub source: serde_json::Error,
}

/// A DbCluster from the API server: its metadata always, its typed form when it deserializes.
#[derive(Clone, Debug)]
pub struct WatchedDbCluster {
    /// The object's metadata (what the reflector keys and owner references need).
    pub metadata: ObjectMeta,
    /// The typed object, or why it cannot be read.
    pub parsed: Result<Arc<DbCluster>, Arc<Unreadable>>,
}

impl WatchedDbCluster {
    /// Decode one object from its JSON; fails only when even the metadata is unreadable.
    pub fn from_value(raw: serde_json::Value) -> Result<Self, serde_json::Error> {
        let metadata = match raw.get("metadata") {
            Some(meta) => ObjectMeta::deserialize(meta)?,
            None => ObjectMeta::default(),
        };
        let parsed = serde_path_to_error::deserialize::<_, DbCluster>(raw)
            .map(Arc::new)
            .map_err(|e| {
                Arc::new(Unreadable {
                    path: e.path().to_string(),
                    source: e.into_inner(),
                })
            });
        Ok(Self { metadata, parsed })
    }
}

impl From<DbCluster> for WatchedDbCluster {
    fn from(dc: DbCluster) -> Self {
        Self {
            metadata: dc.metadata.clone(),
            parsed: Ok(Arc::new(dc)),
        }
    }
}

impl<'de> Deserialize<'de> for WatchedDbCluster {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        Self::from_value(raw).map_err(serde::de::Error::custom)
    }
}

impl Resource for WatchedDbCluster {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        DbCluster::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        DbCluster::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        DbCluster::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        DbCluster::plural(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        DbCluster::api_version(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "tandem.dev/v1alpha1",
            "kind": "DbCluster",
            "metadata": {"name": name, "namespace": "db", "uid": format!("uid-{name}")},
            "spec": spec,
        })
    }

    #[test]
    fn one_unreadable_object_does_not_fail_the_list() {
        let list = json!({
            "apiVersion": "tandem.dev/v1alpha1",
            "kind": "DbClusterList",
            "metadata": {"resourceVersion": "7"},
            "items": [
                object("main", json!({"instances": 3})),
                object("bad", json!({"switchover": {"maxLagBytes": null}})),
                object("huge", json!({"failover": {"delay": "99999999999999999999s"}})),
            ],
        });
        // The typed list fails as a whole: what stopped every cluster.
        assert!(serde_json::from_value::<kube::core::ObjectList<DbCluster>>(list.clone()).is_err());
        let watched: kube::core::ObjectList<WatchedDbCluster> =
            serde_json::from_value(list).unwrap();
        let names: Vec<_> = watched
            .items
            .iter()
            .map(|w| (w.metadata.name.clone().unwrap(), w.parsed.is_ok()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("main".to_string(), true),
                ("bad".to_string(), false),
                ("huge".to_string(), false)
            ]
        );
        let Err(bad) = &watched.items[1].parsed else {
            unreachable!()
        };
        assert_eq!(bad.path, "spec.switchover.maxLagBytes");
        let Err(huge) = &watched.items[2].parsed else {
            unreachable!()
        };
        assert_eq!(huge.path, "spec.failover.delay");
        assert!(huge.to_string().contains("is not a duration"), "{huge}");
    }

    #[test]
    fn a_readable_object_keeps_its_typed_form_and_metadata() {
        let w = WatchedDbCluster::from_value(object("main", json!({"instances": 5}))).unwrap();
        assert_eq!(w.metadata.uid.as_deref(), Some("uid-main"));
        let dc = w.parsed.unwrap();
        assert_eq!(dc.spec.instances, 5);
        assert_eq!(WatchedDbCluster::plural(&()), "dbclusters");
        assert_eq!(WatchedDbCluster::api_version(&()), "tandem.dev/v1alpha1");
    }
}
