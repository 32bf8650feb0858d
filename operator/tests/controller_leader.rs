//! Leader election against a mocked API server: the Lease is created when
//! absent, renewed with a compare-and-swap on resourceVersion, never taken from
//! a live holder, and a lost race (409) means not leading.

use std::time::Duration;

use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tandem::controller::leader::{Elector, LeaseSettings};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/tandem-operator";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

fn elector(identity: &str) -> (Elector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let settings = LeaseSettings {
        name: "tandem-operator".into(),
        namespace: "ops".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    (Elector::new(Client::new(service, "ops"), settings), handle)
}

/// Expect `method path`, answer `status body`, return the request body.
async fn answer(
    handle: &mut Handle,
    method: Method,
    path: &str,
    status: StatusCode,
    body: Value,
) -> Value {
    let Some((req, send)) = handle.next_request().await else {
        panic!("expected {method} {path}");
    };
    assert_eq!((req.method(), req.uri().path()), (&method, path));
    let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
    let got = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let resp = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    match resp {
        Ok(r) => send.send_response(r),
        Err(e) => panic!("{e}"),
    }
    got
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

fn lease(holder: &str, version: &str, renew: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "tandem-operator", "namespace": "ops", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew, "leaseTransitions": 0}
    })
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out"))
}

#[tokio::test]
async fn absent_lease_is_created_and_held() {
    let (mut elector, mut handle) = elector("op-a");
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::NOT_FOUND,
            not_found(),
        )
        .await;
        let body = answer(
            &mut handle,
            Method::POST,
            COLLECTION,
            StatusCode::CREATED,
            lease("op-a", "1", "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "op-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        handle
    });
    assert!(matches!(
        with_timeout(elector.try_acquire_or_renew()).await,
        Ok(true)
    ));
    let mut handle = with_timeout(server).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        handle.next_request().now_or_never().is_none(),
        "extra request"
    );
}

#[tokio::test]
async fn own_lease_is_renewed_with_its_resource_version() {
    let (mut elector, mut handle) = elector("op-a");
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("op-a", "7", "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        let body = answer(
            &mut handle,
            Method::PUT,
            PATH,
            StatusCode::OK,
            lease("op-a", "8", "2026-01-01T00:00:05.000000Z"),
        )
        .await;
        assert_eq!(
            body["metadata"]["resourceVersion"], "7",
            "renewal must be a compare-and-swap"
        );
        assert_eq!(body["spec"]["holderIdentity"], "op-a");
        assert_ne!(body["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
        handle
    });
    assert!(matches!(
        with_timeout(elector.try_acquire_or_renew()).await,
        Ok(true)
    ));
    with_timeout(server).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn live_lease_of_another_replica_is_not_taken() {
    let (mut elector, mut handle) = elector("op-b");
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("op-a", "7", "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        handle
    });
    assert!(matches!(
        with_timeout(elector.try_acquire_or_renew()).await,
        Ok(false)
    ));
    let mut handle = with_timeout(server).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        handle.next_request().now_or_never().is_none(),
        "wrote a lease it does not hold"
    );
}

#[tokio::test]
async fn lost_race_on_a_released_lease_means_not_leading() {
    let (mut elector, mut handle) = elector("op-b");
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("", "9", "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        let body = answer(
            &mut handle,
            Method::PUT,
            PATH,
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "op-b");
        assert_eq!(body["spec"]["leaseTransitions"], 1);
        handle
    });
    assert!(matches!(
        with_timeout(elector.try_acquire_or_renew()).await,
        Ok(false)
    ));
    with_timeout(server).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn release_clears_the_holder() {
    let (elector, mut handle) = elector("op-a");
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            Method::GET,
            PATH,
            StatusCode::OK,
            lease("op-a", "7", "2026-01-01T00:00:00.000000Z"),
        )
        .await;
        let body = answer(
            &mut handle,
            Method::PUT,
            PATH,
            StatusCode::OK,
            lease("", "8", "2026-01-01T00:00:01.000000Z"),
        )
        .await;
        assert_eq!(body["spec"].get("holderIdentity"), None);
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        handle
    });
    assert!(with_timeout(elector.release()).await.is_ok());
    with_timeout(server).await.unwrap_or_else(|e| panic!("{e}"));
}
