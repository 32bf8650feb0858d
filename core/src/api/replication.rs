//! Replication states as PostgreSQL names them (`pg_stat_wal_receiver.status`,
//! `pg_stat_replication.state` and `sync_state`), typed for the agent protocol
//! and the engine. On the wire they keep PostgreSQL's names; a name this
//! version does not know is kept as it came (`Other`), so an agent of another
//! version is still read. Plain types, no I/O.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An enum of PostgreSQL state names with a catch-all that keeps unknown names.
macro_rules! pg_state {
    (
        $(#[$meta:meta])*
        $name:ident, default = $default:expr,
        { $($(#[$vmeta:meta])* $variant:ident => $wire:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A name this version does not know (or none: empty), kept as sent.
            Other(String),
        }

        impl $name {
            /// PostgreSQL's name of the state.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $default
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($wire => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match $name::from(s.as_str()) {
                    $name::Other(_) => $name::Other(s),
                    known => known,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($name::from)
            }
        }
    };
}

pg_state! {
    /// State of a standby's walreceiver (`pg_stat_wal_receiver.status`).
    WalReceiverState, default = WalReceiverState::Other(String::new()), {
        /// Not running.
        Stopped => "stopped",
        /// Starting up.
        Starting => "starting",
        /// Receiving WAL from its upstream.
        Streaming => "streaming",
        /// Waiting to be told where to stream from.
        Waiting => "waiting",
        /// Restarting the stream.
        Restarting => "restarting",
        /// Shutting down.
        Stopping => "stopping",
    }
}

pg_state! {
    /// State of a walsender serving a standby (`pg_stat_replication.state`).
    WalSenderState, default = WalSenderState::Other(String::new()), {
        /// Starting up.
        Startup => "startup",
        /// Catching up with the primary.
        Catchup => "catchup",
        /// Streaming changes as they happen.
        Streaming => "streaming",
        /// Sending a base backup.
        Backup => "backup",
        /// Shutting down.
        Stopping => "stopping",
    }
}

pg_state! {
    /// How a standby takes part in synchronous replication (`pg_stat_replication.sync_state`).
    SyncState, default = SyncState::Async, {
        /// Not synchronous.
        Async => "async",
        /// Could become synchronous.
        Potential => "potential",
        /// Synchronous (priority-based).
        Sync => "sync",
        /// Member of a quorum (ANY n).
        Quorum => "quorum",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_keep_postgres_names_on_the_wire() {
        let w: WalReceiverState = serde_json::from_str("\"streaming\"").unwrap();
        assert_eq!(w, WalReceiverState::Streaming);
        assert_eq!(serde_json::to_string(&w).unwrap(), "\"streaming\"");
        let s: SyncState = serde_json::from_str("\"quorum\"").unwrap();
        assert_eq!(s, SyncState::Quorum);
        assert_eq!(
            serde_json::to_string(&WalSenderState::Catchup).unwrap(),
            "\"catchup\""
        );
    }

    #[test]
    fn an_unknown_state_from_another_version_is_kept() {
        let w: WalReceiverState = serde_json::from_str("\"dreaming\"").unwrap();
        assert_eq!(w, WalReceiverState::Other("dreaming".into()));
        assert_eq!(serde_json::to_string(&w).unwrap(), "\"dreaming\"");
        let s: SyncState = serde_json::from_str("\"\"").unwrap();
        assert_eq!(s, SyncState::Other(String::new()));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"\"");
    }
}
