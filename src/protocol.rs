//! Wire protocol shared by the provider and `paygress-cli`: event kinds, request bodies, replies and
//! error codes. Documented in docs/protocol.md; keep the two in step.

pub mod creq;

use serde::{Deserialize, Serialize};
// ToSchema: the HTTP API's OpenAPI document (GET /openapi.json) is derived from these types.
use utoipa::ToSchema;

/// Lease request (the seed's kind).
pub const KIND_REQUEST: u16 = 1000;
/// Every reply: access details, top-up results, status, errors.
pub const KIND_REPLY: u16 = 1001;
/// Top-up of an existing lease.
pub const KIND_TOPUP: u16 = 1002;
/// Status query of the requester's own lease.
pub const KIND_STATUS: u16 = 1003;
/// Early release of the requester's own lease: it ends at once and its unused whole minutes come back.
pub const KIND_RELEASE: u16 = 1004;
/// Provider offer: addressable (NIP-01 30000..39999), a number no NIP claims (38383 is NIP-69's).
pub const KIND_OFFER: u16 = 38_400;
/// The `d` tag of the provider's one offer event.
pub const OFFER_D_TAG: &str = "paygress-offer";

/// Requests larger than this are refused unread (`content_too_large`): a token of a few hundred proofs
/// fits comfortably, and nothing legitimate comes close.
pub const MAX_CONTENT_BYTES: usize = 32 * 1024;

/// Body of a kind-1000 request (plain JSON, NIP-44 content or the rumor of a NIP-17 gift wrap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    pub cashu_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// Body of a kind-1002 top-up. `lease` is the lease id or the pod name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopUpRequest {
    pub cashu_token: String,
    #[serde(alias = "lease_id", alias = "pod_name")]
    pub lease: String,
}

/// Body of a kind-1003 status query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusRequest {
    #[serde(alias = "lease_id", alias = "pod_name")]
    pub lease: String,
}

/// Body of a kind-1004 release: the requester's own lease, ended now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseRequest {
    #[serde(alias = "lease_id", alias = "pod_name")]
    pub lease: String,
}

/// Stable, machine-readable error codes. Never rename one: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    ContentTooLarge,
    InvalidToken,
    MintNotAllowed,
    UnitNotSupported,
    TokenSpent,
    AmountTooSmall,
    AmountTooLarge,
    ImageNotAllowed,
    InvalidUsername,
    InvalidPublicKey,
    UnknownTier,
    MintUnavailable,
    ProvisioningFailed,
    LeaseNotFound,
    LeaseExpired,
    NotLeaseOwner,
    Unavailable,
    /// The requester sent more than the provider handles from one key at once, or holds as many leases
    /// as one key may; nothing was taken.
    TooManyRequests,
    /// The cluster has no room for a lease of this tier now; nothing was taken.
    NoCapacity,
    /// The provider ended the lease early (its pod failed); the unused time is refunded.
    LeaseEnded,
    /// HTTP (NUT-24): the request carried no payment; `X-Cashu` holds a payment request. Nothing was taken.
    PaymentRequired,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ContentTooLarge => "content_too_large",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::MintNotAllowed => "mint_not_allowed",
            ErrorCode::UnitNotSupported => "unit_not_supported",
            ErrorCode::TokenSpent => "token_spent",
            ErrorCode::AmountTooSmall => "amount_too_small",
            ErrorCode::AmountTooLarge => "amount_too_large",
            ErrorCode::ImageNotAllowed => "image_not_allowed",
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::InvalidPublicKey => "invalid_public_key",
            ErrorCode::UnknownTier => "unknown_tier",
            ErrorCode::MintUnavailable => "mint_unavailable",
            ErrorCode::ProvisioningFailed => "provisioning_failed",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::LeaseExpired => "lease_expired",
            ErrorCode::NotLeaseOwner => "not_lease_owner",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::LeaseEnded => "lease_ended",
            ErrorCode::PaymentRequired => "payment_required",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a requester needs to reach a lease. Sent only encrypted to the requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseAccess {
    pub lease_id: String,
    pub pod_name: String,
    pub namespace: String,
    pub ssh_username: String,
    /// Present when no public key was given and a password was generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password: Option<String>,
    pub ssh_port: u16,
    /// OpenSSH style, e.g. `SHA256:…` of the pod's host key, as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: String,
    /// The host key itself in OpenSSH public-key format, for a known_hosts line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_public_key: Option<String>,
    pub tier: String,
    /// Unix seconds.
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onion_address: Option<String>,
    /// `kubectl -n NS port-forward svc/ssh-pod-ID-ssh 2222:2222`
    pub port_forward_command: String,
    /// `ssh -p 2222 USER@127.0.0.1`, to use with the port-forward.
    pub ssh_command: String,
    /// `torsocks ssh -p 2222 USER@ADDR.onion`, when onion access is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor_ssh_command: Option<String>,
}

/// Lease state as reported to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseStatus {
    pub lease_id: String,
    pub pod_name: String,
    /// `active` or `expired`.
    pub state: String,
    pub expires_at: u64,
    pub seconds_remaining: u64,
}

/// Content of every kind-1001 reply (and of HTTP responses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// A new lease is up.
    Ok {
        /// Request event id this answers.
        request_id: String,
        /// Sats received after mint fees.
        amount_sats: u64,
        duration_seconds: u64,
        access: Box<LeaseAccess>,
        /// What was paid beyond the longest lease (`max_duration_seconds`), returned as a Cashu token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_token: Option<String>,
    },
    /// A top-up was applied.
    Extended {
        request_id: String,
        lease_id: String,
        amount_sats: u64,
        added_seconds: u64,
        expires_at: u64,
        /// What was paid beyond the longest lease, returned as a Cashu token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_token: Option<String>,
    },
    Status {
        request_id: String,
        lease: LeaseStatus,
    },
    /// The lease ends soon (sent once per lease and threshold, e.g. 10 and 1 minutes before its end).
    Notice {
        /// The request that bought the lease (the event's `e` tag names it too).
        request_id: String,
        lease_id: String,
        expires_at: u64,
        seconds_left: u64,
        /// The price of an hour more, at the rate paid.
        sats_per_hour: u64,
        /// The exact command that extends the lease by an hour.
        topup_command: String,
    },
    /// The lease was released early by its owner: it is gone, and its unused whole minutes come back.
    Released {
        request_id: String,
        lease_id: String,
        /// Whole minutes that were left.
        unused_minutes: u64,
        /// Their price at the rate paid: the refund's face value.
        amount_sats: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_token: Option<String>,
    },
    Error {
        request_id: String,
        code: ErrorCode,
        message: String,
        /// A token worth what was received minus mint fees, when money was taken and then the lease failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_token: Option<String>,
    },
}

impl Reply {
    pub fn error(request_id: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error { request_id: request_id.into(), code, message: message.into(), refund_token: None }
    }
}

/// A pricing tier of the offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tier {
    pub name: String,
    /// Kubernetes quantities, e.g. `500m`, `1Gi`.
    pub cpu: String,
    pub memory: String,
    pub sats_per_hour: u64,
    /// The RuntimeClass lease pods of this tier run under (e.g. `gvisor`); none: the cluster's default
    /// runtime (runc), sharing the node's kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// What separates a tenant from the node and other tenants: `container` (shared kernel) or `sandbox`
    /// (a RuntimeClass such as gVisor: its own kernel in user space).
    #[serde(default = "default_isolation")]
    pub isolation: String,
    /// Leases of this tier the cluster can still place (the namespace's quota room); absent when nothing
    /// known bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

fn default_isolation() -> String {
    "container".into()
}

impl Tier {
    /// A tier on the default runtime.
    pub fn new(name: &str, cpu: &str, memory: &str, sats_per_hour: u64) -> Tier {
        Tier {
            name: name.into(),
            cpu: cpu.into(),
            memory: memory.into(),
            sats_per_hour,
            runtime_class: None,
            isolation: default_isolation(),
            capacity: None,
        }
    }
}

/// Content of the kind-38400 offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Offer {
    /// Provider's Nostr public key (hex).
    pub provider_pubkey: String,
    pub tiers: Vec<Tier>,
    pub default_tier: String,
    pub accepted_mints: Vec<String>,
    pub unit: String,
    pub min_duration_seconds: u64,
    pub max_duration_seconds: u64,
    pub onion_access: bool,
    /// Compressed secp256k1 key (hex, 33 bytes) that P2PK (NUT-11) tokens may be locked to.
    pub p2pk_pubkey: String,
    pub default_image: String,
    pub allowed_images: Vec<String>,
    pub ssh_port: u16,
    pub request_kind: u16,
    pub reply_kind: u16,
    pub topup_kind: u16,
    pub status_kind: u16,
    /// Kind of an early release (absent in offers of older providers).
    #[serde(default)]
    pub release_kind: u16,
    /// The rule of an early release, for people: what comes back.
    #[serde(default)]
    pub release_rule: String,
    /// The offer is re-published at least this often (with fresh capacity); a provider silent for longer
    /// than twice this is gone.
    #[serde(default)]
    pub heartbeat_seconds: u64,
    /// NUT-18 payment request (`creqA…`) for an hour of the default tier: amount, unit, the accepted mints,
    /// a P2PK lock to `p2pk_pubkey`, and the Nostr transport (the provider's nprofile, NIP-17). Absent in
    /// offers of older providers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payment_request: String,
}

/// What an offer says of an early release.
pub const RELEASE_RULE: &str = "release a lease early (kind 1004, or DELETE /v1/leases/{id}): it ends at once and \
its unused whole minutes come back as a Cashu token, priced at the rate paid, from the mint paid";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_request_parses_with_only_token_and_user() {
        let r: LeaseRequest = serde_json::from_str(r#"{"cashu_token":"cashuBxyz","ssh_username":"alice"}"#).unwrap();
        assert_eq!(r.ssh_username.as_deref(), Some("alice"));
        assert!(r.pod_image.is_none());
    }

    #[test]
    fn error_reply_serialises_stable_code() {
        let v = serde_json::to_value(Reply::error("ab", ErrorCode::TokenSpent, "spent")).unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["code"], "token_spent");
        assert!(v.get("refund_token").is_none());
        for code in [ErrorCode::MintNotAllowed, ErrorCode::ProvisioningFailed] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn topup_accepts_pod_name_alias() {
        let r: TopUpRequest = serde_json::from_str(r#"{"cashu_token":"t","pod_name":"ssh-pod-1"}"#).unwrap();
        assert_eq!(r.lease, "ssh-pod-1");
    }
}
