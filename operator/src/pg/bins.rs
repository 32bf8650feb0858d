//! Finding the PostgreSQL binary directory: `--pg-bin`/`PG_BIN`, then
//! `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`. Does I/O.

use std::path::{Path, PathBuf};

use super::Error;

/// The directory holding `postgres`, `initdb`, `pg_rewind`, `pg_basebackup`.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(dir) = explicit {
        return check(dir.to_path_buf())
            .ok_or_else(|| Error::BinariesNotFound(format!("{} has no postgres", dir.display())));
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if let Some(d) = check(dir) {
                return Ok(d);
            }
        }
    }
    newest_under(Path::new("/usr/lib/postgresql")).ok_or_else(|| {
        Error::BinariesNotFound(
            "set --pg-bin or PG_BIN, put pg_config on PATH, or install PostgreSQL under /usr/lib/postgresql"
                .into(),
        )
    })
}

fn check(dir: PathBuf) -> Option<PathBuf> {
    dir.join("postgres").is_file().then_some(dir)
}

fn newest_under(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            check(e.path().join("bin")).map(|d| (major, d))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}
