//! NUT-24 on the lease API: a create or top-up without payment is answered `402 Payment Required` with a NUT-18
//! payment request in `X-Cashu` (amount, unit, accepted mints; no transport: the payment comes back in-band;
//! no lock, so a payment the provider then refuses unredeemed stays the payer's). The retry carries the token
//! in `X-Cashu` and is the very request of the JSON body form: same request id, same saga. Refusals of a token
//! that came in `X-Cashu` are `400` (NUT-24). Nothing here journals or moves money.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use super::leases::Api;
use super::{ApiError, ApiJson};
use crate::lease::service::price_of;
use crate::protocol::creq::Creq;
use crate::protocol::{ErrorCode, Tier};

/// The NUT-24 header: a payment request in a 402, a token in the retry.
pub const X_CASHU: &str = "x-cashu";

/// Longest token accepted in `X-Cashu`: the body's limit holds for the header too.
const MAX_HEADER_TOKEN: usize = crate::protocol::MAX_CONTENT_BYTES;

/// Query of the paid endpoints: what the 402's amount is for.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PayQuery {
    /// Minutes the 402's payment request prices (default: an hour, within the offer's bounds). With a token,
    /// a token worth less is refused (`amount_too_small`) before anything is redeemed.
    pub duration_minutes: Option<u64>,
    /// A top-up's 402 prices the lease's own tier; this one only when the cluster cannot be asked. A create
    /// uses its body's tier.
    pub tier: Option<String>,
}

/// Where the payment of a request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payment {
    /// `X-Cashu: cashuB…` (NUT-24).
    Header(String),
    /// `cashu_token` in the JSON body.
    Body(String),
    None,
}

impl Payment {
    /// The token from the header or the body; both present must agree (two payments would be ambiguous).
    pub fn of(headers: &HeaderMap, body: Option<String>) -> Result<Payment, ApiError> {
        let header = header_token(headers)?;
        let body = body.filter(|b| !b.trim().is_empty());
        match (header, body) {
            (Some(h), Some(b)) if h != b.trim() => {
                Err(ApiError::code(ErrorCode::InvalidRequest, "X-Cashu and cashu_token hold different tokens"))
            }
            (Some(h), _) => Ok(Payment::Header(h)),
            (None, Some(b)) => Ok(Payment::Body(b)),
            (None, None) => Ok(Payment::None),
        }
    }

    pub fn via_header(&self) -> bool {
        matches!(self, Payment::Header(_))
    }
}

/// `X-Cashu: cashuA…|cashuB…`, if present. Anything else there is a bad token (400); its value is never quoted.
fn header_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(X_CASHU) else { return Ok(None) };
    let bad = |why: &str| ApiError::code(ErrorCode::InvalidToken, format!("X-Cashu {why}"));
    let s = v.to_str().map_err(|_| bad("is not visible ASCII"))?.trim();
    if s.len() > MAX_HEADER_TOKEN {
        return Err(ApiError::code(ErrorCode::ContentTooLarge, "X-Cashu token too large"));
    }
    if !(s.starts_with("cashuA") || s.starts_with("cashuB")) {
        return Err(bad("must hold a cashuB (or cashuA) token"));
    }
    Ok(Some(s.to_string()))
}

/// NUT-24: a token refused for its mint, unit, amount or lock is a `400`, not a `402` (which means "no payment").
pub fn as_nut24(mut resp: Response, payment: &Payment) -> Response {
    if payment.via_header() && resp.status() == StatusCode::PAYMENT_REQUIRED {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    resp
}

impl Api {
    /// Seconds the 402 prices: the asked minutes, or an hour, within the offer's bounds.
    fn priced_secs(&self, minutes: Option<u64>) -> Result<u64, ApiError> {
        let (min, max) = (self.offer.min_duration_seconds, self.offer.max_duration_seconds);
        match minutes {
            Some(m) if m.saturating_mul(60) > max => {
                Err(ApiError::code(ErrorCode::InvalidRequest, format!("duration_minutes above the maximum of {max} s")))
            }
            Some(0) => Err(ApiError::code(ErrorCode::InvalidRequest, "duration_minutes must be at least 1")),
            Some(m) => Ok((m * 60).max(min)),
            None => Ok(3600u64.clamp(min, max.max(min))),
        }
    }

    /// The `402 Payment Required` answer: `X-Cashu: creqA…` for `minutes` of `tier`. Counted like a refusal.
    pub fn payment_required(&self, tier: &Tier, minutes: Option<u64>) -> Response {
        let secs = match self.priced_secs(minutes) {
            Ok(s) => s,
            Err(e) => return self.refuse(e),
        };
        let amount = price_of(secs, tier.sats_per_hour);
        let creq = Creq {
            amount,
            unit: self.offer.unit.clone(),
            mints: self.offer.accepted_mints.clone(),
            description: Some(format!("Paygress: {} min of tier {}", secs.div_ceil(60), tier.name)),
            ..Default::default()
        };
        let encoded = match creq.encode() {
            Ok(s) => s,
            Err(e) => return self.refuse(ApiError::code(e.kind(), e.to_string())),
        };
        let message = format!(
            "payment required: {amount} {} for {} min of tier {} ({} sat/h); retry with the token in X-Cashu \
             (or cashu_token in the JSON body)",
            self.offer.unit,
            secs.div_ceil(60),
            tier.name,
            tier.sats_per_hour
        );
        let mut resp = self.refuse(ApiError::code(ErrorCode::PaymentRequired, message));
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            resp.headers_mut().insert(X_CASHU, v);
        }
        resp
    }

    /// With `?duration_minutes=`, a token worth less than that duration is refused before the saga (offline).
    pub fn covers(&self, token: &str, tier: &Tier, minutes: Option<u64>) -> Result<(), ApiError> {
        let Some(m) = minutes else { return Ok(()) };
        let required = price_of(self.priced_secs(Some(m))?, tier.sats_per_hour);
        match self.payment.inspect(token) {
            Ok(info) if info.amount < required => Err(ApiError::code(
                ErrorCode::AmountTooSmall,
                format!("{} sat is less than the {required} sat of {m} min", info.amount),
            )),
            // Other refusals are the saga's to give, with their own codes.
            _ => Ok(()),
        }
    }
}

/// A JSON body that may be absent: no body (no Content-Type, or Content-Length 0) is `None`, as a NUT-24
/// client sends it; anything else is read like [`ApiJson`].
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let h = req.headers();
        let length = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let chunked = h.contains_key(header::TRANSFER_ENCODING);
        let empty = length == Some(0) || (length.is_none() && !chunked && !h.contains_key(header::CONTENT_TYPE));
        if empty {
            return Ok(OptionalJson(None));
        }
        ApiJson::<T>::from_request(req, state).await.map(|ApiJson(t)| OptionalJson(Some(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_CASHU, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn payment_comes_from_header_or_body() {
        assert_eq!(Payment::of(&HeaderMap::new(), None).unwrap(), Payment::None);
        assert_eq!(Payment::of(&HeaderMap::new(), Some(" ".into())).unwrap(), Payment::None);
        assert_eq!(Payment::of(&HeaderMap::new(), Some("cashuBx".into())).unwrap(), Payment::Body("cashuBx".into()));
        assert_eq!(Payment::of(&headers(" cashuBx "), None).unwrap(), Payment::Header("cashuBx".into()));
        assert_eq!(
            Payment::of(&headers("cashuBx"), Some("cashuBx".into())).unwrap(),
            Payment::Header("cashuBx".into())
        );
        let e = Payment::of(&headers("cashuBx"), Some("cashuBy".into())).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = Payment::of(&headers("creqAsecret"), None).unwrap_err();
        assert_eq!(e.body.code, ErrorCode::InvalidToken);
        assert!(!e.body.message.contains("secret"));
    }

    #[test]
    fn refusals_of_a_header_token_are_400() {
        let r = || ApiError::code(ErrorCode::TokenSpent, "spent").into_response();
        assert_eq!(as_nut24(r(), &Payment::Header("cashuBx".into())).status(), StatusCode::BAD_REQUEST);
        assert_eq!(as_nut24(r(), &Payment::Body("cashuBx".into())).status(), StatusCode::PAYMENT_REQUIRED);
        let ok = StatusCode::CREATED.into_response();
        assert_eq!(as_nut24(ok, &Payment::Header("cashuBx".into())).status(), StatusCode::CREATED);
    }

    #[tokio::test]
    async fn an_absent_body_is_none() {
        async fn extract(headers: &[(&str, &str)], body: &'static [u8]) -> Result<Option<serde_json::Value>, ApiError> {
            let mut b = Request::builder().method("POST").uri("/v1/leases");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            OptionalJson::from_request(b.body(axum::body::Body::from(body)).unwrap(), &()).await.map(|o| o.0)
        }
        assert_eq!(extract(&[], b"").await.unwrap(), None);
        assert_eq!(
            extract(&[("content-length", "0"), ("content-type", "application/x-www-form-urlencoded")], b"")
                .await
                .unwrap(),
            None
        );
        let v = extract(&[("content-type", "application/json")], b"{\"a\":1}").await.unwrap();
        assert_eq!(v, Some(serde_json::json!({"a": 1})));
        let e = extract(&[("content-type", "text/plain"), ("content-length", "2")], b"{}").await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
