//! The lease API of RUN_MODE=http: buy, extend, query and release a lease, and the offer. Each handler turns
//! its request into a `lease::Incoming` for the same `LeaseService` as the Nostr front end.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::warn;
use utoipa::ToSchema;

use super::nut24::{as_nut24, OptionalJson, PayQuery, Payment};
use super::{bearer, idempotency_key, lease_secret, openapi_json, request_id, requester_of, ApiError, ErrorBody};
use crate::lease::ports::{PaymentPort, ReplyRoute, ReplyVia};
use crate::lease::{Incoming, LeaseService};
use crate::metrics::Metrics;
use crate::protocol::{
    ErrorCode, LeaseAccess, LeaseRequest, Offer, ReleaseRequest, Reply, StatusRequest, TopUpRequest,
};

/// What the REST API needs; `app` builds it.
pub struct Api {
    pub service: Arc<LeaseService>,
    pub payment: Arc<dyn PaymentPort>,
    pub offer: Offer,
    /// From the provider's key (see [`lease_secret`]).
    pub lease_secret_key: [u8; 32],
    /// Shared with the Nostr dispatcher's limit: at most this many sagas at once; SIGTERM waits for them.
    pub workers: Arc<Semaphore>,
    /// Work that moves no money (status, requests refused offline, top-up quotes, `/auth` mint checks):
    /// a small budget of its own, tried and never waited on, so it never takes a paid request's worker
    /// nor makes unbounded calls to the API server or a mint.
    pub free: Arc<Semaphore>,
}

impl Api {
    fn metrics(&self) -> &Metrics {
        self.service.metrics()
    }

    /// Front-end refusals count among request outcomes, like the saga's own.
    pub(super) fn refuse(&self, e: ApiError) -> Response {
        self.metrics().outcome(e.body.code.as_str());
        e.into_response()
    }

    /// Run one saga to its reply. Spawned: a client that hangs up must not cancel a saga between two money
    /// steps (the journal would resume it, but only at the next resume pass).
    async fn run(&self, incoming: Incoming) -> Result<Reply, ApiError> {
        let request_id = incoming.route().request_id.clone();
        let permit = if self.service.refused_offline(&incoming) {
            self.free_permit()?
        } else {
            self.workers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ApiError::code(ErrorCode::Unavailable, "shutting down"))?
        };
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

    /// A place in the free budget, or 503 with Retry-After at once.
    pub(super) fn free_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.free.clone().try_acquire_owned().map_err(|_| {
            self.metrics().outcome("shed");
            let mut e = ApiError::code(ErrorCode::Unavailable, "busy with requests that pay nothing; retry shortly");
            e.retry_after = Some(1);
            e
        })
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

/// `TopUpBody` as read: the token may come in `X-Cashu` instead, or not at all (402).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct TopUpOrder {
    #[serde(default)]
    cashu_token: Option<String>,
}

/// Body of `POST /v1/leases`: a lease request whose token may instead come in `X-Cashu` (NUT-24). No body
/// at all is an empty one: every field has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LeaseOrder {
    /// The payment; or `X-Cashu: cashuB…`; with neither the answer is 402 with a payment request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cashu_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

#[utoipa::path(post, path = "/v1/leases", tag = "leases", request_body = Option<LeaseOrder>, params(PayQuery,
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries safe: the same key and body give the same lease, paid once"),
        ("X-Cashu" = Option<String>, Header,
            description = "NUT-24: the payment as a cashuB token, instead of cashu_token in the body")),
    responses(
        (status = 201, body = LeaseCreated, description = "The lease is up; lease_secret is its bearer secret"),
        (status = 400, body = ErrorBody, description = "invalid_request, invalid_token, invalid_username, invalid_public_key, image_not_allowed, unknown_tier; with X-Cashu also every refusal of the token (NUT-24)"),
        (status = 402, body = ErrorBody, headers(("X-Cashu" = String, description = "NUT-18 payment request (creqA…): amount, unit, accepted mints; when no payment came")),
            description = "payment_required (no token: X-Cashu holds the payment request); with cashu_token: mint_not_allowed, unit_not_supported, token_spent, amount_too_small, amount_too_large"),
        (status = 413, body = ErrorBody, description = "content_too_large"),
        (status = 415, body = ErrorBody, description = "A body that is not application/json"),
        (status = 502, body = ErrorBody, description = "provisioning_failed; refund_token returns the payment"),
        (status = 503, body = ErrorBody, description = "mint_unavailable, no_capacity, unavailable (retry with the same Idempotency-Key; without one, the answer's Idempotency-Key header holds the key the server made)"),
    ))]
pub(super) async fn create_lease(
    State(api): State<Arc<Api>>,
    query: Result<Query<PayQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<OptionalJson<LeaseOrder>, ApiError>,
) -> Response {
    let order = match body {
        Ok(OptionalJson(o)) => o.unwrap_or_default(),
        Err(e) => return api.refuse(e),
    };
    let Ok(Query(q)) = query else {
        return api.refuse(ApiError::code(ErrorCode::InvalidRequest, "expected ?duration_minutes=N"));
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return api.refuse(e),
    };
    let payment = match Payment::of(&headers, order.cashu_token.clone()) {
        Ok(p) => p,
        Err(e) => return api.refuse(e),
    };
    let Some(tier) = api.tier(order.tier.as_deref()).cloned() else {
        return api.refuse(ApiError::code(ErrorCode::UnknownTier, "unknown tier"));
    };
    let token = match &payment {
        Payment::Header(t) | Payment::Body(t) => t.clone(),
        // Before any identity is made: a 402 journals nothing and needs no Idempotency-Key.
        Payment::None => return api.payment_required(&tier, q.duration_minutes),
    };
    if let Err(e) = api.covers(&token, &tier, q.duration_minutes) {
        return as_nut24(api.refuse(e), &payment);
    }
    let request = LeaseRequest {
        cashu_token: token,
        ssh_username: order.ssh_username,
        pod_image: order.pod_image,
        ssh_public_key: order.ssh_public_key,
        tier: order.tier,
    };
    // The token from X-Cashu or the body: the same request, the same saga.
    let canonical = serde_json::to_vec(&request).unwrap_or_default();
    // Without a key the token names the request (its proofs pay once): a client that lost the answer (a
    // proxy's timeout) retries the same POST and meets the same saga. The key goes back in the answer too.
    let (key, generated) = api.key_or_token(key, &request.cashu_token);
    let request_id = request_id("create", Some(&key), &[&canonical]);
    let secret = lease_secret(&api.lease_secret_key, &request_id);
    let route = ReplyRoute { request_id, requester: requester_of(&secret), via: ReplyVia::InBand };
    let resp = api.respond(Incoming::Create { route, request }, Some(secret), generated.then_some(key.as_str())).await;
    as_nut24(resp, &payment)
}

/// Lease ids are 32 hex chars; pod names add `ssh-pod-`. Anything else is nobody's lease.
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
pub(super) async fn lease_status(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
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
pub(super) async fn release_lease(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
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

#[utoipa::path(post, path = "/v1/leases/{id}/topup", tag = "leases", request_body = Option<TopUpBody>,
    params(("id" = String, Path, description = "Lease id or pod name"), PayQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe"),
        ("X-Cashu" = Option<String>, Header,
            description = "NUT-24: the payment as a cashuB token, instead of cashu_token in the body")),
    security(("lease_secret" = [])),
    responses(
        (status = 200, body = Reply, description = "`extended`: the new expiry"),
        (status = 400, body = ErrorBody, description = "With X-Cashu: every refusal of the token (NUT-24)"),
        (status = 401, body = ErrorBody, description = "No bearer secret"),
        (status = 402, body = ErrorBody, headers(("X-Cashu" = String, description = "NUT-18 payment request (creqA…): amount, unit, accepted mints; when no payment came")),
            description = "payment_required (no token: X-Cashu holds the payment request), or the token was refused (see code)"),
        (status = 404, body = ErrorBody, description = "lease_not_found: no such lease, or not this secret's"),
        (status = 410, body = ErrorBody, description = "lease_expired"),
    ))]
pub(super) async fn topup_lease(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    query: Result<Query<PayQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<OptionalJson<TopUpOrder>, ApiError>,
) -> Response {
    let Some(secret) = bearer(&headers) else {
        return api.refuse(ApiError::unauthorized("lease_secret"));
    };
    let body = match body {
        Ok(OptionalJson(b)) => b.unwrap_or_default(),
        Err(e) => return api.refuse(e),
    };
    let Ok(Query(q)) = query else {
        return api.refuse(ApiError::code(ErrorCode::InvalidRequest, "expected ?duration_minutes=N&tier=NAME"));
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return api.refuse(e),
    };
    if !plausible_lease(&id) {
        return api.refuse(ApiError::code(ErrorCode::LeaseNotFound, "no such lease of yours"));
    }
    let payment = match Payment::of(&headers, body.cashu_token) {
        Ok(p) => p,
        Err(e) => return api.refuse(e),
    };
    let token = match &payment {
        Payment::Header(t) | Payment::Body(t) => t.clone(),
        Payment::None => {
            // Priced at the lease's own tier, as the top-up will be; `?tier=` only if the cluster cannot say.
            let _free = match api.free_permit() {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let tier = match api.service.tier_of_lease(&id, &requester_of(secret)).await {
                Ok(Some(t)) => t,
                Ok(None) => return api.refuse(ApiError::code(ErrorCode::LeaseNotFound, "no such lease of yours")),
                Err(e) => {
                    warn!(error = %e, "could not look up the lease to price its top-up; pricing the tier asked for");
                    let Some(t) = api.tier(q.tier.as_deref()).cloned() else {
                        return api.refuse(ApiError::code(ErrorCode::UnknownTier, "unknown tier"));
                    };
                    t
                }
            };
            return api.payment_required(&tier, q.duration_minutes);
        }
    };
    let requester = requester_of(secret);
    let (key, generated) = api.key_or_token(key, &token);
    let parts: [&[u8]; 3] = [id.as_bytes(), requester.as_bytes(), token.as_bytes()];
    let request_id = request_id("topup", Some(&key), &parts);
    let route = ReplyRoute { request_id, requester, via: ReplyVia::InBand };
    let request = TopUpRequest { cashu_token: token, lease: id };
    let resp = api.respond(Incoming::TopUp { route, request }, None, generated.then_some(key.as_str())).await;
    as_nut24(resp, &payment)
}

impl Api {
    /// The client's Idempotency-Key, else one derived from the token's proofs (so that the same paid
    /// request retried without a key is the same request), else a random one; and whether it was made here.
    pub(super) fn key_or_token(&self, key: Option<&str>, token: &str) -> (String, bool) {
        match (key, self.payment.inspect(token)) {
            (None, Ok(info)) => (format!("token-{}", info.digest.chars().take(48).collect::<String>()), true),
            _ => key_or_generated(key),
        }
    }
}

/// The client's Idempotency-Key, or a fresh random one (and whether it was made here).
pub(super) fn key_or_generated(key: Option<&str>) -> (String, bool) {
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
pub(super) fn with_generated_key(mut resp: Response, generated: Option<&str>) -> Response {
    if let Some(v) = generated.and_then(|k| HeaderValue::from_str(k).ok()) {
        resp.headers_mut().insert("idempotency-key", v);
    }
    resp
}

#[utoipa::path(get, path = "/v1/offer", tag = "leases", responses((status = 200, body = Offer)))]
pub(super) async fn get_offer(State(api): State<Arc<Api>>) -> Json<Offer> {
    Json(api.offer.clone())
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}
