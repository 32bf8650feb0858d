//! Files in the data directory the agent owns: postgresql.conf and
//! pg_hba.conf (rewritten at every start, since clones and rewinds copy the
//! source's), postgresql.auto.conf entries, standby.signal, the upstream
//! record, and the password file. Does I/O.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::api::agent::Member;

use super::{Error, Runner};

/// Where the agent records which member a standby follows.
pub const UPSTREAM_FILE: &str = "tandem.upstream.json";
/// Where the agent records the parameters it was last given as a whole. In
/// the data directory, so that a clone or a rewind copies it together with
/// the postgresql.auto.conf it describes.
pub const PARAMETERS_FILE: &str = "tandem.parameters.json";

/// The parameters recorded in `data_dir` (empty when none were recorded yet,
/// `None` when the data directory does not exist).
pub fn read_parameters(data_dir: &Path) -> Option<std::collections::BTreeMap<String, String>> {
    if !data_dir.is_dir() {
        return None;
    }
    Some(
        std::fs::read_to_string(data_dir.join(PARAMETERS_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
    )
}

/// Settings every instance needs; the operator's file may add to them.
pub fn postgresql_conf(include: Option<&Path>) -> String {
    let mut s = String::from(
        "# Written by the tandem agent at every start: edits here are lost.\n\
         # Instance settings (port, listen_addresses, sockets) are on postgres' command line.\n\
         wal_level = replica\n\
         hot_standby = on\n\
         wal_log_hints = on\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         wal_keep_size = '128MB'\n\
         password_encryption = 'scram-sha-256'\n\
         hot_standby_feedback = on\n\
         logging_collector = off\n\
         # A standby whose upstream went away (a crash restarted in place, a\n\
         # switchover, a failover) connects again within this, not the 5s\n\
         # default: under sync replication the primary's commits wait for it.\n\
         wal_retrieve_retry_interval = '200ms'\n\
         # A shutdown waits until every connected standby confirmed the\n\
         # shutdown checkpoint: a hung standby holds a switchover's stop (and\n\
         # its write pause) until its walsender gives up, after this rather\n\
         # than the 60s default. An idle standby answers the keepalive sent at\n\
         # half of it.\n\
         wal_sender_timeout = '5s'\n",
    );
    if let Some(p) = include {
        s.push_str(&format!(
            "include_if_exists = {}\n",
            quote(&p.to_string_lossy())
        ));
    }
    s
}

/// pg_hba.conf: password (SCRAM) everywhere, replication for the replication user.
pub fn pg_hba_conf(superuser: &str, replication_user: &str) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', ""));
    let mut s = String::from("# Written by the tandem agent at every start.\n");
    s.push_str("local all all scram-sha-256\n");
    for net in ["0.0.0.0/0", "::/0"] {
        s.push_str(&format!(
            "host replication {} {net} scram-sha-256\n",
            q(replication_user)
        ));
        s.push_str(&format!(
            "host replication {} {net} scram-sha-256\n",
            q(superuser)
        ));
        s.push_str(&format!("host all all {net} scram-sha-256\n"));
    }
    s
}

/// A postgresql.conf string literal.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// An SQL string literal (standard_conforming_strings: only quotes are doubled).
pub fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A libpq conninfo value.
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `primary_conninfo` for streaming from `primary` as `application_name`; the password comes from the passfile.
pub fn primary_conninfo(
    primary: &Member,
    user: &str,
    application_name: &str,
    passfile: Option<&Path>,
) -> String {
    let mut s = format!(
        "host={} port={} user={} application_name={} connect_timeout=5 sslmode=prefer",
        conninfo_value(&primary.host),
        primary.port,
        conninfo_value(user),
        conninfo_value(application_name)
    );
    if let Some(p) = passfile {
        s.push_str(&format!(
            " passfile={}",
            conninfo_value(&p.to_string_lossy())
        ));
    }
    s
}

/// Write `content` to `path` (mode 0600, owned by the run-as user).
pub fn write_owned(runner: &Runner, path: &Path, content: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tandem-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Error::io(&tmp))?;
        f.write_all(content.as_bytes()).map_err(Error::io(&tmp))?;
    }
    runner.chown(&tmp)?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// Set (Some) or remove (None) entries of postgresql.auto.conf while postgres is stopped.
pub fn edit_auto_conf(
    runner: &Runner,
    data_dir: &Path,
    entries: &[(&str, Option<String>)],
) -> Result<(), Error> {
    let path = data_dir.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    let mut out: Vec<String> = old
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            !entries.iter().any(|(k, _)| k.eq_ignore_ascii_case(key))
        })
        .map(str::to_string)
        .collect();
    for (k, v) in entries {
        if let Some(v) = v {
            out.push(format!("{k} = {}", quote(v)));
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    write_owned(runner, &path, &text)
}

/// Make the data directory a standby of `primary`, or (None) a primary.
pub fn set_standby(
    runner: &Runner,
    data_dir: &Path,
    primary: Option<(&Member, String, String)>,
) -> Result<(), Error> {
    let signal = data_dir.join("standby.signal");
    let upstream = data_dir.join(UPSTREAM_FILE);
    match primary {
        Some((member, conninfo, slot)) => {
            edit_auto_conf(
                runner,
                data_dir,
                &[
                    ("primary_conninfo", Some(conninfo)),
                    ("primary_slot_name", Some(slot)),
                ],
            )?;
            write_owned(runner, &signal, "")?;
            let json = serde_json::to_string(member).unwrap_or_default();
            write_owned(runner, &upstream, &json)
        }
        None => {
            edit_auto_conf(
                runner,
                data_dir,
                &[("primary_conninfo", None), ("primary_slot_name", None)],
            )?;
            remove_if_exists(&signal)?;
            remove_if_exists(&upstream)
        }
    }
}

/// The member this data directory follows, as recorded by the agent.
pub fn read_upstream(data_dir: &Path) -> Option<Member> {
    let text = std::fs::read_to_string(data_dir.join(UPSTREAM_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Record the upstream without touching anything else (postgres running).
pub fn write_upstream(runner: &Runner, data_dir: &Path, member: &Member) -> Result<(), Error> {
    let json = serde_json::to_string(member).unwrap_or_default();
    write_owned(runner, &data_dir.join(UPSTREAM_FILE), &json)
}

/// Whether the data directory is set up as a standby.
pub fn is_standby(data_dir: &Path) -> bool {
    data_dir.join("standby.signal").exists()
}

/// Whether the data directory holds an initialised cluster.
pub fn is_initialized(data_dir: &Path) -> bool {
    data_dir.join("PG_VERSION").is_file() && data_dir.join("global/pg_control").is_file()
}

/// Remove a file; fine when it is not there.
pub fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// One `.pgpass` line matching any host, port and database.
pub fn passfile_line(user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password))
}

/// Count `*.ready` files in pg_wal/archive_status.
pub fn archive_ready_count(data_dir: &Path) -> Option<i64> {
    let dir: PathBuf = data_dir.join("pg_wal").join("archive_status");
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
            .count() as i64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_escapes_colons_and_backslashes() {
        assert_eq!(passfile_line("u", "a:b\\c"), "*:*:*:u:a\\:b\\\\c\n");
    }

    #[test]
    fn conninfo_quotes_values_and_never_holds_a_password() {
        let m = Member {
            name: "x".into(),
            host: "h'1".into(),
            port: 5,
            agent_url: None,
        };
        let c = primary_conninfo(&m, "rep", "db-1", Some(Path::new("/p")));
        assert!(c.contains("host='h\\'1'"));
        assert!(c.contains("passfile='/p'"));
        assert!(!c.contains("password"));
    }

    #[test]
    fn standbys_retry_their_upstream_within_a_fraction_of_a_second() {
        assert!(postgresql_conf(None).contains("wal_retrieve_retry_interval = '200ms'"));
    }

    #[test]
    fn a_hung_standby_holds_a_shutdown_for_seconds_not_a_minute() {
        assert!(postgresql_conf(None).contains("wal_sender_timeout = '5s'"));
    }

    #[test]
    fn conf_strings_double_single_quotes() {
        assert_eq!(quote("it's"), "'it''s'");
    }
}
