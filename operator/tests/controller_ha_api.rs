//! The HA loop's Kubernetes calls against a mocked API server (kube's
//! tower-test pattern): the exact method, path, query, content type and body
//! of each request the platform sends for labels, fencing, annotation
//! removal, status and the agent token.

use http::{Method, StatusCode};
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{json, Value};
use tandem::api::{DbCluster, DbClusterStatus};
use tandem::controller::ha::{KubeClient, KubeOps, Token};
use tandem_testkit::mock_api::status_body;
use tandem_testkit::MockApiServer;

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
    (KubeClient { client, recorder }, handle)
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
        "metadata": {"name": "main", "namespace": "db", "uid": "u-1", "generation": 2},
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
    assert!(call.await.map(|r| r.is_ok()).unwrap_or(false));
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
