//! HTTP listener: `/healthz`, `/readyz` and `/metrics` in every mode (Kubernetes probes, the seed's
//! `curl localhost:8080/healthz`); the REST API of RUN_MODE=http; the operator's wallet endpoints when an
//! admin token is configured. The API drives the same `LeaseService` as the Nostr front end: there is no
//! second code path for money.
//!
//! Secrets travel in bodies and headers. Nothing here logs a URI, a header or a body (GET /auth carries a
//! token in its query string; POST /auth is preferred), and axum/hyper are built without their tracing
//! features, so no layer below logs them either.

mod admin;
mod auth;
mod health;
mod leases;
mod nut24;
mod serve;

pub use admin::{
    admin_call, Admin, AdminClientError, MintBalance, WalletAdmin, WalletBalance, WalletPaid, WalletPayBody,
    WalletSendBody, WalletSent,
};
pub use auth::{AuthCheck, AuthResult};
pub use health::{HealthState, Readiness, ReadyReport};
pub use leases::{Api, LeaseCreated, LeaseOrder, TopUpBody};
pub use nut24::{PayQuery, X_CASHU};
pub use serve::{serve, ClientAddr};

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{OpenApi, ToSchema};

use crate::lease::ports::{FailureKind, PortError};
use crate::protocol::{ErrorCode, LeaseAccess, LeaseRequest, LeaseStatus, Offer, Reply, Tier, MAX_CONTENT_BYTES};
use admin::{admin_balance, admin_pay, admin_send};
use auth::{auth_get, auth_post};
use health::{healthz, metrics, readyz};
use leases::{create_lease, get_offer, lease_status, openapi, release_lease, topup_lease};

// ---------------------------------------------------------------- routes

/// Router with the three operational endpoints only (no API, no admin).
pub fn health_router(state: HealthState) -> Router {
    router(state, None, None)
}

/// What connections beyond the listener's bounds are served: liveness and readiness, and 503 for the rest
/// (see `serve`).
pub fn probe_router(state: HealthState) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(state).fallback(|| async {
        ApiError::code(ErrorCode::Unavailable, "too many connections; try again shortly").into_response()
    })
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
                .route("/admin/wallet/pay", post(admin_pay))
                .with_state(admin),
        );
    }
    // axum's own 404/405 have empty or text bodies; every answer of this API is JSON.
    r.fallback(no_route).method_not_allowed_fallback(wrong_method)
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
        E::MintNotAllowed
        | E::UnitNotSupported
        | E::TokenSpent
        | E::AmountTooSmall
        | E::AmountTooLarge
        | E::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
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
        leases::create_lease, leases::lease_status, leases::release_lease, leases::topup_lease, leases::get_offer,
        auth::auth_get, auth::auth_post, admin::admin_balance, admin::admin_send, admin::admin_pay, health::healthz, health::readyz,
        health::metrics
    ),
    components(schemas(
        LeaseRequest, LeaseOrder, LeaseCreated, LeaseAccess, LeaseStatus, TopUpBody, Reply, ErrorBody, ErrorCode, Offer, Tier,
        AuthCheck, AuthResult, WalletBalance, MintBalance, WalletSendBody, WalletSent, WalletPayBody, WalletPaid, ReadyReport
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
    use super::admin::split_response;
    use super::leases::{key_or_generated, with_generated_key};
    use super::*;
    use std::sync::atomic::Ordering;

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
            (E::PaymentRequired, 402),
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
