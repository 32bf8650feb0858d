//! Temporary directories for tests: unique names from `tempfile`, readable
//! by the postgres user (mode 0755), removed on drop unless
//! `TANDEM_KEEP_TEST_DIRS` is set. Creates and removes files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Variable that keeps test directories for a look after the run.
pub const KEEP_VAR: &str = "TANDEM_KEEP_TEST_DIRS";

/// A directory under `/tmp` that the postgres user can traverse; removed on drop.
#[derive(Debug)]
pub struct TestDir {
    /// Its path.
    pub path: PathBuf,
}

impl TestDir {
    /// A new directory named `tandem-<prefix>-<random>` under `/tmp`.
    pub fn new(prefix: &str) -> TestDir {
        let path = tempfile::Builder::new()
            .prefix(&format!("tandem-{prefix}-"))
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("create temp dir: {e}"))
            .keep();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod temp dir: {e}"));
        TestDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the directory: its owner removes it (after its own cleanup).
    pub fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_VAR).is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_dirs_with_one_prefix_differ_and_are_removed_on_drop() {
        let a = TestDir::new("kit");
        let b = TestDir::new("kit");
        assert_ne!(a.path, b.path);
        let mode = std::fs::metadata(&a.path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o755));
        let p = a.path.clone();
        drop(a);
        assert!(std::env::var_os(KEEP_VAR).is_some() || !p.exists());
    }
}
