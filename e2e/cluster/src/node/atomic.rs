//! The kubelet's atomic writer for Secret, ConfigMap, projected and
//! downwardAPI volumes: the files live in a timestamped `..<ts>` directory,
//! `..data` links to the current one and each top-level name links through
//! `..data`, so a running pod sees an update all at once. I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    /// Content.
    pub bytes: Vec<u8>,
    /// Mode bits (e.g. 0o644).
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileData>;

const DATA: &str = "..data";

/// A relative path without `..`, not absolute, not starting with `..`.
pub fn valid_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with("..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Bring `dir` to `payload`; files owned by `owner` (uid, gid). Returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload, owner: (Option<u32>, Option<u32>)) -> Result<bool> {
    for p in payload.keys() {
        if !valid_relative(p) {
            bail!("invalid file path {p:?} in volume {}", dir.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if current(dir).as_ref() == Some(payload) {
        return Ok(false);
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let ts = dir.join(&stamp);
    std::fs::create_dir(&ts).with_context(|| format!("creating {}", ts.display()))?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    for (rel, f) in payload {
        let path = ts.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
        chown(&path, owner.0, owner.1).with_context(|| format!("chown {}", path.display()))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA)).context("switching ..data")?;
    let tops: BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA}/{t}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale_stamp = name.starts_with("..") && name != DATA && name != stamp;
        let stale_link = !name.starts_with("..") && !tops.contains(&name);
        if stale_stamp {
            let _ = std::fs::remove_dir_all(e.path());
        } else if stale_link {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(true)
}

/// What `dir/..data` holds now.
fn current(dir: &Path) -> Option<Payload> {
    let data = dir.join(DATA);
    if !data.exists() {
        return None;
    }
    let mut out = Payload::new();
    walk(&data, "", &mut out).ok()?;
    Some(out)
}

fn walk(base: &Path, prefix: &str, out: &mut Payload) -> std::io::Result<()> {
    for e in std::fs::read_dir(base.join(prefix))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let md = e.metadata()?;
        if md.is_dir() {
            walk(base, &rel, out)?;
        } else {
            out.insert(
                rel,
                FileData {
                    bytes: std::fs::read(e.path())?,
                    mode: md.permissions().mode() & 0o7777,
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_content_and_removes_stale_names() {
        let dir = std::env::temp_dir().join(format!("tk-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = |s: &str| FileData {
            bytes: s.as_bytes().to_vec(),
            mode: 0o440,
        };
        let p1 = Payload::from([("a".into(), f("1")), ("sub/b".into(), f("2"))]);
        assert!(write(&dir, &p1, (None, None)).expect("first"));
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).expect("b"), "2");
        assert!(!write(&dir, &p1, (None, None)).expect("same"));
        let p2 = Payload::from([("a".into(), f("3"))]);
        assert!(write(&dir, &p2, (None, None)).expect("second"));
        assert_eq!(std::fs::read_to_string(dir.join("a")).expect("a"), "3");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        let stamps = std::fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(stamps, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_cannot_escape() {
        assert!(valid_relative("a/b"));
        assert!(!valid_relative("../x"));
        assert!(!valid_relative("/etc/x"));
        assert!(!valid_relative("a/../../x"));
        assert!(!valid_relative("..data"));
    }
}
