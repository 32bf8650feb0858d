//! `DIR/state.json`: the contract between `tandem local up` and every other
//! tool (the other verbs, tests, scripts). Reads and writes files.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the state file inside DIR.
pub const STATE_FILE: &str = "state.json";

/// What `tandem local up` publishes about a running cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    /// Cluster name (metadata.name of the DbCluster file).
    pub name: String,
    /// Address of the control API of `tandem local up`.
    pub control: SocketAddr,
    /// The rw endpoint: forwards to the current primary.
    pub rw: SocketAddr,
    /// The ro endpoint: forwards to a streaming standby.
    pub ro: SocketAddr,
    /// Superuser credentials.
    pub superuser: Credentials,
    /// Database to connect to.
    pub database: String,
    /// One entry per instance.
    pub instances: Vec<InstanceState>,
    /// PID of the `tandem local up` process.
    #[serde(default)]
    pub pid: u32,
    /// Bearer token of the control API and of the agents.
    #[serde(default)]
    pub token: String,
    /// Replication user credentials.
    #[serde(default)]
    pub replication: Option<Credentials>,
    /// The 127.77.X.0/24 block of the instances' addresses (instance N on
    /// 127.77.X.(N+1)); absent in state files from before per-instance
    /// addresses, whose instances keep sharing 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_block: Option<Ipv4Addr>,
}

/// A user name and password.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct Credentials {
    /// Role name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One local instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceState {
    /// Instance name (`<cluster>-<ordinal>`).
    pub name: String,
    /// The loopback address its postgres and its agent listen on and advertise.
    #[serde(default = "shared_address")]
    pub address: IpAddr,
    /// PostgreSQL port (on `address`).
    pub pg_port: u16,
    /// Agent API address.
    pub agent: SocketAddr,
    /// PostgreSQL data directory.
    pub data_dir: PathBuf,
    /// PID of the instance's agent process (0 while none runs).
    #[serde(default)]
    pub agent_pid: u32,
}

/// The address of instances in state files from before per-instance addresses.
fn shared_address() -> IpAddr {
    super::hosts::SHARED
}

impl InstanceState {
    /// Where its postgres listens.
    pub fn pg_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.pg_port)
    }
}

/// Reading or writing the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no cluster is running in {dir} (start one with tandem local up)")]
    Missing { dir: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid tandem state file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl LocalState {
    /// Path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Load the state file of `dir`.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing {
                    dir: dir.display().to_string(),
                })
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Write the state file atomically with mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        write_private(&path, text.as_bytes()).map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// The instance with this name.
    pub fn instance(&self, name: &str) -> Option<&InstanceState> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// Instance names, comma separated, for error messages.
    pub fn instance_list(&self) -> String {
        self.instances
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Write `bytes` to `path` through a temporary file and a rename, mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_with_the_documented_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState {
            name: "main".into(),
            control: "127.0.0.1:41001".parse().unwrap(),
            rw: "127.0.0.1:41002".parse().unwrap(),
            ro: "127.0.0.1:41003".parse().unwrap(),
            superuser: Credentials {
                user: "postgres".into(),
                password: "secret".into(),
            },
            database: "postgres".into(),
            instances: vec![InstanceState {
                name: "main-0".into(),
                address: "127.77.3.1".parse().unwrap(),
                pg_port: 41010,
                agent: "127.77.3.1:41011".parse().unwrap(),
                data_dir: "/tmp/x".into(),
                agent_pid: 1234,
            }],
            pid: 1,
            token: "t".into(),
            replication: None,
            address_block: Some(Ipv4Addr::new(127, 77, 3, 0)),
        };
        state.save(dir.path()).unwrap();
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(LocalState::path(dir.path())).unwrap())
                .unwrap();
        for key in [
            "name",
            "control",
            "rw",
            "ro",
            "superuser",
            "database",
            "instances",
        ] {
            assert!(raw.get(key).is_some(), "state.json lacks {key}");
        }
        assert_eq!(raw["superuser"]["user"], "postgres");
        assert_eq!(raw["addressBlock"], "127.77.3.0");
        for key in ["name", "address", "pgPort", "agent", "dataDir", "agentPid"] {
            assert!(
                raw["instances"][0].get(key).is_some(),
                "instance lacks {key}"
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(LocalState::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(LocalState::load(dir.path()).unwrap(), state);
        assert!(!format!("{state:?}").contains("secret"));
    }

    #[test]
    fn state_from_before_instance_addresses_keeps_127_0_0_1() {
        let old = r#"{"name": "main", "control": "127.0.0.1:41001",
            "rw": "127.0.0.1:41002", "ro": "127.0.0.1:41003",
            "superuser": {"user": "postgres", "password": "x"}, "database": "postgres",
            "instances": [{"name": "main-0", "pgPort": 41010, "agent": "127.0.0.1:41011",
                           "dataDir": "/tmp/x", "agentPid": 1234}]}"#;
        let st: LocalState = serde_json::from_str(old).unwrap();
        assert_eq!(st.address_block, None);
        assert_eq!(
            st.instances[0].pg_addr(),
            "127.0.0.1:41010".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn missing_state_says_how_to_start_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no cluster is running in"), "{err}");
        assert!(err.contains("tandem local up"), "{err}");
    }
}
