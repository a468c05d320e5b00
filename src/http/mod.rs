//! HTTP listener: `/healthz`, `/readyz` and `/metrics` in every mode (Kubernetes probes, the seed's
//! `curl localhost:8080/healthz`); the REST API of RUN_MODE=http; the operator's wallet endpoints when an
//! admin token is configured. The API drives the same `LeaseService` as the Nostr front end: there is no
//! second code path for money.
//!
//! Secrets travel in bodies and headers. Nothing here logs a URI, a header or a body (GET /auth carries a
//! token in its query string; POST /auth is preferred), and axum/hyper are built without their tracing
//! features, so no layer below logs them either.

mod serve;
pub use serve::serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::warn;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::lease::ports::{FailureKind, PaymentPort, PortError, ReplyRoute, ReplyVia, TokenState};
use crate::lease::service::price_of;
use crate::lease::{Incoming, LeaseService};
use crate::metrics::Metrics;
use crate::protocol::{
    ErrorCode, LeaseAccess, LeaseRequest, LeaseStatus, Offer, ReleaseRequest, Reply, StatusRequest, Tier, TopUpRequest,
    MAX_CONTENT_BYTES,
};

// ---------------------------------------------------------------- health

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

/// Router with the three operational endpoints only (no API, no admin).
pub fn health_router(state: HealthState) -> Router {
    router(state, None, None)
}

/// Everything the listener serves: health always, the REST API when `api` is given (RUN_MODE=http), the
/// wallet endpoints when `admin` is given (an admin token is configured).
pub fn router(health: HealthState, api: Option<Arc<Api>>, admin: Option<Arc<Admin>>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    if let Some(api) = api {
        r = r.merge(
            Router::new()
                .route("/v1/leases", post(create_lease))
                .route("/v1/leases/{id}", get(lease_status).delete(release_lease))
                .route("/v1/leases/{id}/topup", post(topup_lease))
                .route("/v1/offer", get(get_offer))
                .route("/auth", get(auth_get).post(auth_post))
                .route("/openapi.json", get(openapi))
                .with_state(api),
        );
    }
    if let Some(admin) = admin {
        r = r.merge(
            Router::new()
                .route("/admin/wallet/balance", get(admin_balance))
                .route("/admin/wallet/send", post(admin_send))
                .with_state(admin),
        );
    }
    // axum's own 404/405 have empty or text bodies; every answer of this API is JSON.
    r.fallback(no_route).method_not_allowed_fallback(wrong_method)
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = ReadyReport, description = "Ready: relays (nostr mode), Tor and the API server"),
    (status = 503, body = ReadyReport, description = "Not ready, or draining after SIGTERM"),
))]
async fn readyz(State(s): State<HealthState>) -> Response {
    let report = s.readiness.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, content_type = "text/plain", body = String, description = "Prometheus text format")
))]
async fn metrics(State(s): State<HealthState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::InvalidRequest, "no such endpoint")
}

async fn wrong_method() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::InvalidRequest, "method not allowed on this endpoint")
}

// ---------------------------------------------------------------- errors

/// The HTTP status of each error code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::InvalidRequest
        | E::InvalidToken
        | E::InvalidUsername
        | E::InvalidPublicKey
        | E::ImageNotAllowed
        | E::UnknownTier => StatusCode::BAD_REQUEST,
        E::MintNotAllowed | E::UnitNotSupported | E::TokenSpent | E::AmountTooSmall | E::AmountTooLarge => {
            StatusCode::PAYMENT_REQUIRED
        }
        E::LeaseNotFound | E::NotLeaseOwner => StatusCode::NOT_FOUND,
        E::LeaseExpired | E::LeaseEnded => StatusCode::GONE,
        E::ContentTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        E::MintUnavailable | E::Unavailable | E::NoCapacity => StatusCode::SERVICE_UNAVAILABLE,
        E::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        E::ProvisioningFailed => StatusCode::BAD_GATEWAY,
        E::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Body of every error answer; the same fields as a Nostr error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Always `error`.
    pub status: String,
    pub code: ErrorCode,
    pub message: String,
    /// Set when the request reached the lease logic; quote it to the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A token worth what was received minus mint fees, when money was taken and then the lease failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_token: Option<String>,
}

/// An error answer: status, JSON body, and the headers some statuses call for.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: keeps `Result<_, ApiError>` small.
    pub body: Box<ErrorBody>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                status: "error".into(),
                code,
                message: message.into(),
                request_id: None,
                refund_token: None,
            }),
            retry_after: None,
        }
    }

    /// Status from the code's mapping.
    pub fn code(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(status_for(code), code, message)
    }

    fn unauthorized(what: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidRequest,
            format!("Authorization: Bearer <{what}> required"),
        )
    }

    fn from_port(e: PortError) -> Self {
        match e.kind {
            FailureKind::Rejected(code) => Self::code(code, e.message),
            FailureKind::Transient => Self::code(ErrorCode::Unavailable, e.message),
            FailureKind::Permanent => Self::code(ErrorCode::Internal, e.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(&*self.body)).into_response();
        let h = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

// ---------------------------------------------------------------- extractors

/// A JSON body with this API's own rejections: 415 for another content type, 413 above
/// `MAX_CONTENT_BYTES`, 400 `invalid_request` for anything unparseable. axum's text rejections never leak,
/// and no rejection echoes the body (serde messages may quote values, which may be tokens).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidRequest,
                "Content-Type must be application/json",
            ));
        }
        let too_large =
            || ApiError::code(ErrorCode::ContentTooLarge, format!("body larger than {MAX_CONTENT_BYTES} bytes"));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_CONTENT_BYTES as u64) {
            return Err(too_large());
        }
        // The limit also holds for chunked bodies; a client that hangs up mid-body gets no answer anyway, and
        // one that dribbles it is cut off (slowloris).
        let read = axum::body::to_bytes(req.into_body(), MAX_CONTENT_BYTES);
        let bytes = tokio::time::timeout(serve::BODY_TIMEOUT, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::InvalidRequest,
                    "request body not received in time",
                )
            })?
            .map_err(|_| too_large())?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Parse a body; the error names the problem's place, never a value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let text = e.to_string();
        let what = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => "malformed JSON".to_string(),
            // "missing field `x`" / "unknown variant" name fields, not values; other data errors may quote one.
            Category::Data if text.starts_with("missing field") => {
                text.split(" at line").next().unwrap_or("missing field").to_string()
            }
            Category::Data => "JSON does not match the expected body".to_string(),
        };
        ApiError::code(ErrorCode::InvalidRequest, format!("{what} (line {}, column {})", e.line(), e.column()))
    })
}

/// The bearer credential, if any. The scheme is case-insensitive (RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, cred) = v.split_once(' ')?;
    let cred = cred.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !cred.is_empty()).then_some(cred)
}

/// `Idempotency-Key`: 1-255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::code(ErrorCode::InvalidRequest, "Idempotency-Key must be 1-255 visible ASCII characters");
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s))
}

// ---------------------------------------------------------------- identities

/// Request id of an HTTP request. With an Idempotency-Key it is derived from the key and the request itself,
/// so a retried request is the same saga (one lease, one redeem) and knowing the key alone replays nothing:
/// the body holds the token. Without one it is random.
pub fn request_id(kind: &str, key: Option<&str>, parts: &[&[u8]]) -> String {
    match key {
        Some(k) => {
            let mut h = Sha256::new();
            h.update(b"paygress-http-request\0");
            for p in [kind.as_bytes(), k.as_bytes()].into_iter().chain(parts.iter().copied()) {
                h.update((p.len() as u64).to_be_bytes());
                h.update(p);
            }
            hex::encode(h.finalize())
        }
        None => {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        }
    }
}

/// The lease secret S of a create request: 32 random-looking bytes derived from a provider secret and the
/// request id, so a retried POST (same Idempotency-Key) is answered with the same S, even after a restart,
/// while nobody without the provider's key can compute it.
pub fn lease_secret(key: &[u8; 32], request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"paygress-lease-secret\0");
    h.update(key);
    h.update(request_id.as_bytes());
    hex::encode(h.finalize())
}

/// The lease owner as the saga and the pod annotation know it: hex(sha256(S)). A bearer that is not a
/// 64-hex secret is hashed as given and simply owns nothing.
pub fn requester_of(secret: &str) -> String {
    let raw = hex::decode(secret).unwrap_or_else(|_| secret.as_bytes().to_vec());
    hex::encode(Sha256::digest(raw))
}

// ---------------------------------------------------------------- the lease API

/// What the REST API needs; `app` builds it.
pub struct Api {
    pub service: Arc<LeaseService>,
    pub payment: Arc<dyn PaymentPort>,
    pub offer: Offer,
    /// From the provider's key (see [`lease_secret`]).
    pub lease_secret_key: [u8; 32],
    /// Shared with the Nostr dispatcher's limit: at most this many sagas at once; SIGTERM waits for them.
    pub workers: Arc<Semaphore>,
}

impl Api {
    fn metrics(&self) -> &Metrics {
        self.service.metrics()
    }

    /// Front-end refusals count among request outcomes, like the saga's own.
    fn refuse(&self, e: ApiError) -> Response {
        self.metrics().outcome(e.body.code.as_str());
        e.into_response()
    }

    /// Run one saga to its reply. Spawned: a client that hangs up must not cancel a saga between two money
    /// steps (the journal would resume it, but only at the next resume pass).
    async fn run(&self, incoming: Incoming) -> Result<Reply, ApiError> {
        let request_id = incoming.route().request_id.clone();
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::code(ErrorCode::Unavailable, "shutting down"))?;
        let service = self.service.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            service.handle(incoming).await
        });
        match task.await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                // In flight (a retry of a request still running) or parked on a transient failure.
                let mut e = ApiError::code(
                    ErrorCode::Unavailable,
                    "the request is still being processed; retry with the same Idempotency-Key to get its result",
                );
                e.body.request_id = Some(request_id);
                e.retry_after = Some(5);
                Err(e)
            }
            Err(e) => {
                warn!(error = %e, "lease task failed");
                Err(ApiError::code(ErrorCode::Internal, "internal error"))
            }
        }
    }

    /// Run a paid request and answer it; a key the server made for it goes back in `Idempotency-Key`.
    async fn respond(&self, incoming: Incoming, lease_secret: Option<String>, generated_key: Option<&str>) -> Response {
        let resp = match self.run(incoming).await {
            Ok(reply) => self.answer(reply, lease_secret),
            Err(e) => e.into_response(),
        };
        with_generated_key(resp, generated_key)
    }

    /// A reply as an HTTP answer.
    fn answer(&self, reply: Reply, lease_secret: Option<String>) -> Response {
        match reply {
            Reply::Ok { request_id, amount_sats, duration_seconds, access, refund_token } => {
                let location = format!("/v1/leases/{}", access.lease_id);
                let body = LeaseCreated {
                    status: "ok".into(),
                    request_id,
                    amount_sats,
                    duration_seconds,
                    access: *access,
                    lease_secret: lease_secret.unwrap_or_default(),
                    refund_token,
                };
                let mut resp = (StatusCode::CREATED, Json(body)).into_response();
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            Reply::Error { request_id, code, message, refund_token } => {
                let mut e = ApiError::code(code, message);
                e.body.request_id = Some(request_id);
                e.body.refund_token = refund_token;
                e.into_response()
            }
            other => (StatusCode::OK, Json(other)).into_response(),
        }
    }
}

/// Answer of `POST /v1/leases`: the lease's access details and its bearer secret, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseCreated {
    /// Always `ok`.
    pub status: String,
    pub request_id: String,
    /// Sats received after mint fees.
    pub amount_sats: u64,
    pub duration_seconds: u64,
    pub access: LeaseAccess,
    /// Bearer secret for top-up and status of this lease (`Authorization: Bearer <lease_secret>`). Keep it:
    /// it is returned again only to a retry with the same Idempotency-Key and body.
    pub lease_secret: String,
    /// What was paid beyond the longest lease, returned as a Cashu token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_token: Option<String>,
}

/// Body of `POST /v1/leases/{id}/topup`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopUpBody {
    pub cashu_token: String,
}

#[utoipa::path(post, path = "/v1/leases", tag = "leases", request_body = LeaseRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: the same key and body give the same lease, paid once")),
    responses(
        (status = 201, body = LeaseCreated, description = "The lease is up; lease_secret is its bearer secret"),
        (status = 400, body = ErrorBody, description = "invalid_request, invalid_token, invalid_username, invalid_public_key, image_not_allowed, unknown_tier"),
        (status = 402, body = ErrorBody, description = "mint_not_allowed, unit_not_supported, token_spent, amount_too_small, amount_too_large"),
        (status = 413, body = ErrorBody, description = "content_too_large"),
        (status = 415, body = ErrorBody, description = "Content-Type is not application/json"),
        (status = 502, body = ErrorBody, description = "provisioning_failed; refund_token returns the payment"),
        (status = 503, body = ErrorBody, description = "mint_unavailable, no_capacity, unavailable (retry with the same Idempotency-Key; without one, the answer's Idempotency-Key header holds the key the server made)"),
    ))]
async fn create_lease(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<ApiJson<LeaseRequest>, ApiError>,
) -> Response {
    let request = match body {
        Ok(ApiJson(r)) => r,
        Err(e) => return api.refuse(e),
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return api.refuse(e),
    };
    let canonical = serde_json::to_vec(&request).unwrap_or_default();
    // Without a key the server makes one and returns it: a request that parks (503) can then be retried
    // with it to get the paid lease's access, which would otherwise be out of reach.
    let (key, generated) = key_or_generated(key);
    let request_id = request_id("create", Some(&key), &[&canonical]);
    let secret = lease_secret(&api.lease_secret_key, &request_id);
    let route = ReplyRoute { request_id, requester: requester_of(&secret), via: ReplyVia::InBand };
    api.respond(Incoming::Create { route, request }, Some(secret), generated.then_some(key.as_str())).await
}

/// Lease ids are 12 hex chars; pod names add `ssh-pod-`. Anything else is nobody's lease.
fn plausible_lease(id: &str) -> bool {
    id.len() <= 63 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id or pod name")),
    security(("lease_secret" = [])),
    responses(
        (status = 200, body = Reply, description = "`status`: the lease's state"),
        (status = 401, body = ErrorBody, description = "No bearer secret"),
        (status = 404, body = ErrorBody, description = "lease_not_found: no such lease, or not this secret's"),
    ))]
async fn lease_status(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(secret) = bearer(&headers) else {
        return api.refuse(ApiError::unauthorized("lease_secret"));
    };
    if !plausible_lease(&id) {
        return api.refuse(ApiError::code(ErrorCode::LeaseNotFound, "no such lease of yours"));
    }
    let route = ReplyRoute {
        request_id: request_id("status", None, &[]),
        requester: requester_of(secret),
        via: ReplyVia::InBand,
    };
    match api.run(Incoming::Status { route, request: StatusRequest { lease: id } }).await {
        Ok(reply) => api.answer(reply, None),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id or pod name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: refunded once")),
    security(("lease_secret" = [])),
    responses(
        (status = 200, body = Reply, description = "`released`: the lease is gone; refund_token holds its unused whole minutes"),
        (status = 401, body = ErrorBody, description = "No bearer secret"),
        (status = 404, body = ErrorBody, description = "lease_not_found: no such lease, or not this secret's"),
        (status = 410, body = ErrorBody, description = "lease_expired: it has already ended"),
    ))]
async fn release_lease(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(secret) = bearer(&headers) else {
        return api.refuse(ApiError::unauthorized("lease_secret"));
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return api.refuse(e),
    };
    if !plausible_lease(&id) {
        return api.refuse(ApiError::code(ErrorCode::LeaseNotFound, "no such lease of yours"));
    }
    let requester = requester_of(secret);
    let (key, generated) = key_or_generated(key);
    let request_id = request_id("release", Some(&key), &[id.as_bytes(), requester.as_bytes()]);
    let route = ReplyRoute { request_id, requester, via: ReplyVia::InBand };
    let incoming = Incoming::Release { route, request: ReleaseRequest { lease: id } };
    api.respond(incoming, None, generated.then_some(key.as_str())).await
}

#[utoipa::path(post, path = "/v1/leases/{id}/topup", tag = "leases", request_body = TopUpBody,
    params(("id" = String, Path, description = "Lease id or pod name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    security(("lease_secret" = [])),
    responses(
        (status = 200, body = Reply, description = "`extended`: the new expiry"),
        (status = 401, body = ErrorBody, description = "No bearer secret"),
        (status = 402, body = ErrorBody, description = "Payment refused (see code)"),
        (status = 404, body = ErrorBody, description = "lease_not_found: no such lease, or not this secret's"),
        (status = 410, body = ErrorBody, description = "lease_expired"),
    ))]
async fn topup_lease(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<ApiJson<TopUpBody>, ApiError>,
) -> Response {
    let Some(secret) = bearer(&headers) else {
        return api.refuse(ApiError::unauthorized("lease_secret"));
    };
    let body = match body {
        Ok(ApiJson(b)) => b,
        Err(e) => return api.refuse(e),
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return api.refuse(e),
    };
    if !plausible_lease(&id) {
        return api.refuse(ApiError::code(ErrorCode::LeaseNotFound, "no such lease of yours"));
    }
    let requester = requester_of(secret);
    let (key, generated) = key_or_generated(key);
    let parts: [&[u8]; 3] = [id.as_bytes(), requester.as_bytes(), body.cashu_token.as_bytes()];
    let request_id = request_id("topup", Some(&key), &parts);
    let route = ReplyRoute { request_id, requester, via: ReplyVia::InBand };
    let request = TopUpRequest { cashu_token: body.cashu_token, lease: id };
    api.respond(Incoming::TopUp { route, request }, None, generated.then_some(key.as_str())).await
}

/// The client's Idempotency-Key, or a fresh random one (and whether it was made here).
fn key_or_generated(key: Option<&str>) -> (String, bool) {
    match key {
        Some(k) => (k.to_string(), false),
        None => {
            let mut b = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut b);
            (hex::encode(b), true)
        }
    }
}

/// A key made by the server goes back in the `Idempotency-Key` header: the way to retry the very request.
fn with_generated_key(mut resp: Response, generated: Option<&str>) -> Response {
    if let Some(v) = generated.and_then(|k| HeaderValue::from_str(k).ok()) {
        resp.headers_mut().insert("idempotency-key", v);
    }
    resp
}

#[utoipa::path(get, path = "/v1/offer", tag = "leases", responses((status = 200, body = Offer)))]
async fn get_offer(State(api): State<Arc<Api>>) -> Json<Offer> {
    Json(api.offer.clone())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

// ---------------------------------------------------------------- /auth (the seed's token check)

/// Would this token pay for this long? Checked without redeeming.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuthCheck {
    /// A cashuA/cashuB token (also accepted as `cashu_token`).
    #[serde(alias = "cashu_token")]
    pub token: String,
    pub duration_minutes: u64,
    /// Tier whose rate applies; the default tier when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthResult {
    pub ok: bool,
    /// Face value of the token in sats (0 when it cannot be read).
    pub amount: u64,
    /// Sats the duration costs at the tier's rate.
    pub required: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Api {
    fn tier(&self, name: Option<&str>) -> Option<&Tier> {
        let name = name.unwrap_or(&self.offer.default_tier);
        self.offer.tiers.iter().find(|t| t.name == name)
    }

    /// Offline checks (encoding, whitelisted mint, unit, lock, price), then the proofs' state at the mint
    /// (NUT-07, a read): nothing is redeemed.
    async fn check(&self, q: AuthCheck) -> Result<AuthResult, ApiError> {
        let tier =
            self.tier(q.tier.as_deref()).ok_or_else(|| ApiError::code(ErrorCode::UnknownTier, "unknown tier"))?;
        let secs = q.duration_minutes.saturating_mul(60);
        if secs > self.offer.max_duration_seconds {
            return Err(ApiError::code(
                ErrorCode::InvalidRequest,
                format!("duration_minutes above the maximum of {} s", self.offer.max_duration_seconds),
            ));
        }
        let required = price_of(secs.max(self.offer.min_duration_seconds), tier.sats_per_hour);
        let refused = |amount, code: ErrorCode, message: String| AuthResult {
            ok: false,
            amount,
            required,
            code: Some(code),
            message: Some(message),
        };
        let info = match self.payment.inspect(&q.token) {
            Ok(i) => i,
            Err(e) => {
                let code = match e.kind {
                    FailureKind::Rejected(c) => c,
                    _ => ErrorCode::InvalidToken,
                };
                return Ok(refused(0, code, e.message));
            }
        };
        if info.amount < required {
            return Ok(refused(
                info.amount,
                ErrorCode::AmountTooSmall,
                format!("{} sat is less than the {required} sat needed", info.amount),
            ));
        }
        match self.payment.token_state(&q.token).await {
            Ok(TokenState::Unspent) => {
                Ok(AuthResult { ok: true, amount: info.amount, required, code: None, message: None })
            }
            Ok(_) => {
                Ok(refused(info.amount, ErrorCode::TokenSpent, "the token is spent or pending at its mint".into()))
            }
            Err(e) if e.is_transient() => Ok(refused(info.amount, ErrorCode::MintUnavailable, e.message)),
            Err(e) => Err(ApiError::from_port(e)),
        }
    }
}

#[utoipa::path(get, path = "/auth", tag = "auth", params(AuthCheck),
    description = "The seed's check. The token is in the URL: prefer POST /auth.",
    responses(
        (status = 200, body = AuthResult, description = "ok tells whether the token would pay; it is not redeemed"),
        (status = 400, body = ErrorBody),
    ))]
async fn auth_get(
    State(api): State<Arc<Api>>,
    q: Result<Query<AuthCheck>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        // The rejection's text could quote the query; say only what is expected.
        return ApiError::code(ErrorCode::InvalidRequest, "expected ?token=…&duration_minutes=N").into_response();
    };
    match api.check(q).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(post, path = "/auth", tag = "auth", request_body = AuthCheck,
    responses(
        (status = 200, body = AuthResult, description = "ok tells whether the token would pay; it is not redeemed"),
        (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
async fn auth_post(State(api): State<Arc<Api>>, body: Result<ApiJson<AuthCheck>, ApiError>) -> Response {
    let q = match body {
        Ok(ApiJson(q)) => q,
        Err(e) => return e.into_response(),
    };
    match api.check(q).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------- operator wallet

/// A token made from the provider's wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletSent {
    pub token: String,
    pub mint: String,
    /// Face value sent; below the request when the wallet was short.
    pub amount: u64,
}

/// The operator's view of the wallet; `app` implements it over the payment adapter.
#[async_trait]
pub trait WalletAdmin: Send + Sync {
    /// Spendable sats per mint.
    async fn balances(&self) -> Result<Vec<(String, u64)>, PortError>;
    async fn send(&self, mint: Option<&str>, amount: u64) -> Result<WalletSent, PortError>;
}

pub struct Admin {
    token_digest: [u8; 32],
    wallet: Arc<dyn WalletAdmin>,
}

impl Admin {
    pub fn new(token: &str, wallet: Arc<dyn WalletAdmin>) -> Self {
        Admin { token_digest: Sha256::digest(token.as_bytes()).into(), wallet }
    }

    /// Compared as digests: equal-length values, and timing reveals nothing useful about the token.
    fn authorised(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = bearer(headers).ok_or_else(|| ApiError::unauthorized("admin token"))?;
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let diff = d.iter().zip(self.token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidRequest, "wrong admin token"))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MintBalance {
    pub mint: String,
    pub sats: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WalletBalance {
    pub balances: Vec<MintBalance>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WalletSendBody {
    pub amount: u64,
    /// Mint URL; the one with the largest balance when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint: Option<String>,
}

#[utoipa::path(get, path = "/admin/wallet/balance", tag = "admin", security(("admin_token" = [])),
    description = "Only when PAYGRESS_ADMIN_TOKEN(_FILE) is set.",
    responses((status = 200, body = WalletBalance), (status = 401, body = ErrorBody)))]
async fn admin_balance(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(e) = admin.authorised(&headers) {
        return e.into_response();
    }
    match admin.wallet.balances().await {
        Ok(b) => {
            let total = b.iter().map(|(_, s)| s).sum();
            let balances = b.into_iter().map(|(mint, sats)| MintBalance { mint, sats }).collect();
            Json(WalletBalance { balances, total }).into_response()
        }
        Err(e) => ApiError::from_port(e).into_response(),
    }
}

#[utoipa::path(post, path = "/admin/wallet/send", tag = "admin", security(("admin_token" = [])),
    request_body = WalletSendBody, description = "Only when PAYGRESS_ADMIN_TOKEN(_FILE) is set.",
    responses((status = 200, body = WalletSent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn admin_send(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Result<ApiJson<WalletSendBody>, ApiError>,
) -> Response {
    if let Err(e) = admin.authorised(&headers) {
        return e.into_response();
    }
    let body = match body {
        Ok(ApiJson(b)) => b,
        Err(e) => return e.into_response(),
    };
    if body.amount == 0 {
        return ApiError::code(ErrorCode::InvalidRequest, "amount must be at least 1").into_response();
    }
    match admin.wallet.send(body.mint.as_deref(), body.amount).await {
        Ok(sent) => Json(sent).into_response(),
        Err(e) => ApiError::from_port(e).into_response(),
    }
}

// ---------------------------------------------------------------- admin client (`paygress wallet …`)

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("cannot reach the provider at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the provider at {addr} answered {status}: {message}")]
    Refused { addr: SocketAddr, status: u16, message: String },
    #[error("unreadable answer from the provider at {addr}: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
}

impl AdminClientError {
    pub fn kind(&self) -> FailureKind {
        match self {
            AdminClientError::Connect { .. } => FailureKind::Transient,
            AdminClientError::Refused { .. } | AdminClientError::Malformed { .. } => FailureKind::Permanent,
        }
    }
}

impl From<AdminClientError> for PortError {
    fn from(e: AdminClientError) -> Self {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One admin call to a running provider: a plain HTTP/1.1 exchange on loopback (no HTTP client crate for
/// two requests). A listener on 0.0.0.0/[::] is reached on loopback.
pub async fn admin_call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, AdminClientError> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let connect = |reason: String| AdminClientError::Connect { addr: target, reason };
    let malformed = |reason: &str| AdminClientError::Malformed { addr: target, reason: reason.to_string() };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target).await.map_err(|e| connect(e.to_string()))?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        stream.write_all(req.as_bytes()).await.map_err(|e| connect(e.to_string()))?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|e| connect(e.to_string()))?;
        Ok::<Vec<u8>, AdminClientError>(raw)
    };
    let raw = tokio::time::timeout(ADMIN_CALL_TIMEOUT, exchange).await.map_err(|_| connect("timed out".into()))??;
    let (status, body) = split_response(&raw).ok_or_else(|| malformed("not an HTTP response"))?;
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| malformed("body is not JSON"))?;
    if (200..300).contains(&status) {
        Ok(json)
    } else {
        let message = json["message"].as_str().unwrap_or("no message").to_string();
        Err(AdminClientError::Refused { addr: target, status, message })
    }
}

/// Status and body of a complete HTTP/1.1 response (Content-Length or chunked).
fn split_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &raw[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------- OpenAPI

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("lease_secret", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The API's OpenAPI document, derived from the handlers and the protocol types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Paygress HTTP API",
        description = "RUN_MODE=http: SSH pods for Cashu ecash. Errors are {\"status\":\"error\",\"code\",\"message\"} \
                       with the protocol's stable codes. Tokens in URLs leak into proxies' logs: prefer POST /auth."
    ),
    paths(
        create_lease, lease_status, release_lease, topup_lease, get_offer, auth_get, auth_post, admin_balance, admin_send,
        healthz, readyz, metrics
    ),
    components(schemas(
        LeaseRequest, LeaseCreated, LeaseAccess, LeaseStatus, TopUpBody, Reply, ErrorBody, ErrorCode, Offer, Tier,
        AuthCheck, AuthResult, WalletBalance, MintBalance, WalletSendBody, WalletSent, ReadyReport
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "leases", description = "Buy, extend and query a lease"),
        (name = "auth", description = "Check a token without spending it"),
        (name = "admin", description = "Operator wallet access (admin token)"),
        (name = "operations", description = "Probes and metrics")
    )
)]
pub struct ApiDoc;

/// Pretty JSON of [`ApiDoc`]; docs/openapi.json is this text.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into())
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

    #[test]
    fn status_mapping() {
        use ErrorCode as E;
        for (code, status) in [
            (E::InvalidRequest, 400),
            (E::InvalidToken, 400),
            (E::InvalidUsername, 400),
            (E::UnknownTier, 400),
            (E::AmountTooSmall, 402),
            (E::TokenSpent, 402),
            (E::MintNotAllowed, 402),
            (E::UnitNotSupported, 402),
            (E::LeaseNotFound, 404),
            (E::NotLeaseOwner, 404),
            (E::LeaseExpired, 410),
            (E::ContentTooLarge, 413),
            (E::Unavailable, 503),
            (E::MintUnavailable, 503),
            (E::Internal, 500),
            (E::ProvisioningFailed, 502),
        ] {
            assert_eq!(status_for(code).as_u16(), status, "{code}");
        }
        let e = ApiError::code(E::TokenSpent, "spent");
        let v = serde_json::to_value(&e.body).unwrap();
        assert_eq!(v, serde_json::json!({"status": "error", "code": "token_spent", "message": "spent"}));
    }

    #[test]
    fn json_errors_never_quote_values() {
        let secret = "cashuBsecretsecret";
        let bad_type = format!(r#"{{"cashu_token": 1, "ssh_username": "{secret}"}}"#);
        let wrong_field_type = format!(r#"{{"amount": "{secret}"}}"#);
        for (body, expect) in [
            (b"{not json".to_vec(), "malformed JSON"),
            (bad_type.into_bytes(), "JSON does not match"),
            (br#"{"ssh_username":"a"}"#.to_vec(), "missing field `cashu_token`"),
        ] {
            let e = parse_json::<LeaseRequest>(&body).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body.code, ErrorCode::InvalidRequest);
            assert!(e.body.message.starts_with(expect), "{}", e.body.message);
            assert!(!e.body.message.contains(secret));
        }
        let e = parse_json::<WalletSendBody>(wrong_field_type.as_bytes()).err().unwrap();
        assert!(!e.body.message.contains(secret), "{}", e.body.message);
    }

    #[test]
    fn extractors_read_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);

        assert!(!is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("Application/JSON; charset=utf-8"));
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));

        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert("idempotency-key", HeaderValue::from_static("k-1"));
        assert_eq!(idempotency_key(&h).unwrap(), Some("k-1"));
        h.insert("idempotency-key", HeaderValue::from_static("two words"));
        assert!(idempotency_key(&h).is_err());
    }

    #[tokio::test]
    async fn json_extractor_rejections() {
        async fn extract(ct: Option<&str>, body: Vec<u8>) -> Result<ApiJson<LeaseRequest>, ApiError> {
            let mut b = Request::builder().method("POST").uri("/v1/leases");
            if let Some(ct) = ct {
                b = b.header(header::CONTENT_TYPE, ct);
            }
            ApiJson::from_request(b.body(axum::body::Body::from(body)).unwrap(), &()).await
        }
        let ok = extract(Some("application/json"), br#"{"cashu_token":"t"}"#.to_vec()).await;
        assert_eq!(ok.ok().unwrap().0.cashu_token, "t");
        let e = extract(Some("text/plain"), b"{}".to_vec()).await.err().unwrap();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = extract(None, b"{}".to_vec()).await.err().unwrap();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = extract(Some("application/json"), vec![b' '; MAX_CONTENT_BYTES + 1]).await.err().unwrap();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.body.code, ErrorCode::ContentTooLarge);
        let e = extract(Some("application/json"), b"{".to_vec()).await.err().unwrap();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_request_without_a_key_gets_one_to_retry_with() {
        let (k1, made) = key_or_generated(None);
        assert!(made && k1.len() == 48);
        let (k2, _) = key_or_generated(None);
        assert_ne!(k1, k2);
        // Retried with the key it was given, the request is the same saga.
        assert_eq!(request_id("create", Some(&k1), &[b"body"]), request_id("create", Some(&k1), &[b"body"]));
        assert_eq!(key_or_generated(Some("mine")), ("mine".to_string(), false));
        let resp = with_generated_key(StatusCode::SERVICE_UNAVAILABLE.into_response(), Some(&k1));
        assert_eq!(resp.headers()["idempotency-key"], k1.as_str());
    }

    #[test]
    fn identities() {
        // Same key and body: same request; another body or no key: another.
        let a = request_id("create", Some("k"), &[b"body"]);
        assert_eq!(a, request_id("create", Some("k"), &[b"body"]));
        assert_ne!(a, request_id("create", Some("k"), &[b"other"]));
        assert_ne!(a, request_id("topup", Some("k"), &[b"body"]));
        assert_ne!(request_id("create", None, &[]), request_id("create", None, &[]));
        // Lease secrets depend on the provider key; the owner is the hash of the secret's bytes.
        let s = lease_secret(&[1; 32], &a);
        assert_eq!(s.len(), 64);
        assert_ne!(s, lease_secret(&[2; 32], &a));
        assert_eq!(requester_of(&s), hex::encode(Sha256::digest(hex::decode(&s).unwrap())));
        assert_ne!(requester_of(&s), requester_of("not-hex"));
    }

    #[test]
    fn http_responses_are_split() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(split_response(raw), Some((200, b"{}".to_vec())));
        let raw =
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(split_response(raw), Some((401, b"{\"a\":1}".to_vec())));
        assert_eq!(split_response(b"garbage"), None);
    }

    /// docs/openapi.json is the generated document; this test rewrites it when stale, and fails so the
    /// change gets committed.
    #[test]
    fn committed_openapi_document_is_current() {
        let doc = openapi_json() + "\n";
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        for p in ["/v1/leases", "/v1/leases/{id}", "/v1/leases/{id}/topup", "/v1/offer", "/auth", "/admin/wallet/send"]
        {
            assert!(v["paths"][p].is_object(), "{p} missing");
        }
        assert!(v["components"]["schemas"]["LeaseRequest"].is_object());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != doc {
            std::fs::write(&path, &doc).unwrap();
            panic!("docs/openapi.json was stale; rewritten from the code: review and commit it");
        }
    }
}
