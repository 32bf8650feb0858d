//! SQL against postgres with tokio-postgres: connecting (socket or TCP,
//! with a timeout) and the probe queries. Does I/O.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls};

use crate::api::agent::{Downstream, Slot, WalReceiver};
use crate::api::{Lsn, SyncState, WalReceiverState, WalSenderState};

use super::Error;

/// Credentials and address for one connection.
#[derive(Clone, Debug)]
pub struct ConnectOpts<'a> {
    /// Host name, or a socket directory when it starts with `/`.
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub timeout: Duration,
}

/// Connect to database `postgres`; the connection is driven by a spawned task.
/// The application_name of every connection tandem's agents open.
pub const APPLICATION_NAME: &str = "tandem-agent";

pub async fn connect(opts: &ConnectOpts<'_>) -> Result<Client, Error> {
    let mut cfg = tokio_postgres::Config::new();
    if opts.host.starts_with('/') {
        cfg.host_path(Path::new(opts.host));
    } else {
        cfg.host(opts.host);
    }
    cfg.port(opts.port)
        .user(opts.user)
        .dbname("postgres")
        .application_name(APPLICATION_NAME)
        .connect_timeout(opts.timeout);
    if let Some(p) = opts.password {
        cfg.password(p);
    }
    let what = format!("connect to {}:{}", opts.host, opts.port);
    let (client, conn) = tokio::time::timeout(opts.timeout, cfg.connect(NoTls))
        .await
        .map_err(|_| Error::SqlTimeout(what.clone()))?
        .map_err(|source| Error::Sql {
            context: what,
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// A `pg_lsn` column (read in binary, so no text to parse).
fn lsn(v: Option<PgLsn>) -> Option<Lsn> {
    v.map(|l| Lsn(u64::from(l)))
}

fn sql(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Sql {
        context: context.into(),
        source,
    }
}

/// What one probe saw.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub in_recovery: bool,
    pub version: String,
    pub system_identifier: String,
    pub timeline: Option<i64>,
    pub current_lsn: Option<Lsn>,
    pub received_lsn: Option<Lsn>,
    pub replayed_lsn: Option<Lsn>,
    pub receive_replay_gap: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub wal_receiver: Option<WalReceiver>,
    pub downstreams: Vec<Downstream>,
    pub slots: Vec<Slot>,
    pub max_wal_senders: i64,
    pub wal_senders_used: i64,
    pub max_replication_slots: i64,
    pub synchronous_standby_names: String,
    pub synchronous_commit: String,
    pub pending_restart: Vec<String>,
}

/// Timeline from a WAL file name (its first 8 hex digits).
pub fn timeline_of_walfile(name: &str) -> Option<i64> {
    i64::from_str_radix(name.get(..8)?, 16).ok()
}

/// Whether the server is in recovery, and the timeline it is on (a
/// standby's: what its walreceiver receives, else its checkpoint's; a
/// primary's: that of its current WAL file), in one round trip: what a
/// promotion waits on, checked every few milliseconds.
pub async fn recovery_timeline(client: &Client) -> Result<(bool, Option<i64>), Error> {
    let e = || sql("probe recovery");
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
             coalesce((SELECT received_tli::int8 FROM pg_stat_wal_receiver WHERE received_tli > 0), \
                      (SELECT timeline_id::int8 FROM pg_control_checkpoint()))",
            &[],
        )
        .await
        .map_err(e())?;
    let in_recovery: bool = row.try_get(0).map_err(e())?;
    let walfile: Option<String> = row.try_get(1).map_err(e())?;
    let standby_tl: Option<i64> = row.try_get(2).map_err(e())?;
    let timeline = match walfile {
        Some(w) => timeline_of_walfile(&w),
        None => standby_tl,
    };
    Ok((in_recovery, timeline))
}

/// Run every probe query.
pub async fn observe(client: &Client) -> Result<Observation, Error> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('server_version'), \
             (SELECT system_identifier::text FROM pg_control_system()), \
             current_setting('max_wal_senders')::int8, \
             current_setting('max_replication_slots')::int8, \
             current_setting('synchronous_standby_names'), \
             current_setting('synchronous_commit'), \
             (SELECT count(*) FROM pg_stat_replication)::int8, \
             (SELECT timeline_id::int8 FROM pg_control_checkpoint()), \
             ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY name)",
            &[],
        )
        .await
        .map_err(sql("probe settings"))?;
    let mut o = Observation {
        in_recovery: row.try_get(0).map_err(sql("probe settings"))?,
        version: row.try_get(1).map_err(sql("probe settings"))?,
        system_identifier: row.try_get(2).map_err(sql("probe settings"))?,
        max_wal_senders: row.try_get(3).map_err(sql("probe settings"))?,
        max_replication_slots: row.try_get(4).map_err(sql("probe settings"))?,
        synchronous_standby_names: row.try_get(5).map_err(sql("probe settings"))?,
        synchronous_commit: row.try_get(6).map_err(sql("probe settings"))?,
        wal_senders_used: row.try_get(7).map_err(sql("probe settings"))?,
        timeline: row.try_get(8).map_err(sql("probe settings"))?,
        pending_restart: row.try_get(9).map_err(sql("probe settings"))?,
        ..Default::default()
    };
    if o.in_recovery {
        let r = client
            .query_one(
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
                 (pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn())::int8, \
                 CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
                 ELSE extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 END",
                &[],
            )
            .await
            .map_err(sql("probe standby"))?;
        o.received_lsn = lsn(r.try_get(0).map_err(sql("probe standby"))?);
        o.replayed_lsn = lsn(r.try_get(1).map_err(sql("probe standby"))?);
        o.receive_replay_gap = r.try_get(2).map_err(sql("probe standby"))?;
        o.lag_seconds = r.try_get(3).map_err(sql("probe standby"))?;
        if let Some(w) = wal_receiver(client).await? {
            if w.received_tli.is_some() {
                o.timeline = w.received_tli;
            }
            o.wal_receiver = Some(w);
        }
    } else {
        let r = client
            .query_one(
                "SELECT pg_current_wal_lsn(), pg_walfile_name(pg_current_wal_lsn())",
                &[],
            )
            .await
            .map_err(sql("probe primary"))?;
        o.current_lsn = lsn(r.try_get(0).map_err(sql("probe primary"))?);
        let walfile: String = r.try_get(1).map_err(sql("probe primary"))?;
        if let Some(tl) = timeline_of_walfile(&walfile) {
            o.timeline = Some(tl);
        }
        let rows = client
            .query(
                "SELECT application_name, client_addr::text, coalesce(state, ''), \
                 coalesce(sync_state, ''), sent_lsn, write_lsn, flush_lsn, \
                 replay_lsn, extract(epoch from write_lag)::float8, \
                 extract(epoch from flush_lag)::float8, extract(epoch from replay_lag)::float8, \
                 (pg_current_wal_lsn() - replay_lsn)::int8 \
                 FROM pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await
            .map_err(sql("probe replication"))?;
        for r in rows {
            let e = sql("probe replication");
            let d = (|| -> Result<Downstream, tokio_postgres::Error> {
                Ok(Downstream {
                    name: r.try_get(0)?,
                    client_addr: r.try_get(1)?,
                    state: WalSenderState::from(r.try_get::<_, String>(2)?),
                    sync_state: SyncState::from(r.try_get::<_, String>(3)?),
                    sent_lsn: lsn(r.try_get(4)?),
                    write_lsn: lsn(r.try_get(5)?),
                    flush_lsn: lsn(r.try_get(6)?),
                    replay_lsn: lsn(r.try_get(7)?),
                    write_lag_seconds: r.try_get(8)?,
                    flush_lag_seconds: r.try_get(9)?,
                    replay_lag_seconds: r.try_get(10)?,
                    lag_bytes: r.try_get(11)?,
                })
            })()
            .map_err(e)?;
            o.downstreams.push(d);
        }
    }
    let rows = client
        .query(
            "SELECT slot_name::text, active, restart_lsn FROM pg_replication_slots \
             WHERE slot_type = 'physical' ORDER BY slot_name",
            &[],
        )
        .await
        .map_err(sql("probe slots"))?;
    for r in rows {
        o.slots.push(Slot {
            name: r.try_get(0).map_err(sql("probe slots"))?,
            active: r.try_get(1).map_err(sql("probe slots"))?,
            restart_lsn: lsn(r.try_get(2).map_err(sql("probe slots"))?),
        });
    }
    Ok(o)
}

/// The walreceiver of a standby (`pg_stat_wal_receiver`), if one runs.
pub async fn wal_receiver(client: &Client) -> Result<Option<WalReceiver>, Error> {
    let rows = client
        .query(
            "SELECT status, sender_host, sender_port, slot_name, received_tli::int8, \
             extract(epoch from now() - last_msg_receipt_time)::float8 \
             FROM pg_stat_wal_receiver",
            &[],
        )
        .await
        .map_err(sql("probe walreceiver"))?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(WalReceiver {
        status: WalReceiverState::from(
            r.try_get::<_, String>(0)
                .map_err(sql("probe walreceiver"))?,
        ),
        sender_host: r.try_get(1).map_err(sql("probe walreceiver"))?,
        sender_port: r.try_get(2).map_err(sql("probe walreceiver"))?,
        slot_name: r.try_get(3).map_err(sql("probe walreceiver"))?,
        received_tli: r.try_get(4).map_err(sql("probe walreceiver"))?,
        last_message_ago_secs: r.try_get(5).map_err(sql("probe walreceiver"))?,
    }))
}

/// The newest WAL position of a server: current on a primary, received on a standby.
pub async fn head_lsn(client: &Client) -> Result<Option<Lsn>, Error> {
    let r = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
             ELSE pg_current_wal_lsn() END",
            &[],
        )
        .await
        .map_err(sql("head lsn"))?;
    Ok(lsn(r.try_get(0).map_err(sql("head lsn"))?))
}

/// `pg_is_in_recovery()` and the system identifier of a server.
pub async fn identity(client: &Client) -> Result<(bool, String), Error> {
    let r = client
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system())",
            &[],
        )
        .await
        .map_err(sql("identity"))?;
    Ok((
        r.try_get(0).map_err(sql("identity"))?,
        r.try_get(1).map_err(sql("identity"))?,
    ))
}

/// Create a physical slot unless it exists.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<bool, Error> {
    let r = client
        .query_one(
            "SELECT count(*)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("look up slot"))?;
    let n: i64 = r.try_get(0).map_err(sql("look up slot"))?;
    if n > 0 {
        return Ok(false);
    }
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&slot],
        )
        .await
        .map_err(sql("create slot"))?;
    Ok(true)
}

/// `ALTER SYSTEM SET name = value` (or RESET when value is None).
pub async fn alter_system(client: &Client, name: &str, value: Option<&str>) -> Result<(), Error> {
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        || name.is_empty()
    {
        return Err(Error::InvalidParameter(name.to_string()));
    }
    let stmt = match value {
        Some(v) => format!("ALTER SYSTEM SET {name} = {}", super::conf::sql_literal(v)),
        None => format!("ALTER SYSTEM RESET {name}"),
    };
    client
        .batch_execute(&stmt)
        .await
        .map_err(sql(&format!("ALTER SYSTEM {name}")))
}

/// Reload the configuration.
pub async fn reload(client: &Client) -> Result<(), Error> {
    client
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .map(|_| ())
        .map_err(sql("reload"))
}

/// Parameters waiting for a restart.
pub async fn pending_restart(client: &Client) -> Result<Vec<String>, Error> {
    let r = client
        .query_one(
            "SELECT ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY name)",
            &[],
        )
        .await
        .map_err(sql("pending restart"))?;
    r.try_get(0).map_err(sql("pending restart"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_comes_from_walfile_prefix() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000000A"), Some(10));
        assert_eq!(timeline_of_walfile("zz"), None);
    }
}

/// What a rejoin check reads of a running server: its timeline, the newest
/// WAL it holds, the history of its timeline and whether pg_rewind could run on it.
#[derive(Clone, Debug)]
pub struct TimelineReading {
    pub in_recovery: bool,
    pub system_identifier: String,
    pub timeline: i64,
    pub lsn: Option<Lsn>,
    /// The `.history` file of `timeline` (empty on timeline 1 or when absent).
    pub history: String,
    /// `wal_log_hints` or data checksums are on.
    pub rewindable: bool,
}

/// Read [`TimelineReading`] (needs a superuser: it reads `pg_wal/*.history`).
pub async fn timeline_reading(client: &Client) -> Result<TimelineReading, Error> {
    let e = "timeline reading";
    // A standby's timeline: the one it receives on, else the newest of its
    // last restartpoint's and its minimum recovery point's.
    let r = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             (SELECT system_identifier::text FROM pg_control_system()), \
             CASE WHEN pg_is_in_recovery() THEN \
               coalesce((SELECT received_tli::int8 FROM pg_stat_wal_receiver WHERE received_tli > 0), \
                 greatest((SELECT timeline_id::int8 FROM pg_control_checkpoint()), \
                          (SELECT min_recovery_end_timeline::int8 FROM pg_control_recovery()))) \
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4::int8 END, \
             CASE WHEN pg_is_in_recovery() THEN \
               greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
             ELSE pg_current_wal_lsn() END, \
             current_setting('wal_log_hints') = 'on' OR current_setting('data_checksums') = 'on'",
            &[],
        )
        .await
        .map_err(sql(e))?;
    let timeline: i64 = r.try_get(2).map_err(sql(e))?;
    let history = if timeline > 1 {
        let file = format!("pg_wal/{}", super::timeline::history_file(timeline));
        let h = client
            .query_one(
                "SELECT coalesce(pg_read_file($1, 0, 1048576, true), '')",
                &[&file],
            )
            .await
            .map_err(sql(e))?;
        h.try_get(0).map_err(sql(e))?
    } else {
        String::new()
    };
    Ok(TimelineReading {
        in_recovery: r.try_get(0).map_err(sql(e))?,
        system_identifier: r.try_get(1).map_err(sql(e))?,
        timeline,
        lsn: lsn(r.try_get(3).map_err(sql(e))?),
        history,
        rewindable: r.try_get(4).map_err(sql(e))?,
    })
}
