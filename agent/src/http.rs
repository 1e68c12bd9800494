//! A small HTTP/1.1 server for the agent's metrics and health endpoints (and `weftctl
//! dashboard`): hyper's HTTP/1 connection code on tokio, no TLS stack, and every limit
//! stated: connections at once, the size of a request head, how long a client may take to
//! send it. Only `GET` and `HEAD` are served; a request body is never read.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use weft_emitter::rate::LogGate;

/// A response body: a whole buffer, or a stream (server-sent events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How much a client may ask of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub connections: usize,
    /// Time to send a request head, from the connection's start or the previous response
    /// (an idle keep-alive connection is closed after it too).
    pub head_timeout: Duration,
    /// The largest request head, in bytes (hyper's floor is 8 KiB).
    pub head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 16,
            head_timeout: Duration::from_secs(5),
            head_bytes: 8 * 1024,
        }
    }
}

/// A whole response with `status`, `content_type` and `body`.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()).boxed_unsync())
        .expect("static headers are valid")
}

/// Serves `handler` on `listener` until the task is dropped. `handler` sees only `GET` and
/// `HEAD` requests (others are answered 405 here).
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut gate = LogGate::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                if let Some(skipped) = gate.pass("accept") {
                    warn!(cause = %e, skipped, "HTTP accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(skipped) = gate.pass("full") {
                warn!(%peer, skipped, limit = limits.connections, "HTTP connection refused: too many at once");
            }
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    if req.method() != Method::GET && req.method() != Method::HEAD {
                        return Ok::<_, Infallible>(not_allowed());
                    }
                    Ok(handler(req).await)
                }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .max_buf_size(limits.head_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                debug!(%peer, cause = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

fn not_allowed() -> Response<Body> {
    let mut r = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        "only GET and HEAD\n",
    );
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static("GET, HEAD"),
    );
    r
}
