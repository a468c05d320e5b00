//! HTTP listener: `/healthz`, `/readyz` and `/metrics` in every mode (Kubernetes probes, the seed's
//! `curl localhost:8080/healthz`). The REST API of RUN_MODE=http mounts on the same router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

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

#[derive(Serialize)]
struct ReadyReport {
    ready: bool,
    relays: bool,
    tor: bool,
    api_server: bool,
    draining: bool,
}

impl Readiness {
    fn report(&self) -> ReadyReport {
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

/// Router with the three operational endpoints.
pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<HealthState>) -> Response {
    let report = s.readiness.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

async fn metrics(State(s): State<HealthState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_dependency_is() {
        let r = Readiness::default();
        assert!(!r.report().ready);
        r.relays.store(true, Ordering::Relaxed);
        r.tor.store(true, Ordering::Relaxed);
        r.api_server.store(true, Ordering::Relaxed);
        assert!(r.report().ready);
        r.draining.store(true, Ordering::Relaxed);
        assert!(!r.report().ready);
    }
}
