//! Reconcile against a mocked API server (kube's tower-test pattern), with
//! the HA loops on as production runs them: each scenario asserts the exact
//! sequence of requests, method, path and body, and answers them; the test
//! fails on any request it did not expect. A valid cluster's status is the
//! HA loop's to write (controller_ha*.rs test it); the reconcile writes only
//! a refused spec's.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::Resource;
use serde_json::{json, Value};
use tandem::api::{DbCluster, DbClusterSpec};
use tandem::controller::error::Category;
use tandem::controller::ha::{HaConfig, HttpAgents, KubeClient, LoopConfig, Registry};
use tandem::controller::metrics::Metrics;
use tandem::controller::stores::{stores, Stores, Writers};
use tandem::controller::validate::Defaults;
use tandem::controller::{error_policy, reconcile, Context, ReconcileConfig};
use tandem_testkit::MockApiServer;

const NS: &str = "db";
const IMAGE: &str = "example.org/tandem-postgres:17";

/// The mocked API server side of a scenario.
type ApiServer = MockApiServer;

/// The requests a reconcile makes, as these scenarios expect them.
trait Expect {
    /// The next request must be a server-side apply by tandem's field manager
    /// of an object of `kind` at `path`; answered by echoing it.
    async fn expect_apply(&mut self, path: &str, kind: &str) -> Value;
    async fn expect_secret_lookup(&mut self, name: &str, exists: bool);
    async fn expect_pod_list(&mut self, pods: Value);
    async fn expect_secret_create(&mut self, name: &str) -> Value;
    async fn expect_status_apply(&mut self, dc: &DbCluster) -> Value;
}

impl Expect for ApiServer {
    async fn expect_apply(&mut self, path: &str, kind: &str) -> Value {
        let r = self.next(Method::PATCH, path).await;
        assert!(
            r.query.contains("fieldManager=tandem-operator") && r.query.contains("force=true"),
            "{} {}: not a forced apply by tandem-operator: {}",
            r.method,
            r.path,
            r.query
        );
        assert_eq!(r.body["kind"], kind, "{}", r.path);
        let owner = &r.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            owner["kind"], "DbCluster",
            "{} lacks its owner reference",
            r.path
        );
        assert_eq!(owner["controller"], true);
        let body = r.body.clone();
        r.echo();
        body
    }

    async fn expect_secret_lookup(&mut self, name: &str, exists: bool) {
        let r = self
            .next(
                Method::GET,
                &format!("/api/v1/namespaces/{NS}/secrets/{name}"),
            )
            .await;
        if exists {
            r.reply(
                StatusCode::OK,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": name, "namespace": NS}}),
            );
        } else {
            r.not_found();
        }
    }

    async fn expect_pod_list(&mut self, pods: Value) {
        let r = self
            .next(Method::GET, &format!("/api/v1/namespaces/{NS}/pods"))
            .await;
        assert!(
            r.query
                .contains("labelSelector=tandem.dev%2Fcluster%3Dmain"),
            "{}",
            r.query
        );
        r.reply(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
        );
    }

    async fn expect_secret_create(&mut self, name: &str) -> Value {
        let r = self
            .next(Method::POST, &format!("/api/v1/namespaces/{NS}/secrets"))
            .await;
        assert_eq!(r.body["metadata"]["name"], name, "created the wrong Secret");
        assert!(
            r.query.contains("fieldManager=tandem-operator"),
            "{}",
            r.query
        );
        let body = r.body.clone();
        r.echo();
        body
    }

    async fn expect_status_apply(&mut self, dc: &DbCluster) -> Value {
        let r = self
            .next(
                Method::PATCH,
                &format!("/apis/tandem.dev/v1alpha1/namespaces/{NS}/dbclusters/main/status"),
            )
            .await;
        assert!(
            r.query.contains("fieldManager=tandem-operator"),
            "{}",
            r.query
        );
        // Only over the object the status was computed from.
        assert_eq!(
            r.body["metadata"]["resourceVersion"].as_str(),
            dc.metadata.resource_version.as_deref(),
            "{}",
            r.body
        );
        let status = r.body["status"].clone();
        let mut answer = serde_json::to_value(dc).unwrap_or_default();
        answer["status"] = status.clone();
        r.reply(StatusCode::OK, answer);
        status
    }
}

fn cluster(spec: DbClusterSpec) -> DbCluster {
    let mut dc = DbCluster::new("main", spec.into());
    let meta = dc.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some("0b7c5a4e-uid".into());
    meta.generation = Some(1);
    meta.resource_version = Some("1".into());
    dc
}

/// A context as production builds it: the HA registry with the HTTP agents
/// and the kube client over `stores`, all talking to one mocked API server.
fn context(stores: Stores) -> (Arc<Context>, ApiServer) {
    let (client, server) = MockApiServer::pair(NS);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tandem-operator".into(),
            instance: Some("test".into()),
        },
    );
    let defaults = Defaults {
        postgres_image: IMAGE.into(),
    };
    let ha = Registry::new(
        Arc::new(KubeClient {
            client: client.clone(),
            recorder: recorder.clone(),
            stores,
        }),
        Arc::new(HttpAgents::default()),
        HaConfig {
            interval: Duration::from_secs(1),
            max_concurrent: 1,
            pass_timeout: Duration::from_secs(10),
            cluster: LoopConfig {
                poll_timeout: Duration::from_millis(100),
                starting_grace: Duration::from_secs(60),
                agent_port: 8000,
                defaults: defaults.clone(),
                service_settle: Duration::ZERO,
            },
        },
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let ctx = Context::new(
        client,
        recorder,
        metrics,
        ReconcileConfig {
            defaults,
            requeue: Duration::from_secs(60),
        },
        Arc::new(ha),
    );
    (Arc::new(ctx), server)
}

/// A context whose HA loops wait for the watch caches' first list, which
/// never comes here (as in production before the caches listed): a loop the
/// reconcile starts sends no request, so a scenario sees the reconcile's own
/// requests alone. The loops are tested in controller_ha*.rs.
fn setup() -> (Arc<Context>, ApiServer, Writers) {
    let (stores, writers) = stores();
    let (ctx, server) = context(stores);
    (ctx, server, writers)
}

/// A context whose HA loops read `watched` from synced watch caches.
fn setup_with_ha(watched: &DbCluster) -> (Arc<Context>, ApiServer) {
    context(Stores::from_objects(
        vec![watched.clone().into()],
        vec![],
        vec![],
        vec![],
    ))
}

/// What a reconcile came to.
struct Reconciled {
    result: Result<Action, tandem::controller::Error>,
    ctx: Arc<Context>,
    /// Whether it left an HA loop running for the cluster.
    ha_loop: bool,
}

/// Run `reconcile` against `scenario`; both must finish within the timeout.
async fn run<F>(dc: DbCluster, scenario: impl FnOnce(ApiServer) -> F) -> Reconciled
where
    F: std::future::Future<Output = ApiServer> + Send + 'static,
{
    let (ctx, server, _caches) = setup();
    let scenario = tokio::spawn(scenario(server));
    let dc = Arc::new(dc);
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(dc, ctx.clone()))
        .await
        .unwrap_or_else(|_| panic!("reconcile did not finish"));
    let mut server = match tokio::time::timeout(Duration::from_secs(10), scenario).await {
        Ok(Ok(server)) => server,
        Ok(Err(e)) => panic!("scenario failed: {e}"),
        Err(_) => panic!("scenario did not finish"),
    };
    server.expect_nothing_more();
    let ha_loop = ctx.ha.drives(NS, "main");
    ctx.ha.stop_all();
    Reconciled {
        result,
        ctx,
        ha_loop,
    }
}

/// Apply every child; returns the bodies of the Secrets created.
async fn expect_children(server: &mut ApiServer, existing: &[&str]) -> Vec<Value> {
    server
        .expect_apply(
            &format!("/api/v1/namespaces/{NS}/configmaps/main-config"),
            "ConfigMap",
        )
        .await;
    let mut created = Vec::new();
    for name in ["main-superuser", "main-replication", "main-agent-token"] {
        if !existing.contains(&name) {
            created.push(server.expect_secret_create(name).await);
        }
    }
    let mut services = Vec::new();
    for svc in ["main-pods", "main-rw", "main-ro", "main-r"] {
        let path = format!("/api/v1/namespaces/{NS}/services/{svc}");
        services.push(server.expect_apply(&path, "Service").await);
    }
    assert_eq!(services[0]["spec"]["clusterIP"], "None");
    assert_eq!(services[0]["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        services[1]["spec"]["selector"]["tandem.dev/role"],
        "primary"
    );
    assert_eq!(
        services[2]["spec"]["selector"]["tandem.dev/role"],
        "standby"
    );
    assert_eq!(services[3]["spec"]["selector"].get("tandem.dev/role"), None);
    server
        .expect_apply(
            &format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/main"),
            "PodDisruptionBudget",
        )
        .await;
    server
        .expect_apply(
            &format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/main-primary"),
            "PodDisruptionBudget",
        )
        .await;
    let sts = server
        .expect_apply(
            &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/main"),
            "StatefulSet",
        )
        .await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );
    created
}

#[tokio::test]
async fn new_cluster_applies_every_child_in_order_and_leaves_its_status_to_the_ha_loop() {
    let dc = cluster(DbClusterSpec::default());
    let done = run(dc, |mut server| async move {
        for name in ["main-superuser", "main-replication", "main-agent-token"] {
            server.expect_secret_lookup(name, false).await;
        }
        server.expect_pod_list(json!([])).await;
        let created = expect_children(&mut server, &[]).await;
        assert_eq!(created.len(), 3);
        let su = &created[0]["stringData"];
        assert_eq!(su["username"], "postgres");
        assert_eq!(su["password"].as_str().map(str::len), Some(32));
        let token = &created[2]["stringData"]["token"];
        assert_eq!(token.as_str().map(str::len), Some(48));
        // No status write follows: the HA loop is its only writer.
        server
    })
    .await;
    assert_eq!(
        done.result.ok(),
        Some(Action::requeue(Duration::from_secs(60)))
    );
    assert!(done.ha_loop, "no HA loop was started for main");
}

#[tokio::test]
async fn existing_secret_is_never_overwritten() {
    let dc = cluster(DbClusterSpec::default());
    let done = run(dc, |mut server| async move {
        server.expect_secret_lookup("main-superuser", true).await;
        server.expect_secret_lookup("main-replication", false).await;
        server.expect_secret_lookup("main-agent-token", true).await;
        server.expect_pod_list(json!([])).await;
        let created = expect_children(&mut server, &["main-superuser", "main-agent-token"]).await;
        let names: Vec<&Value> = created.iter().map(|s| &s["metadata"]["name"]).collect();
        assert_eq!(names, vec!["main-replication"]);
        server
    })
    .await;
    assert!(done.result.is_ok(), "{:?}", done.result);
}

#[tokio::test]
async fn invalid_spec_sets_ready_false_and_warns_without_touching_children() {
    let mut spec = DbClusterSpec::default();
    spec.postgres
        .parameters
        .insert("port".into(), "5433".into());
    let dc = cluster(spec);
    let dc2 = dc.clone();
    let done = run(dc.clone(), |mut server| async move {
        for name in ["main-superuser", "main-replication", "main-agent-token"] {
            server.expect_secret_lookup(name, false).await;
        }
        server.expect_pod_list(json!([])).await;
        let ev = server
            .next(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        assert_eq!(ev.body["type"], "Warning");
        assert_eq!(ev.body["reason"], "InvalidSpec");
        assert_eq!(ev.body["regarding"]["name"], "main");
        let note = ev.body["note"].as_str().unwrap_or_default().to_string();
        assert!(
            note.contains("postgres.parameters.port is managed by tandem"),
            "{note}"
        );
        ev.echo();
        let status = server.expect_status_apply(&dc2).await;
        let ready = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or_default();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "InvalidSpec");
        assert!(ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("port"));
        assert_eq!(status["phase"], "Failed");
        server
    })
    .await;
    assert!(!done.ha_loop, "an HA loop was started for a refused spec");
    let err = match done.result {
        Err(e) => e,
        Ok(a) => panic!("invalid spec reconciled to {a:?}"),
    };
    assert_eq!(err.category(), Category::InvalidSpec);
    // Nothing to retry until the spec changes.
    assert_eq!(
        error_policy(Arc::new(dc), &err, done.ctx),
        Action::await_change()
    );
}

#[tokio::test]
async fn api_failure_warns_with_its_category_and_backs_off_exponentially() {
    let dc = cluster(DbClusterSpec::default());
    let done = run(dc.clone(), |mut server| async move {
        let r = server
            .next(
                Method::GET,
                &format!("/api/v1/namespaces/{NS}/secrets/main-superuser"),
            )
            .await;
        r.reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "InternalError", "code": 500, "message": "etcd is down"}),
        );
        let ev = server
            .next(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        assert_eq!(ev.body["type"], "Warning");
        assert_eq!(ev.body["reason"], "ApiError");
        let note = ev.body["note"].as_str().unwrap_or_default().to_string();
        assert!(note.contains("etcd is down"), "{note}");
        ev.echo();
        server
    })
    .await;
    let err = match done.result {
        Err(e) => e,
        Ok(a) => panic!("failed call reconciled to {a:?}"),
    };
    assert_eq!(err.category(), Category::Api);
    let dc = Arc::new(dc);
    let first = error_policy(dc.clone(), &err, done.ctx.clone());
    let second = error_policy(dc.clone(), &err, done.ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn deleted_cluster_is_left_to_the_garbage_collector() {
    let mut dc = cluster(DbClusterSpec::default());
    dc.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let done = run(dc, |server| async move { server }).await;
    assert_eq!(done.result.ok(), Some(Action::await_change()));
    assert!(
        !done.ha_loop,
        "an HA loop was started for a deleted cluster"
    );
}

fn pod(name: &str, ready: bool, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

#[tokio::test]
async fn a_pod_without_its_instance_label_gets_it_and_nothing_else() {
    let dc = cluster(DbClusterSpec::default());
    let all = ["main-superuser", "main-replication", "main-agent-token"];
    let done = run(dc, |mut server| async move {
        for name in all {
            server.expect_secret_lookup(name, true).await;
        }
        let primary = json!({"tandem.dev/cluster": "main", "tandem.dev/role": "primary"});
        let labelled = json!({"tandem.dev/cluster": "main", "tandem.dev/instance": "main-1"});
        server
            .expect_pod_list(json!([
                pod("main-0", true, primary),
                pod("main-1", false, labelled)
            ]))
            .await;
        let created = expect_children(&mut server, &all).await;
        assert!(created.is_empty());
        let path = format!("/api/v1/namespaces/{NS}/pods/main-0");
        let label = server.next(Method::PATCH, &path).await;
        // A merge patch of the instance label only: the role label is left alone.
        assert_eq!(
            label.body,
            json!({"metadata": {"labels": {"tandem.dev/instance": "main-0"}}})
        );
        let answer = pod("main-0", true, json!({"tandem.dev/instance": "main-0"}));
        label.reply(StatusCode::OK, answer);
        server
    })
    .await;
    assert!(done.result.is_ok(), "{:?}", done.result);
}

#[tokio::test]
async fn a_child_apply_refused_by_the_api_server_still_starts_the_ha_loop() {
    // As when spec.storage changed on a cluster created before the schema
    // refused it: the StatefulSet's volumeClaimTemplates are immutable.
    let dc = cluster(DbClusterSpec::default());
    let (ctx, mut server) = setup_with_ha(&dc);
    let scenario = tokio::spawn(async move {
        for name in ["main-superuser", "main-replication", "main-agent-token"] {
            server.expect_secret_lookup(name, true).await;
        }
        server.expect_pod_list(json!([])).await;
        server
            .expect_apply(
                &format!("/api/v1/namespaces/{NS}/configmaps/main-config"),
                "ConfigMap",
            )
            .await;
        for svc in ["main-pods", "main-rw", "main-ro", "main-r"] {
            let path = format!("/api/v1/namespaces/{NS}/services/{svc}");
            server.expect_apply(&path, "Service").await;
        }
        server
            .expect_apply(
                &format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/main"),
                "PodDisruptionBudget",
            )
            .await;
        server
            .expect_apply(
                &format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/main-primary"),
                "PodDisruptionBudget",
            )
            .await;
        server
            .next(
                Method::PATCH,
                &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/main"),
            )
            .await
            .reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "Invalid", "code": 422,
                       "message": "StatefulSet.apps \"main\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"}),
            );
        // The Warning Event and the HA loop's first request, in either order:
        // it reads the DbCluster from the watch cache and asks for the agent
        // token, which no cache holds yet.
        let (mut event, mut ha_read) = (false, false);
        while !(event && ha_read) {
            let r = server
                .next_any("the Warning Event and the HA loop's read")
                .await;
            match (r.method.as_str(), r.path.as_str()) {
                ("POST", p) if p == format!("/apis/events.k8s.io/v1/namespaces/{NS}/events") => {
                    assert_eq!(r.body["type"], "Warning");
                    event = true;
                    r.echo();
                }
                ("GET", p) if p == format!("/api/v1/namespaces/{NS}/secrets/main-agent-token") => {
                    ha_read = true;
                    // A failed pass: the loop retries later, the test is over by then.
                    r.reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "InternalError", "code": 500, "message": "test over"}),
                    );
                }
                (m, p) => panic!("unexpected request {m} {p}"),
            }
        }
        server
    });
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(dc), ctx.clone()),
    )
    .await
    .unwrap_or_else(|_| panic!("reconcile did not finish"));
    let err = match result {
        Err(e) => e,
        Ok(a) => panic!("a refused StatefulSet reconciled to {a:?}"),
    };
    assert!(err.to_string().contains("StatefulSet"), "{err}");
    match tokio::time::timeout(Duration::from_secs(5), scenario).await {
        Ok(Ok(_server)) => {}
        Ok(Err(e)) => panic!("scenario failed: {e}"),
        Err(_) => panic!("the HA loop never read the cluster: it was not started"),
    }
    assert!(ctx.ha.drives(NS, "main"), "no HA loop runs for main");
    ctx.ha.stop_all();
}
