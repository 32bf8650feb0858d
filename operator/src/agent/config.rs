//! The agent's resolved configuration: flags plus the secrets read from
//! their files, the binary directory and the run-as user. Reads files once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::agent::Member;
use crate::pg::{bins, RunAs};

use super::{AgentArgs, AgentError, ConfigError};

/// Everything the agent needs, parsed once at startup.
#[derive(Clone)]
pub struct Config {
    pub cluster: String,
    pub instance: String,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub pg_listen: String,
    pub listen: SocketAddr,
    pub advertise_host: String,
    pub token: String,
    pub superuser: String,
    pub superuser_password: String,
    pub replication_user: String,
    pub replication_password: String,
    pub bootstrap_from: Option<Member>,
    pub pg_config_file: Option<PathBuf>,
    pub bin_dir: PathBuf,
    pub run_as: Option<RunAs>,
    pub run_dir: PathBuf,
    pub run_dir_owned: bool,
    pub archive_ready_warning: i64,
    pub archive_ready_critical: i64,
    pub lag_warning_bytes: i64,
    pub lag_critical_bytes: i64,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub probe_interval: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cluster", &self.cluster)
            .field("instance", &self.instance)
            .field("data_dir", &self.data_dir)
            .field("pg_port", &self.pg_port)
            .finish_non_exhaustive()
    }
}

fn secret(
    what: &'static str,
    file: Option<&Path>,
    value: Option<&String>,
) -> Result<Option<String>, AgentError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        let text = text.trim_end_matches(['\n', '\r']).to_string();
        if text.is_empty() {
            return Err(ConfigError::EmptySecret {
                what,
                path: path.to_path_buf(),
            }
            .into());
        }
        return Ok(Some(text));
    }
    Ok(value.filter(|v| !v.is_empty()).cloned())
}

/// `host:port` to a member; the name is given or the host's first DNS label.
pub fn parse_member(address: &str, name: Option<&str>) -> Result<Member, AgentError> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::NotHostPort {
            address: address.to_string(),
        })?;
    let port: u16 = port.parse().map_err(|_| ConfigError::BadPort {
        address: address.to_string(),
    })?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = match name {
        Some(n) if !n.is_empty() => n.to_string(),
        _ if host.parse::<std::net::IpAddr>().is_ok() => address.to_string(),
        _ => host.split('.').next().unwrap_or(&host).to_string(),
    };
    Ok(Member {
        name,
        host,
        port,
        agent_url: None,
    })
}

impl Config {
    /// Resolve flags: read secret files, find binaries, pick the run-as user.
    pub fn from_args(a: &AgentArgs) -> Result<Config, AgentError> {
        let token = secret("token", a.token_file.as_deref(), a.token.as_ref())?.ok_or(
            ConfigError::MissingSecret {
                flag: "--token-file",
                env: "TANDEM_TOKEN",
            },
        )?;
        let superuser_password = secret(
            "superuser password",
            a.superuser_password_file.as_deref(),
            a.superuser_password.as_ref(),
        )?
        .ok_or(ConfigError::MissingSecret {
            flag: "--superuser-password-file",
            env: "TANDEM_SUPERUSER_PASSWORD",
        })?;
        let replication_password = secret(
            "replication password",
            a.replication_password_file.as_deref(),
            a.replication_password.as_ref(),
        )?
        .ok_or(ConfigError::MissingSecret {
            flag: "--replication-password-file",
            env: "TANDEM_REPLICATION_PASSWORD",
        })?;
        let bootstrap_from = match a.bootstrap_from.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(addr) => Some(parse_member(addr, a.bootstrap_from_name.as_deref())?),
        }
        // One StatefulSet template serves every ordinal: the instance it names
        // as the bootstrap source is the one that runs initdb.
        .filter(|m| !names_me(&a.instance, &a.advertise_host, a.pg_port, m));
        let bin_dir = bins::find_bin_dir(a.pg_bin.as_deref())?;
        let run_as = match (&a.run_as, nix::unistd::geteuid().is_root()) {
            (Some(u), _) if !u.is_empty() => Some(RunAs::lookup(u)?),
            (_, true) => Some(RunAs::lookup("postgres")?),
            _ => None,
        };
        let (run_dir, run_dir_owned) = match &a.run_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("tandem-agent-{}", std::process::id())),
                true,
            ),
        };
        let data_dir = if a.data_dir.is_absolute() {
            a.data_dir.clone()
        } else {
            std::env::current_dir()
                .map_err(ConfigError::CurrentDir)?
                .join(&a.data_dir)
        };
        if a.archive_ready_warning > a.archive_ready_critical {
            return Err(ConfigError::ArchiveThresholds.into());
        }
        Ok(Config {
            cluster: a.cluster.clone(),
            instance: a.instance.clone(),
            data_dir,
            pg_port: a.pg_port,
            pg_listen: a.pg_listen.clone(),
            listen: a.listen,
            advertise_host: a.advertise_host.clone(),
            token,
            superuser: a.superuser.clone(),
            superuser_password,
            replication_user: a.replication_user.clone(),
            replication_password,
            bootstrap_from,
            pg_config_file: a.pg_config_file.clone(),
            bin_dir,
            run_as,
            run_dir,
            run_dir_owned,
            archive_ready_warning: a.archive_ready_warning,
            archive_ready_critical: a.archive_ready_critical,
            lag_warning_bytes: a.lag_warning_bytes,
            lag_critical_bytes: a.lag_critical_bytes,
            stop_timeout: a.stop_timeout.duration(),
            start_timeout: a.start_timeout.duration(),
            probe_interval: a.probe_interval.duration().max(Duration::from_millis(50)),
        })
    }

    /// This instance as a member.
    pub fn me(&self) -> Member {
        Member {
            name: self.instance.clone(),
            host: self.advertise_host.clone(),
            port: self.pg_port,
            agent_url: None,
        }
    }

    /// Whether `m` names this very instance.
    pub fn is_me(&self, m: &Member) -> bool {
        names_me(&self.instance, &self.advertise_host, self.pg_port, m)
    }
}

/// Whether `m` names the instance `instance` reachable at `host:port`.
pub fn names_me(instance: &str, host: &str, port: u16, m: &Member) -> bool {
    let local = |h: &str| h == "localhost" || h == "127.0.0.1";
    m.name == instance || (m.port == port && (m.host == host || (local(&m.host) && local(host))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_address_names_the_member_by_its_first_dns_label() {
        let m = parse_member("main-0.main-pods.ns.svc:5432", None).unwrap();
        assert_eq!((m.name.as_str(), m.port), ("main-0", 5432));
        let m = parse_member("127.0.0.1:7000", Some("db-0")).unwrap();
        assert_eq!(m.name, "db-0");
        assert!(parse_member("nohost", None).is_err());
    }

    #[test]
    fn a_member_is_me_by_name_or_by_address() {
        let m = |name: &str, host: &str, port| Member {
            name: name.into(),
            host: host.into(),
            port,
            agent_url: None,
        };
        let me = |x: &Member| names_me("c-0", "c-0.c-pods.ns.svc", 5432, x);
        assert!(me(&m("c-0", "elsewhere", 1)));
        assert!(me(&m("x", "c-0.c-pods.ns.svc", 5432)));
        assert!(!me(&m("c-1", "c-1.c-pods.ns.svc", 5432)));
        assert!(!me(&m("c-1", "c-0.c-pods.ns.svc", 5433)));
        assert!(names_me("a", "127.0.0.1", 7, &m("b", "localhost", 7)));
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::agent::AgentArgs,
    }

    /// The configuration of instance `instance` of cluster main, as its pod would get it.
    fn pod_config(instance: &str, bootstrap_from: &str) -> Config {
        use clap::Parser;
        let host = format!("{instance}.main-pods.ns.svc");
        let cli = Cli::try_parse_from([
            "tandem-agent",
            "--cluster",
            "main",
            "--instance",
            instance,
            "--data-dir",
            "/tmp/tandem-config-test/pgdata",
            "--advertise-host",
            &host,
            "--pg-port",
            "5432",
            "--token",
            "t",
            "--superuser-password",
            "s",
            "--replication-password",
            "r",
            "--bootstrap-from",
            bootstrap_from,
        ])
        .unwrap();
        Config::from_args(&cli.args).unwrap()
    }

    #[test]
    fn the_instance_named_as_bootstrap_source_initialises_and_the_others_clone() {
        // The StatefulSet gives every pod the same source: ordinal 0's address.
        let source = "main-0.main-pods.ns.svc:5432";
        assert_eq!(
            pod_config("main-0", source).bootstrap_from,
            None,
            "main-0 runs initdb"
        );
        let from = pod_config("main-1", source)
            .bootstrap_from
            .expect("main-1 clones");
        assert_eq!((from.name.as_str(), from.port), ("main-0", 5432));
    }
}
