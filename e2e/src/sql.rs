//! SQL through `<name>-rw` from a short-lived pod in the cluster (the
//! postgres image's psql, credentials from the superuser Secret): a writer
//! that prints each acknowledged row, and reading the rows back; which
//! acknowledged rows are lost is the testkit's check. Does I/O.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, PostParams};
use kube::{Api, Client};
use tandem::api::keys;
use tandem_testkit::writer::missing;

use crate::{await_condition, kube_err, postgres_image, E2eError, Result};

fn sql_pod(cluster: &str, pod: &str, script: &str) -> Pod {
    let secret = keys::secret_superuser(cluster);
    let env = |name: &str, key: &str| serde_json::json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "labels": {"app.kubernetes.io/name": "tandem-e2e-client"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "psql",
                "image": postgres_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["bash", "-c", script],
                "env": [
                    env("PGUSER", "username"),
                    env("PGPASSWORD", "password"),
                    {"name": "PGHOST", "value": keys::service_rw(cluster)},
                    {"name": "PGDATABASE", "value": "postgres"},
                    {"name": "PGCONNECT_TIMEOUT", "value": "3"},
                ],
            }],
        },
    }))
    .unwrap_or_default()
}

/// Start a pod running `script` (bash) with psql settings for `<cluster>-rw`.
pub async fn start_sql_pod(
    client: &Client,
    ns: &str,
    cluster: &str,
    pod: &str,
    script: &str,
) -> Result<()> {
    create_sql_pod(client, ns, pod, sql_pod(cluster, pod, script)).await
}

/// [`start_sql_pod`] on any node but `node` (a client that outlives the fault injected there).
pub async fn start_sql_pod_off(
    client: &Client,
    ns: &str,
    cluster: &str,
    pod: &str,
    script: &str,
    node: &str,
) -> Result<()> {
    let mut spec = sql_pod(cluster, pod, script);
    let affinity = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [node]}
        ]}]
    }}});
    if let Some(s) = spec.spec.as_mut() {
        s.affinity = serde_json::from_value(affinity).ok();
    }
    create_sql_pod(client, ns, pod, spec).await
}

async fn create_sql_pod(client: &Client, ns: &str, pod: &str, spec: Pod) -> Result<()> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &spec)
        .await
        .map_err(kube_err(format!("create pod {pod}")))?;
    Ok(())
}

/// The output of pod `pod` so far.
pub async fn pod_logs(client: &Client, ns: &str, pod: &str) -> Result<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &LogParams::default())
        .await
        .map_err(kube_err(format!("logs of {pod}")))
}

/// Wait until pod `pod` has finished (Succeeded or Failed), at most `timeout`.
pub async fn wait_finished(client: &Client, ns: &str, pod: &str, timeout: Duration) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    await_condition(
        api,
        pod,
        &format!("pod {pod} finished"),
        timeout,
        |p: Option<&Pod>| {
            matches!(
                p.and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        },
    )
    .await
}

/// Run `script` in a pod to completion; its output, or an error with it.
pub async fn run_sql(
    client: &Client,
    ns: &str,
    cluster: &str,
    pod: &str,
    script: &str,
    timeout: Duration,
) -> Result<String> {
    start_sql_pod(client, ns, cluster, pod, script).await?;
    let done = wait_finished(client, ns, pod, timeout).await?;
    let logs = pod_logs(client, ns, pod).await?;
    match done.status.and_then(|s| s.phase).as_deref() {
        Some("Succeeded") => Ok(logs),
        _ => Err(E2eError::Sql {
            pod: pod.into(),
            logs,
        }),
    }
}

/// Once writer pod `writer` has finished (at most `timeout`): the rows it saw
/// acknowledged that `<cluster>-rw` no longer has (the testkit's check).
pub async fn lost_acknowledged(
    client: &Client,
    ns: &str,
    cluster: &str,
    writer: &str,
    timeout: Duration,
) -> Result<Vec<i64>> {
    wait_finished(client, ns, writer, timeout).await?;
    let acked = acknowledged(&pod_logs(client, ns, writer).await?);
    let stored = rows(client, ns, cluster, &format!("{writer}-read")).await?;
    Ok(missing(acked, &stored.into_iter().collect()))
}

/// Numbers of the lines `ack <n>` a [`writer_script`] printed: the rows the
/// server acknowledged.
pub fn acknowledged(logs: &str) -> Vec<i64> {
    logs.lines()
        .filter_map(|l| l.strip_prefix("ack "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// A writer script: inserts rows 1..=count one by one through `<name>-rw`,
/// printing `ack <n>` after each commit the server confirmed; retries a failed
/// row until `deadline_secs` passes (a failover in between is expected).
pub fn writer_script(count: u64, deadline_secs: u64) -> String {
    format!(
        "end=$((SECONDS+{deadline_secs})); \
         until psql -qAt -v ON_ERROR_STOP=1 -c 'CREATE TABLE IF NOT EXISTS e2e_rows (n bigint PRIMARY KEY)'; do \
           [ $SECONDS -ge $end ] && exit 1; sleep 0.5; done; \
         for i in $(seq 1 {count}); do \
           until psql -qAt -v ON_ERROR_STOP=1 -c \"INSERT INTO e2e_rows VALUES ($i) ON CONFLICT DO NOTHING\"; do \
             [ $SECONDS -ge $end ] && exit 1; sleep 0.2; done; \
           echo \"ack $i\"; \
         done"
    )
}

/// Every row number in `e2e_rows`, read through `<name>-rw`.
pub async fn rows(client: &Client, ns: &str, cluster: &str, pod: &str) -> Result<Vec<i64>> {
    let out = run_sql(
        client,
        ns,
        cluster,
        pod,
        "until psql -qAt -c 'SELECT n FROM e2e_rows ORDER BY n'; do sleep 1; done",
        Duration::from_secs(120),
    )
    .await?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}
