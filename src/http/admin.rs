//! The operator's wallet endpoints (only with an admin token) and their client, `paygress wallet …`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::ToSchema;

use super::{bearer, ApiError, ApiJson, ErrorBody};
use crate::lease::ports::{FailureKind, PortError};
use crate::protocol::ErrorCode;

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
pub(super) async fn admin_balance(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
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
pub(super) async fn admin_send(
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
pub(super) fn split_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
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
