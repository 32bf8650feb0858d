//! The real command-line tools, as a user runs them: `kubectl` (the one the
//! test cluster built, or `KUBECTL`) and `helm` (`HELM`), against the cluster
//! in KUBECONFIG; and the failure dump a failed test prints (pods, Events,
//! DbCluster status, operator and agent logs, and the previous run's logs of
//! a container that restarted). Does I/O.

use std::process::Stdio;

use tokio::process::Command;

use crate::{operator_namespace, E2eError, Result};

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// The kubectl to run (`KUBECTL`, else `kubectl` on PATH).
pub fn kubectl_bin() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// The helm to run (`HELM`, else `helm` on PATH).
pub fn helm_bin() -> String {
    std::env::var("HELM").unwrap_or_else(|_| "helm".into())
}

/// Run `program args…` to completion (KUBECONFIG is inherited).
pub async fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| E2eError::Tool {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run kubectl with `args`, whatever its exit code.
pub async fn kubectl(args: &[&str]) -> Result<Output> {
    run(&kubectl_bin(), args).await
}

/// Run kubectl with `args`; an error with its stderr unless it exits 0.
pub async fn kubectl_ok(args: &[&str]) -> Result<String> {
    let out = kubectl(args).await?;
    if out.ok() {
        Ok(out.stdout)
    } else {
        Err(E2eError::Tool {
            command: format!("kubectl {}", args.join(" ")),
            message: format!("exit {}: {}", out.code, out.stderr.trim()),
        })
    }
}

async fn section(title: &str, args: &[&str]) {
    let text = match kubectl(args).await {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e.to_string(),
    };
    eprintln!(
        "----- {title}: kubectl {}\n{}",
        args.join(" "),
        text.trim_end()
    );
}

/// Print what a person debugging a failed test looks at first: the objects
/// and Events of `ns`, every DbCluster's status, each pod's logs, the
/// operator's logs.
pub async fn dump(ns: &str) {
    eprintln!("===== failure dump of namespace {ns}");
    section(
        "objects",
        &[
            "get",
            "-n",
            ns,
            "pods,svc,endpointslices,pvc,statefulsets",
            "-o",
            "wide",
            "--show-labels",
        ],
    )
    .await;
    section("dbclusters", &["get", "-n", ns, "dbclusters", "-o", "yaml"]).await;
    section(
        "events",
        &[
            "get",
            "-n",
            ns,
            "events",
            "--sort-by=.metadata.creationTimestamp",
        ],
    )
    .await;
    dump_pod_logs(ns, None, 60).await;
    let op_ns = operator_namespace();
    section(
        "operator pods",
        &["get", "-n", &op_ns, "pods", "-o", "wide"],
    )
    .await;
    dump_pod_logs(&op_ns, Some(OPERATOR_SELECTOR), 150).await;
    eprintln!("===== end of failure dump of namespace {ns}");
}

/// Label of the chart's operator pods.
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=tandem-operator";

/// The last `tail` lines of every container of the pods in `ns` (matching
/// `selector`), and of the previous run of any container that restarted:
/// a crashed agent (PID 1 of its container) or an operator that lost the
/// lease says why only there.
async fn dump_pod_logs(ns: &str, selector: Option<&str>, tail: usize) {
    let mut args = vec!["get", "-n", ns, "pods", "-o", RESTARTS];
    if let Some(s) = selector {
        args.extend(["-l", s]);
    }
    let Ok(pods) = kubectl_ok(&args).await else {
        return;
    };
    let tail = format!("--tail={tail}");
    for (pod, restarts) in pods.lines().filter_map(restarts_of) {
        let target = format!("pod/{pod}");
        let mut args = vec!["logs", "-n", ns, &target, "--all-containers", &tail];
        section(&format!("logs of {target}"), &args).await;
        if restarts > 0 {
            args.push("--previous");
            let title = format!("logs of {target} before its last restart ({restarts} restarts)");
            section(&title, &args).await;
        }
    }
}

/// Each pod as `name restartCount restartCount…` (one count per container).
const RESTARTS: &str = "jsonpath={range .items[*]}{.metadata.name}{' '}{.status.containerStatuses[*].restartCount}{'\\n'}{end}";

/// A line of [`RESTARTS`]: the pod and its containers' total restarts.
fn restarts_of(line: &str) -> Option<(&str, u64)> {
    let mut fields = line.split_whitespace();
    let pod = fields.next()?;
    Some((pod, fields.filter_map(|n| n.parse::<u64>().ok()).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_summed_over_containers_and_a_pod_without_status_has_none() {
        assert_eq!(restarts_of("main-0 0 2 1"), Some(("main-0", 3)));
        assert_eq!(restarts_of("main-1"), Some(("main-1", 0)));
        assert_eq!(restarts_of(""), None);
    }
}
