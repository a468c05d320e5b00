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

use crate::lease::admission::{self, Admission};
use crate::lease::journal::{Ask, Journal, SagaRecord, Step, EXPIRY_HOLDER};
use crate::lease::ports::{
    AppliedTopUp, ClusterLease, ClusterPort, ExpiryUpdate, FailureKind, OnionPort, PaymentPort, PodPlan, PortError,
    ReplyPort, ReplyRoute, ReplyVia, SshProbePort,
};
use crate::lease::Incoming;

mod end;
mod intake;
mod notice;
mod pool;
mod provision;
mod reconcile;
mod redeem;
mod reply;
mod topup;
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
    /// Seconds before a lease's end at which its owner is told (e.g. 600 and 60).
    pub notice_thresholds: Vec<u64>,
    /// Onion services kept published ahead of demand (see `pool.rs`).
    pub onion_pool: usize,
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
            notice_thresholds: c.expiry_notices.clone(),
            onion_pool: if c.enable_tor { c.onion_pool } else { 0 },
        }
    }
}

impl LeaseSettings {
    /// The provider's identity: its lease-id key and label, both from its secret/public key.
    pub fn with_provider(mut self, provider_secret: &[u8; 32], provider_pubkey_hex: &str) -> Self {
        self.lease_id_key = lease_id_key(provider_secret);
        self.provider_id = crate::lease::ports::provider_id(provider_pubkey_hex);
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

/// Onion services the reconciler restores at once. Restores publish through the onion adapter's
/// background permits (`OnionPort::restore`), which leave some free for new leases whatever this is, so it
/// only needs to keep those permits busy while the next keys are read from their Secrets.
const RESTORE_CONCURRENCY: usize = 32;
/// How often the reconciler looks for orphaned objects (each look lists Services, Secrets and pods).
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(60);
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
    /// Onion services published ahead of demand.
    pool: pool::Pool,
    /// When the reconciler last looked for orphans.
    last_orphan_sweep: Mutex<Option<Instant>>,
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
            pool: pool::Pool::default(),
            last_orphan_sweep: Mutex::new(None),
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

    /// The canonical form of an admitted image reference.
    fn canonical_image(&self, image: &str) -> Option<String> {
        crate::lease::image::admitted(image, &self.settings.allowed_images)
    }

    /// The rate a lease was paid at: its pod's annotation, or for pods that predate it the tier's rate.
    fn rate_paid(&self, lease: &ClusterLease) -> u64 {
        lease.rate_sats_per_hour.or_else(|| self.tier(lease.tier.as_deref()).map(|t| t.sats_per_hour)).unwrap_or(0)
    }

    fn tier(&self, name: Option<&str>) -> Option<&Tier> {
        match name {
            None => self.settings.tiers.first(),
            Some(n) => self.settings.tiers.iter().find(|t| t.name == n),
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
        // Recorded once known (a create learns it after the redeem); an empty value would be printed too.
        let span = info_span!("lease", request_id = %rec.request_id, lease_id = tracing::field::Empty);
        if let Some(id) = rec.lease_id.as_deref() {
            span.record("lease_id", id);
        }
        let out = self.drive_steps(&mut rec).instrument(span).await;
        if let Ok(mut d) = self.driving.lock() {
            d.remove(&rec.request_id);
        }
        out
    }

    async fn drive_steps(&self, rec: &mut SagaRecord) -> Option<Reply> {
        // A saga that starts in Redeeming was cut there (crash, or parked): a swap may have been sent.
        let resumed_in_redeem = rec.step == Step::Redeeming;
        debug!(step = ?rec.step, "saga driven");
        loop {
            let flow = match rec.step {
                Step::Received => self.step_received(rec).await,
                Step::Redeeming => self.step_redeeming(rec, resumed_in_redeem).await,
                Step::Redeemed => self.step_redeemed(rec).await,
                Step::Provisioning => self.step_provisioning(rec).await,
                Step::Ending => self.step_ending(rec).await,
                Step::ReturningExcess => self.step_returning_excess(rec).await,
                Step::Refunding => self.step_refunding(rec).await,
                Step::Replying => self.step_replying(rec).await,
                Step::Done => return rec.reply.clone(),
            };
            // Delivered: the record keeps what happened, not the password, address or tokens. In-band
            // (HTTP) records keep them for a while, for a retry with the same Idempotency-Key; the
            // journal's pruning clears them later.
            let stored = if rec.step == Step::Done && rec.route.via != crate::lease::ports::ReplyVia::InBand {
                rec.without_secrets()
            } else {
                rec.clone()
            };
            let write = Instant::now();
            if let Err(e) = self.ports.journal.put(&stored) {
                // Without the journal a crash could lose track of money: stop here; resume retries.
                warn!(error = %e, step = ?rec.step, "journal write failed; saga parked");
                return None;
            }
            debug!(step = ?rec.step, journal_ms = write.elapsed().as_millis() as u64, "saga step persisted");
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
            Ask::Invalid | Ask::Notice { .. } => Flow::Next, // reply already set when the record was made
            Ask::Status(req) => self.answer_status(rec, &req).await,
            Ask::End { lease_id, reason } => self.decide_end(rec, &lease_id, &reason).await,
            Ask::Release(req) => self.decide_release(rec, &req.lease).await,
            Ask::Create(req) => match self.validate_create(&req) {
                Err((code, msg)) => self.refuse(rec, code, msg),
                Ok(()) if req.pod_image.as_deref().is_some_and(|i| Some(i) != self.canonical_image(i).as_deref()) => {
                    // The pod runs exactly the reference that was checked, in its canonical form.
                    if let Ask::Create(r) = &mut rec.ask {
                        r.pod_image = req.pod_image.as_deref().and_then(|i| self.canonical_image(i));
                    }
                    Flow::Next
                }
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
}

fn new_record(route: crate::lease::ports::ReplyRoute, ask: Ask) -> SagaRecord {
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
