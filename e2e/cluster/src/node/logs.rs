//! Container logs: each run's stdout+stderr go to `<pod dir>/<container>.log`
//! (the previous run's to `<container>.previous.log`), and the kubelet's HTTPS
//! port serves them to the API server (`kubectl logs`, kube-rs `Api::logs`):
//! `GET /containerLogs/{ns}/{pod}/{container}?previous&tailLines&limitBytes&follow`.
//! The port is mutual TLS: the node's serving certificate from `DIR/pki`, and
//! a client certificate signed by the cluster CA is required (the API server
//! presents `apiserver-kubelet-client`). I/O.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::ctx::{lock, Ctx, Run};
use crate::config::{PkiFile, GATEWAY};

type Body = BoxBody<Bytes, Infallible>;

/// `<name>.previous.log` beside `<name>.log`.
pub fn previous_path(log: &Path) -> PathBuf {
    let stem = log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    log.with_file_name(format!("{stem}.previous.log"))
}

/// The kubelet port of the node at `index` (0-based): 10251, 10252, …
pub fn port(index: usize) -> u16 {
    10250u16.saturating_add(u16::try_from(index + 1).unwrap_or(0))
}

fn tls_config(ctx: &Ctx) -> Result<rustls::ServerConfig> {
    let cfg = &ctx.cfg;
    let cert_path = cfg.pki_cert(&PkiFile::Kubelet);
    let key_path = cfg.pki_key(&PkiFile::Kubelet);
    let ca_path = cfg.pki_cert(&PkiFile::Ca);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca_path)
        .with_context(|| format!("reading {}", ca_path.display()))?
    {
        roots
            .add(c.with_context(|| format!("parsing {}", ca_path.display()))?)
            .context("adding the cluster CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the kubelet serving certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serve the kubelet port on GATEWAY:`port` until the process ends.
pub async fn serve(ctx: Arc<Ctx>, port: u16) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&ctx)?));
    let listener = tokio::net::TcpListener::bind((GATEWAY, port))
        .await
        .with_context(|| format!("listening on {GATEWAY}:{port}"))?;
    tracing::info!(address = %format!("{GATEWAY}:{port}"), "kubelet port (mTLS) serving container logs");
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "kubelet connection");
            }
        });
    }
}

fn text(code: StatusCode, msg: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(msg.into()).boxed());
    *r.status_mut() = code;
    r
}

/// The query parameters the stand-in understands.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// The previous run's log.
    pub previous: bool,
    /// Keep streaming while the container runs.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// At most N bytes.
    pub limit_bytes: Option<usize>,
}

/// Parse `previous=true&tailLines=10…`.
pub fn parse_query(q: Option<&str>) -> LogQuery {
    let mut out = LogQuery::default();
    for kv in q.unwrap_or("").split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        let yes = v == "true" || v == "1";
        match k {
            "previous" => out.previous = yes,
            "follow" => out.follow = yes,
            "tailLines" => out.tail_lines = v.parse().ok(),
            "limitBytes" => out.limit_bytes = v.parse().ok(),
            _ => {}
        }
    }
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

async fn handle(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{path}: the test cluster's node serves only /containerLogs"),
        );
    };
    let q = parse_query(req.uri().query());
    let Some(p) = ctx.find_pod(ns, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on node {}", ctx.node),
        );
    };
    let Some(c) = p.container(container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container} is not valid for pod {pod}"),
        );
    };
    let (log, state) = {
        let c = lock(&c);
        (c.log.clone(), c.state.clone())
    };
    let file = if q.previous { previous_path(&log) } else { log };
    let bytes = match tokio::fs::read(&file).await {
        Ok(b) => b,
        Err(_) if q.previous => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            )
        }
        Err(_) => {
            let why = match state {
                Run::Waiting { reason, .. } => format!(": {reason}"),
                _ => String::new(),
            };
            return text(
                StatusCode::BAD_REQUEST,
                format!("container \"{container}\" in pod \"{pod}\" is waiting to start{why}"),
            );
        }
    };
    let mut start = match q.tail_lines {
        Some(n) => bytes.len() - tail(&bytes, n).len(),
        None => 0,
    };
    if let Some(limit) = q.limit_bytes {
        let end = (start + limit).min(bytes.len());
        return text(StatusCode::OK, bytes[start..end].to_vec());
    }
    let initial = Bytes::from(bytes[start..].to_vec());
    start = bytes.len();
    if !q.follow || q.previous {
        return text(StatusCode::OK, initial);
    }
    // follow: what is there, then what is appended while the container runs.
    let state = (Some(initial), file, start as u64, c, 0u32);
    let stream = futures::stream::unfold(state, |(first, file, offset, c, idle)| async move {
        if let Some(b) = first {
            return Some((Ok(Frame::data(b)), (None, file, offset, c, 0)));
        }
        let (mut offset, mut idle) = (offset, idle);
        loop {
            let mut buf = Vec::new();
            if let Ok(mut f) = tokio::fs::File::open(&file).await {
                if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    let _ = f.read_to_end(&mut buf).await;
                }
            }
            if !buf.is_empty() {
                offset += buf.len() as u64;
                return Some((
                    Ok(Frame::data(Bytes::from(buf))),
                    (None, file, offset, c, 0),
                ));
            }
            let running = lock(&c).running();
            // A run ended (or its log was rotated): the stream ends, as kubectl expects.
            let same_file = tokio::fs::metadata(&file)
                .await
                .map(|m| m.len() >= offset)
                .unwrap_or(false);
            if (!running && idle > 4) || !same_file {
                return None;
            }
            idle = idle.saturating_add(1);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }

    #[test]
    fn query_parameters_are_read() {
        assert_eq!(
            parse_query(Some("follow=true&tailLines=10&previous=false")),
            LogQuery {
                previous: false,
                follow: true,
                tail_lines: Some(10),
                limit_bytes: None
            }
        );
        assert_eq!(parse_query(None), LogQuery::default());
    }

    #[test]
    fn previous_log_sits_beside_the_log() {
        assert_eq!(
            previous_path(Path::new("/x/pods/u/postgres.log")),
            PathBuf::from("/x/pods/u/postgres.previous.log")
        );
    }
}
