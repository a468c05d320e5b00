//! The operator's wallet endpoints (only with an admin token) and their client, `paygress wallet …`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::ToSchema;

use super::{bearer, ApiError, ApiJson, ClientAddr, ErrorBody};
use crate::lease::ports::{FailureKind, PortError};
use crate::lease::service::now_secs;
use crate::protocol::ErrorCode;

/// A token made from the provider's wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletSent {
    pub token: String,
    pub mint: String,
    /// Face value sent; below the request when the wallet was short.
    pub amount: u64,
}

/// A Lightning invoice paid from the provider's wallet (cash-out, NUT-05).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletPaid {
    pub mint: String,
    /// The invoice's amount in sats.
    pub amount: u64,
    /// Lightning fee the mint charged.
    pub fee: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preimage: Option<String>,
}

/// The operator's view of the wallet; `app` implements it over the payment adapter.
#[async_trait]
pub trait WalletAdmin: Send + Sync {
    /// Spendable sats per mint.
    async fn balances(&self) -> Result<Vec<(String, u64)>, PortError>;
    async fn send(&self, mint: Option<&str>, amount: u64) -> Result<WalletSent, PortError>;
    /// Pay a BOLT11 invoice from the ecash at `mint` (the richest when None).
    async fn pay(&self, invoice: &str, mint: Option<&str>) -> Result<WalletPaid, PortError>;
}

/// Wrong admin tokens one client address may try in a window; past them it is refused (429) until the
/// window ends, whatever token it sends: guessing is bounded, and other addresses are not locked out.
const FAILURES_PER_WINDOW: u32 = 10;
const FAILURE_WINDOW_SECS: u64 = 60;
/// Addresses remembered at once; a full table forgets windows that have ended.
const TRACKED_ADDRESSES: usize = 4096;

pub struct Admin {
    token_digest: [u8; 32],
    wallet: Arc<dyn WalletAdmin>,
    /// Client address → (window start, wrong tokens in it).
    failures: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl Admin {
    pub fn new(token: &str, wallet: Arc<dyn WalletAdmin>) -> Self {
        Admin { token_digest: Sha256::digest(token.as_bytes()).into(), wallet, failures: Mutex::default() }
    }

    /// Compared as digests: equal-length values, and timing reveals nothing useful about the token.
    fn authorised(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Result<(), ApiError> {
        let now = now_secs();
        if let Some(ip) = client {
            let locked = self.failures.lock().map_or(true, |f| {
                f.get(&ip).is_some_and(|(start, n)| start + FAILURE_WINDOW_SECS > now && *n >= FAILURES_PER_WINDOW)
            });
            if locked {
                let mut e = ApiError::code(ErrorCode::TooManyRequests, "too many wrong admin tokens; try again later");
                e.retry_after = Some(FAILURE_WINDOW_SECS);
                return Err(e);
            }
        }
        let given = bearer(headers).ok_or_else(|| ApiError::unauthorized("admin token"))?;
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let diff = d.iter().zip(self.token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            return Ok(());
        }
        if let (Some(ip), Ok(mut f)) = (client, self.failures.lock()) {
            if f.len() >= TRACKED_ADDRESSES && !f.contains_key(&ip) {
                f.retain(|_, (start, _)| *start + FAILURE_WINDOW_SECS > now);
            }
            if f.len() < TRACKED_ADDRESSES || f.contains_key(&ip) {
                let entry = f.entry(ip).or_insert((now, 0));
                if entry.0 + FAILURE_WINDOW_SECS <= now {
                    *entry = (now, 0);
                }
                entry.1 += 1;
            }
        }
        Err(ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidRequest, "wrong admin token"))
    }

    /// The body of an authorised call: the token is judged first, so a caller without it learns nothing from
    /// how its body is read.
    fn authorised_body<T>(
        &self,
        headers: &HeaderMap,
        client: Option<Extension<ClientAddr>>,
        body: Result<ApiJson<T>, ApiError>,
    ) -> Result<T, ApiError> {
        self.authorised(headers, client.map(|c| c.0 .0))?;
        body.map(|ApiJson(b)| b)
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
pub(super) async fn admin_balance(
    State(admin): State<Arc<Admin>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = admin.authorised(&headers, client.map(|c| c.0 .0)) {
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
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<ApiJson<WalletSendBody>, ApiError>,
) -> Response {
    let body = match admin.authorised_body(&headers, client, body) {
        Ok(b) => b,
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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WalletPayBody {
    /// A BOLT11 invoice.
    pub invoice: String,
    /// Mint URL whose ecash pays it; the one with the largest balance when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint: Option<String>,
}

/// Longest invoice accepted: BOLT11 strings of real invoices are well under 2 KB.
const MAX_INVOICE_LEN: usize = 4096;

#[utoipa::path(post, path = "/admin/wallet/pay", tag = "admin", security(("admin_token" = [])),
    request_body = WalletPayBody,
    description = "Cash out: the mint pays the invoice over Lightning from the provider's ecash (NUT-05). Only when \
        PAYGRESS_ADMIN_TOKEN(_FILE) is set.",
    responses((status = 200, body = WalletPaid), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn admin_pay(
    State(admin): State<Arc<Admin>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<ApiJson<WalletPayBody>, ApiError>,
) -> Response {
    let body = match admin.authorised_body(&headers, client, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let invoice = body.invoice.trim();
    if invoice.is_empty() || invoice.len() > MAX_INVOICE_LEN {
        return ApiError::code(ErrorCode::InvalidRequest, "invoice must be a BOLT11 invoice").into_response();
    }
    match admin.wallet.pay(invoice, body.mint.as_deref()).await {
        Ok(paid) => Json(paid).into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;

    struct NoWallet;
    #[async_trait]
    impl WalletAdmin for NoWallet {
        async fn balances(&self) -> Result<Vec<(String, u64)>, PortError> {
            Ok(vec![])
        }
        async fn send(&self, _mint: Option<&str>, _amount: u64) -> Result<WalletSent, PortError> {
            Err(PortError::permanent("none"))
        }
        async fn pay(&self, _invoice: &str, _mint: Option<&str>) -> Result<WalletPaid, PortError> {
            Err(PortError::permanent("none"))
        }
    }

    fn with_token(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        h
    }

    #[test]
    fn a_client_guessing_admin_tokens_is_stopped_and_others_are_not() {
        let admin = Admin::new("the-right-admin-token", Arc::new(NoWallet));
        let (guesser, operator): (IpAddr, IpAddr) = ("203.0.113.9".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for i in 0..FAILURES_PER_WINDOW {
            let e = admin.authorised(&with_token(&format!("guess-{i}")), Some(guesser)).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        }
        // Past the limit even the right token is refused from that address, so guessing stops paying off.
        let e = admin.authorised(&with_token("the-right-admin-token"), Some(guesser)).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(admin.authorised(&with_token("the-right-admin-token"), Some(operator)).is_ok());
    }
}
