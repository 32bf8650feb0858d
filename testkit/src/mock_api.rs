//! A mocked Kubernetes API server (kube's tower-test pattern): a
//! `kube::Client` whose requests arrive here one at a time, so a test
//! asserts the exact sequence (method, path, query, content type, body) and
//! answers each; anything it did not expect fails the test. In memory.

use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The server side of a mocked API.
pub struct MockApiServer(Handle);

/// One request as received, to be answered.
pub struct Received {
    /// HTTP method.
    pub method: Method,
    /// URI path.
    pub path: String,
    /// URI query (empty when none).
    pub query: String,
    /// `Content-Type` header (empty when none).
    pub content_type: String,
    /// JSON body (`Null` when empty or not JSON).
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Received {
    /// Answer with `status` and a JSON `body`.
    pub fn reply(self, status: StatusCode, body: Value) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        match Response::builder().status(status).body(Body::from(bytes)) {
            Ok(resp) => self.respond.send_response(resp),
            Err(e) => panic!("building a response: {e}"),
        }
    }

    /// Answer with the request's own body, as the API server does for applies.
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(StatusCode::OK, body);
    }

    /// Answer 404 with the API server's `Status` body.
    pub fn not_found(self) {
        self.reply(StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    }
}

/// The API server's failure `Status` body for `code` and `reason`.
pub fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

/// Await `f` for at most 10 seconds (panics then): a client that never sends keeps no test hanging.
pub async fn with_timeout<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out"))
}

impl MockApiServer {
    /// The next raw request with its responder, as tower-test hands it out
    /// (`None` once the client is gone): for tests that answer by hand.
    pub async fn next_request(
        &mut self,
    ) -> Option<(
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    )> {
        self.0.next_request().await
    }

    /// A client whose default namespace is `namespace`, and the server it talks to.
    pub fn pair(namespace: &str) -> (Client, MockApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, namespace), MockApiServer(handle))
    }

    /// The next request, which must be `method path`.
    pub async fn next(&mut self, method: Method, path: &str) -> Received {
        let r = self.next_any(&format!("{method} {path}")).await;
        assert_eq!(
            (&r.method, r.path.as_str()),
            (&method, path),
            "unexpected request (query {}, body {})",
            r.query,
            r.body
        );
        r
    }

    /// The next request, whatever it is (`expected` names it in the failure).
    pub async fn next_any(&mut self, expected: &str) -> Received {
        let Some((request, respond)) = self.0.next_request().await else {
            panic!("expected {expected}, but the client sent nothing more");
        };
        let (parts, body) = request.into_parts();
        let bytes = match body.collect_bytes().await {
            Ok(b) => b,
            Err(e) => panic!("reading request body: {e}"),
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Received {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body,
            respond,
        }
    }

    /// Expect `method path`, answer `status body`, and return the request's body.
    pub async fn answer(
        &mut self,
        method: Method,
        path: &str,
        status: StatusCode,
        body: Value,
    ) -> Value {
        let r = self.next(method, path).await;
        let got = r.body.clone();
        r.reply(status, body);
        got
    }

    /// No request is waiting. Call it after the client returned, so every
    /// request it made has already arrived.
    pub fn expect_nothing_more(&mut self) {
        use futures::FutureExt;
        if let Some(Some((req, _))) = self.0.next_request().now_or_never() {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}
