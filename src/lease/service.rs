//! The lease saga engine: redeem → provision → reply, top-up and status, with compensation. Every step is
//! journaled before its effect so a restart resumes or compensates (see `journal::Step`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use tracing::{debug, info, info_span, warn, Instrument};

use super::admission::{self, Admission};
use super::journal::{Ask, Journal, SagaRecord, Step};
use super::ports::{
    AppliedTopUp, ClusterLease, ClusterPort, ExpiryUpdate, FailureKind, OnionPort, PaymentPort, PodPlan, PortError,
    ReplyPort, SshProbePort,
};
use super::Incoming;
use crate::config::{Config, Failpoint};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, LeaseAccess, LeaseRequest, LeaseStatus, Reply, StatusRequest, Tier};

/// What the lease logic needs of the configuration.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub ssh_port: u16,
    pub default_image: String,
    pub image_pull_policy: String,
    pub allowed_images: Vec<String>,
    pub tiers: Vec<Tier>,
    pub min_duration_secs: u64,
    pub max_duration_secs: u64,
    pub ready_timeout: Duration,
    /// Pause between attempts of a transient step (mint, API server, relays).
    pub retry_delay: Duration,
    /// Attempts of a transient step before the saga gives up on it (and compensates, or waits for resume).
    pub retry_attempts: u32,
    /// Crash-recovery testing: abort at this kill point (`PAYGRESS_FAILPOINT`). None in production.
    pub failpoint: Option<Failpoint>,
    /// Secret key of lease ids (see [`lease_id_for`]), derived from the provider's key.
    pub lease_id_key: [u8; 32],
    /// This provider's label value on the objects it creates.
    pub provider_id: String,
    /// Live leases one requester may hold at once.
    pub max_leases_per_requester: usize,
}

impl From<&Config> for LeaseSettings {
    fn from(c: &Config) -> Self {
        LeaseSettings {
            namespace: c.namespace.clone(),
            ssh_port: c.ssh_port,
            default_image: c.default_image.clone(),
            image_pull_policy: c.image_pull_policy.clone(),
            allowed_images: c.allowed_images.clone(),
            tiers: c.tiers.clone(),
            min_duration_secs: c.min_duration_secs,
            max_duration_secs: c.max_duration_secs,
            ready_timeout: Duration::from_secs(c.ready_timeout_secs),
            retry_delay: Duration::from_secs(2),
            retry_attempts: 5,
            failpoint: c.failpoint,
            lease_id_key: [0; 32],
            provider_id: String::new(),
            max_leases_per_requester: c.max_leases_per_requester,
        }
    }
}

impl LeaseSettings {
    /// The provider's identity: its lease-id key and label, both from its secret/public key.
    pub fn with_provider(mut self, provider_secret: &[u8; 32], provider_pubkey_hex: &str) -> Self {
        self.lease_id_key = lease_id_key(provider_secret);
        self.provider_id = super::ports::provider_id(provider_pubkey_hex);
        self
    }
}

/// The concrete outside world, as traits.
#[derive(Clone)]
pub struct Ports {
    pub payment: Arc<dyn PaymentPort>,
    pub cluster: Arc<dyn ClusterPort>,
    pub probe: Arc<dyn SshProbePort>,
    pub onion: Arc<dyn OnionPort>,
    pub replies: Arc<dyn ReplyPort>,
    pub journal: Arc<dyn Journal>,
}

/// Onion services the reconciler restores at once (each launch waits for its descriptor to be published).
/// Kept below the onion adapter's own bound on concurrent publications (8), so that after a restart with
/// many live leases a newly paid lease does not queue behind every restore (seen: 54 s instead of 0.5 s).
const RESTORE_CONCURRENCY: usize = 4;
/// Top-ups remembered on a lease pod. A resumed top-up is found among them; one that was applied before
/// this many later ones and then resumed would apply again, which needs that many top-ups during a crash.
const MAX_TOPUP_RECORDS: usize = 32;
/// Finished sagas are kept this long (for the operator, and to answer replays), then deleted.
pub const JOURNAL_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// Secrets of finished in-band (HTTP) sagas are kept this long for retries, then cleared.
pub const INBAND_SECRETS_SECS: u64 = 3600;
/// Changes of one pruning pass: bounds how long it holds the journal's write lock.
const PRUNE_BATCH: usize = 2000;
const TOPUP_TOO_LATE: &str = "the lease ended before the top-up could be applied";

pub struct LeaseService {
    settings: LeaseSettings,
    ports: Ports,
    metrics: Arc<Metrics>,
    /// Sagas being driven right now, so a periodic resume never drives one twice.
    driving: Mutex<HashSet<String>>,
    /// Leases being provisioned: the reconciler must not take their half-made objects for orphans.
    provisioning: Mutex<HashSet<String>>,
    /// Leases whose onion service this process launched, so the reconciler can stop those whose lease
    /// vanished from the cluster without passing through expiry here (deleted by hand or by another actor).
    onions: Mutex<HashSet<String>>,
    /// A restore of onion services is running in the background (one at a time).
    restoring: AtomicBool,
    /// Bounds on what requests that pay nothing (yet) can make the provider store and send.
    admission: Admission,
    /// The workers' bound, also taken by resumed sagas (a mint outage must not resume every parked saga
    /// at once, every resume interval).
    workers: Option<Arc<tokio::sync::Semaphore>>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The key of lease ids: a hash of the provider's secret key under its own domain.
pub fn lease_id_key(provider_secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"paygress-lease-id-key\0");
    h.update(provider_secret);
    h.finalize().into()
}

/// Lease ids are keyed hashes of the request id: a resumed saga names the same objects (idempotent
/// creates), and without the provider's key nobody can aim at a lease id (128 bits; request ids are
/// public, so an unkeyed hash could be ground to collide with a live lease's).
pub fn lease_id_for(key: &[u8; 32], request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(key);
    h.update(request_id.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// How a top-up is named in the lease's record: its request id's first 16 hex digits (64 bits).
fn topup_record_id(request_id: &str) -> String {
    request_id.chars().take(16).collect()
}

pub fn pod_name(lease_id: &str) -> String {
    format!("ssh-pod-{lease_id}")
}

pub fn service_name(lease_id: &str) -> String {
    format!("ssh-pod-{lease_id}-ssh")
}

/// Usernames the openssh image accepts and that are safe in a shell command line.
pub fn valid_username(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
        && !matches!(u, "root" | "abc" | "nobody" | "daemon" | "bin" | "sys" | "sshd")
}

/// One OpenSSH public key line of a type the image's sshd accepts.
pub fn valid_public_key(k: &str) -> bool {
    let k = k.trim();
    if k.contains('\n') || k.len() > 8192 {
        return false;
    }
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
        return false;
    };
    let known = matches!(
        kind,
        "ssh-ed25519"
            | "ssh-rsa"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
            | "sk-ssh-ed25519@openssh.com"
    );
    use base64::Engine as _;
    known && base64::engine::general_purpose::STANDARD.decode(body).is_ok()
}

fn generate_password() -> String {
    // 24 chars over a 56-symbol alphabet without look-alikes: ~139 bits.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..24).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// Seconds bought by `amount` sats at `rate` sats/hour.
pub fn seconds_for(amount: u64, rate: u64) -> u64 {
    amount.saturating_mul(3600) / rate.max(1)
}

/// Smallest amount (sats) that buys at least `secs`.
pub fn price_of(secs: u64, rate: u64) -> u64 {
    (secs.saturating_mul(rate)).div_ceil(3600)
}

enum Flow {
    /// Continue with the next step.
    Next,
    /// Stop for now: a transient failure persists; a later resume continues.
    Park,
}

impl LeaseService {
    pub fn new(settings: LeaseSettings, ports: Ports, metrics: Arc<Metrics>) -> Self {
        LeaseService {
            settings,
            ports,
            metrics,
            driving: Mutex::new(HashSet::new()),
            provisioning: Mutex::new(HashSet::new()),
            onions: Mutex::new(HashSet::new()),
            restoring: AtomicBool::new(false),
            admission: Admission::default(),
            workers: None,
        }
    }

    /// Share the request workers' semaphore with resumed sagas.
    pub fn with_workers(mut self, workers: Arc<tokio::sync::Semaphore>) -> Self {
        self.workers = Some(workers);
        self
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Abort the process, as kill -9 would, when `at` is the configured kill point. Called right after the
    /// effect (journal write or cluster change) that names the point.
    fn failpoint(&self, at: Failpoint) {
        if self.settings.failpoint == Some(at) {
            tracing::error!(failpoint = at.name(), "PAYGRESS_FAILPOINT reached: aborting");
            std::process::abort();
        }
    }

    fn tier(&self, name: Option<&str>) -> Option<&Tier> {
        match name {
            None => self.settings.tiers.first(),
            Some(n) => self.settings.tiers.iter().find(|t| t.name == n),
        }
    }

    /// Handle one decoded request to its end. Returns the reply (HTTP answers with it), or None when the
    /// request duplicates one already handled or in flight, or its answer is withheld (rate limit).
    ///
    /// Only requests that can move money, and pass every offline check, are journaled: status requests,
    /// garbage and offline refusals are answered from memory, so a flood of them costs no disk.
    pub async fn handle(&self, incoming: Incoming) -> Option<Reply> {
        let route = incoming.route().clone();
        let ask = match incoming {
            Incoming::Create { request, .. } => Ask::Create(request),
            Incoming::TopUp { request, .. } => Ask::TopUp(request),
            Incoming::Status { request, .. } => return self.answer_status_unjournaled(route, request).await,
            Incoming::Invalid { code, message, .. } => {
                let reply = Reply::error(&route.request_id, code, message);
                return self.answer_unjournaled(&route, reply).await;
            }
        };
        // A replay of a journaled request is answered from its record, whatever the checks say now.
        match self.ports.journal.get(&route.request_id) {
            Ok(Some(existing)) => {
                info!(request_id = %route.request_id, "duplicate request ignored");
                return (existing.step == Step::Done).then_some(existing.reply).flatten();
            }
            Ok(None) => {}
            Err(e) => {
                warn!(request_id = %route.request_id, error = %e, "journal unavailable; request dropped unanswered");
                return None;
            }
        }
        if let Err((code, message)) = self.precheck(&ask) {
            return self.answer_unjournaled(&route, Reply::error(&route.request_id, code, message)).await;
        }
        if self.admission.enter(&route.requester).is_none() {
            let reply = Reply::error(
                &route.request_id,
                ErrorCode::TooManyRequests,
                format!(
                    "at most {} paid requests of one key are handled at once",
                    admission::MAX_INFLIGHT_PER_REQUESTER
                ),
            );
            return self.answer_unjournaled(&route, reply).await;
        }
        let out = self.start(new_record(route.clone(), ask)).await;
        self.admission.leave(&route.requester);
        out
    }

    /// Send a reply that has no journal record: once per request id, and error replies at a bounded rate
    /// per requester. Best effort (one attempt): nothing was taken, so nothing is owed.
    async fn answer_unjournaled(&self, route: &super::ports::ReplyRoute, reply: Reply) -> Option<Reply> {
        // In-band (HTTP) answers cost nothing to send and the HTTP layer has its own limits.
        if route.via != super::ports::ReplyVia::InBand {
            if !self.admission.first_sighting(&route.request_id) {
                debug!(request_id = %route.request_id, "duplicate request ignored");
                return None;
            }
            if matches!(reply, Reply::Error { .. }) && !self.admission.allow_error_reply(&route.requester, now_secs()) {
                self.metrics.outcome("rate_limited");
                debug!(request_id = %route.request_id, "error reply withheld: requester over its rate");
                return None;
            }
        }
        match self.ports.replies.send(route, &reply).await {
            Ok(()) => {
                let outcome = match &reply {
                    Reply::Status { .. } => "status",
                    Reply::Error { code, .. } => code.as_str(),
                    _ => "other",
                };
                self.metrics.outcome(outcome);
            }
            Err(e) => debug!(request_id = %route.request_id, error = %e, "reply not delivered"),
        }
        Some(reply)
    }

    async fn answer_status_unjournaled(&self, route: super::ports::ReplyRoute, req: StatusRequest) -> Option<Reply> {
        if route.via != super::ports::ReplyVia::InBand && !self.admission.first_sighting(&route.request_id) {
            return None;
        }
        let mut rec = new_record(route.clone(), Ask::Status(req.clone()));
        if let Flow::Park = self.answer_status(&mut rec, &req).await {
            return None;
        }
        let reply = rec.reply?;
        if matches!(reply, Reply::Error { .. }) && !self.admission.allow_error_reply(&route.requester, now_secs()) {
            return None;
        }
        match self.ports.replies.send(&route, &reply).await {
            Ok(()) => self.metrics.outcome(if matches!(reply, Reply::Status { .. }) { "status" } else { "error" }),
            Err(e) => debug!(request_id = %route.request_id, error = %e, "status reply not delivered"),
        }
        Some(reply)
    }

    async fn start(&self, rec: SagaRecord) -> Option<Reply> {
        match self.ports.journal.insert_new(&rec) {
            Ok(true) => self.drive(rec).await,
            Ok(false) => {
                // Replays and the same event from several relays land here: one saga per request id.
                info!(request_id = %rec.request_id, "duplicate request ignored");
                match self.ports.journal.get(&rec.request_id) {
                    Ok(Some(existing)) if existing.step == Step::Done => existing.reply,
                    _ => None,
                }
            }
            Err(e) => {
                warn!(request_id = %rec.request_id, error = %e, "journal unavailable; request dropped unanswered");
                None
            }
        }
    }

    /// Forget finished sagas after [`JOURNAL_RETENTION_SECS`] (requests older than the acceptance window
    /// are refused before the journal is asked, so their ids are not needed to de-duplicate), and clear
    /// the secrets kept for in-band retries after [`INBAND_SECRETS_SECS`].
    pub fn prune_journal(&self) {
        let now = now_secs();
        match self.ports.journal.prune(
            now.saturating_sub(JOURNAL_RETENTION_SECS),
            now.saturating_sub(INBAND_SECRETS_SECS),
            PRUNE_BATCH,
        ) {
            Ok(p) if p.deleted + p.redacted > 0 => info!(deleted = p.deleted, redacted = p.redacted, "journal pruned"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "journal pruning failed"),
        }
    }

    /// Resume every unfinished saga (at start, and periodically for parked ones).
    pub async fn resume_unfinished(self: &Arc<Self>) {
        let records = match self.ports.journal.unfinished() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read journal to resume sagas");
                return;
            }
        };
        for rec in records {
            if self.driving.lock().map(|d| d.contains(&rec.request_id)).unwrap_or(true) {
                continue;
            }
            let permit = match &self.workers {
                Some(w) => match w.clone().acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => return, // closed: shutting down
                },
                None => None,
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.drive(rec).await;
                drop(permit);
            });
        }
    }

    async fn drive(&self, mut rec: SagaRecord) -> Option<Reply> {
        {
            let Ok(mut d) = self.driving.lock() else {
                return None;
            };
            if !d.insert(rec.request_id.clone()) {
                return None;
            }
        }
        let span = info_span!("lease", request_id = %rec.request_id, lease_id = rec.lease_id.as_deref().unwrap_or(""));
        let out = self.drive_steps(&mut rec).instrument(span).await;
        if let Ok(mut d) = self.driving.lock() {
            d.remove(&rec.request_id);
        }
        out
    }

    async fn drive_steps(&self, rec: &mut SagaRecord) -> Option<Reply> {
        // A saga that starts in Redeeming was cut there (crash, or parked): a swap may have been sent.
        let resumed_in_redeem = rec.step == Step::Redeeming;
        loop {
            let flow = match rec.step {
                Step::Received => self.step_received(rec).await,
                Step::Redeeming => self.step_redeeming(rec, resumed_in_redeem).await,
                Step::Redeemed => self.step_redeemed(rec).await,
                Step::Provisioning => self.step_provisioning(rec).await,
                Step::ReturningExcess => self.step_returning_excess(rec).await,
                Step::Refunding => self.step_refunding(rec).await,
                Step::Replying => self.step_replying(rec).await,
                Step::Done => return rec.reply.clone(),
            };
            // Delivered: the record keeps what happened, not the password, address or tokens. In-band
            // (HTTP) records keep them for a while, for a retry with the same Idempotency-Key; the
            // journal's pruning clears them later.
            let stored = if rec.step == Step::Done && rec.route.via != super::ports::ReplyVia::InBand {
                rec.without_secrets()
            } else {
                rec.clone()
            };
            if let Err(e) = self.ports.journal.put(&stored) {
                // Without the journal a crash could lose track of money: stop here; resume retries.
                warn!(error = %e, step = ?rec.step, "journal write failed; saga parked");
                return None;
            }
            match rec.step {
                Step::Redeemed => self.failpoint(Failpoint::AfterRedeem),
                // Only replies to paid requests: refusals of replayed old requests must not trip it.
                Step::Replying if rec.amount.is_some() => self.failpoint(Failpoint::BeforeReply),
                _ => {}
            }
            if let Flow::Park = flow {
                return None;
            }
        }
    }

    fn finish_with(&self, rec: &mut SagaRecord, reply: Reply) -> Flow {
        rec.reply = Some(reply);
        rec.ask = rec.ask.without_token();
        rec.step = Step::Replying;
        Flow::Next
    }

    fn refuse(&self, rec: &mut SagaRecord, code: ErrorCode, message: impl Into<String>) -> Flow {
        let reply = Reply::error(&rec.request_id, code, message);
        self.finish_with(rec, reply)
    }

    /// Money was taken and the lease cannot be had: compensate.
    fn fail_after_redeem(&self, rec: &mut SagaRecord, code: ErrorCode, message: impl Into<String>) -> Flow {
        rec.failure = Some((code, message.into()));
        rec.step = Step::Refunding;
        Flow::Next
    }

    // Step: validate input, check the token offline, claim it. Nothing is redeemed on any failure here.
    async fn step_received(&self, rec: &mut SagaRecord) -> Flow {
        match rec.ask.clone() {
            Ask::Invalid => Flow::Next, // reply already set by `handle`
            Ask::Status(req) => self.answer_status(rec, &req).await,
            Ask::Create(req) => match self.validate_create(&req) {
                Err((code, msg)) => self.refuse(rec, code, msg),
                Ok(()) => match self.check_room(rec, &req).await {
                    Some(flow) => flow,
                    None => self.check_token_then_redeem(rec),
                },
            },
            Ask::TopUp(req) => match self.find_owned_lease(rec, &req.lease).await {
                Err(flow) => flow,
                Ok(lease) => {
                    rec.lease_id = Some(lease.lease_id.clone());
                    rec.expires_at = lease.expires_at;
                    self.check_token_then_redeem(rec)
                }
            },
        }
    }

    fn validate_create(&self, req: &LeaseRequest) -> Result<(), (ErrorCode, String)> {
        let user = req.ssh_username.as_deref().unwrap_or("user");
        if !valid_username(user) {
            return Err((
                ErrorCode::InvalidUsername,
                "ssh_username must be 1-32 chars of a-z, 0-9, '_' or '-', start with a letter or '_', and not be a system user".into(),
            ));
        }
        let image = req.pod_image.as_deref().unwrap_or(&self.settings.default_image);
        if !self.settings.allowed_images.iter().any(|i| i == image) {
            return Err((
                ErrorCode::ImageNotAllowed,
                format!("image not allowed; allowed: {}", self.settings.allowed_images.join(", ")),
            ));
        }
        if let Some(k) = &req.ssh_public_key {
            if !valid_public_key(k) {
                return Err((ErrorCode::InvalidPublicKey, "ssh_public_key must be one OpenSSH public key line".into()));
            }
        }
        if self.tier(req.tier.as_deref()).is_none() {
            let names: Vec<&str> = self.settings.tiers.iter().map(|t| t.name.as_str()).collect();
            return Err((ErrorCode::UnknownTier, format!("unknown tier; offered: {}", names.join(", "))));
        }
        if req.cashu_token.trim().is_empty() {
            return Err((ErrorCode::InvalidToken, "cashu_token is empty".into()));
        }
        Ok(())
    }

    /// Before any money moves: a lease the cluster has no room for, or one more than the requester may
    /// hold, is refused with nothing taken. Returns the flow when refused (or parked).
    async fn check_room(&self, rec: &mut SagaRecord, req: &LeaseRequest) -> Option<Flow> {
        let held = match self.retry(|| self.ports.cluster.count_leases_of(&rec.route.requester)).await {
            Ok(n) => n,
            Err(e) if e.is_transient() => return Some(Flow::Park),
            Err(e) => return Some(self.refuse(rec, ErrorCode::Unavailable, e.message)),
        };
        if held >= self.settings.max_leases_per_requester {
            return Some(self.refuse(
                rec,
                ErrorCode::TooManyRequests,
                format!("one key may hold at most {} leases at once", self.settings.max_leases_per_requester),
            ));
        }
        let tier = self.tier(req.tier.as_deref())?.clone();
        match self.retry(|| self.ports.cluster.room_for(&tier)).await {
            Ok(Some(0)) => Some(self.refuse(
                rec,
                ErrorCode::NoCapacity,
                format!("no room for a lease of tier {} right now; nothing was taken", tier.name),
            )),
            Ok(_) => None,
            Err(e) if e.is_transient() => Some(Flow::Park),
            // Cannot read quotas (e.g. RBAC of an older manifest): the pod create itself will tell.
            Err(e) => {
                debug!(error = %e, "quota room unknown");
                None
            }
        }
    }

    /// What can be told of a request's token without the mint: encoding, whitelist, and that its face
    /// value buys at least the minimum (and, for a create, not grossly more than the maximum).
    fn offline_token_check(&self, ask: &Ask) -> Result<super::ports::TokenInfo, (ErrorCode, String)> {
        let info = self.ports.payment.inspect(ask.token()).map_err(|e| {
            let code = match e.kind {
                FailureKind::Rejected(c) => c,
                FailureKind::Transient => ErrorCode::MintUnavailable,
                FailureKind::Permanent => ErrorCode::InvalidToken,
            };
            (code, e.message)
        })?;
        let rate = match ask {
            Ask::Create(r) => self.tier(r.tier.as_deref()),
            _ => self.tier(None),
        }
        .map(|t| t.sats_per_hour)
        .unwrap_or(1);
        let min_price = price_of(self.settings.min_duration_secs, rate);
        if info.amount < min_price {
            return Err((
                ErrorCode::AmountTooSmall,
                format!(
                    "{} sat buys less than the minimum of {} s; at least {} sat needed",
                    info.amount, self.settings.min_duration_secs, min_price
                ),
            ));
        }
        if matches!(ask, Ask::Create(_)) {
            let max_price = price_of(self.settings.max_duration_secs, rate);
            // Input fees only lower the amount, so the face value bounds what could be received. What is
            // received beyond the maximum goes back with the lease (`excess`).
            if info.amount > max_price + max_price / 10 + 10 {
                return Err((
                    ErrorCode::AmountTooLarge,
                    format!(
                        "{} sat buys more than the maximum of {} s ({} sat)",
                        info.amount, self.settings.max_duration_secs, max_price
                    ),
                ));
            }
        }
        Ok(info)
    }

    /// Checks done before a request is journaled; a request they refuse never reaches the journal.
    fn precheck(&self, ask: &Ask) -> Result<(), (ErrorCode, String)> {
        if let Ask::Create(req) = ask {
            self.validate_create(req)?;
        }
        self.offline_token_check(ask).map(|_| ())
    }

    fn check_token_then_redeem(&self, rec: &mut SagaRecord) -> Flow {
        let info = match self.offline_token_check(&rec.ask) {
            Ok(i) => i,
            Err((code, message)) => return self.refuse(rec, code, message),
        };
        match self.ports.journal.claim_token(&info.digest, &rec.request_id) {
            Ok(None) => {}
            Ok(Some(_other)) => {
                return self.refuse(rec, ErrorCode::TokenSpent, "this token was already used by another request");
            }
            Err(e) => {
                warn!(error = %e, "journal: cannot claim token");
                return Flow::Park;
            }
        }
        rec.mint_url = Some(info.mint_url);
        rec.token_digest = Some(info.digest);
        rec.step = Step::Redeeming;
        Flow::Next
    }

    fn refuse_port(&self, rec: &mut SagaRecord, e: PortError, fallback: ErrorCode) -> Flow {
        let code = match e.kind {
            FailureKind::Rejected(c) => c,
            FailureKind::Transient => ErrorCode::MintUnavailable,
            FailureKind::Permanent => fallback,
        };
        self.refuse(rec, code, e.message)
    }

    // Step: swap at the mint, exactly once. `resumed`: an earlier attempt of this saga may have reached the mint.
    async fn step_redeeming(&self, rec: &mut SagaRecord, resumed: bool) -> Flow {
        let token = rec.ask.token().to_string();
        if token.is_empty() {
            // Cannot happen by construction (the token is cleared only after leaving this step).
            return self.refuse(rec, ErrorCode::Internal, "token lost before redeem");
        }
        let mut attempt = 0;
        // Whether a swap of ours may have happened already. If not, the mint's answer is the whole truth
        // ("spent" then means someone else spent it: the journal's claim rules out our other requests).
        let mut maybe_ours = resumed;
        loop {
            attempt += 1;
            match self.ports.payment.redeem(&token).await {
                Ok(amount) => {
                    info!(amount, "token redeemed");
                    return self.redeemed(rec, amount);
                }
                Err(e) if e.is_transient() && attempt < self.settings.retry_attempts => {
                    maybe_ours = true;
                    warn!(attempt, error = %e, "redeem failed transiently; retrying");
                    tokio::time::sleep(self.settings.retry_delay).await;
                }
                Err(e) if !maybe_ours && !e.is_transient() => {
                    info!(error = %e, "token refused by the mint");
                    return self.refuse_port(rec, e, ErrorCode::InvalidToken);
                }
                // A swap of ours may have happened (or the mint never answered): whatever this answer says,
                // only the mint's proof state and our wallet settle the outcome.
                Err(e) => return self.settle_redeem(rec, &token, e).await,
            }
        }
    }

    /// The outcome of a redeem that may or may not have swapped the token, from the mint's proof state
    /// (NUT-07) and our wallet's records; never guessed from an error.
    async fn settle_redeem(&self, rec: &mut SagaRecord, token: &str, e: PortError) -> Flow {
        match self.ports.payment.token_state(token).await {
            Ok(super::ports::TokenState::Unspent) => {
                // Provably nothing was taken: the token may pay again, in this request's retry or another.
                if let Some(digest) = rec.token_digest.clone() {
                    if let Err(je) = self.ports.journal.release_token(&digest, &rec.request_id) {
                        warn!(error = %je, "journal: cannot release the token claim");
                    }
                }
                if e.is_transient() {
                    self.refuse(
                        rec,
                        ErrorCode::MintUnavailable,
                        format!("the mint did not answer; nothing was taken: {e}"),
                    )
                } else {
                    info!(error = %e, "token refused by the mint");
                    self.refuse_port(rec, e, ErrorCode::InvalidToken)
                }
            }
            Ok(super::ports::TokenState::Spent) => match self.ports.payment.received_amount(token).await {
                Ok(Some(amount)) => {
                    info!(amount, "the swap had happened; continuing");
                    self.redeemed(rec, amount)
                }
                Ok(None) => {
                    info!("token spent, not by us");
                    self.refuse(rec, ErrorCode::TokenSpent, "the token was already spent at the mint")
                }
                Err(_) => Flow::Park,
            },
            // Pending (a swap in flight) or no answer: decide later, from a resume.
            Ok(super::ports::TokenState::Pending) | Err(_) => {
                warn!(error = %e, "redeem outcome unknown; parked until the mint tells");
                Flow::Park
            }
        }
    }

    fn redeemed(&self, rec: &mut SagaRecord, amount: u64) -> Flow {
        self.metrics.sats_received.fetch_add(amount, Ordering::Relaxed);
        rec.amount = Some(amount);
        rec.ask = rec.ask.without_token();
        rec.step = Step::Redeemed;
        Flow::Next
    }

    // Step: price the money into a lease (create) or an extension (top-up).
    async fn step_redeemed(&self, rec: &mut SagaRecord) -> Flow {
        let amount = rec.amount.unwrap_or(0);
        match rec.ask.clone() {
            Ask::Create(req) => {
                let Some(tier) = self.tier(req.tier.as_deref()).cloned() else {
                    return self.fail_after_redeem(rec, ErrorCode::UnknownTier, "tier disappeared from the offer");
                };
                let secs = seconds_for(amount, tier.sats_per_hour);
                if secs < self.settings.min_duration_secs {
                    return self.fail_after_redeem(
                        rec,
                        ErrorCode::AmountTooSmall,
                        format!(
                            "after mint fees {amount} sat buys {secs} s, below the minimum of {} s",
                            self.settings.min_duration_secs
                        ),
                    );
                }
                if secs > self.settings.max_duration_secs {
                    // Beyond the longest lease the money buys nothing: it goes back with the lease.
                    let charged = price_of(self.settings.max_duration_secs, tier.sats_per_hour);
                    rec.excess = Some(amount.saturating_sub(charged)).filter(|e| *e > 0);
                }
                let secs = secs.min(self.settings.max_duration_secs);
                let lease_id = lease_id_for(&self.settings.lease_id_key, &rec.request_id);
                tracing::Span::current().record("lease_id", lease_id.as_str());
                rec.lease_id = Some(lease_id);
                rec.expires_at = Some(now_secs() + secs);
                if req.ssh_public_key.is_none() && rec.ssh_password.is_none() {
                    rec.ssh_password = Some(generate_password());
                }
                rec.step = Step::Provisioning;
                Flow::Next
            }
            Ask::TopUp(_) => self.extend(rec, amount).await,
            Ask::Status(_) | Ask::Invalid => self.refuse(rec, ErrorCode::Internal, "nothing to redeem for"),
        }
    }

    /// Apply a redeemed top-up exactly once. The new expiry and the top-up's record are written together,
    /// conditional on the pod's resourceVersion: a resume after a crash finds the record and replies with
    /// it, and a concurrent top-up makes this write fail and be recomputed from the fresh pod.
    async fn extend(&self, rec: &mut SagaRecord, amount: u64) -> Flow {
        let lease_id = rec.lease_id.clone().unwrap_or_default();
        let topup_id = topup_record_id(&rec.request_id);
        for _ in 0..self.settings.retry_attempts.max(1) {
            let lease = match self.lease_by_id(&lease_id).await {
                Ok(Some(l)) => l,
                Ok(None) => return self.fail_after_redeem(rec, ErrorCode::LeaseExpired, TOPUP_TOO_LATE),
                Err(e) if e.is_transient() => return Flow::Park,
                Err(e) => return self.fail_after_redeem(rec, ErrorCode::ProvisioningFailed, e.message),
            };
            if let Some(done) = lease.topups.iter().find(|t| t.id == topup_id) {
                info!(lease_id, expires_at = done.expires_at, "top-up already applied (resumed)");
                let rate = self.tier(lease.tier.as_deref()).map(|t| t.sats_per_hour).unwrap_or(1);
                if done.added_secs < seconds_for(amount, rate) {
                    rec.excess = Some(amount.saturating_sub(price_of(done.added_secs, rate))).filter(|e| *e > 0);
                }
                return self.extended(rec, lease_id, amount, done.added_secs, done.expires_at);
            }
            let now = now_secs();
            if lease.terminating || lease.expires_at.is_none_or(|e| e <= now) {
                // Expired (or deleted) between the check and the payment: give the money back.
                return self.fail_after_redeem(rec, ErrorCode::LeaseExpired, TOPUP_TOO_LATE);
            }
            let rate = self.tier(lease.tier.as_deref()).map(|t| t.sats_per_hour).unwrap_or(1);
            let current = lease.expires_at.unwrap_or(now).max(now);
            let new_expiry = (current + seconds_for(amount, rate)).min(now + self.settings.max_duration_secs);
            if new_expiry <= current {
                return self.fail_after_redeem(
                    rec,
                    ErrorCode::AmountTooLarge,
                    "the lease is already at its maximum length",
                );
            }
            let added_secs = new_expiry - current;
            // Capped at the longest lease: what bought no time goes back with the reply.
            let change = if added_secs < seconds_for(amount, rate) {
                amount.saturating_sub(price_of(added_secs, rate))
            } else {
                0
            };
            let mut topups = lease.topups;
            topups.push(AppliedTopUp { id: topup_id.clone(), added_secs, expires_at: new_expiry });
            let excess = topups.len().saturating_sub(MAX_TOPUP_RECORDS);
            topups.drain(..excess);
            let update = ExpiryUpdate { expires_at: new_expiry, topups, if_version: lease.version };
            match self.ports.cluster.set_expiry(&lease_id, &update).await {
                Ok(()) => {
                    info!(lease_id, new_expiry, added_secs, change, "lease extended");
                    rec.excess = Some(change).filter(|e| *e > 0);
                    return self.extended(rec, lease_id, amount, added_secs, new_expiry);
                }
                // A conflict (someone changed the pod) or a timeout that may have applied: re-read.
                Err(e) if e.is_transient() => {
                    debug!(lease_id, error = %e, "top-up write not applied; re-reading the lease");
                    tokio::time::sleep(self.settings.retry_delay).await;
                }
                Err(e) => return self.fail_after_redeem(rec, ErrorCode::ProvisioningFailed, e.message),
            }
        }
        Flow::Park
    }

    fn extended(&self, rec: &mut SagaRecord, lease_id: String, amount: u64, added: u64, expires_at: u64) -> Flow {
        rec.expires_at = Some(expires_at);
        let reply = Reply::Extended {
            request_id: rec.request_id.clone(),
            lease_id,
            amount_sats: amount,
            added_seconds: added,
            expires_at,
            refund_token: None,
        };
        self.deliver(rec, reply)
    }

    /// The lease (or extension) is had: return any excess first, then reply.
    fn deliver(&self, rec: &mut SagaRecord, reply: Reply) -> Flow {
        let flow = self.finish_with(rec, reply);
        if rec.excess.is_some_and(|e| e > 0) {
            rec.step = Step::ReturningExcess;
        }
        flow
    }

    // Step: mint the excess into a token (once per request, like a refund) and attach it to the reply.
    async fn step_returning_excess(&self, rec: &mut SagaRecord) -> Flow {
        let (Some(excess), Some(mint)) = (rec.excess.filter(|e| *e > 0), rec.mint_url.clone()) else {
            rec.step = Step::Replying;
            return Flow::Next;
        };
        let refund_id = format!("{}:excess", rec.request_id);
        match self.retry(|| self.ports.payment.refund(&mint, excess, &refund_id)).await {
            Ok(token) => {
                info!(excess, "excess over the longest lease returned");
                self.metrics.sats_refunded.fetch_add(excess, Ordering::Relaxed);
                if let Some(Reply::Ok { refund_token, .. } | Reply::Extended { refund_token, .. }) = &mut rec.reply {
                    *refund_token = Some(token);
                }
                rec.step = Step::Replying;
                Flow::Next
            }
            Err(e) if e.is_transient() => Flow::Park,
            Err(e) => {
                // The lease itself is delivered; the operator owes the excess (logged with the request id).
                warn!(error = %e, excess, "returning the excess failed; operator attention needed");
                rec.step = Step::Replying;
                Flow::Next
            }
        }
    }

    // Step: create the objects, wait for SSH, publish the onion service. Idempotent, so a resume re-runs it.
    async fn step_provisioning(&self, rec: &mut SagaRecord) -> Flow {
        let (Ask::Create(req), Some(lease_id), Some(expires_at)) =
            (rec.ask.clone(), rec.lease_id.clone(), rec.expires_at)
        else {
            return self.fail_after_redeem(rec, ErrorCode::Internal, "provisioning record incomplete");
        };
        if expires_at <= now_secs() {
            // The whole lease elapsed while we were down: nothing to deliver, so return the money.
            let _ = self.ports.cluster.delete_created(&lease_id, &rec.request_id).await;
            return self.fail_after_redeem(
                rec,
                ErrorCode::ProvisioningFailed,
                "the lease could not be started before it would have expired",
            );
        }
        if let Ok(mut p) = self.provisioning.lock() {
            p.insert(lease_id.clone());
        }
        let result = self.provision(rec, &req, &lease_id, expires_at).await;
        if let Ok(mut p) = self.provisioning.lock() {
            p.remove(&lease_id);
        }
        match result {
            Ok(access) => {
                let reply = Reply::Ok {
                    request_id: rec.request_id.clone(),
                    amount_sats: rec.amount.unwrap_or(0),
                    duration_seconds: expires_at.saturating_sub(now_secs()),
                    access: Box::new(access.clone()),
                    refund_token: None,
                };
                rec.access = Some(access);
                self.deliver(rec, reply)
            }
            Err(e) => {
                warn!(error = %e, "provisioning failed; removing what was made and refunding");
                self.stop_onion(&lease_id).await;
                let request_id = rec.request_id.clone();
                if let Err(del) = self.retry(|| self.ports.cluster.delete_created(&lease_id, &request_id)).await {
                    warn!(error = %del, "cleanup after failed provisioning incomplete; the reconciler will retry");
                }
                self.fail_after_redeem(
                    rec,
                    ErrorCode::ProvisioningFailed,
                    format!("the pod could not be started: {}", e.message),
                )
            }
        }
    }

    async fn provision(
        &self,
        rec: &SagaRecord,
        req: &LeaseRequest,
        lease_id: &str,
        expires_at: u64,
    ) -> Result<LeaseAccess, PortError> {
        let tier = self.tier(req.tier.as_deref()).cloned().ok_or_else(|| PortError::permanent("unknown tier"))?;
        let ssh_username = req.ssh_username.clone().unwrap_or_else(|| "user".into());
        let plan = PodPlan {
            lease_id: lease_id.to_string(),
            pod_name: pod_name(lease_id),
            service_name: service_name(lease_id),
            namespace: self.settings.namespace.clone(),
            image: req.pod_image.clone().unwrap_or_else(|| self.settings.default_image.clone()),
            image_pull_policy: self.settings.image_pull_policy.clone(),
            ssh_username: ssh_username.clone(),
            ssh_password: rec.ssh_password.clone(),
            ssh_public_key: req.ssh_public_key.clone(),
            tier: tier.clone(),
            ssh_port: self.settings.ssh_port,
            expires_at,
            requester: rec.route.requester.clone(),
            request_id: rec.request_id.clone(),
            provider: self.settings.provider_id.clone(),
        };
        let deadline = Instant::now() + self.settings.ready_timeout;
        self.retry(|| self.ports.cluster.ensure_lease_objects(&plan)).await?;
        info!(pod = %plan.pod_name, "pod and service created");
        self.failpoint(Failpoint::AfterPodCreate);
        let endpoint =
            self.ports.cluster.wait_running(lease_id, deadline.saturating_duration_since(Instant::now())).await?;
        let host_key = self.wait_for_ssh(endpoint, deadline).await?;
        info!(%endpoint, fingerprint = %host_key.fingerprint, "ssh answers");
        let onion_address = if self.ports.onion.enabled() {
            match self.launch_onion(lease_id, endpoint).await {
                Ok(a) => Some(a),
                Err(e) => {
                    // Counted like a failed restore: paygress_onion_services{status="failed"}.
                    self.metrics.onion_failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        } else {
            None
        };
        self.failpoint(Failpoint::AfterReady);
        let port = self.settings.ssh_port;
        Ok(LeaseAccess {
            lease_id: lease_id.to_string(),
            pod_name: plan.pod_name.clone(),
            namespace: plan.namespace.clone(),
            ssh_username: ssh_username.clone(),
            ssh_password: rec.ssh_password.clone(),
            ssh_port: port,
            host_key_fingerprint: host_key.fingerprint,
            host_public_key: Some(host_key.public_key),
            tier: tier.name,
            expires_at,
            port_forward_command: format!(
                "kubectl -n {} port-forward svc/{} {port}:{port}",
                plan.namespace, plan.service_name
            ),
            ssh_command: format!("ssh -p {port} {ssh_username}@127.0.0.1"),
            tor_ssh_command: onion_address.as_ref().map(|a| format!("torsocks ssh -p {port} {ssh_username}@{a}")),
            onion_address,
        })
    }

    async fn wait_for_ssh(&self, endpoint: SocketAddr, deadline: Instant) -> Result<super::ports::HostKey, PortError> {
        loop {
            match self.ports.probe.probe(endpoint).await {
                Ok(k) => return Ok(k),
                Err(e) if Instant::now() >= deadline => {
                    return Err(PortError::permanent(format!("ssh did not answer before the timeout: {e}")))
                }
                Err(_) => tokio::time::sleep(super::ports::default_probe_interval()).await,
            }
        }
    }

    async fn stop_onion(&self, lease_id: &str) {
        self.ports.onion.stop(lease_id).await;
        if let Ok(mut o) = self.onions.lock() {
            o.remove(lease_id);
        }
    }

    /// Publish the lease's onion service from the key in its Secret (made on first use).
    async fn launch_onion(&self, lease_id: &str, endpoint: SocketAddr) -> Result<String, PortError> {
        let key = match self.retry(|| self.ports.cluster.load_onion_key(lease_id)).await? {
            Some(k) => k,
            None => {
                let k = self.ports.onion.generate_key()?;
                self.retry(|| self.ports.cluster.store_onion_key(lease_id, &k)).await?;
                k
            }
        };
        let address = self.ports.onion.launch(lease_id, &key, endpoint).await?;
        if let Ok(mut o) = self.onions.lock() {
            o.insert(lease_id.to_string());
        }
        Ok(address)
    }

    // Step: return the money that bought nothing.
    async fn step_refunding(&self, rec: &mut SagaRecord) -> Flow {
        let (code, message) = rec.failure.clone().unwrap_or((ErrorCode::Internal, "failed".into()));
        let amount = rec.amount.unwrap_or(0);
        let Some(mint) = rec.mint_url.clone() else {
            return self.refuse(rec, code, message);
        };
        match self.retry(|| self.ports.payment.refund(&mint, amount, &rec.request_id)).await {
            Ok(token) => {
                info!(amount, "refund token minted");
                self.metrics.sats_refunded.fetch_add(amount, Ordering::Relaxed);
                let reply = Reply::Error {
                    request_id: rec.request_id.clone(),
                    code,
                    message: format!("{message}; the payment is refunded (minus mint fees) in refund_token"),
                    refund_token: Some(token),
                };
                self.finish_with(rec, reply)
            }
            Err(e) if e.is_transient() => Flow::Park,
            Err(e) => {
                warn!(error = %e, amount, "refund failed; operator attention needed");
                self.refuse(
                    rec,
                    code,
                    format!(
                        "{message}; the refund of {amount} sat failed ({}); contact the provider with request id {}",
                        e.message, rec.request_id
                    ),
                )
            }
        }
    }

    // Step: deliver the final reply.
    async fn step_replying(&self, rec: &mut SagaRecord) -> Flow {
        let Some(reply) = rec.reply.clone() else {
            rec.step = Step::Done;
            return Flow::Next;
        };
        match self.retry(|| self.ports.replies.send(&rec.route, &reply)).await {
            Ok(()) => {
                let outcome = match &reply {
                    Reply::Ok { .. } => "ok",
                    Reply::Extended { .. } => "extended",
                    Reply::Status { .. } => "status",
                    Reply::Error { code, .. } => code.as_str(),
                };
                self.metrics.outcome(outcome);
                let waited = if rec.received_at_ms > 0 {
                    now_millis().saturating_sub(rec.received_at_ms) as f64 / 1000.0
                } else {
                    now_secs().saturating_sub(rec.received_at) as f64
                };
                self.metrics.observe_reply_latency(waited);
                info!(outcome, "reply sent");
                rec.step = Step::Done;
                Flow::Next
            }
            Err(e) => {
                warn!(error = %e, "reply not delivered; will retry");
                Flow::Park
            }
        }
    }

    async fn answer_status(&self, rec: &mut SagaRecord, req: &StatusRequest) -> Flow {
        match self.find_owned_lease(rec, &req.lease).await {
            Err(flow) => flow,
            Ok(lease) => {
                let now = now_secs();
                let expires_at = lease.expires_at.unwrap_or(0);
                let active = expires_at > now && !lease.terminating;
                let reply = Reply::Status {
                    request_id: rec.request_id.clone(),
                    lease: LeaseStatus {
                        lease_id: lease.lease_id,
                        pod_name: lease.pod_name,
                        state: if active { "active" } else { "expired" }.into(),
                        expires_at,
                        seconds_remaining: expires_at.saturating_sub(now),
                    },
                };
                self.finish_with(rec, reply)
            }
        }
    }

    /// The requester's live lease named by id or pod name. Strangers learn nothing: they get the same
    /// answer as for a lease that does not exist.
    async fn find_owned_lease(&self, rec: &mut SagaRecord, name: &str) -> Result<ClusterLease, Flow> {
        let id = name.strip_prefix("ssh-pod-").unwrap_or(name);
        match self.lease_by_id(id).await {
            Err(e) if e.is_transient() => Err(Flow::Park),
            Err(e) => Err(self.refuse(rec, ErrorCode::Unavailable, e.message)),
            Ok(Some(l)) if l.requester.as_deref() == Some(rec.route.requester.as_str()) => {
                if matches!(rec.ask, Ask::TopUp(_)) && (l.terminating || l.expires_at.is_none_or(|e| e <= now_secs())) {
                    return Err(self.refuse(rec, ErrorCode::LeaseExpired, "the lease has expired; start a new one"));
                }
                Ok(l)
            }
            Ok(Some(_)) => {
                info!(lease_id = id, "request from someone who does not own the lease refused");
                Err(self.refuse(rec, ErrorCode::LeaseNotFound, "no such lease of yours"))
            }
            Ok(None) => Err(self.refuse(rec, ErrorCode::LeaseNotFound, "no such lease of yours")),
        }
    }

    async fn lease_by_id(&self, id: &str) -> Result<Option<ClusterLease>, PortError> {
        self.retry(|| self.ports.cluster.get_lease(id)).await
    }

    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, PortError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Err(e) if e.is_transient() && attempt < self.settings.retry_attempts => {
                    tokio::time::sleep(self.settings.retry_delay).await;
                }
                other => return other,
            }
        }
    }

    /// One pass of the reconciler: end expired leases, remove orphans, bring back onion services of live
    /// leases (after a restart). Reads only what the cluster holds.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), PortError> {
        let leases = self.ports.cluster.list_leases().await?;
        let now = now_secs();
        let busy: HashSet<String> = self.provisioning.lock().map(|p| p.clone()).unwrap_or_default();
        let mut live = 0u64;
        let mut restore = Vec::new();
        // Expiries first, all of them: restoring onion services below can take a while (each launch waits
        // for its descriptor) and must never hold up ending a lease.
        for lease in &leases {
            if busy.contains(&lease.lease_id) {
                continue;
            }
            let expired = match lease.expires_at {
                Some(e) => e <= now,
                None => true, // no valid lease annotation: not ours to keep running
            };
            if expired || lease.terminating {
                if !lease.terminating {
                    info!(lease_id = %lease.lease_id, "lease ended; deleting its objects");
                }
                self.stop_onion(&lease.lease_id).await;
                if let Err(e) = self.ports.cluster.delete_lease(&lease.lease_id, lease.version.as_deref()).await {
                    warn!(lease_id = %lease.lease_id, error = %e, "could not delete expired lease");
                }
                continue;
            }
            live += 1;
            if let Some(endpoint) = lease.ssh_endpoint {
                restore.push((lease.lease_id.clone(), endpoint));
            }
        }
        // Onion services of leases that are gone from the cluster (deleted by hand, or ended by someone else).
        let present: HashSet<&str> = leases.iter().map(|l| l.lease_id.as_str()).collect();
        let vanished: Vec<String> = self
            .onions
            .lock()
            .map(|o| o.iter().filter(|id| !present.contains(id.as_str()) && !busy.contains(*id)).cloned().collect())
            .unwrap_or_default();
        for lease_id in vanished {
            info!(lease_id = %lease_id, "lease no longer in the cluster; stopping its onion service");
            self.stop_onion(&lease_id).await;
        }
        // In the background, one pass at a time: a launch can wait for its descriptor up to the publish
        // timeout, and the next passes must still end leases on time meanwhile.
        if self.ports.onion.enabled() && !restore.is_empty() && !self.restoring.swap(true, Ordering::AcqRel) {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let svc = &this;
                // Idempotent: a running service returns its address at once. A few at a time, so one slow
                // publication does not delay the others by its whole timeout.
                use futures::StreamExt as _;
                futures::stream::iter(restore)
                    .for_each_concurrent(RESTORE_CONCURRENCY, |(lease_id, endpoint)| async move {
                        if let Err(e) = svc.launch_onion(&lease_id, endpoint).await {
                            svc.metrics.onion_failed.fetch_add(1, Ordering::Relaxed);
                            warn!(lease_id = %lease_id, error = %e, "onion service not restored");
                        }
                    })
                    .await;
                svc.restoring.store(false, Ordering::Release);
            });
        }
        self.metrics.live_leases.store(live, Ordering::Relaxed);
        self.metrics.onion_running.store(self.ports.onion.running() as u64, Ordering::Relaxed);
        self.metrics.onion_relaunches.store(self.ports.onion.relaunches(), Ordering::Relaxed);
        for orphan in self.ports.cluster.list_orphans().await? {
            if busy.contains(&orphan.lease_id) {
                continue;
            }
            info!(kind = %orphan.kind, name = %orphan.name, "deleting orphan");
            self.stop_onion(&orphan.lease_id).await;
            if let Err(e) = self.ports.cluster.delete_orphan(&orphan).await {
                warn!(name = %orphan.name, error = %e, "could not delete orphan");
            }
        }
        Ok(())
    }
}

fn new_record(route: super::ports::ReplyRoute, ask: Ask) -> SagaRecord {
    let ms = now_millis();
    SagaRecord { received_at_ms: ms, ..SagaRecord::new(route, ask, ms / 1000) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "_svc", "a-b_c9"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["", "Alice", "9lives", "root", "a b", "a;rm -rf", "x".repeat(33).as_str()] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn public_keys() {
        assert!(valid_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 alice@host"));
        assert!(!valid_public_key("ssh-ed25519"));
        assert!(!valid_public_key("ssh-ed25519 AAAA\nssh-rsa AAAA"));
        assert!(!valid_public_key("garbage !!!"));
    }

    #[test]
    fn pricing_is_exact_at_the_rate() {
        assert_eq!(seconds_for(100, 100), 3600);
        assert_eq!(seconds_for(1, 100), 36);
        assert_eq!(price_of(60, 100), 2);
        assert_eq!(price_of(3600, 100), 100);
    }

    #[test]
    fn lease_ids_are_stable_keyed_and_dns_safe() {
        let key = lease_id_key(&[1; 32]);
        let a = lease_id_for(&key, "abcdef");
        assert_eq!(a, lease_id_for(&key, "abcdef"));
        // 128 bits, and not a function of the (public) request id alone.
        assert_eq!(a.len(), 32);
        assert_ne!(a, lease_id_for(&lease_id_key(&[2; 32]), "abcdef"));
        assert_ne!(a, hex::encode(&Sha256::digest(b"abcdef")[..16]));
        assert!(crate::config::is_dns_label(&pod_name(&a)));
        assert!(service_name(&a).len() <= 63);
    }

    #[test]
    fn passwords_are_long_and_random() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
    }
}
