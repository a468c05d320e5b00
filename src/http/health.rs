//! `/healthz`, `/readyz` and `/metrics`: served in every mode (Kubernetes probes, the seed's
//! `curl localhost:8080/healthz`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::Metrics;

/// What readiness waits on. Background tasks in `app` keep these current.
#[derive(Default)]
pub struct Readiness {
    /// At least one relay connected (always true in http mode).
    pub relays: AtomicBool,
    /// Tor bootstrapped (always true with ENABLE_TOR_SIDECAR=false).
    pub tor: AtomicBool,
    /// The Kubernetes API server answered recently.
    pub api_server: AtomicBool,
    /// SIGTERM received: stop taking requests.
    pub draining: AtomicBool,
}

/// Body of `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct ReadyReport {
    pub(super) ready: bool,
    relays: bool,
    tor: bool,
    api_server: bool,
    draining: bool,
}

impl Readiness {
    pub(super) fn report(&self) -> ReadyReport {
        let relays = self.relays.load(Ordering::Relaxed);
        let tor = self.tor.load(Ordering::Relaxed);
        let api_server = self.api_server.load(Ordering::Relaxed);
        let draining = self.draining.load(Ordering::Relaxed);
        ReadyReport { ready: relays && tor && api_server && !draining, relays, tor, api_server, draining }
    }
}

#[derive(Clone)]
pub struct HealthState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
pub(super) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = ReadyReport, description = "Ready: relays (nostr mode), Tor and the API server"),
    (status = 503, body = ReadyReport, description = "Not ready, or draining after SIGTERM"),
))]
pub(super) async fn readyz(State(s): State<HealthState>) -> Response {
    let report = s.readiness.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, content_type = "text/plain", body = String, description = "Prometheus text format")
))]
pub(super) async fn metrics(State(s): State<HealthState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}
