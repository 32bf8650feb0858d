//! The kubectl plugin on a real cluster (DESIGN.md §1 row 19): `kubectl
//! tandem` through a `kubectl-tandem` symlink on PATH, as a user installs
//! it. `status` prints the table, `switchover --to` moves the primary and
//! returns only once status says so (exit 0), a refused request exits 1 and
//! changes nothing, a usage error exits 2, `history` lists the switchover,
//! `pause`/`unpause` return once status says so, and `kubectl get dbc -o
//! wide` shows the Lag and Sync columns. `#[ignore]`d
//! like the rest of the suite: `make test` runs it on the test cluster.

use std::path::PathBuf;
use std::time::Duration;

use tandem::api::keys;
use tandem_e2e::kubectl::{kubectl_bin, Output};
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(180);

/// The tandem binary the test cluster runs (`TANDEM_BIN`, else target/debug/tandem).
fn tandem_bin() -> PathBuf {
    std::env::var_os("TANDEM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("target/debug/tandem"))
}

/// A directory with the plugin symlink `kubectl-tandem` → tandem, as a user puts it on PATH.
fn plugin_dir() -> tandem_testkit::TestDir {
    let dir = tandem_testkit::TestDir::new("kubectl-plugin");
    let bin = tandem_bin()
        .canonicalize()
        .expect("the tandem binary is built (cargo build -p tandem)");
    std::os::unix::fs::symlink(&bin, dir.path().join("kubectl-tandem"))
        .expect("symlink kubectl-tandem");
    dir
}

/// `kubectl tandem args…` with the plugin directory first on PATH.
async fn plugin(dir: &tandem_testkit::TestDir, args: &[&str]) -> Output {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir.path().to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths).expect("PATH");
    let out = tokio::process::Command::new(kubectl_bin())
        .arg("tandem")
        .args(args)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kubectl tandem");
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "kubectl tandem {}: exit {}\n{}{}",
        args.join(" "),
        out.code,
        out.stdout,
        out.stderr
    );
    out
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn kubectl_tandem_shows_the_table_switches_over_and_get_wide_shows_lag_and_sync() {
    with_temp_ns("plugin", |client, ns| async move {
        let dir = plugin_dir();
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let n = ns.as_str();

        // status: the table of `tandem local status`, from the DbCluster's status.
        let out = plugin(&dir, &["status", &name, "-n", n]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stdout
                .starts_with(&format!("Cluster {name}  phase Healthy")),
            "{}",
            out.stdout
        );
        for col in [
            "Role",
            "Upstream",
            "Timeline",
            "LSN",
            "Lag (s)",
            "Replay lag",
            "Sync",
            "Last seen",
            "Checks",
        ] {
            assert!(out.stdout.contains(col), "no {col} column:\n{}", out.stdout);
        }
        for o in 0..3 {
            assert!(
                out.stdout.contains(&keys::instance_name(&name, o)),
                "{}",
                out.stdout
            );
        }

        // switchover --to: exit 0 once done, and status already says so.
        let old = primary(&client, &ns, &name).await;
        let target = if old == keys::instance_name(&name, 1) {
            keys::instance_name(&name, 2)
        } else {
            keys::instance_name(&name, 1)
        };
        let out = plugin(&dir, &["switchover", &name, "--to", &target, "-n", n]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("switched over"), "{}", out.stdout);
        let st = status(&client, &ns, &name).await.expect("status");
        assert_eq!(st.current_primary.as_deref(), Some(target.as_str()));
        assert!(st.transition.is_none(), "{:?}", st.transition);
        assert!(
            !has_annotation(&client, &ns, &name, keys::ANN_SWITCHOVER)
                .await
                .expect("annotations"),
            "the answered request's annotation is still there"
        );
        wait_rw_on(&client, &ns, &name, &target, MOVE)
            .await
            .expect("rw follows the new primary");

        // A refused request: exit 1 with the reason, nothing changes.
        let out = plugin(
            &dir,
            &["switchover", &name, "--to", &format!("{name}-9"), "-n", n],
        )
        .await;
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
        assert_eq!(primary(&client, &ns, &name).await, target);
        // A usage error: exit 2.
        let out = plugin(&dir, &["promote", &name, "-n", n]).await;
        assert_eq!(out.code, 2, "{}", out.stderr);

        // history lists the switchover and the refusal.
        let out = plugin(&dir, &["history", &name, "-n", n]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("Switchover"), "{}", out.stdout);
        assert!(out.stdout.contains("Refused"), "{}", out.stdout);

        // pause / unpause: status says so by the time each returns.
        let out = plugin(&dir, &["pause", &name, "-n", n]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(status(&client, &ns, &name).await.expect("status").paused);
        let out = plugin(&dir, &["status", &name, "-n", n]).await;
        assert!(out.stdout.contains("paused yes"), "{}", out.stdout);
        let out = plugin(&dir, &["unpause", &name, "-n", n]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(!status(&client, &ns, &name).await.expect("status").paused);

        // kubectl get -o wide: Lag and Sync besides the default columns.
        let wide = eventually("the Lag and Sync columns filled", MOVE, || {
            let ns = ns.clone();
            let name = name.clone();
            async move {
                let out = kubectl::kubectl_ok(&["get", "dbc", &name, "-n", &ns, "-o", "wide"])
                    .await
                    .ok()?;
                let mut lines = out.lines();
                let header = lines.next()?.to_string();
                let row = lines.next()?.to_string();
                (row.contains("=async") && header.contains("LAG") && header.contains("SYNC"))
                    .then_some(out)
            }
        })
        .await
        .expect("kubectl get dbc -o wide");
        eprintln!("{wide}");
        let plain = kubectl::kubectl_ok(&["get", "dbc", &name, "-n", n])
            .await
            .expect("kubectl get dbc");
        assert!(
            !plain.contains("SYNC"),
            "Sync is a wide column only:\n{plain}"
        );
    })
    .await;
}
