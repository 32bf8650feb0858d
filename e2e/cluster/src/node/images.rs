//! The image table: which local program stands in for a container image, and
//! what the image would have set (entrypoint, cmd, env, user, stop signal,
//! directories of its own filesystem). Pure, no I/O but `resolve_program`.
//!
//! | image repository (any registry, any tag) | entrypoint       | cmd          | user    | stop signal | env                                   |
//! |------------------------------------------|------------------|--------------|---------|-------------|---------------------------------------|
//! | `…/tandem-postgres`                      | `tandem agent`   | –            | 999:999 | SIGINT      | `PG_BIN=<pg_bin>`, `TANDEM_LOG_FORMAT=json` |
//! | `…/tandem-operator`                      | `tandem`         | `operator`   | 65532:65532 | SIGTERM | –                                     |
//!
//! Every image gets `PATH=<pg_bin>:/usr/local/bin:/usr/bin:/bin`; the program
//! `tandem` (bare or `/usr/local/bin/tandem`) is the `tandem` binary of the
//! cluster, any other program is looked up on that PATH on this machine.
//! The postgres image also gets a private, empty `/var/run/postgresql` (its
//! own filesystem has one, owned by the postgres user).

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::config::ClusterConfig;

/// What a known image provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Which table row.
    pub kind: ImageKind,
    /// The image's ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// The image's CMD.
    pub cmd: Vec<String>,
    /// The image's ENV (before the container's env).
    pub env: Vec<(String, String)>,
    /// The image's USER (uid, gid).
    pub user: (u32, u32),
    /// The image's STOPSIGNAL.
    pub stop_signal: Signal,
    /// Directories of the image's filesystem the programs write to: a private
    /// empty directory per container is mounted there.
    pub private_dirs: Vec<&'static str>,
}

/// The rows of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `tandem-postgres`: the instance image.
    Postgres,
    /// `tandem-operator`: the operator image.
    Operator,
}

/// The repository of an image reference without registry, tag and digest:
/// `ghcr.io/tandem-dev/tandem-postgres:17@sha256:…` → `tandem-postgres`.
pub fn repository_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// The PATH every container starts with.
pub fn default_path(cfg: &ClusterConfig) -> String {
    format!("{}:/usr/local/bin:/usr/bin:/bin", cfg.pg_bin.display())
}

/// Look `image` up in the table; `None` for an image the stand-in cannot run.
pub fn lookup(image: &str, cfg: &ClusterConfig) -> Option<Image> {
    let path = ("PATH".to_string(), default_path(cfg));
    match repository_name(image) {
        "tandem-postgres" => Some(Image {
            kind: ImageKind::Postgres,
            entrypoint: vec!["tandem".into(), "agent".into()],
            cmd: Vec::new(),
            env: vec![
                path,
                ("PG_BIN".into(), cfg.pg_bin.display().to_string()),
                ("TANDEM_LOG_FORMAT".into(), "json".into()),
            ],
            user: (999, 999),
            stop_signal: Signal::SIGINT,
            private_dirs: vec!["/var/run/postgresql"],
        }),
        "tandem-operator" => Some(Image {
            kind: ImageKind::Operator,
            entrypoint: vec!["tandem".into()],
            cmd: vec!["operator".into()],
            env: vec![path],
            user: (65532, 65532),
            stop_signal: Signal::SIGTERM,
            private_dirs: Vec::new(),
        }),
        _ => None,
    }
}

/// The argv Kubernetes runs: `command` replaces the entrypoint (and drops the
/// image's cmd), `args` replaces the cmd.
pub fn argv(image: &Image, command: Option<&[String]>, args: Option<&[String]>) -> Vec<String> {
    match (command, args) {
        (Some(c), Some(a)) if !c.is_empty() => c.iter().chain(a).cloned().collect(),
        (Some(c), None) if !c.is_empty() => c.to_vec(),
        (_, Some(a)) => image.entrypoint.iter().chain(a).cloned().collect(),
        _ => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// The host program for argv[0]: `tandem` → the cluster's binary, a path as
/// it is, any other name through `path` (the container's PATH).
pub fn resolve_program(program: &str, path: &str, cfg: &ClusterConfig) -> Option<PathBuf> {
    if program == "tandem" || program == "/usr/local/bin/tandem" {
        return Some(cfg.tandem_bin.clone());
    }
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            dir: "/tmp/kc".into(),
            kube_bin: "/k".into(),
            tandem_bin: "/t/tandem".into(),
            pg_bin: "/usr/lib/postgresql/15/bin".into(),
            self_bin: "/t/tc".into(),
            nodes: vec!["node-1".into()],
            cgroup_root: "/sys/fs/cgroup/unified/x".into(),
            run_as: BTreeMap::new(),
        }
    }

    #[test]
    fn repository_ignores_registry_tag_and_digest() {
        assert_eq!(repository_name("tandem-operator:dev"), "tandem-operator");
        assert_eq!(
            repository_name("ghcr.io/tandem-dev/tandem-postgres:17"),
            "tandem-postgres"
        );
        assert_eq!(
            repository_name("localhost:5000/tandem-postgres@sha256:abc"),
            "tandem-postgres"
        );
        assert_eq!(repository_name("postgres"), "postgres");
    }

    #[test]
    fn postgres_image_runs_the_agent_with_pg_bin_and_sigint() {
        let img = lookup("ghcr.io/tandem-dev/tandem-postgres:17", &cfg()).expect("known");
        assert_eq!(img.kind, ImageKind::Postgres);
        assert_eq!(img.stop_signal, Signal::SIGINT);
        assert!(img
            .env
            .contains(&("PG_BIN".into(), "/usr/lib/postgresql/15/bin".into())));
        assert_eq!(argv(&img, None, None), vec!["tandem", "agent"]);
    }

    #[test]
    fn unknown_image_is_not_in_the_table() {
        assert!(lookup("docker.io/library/nginx:1", &cfg()).is_none());
        assert!(lookup("my-tandem-postgres:1", &cfg()).is_none());
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd_args_replace_cmd() {
        let img = lookup("tandem-operator:dev", &cfg()).expect("known");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&img, None, None), s(&["tandem", "operator"]));
        assert_eq!(
            argv(&img, None, Some(&s(&["crdgen"]))),
            s(&["tandem", "crdgen"])
        );
        assert_eq!(
            argv(&img, Some(&s(&["bash", "-c"])), Some(&s(&["echo hi"]))),
            s(&["bash", "-c", "echo hi"])
        );
        assert_eq!(argv(&img, Some(&s(&["bash"])), None), s(&["bash"]));
    }

    #[test]
    fn tandem_maps_to_the_cluster_binary() {
        let c = cfg();
        assert_eq!(
            resolve_program("tandem", "/bin", &c),
            Some(PathBuf::from("/t/tandem"))
        );
        assert_eq!(
            resolve_program("/usr/local/bin/tandem", "/bin", &c),
            Some(PathBuf::from("/t/tandem"))
        );
        assert_eq!(
            resolve_program("sh", "/nonexistent:/bin", &c),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve_program("no-such-program-x", "/bin", &c), None);
    }
}
