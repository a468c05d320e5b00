//! `/auth`: the seed's token check. Would this token pay for this long? Nothing is redeemed.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::leases::Api;
use super::{ApiError, ApiJson, ErrorBody};
use crate::lease::ports::{FailureKind, TokenState};
use crate::lease::service::price_of;
use crate::protocol::{ErrorCode, Tier};

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
    pub(super) fn tier(&self, name: Option<&str>) -> Option<&Tier> {
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
        // The mint is asked within the free budget: a flood of checks must not become a flood at the mint.
        let _free = self.free_permit()?;
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
pub(super) async fn auth_get(
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
pub(super) async fn auth_post(State(api): State<Arc<Api>>, body: Result<ApiJson<AuthCheck>, ApiError>) -> Response {
    let q = match body {
        Ok(ApiJson(q)) => q,
        Err(e) => return e.into_response(),
    };
    match api.check(q).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
