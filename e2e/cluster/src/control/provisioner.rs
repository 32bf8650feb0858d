//! The PV provisioner of the test cluster (`tandem-testcluster provisioner
//! --dir DIR`, started by `up`): applies the default StorageClass `standard`,
//! provisions a hostPath PV on `DIR/volumes/<pv>` for every pending PVC the PV
//! controller hands to it, and deletes a Released PV with its directory. The
//! decisions are pure functions of the objects; `run` does the I/O.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::config::ClusterConfig;

/// The default StorageClass.
pub const STORAGE_CLASS: &str = "standard";
/// The provisioner name in the StorageClass and PV annotations.
pub const PROVISIONER: &str = "tandem.dev/local-dir";
const FIELD_MANAGER: &str = "tandem-testcluster";
/// Set by the PV controller on a claim it leaves to an external provisioner.
const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Marks a PV as dynamically provisioned by us (the PV controller then leaves its deletion to us).
const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The StorageClass `up` relies on: default, ours, Delete, Immediate.
pub fn storage_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        allow_volume_expansion: Some(false),
        ..Default::default()
    }
}

/// The PV name for a claim (as external provisioners name them).
fn pv_name(pvc: &PersistentVolumeClaim) -> Option<String> {
    Some(format!("pvc-{}", pvc.metadata.uid.as_deref()?))
}

/// The PV to create for `pvc`, or `None` when the claim is not ours to serve
/// (another class, already bound, not yet handed over by the PV controller).
pub fn pv_for(pvc: &PersistentVolumeClaim, volumes: &Path) -> Option<PersistentVolume> {
    let spec = pvc.spec.as_ref()?;
    let annotations = pvc.metadata.annotations.as_ref()?;
    let handed_to_us = [ANN_STORAGE_PROVISIONER, ANN_BETA_STORAGE_PROVISIONER]
        .iter()
        .any(|a| annotations.get(*a).map(String::as_str) == Some(PROVISIONER));
    let pending = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
        == "Pending";
    if !handed_to_us
        || !pending
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        || pvc.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let name = pv_name(pvc)?;
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("1Gi".into()));
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(
                ANN_PROVISIONED_BY.to_string(),
                PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), request)])),
            access_modes: spec.access_modes.clone(),
            volume_mode: spec.volume_mode.clone(),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some(STORAGE_CLASS.into()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: pvc.metadata.namespace.clone(),
                name: pvc.metadata.name.clone(),
                uid: pvc.metadata.uid.clone(),
                resource_version: pvc.metadata.resource_version.clone(),
                ..Default::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: volumes.join(&name).to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Whether `pv` is one of ours whose claim is gone (Released or Failed): then
/// its directory and the PV go.
pub fn reclaimable(pv: &PersistentVolume) -> bool {
    let ours = pv.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    ours && delete
        && matches!(phase, Some("Released") | Some("Failed"))
        && pv.metadata.deletion_timestamp.is_none()
}

/// `DIR/volumes/<pv>`, only when the PV's path is exactly that (never delete anything else).
fn volume_dir(pv: &PersistentVolume, volumes: &Path) -> Option<PathBuf> {
    let path = PathBuf::from(&pv.spec.as_ref()?.host_path.as_ref()?.path);
    let expected = volumes.join(pv.metadata.name.as_deref()?);
    (path == expected).then_some(expected)
}

/// Apply the StorageClass (idempotent; a restarted provisioner repairs it).
pub async fn apply_storage_class(client: &Client) -> Result<()> {
    let api: Api<StorageClass> = Api::all(client.clone());
    api.patch(
        STORAGE_CLASS,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(storage_class()),
    )
    .await
    .context("applying StorageClass standard")?;
    Ok(())
}

async fn provision(client: &Client, pvc: &PersistentVolumeClaim, volumes: &Path) -> Result<()> {
    let Some(pv) = pv_for(pvc, volumes) else {
        return Ok(());
    };
    let name = pv.name_any();
    let dir = volumes.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // As the upstream hostPath provisioner: any pod user may write (the node stand-in runs pods as their runAsUser).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let api: Api<PersistentVolume> = Api::all(client.clone());
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(pv = %name, claim = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), "provisioned");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating PV {name}")),
    }
}

async fn reclaim(client: &Client, pv: &PersistentVolume, volumes: &Path) -> Result<()> {
    if !reclaimable(pv) {
        return Ok(());
    }
    let name = pv.name_any();
    if let Some(dir) = volume_dir(pv, volumes) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    let api: Api<PersistentVolume> = Api::all(client.clone());
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(pv = %name, "released volume deleted");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting PV {name}")),
    }
}

enum Event {
    Claim(Box<PersistentVolumeClaim>),
    Volume(Box<PersistentVolume>),
}

/// Run until SIGTERM: apply the StorageClass, then serve claims and reclaim volumes.
pub async fn run(cfg: &ClusterConfig) -> Result<()> {
    let client = super::cluster_api::admin_client(cfg).await?;
    apply_storage_class(&client).await?;
    let volumes = cfg.volumes();
    std::fs::create_dir_all(&volumes).with_context(|| format!("creating {}", volumes.display()))?;
    tracing::info!(class = STORAGE_CLASS, provisioner = PROVISIONER, "serving");

    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects()
    .map_ok(|c| Event::Claim(Box::new(c)));
    let pvs = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects()
    .map_ok(|v| Event::Volume(Box::new(v)));
    let mut events = futures::stream::select(claims.boxed(), pvs.boxed());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        let event = tokio::select! {
            _ = term.recv() => return Ok(()),
            e = events.next() => e,
        };
        let result = match event {
            None => anyhow::bail!("the watches ended"),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watch error (retrying with backoff)");
                Ok(())
            }
            Some(Ok(Event::Claim(pvc))) => provision(&client, &pvc, &volumes).await,
            Some(Ok(Event::Volume(pv))) => reclaim(&client, &pv, &volumes).await,
        };
        // One failure must not stop the loop: the next event or the watch's
        // periodic relist brings the object back.
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), "provisioner step failed");
        }
    }
}

/// The `provisioner` verb: tracing to stdout (its log file), then `run`.
pub fn main(dir: &Path) -> Result<()> {
    tracing_subscriber::fmt().with_ansi(false).init();
    let cfg = ClusterConfig::load(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(&cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeStatus,
        VolumeResourceRequirements,
    };

    fn claim(provisioner: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-main-0".into()),
                namespace: Some("db".into()),
                uid: Some("1234".into()),
                annotations: Some(BTreeMap::from([(
                    ANN_STORAGE_PROVISIONER.to_string(),
                    provisioner.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some(STORAGE_CLASS.into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("2Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pending_claim_of_our_class_gets_a_host_path_pv_bound_to_it() {
        let pv = pv_for(&claim(PROVISIONER), Path::new("/kc/volumes")).unwrap();
        assert_eq!(pv.name_any(), "pvc-1234");
        let spec = pv.spec.unwrap();
        assert_eq!(spec.host_path.unwrap().path, "/kc/volumes/pvc-1234");
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("2Gi".into()));
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!(
            (claim_ref.namespace.as_deref(), claim_ref.uid.as_deref()),
            (Some("db"), Some("1234"))
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some(STORAGE_CLASS));
    }

    #[test]
    fn claims_of_other_provisioners_or_already_bound_are_left_alone() {
        assert!(pv_for(&claim("ebs.csi.aws.com"), Path::new("/v")).is_none());
        let mut bound = claim(PROVISIONER);
        bound.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        assert!(pv_for(&bound, Path::new("/v")).is_none());
    }

    #[test]
    fn only_our_released_volumes_are_reclaimed_and_only_under_volumes() {
        let mut pv = pv_for(&claim(PROVISIONER), Path::new("/kc/volumes")).unwrap();
        assert!(!reclaimable(&pv));
        pv.status = Some(PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..Default::default()
        });
        assert!(reclaimable(&pv));
        assert_eq!(
            volume_dir(&pv, Path::new("/kc/volumes")),
            Some(PathBuf::from("/kc/volumes/pvc-1234"))
        );
        assert_eq!(volume_dir(&pv, Path::new("/elsewhere")), None);
        pv.metadata.annotations = None;
        assert!(!reclaimable(&pv));
    }
}
