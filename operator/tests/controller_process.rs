//! The `tandem operator` process: serves /healthz and /metrics on its own
//! port, logs JSON lines, and exits 0 promptly on SIGTERM (here with an API
//! server that cannot be reached, so it is still waiting for the Lease).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the operator if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A plain HTTP/1.0 GET; returns the whole response.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn operator_serves_health_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let kubeconfig = dir.path().join("kubeconfig");
    // Port 9 (discard) on loopback: connections are refused at once.
    let config = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:9'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n";
    std::fs::write(&kubeconfig, config).unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["operator", "--identity", "op-test", "--log-format", "json"])
        .arg("--metrics-listen")
        .arg(addr.to_string())
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tandem operator: {e}"));
    let mut guard = Guard(child);

    let health = wait_until("/healthz", Duration::from_secs(20), || {
        get(addr, "/healthz")
    });
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let metrics = get(addr, "/metrics").unwrap_or_default();
    assert!(metrics.contains("tandem_operator_leader 0"), "{metrics}");

    let pid = nix::unistd::Pid::from_raw(guard.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("SIGTERM: {e}"));
    let status = wait_until("exit after SIGTERM", Duration::from_secs(10), || {
        guard.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "exit status {status}");

    let mut stdout = String::new();
    if let Some(mut out) = guard.0.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "waiting for the leader lease" && l["identity"] == "op-test"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "SIGTERM: shutting down"),
        "{stdout}"
    );
}
