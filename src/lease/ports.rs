//! The small traits through which lease logic sees the outside world. Adapters (payment, k8s, onion, nostr,
//! store) implement them; `app` wires concrete ones in; tests wire fakes.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorCode, Reply, Tier};

/// How a failure of an outside system is handled: retried, or answered with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The requester's input is at fault; answer with this code, do not retry.
    Rejected(ErrorCode),
    /// Worth retrying (network, timeouts, a busy API server).
    Transient,
    /// Our side failed and retrying will not help.
    Permanent,
}

/// The error every port returns. Adapters convert their own thiserror enums into it; the message is for
/// logs and, for `Rejected`, for the requester, so it must never hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub kind: FailureKind,
    pub message: String,
}

impl PortError {
    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        PortError { kind: FailureKind::Rejected(code), message: message.into() }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        PortError { kind: FailureKind::Transient, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        PortError { kind: FailureKind::Permanent, message: message.into() }
    }
    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// What can be learned of a token without contacting the mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Normalised mint URL.
    pub mint_url: String,
    pub unit: String,
    /// Face value in `unit`.
    pub amount: u64,
    pub p2pk_locked: bool,
    /// Stable digest of the token's proof secrets: the same money has the same digest whatever its encoding.
    pub digest: String,
}

/// NUT-07 state of a token's proofs at its mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Unspent,
    Pending,
    Spent,
}

#[async_trait]
pub trait PaymentPort: Send + Sync {
    /// Parse and check a token offline: encoding, mint whitelist (normalised, exact), unit `sat`, and that a
    /// P2PK lock, if any, is to the provider's key. No network call.
    fn inspect(&self, token: &str) -> PortResult<TokenInfo>;
    /// Check a token's proofs against its mint's public keys (keyset, amounts, NUT-12 DLEQ where carried),
    /// so forged proofs are refused before anything about them is stored. May fetch the mint's keys once.
    async fn vet(&self, token: &str) -> PortResult<()>;
    /// Swap the token at its mint (NUT-03) into the provider's wallet. Returns sats received after input fees.
    /// `Rejected(TokenSpent)` when the mint says it is spent.
    async fn redeem(&self, token: &str) -> PortResult<u64>;
    /// After a crash during `redeem`: the token's proofs' state at the mint.
    async fn token_state(&self, token: &str) -> PortResult<TokenState>;
    /// Sats our own wallet received from this token in a completed swap, if it did (after interrupted swaps
    /// are recovered). Tells "we redeemed it before a crash" from "someone else spent it".
    async fn received_amount(&self, token: &str) -> PortResult<Option<u64>>;
    /// Mint `amount` sats of the provider's wallet at `mint_url` into a token for the requester, once per
    /// `refund_id`: a call repeated after a crash returns the token the first call created.
    async fn refund(&self, mint_url: &str, amount: u64, refund_id: &str) -> PortResult<String>;
    /// Wallet balance in sats (all mints).
    async fn balance(&self) -> PortResult<u64>;
}

/// The requester's label value on lease pods: the first 32 hex digits of its key (or key hash), so that
/// a requester's leases are found by label.
pub fn requester_label(requester: &str) -> String {
    requester.chars().filter(|c| c.is_ascii_hexdigit()).take(32).collect::<String>().to_ascii_lowercase()
}

/// A provider's label value on the objects it creates: the first 32 hex digits (128 bits) of its Nostr
/// public key, which fits a label value (63 characters at most) and names the provider to anyone reading
/// the cluster.
pub fn provider_id(pubkey_hex: &str) -> String {
    pubkey_hex.chars().take(32).collect::<String>().to_ascii_lowercase()
}

/// Everything the cluster needs to run one lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub lease_id: String,
    pub pod_name: String,
    pub service_name: String,
    pub namespace: String,
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    pub ssh_username: String,
    /// Kept in a Secret, never in labels, annotations or literal env.
    pub ssh_password: Option<String>,
    pub ssh_public_key: Option<String>,
    pub tier: Tier,
    pub ssh_port: u16,
    /// Unix seconds; the source of truth for expiry (an annotation).
    pub expires_at: u64,
    /// Requester's Nostr public key (hex), annotated so only they may extend or query.
    pub requester: String,
    /// The request whose saga creates the objects, annotated on each: a saga adopts (on "already exists")
    /// and deletes only objects carrying its own request id.
    pub request_id: String,
    /// This provider's label value (`paygress.io/provider`).
    pub provider: String,
    /// Where the lease was paid, and at what rate: an early end refunds there, at that rate.
    pub mint_url: String,
    pub rate_sats_per_hour: u64,
    /// How the requester is reached (for messages after the reply, e.g. an early end).
    pub reply_via: ReplyVia,
}

/// A lease as the cluster records it (labels and annotations of its pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLease {
    pub lease_id: String,
    pub pod_name: String,
    /// None when the annotation is missing or unreadable: such a pod is an orphan.
    pub expires_at: Option<u64>,
    pub requester: Option<String>,
    pub tier: Option<String>,
    /// Where SSH answers, when the pod runs.
    pub ssh_endpoint: Option<SocketAddr>,
    pub terminating: bool,
    /// Top-ups applied so far, oldest first (bounded; see [`ExpiryUpdate`]).
    pub topups: Vec<AppliedTopUp>,
    /// The pod's resourceVersion when read: the precondition of an [`ExpiryUpdate`] and of the delete
    /// that ends the lease.
    pub version: Option<String>,
    /// The request that created the lease.
    pub request_id: Option<String>,
    pub mint_url: Option<String>,
    pub rate_sats_per_hour: Option<u64>,
    pub reply_via: Option<ReplyVia>,
    /// Why the pod can never run again (phase Failed, e.g. Evicted), when it cannot.
    pub failed: Option<String>,
    /// When the pod was created (unix seconds).
    pub created_at: Option<u64>,
}

/// A top-up applied to a lease, recorded on its pod with the new expiry in one write, so a top-up
/// resumed after a crash finds itself applied instead of extending the lease twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedTopUp {
    /// The top-up request's id (a prefix of it).
    pub id: String,
    pub added_secs: u64,
    pub expires_at: u64,
}

/// A new expiry and the top-up record that goes with it, written only if the pod still has the
/// resourceVersion they were computed from: a concurrent top-up then fails (Transient) and is recomputed
/// instead of being overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryUpdate {
    pub expires_at: u64,
    pub topups: Vec<AppliedTopUp>,
    pub if_version: Option<String>,
}

/// The key of an onion service published ahead of demand (not yet any lease's).
#[derive(Clone, PartialEq, Eq)]
pub struct PoolKey {
    pub slot: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PoolKey {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolKey").field("slot", &self.slot).finish_non_exhaustive()
    }
}

/// Objects the provider labelled but that belong to no live lease pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanObject {
    pub kind: String,
    pub name: String,
    pub lease_id: String,
}

#[async_trait]
pub trait ClusterPort: Send + Sync {
    /// Create (or find already created) the lease's Secret, Pod and Service. Idempotent for the same
    /// request; an object of the lease's name made by another request or provider is never adopted
    /// (Permanent error, nothing changed).
    async fn ensure_lease_objects(&self, plan: &PodPlan) -> PortResult<()>;
    /// Wait until the lease's pod is Running with an IP; returns its SSH endpoint as the cluster reports it.
    async fn wait_running(&self, lease_id: &str, timeout: Duration) -> PortResult<SocketAddr>;
    /// Move the expiry annotation and record the top-up (see [`ExpiryUpdate`]).
    async fn set_expiry(&self, lease_id: &str, update: &ExpiryUpdate) -> PortResult<()>;
    /// End a lease: delete its pod, only if it still has resourceVersion `if_version` (when given; a
    /// top-up landing after the decision makes this fail Transient and nothing is deleted), then its
    /// Service and Secrets. Idempotent.
    async fn delete_lease(&self, lease_id: &str, if_version: Option<&str>) -> PortResult<()>;
    /// Undo a failed saga: delete the lease's objects that `request_id` created, and nothing else.
    async fn delete_created(&self, lease_id: &str, request_id: &str) -> PortResult<()>;
    /// Every lease pod this provider manages.
    async fn list_leases(&self) -> PortResult<Vec<ClusterLease>>;
    /// One lease by id (a label lookup, not a list of every lease).
    async fn get_lease(&self, lease_id: &str) -> PortResult<Option<ClusterLease>>;
    /// Live leases of one requester (a label lookup).
    async fn count_leases_of(&self, requester: &str) -> PortResult<usize>;
    /// How many more leases of `tier` the namespace's quotas leave room for; None when nothing known
    /// bounds it (no ResourceQuota, or its usage not computed yet).
    async fn room_for(&self, tier: &Tier) -> PortResult<Option<u64>>;
    /// Labelled Services and Secrets whose lease has no pod.
    async fn list_orphans(&self) -> PortResult<Vec<OrphanObject>>;
    async fn delete_orphan(&self, orphan: &OrphanObject) -> PortResult<()>;
    /// The lease's onion identity key (64 bytes), kept in a Secret.
    async fn load_onion_key(&self, lease_id: &str) -> PortResult<Option<Vec<u8>>>;
    async fn store_onion_key(&self, lease_id: &str, key: &[u8]) -> PortResult<()>;
    /// Keep the key of a pool slot (an onion service published ahead of demand) in its own Secret, before
    /// the service is launched.
    async fn store_pool_key(&self, slot: &str, key: &[u8]) -> PortResult<()>;
    /// Pool keys not yet bound to a lease.
    async fn list_pool_keys(&self) -> PortResult<Vec<PoolKey>>;
    /// Remove a pool slot's Secret and return its key: at most one caller ever gets it (None: gone, taken
    /// already, or not ours). The lease logic then stores it as the lease's onion key.
    async fn take_pool_key(&self, slot: &str) -> PortResult<Option<Vec<u8>>>;
    /// The API server answers (readiness).
    async fn ping(&self) -> PortResult<()>;
}

/// The SSH host key a pod presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    /// `SHA256:…`, as OpenSSH prints it.
    pub fingerprint: String,
    /// OpenSSH public key line (`ssh-ed25519 AAAA…`).
    pub public_key: String,
}

#[async_trait]
pub trait SshProbePort: Send + Sync {
    /// One SSH handshake with the endpoint (no login); returns its host key.
    async fn probe(&self, endpoint: SocketAddr) -> PortResult<HostKey>;
}

#[async_trait]
pub trait OnionPort: Send + Sync {
    /// Whether onion services are offered at all (ENABLE_TOR_SIDECAR).
    fn enabled(&self) -> bool;
    /// A fresh identity key (64 secret bytes, arti's expanded ed25519 form).
    fn generate_key(&self) -> PortResult<Vec<u8>>;
    /// Publish (or keep publishing) the lease's onion service forwarding the SSH ports to `target`.
    /// Returns the address, `<56 chars>.onion`, once the descriptor is published.
    async fn launch(&self, lease_id: &str, key: &[u8], target: SocketAddr) -> PortResult<String>;
    /// As `launch`, for a lease that already had its service (after a restart): nobody waits on it now, so
    /// it must never delay a new lease's publication.
    async fn restore(&self, lease_id: &str, key: &[u8], target: SocketAddr) -> PortResult<String> {
        self.launch(lease_id, key, target).await
    }
    /// Publish a service that forwards nothing yet (a pool slot, named by `slot` where a lease id would
    /// be); returns its address once it is reachable.
    async fn launch_idle(&self, slot: &str, key: &[u8]) -> PortResult<String>;
    /// Hand the running service of `slot` to `lease_id` and forward it to `target` from now on, without a
    /// new publication. Fails (nothing changed) if the slot runs no service or the lease already has one.
    async fn adopt(&self, slot: &str, lease_id: &str, target: SocketAddr) -> PortResult<String>;
    /// Stop the lease's (or slot's) onion service, if running.
    async fn stop(&self, lease_id: &str);
    /// Whether this process runs the lease's service forwarding to `target` (a restore would change
    /// nothing, so the reconciler skips it without reading the key).
    fn serves(&self, lease_id: &str, target: SocketAddr) -> bool;
    /// Tor is bootstrapped (readiness). Always true when disabled.
    fn ready(&self) -> bool;
    /// Number of running onion services.
    fn running(&self) -> usize;
    /// Services relaunched since start because they stalled unpublished.
    fn relaunches(&self) -> u64 {
        0
    }
}

/// How to reach the requester with the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyVia {
    /// A kind-1001 event with NIP-44 content (for plain and NIP-44 requests).
    Nip44,
    /// A NIP-17 gift wrap around a kind-1001 rumor.
    GiftWrap,
    /// Answered in-band (HTTP); nothing to send later.
    InBand,
    /// A NIP-17 gift wrap around a kind-14 chat message in words (a NUT-18 payment from a wallet, whose
    /// client shows chat messages).
    Chat,
}

impl ReplyVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyVia::Nip44 => "nip44",
            ReplyVia::GiftWrap => "gift_wrap",
            ReplyVia::InBand => "in_band",
            ReplyVia::Chat => "chat",
        }
    }
    pub fn parse(s: &str) -> Option<ReplyVia> {
        [ReplyVia::Nip44, ReplyVia::GiftWrap, ReplyVia::InBand, ReplyVia::Chat].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRoute {
    /// Request event id (hex); the reply's `e` tag.
    pub request_id: String,
    /// Requester's public key (hex); the reply's `p` tag and encryption target.
    pub requester: String,
    pub via: ReplyVia,
}

#[async_trait]
pub trait ReplyPort: Send + Sync {
    async fn send(&self, route: &ReplyRoute, reply: &Reply) -> PortResult<()>;
}

/// Waits are injectable so tests of timeouts run instantly.
pub fn default_probe_interval() -> Duration {
    Duration::from_millis(500)
}
