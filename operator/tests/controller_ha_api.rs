//! The HA loop's Kubernetes calls against a mocked API server (kube's
//! tower-test pattern): the exact method, path, query, content type and body
//! of each request the platform sends for labels, fencing, annotation
//! removal, status and the agent token; and one HA pass over watch caches
//! whose status write is refused as stale (409 Conflict); and why an agent
//! over HTTP did not answer (timeout, connection refused, 401, bad answer).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use http::{Method, Response, StatusCode};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{json, Value};
use tandem::api::agent::{AgentStatus, LeaseState, Member};
use tandem::api::{
    AgentUnanswered, DbCluster, DbClusterStatus, HistoryEntry, HistoryKind, HistoryOutcome,
    InstanceRole,
};
use tandem::controller::error::Category;
use tandem::controller::ha::{
    AgentOps, AgentTarget, ClusterLoop, HttpAgents, KubeClient, KubeOps, LoopConfig, Token,
};
use tandem::controller::stores::Stores;
use tandem::controller::validate::Defaults;
use tandem::engine::Action;
use tandem_testkit::mock_api::status_body;
use tandem_testkit::MockApiServer;

/// The mocked API server's side, as the tests below drive it.
type Handle = MockApiServer;

/// What the client sent, kept after the request was answered.
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

fn setup() -> (KubeClient, MockApiServer) {
    let (client, handle) = MockApiServer::pair("db");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tandem-operator".into(),
            instance: Some("test".into()),
        },
    );
    let stores = Stores::from_objects(vec![], vec![], vec![], vec![]);
    (
        KubeClient {
            client,
            recorder,
            stores,
        },
        handle,
    )
}

/// Receive one request, answer it with `status` and `reply`, and return what was sent.
async fn answer(handle: &mut MockApiServer, status: StatusCode, reply: Value) -> Seen {
    let r = handle.next_any("a request").await;
    let seen = Seen {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        content_type: r.content_type.clone(),
        body: r.body.clone(),
    };
    r.reply(status, reply);
    seen
}

fn pod_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "db"}})
}

fn cluster() -> DbCluster {
    serde_json::from_value(json!({
        "apiVersion": "tandem.dev/v1alpha1", "kind": "DbCluster",
        "metadata": {"name": "main", "namespace": "db", "uid": "u-1", "generation": 2, "resourceVersion": "41"},
        "spec": {"instances": 3}
    }))
    .unwrap_or_else(|e| panic!("fixture: {e}"))
}

#[tokio::test]
async fn role_label_is_a_merge_patch_of_that_label_only() {
    let (kube, mut h) = setup();
    let call = tokio::spawn(async move { kube.set_role_label("db", "main-1", "primary").await });
    let seen = answer(&mut h, StatusCode::OK, pod_json("main-1")).await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, "/api/v1/namespaces/db/pods/main-1");
    assert!(
        seen.query.contains("fieldManager=tandem-operator"),
        "{}",
        seen.query
    );
    assert_eq!(seen.content_type, "application/merge-patch+json");
    assert_eq!(
        seen.body,
        json!({"metadata": {"labels": {"tandem.dev/role": "primary"}}})
    );
    assert!(call.await.map(|r| r.is_ok()).unwrap_or(false));
}

#[tokio::test]
async fn fencing_deletes_the_pod_at_once_and_a_gone_pod_is_fine() {
    let (kube, mut h) = setup();
    let call = tokio::spawn(async move { kube.delete_pod("db", "main-0", Some(0)).await });
    let seen = answer(&mut h, StatusCode::NOT_FOUND, status_body(404, "NotFound")).await;
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(seen.path, "/api/v1/namespaces/db/pods/main-0");
    assert_eq!(seen.body["gracePeriodSeconds"], json!(0), "{}", seen.body);
    assert!(
        call.await.map(|r| r.is_ok()).unwrap_or(false),
        "404 counts as fenced"
    );
}

#[tokio::test]
async fn request_annotation_is_removed_only_if_its_value_is_unchanged() {
    let (kube, mut h) = setup();
    let dc = cluster();
    let call = tokio::spawn(async move {
        kube.remove_annotation(&dc, "tandem.dev/switchover", "main-1")
            .await
    });
    // 422: the test op failed (the user changed the value meanwhile): not an error.
    let seen = answer(
        &mut h,
        StatusCode::UNPROCESSABLE_ENTITY,
        status_body(422, "Invalid"),
    )
    .await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path,
        "/apis/tandem.dev/v1alpha1/namespaces/db/dbclusters/main"
    );
    assert_eq!(seen.content_type, "application/json-patch+json");
    assert_eq!(
        seen.body,
        json!([
            {"op": "test", "path": "/metadata/annotations/tandem.dev~1switchover", "value": "main-1"},
            {"op": "remove", "path": "/metadata/annotations/tandem.dev~1switchover"}
        ])
    );
    assert!(call.await.map(|r| r.is_ok()).unwrap_or(false));
}

#[tokio::test]
async fn status_is_server_side_applied_on_the_status_subresource() {
    let (kube, mut h) = setup();
    let dc = cluster();
    let status = DbClusterStatus {
        current_primary: Some("main-0".into()),
        ..DbClusterStatus::default()
    };
    let call = tokio::spawn(async move { kube.patch_status(&dc, &status).await });
    let mut reply = serde_json::to_value(cluster()).unwrap_or_default();
    reply["status"] = json!({"currentPrimary": "main-0"});
    let seen = answer(&mut h, StatusCode::OK, reply).await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path,
        "/apis/tandem.dev/v1alpha1/namespaces/db/dbclusters/main/status"
    );
    assert!(
        seen.query.contains("fieldManager=tandem-operator"),
        "{}",
        seen.query
    );
    assert!(seen.query.contains("force=true"), "{}", seen.query);
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(seen.body["status"]["currentPrimary"], json!("main-0"));
    assert_eq!(seen.body["kind"], json!("DbCluster"));
    // The optimistic lock: only over the object the status was decided from.
    assert_eq!(seen.body["metadata"]["resourceVersion"], json!("41"));
    assert_eq!(seen.body["metadata"]["name"], json!("main"));
    assert!(call.await.map(|r| r.is_ok()).unwrap_or(false));
}

#[tokio::test]
async fn a_status_write_over_a_changed_object_is_refused_as_a_conflict() {
    let (kube, mut h) = setup();
    let dc = cluster();
    let status = DbClusterStatus {
        current_primary: Some("main-0".into()),
        ..DbClusterStatus::default()
    };
    let call = tokio::spawn(async move { kube.patch_status(&dc, &status).await });
    // What the API server answers when metadata.resourceVersion is no longer current.
    let seen = answer(&mut h, StatusCode::CONFLICT, status_body(409, "Conflict")).await;
    assert_eq!(seen.body["metadata"]["resourceVersion"], json!("41"));
    let result = call.await.unwrap_or_else(|e| panic!("task: {e}"));
    let Err(e) = result else {
        panic!("a stale write must fail")
    };
    assert_eq!(e.category(), Category::Conflict, "{e}");
}

#[tokio::test]
async fn agent_token_comes_from_the_clusters_secret() {
    let (kube, mut h) = setup();
    let call = tokio::spawn(async move { kube.agent_token("db", "main").await });
    let seen = answer(
        &mut h,
        StatusCode::OK,
        // base64("s3cret\n")
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "main-agent-token"},
               "data": {"token": "czNjcmV0Cg=="}}),
    )
    .await;
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/api/v1/namespaces/db/secrets/main-agent-token");
    let token = call.await.ok().and_then(|r| r.ok()).flatten();
    assert_eq!(token, Some(Token("s3cret".into())));
    assert_eq!(
        format!("{:?}", Token("s3cret".into())),
        "Token(***)",
        "never printed"
    );
}

#[tokio::test]
async fn agent_token_is_read_from_the_watch_cache_without_a_request() {
    let (mut kube, mut h) = setup();
    let token: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "main-agent-token", "namespace": "db"},
        "data": {"token": "czNjcmV0Cg=="}
    }))
    .unwrap_or_else(|e| panic!("secret: {e}"));
    kube.stores = Stores::from_objects(vec![], vec![], vec![token], vec![]);
    let token = kube.agent_token("db", "main").await.ok().flatten();
    assert_eq!(token, Some(Token("s3cret".into())));
    assert!(h.next_request().now_or_never().is_none(), "no API request");
}

#[tokio::test]
async fn missing_token_secret_means_no_agent_can_be_called_yet() {
    let (kube, mut h) = setup();
    let call = tokio::spawn(async move { kube.agent_token("db", "main").await });
    answer(&mut h, StatusCode::NOT_FOUND, status_body(404, "NotFound")).await;
    assert_eq!(call.await.ok().and_then(|r| r.ok()), Some(None));
}

#[tokio::test]
async fn event_is_published_on_the_dbcluster_with_its_reason() {
    let (kube, mut h) = setup();
    let dc = cluster();
    let call = tokio::spawn(async move {
        kube.event(
            &dc,
            tandem::engine::EventType::Warning,
            "RequestRefused",
            "bad value",
        )
        .await
    });
    let seen = answer(&mut h, StatusCode::CREATED, json!({})).await;
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/apis/events.k8s.io/v1/namespaces/db/events");
    assert_eq!(seen.body["reason"], json!("RequestRefused"));
    assert_eq!(seen.body["type"], json!("Warning"));
    assert_eq!(seen.body["note"], json!("bad value"));
    assert_eq!(seen.body["regarding"]["kind"], json!("DbCluster"));
    assert_eq!(seen.body["regarding"]["name"], json!("main"));
    let _ = call.await;
}

/// A one-instance cluster's agent: main-0 answers as a running primary; every
/// action asked of it is recorded.
#[derive(Clone, Default)]
struct PrimaryAgent(Arc<Mutex<Vec<String>>>);

impl AgentOps for PrimaryAgent {
    async fn status(&self, t: &AgentTarget, _: Duration) -> Option<AgentStatus> {
        Some(AgentStatus {
            instance: t.instance.clone(),
            role: InstanceRole::Primary,
            ready: true,
            postgres_running: true,
            timeline: Some(1),
            current_lsn: "0/3000060".parse().ok(),
            system_identifier: Some("7300000000000000001".into()),
            lease: LeaseState {
                held: true,
                remaining_ms: Some(5000),
                ..LeaseState::default()
            },
            ..AgentStatus::default()
        })
    }

    async fn call(
        &self,
        t: &AgentTarget,
        action: &Action,
        _: &BTreeMap<String, Member>,
        _: &tandem::api::agent::ToolLimits,
    ) -> Result<tandem::engine::Answer, String> {
        let mut calls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        calls.push(format!("{} {action:?}", t.instance));
        Ok(tandem::engine::Answer::default())
    }
}

/// DbCluster `main` with one instance at `resource_version`, with `status`.
fn watched_cluster(resource_version: &str, status: Option<DbClusterStatus>) -> DbCluster {
    let mut dc: DbCluster = serde_json::from_value(json!({
        "apiVersion": "tandem.dev/v1alpha1", "kind": "DbCluster",
        "metadata": {"name": "main", "namespace": "db", "uid": "u-1", "generation": 2,
                     "resourceVersion": resource_version},
        "spec": {"instances": 1}
    }))
    .unwrap_or_else(|e| panic!("fixture: {e}"));
    dc.status = status;
    dc
}

/// An HA loop over the mocked API server whose watch caches hold `dc`, its
/// running pod `main-0` and its agent token.
fn loop_over_caches(
    dc: &DbCluster,
    agent: PrimaryAgent,
) -> (ClusterLoop<KubeClient, PrimaryAgent>, Handle) {
    let (mut kube, handle) = setup();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "main-0", "namespace": "db", "uid": "uid-0",
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {"tandem.dev/cluster": "main"}},
        "status": {"phase": "Running", "podIP": "10.0.0.10",
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap_or_else(|e| panic!("pod: {e}"));
    let token: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "main-agent-token", "namespace": "db"},
        // base64("s3cret")
        "data": {"token": "czNjcmV0"}
    }))
    .unwrap_or_else(|e| panic!("secret: {e}"));
    kube.stores = Stores::from_objects(vec![dc.clone().into()], vec![pod], vec![token], vec![]);
    let config = LoopConfig {
        poll_timeout: Duration::from_millis(500),
        starting_grace: Duration::from_secs(60),
        agent_port: 8000,
        defaults: Defaults {
            postgres_image: "postgres-image:test".into(),
        },
        service_settle: Duration::ZERO,
    };
    let lp = ClusterLoop::new(Arc::new(kube), Arc::new(agent), "db", "main", config);
    (lp, handle)
}

const STATUS_PATH: &str = "/apis/tandem.dev/v1alpha1/namespaces/db/dbclusters/main/status";
const CLUSTER_PATH: &str = "/apis/tandem.dev/v1alpha1/namespaces/db/dbclusters/main";

/// What a newer leader wrote meanwhile: a history entry of its own.
fn newer_status() -> DbClusterStatus {
    let mut status = DbClusterStatus::default();
    status.push_history(HistoryEntry::new(
        HistoryKind::Request,
        HistoryOutcome::Refused,
        "2026-01-01T00:00:00Z".into(),
        "written by the newer leader".into(),
    ));
    status
}

fn history_messages(status: &Value) -> Vec<String> {
    status["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_stale_leaders_status_write_is_refused_and_nothing_is_carried_out() {
    let agent = PrimaryAgent::default();
    let (mut lp, mut h) = loop_over_caches(&watched_cluster("41", None), agent.clone());
    let pass = tokio::spawn(async move {
        let result = lp.pass(jiff::Timestamp::now()).await;
        (result, lp)
    });
    // Every pass reads the caches: the first request is the status write,
    // conditional on the version the decision was made from.
    let seen = answer(&mut h, StatusCode::CONFLICT, status_body(409, "Conflict")).await;
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::PATCH, STATUS_PATH)
    );
    assert_eq!(seen.body["metadata"]["resourceVersion"], json!("41"));
    assert!(seen.query.contains("force=true"), "{}", seen.query);
    // Refused: the loop reads the object again, past the cache, and decides again.
    for rv in ["42", "43"] {
        let newer =
            serde_json::to_value(watched_cluster(rv, Some(newer_status()))).unwrap_or_default();
        let seen = answer(&mut h, StatusCode::OK, newer).await;
        assert_eq!(
            (seen.method, seen.path.as_str()),
            (Method::GET, CLUSTER_PATH)
        );
        let seen = answer(&mut h, StatusCode::CONFLICT, status_body(409, "Conflict")).await;
        assert_eq!(
            (seen.method, seen.path.as_str()),
            (Method::PATCH, STATUS_PATH)
        );
        assert_eq!(seen.body["metadata"]["resourceVersion"], json!(rv));
        // Decided again from what it read, not the first decision re-sent.
        assert!(
            history_messages(&seen.body["status"]).contains(&"written by the newer leader".into()),
            "{}",
            seen.body["status"]
        );
    }
    let (result, lp) = pass.await.unwrap_or_else(|e| panic!("pass: {e}"));
    match result {
        Err(e) => assert_eq!(e.category(), Category::Conflict, "{e}"),
        Ok(p) => panic!("a pass whose every write was refused came to {p:?}"),
    }
    // Nothing was carried out: no label, no Event, no agent action.
    if let Some(Some((req, _))) = h.next_request().now_or_never() {
        panic!(
            "carried out {} {} after a refused write",
            req.method(),
            req.uri()
        );
    }
    assert_eq!(lp.in_flight(), 0);
    let calls = agent.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        calls.is_empty(),
        "agent actions after a refused write: {calls:?}"
    );
}

#[tokio::test]
async fn after_a_conflict_the_pass_acts_on_what_it_decided_from_the_newer_object() {
    let agent = PrimaryAgent::default();
    let (mut lp, mut h) = loop_over_caches(&watched_cluster("41", None), agent.clone());
    let pass = tokio::spawn(async move {
        let result = lp.pass(jiff::Timestamp::now()).await;
        let settled = lp.settle(Duration::from_secs(5)).await;
        (result, settled)
    });
    let seen = answer(&mut h, StatusCode::CONFLICT, status_body(409, "Conflict")).await;
    assert_eq!(seen.body["metadata"]["resourceVersion"], json!("41"));
    let newer =
        serde_json::to_value(watched_cluster("42", Some(newer_status()))).unwrap_or_default();
    let seen = answer(&mut h, StatusCode::OK, newer).await;
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::GET, CLUSTER_PATH)
    );
    let mut written = serde_json::to_value(watched_cluster("43", None)).unwrap_or_default();
    let seen = answer(&mut h, StatusCode::OK, written.clone()).await;
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::PATCH, STATUS_PATH)
    );
    assert_eq!(seen.body["metadata"]["resourceVersion"], json!("42"));
    assert!(
        history_messages(&seen.body["status"]).contains(&"written by the newer leader".into()),
        "{}",
        seen.body["status"]
    );
    written["status"] = seen.body["status"].clone();
    // Only now are the actions carried out (the role label, Events).
    let mut acted = Vec::new();
    while let Ok(Some((req, respond))) =
        tokio::time::timeout(Duration::from_millis(500), h.next_request()).await
    {
        acted.push(format!("{} {}", req.method(), req.uri().path()));
        let reply = Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(serde_json::to_vec(&written).unwrap_or_default()));
        match reply {
            Ok(r) => respond.send_response(r),
            Err(e) => panic!("response: {e}"),
        }
    }
    let (result, settled) = pass.await.unwrap_or_else(|e| panic!("pass: {e}"));
    assert!(result.is_ok(), "{result:?}");
    assert!(settled);
    assert!(
        acted
            .iter()
            .any(|r| r == "PATCH /api/v1/namespaces/db/pods/main-0"),
        "the primary's role label after the accepted write: {acted:?}"
    );
}

/// A one-connection HTTP server on 127.0.0.1 that answers every request with
/// `response` (raw HTTP), or never answers when it is `None`.
async fn agent_answering(response: Option<&'static str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            match response {
                Some(r) => {
                    let _ = conn.write_all(r.as_bytes()).await;
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    });
    format!("http://{addr}")
}

async fn poll_reason(base_url: String) -> Option<AgentUnanswered> {
    let target = AgentTarget {
        instance: "main-0".into(),
        base_url,
        token: Token("wrong".into()),
    };
    HttpAgents::default()
        .poll(&target, Duration::from_millis(300))
        .await
        .err()
        .flatten()
}

#[tokio::test]
async fn the_reason_an_agent_does_not_answer_is_told_apart() {
    tandem::controller::install_crypto_provider();
    let unauthorized = "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 45\r\nconnection: close\r\n\r\n{\"error\":\"unauthorized\",\"detail\":\"bad token\"}";
    assert_eq!(
        poll_reason(agent_answering(Some(unauthorized)).await).await,
        Some(AgentUnanswered::Unauthorized)
    );
    let garbage = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    assert_eq!(
        poll_reason(agent_answering(Some(garbage)).await).await,
        Some(AgentUnanswered::BadAnswer)
    );
    assert_eq!(
        poll_reason(agent_answering(None).await).await,
        Some(AgentUnanswered::Timeout)
    );
    // Nothing listens on a port just released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
    };
    assert_eq!(
        poll_reason(format!("http://{closed}")).await,
        Some(AgentUnanswered::ConnectionRefused)
    );
}
