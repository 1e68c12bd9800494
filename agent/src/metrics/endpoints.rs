//! `--metrics-listen`: `/metrics`, `/healthz` and `/readyz` over [`crate::http`].
//!
//! - `/metrics`: every family of [`super::registry`], OpenMetrics text when the request's
//!   `Accept` names `application/openmetrics-text`, else Prometheus text 0.0.4.
//! - `/healthz`: 200 when the reconciler's loop goes round once more within
//!   [`LOOP_DEADLINE`] of being asked to (it is woken, not merely looked at: a loop stuck in
//!   a kernel call or an apply that never returns fails this, while the HTTP task itself is
//!   fine), else 503.
//! - `/readyz`: 200 when the pod is `Healthy` (the last spec applied cleanly and nothing is
//!   degraded), else 503 (`Pending` before the first spec).
//!
//! Both health answers carry `{"Overall": .., "ObservedGeneration": .., "LastError": ..}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_schema::Overall;

use super::{reconciler_turns, registry, Live, Scraped};
use crate::http::{self, respond, Body, Limits};
use crate::reconciler::Handle;
use crate::role::Role;

/// How long `/healthz` waits for the reconciler's loop to go round. An apply in progress
/// holds the loop, so this is longer than any apply should take (10,000 rules: ~0.3 s).
pub const LOOP_DEADLINE: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoints read.
#[derive(Debug)]
pub struct Endpoints<R: Role> {
    registry: Arc<Registry>,
    status: watch::Receiver<R::Status>,
    reconciler: Handle<R>,
}

impl<R: Role> Clone for Endpoints<R> {
    fn clone(&self) -> Self {
        Endpoints {
            registry: self.registry.clone(),
            status: self.status.clone(),
            reconciler: self.reconciler.clone(),
        }
    }
}

impl<R: Role> Endpoints<R> {
    pub fn new(reconciler: Handle<R>, client: Option<async_nats::Client>) -> Endpoints<R> {
        let status = reconciler.status();
        Endpoints {
            registry: Arc::new(registry(Live {
                status: status.clone(),
                client,
            })),
            status,
            reconciler,
        }
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        http::serve(listener, Limits::default(), move |req| {
            let this = self.clone();
            async move { this.answer(req).await }
        })
        .await
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => {
                let openmetrics = req
                    .headers()
                    .get_all(hyper::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let text = super::render(&self.registry, openmetrics);
                let ct = if openmetrics {
                    OPENMETRICS
                } else {
                    PROMETHEUS_TEXT
                };
                respond(StatusCode::OK, ct, text)
            }
            "/healthz" => {
                let alive = self.loop_turns().await;
                let mut body = Health::of(&*self.status.borrow());
                if !alive {
                    body.last_error = format!(
                        "the reconciler's loop did not go round within {} s",
                        LOOP_DEADLINE.as_secs()
                    );
                }
                health(alive, &body)
            }
            "/readyz" => {
                let body = Health::of(&*self.status.borrow());
                health(body.overall == Overall::Healthy, &body)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "/metrics, /healthz, /readyz\n",
            ),
        }
    }

    /// Wakes the reconciler and waits for its loop to go round.
    async fn loop_turns(&self) -> bool {
        let before = reconciler_turns();
        self.reconciler.ping();
        let deadline = Instant::now() + LOOP_DEADLINE;
        while Instant::now() < deadline {
            if reconciler_turns() != before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }
}

/// The body of both health answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Health {
    overall: Overall,
    observed_generation: u64,
    last_error: String,
}

impl Health {
    fn of(status: &impl Scraped) -> Health {
        Health {
            overall: status.overall(),
            observed_generation: status.observed_generation(),
            last_error: status.last_error().to_owned(),
        }
    }
}

fn health(ok: bool, body: &Health) -> Response<Body> {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut text = serde_json::to_string(body).expect("serializes");
    text.push('\n');
    respond(code, "application/json", text)
}
