//! The agent's HTTP API (DESIGN.md §4) with axum: bearer token compared in
//! constant time on everything but /healthz, /readyz and /metrics, JSON
//! errors, a body size limit; actions run one at a time in their own task so
//! a caller that goes away cannot interrupt one halfway. Does I/O.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::api::agent::*;

use super::state::{lock, Agent};
use super::{actions, ops, probe, vouch as vouching, AgentError, BadRequest};

type Shared = Arc<Agent>;

/// How long `GET /status?fresh=true` may wait for its probe (then it answers with the last one).
const FRESH_STATUS: std::time::Duration = std::time::Duration::from_millis(300);

/// How long an action's answer may wait for the probe that shows its effect.
const FRESH_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serve the API on `listener` until the process ends.
pub async fn serve(agent: Shared, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(agent)).await
}

/// The router (public for in-process use).
pub fn router(agent: Shared) -> Router {
    let protected = Router::new()
        .route(PATH_STATUS, get(status))
        .route(PATH_PROMOTE, post(promote))
        .route(PATH_DEMOTE, post(demote))
        .route(PATH_FOLLOW, post(follow))
        .route(PATH_REWIND, post(rewind))
        .route(PATH_RECLONE, post(reclone))
        .route(PATH_CHECKPOINT, post(checkpoint))
        .route(PATH_STOP, post(stop))
        .route(PATH_START, post(start))
        .route(PATH_RESTART, post(restart))
        .route(PATH_CONFIG, post(config))
        .route(PATH_LEASE, post(lease))
        .route(PATH_VOUCH, post(vouch))
        .route(PATH_STOP_VOUCHING, post(stop_vouching))
        .route(PATH_DROP_SLOTS, post(drop_slots))
        .route(PATH_CHECKS, post(checks))
        .route_layer(middleware::from_fn_with_state(agent.clone(), auth));
    Router::new()
        .route(PATH_HEALTHZ, get(healthz))
        .route(PATH_READYZ, get(readyz))
        .route(PATH_METRICS, get(metrics))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(agent)
}

async fn auth(State(agent): State<Shared>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = given.as_bytes().ct_eq(agent.cfg.token.as_bytes()).into();
    if !ok || given.is_empty() {
        tracing::warn!(path = %req.uri().path(), "refused: missing or wrong bearer token");
        return AgentError::Unauthorized.into_response();
    }
    next.run(req).await
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let body = ErrorBody {
        error: "not_found".into(),
        detail: format!("no such call: {}", uri.path()),
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

fn snapshot(agent: &Agent) -> AgentStatus {
    let mut st = agent.status.read().map(|s| s.clone()).unwrap_or_default();
    probe::overlay_live(agent, &mut st);
    st
}

async fn readyz(State(agent): State<Shared>) -> Response {
    let st = snapshot(&agent);
    let body = serde_json::json!({"ready": st.ready, "role": st.role});
    let code = if st.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(agent): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        agent.metrics.render(),
    )
        .into_response()
}

async fn status(State(agent): State<Shared>, Query(q): Query<StatusQuery>) -> Response {
    if q.fresh {
        agent.fresh_probe(FRESH_STATUS).await;
    }
    Json(snapshot(&agent)).into_response()
}

fn body_error(rej: BytesRejection) -> Response {
    let body = ErrorBody {
        error: ERR_BAD_REQUEST.into(),
        detail: rej.body_text(),
    };
    (rej.status(), Json(body)).into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| BadRequest::MalformedBody(e).into())
}

fn parse_or_default<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, AgentError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(body)
}

/// The request body, read and parsed with `parse`, or the 4xx answer.
fn request<T>(
    body: Result<Bytes, BytesRejection>,
    parse: fn(&Bytes) -> Result<T, AgentError>,
) -> Result<T, Box<Response>> {
    let body = body.map_err(|rej| Box::new(body_error(rej)))?;
    parse(&body).map_err(|e| Box::new(e.into_response()))
}

/// Run one action: serialised with the others, in its own task, logged.
async fn act<T, F, Fut>(agent: Shared, name: &'static str, f: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(Shared) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, AgentError>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let _ops = agent.ops.lock().await;
        tracing::info!(instance = %agent.cfg.instance, action = name, "action started");
        *lock(&agent.operation) = Some(name.to_string());
        let result = f(agent.clone()).await;
        *lock(&agent.operation) = None;
        match &result {
            Ok(_) => {
                tracing::info!(instance = %agent.cfg.instance, action = name, "action succeeded");
                agent.set_activity(None);
            }
            Err(e) => {
                tracing::warn!(instance = %agent.cfg.instance, action = name, error = %e, "action failed");
                agent.set_activity(Some(format!("{name} failed: {e}")));
            }
        }
        // Answer with /status already showing the action's effect.
        agent.fresh_probe(FRESH_PROBE).await;
        result
    });
    match task.await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(source) => AgentError::TaskFailed {
            action: name,
            source,
        }
        .into_response(),
    }
}

/// As [`act`], but the answer goes out as soon as `f` succeeds, without
/// waiting for a probe: `then`, the rest of the action, runs after it (still
/// serialised with the other actions), and /status shows the effect with the
/// probe that `then` ends with. For the promotion, whose caller moves the
/// `-rw` route on the answer; its polls during a transition ask for a probe
/// begun after them anyway.
async fn act_then<T, F, Fut, G, GFut>(agent: Shared, name: &'static str, f: F, then: G) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(Shared) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, AgentError>> + Send + 'static,
    G: FnOnce(Shared) -> GFut + Send + 'static,
    GFut: Future<Output = Result<(), AgentError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ops = agent.ops.lock().await;
        tracing::info!(instance = %agent.cfg.instance, action = name, "action started");
        *lock(&agent.operation) = Some(name.to_string());
        let result = f(agent.clone()).await;
        let ok = result.is_ok();
        match &result {
            Ok(_) => {
                tracing::info!(instance = %agent.cfg.instance, action = name, "action succeeded; answered")
            }
            Err(e) => {
                tracing::warn!(instance = %agent.cfg.instance, action = name, error = %e, "action failed");
                agent.set_activity(Some(format!("{name} failed: {e}")));
            }
        }
        if !ok {
            agent.fresh_probe(FRESH_PROBE).await;
        }
        let _ = tx.send(result);
        if ok {
            match then(agent.clone()).await {
                Ok(()) => agent.set_activity(None),
                Err(e) => {
                    tracing::warn!(instance = %agent.cfg.instance, action = name, error = %e, "action succeeded but its last steps failed");
                    agent.set_activity(Some(format!("{name}: its last steps failed: {e}")));
                }
            }
            agent.fresh_probe(FRESH_PROBE).await;
        }
        *lock(&agent.operation) = None;
    });
    match rx.await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => match task.await {
            Err(source) => AgentError::TaskFailed {
                action: name,
                source,
            }
            .into_response(),
            Ok(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
    }
}

macro_rules! handler {
    ($fn:ident, $req:ty, $parse:ident, $action:path) => {
        async fn $fn(State(agent): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
            let req: $req = match request(body, $parse) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            act(agent, stringify!($fn), move |a| $action(a, req)).await
        }
    };
}

/// `POST /promote` answers as soon as the server left recovery (see [`act_then`]).
async fn promote(State(agent): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: PromoteRequest = match request(body, parse_or_default) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    act_then(
        agent,
        "promote",
        move |a| actions::promote(a, req),
        actions::after_promotion,
    )
    .await
}
handler!(demote, DemoteRequest, parse, actions::demote);
handler!(follow, FollowRequest, parse, actions::follow);
handler!(rewind, RewindRequest, parse, actions::rewind);
handler!(reclone, RecloneRequest, parse, actions::reclone);
handler!(stop, StopRequest, parse_or_default, ops::stop);
handler!(start, StopRequest, parse_or_default, ops::start);
handler!(restart, StopRequest, parse_or_default, ops::restart);
handler!(config, ConfigRequest, parse_or_default, ops::config);
handler!(drop_slots, DropSlotsRequest, parse, ops::drop_slots);
/// `POST /checkpoint` takes no body and is not serialised with the actions:
/// the stop a switchover issues after it must not wait behind a slow one.
async fn checkpoint(State(agent): State<Shared>) -> Response {
    match ops::checkpoint(agent).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed");
            e.into_response()
        }
    }
}

/// `POST /lease` is not serialised with the actions: a renewal must never
/// wait behind a long action, or the primary would fence itself.
async fn lease(State(agent): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: LeaseRequest = match request(body, parse) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    match ops::lease(agent, req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /vouch` answers at once from the agent's state: a primary's vouch
/// round must not wait behind an action here.
async fn vouch(State(agent): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    match request::<VouchRequest>(body, parse) {
        Ok(req) => Json(vouching::vouch(&agent, &req).await).into_response(),
        Err(answer) => *answer,
    }
}

/// `POST /stop-vouching` is not queued behind actions either: the engine
/// asks it before a promotion and counts from its answer.
async fn stop_vouching(
    State(agent): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: StopVouchingRequest = match request(body, parse) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    match vouching::stop_vouching(&agent, &req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /checks` only records settings: it answers at once, never behind an action.
async fn checks(State(agent): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: ChecksRequest = match request(body, parse) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    match super::expect::apply(&agent, req) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
