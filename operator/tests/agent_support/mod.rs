//! Test support for the agent's integration tests: agents as
//! separate `tandem agent` processes (killed with their directories on
//! drop) and SQL helpers; free ports, temp directories, process checks and
//! signals, log tails and bounded waits come from the testkit. Does I/O.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use tandem::agent::client::AgentClient;
use tandem::api::agent::{AgentStatus, Member};
use tandem::api::WalReceiverState;
pub use tandem_testkit::{free_port, is_postgres, pid_alive, wait_for, TestDir};
use tandem_testkit::{last_lines, poll_until_async, signal, terminate, POLL};
use tokio_postgres::{Client, NoTls};

pub const TOKEN: &str = "test-token-0123456789";
pub const SUPERUSER_PASSWORD: &str = "su:pa\\ss'word";
pub const REPLICATION_PASSWORD: &str = "repl-secret";

/// One `tandem agent` process.
pub struct AgentProc {
    pub name: String,
    pub pg_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub client: AgentClient,
    child: Option<Child>,
    args: Vec<String>,
}

impl AgentProc {
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            host: "127.0.0.1".into(),
            port: self.pg_port,
            agent_url: Some(self.url()),
        }
    }

    /// The agent API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The postmaster pid from postmaster.pid, if the file is there.
    pub fn postmaster_pid(&self) -> Option<i32> {
        tandem_testkit::postmaster_pid(&self.data_dir)
    }

    /// SQL connection to this instance's postgres as the superuser.
    pub async fn sql(&self) -> Client {
        connect(self.pg_port)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.name, self.log_text()))
    }

    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "--- last log of {} ---\n{}",
            self.name,
            last_lines(&text, 100)
        )
    }

    pub async fn status(&self) -> AgentStatus {
        self.client
            .status()
            .await
            .unwrap_or_else(|e| panic!("status of {}: {e}\n{}", self.name, self.log_text()))
    }

    /// Wait until the agent reports postgres ready in `role` ("primary"/"standby").
    pub async fn wait_ready(&self, role: &str, timeout: Duration) -> AgentStatus {
        let client = &self.client;
        let ready = poll_until_async(timeout, POLL, || async move {
            let st = client.status().await.ok()?;
            let r = serde_json::to_value(st.role).unwrap_or_default();
            let streaming = st
                .wal_receiver
                .as_ref()
                .is_some_and(|w| w.status == WalReceiverState::Streaming);
            (st.ready && r == role && (role != "standby" || streaming)).then_some(st)
        })
        .await;
        ready.unwrap_or_else(|| {
            panic!(
                "{} not ready as {role} after {timeout:?}\n{}",
                self.name,
                self.log_text()
            )
        })
    }

    /// SIGKILL the agent process (postgres must follow it).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the agent process again with the same arguments.
    pub fn respawn(&mut self) {
        self.kill_agent();
        self.child = Some(spawn(&self.args, &self.log));
    }

    /// Stop the agent (SIGTERM, then SIGKILL), and make sure its postgres is gone.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(20));
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            if pid_alive(pid) && is_postgres(pid) {
                signal(pid, Signal::SIGKILL);
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open agent log");
    let err = out.try_clone().expect("clone log handle");
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_TOKEN", TOKEN)
        .env("TANDEM_SUPERUSER_PASSWORD", SUPERUSER_PASSWORD)
        .env("TANDEM_REPLICATION_PASSWORD", REPLICATION_PASSWORD)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn tandem agent")
}

/// A test cluster: its directory and its agents (agents are dropped first).
pub struct Cluster {
    pub agents: Vec<AgentProc>,
    pub dir: TestDir,
    pub config_file: PathBuf,
}

impl Cluster {
    pub fn new(prefix: &str) -> Cluster {
        let dir = TestDir::new(prefix);
        let config_file = dir.path.join("test.conf");
        std::fs::write(
            &config_file,
            "fsync = off\nfull_page_writes = on\nshared_buffers = 16MB\nmax_connections = 40\n\
             max_wal_size = 64MB\nmin_wal_size = 32MB\nwal_keep_size = 64MB\n\
             checkpoint_timeout = 300s\nlog_min_messages = warning\n\
             wal_receiver_status_interval = 1s\nwal_retrieve_retry_interval = 1s\n",
        )
        .expect("write test.conf");
        Cluster {
            agents: Vec::new(),
            dir,
            config_file,
        }
    }

    /// Start an agent; it clones from agent `from` (an index) or initdb's when None.
    pub fn add(&mut self, name: &str, from: Option<usize>, extra: &[&str]) -> usize {
        let pg_port = free_port();
        let http_port = free_port();
        let inst_dir = self.dir.path.join(name);
        std::fs::create_dir_all(&inst_dir).expect("mkdir instance dir");
        std::fs::set_permissions(&inst_dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod instance dir");
        let data_dir = inst_dir.join("pgdata");
        let log = self.dir.path.join(format!("{name}.log"));
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--cluster".into(),
            "t".into(),
            "--instance".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--pg-port".into(),
            pg_port.to_string(),
            "--pg-listen".into(),
            "127.0.0.1".into(),
            "--listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--advertise-host".into(),
            "127.0.0.1".into(),
            "--pg-config-file".into(),
            self.config_file.display().to_string(),
            "--stop-timeout".into(),
            "10s".into(),
            "--run-dir".into(),
            inst_dir.join("run").display().to_string(),
        ];
        if let Some(i) = from {
            let p = &self.agents[i];
            args.push("--bootstrap-from".into());
            args.push(format!("127.0.0.1:{}", p.pg_port));
            args.push("--bootstrap-from-name".into());
            args.push(p.name.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn(&args, &log);
        let client =
            AgentClient::new(format!("http://127.0.0.1:{http_port}"), TOKEN).expect("agent client");
        self.agents.push(AgentProc {
            name: name.into(),
            pg_port,
            http_port,
            data_dir,
            log,
            client,
            child: Some(child),
            args,
        });
        self.agents.len() - 1
    }

    /// Print every agent's log (call before failing asserts when useful).
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| a.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Connect to 127.0.0.1:port as the superuser.
pub async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Values of column `v` in table `t`, sorted.
pub async fn rows(c: &Client, table: &str) -> Vec<i32> {
    let rows = c
        .query(&format!("SELECT v FROM {table} ORDER BY v"), &[])
        .await
        .expect("select rows");
    rows.iter().map(|r| r.get(0)).collect()
}

/// Wait until `table` on the instance at `port` holds exactly `want`.
pub async fn wait_rows(a: &AgentProc, table: &str, want: &[i32]) {
    let port = a.pg_port;
    let want = want.to_vec();
    wait_for(
        &format!("rows {want:?} in {table} on {}", a.name),
        Duration::from_secs(30),
        || {
            let want = want.clone();
            let table = table.to_string();
            async move {
                let c = connect(port).await.ok()?;
                let r = c
                    .query(&format!("SELECT v FROM {table} ORDER BY v"), &[])
                    .await
                    .ok()?;
                let got: Vec<i32> = r.iter().map(|r| r.get(0)).collect();
                (got == want).then_some(())
            }
        },
    )
    .await
}

/// A primary with `standbys` streaming standbys, all ready.
pub async fn cluster_with(prefix: &str, standbys: usize) -> Cluster {
    let mut c = Cluster::new(prefix);
    let p = c.add(&format!("{prefix}-0"), None, &[]);
    c.agents[p]
        .wait_ready("primary", Duration::from_secs(90))
        .await;
    for i in 1..=standbys {
        c.add(&format!("{prefix}-{i}"), Some(0), &[]);
    }
    for i in 1..=standbys {
        c.agents[i]
            .wait_ready("standby", Duration::from_secs(90))
            .await;
    }
    c
}

/// A cluster of a primary and two standbys where, after one row in `t`
/// reached both standbys, the primary is stopped and the first standby
/// promoted: (old primary, promoted, sibling still following the old one).
pub async fn promoted_second(prefix: &str) -> Cluster {
    let c = cluster_with(prefix, 2).await;
    let (old, new, sib) = (&c.agents[0], &c.agents[1], &c.agents[2]);
    old.sql()
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    wait_rows(sib, "t", &[1]).await;
    wait_rows(new, "t", &[1]).await;
    old.client
        .stop(&tandem::api::agent::StopRequest::default())
        .await
        .unwrap();
    new.client
        .promote(&tandem::api::agent::PromoteRequest::default())
        .await
        .unwrap();
    new.wait_ready("primary", Duration::from_secs(30)).await;
    c
}
