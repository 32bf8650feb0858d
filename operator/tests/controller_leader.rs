//! Leader election against a mocked API server: the Lease is created when
//! absent, renewed with a compare-and-swap on resourceVersion, never taken from
//! a live holder, and a lost race (409) means not leading.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tandem::controller::leader::{Elector, LeaseSettings};
use tandem_testkit::mock_api::{status_body, with_timeout};
use tandem_testkit::MockApiServer;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/tandem-operator";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

fn elector(identity: &str) -> (Elector, MockApiServer) {
    let (client, handle) = MockApiServer::pair("ops");
    let settings = LeaseSettings {
        name: "tandem-operator".into(),
        namespace: "ops".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    (Elector::new(client, settings), handle)
}

fn not_found() -> Value {
    status_body(404, "NotFound")
}

fn lease(holder: &str, version: &str, renew: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "tandem-operator", "namespace": "ops", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew, "leaseTransitions": 0}
    })
}

#[tokio::test]
async fn absent_lease_is_created_and_held() {
    let (mut elector, mut handle) = elector("op-a");
    let server = tokio::spawn(async move {
        handle
            .answer(Method::GET, PATH, StatusCode::NOT_FOUND, not_found())
            .await;
        let body = handle
            .answer(
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
    handle.expect_nothing_more();
}

#[tokio::test]
async fn own_lease_is_renewed_with_its_resource_version() {
    let (mut elector, mut handle) = elector("op-a");
    let server = tokio::spawn(async move {
        handle
            .answer(
                Method::GET,
                PATH,
                StatusCode::OK,
                lease("op-a", "7", "2026-01-01T00:00:00.000000Z"),
            )
            .await;
        let body = handle
            .answer(
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
        handle
            .answer(
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
    // It wrote no lease it does not hold.
    handle.expect_nothing_more();
}

#[tokio::test]
async fn lost_race_on_a_released_lease_means_not_leading() {
    let (mut elector, mut handle) = elector("op-b");
    let server = tokio::spawn(async move {
        handle
            .answer(
                Method::GET,
                PATH,
                StatusCode::OK,
                lease("", "9", "2026-01-01T00:00:00.000000Z"),
            )
            .await;
        let body = handle.answer(Method::PUT,
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
        handle
            .answer(
                Method::GET,
                PATH,
                StatusCode::OK,
                lease("op-a", "7", "2026-01-01T00:00:00.000000Z"),
            )
            .await;
        let body = handle
            .answer(
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
