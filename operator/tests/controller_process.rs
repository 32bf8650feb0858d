//! The `tandem operator` process: serves /healthz and /metrics on its own
//! port, logs JSON lines, and exits 0 promptly on SIGTERM (with an API server
//! that cannot be reached, so it is still waiting for the Lease; and as the
//! leader whose first DbCluster list never succeeds). Against a small fake
//! API server on loopback: a DbCluster it cannot deserialize is reported on
//! its own and the others are still reconciled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_testkit::{free_port, terminate, TestDir};

/// Kills the operator if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.0 GET; returns the whole response.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    tandem_testkit::wait_until(what, timeout, Duration::from_millis(50), f)
}

#[test]
fn operator_serves_health_and_metrics_and_stops_on_sigterm() {
    let dir = TestDir::new("operator");
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

    let status = terminate(&mut guard.0, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10s after SIGTERM"));
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

/// A kubeconfig for an API server at `server` (plain HTTP, a dummy token).
fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: t}}\n"
    );
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// The operator as the only replica (no leader election), its stdout lines collected as they come.
struct Operator {
    guard: Guard,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Operator {
    fn start(kubeconfig: &std::path::Path) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["operator", "--identity", "op-test", "--log-format", "json"])
            .args(["--leader-elect=false", "--log-filter", "info"])
            .arg("--metrics-listen")
            .arg(addr.to_string())
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tandem operator: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        Self {
            guard: Guard(child),
            lines,
        }
    }

    /// The first JSON log line that satisfies `f`, waiting up to `timeout`.
    fn wait_log(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(what, timeout, || {
            self.lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| f(l))
        })
    }

    fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// SIGTERM, then the exit status within `timeout`.
    fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        terminate(&mut self.guard.0, timeout)
            .unwrap_or_else(|| panic!("still running {timeout:?} after SIGTERM:\n{}", self.log()))
    }
}

/// A fake API server on loopback: lists of the collections the operator
/// watches (DbClusters from `dbclusters`, the rest empty), watches held open
/// with no events, 404 for everything else (or for every request when
/// `dbclusters` is None: the CRD is not installed). Records "METHOD path body".
struct FakeApi {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

const COLLECTIONS: &[&str] = &[
    "dbclusters",
    "statefulsets",
    "services",
    "configmaps",
    "secrets",
    "poddisruptionbudgets",
    "pods",
];

impl FakeApi {
    fn start(dbclusters: Option<serde_json::Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rq, st) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (rq, st, dbc) = (rq.clone(), st.clone(), dbclusters.clone());
                        std::thread::spawn(move || serve(stream, &rq, &st, dbc.as_ref()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answer the requests of one connection until it closes.
fn serve(
    stream: TcpStream,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    dbclusters: Option<&serde_json::Value>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        if reader.read_line(&mut head).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = head.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!(
                "{method} {target} {}",
                String::from_utf8_lossy(&body)
            ));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let collection = path.rsplit('/').next().unwrap_or_default();
        let listable = method == "GET" && COLLECTIONS.contains(&collection);
        let body = match dbclusters {
            Some(list) if listable && query.contains("watch=true") => {
                // No events: hold the watch open until the test ends.
                let _ = write!(
                    writer,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                let _ = writer.flush();
                let _ = list;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Some(list) if listable && collection == "dbclusters" => Ok(list.to_string()),
            Some(_) if listable => Ok(serde_json::json!({
                "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": [],
            })
            .to_string()),
            _ => Err(serde_json::json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource",
            })
            .to_string()),
        };
        let (status, body) = match body {
            Ok(b) => ("200 OK", b),
            Err(b) => ("404 Not Found", b),
        };
        let _ = write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = writer.flush();
    }
}

fn dbcluster(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "DbCluster",
        "metadata": {"name": name, "namespace": "db", "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    })
}

#[test]
fn an_unreadable_dbcluster_is_reported_and_the_others_are_still_reconciled() {
    let list = serde_json::json!({
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "DbClusterList",
        "metadata": {"resourceVersion": "1"},
        "items": [
            dbcluster("bad", serde_json::json!({"switchover": {"maxLagBytes": null}})),
            dbcluster("main", serde_json::json!({"instances": 3})),
        ],
    });
    let api = FakeApi::start(Some(list));
    let dir = TestDir::new("operator");
    let mut op = Operator::start(&kubeconfig(dir.path(), &format!("http://{}", api.addr)));

    let unreadable = op.wait_log("the WARN line for bad", Duration::from_secs(30), |l| {
        l["message"] == "DbCluster not readable" && l["cluster"] == "bad"
    });
    assert_eq!(unreadable["level"], "WARN", "{unreadable}");
    let error = unreadable["error"].as_str().unwrap_or_default();
    assert!(error.contains("spec.switchover.maxLagBytes"), "{error}");
    // main went through the pipeline: its children were applied (the fake
    // refuses the apply, which is fine here).
    wait_until(
        "an apply of main's children",
        Duration::from_secs(30),
        || {
            api.requests()
                .iter()
                .any(|r| r.starts_with("PATCH /api/v1/namespaces/db/configmaps/main"))
                .then_some(())
        },
    );
    // The Warning Event about bad was sent.
    wait_until("the Warning Event on bad", Duration::from_secs(10), || {
        api.requests()
            .iter()
            .any(|r| {
                r.starts_with("POST /apis/events.k8s.io/v1/namespaces/db/events")
                    && r.contains("\"reason\":\"UnreadableSpec\"")
                    && r.contains("\"name\":\"bad\"")
            })
            .then_some(())
    });
    let status = op.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}\n{}", op.log());
}

#[test]
fn operator_stops_on_sigterm_while_its_first_dbcluster_list_never_succeeds() {
    // No CRD (every request 404), then no API server at all.
    let api = FakeApi::start(None);
    for server in [format!("http://{}", api.addr), "http://127.0.0.1:9".into()] {
        let dir = TestDir::new("operator");
        let mut op = Operator::start(&kubeconfig(dir.path(), &server));
        let failed = op.wait_log(
            "the WARN line of the failed list",
            Duration::from_secs(30),
            |l| l["message"] == "watching DbClusters or their children failed; retrying",
        );
        assert_eq!(failed["level"], "WARN", "{failed}");
        let status = op.terminate(Duration::from_secs(5));
        assert!(
            status.success(),
            "{server}: exit status {status}\n{}",
            op.log()
        );
    }
}
