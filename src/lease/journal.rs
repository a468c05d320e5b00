//! The persisted state machine of every money path. A record is written before each effect, so after a
//! crash the provider knows exactly which effects may have happened and resumes or compensates.

use serde::{Deserialize, Serialize};

use super::ports::{PortResult, ReplyRoute};
use crate::protocol::{LeaseAccess, LeaseRequest, ReleaseRequest, Reply, StatusRequest, TopUpRequest};

/// What the requester asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    Create(LeaseRequest),
    TopUp(TopUpRequest),
    Status(StatusRequest),
    /// The provider ends a lease early (its pod failed): the unused whole minutes go back to the owner.
    End {
        lease_id: String,
        reason: String,
    },
    /// The owner ends a lease early: the unused whole minutes go back.
    Release(ReleaseRequest),
    /// A notice to the owner that the lease ends soon (the record makes it once per lease, threshold and expiry).
    Notice {
        lease_id: String,
    },
    /// Unusable input; only an error reply is owed.
    Invalid,
}

impl Ask {
    pub fn token(&self) -> &str {
        match self {
            Ask::Create(r) => &r.cashu_token,
            Ask::TopUp(r) => &r.cashu_token,
            Ask::Status(_) | Ask::End { .. } | Ask::Release(_) | Ask::Notice { .. } | Ask::Invalid => "",
        }
    }
    /// The same ask with the token removed, once it can no longer be needed.
    pub fn without_token(&self) -> Ask {
        let mut a = self.clone();
        match &mut a {
            Ask::Create(r) => r.cashu_token.clear(),
            Ask::TopUp(r) => r.cashu_token.clear(),
            Ask::Status(_) | Ask::End { .. } | Ask::Release(_) | Ask::Notice { .. } | Ask::Invalid => {}
        }
        a
    }
}

/// Steps of the saga. Each names what is known to have happened.
///
/// Create: Received → Redeeming → Redeemed → Provisioning → [ReturningExcess] → Replying → Done
/// Top-up: Received → Redeeming → Redeemed → (extend) → [ReturningExcess] → Replying → Done
/// Any failure after Redeemed: → Refunding → Replying(error with refund token) → Done
/// Any failure before Redeeming: → Replying(error) → Done, nothing was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Validated input is stored; no money moved.
    Received,
    /// A swap was (perhaps) sent to the mint. Its outcome must be established before anything else.
    Redeeming,
    /// The money is in the provider's wallet.
    Redeemed,
    /// Cluster objects may exist for `lease_id`.
    Provisioning,
    /// The lease is delivered in `reply`; `excess` sats paid beyond the longest lease go back with it.
    ReturningExcess,
    /// An early end is decided (`amount` to refund, computed from the pod at `pod_version`): delete the
    /// lease, then refund.
    Ending,
    /// The lease cannot be had: return `refund_amount` to the requester.
    Refunding,
    /// `reply` is final and must be delivered.
    Replying,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRecord {
    pub request_id: String,
    pub route: ReplyRoute,
    /// Unix seconds the request was first seen.
    pub received_at: u64,
    /// The same in milliseconds, for the reply-latency histogram (0 in records of older versions).
    #[serde(default)]
    pub received_at_ms: u64,
    pub step: Step,
    /// The request; its token is cleared once redeemed or refused.
    pub ask: Ask,
    /// Normalised mint of the token (for refunds).
    pub mint_url: Option<String>,
    /// Digest of the token's proofs (one token, one lease).
    pub token_digest: Option<String>,
    /// Sats received after mint fees.
    pub amount: Option<u64>,
    /// Of `amount`, what bought nothing (beyond the longest lease): returned with the reply.
    #[serde(default)]
    pub excess: Option<u64>,
    pub lease_id: Option<String>,
    pub expires_at: Option<u64>,
    /// The pod's resourceVersion an early end was computed from (the delete's precondition).
    #[serde(default)]
    pub pod_version: Option<String>,
    /// Whole minutes an early end leaves unused (what `amount` refunds).
    #[serde(default)]
    pub unused_minutes: Option<u64>,
    /// Generated once and kept, so a resumed saga gives the pod the same password it was created with.
    pub ssh_password: Option<String>,
    pub access: Option<LeaseAccess>,
    /// Why the request failed after money was taken (for the error reply after the refund).
    pub failure: Option<(crate::protocol::ErrorCode, String)>,
    pub reply: Option<Reply>,
}

impl SagaRecord {
    /// A fresh record in `Received`: nothing known yet beyond the request.
    pub fn new(route: ReplyRoute, ask: Ask, received_at: u64) -> SagaRecord {
        SagaRecord {
            request_id: route.request_id.clone(),
            route,
            received_at,
            received_at_ms: received_at.saturating_mul(1000),
            step: Step::Received,
            ask,
            mint_url: None,
            token_digest: None,
            amount: None,
            excess: None,
            lease_id: None,
            expires_at: None,
            pod_version: None,
            unused_minutes: None,
            ssh_password: None,
            access: None,
            failure: None,
            reply: None,
        }
    }
}

impl SagaRecord {
    /// Whether the saga moved no money and owes nothing more: a refusal, before or by the mint. Such
    /// records only de-duplicate replays, which the acceptance window bounds, so they are kept briefly
    /// (a flood of refused requests must not fill the volume). Notices are kept: they make each once.
    pub fn moved_no_money(&self) -> bool {
        self.step == Step::Done && self.amount.is_none() && !matches!(self.ask, Ask::Notice { .. })
    }

    /// An HTTP lease's early end: its refund token has no reply to travel in, so it stays in the record
    /// for the owner's next status request until the record is deleted, rather than the hour other
    /// in-band secrets are kept.
    pub fn keeps_secrets_for_owner(&self) -> bool {
        self.route.via == super::ports::ReplyVia::InBand && matches!(self.ask, Ask::End { .. })
    }

    /// Whether the record still holds something a reader of the volume could use: an SSH password, a
    /// refund token, an onion address, or a token not yet redeemed.
    pub fn has_secrets(&self) -> bool {
        !self.ask.token().is_empty()
            || self.ssh_password.is_some()
            || self.access.is_some()
            || self.reply.as_ref().is_some_and(reply_has_secrets)
    }

    /// The record with every secret cleared, once its reply is delivered: what stays tells the operator
    /// what happened (amounts, lease id, outcome), not how to get in or what to spend.
    pub fn without_secrets(&self) -> SagaRecord {
        let mut r = self.clone();
        r.ask = r.ask.without_token();
        r.ssh_password = None;
        r.access = None;
        if let Some(reply) = &mut r.reply {
            redact_reply(reply);
        }
        r
    }
}

fn reply_has_secrets(reply: &Reply) -> bool {
    match reply {
        Reply::Ok { access, refund_token, .. } => {
            access.ssh_password.is_some() || access.onion_address.is_some() || refund_token.is_some()
        }
        Reply::Extended { refund_token, .. }
        | Reply::Error { refund_token, .. }
        | Reply::Released { refund_token, .. } => refund_token.is_some(),
        Reply::Status { .. } | Reply::Notice { .. } => false,
    }
}

fn redact_reply(reply: &mut Reply) {
    match reply {
        Reply::Ok { access, refund_token, .. } => {
            access.ssh_password = None;
            access.onion_address = None;
            access.tor_ssh_command = None;
            *refund_token = None;
        }
        Reply::Extended { refund_token, .. }
        | Reply::Error { refund_token, .. }
        | Reply::Released { refund_token, .. } => *refund_token = None,
        Reply::Status { .. } | Reply::Notice { .. } => {}
    }
}

/// The holder of an end claimed by the reconciler at expiry (no refund is owed then).
pub const EXPIRY_HOLDER: &str = "expiry";

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished records (and their token claims) deleted.
    pub deleted: usize,
    /// Finished records whose secrets were cleared.
    pub redacted: usize,
}

/// Persistent journal of sagas. Implementations must make `insert_new` and `claim_token` atomic, since the
/// same event arrives from several relays at once.
pub trait Journal: Send + Sync {
    /// Store a new record; false if one with this request id exists (a duplicate or replay).
    fn insert_new(&self, record: &SagaRecord) -> PortResult<bool>;
    fn put(&self, record: &SagaRecord) -> PortResult<()>;
    fn get(&self, request_id: &str) -> PortResult<Option<SagaRecord>>;
    /// Records not yet Done (to resume after a restart).
    fn unfinished(&self) -> PortResult<Vec<SagaRecord>>;
    /// Bind a token digest to a request. Returns the request id that already holds it, if another does.
    fn claim_token(&self, digest: &str, request_id: &str) -> PortResult<Option<String>>;
    /// Undo `claim_token` when the saga ended without taking the money (the mint proved the token unspent),
    /// so the same token can pay again. Only the holder's claim is released.
    fn release_token(&self, digest: &str, request_id: &str) -> PortResult<()>;
    /// Claim the end of a lease for `holder` (a saga's request id, or [`EXPIRY_HOLDER`]): a lease ends once
    /// and refunds once, whatever asks at the same time (the owner's releases, the provider's early end,
    /// expiry). Returns the holder when another holds it; the same holder claiming again is not a conflict.
    /// `now` (unix seconds) dates the claim for pruning.
    fn claim_end(&self, lease_id: &str, holder: &str, now: u64) -> PortResult<Option<String>>;
    /// Undo `claim_end` when its holder found the lease alive after all (a top-up moved it on): only the
    /// holder's claim is released.
    fn release_end(&self, lease_id: &str, holder: &str) -> PortResult<()>;
    /// Delete finished records first seen before `delete_before` (unix seconds) with their token claims,
    /// and end claims made before then; delete finished records that moved no money first seen before
    /// `redact_before`; clear the secrets of finished records first seen before `redact_before`; at most `max` changes.
    fn prune(&self, delete_before: u64, redact_before: u64, max: usize) -> PortResult<Pruned>;
}
