//! The mounts of one container's mount namespace (volumeMounts with subPath
//! and readOnly, the image's private directories, a private /tmp, the pod's
//! /etc/hosts and /etc/resolv.conf), ordered parents first, and their mount
//! points: a missing mount point is created on this machine (the container
//! shares its root filesystem) and recorded in `<node dir>/mountpoints` for
//! `down` to remove. I/O for the mount points only.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Container;

use super::launch::{Mount, MountKind};
use super::volumes::PodVolumes;

/// The pod files every container gets: (source, target).
pub struct PodFiles {
    /// The pod's hosts file.
    pub hosts: PathBuf,
    /// The pod's resolv.conf (no nameserver but the pod's own loopback).
    pub resolv: PathBuf,
}

/// The mounts of `container`, parents before children.
pub fn container_mounts(
    container: &Container,
    vols: &PodVolumes,
    files: &PodFiles,
    private: &[(String, PathBuf)],
) -> Result<Vec<Mount>> {
    let mut out = vec![Mount {
        kind: MountKind::Tmpfs,
        target: "/tmp".into(),
        read_only: false,
    }];
    for (target, source) in private {
        out.push(Mount {
            kind: MountKind::Bind(source.clone()),
            target: target.into(),
            read_only: false,
        });
    }
    for vm in container.volume_mounts.iter().flatten() {
        let Some(v) = vols.dirs.get(&vm.name) else {
            bail!("volumeMount {:?}: the pod has no such volume", vm.name);
        };
        let mut source = v.path.clone();
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if !super::atomic::valid_relative(sub) {
                bail!("volumeMount {:?}: invalid subPath {sub:?}", vm.name);
            }
            source = source.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .with_context(|| format!("creating subPath {}", source.display()))?;
            }
        }
        if !Path::new(&vm.mount_path).is_absolute() {
            bail!("volumeMount {:?}: mountPath must be absolute", vm.name);
        }
        out.push(Mount {
            kind: MountKind::Bind(source),
            target: normalize(&vm.mount_path),
            read_only: vm.read_only == Some(true) || v.read_only,
        });
    }
    let user_targets: Vec<PathBuf> = out.iter().map(|m| m.target.clone()).collect();
    for (src, target) in [
        (&files.hosts, "/etc/hosts"),
        (&files.resolv, "/etc/resolv.conf"),
    ] {
        if !user_targets.iter().any(|t| t == Path::new(target)) {
            out.push(Mount {
                kind: MountKind::Bind(src.clone()),
                target: target.into(),
                read_only: false,
            });
        }
    }
    out.sort_by_key(|m| m.target.components().count());
    Ok(out)
}

fn normalize(p: &str) -> PathBuf {
    Path::new(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Make sure every mount target exists: inside an earlier mount's source when
/// it lies under that mount, else on this machine (recorded in `record`).
pub fn ensure_mount_points(mounts: &[Mount], record: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        let is_file = match &m.kind {
            MountKind::Bind(src) => src.is_file(),
            MountKind::Tmpfs => false,
        };
        // The deepest earlier mount containing this target.
        let parent = mounts[..i]
            .iter()
            .filter(|p| m.target.starts_with(&p.target) && p.target != m.target)
            .max_by_key(|p| p.target.components().count());
        match parent {
            Some(p) => {
                let MountKind::Bind(src) = &p.kind else {
                    // Under a tmpfs the mount point cannot be made from outside.
                    continue;
                };
                let rel = m.target.strip_prefix(&p.target).unwrap_or(Path::new(""));
                let host = src.join(rel);
                create(&host, is_file)?;
            }
            None => {
                if let Some(created) = create(&m.target, is_file)? {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(record)
                        .with_context(|| format!("opening {}", record.display()))?;
                    writeln!(f, "{}", created.display())?;
                }
            }
        }
    }
    Ok(())
}

/// Create `path` (a directory, or an empty file) and missing parents; the
/// topmost path created, if any.
fn create(path: &Path, is_file: bool) -> Result<Option<PathBuf>> {
    if path.exists() {
        return Ok(None);
    }
    let mut top = path.to_path_buf();
    while let Some(parent) = top.parent() {
        if parent.exists() {
            break;
        }
        top = parent.to_path_buf();
    }
    if is_file {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating mount point {}", parent.display()))?;
        }
        std::fs::File::create(path)
            .with_context(|| format!("creating mount point {}", path.display()))?;
    } else {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating mount point {}", path.display()))?;
    }
    Ok(Some(top))
}

/// Remove the recorded mount points that are still empty (for `down`): deepest first.
pub fn remove_recorded(record: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    let mut paths: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    paths.dedup();
    for p in paths {
        if remove_empty(Path::new(p)) {
            removed.push(p.to_string());
        }
    }
    let _ = std::fs::remove_file(record);
    removed
}

/// Remove `p` when it is an empty file or a tree of empty directories.
fn remove_empty(p: &Path) -> bool {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return false;
    };
    if md.is_file() {
        return md.len() == 0 && std::fs::remove_file(p).is_ok();
    }
    if !md.is_dir() {
        return false;
    }
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            remove_empty(&e.path());
        }
    }
    std::fs::remove_dir(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_created_recorded_and_removed() {
        let base = std::env::temp_dir().join(format!("tk-mounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("vol")).expect("vol");
        std::fs::write(base.join("hosts"), "x").expect("hosts");
        let record = base.join("record");
        let mounts = vec![
            Mount {
                kind: MountKind::Bind(base.join("vol")),
                target: base.join("root/data"),
                read_only: false,
            },
            Mount {
                kind: MountKind::Bind(base.join("vol")),
                target: base.join("root/data/inner"),
                read_only: false,
            },
            Mount {
                kind: MountKind::Bind(base.join("hosts")),
                target: base.join("etc/hosts"),
                read_only: false,
            },
        ];
        ensure_mount_points(&mounts, &record).expect("ensure");
        assert!(base.join("root/data").is_dir());
        // The nested one goes inside the first mount's source.
        assert!(base.join("vol/inner").is_dir());
        assert!(base.join("etc/hosts").is_file());
        let text = std::fs::read_to_string(&record).expect("record");
        assert!(text.contains(&base.join("root").display().to_string()));
        let removed = remove_recorded(&record);
        assert_eq!(removed.len(), 2);
        assert!(!base.join("root").exists());
        assert!(!base.join("etc").exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
