//! pg_controldata of a data directory, parsed into the fields the agent uses
//! (shutdown state, checkpoint and REDO locations, timeline, system
//! identifier, WAL segment size). Parsing is pure; [`read`] runs the tool.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::api::Lsn;

use super::{Error, Runner, Tool};

/// What pg_controldata says of a data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlData {
    /// "Database cluster state" (`shut down`, `in production`, …).
    pub state: Option<String>,
    /// Latest checkpoint location.
    pub checkpoint_lsn: Option<Lsn>,
    /// Latest checkpoint's REDO location: where crash recovery would start reading.
    pub redo_lsn: Option<Lsn>,
    /// Latest checkpoint's TimeLineID.
    pub timeline: Option<i64>,
    /// Database system identifier.
    pub system_identifier: Option<String>,
    /// Bytes per WAL segment.
    pub wal_segment_size: Option<u64>,
}

impl ControlData {
    /// Parse pg_controldata's output (lines of `Name: value`).
    pub fn parse(out: &str) -> ControlData {
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        ControlData {
            state: field("Database cluster state:"),
            checkpoint_lsn: field("Latest checkpoint location:").and_then(|v| v.parse().ok()),
            redo_lsn: field("Latest checkpoint's REDO location:").and_then(|v| v.parse().ok()),
            timeline: field("Latest checkpoint's TimeLineID:").and_then(|v| v.parse().ok()),
            system_identifier: field("Database system identifier:"),
            wal_segment_size: field("Bytes per WAL segment:").and_then(|v| v.parse().ok()),
        }
    }

    /// Whether the server was shut down cleanly (its last checkpoint is a
    /// shutdown checkpoint and no WAL follows it); None when the state is unknown.
    pub fn clean_shutdown(&self) -> Option<bool> {
        self.state
            .as_deref()
            .map(|s| s == "shut down" || s == "shut down in recovery")
    }
}

/// Run pg_controldata on `data_dir`.
pub async fn read(runner: &Runner, data_dir: &Path) -> Result<ControlData, Error> {
    let args: Vec<OsString> = vec!["-D".into(), data_dir.into()];
    let out = runner
        .run(Tool::PgControldata, &args, None, Duration::from_secs(30))
        .await?;
    Ok(ControlData::parse(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "pg_control version number:            1300\n\
        Database system identifier:           7443035357913399064\n\
        Database cluster state:               in production\n\
        Latest checkpoint location:           0/1500718\n\
        Latest checkpoint's REDO location:    0/15006E0\n\
        Latest checkpoint's REDO WAL file:    000000010000000000000001\n\
        Latest checkpoint's TimeLineID:       1\n\
        Bytes per WAL segment:                16777216\n";

    #[test]
    fn controldata_fields_are_parsed() {
        let c = ControlData::parse(OUT);
        assert_eq!(c.state.as_deref(), Some("in production"));
        assert_eq!(c.checkpoint_lsn, Some(Lsn(0x1500718)));
        assert_eq!(c.redo_lsn, Some(Lsn(0x15006E0)));
        assert_eq!(c.timeline, Some(1));
        assert_eq!(c.system_identifier.as_deref(), Some("7443035357913399064"));
        assert_eq!(c.wal_segment_size, Some(16 << 20));
    }

    #[test]
    fn only_a_shut_down_state_is_clean() {
        let c = |s: &str| ControlData {
            state: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(c("shut down").clean_shutdown(), Some(true));
        assert_eq!(c("shut down in recovery").clean_shutdown(), Some(true));
        assert_eq!(c("in production").clean_shutdown(), Some(false));
        assert_eq!(c("in crash recovery").clean_shutdown(), Some(false));
        assert_eq!(c("shutting down").clean_shutdown(), Some(false));
        assert_eq!(ControlData::default().clean_shutdown(), None);
    }
}
