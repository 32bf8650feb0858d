//! What the real API server does with tandem's manifests, run as a user runs
//! them with kubectl: the CRD and every example are accepted (server-side),
//! `kubectl explain` and the printer columns work, bad manifests are refused
//! with the schema's message, `spec.storage` cannot be changed, a DbCluster
//! the operator cannot read does not stop the others, a deleted and
//! re-applied cluster adopts its data, and the operator runs as the chart's
//! Deployment under its least-privilege ServiceAccount. `#[ignore]`d like the
//! rest of the suite: `make test` runs it on the test cluster.

use std::time::Duration;

use tandem::api::keys;
use tandem_e2e::*;

const READY: Duration = Duration::from_secs(600);
const MOVE: Duration = Duration::from_secs(180);

/// Write `yaml` to a temporary file and `kubectl apply` it in `ns`.
async fn apply_yaml(ns: &str, yaml: &str) -> Output {
    let dir = tandem_testkit::TestDir::new("e2e-manifest");
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, yaml).expect("write manifest");
    let path = path.to_string_lossy().into_owned();
    kubectl(&["apply", "-n", ns, "-f", &path])
        .await
        .expect("run kubectl")
}

fn cluster_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tandem.dev/v1alpha1\nkind: DbCluster\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn crd_examples_and_base_are_accepted_and_kubectl_explains_and_lists_them() {
    with_temp_ns("accepted", |client, ns| async move {
        let explain = kubectl_ok(&["explain", "dbcluster.spec"])
            .await
            .expect("kubectl explain dbcluster.spec");
        for field in ["instances", "replication", "failover", "storage"] {
            assert!(explain.contains(field), "explain lacks {field}: {explain}");
        }
        let examples = repo_path("deploy/examples");
        let examples = examples.to_string_lossy();
        let out = kubectl(&["apply", "--dry-run=server", "-n", &ns, "-f", &examples])
            .await
            .expect("kubectl");
        assert!(
            out.ok(),
            "examples refused by the API server: {}",
            out.stderr
        );
        for name in ["main", "ledger", "analytics", "maintenance"] {
            assert!(
                out.stdout.contains(name),
                "{name} not applied: {}",
                out.stdout
            );
        }
        let base = repo_path("deploy/base");
        let base = base.to_string_lossy();
        let out = kubectl(&["apply", "--dry-run=server", "-k", &base])
            .await
            .expect("kubectl");
        assert!(
            out.ok(),
            "deploy/base refused by the API server: {}",
            out.stderr
        );
        assert!(
            out.stdout
                .contains("customresourcedefinition.apiextensions.k8s.io/dbclusters.tandem.dev"),
            "{}",
            out.stdout
        );

        healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let table = kubectl_ok(&["get", "dbc", "-n", &ns])
            .await
            .expect("kubectl get dbc");
        let header = table.lines().next().unwrap_or_default();
        for column in [
            "NAME",
            "INSTANCES",
            "READY",
            "PRIMARY",
            "PHASE",
            "MODE",
            "AGE",
        ] {
            assert!(header.contains(column), "no {column} column: {table}");
        }
        let row = table.lines().nth(1).unwrap_or_default();
        assert!(
            row.contains("3/3") && row.contains("Healthy") && row.contains("async"),
            "{table}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn bad_manifests_are_refused_by_the_api_server_with_the_schemas_message() {
    with_temp_ns("refused-manifests", |_client, ns| async move {
        let cases = [
            ("too-many", "  instances: 17\n", "spec.instances"),
            (
                "bad-mode",
                "  instances: 3\n  replication:\n    mode: semi\n",
                "spec.replication.mode",
            ),
            (
                "bad-duration",
                "  instances: 3\n  failover:\n    detectionTimeout: soon\n",
                "spec.failover.detectionTimeout",
            ),
            (
                "too-few",
                "  instances: 2\n  replication:\n    mode: sync\n    syncStandbys: 2\n",
                "syncStandbys",
            ),
            ("misspelled", "  instances: 3\n  replicas: 3\n", "replicas"),
        ];
        for (name, spec, fragment) in cases {
            let out = apply_yaml(&ns, &cluster_yaml(name, spec)).await;
            assert_eq!(
                out.code, 1,
                "{name}: kubectl exit {} ({})",
                out.code, out.stderr
            );
            assert!(
                out.stderr.contains(fragment),
                "{name}: the message does not say what to fix ({fragment}): {}",
                out.stderr
            );
        }
        let listed = kubectl_ok(&["get", "dbc", "-n", &ns, "-o", "name"])
            .await
            .expect("list");
        assert!(
            listed.trim().is_empty(),
            "a refused manifest was stored: {listed}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn storage_cannot_be_changed_and_the_cluster_keeps_its_ha_loop() {
    with_temp_ns("storage", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        let out = patch_cluster(&ns, &name, r#"{"spec":{"storage":{"size":"5Gi"}}}"#)
            .await
            .expect("kubectl");
        assert_eq!(
            out.code, 1,
            "storage change accepted: {}{}",
            out.stdout, out.stderr
        );
        assert!(out.stderr.contains("storage"), "{}", out.stderr);
        // The cluster still answers requests: a switchover runs.
        let old = primary(&client, &ns, &name).await;
        annotate(&client, &ns, &name, keys::ANN_SWITCHOVER, Some("any"))
            .await
            .expect("annotate");
        eventually("a switchover after the refused change", MOVE, || async {
            let p = status(&client, &ns, &name).await.ok()?.current_primary?;
            (p != old).then_some(())
        })
        .await
        .expect("switched over");
    })
    .await;
}

const CRD: &str = "customresourcedefinition/dbclusters.tandem.dev";

/// Loosen the installed CRD so that `spec.failover.detectionTimeout` takes any
/// string, as an older CRD would have: objects stored then stay stored.
async fn loosen_detection_timeout() {
    let patch = r#"[{"op":"replace","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/failover/properties/detectionTimeout","value":{"type":"string","default":"5s"}}]"#;
    kubectl_ok(&["patch", CRD, "--type=json", "-p", patch])
        .await
        .expect("loosen the CRD");
}

/// Put the CRD back as the repository ships it.
async fn restore_crd() {
    let crd = repo_path("crds/dbcluster.yaml");
    kubectl_ok(&["replace", "-f", &crd.to_string_lossy()])
        .await
        .expect("restore the CRD");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn a_dbcluster_the_operator_cannot_read_does_not_stop_the_others() {
    with_temp_ns("unreadable", |client, ns| async move {
        // What the schema once let through and the operator cannot read: now refused, or defaulted.
        let out = apply_yaml(
            &ns,
            &cluster_yaml(
                "huge-timeout",
                "  instances: 1\n  failover:\n    detectionTimeout: 99999999999999999999s\n",
            ),
        )
        .await;
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(out.stderr.contains("must be a duration"), "{}", out.stderr);
        let out = apply_yaml(
            &ns,
            &cluster_yaml(
                "huge-lag",
                "  instances: 1\n  switchover:\n    maxLagBytes: 99999999999Gi\n",
            ),
        )
        .await;
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(
            out.stderr.contains("spec.switchover.maxLagBytes"),
            "{}",
            out.stderr
        );

        // An object stored under an older, looser CRD: reported, and the others still reconciled.
        loosen_detection_timeout().await;
        let stored = eventually("the loosened CRD in force", MOVE, || async {
            let out = apply_yaml(
                &ns,
                &cluster_yaml(
                    "unreadable",
                    "  instances: 1\n  failover:\n    detectionTimeout: 99999999999999999999s\n",
                ),
            )
            .await;
            out.ok().then_some(())
        })
        .await;
        restore_crd().await;
        stored.expect("the object stored under the loose CRD");
        let name = apply_example(&client, &ns, "minimal.yaml")
            .await
            .expect("apply");
        wait_healthy(&client, &ns, &name, READY)
            .await
            .expect("the readable cluster is reconciled");
        let note = wait_event(&client, &ns, "unreadable", "UnreadableSpec", MOVE)
            .await
            .expect("the unreadable cluster is reported");
        assert!(note.contains("detectionTimeout"), "{note}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn a_deleted_and_reapplied_cluster_adopts_its_data() {
    with_temp_ns("reapply", |client, ns| async move {
        let name = healthy_example(&client, &ns, "minimal.yaml", READY).await;
        run_sql(
            &client,
            &ns,
            &name,
            "write-1",
            &writer_script(10, 120),
            MOVE,
        )
        .await
        .expect("rows");
        let target = format!("dbcluster/{name}");
        kubectl_ok(&[
            "delete",
            "-n",
            &ns,
            &target,
            "--wait=true",
            "--timeout=180s",
        ])
        .await
        .expect("kubectl delete");
        eventually("the cluster's pods are gone", MOVE, || async {
            role_labels(&client, &ns, &name)
                .await
                .ok()
                .filter(|l| l.is_empty())
                .map(|_| ())
        })
        .await
        .expect("pods gone");
        apply_example(&client, &ns, "minimal.yaml")
            .await
            .expect("re-apply");
        wait_healthy(&client, &ns, &name, READY)
            .await
            .expect("healthy again on the old data");
        let rows = rows(&client, &ns, &name, "read-1").await.expect("rows");
        assert_eq!(
            rows,
            (1..=10).collect::<Vec<i64>>(),
            "data of the deleted cluster"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the operator installed: make test (test cluster) or make e2e (kind)"]
async fn the_operator_runs_as_the_charts_deployment_with_least_privilege() {
    let client = client().await.expect("cluster");
    expect_operator(&client).await.expect("operator available");
    let op_ns = operator_namespace();
    let pods = kubectl_ok(&[
        "get", "pods", "-n", &op_ns, "-l", "app.kubernetes.io/name=tandem-operator",
        "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.serviceAccountName}{\"\\n\"}{end}",
    ])
    .await
    .expect("operator pods");
    let running: Vec<&str> = pods.lines().filter(|l| l.contains(" Running ")).collect();
    assert_eq!(running.len(), 2, "two operator replicas: {pods}");
    let holder = kubectl_ok(&[
        "get",
        "lease",
        "-n",
        &op_ns,
        "tandem-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .await
    .expect("leader lease");
    assert!(
        running.iter().any(|l| l.starts_with(&format!("{holder} "))),
        "the Lease holder {holder:?} is not a running replica: {pods}"
    );
    let sa = running[0]
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let who = format!("system:serviceaccount:{op_ns}:{sa}");
    let can = |verb: &'static str, resource: &'static str| {
        let who = who.clone();
        async move {
            let out = kubectl(&["auth", "can-i", verb, resource, "--as", &who, "-A"])
                .await
                .expect("kubectl auth can-i");
            out.stdout.trim() == "yes"
        }
    };
    assert!(can("patch", "dbclusters.tandem.dev").await);
    assert!(can("delete", "pods").await);
    // Whether a drain cordoned the primary's node; nothing else of nodes.
    assert!(can("get", "nodes").await);
    for (verb, resource) in [
        ("delete", "statefulsets.apps"),
        ("update", "secrets"),
        ("delete", "secrets"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("list", "nodes"),
        ("patch", "nodes"),
        ("create", "pods/exec"),
    ] {
        assert!(!can(verb, resource).await, "{who} may {verb} {resource}");
    }
}
