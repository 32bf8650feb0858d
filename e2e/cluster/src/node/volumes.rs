//! A pod's volumes on this machine: PVC → the bound PV's directory (fsGroup
//! ownership, OnRootMismatch honoured), Secret / ConfigMap / projected
//! (service-account token through the TokenRequest API, kube-root-ca.crt,
//! downward API) / downwardAPI → files under the pod's directory kept in sync,
//! emptyDir → a directory per pod, hostPath as it is. I/O (API, files).

use std::collections::BTreeMap;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
    Volume,
};
use kube::api::{Api, PostParams};

use super::atomic::{self, FileData, Payload};
use super::ctx::Ctx;
use super::env;

/// Why a pod's volumes are not ready (the pod waits in ContainerCreating).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Something referenced does not exist (yet) or is not bound.
    #[error("{0}")]
    NotReady(String),
    /// The API failed.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// Local files.
    #[error("{0:#}")]
    Local(#[from] anyhow::Error),
}

/// Where one volume is on this machine.
#[derive(Debug, Clone)]
pub struct VolumeDir {
    /// Host directory (or file).
    pub path: PathBuf,
    /// Always mounted read-only (Secret, ConfigMap, projected, downwardAPI, readOnly claims).
    pub read_only: bool,
}

struct Synced {
    volume: Volume,
    dir: PathBuf,
    token: Option<(String, Instant)>,
}

/// The pod's volumes and what keeps them current.
pub struct PodVolumes {
    /// Volume name → host directory.
    pub dirs: BTreeMap<String, VolumeDir>,
    synced: Vec<Synced>,
    owner_gid: Option<u32>,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Api { what, source }
}

/// Set up every volume of `pod`.
pub async fn prepare(ctx: &Ctx, pod: &Pod, uid: &str) -> Result<PodVolumes, VolumeError> {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let fs_group = super::identity::fs_group(
        spec.and_then(|s| s.security_context.as_ref()),
        &ctx.cfg.run_as,
        &super::identity::HostAccounts,
    );
    let policy = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group_change_policy.as_deref())
        .unwrap_or("Always");
    let base = ctx.pod_dir(uid).join("volumes");
    let mut out = PodVolumes {
        dirs: BTreeMap::new(),
        synced: Vec::new(),
        owner_gid: fs_group,
    };
    for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = base.join(&v.name);
        let entry = if let Some(pvc) = &v.persistent_volume_claim {
            let path = claim_dir(ctx, ns, &pvc.claim_name).await?;
            if let Some(g) = fs_group {
                set_ownership(&path, g, policy == "OnRootMismatch")?;
            }
            VolumeDir {
                path,
                read_only: pvc.read_only == Some(true),
            }
        } else if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io_err(&dir))?;
            if let Some(g) = fs_group {
                set_ownership(&dir, g, true)?;
            }
            VolumeDir {
                path: dir,
                read_only: false,
            }
        } else if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            if matches!(hp.type_.as_deref(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&p).map_err(io_err(&p))?;
            }
            VolumeDir {
                path: p,
                read_only: false,
            }
        } else if v.secret.is_some()
            || v.config_map.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
        {
            let mut s = Synced {
                volume: v.clone(),
                dir: dir.clone(),
                token: None,
            };
            sync_one(ctx, pod, &mut s, fs_group).await?;
            out.synced.push(s);
            VolumeDir {
                path: dir,
                read_only: true,
            }
        } else {
            return Err(VolumeError::NotReady(format!(
                "volume {:?}: this kind of volume is not supported by the test cluster's node",
                v.name
            )));
        };
        out.dirs.insert(v.name.clone(), entry);
    }
    Ok(out)
}

impl PodVolumes {
    /// Rewrite Secret / ConfigMap / projected volumes whose source changed; renew tokens due.
    pub async fn sync(&mut self, ctx: &Ctx, pod: &Pod) -> Result<(), VolumeError> {
        let g = self.owner_gid;
        for s in &mut self.synced {
            sync_one(ctx, pod, s, g).await?;
        }
        Ok(())
    }
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |e| VolumeError::Local(anyhow::anyhow!("{}: {e}", p.display()))
}

/// The directory of the PV bound to claim `name`.
async fn claim_dir(ctx: &Ctx, ns: &str, name: &str) -> Result<PathBuf, VolumeError> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let pvc = pvcs
        .get_opt(name)
        .await
        .map_err(api_err(format!(
            "reading persistentvolumeclaim {ns}/{name}"
        )))?
        .ok_or_else(|| {
            VolumeError::NotReady(format!("persistentvolumeclaim \"{name}\" not found"))
        })?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
    else {
        return Err(VolumeError::NotReady(format!(
            "persistentvolumeclaim \"{name}\" is not bound yet"
        )));
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(api_err(format!("reading persistentvolume {pv_name}")))?
        .ok_or_else(|| {
            VolumeError::NotReady(format!("persistentvolume \"{pv_name}\" not found"))
        })?;
    let spec = pv.spec.as_ref();
    let path = spec
        .and_then(|s| s.host_path.as_ref().map(|h| h.path.clone()))
        .or_else(|| spec.and_then(|s| s.local.as_ref().map(|l| l.path.clone())))
        .ok_or_else(|| {
            VolumeError::NotReady(format!(
                "persistentvolume \"{pv_name}\" is neither hostPath nor local"
            ))
        })?;
    let path = PathBuf::from(path);
    std::fs::create_dir_all(&path).map_err(io_err(&path))?;
    Ok(path)
}

/// fsGroup ownership as the kubelet sets it: group `gid`, group rw (and x +
/// setgid on directories); with `on_root_mismatch` nothing is done when the
/// root already has them.
fn set_ownership(root: &Path, gid: u32, on_root_mismatch: bool) -> Result<(), VolumeError> {
    let md = std::fs::metadata(root).map_err(io_err(root))?;
    let want = 0o2770;
    if on_root_mismatch && md.gid() == gid && md.mode() & want == want {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    let mut budget = 200_000usize;
    while let Some(p) = stack.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.file_type().is_symlink() {
            continue;
        }
        let _ = chown(&p, None, Some(gid));
        let add = if md.is_dir() { 0o2770 } else { 0o660 };
        let _ = std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode((md.mode() & 0o7777) | add),
        );
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    Ok(())
}

/// Secret `ns/name`, `None` when it does not exist.
pub async fn get_secret(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<Secret>, VolumeError> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading secret {ns}/{name}")))
}

/// ConfigMap `ns/name`, `None` when it does not exist.
pub async fn get_config_map(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<Option<ConfigMap>, VolumeError> {
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading configmap {ns}/{name}")))
}

/// A Secret's data decoded.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        m.insert(k.clone(), v.clone().into_bytes());
    }
    m
}

/// A ConfigMap's data and binaryData.
pub fn config_map_data(c: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in c.binary_data.iter().flatten() {
        m.insert(k.clone(), v.0.clone());
    }
    m
}

/// Files for a Secret/ConfigMap source: all keys, or `items`.
fn project(
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    mode: u32,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::NotReady(format!("{what} not found")));
    };
    match items {
        None => {
            for (k, v) in data {
                out.insert(k, FileData { bytes: v, mode });
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(
                            it.path.clone(),
                            FileData {
                                bytes: v.clone(),
                                mode: it.mode.map_or(mode, |m| m as u32),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::NotReady(format!(
                            "{what} has no key {:?}",
                            it.key
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

async fn sync_one(
    ctx: &Ctx,
    pod: &Pod,
    s: &mut Synced,
    fs_group: Option<u32>,
) -> Result<(), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut payload = Payload::new();
    let v = &s.volume;
    let fix = |mode: Option<i32>| -> u32 {
        let m = mode.map_or(0o644, |m| (m as u32) & 0o777);
        if fs_group.is_some() {
            m | 0o040
        } else {
            m
        }
    };
    if let Some(src) = &v.secret {
        let name = src.secret_name.clone().unwrap_or_default();
        let data = get_secret(ctx, ns, &name).await?.map(|s| secret_data(&s));
        project(
            &format!("secret \"{name}\""),
            data,
            src.items.as_ref(),
            src.optional == Some(true),
            fix(src.default_mode),
            &mut payload,
        )?;
    } else if let Some(src) = &v.config_map {
        let data = get_config_map(ctx, ns, &src.name)
            .await?
            .map(|c| config_map_data(&c));
        project(
            &format!("configmap \"{}\"", src.name),
            data,
            src.items.as_ref(),
            src.optional == Some(true),
            fix(src.default_mode),
            &mut payload,
        )?;
    } else if let Some(src) = &v.downward_api {
        for it in src.items.iter().flatten() {
            let bytes = downward(pod, it.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
            payload.insert(
                it.path.clone(),
                FileData {
                    bytes,
                    mode: fix(it.mode.or(src.default_mode)),
                },
            );
        }
    } else if let Some(p) = &v.projected {
        let mode = fix(p.default_mode);
        for src in p.sources.iter().flatten() {
            if let Some(sec) = &src.secret {
                let data = get_secret(ctx, ns, &sec.name)
                    .await?
                    .map(|s| secret_data(&s));
                project(
                    &format!("secret \"{}\"", sec.name),
                    data,
                    sec.items.as_ref(),
                    sec.optional == Some(true),
                    mode,
                    &mut payload,
                )?;
            }
            if let Some(cm) = &src.config_map {
                let data = get_config_map(ctx, ns, &cm.name)
                    .await?
                    .map(|c| config_map_data(&c));
                project(
                    &format!("configmap \"{}\"", cm.name),
                    data,
                    cm.items.as_ref(),
                    cm.optional == Some(true),
                    mode,
                    &mut payload,
                )?;
            }
            if let Some(d) = &src.downward_api {
                for it in d.items.iter().flatten() {
                    let bytes =
                        downward(pod, it.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
                    payload.insert(
                        it.path.clone(),
                        FileData {
                            bytes,
                            mode: it.mode.map_or(mode, |m| m as u32),
                        },
                    );
                }
            }
            if let Some(t) = &src.service_account_token {
                let due = s.token.as_ref().is_none_or(|(_, at)| Instant::now() >= *at);
                if due {
                    s.token = Some(
                        request_token(ctx, pod, t.audience.as_deref(), t.expiration_seconds)
                            .await?,
                    );
                }
                if let Some((tok, _)) = &s.token {
                    payload.insert(
                        t.path.clone(),
                        FileData {
                            bytes: tok.clone().into_bytes(),
                            mode,
                        },
                    );
                }
            }
        }
    }
    atomic::write(&s.dir, &payload, (Some(0), fs_group))?;
    if let Some(g) = fs_group {
        let _ = chown(&s.dir, None, Some(g));
    }
    Ok(())
}

fn downward(pod: &Pod, path: Option<&str>) -> Result<Vec<u8>, VolumeError> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|s| s.parse().ok())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let v = env::field_value(pod, path.unwrap_or(""), ip, crate::config::GATEWAY)
        .map_err(|e| VolumeError::NotReady(e.to_string()))?;
    Ok(v.into_bytes())
}

/// A bound service-account token for `pod`, and when to renew it (80% of its life).
async fn request_token(
    ctx: &Ctx,
    pod: &Pod,
    audience: Option<&str>,
    expiration: Option<i64>,
) -> Result<(String, Instant), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .map_err(api_err(format!(
            "requesting a token for serviceaccount {ns}/{sa}"
        )))?;
    let status = resp.status.ok_or_else(|| {
        VolumeError::NotReady(format!("token request for {ns}/{sa} returned no status"))
    })?;
    let now = jiff::Timestamp::now();
    let life = status
        .expiration_timestamp
        .map_or(600, |t| t.0.duration_since(now).as_secs())
        .max(60) as u64;
    let token = status.token.ok_or_else(|| {
        VolumeError::NotReady(format!("token request for {ns}/{sa} returned no token"))
    })?;
    Ok((token, Instant::now() + Duration::from_secs(life * 8 / 10)))
}
