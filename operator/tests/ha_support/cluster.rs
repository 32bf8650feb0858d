//! A local cluster under test: `tandem local up` in a temporary directory,
//! the other verbs as the CLI runs them, status polling with timeouts, a
//! failure dump when the test panics, and a cleanup that leaves no process
//! or directory behind, even on failure.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_testkit::{
    pid_alive, poll_until, postmaster_pid, signal, signal_server, wait_exit, TestDir, POLL,
};

use super::writer::Target;

/// The tandem binary built for these tests.
pub fn tandem() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

/// A running local cluster.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub manifest: PathBuf,
    up: Option<Child>,
    log_filter: String,
}

impl LocalCluster {
    /// Write a DbCluster named `name` with `spec` (YAML, indented by two) and run `tandem local up`.
    pub fn start(name: &str, spec: &str) -> Self {
        Self::start_with_log(name, spec, "info,tandem=debug,hyper=warn,reqwest=warn")
    }

    /// As `start`, with the given TANDEM_LOG filter for `local up` and its agents.
    pub fn start_with_log(name: &str, spec: &str, log_filter: &str) -> Self {
        // Removed by `cleanup`, after every process in it is gone.
        let base = TestDir::new(&format!("ha-{name}")).keep();
        let manifest = base.join("cluster.yaml");
        let text = format!("apiVersion: tandem.dev/v1alpha1\nkind: DbCluster\nmetadata:\n  name: {name}\nspec:\n{spec}\n");
        std::fs::write(&manifest, text).expect("write manifest");
        let mut c = LocalCluster {
            dir: base.join("cluster"),
            manifest,
            up: None,
            log_filter: log_filter.to_string(),
        };
        c.spawn_up();
        c
    }

    /// Start `tandem local up` (again) on the same directory.
    pub fn spawn_up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_file_name("up.log"))
            .expect("open up.log");
        let child = Command::new(tandem())
            .args(["local", "up", "-f"])
            .arg(&self.manifest)
            .arg("--dir")
            .arg(&self.dir)
            .env("TANDEM_LOG_FILTER", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tandem local up");
        self.up = Some(child);
    }

    /// SIGKILL the `tandem local up` process (its agents keep running, as pods outlive an operator).
    pub fn kill_up(&mut self) {
        if let Some(mut c) = self.up.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `tandem local <verb> --dir DIR <args>`, to run.
    pub fn command(&self, verb: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tandem());
        cmd.arg("local")
            .arg(verb)
            .arg("--dir")
            .arg(&self.dir)
            .args(args);
        cmd
    }

    /// Run `tandem local <verb> --dir DIR <args>`.
    pub fn cli(&self, verb: &str, args: &[&str]) -> Output {
        self.command(verb, args).output().expect("run tandem local")
    }

    /// `tandem local status --json`, or None when it fails.
    pub fn status(&self) -> Option<Value> {
        let out = self.cli("status", &["--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// state.json.
    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("state.json")).expect("state.json");
        serde_json::from_str(&text).expect("state.json parses")
    }

    /// Poll status until `pred` holds; panics with the last status after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let found = poll_until(timeout, POLL, || {
            let s = self.status()?;
            if pred(&s) {
                return Some(s);
            }
            last = Some(s);
            None
        });
        if let Some(s) = found {
            return s;
        }
        // The logs follow in the failure dump.
        panic!(
            "timed out after {timeout:?} waiting for {what}; last status:\n{}",
            last.map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_else(|| "none".into()),
        );
    }

    /// Wait until the cluster is Healthy with `n` instances streaming.
    pub fn wait_healthy(&self, timeout: Duration) -> Value {
        self.wait_for("a healthy cluster", timeout, |s| {
            s["phase"] == "Healthy"
                && s["transition"].is_null()
                && s["instances"].as_array().is_some_and(|a| {
                    a.iter().all(|i| {
                        i["status"] == "running"
                            && (i["role"] == "primary"
                                || i["role"] == "standby"
                                || i["role"] == "learner")
                    })
                })
        })
    }

    /// The current primary's name.
    pub fn primary(&self) -> Option<String> {
        self.status()
            .and_then(|s| s["primary"].as_str().map(str::to_string))
    }

    /// The rw endpoint as a writer target.
    pub fn rw(&self) -> Target {
        let st = self.state();
        let rw = st["rw"].as_str().expect("rw");
        self.target_at(rw)
    }

    /// A target connecting to `addr` (host:port) as the superuser.
    pub fn target_at(&self, addr: &str) -> Target {
        let st = self.state();
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        Target {
            host: host.to_string(),
            port: port.parse().expect("port"),
            user: st["superuser"]["user"]
                .as_str()
                .unwrap_or("postgres")
                .to_string(),
            password: st["superuser"]["password"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            dbname: st["database"].as_str().unwrap_or("postgres").to_string(),
        }
    }

    /// A target connecting straight to instance `name`'s postgres.
    pub fn direct(&self, name: &str) -> Target {
        let st = self.state();
        let port = st["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name))
            .and_then(|i| i["pgPort"].as_u64())
            .expect("instance port");
        self.target_at(&format!("127.0.0.1:{port}"))
    }

    /// The agent pid of `name` from state.json.
    pub fn agent_pid(&self, name: &str) -> i32 {
        let st = self.state();
        st["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name))
            .and_then(|i| i["agentPid"].as_i64())
            .unwrap_or(0) as i32
    }

    /// The postmaster pid of `name`, if it runs.
    pub fn postgres_pid(&self, name: &str) -> Option<i32> {
        postmaster_pid(&self.dir.join(name).join("pgdata")).filter(|p| pid_alive(*p))
    }

    fn cleanup(&mut self) {
        if self.dir.join("state.json").exists() {
            let _ = Command::new(tandem())
                .args(["local", "down", "--dir"])
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.up.take() {
            wait_exit(&mut c, Duration::from_secs(60));
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever is left (a frozen agent, an orphaned postgres): kill it.
        if let Ok(text) = std::fs::read_to_string(self.dir.join("state.json")) {
            if let Ok(st) = serde_json::from_str::<Value>(&text) {
                for i in st["instances"].as_array().cloned().unwrap_or_default() {
                    let pid = i["agentPid"].as_i64().unwrap_or(0) as i32;
                    if pid_alive(pid) {
                        signal(pid, Signal::SIGCONT);
                        signal(pid, Signal::SIGKILL);
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.filter_map(|e| e.ok()) {
                if let Some(pid) =
                    postmaster_pid(&e.path().join("pgdata")).filter(|p| pid_alive(*p))
                {
                    // The whole server: a frozen child would outlive its postmaster.
                    signal_server(pid, Signal::SIGCONT);
                    signal_server(pid, Signal::SIGKILL);
                }
            }
        }
        if std::env::var_os("TANDEM_KEEP_TEST_DIRS").is_none() {
            if let Some(parent) = self.dir.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", super::dump::failure_dump(&self.dir));
        }
        self.cleanup();
    }
}

/// stdout and stderr of a CLI run, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Names of instances whose role is `role`.
pub fn with_role(status: &Value, role: &str) -> Vec<String> {
    status["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["role"] == role)
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
