//! The highest lease epoch this agent was told of, kept in
//! `<data dir>.tandem-epoch`: next to the data directory, outside PGDATA, so
//! that a re-clone or a rewind never touches it. Written and fsynced (file
//! and directory) before any answer that depends on it, read at start; a
//! missing file is epoch 0. Does I/O.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What can go wrong with the epoch file.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// It cannot be read, written or synced.
    #[error("lease epoch file {}: {source}", path.display())]
    Io {
        /// The file (or its directory).
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It holds something other than a number: the agent cannot know which
    /// primaries it must not vouch for, so it does not start.
    #[error("lease epoch file {} holds {text:?}, not an epoch; check it and write the highest epoch there", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EpochError + '_ {
    move |source| EpochError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The epoch file of `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    super::bootstrap::sibling(data_dir, ".tandem-epoch")
}

/// The epoch kept in `file`; 0 when there is none.
pub fn load(file: &Path) -> Result<u64, EpochError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(file)(e)),
    };
    text.trim().parse().map_err(|_| EpochError::Corrupt {
        path: file.to_path_buf(),
        text: text.chars().take(64).collect(),
    })
}

/// Keep `epoch` in `file` durably: a synced temporary file renamed over it,
/// then the directory synced, so a crash leaves the old or the new number.
pub fn store(file: &Path, epoch: u64) -> Result<(), EpochError> {
    let tmp = super::bootstrap::sibling(file, ".tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        writeln!(f, "{epoch}").map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, file).map_err(io(file))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_survives_in_its_file_and_a_missing_one_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(&dir.path().join("pgdata"));
        assert_eq!(file, dir.path().join("pgdata.tandem-epoch"));
        assert_eq!(load(&file).unwrap(), 0);
        store(&file, 7).unwrap();
        assert_eq!(load(&file).unwrap(), 7);
        store(&file, 12).unwrap();
        assert_eq!(load(&file).unwrap(), 12);
        std::fs::write(&file, "garbage").unwrap();
        assert!(matches!(load(&file), Err(EpochError::Corrupt { .. })));
    }
}
