//! Saga tests with in-memory fakes of every port. The same paths run against the real peers in tests/.

mod attacks;
mod end;
mod pool;
mod races;
mod requests;
mod resume;
mod topup;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::journal::{Journal, SagaRecord, Step};
use super::ports::*;
use super::service::{now_secs, LeaseService, LeaseSettings, Ports};
use super::Incoming;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, LeaseRequest, Reply, StatusRequest, Tier, TopUpRequest};

const MINT: &str = "http://mint.test";

/// Tokens are `tok:<mint>:<amount>:<nonce>`.
#[derive(Default)]
struct FakePayment {
    spent: Mutex<HashSet<String>>,
    redeems: Mutex<u32>,
    refunds: Mutex<Vec<u64>>,
    refunded_ids: Mutex<HashSet<String>>,
    /// Tokens this wallet swapped (as its database would show).
    received: Mutex<HashMap<String, u64>>,
    /// Outcomes of the next redeems, before the normal behaviour.
    script: Mutex<std::collections::VecDeque<Scripted>>,
}

/// A scripted redeem: the mint's answer, and whether the swap happened at the mint all the same.
struct Scripted {
    swapped: bool,
    answer: PortError,
}

#[async_trait]
impl PaymentPort for FakePayment {
    fn inspect(&self, token: &str) -> PortResult<TokenInfo> {
        let parts: Vec<&str> = token.split(':').collect();
        if parts.len() != 5 || parts[0] != "tok" {
            return Err(PortError::rejected(ErrorCode::InvalidToken, "not a token"));
        }
        let mint = format!("{}://{}", parts[1], parts[2]);
        if mint != MINT {
            return Err(PortError::rejected(ErrorCode::MintNotAllowed, "mint not allowed"));
        }
        let amount = parts[3].parse().map_err(|_| PortError::rejected(ErrorCode::InvalidToken, "amount"))?;
        Ok(TokenInfo { mint_url: mint, unit: "sat".into(), amount, p2pk_locked: false, digest: token.into() })
    }
    async fn vet(&self, token: &str) -> PortResult<()> {
        // Tokens whose nonce says so are forged: the mint's keys would not verify them.
        self.inspect(token)?;
        if token.ends_with(":forged") {
            return Err(PortError::rejected(ErrorCode::InvalidToken, "a proof's DLEQ proof does not verify"));
        }
        Ok(())
    }
    async fn redeem(&self, token: &str) -> PortResult<u64> {
        *self.redeems.lock().unwrap() += 1;
        let scripted = self.script.lock().unwrap().pop_front();
        if let Some(Scripted { swapped, answer }) = scripted {
            if swapped && self.spent.lock().unwrap().insert(token.to_string()) {
                let amount = self.inspect(token)?.amount;
                self.received.lock().unwrap().insert(token.to_string(), amount);
            }
            return Err(answer);
        }
        if !self.spent.lock().unwrap().insert(token.to_string()) {
            return Err(PortError::rejected(ErrorCode::TokenSpent, "spent"));
        }
        let amount = self.inspect(token)?.amount;
        self.received.lock().unwrap().insert(token.to_string(), amount);
        Ok(amount)
    }
    async fn token_state(&self, token: &str) -> PortResult<TokenState> {
        Ok(if self.spent.lock().unwrap().contains(token) { TokenState::Spent } else { TokenState::Unspent })
    }
    async fn received_amount(&self, token: &str) -> PortResult<Option<u64>> {
        Ok(self.received.lock().unwrap().get(token).copied())
    }
    async fn refund(&self, _mint: &str, amount: u64, refund_id: &str) -> PortResult<String> {
        // Once per id, as the cdk adapter does.
        if self.refunded_ids.lock().unwrap().insert(refund_id.to_string()) {
            self.refunds.lock().unwrap().push(amount);
        }
        Ok(format!("refund:{amount}"))
    }
    async fn balance(&self) -> PortResult<u64> {
        Ok(0)
    }
}

#[derive(Default)]
struct FakeCluster {
    leases: Mutex<BTreeMap<String, PodPlan>>,
    orphans: Mutex<Vec<OrphanObject>>,
    keys: Mutex<HashMap<String, Vec<u8>>>,
    fail_create: Mutex<bool>,
    creates: Mutex<u32>,
    topups: Mutex<HashMap<String, Vec<AppliedTopUp>>>,
    /// resourceVersion stand-in: bumped by every expiry write.
    versions: Mutex<HashMap<String, u64>>,
    /// Simulates a write (a top-up) landing right after each list: every version moves on.
    write_after_list: Mutex<bool>,
    /// What the namespace's quotas leave room for (None: unbounded).
    room: Mutex<Option<u64>>,
    /// Leases whose pod failed, with the reason.
    failed: Mutex<HashMap<String, String>>,
    /// Pool keys by slot.
    pool: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Reads of onion keys (API calls, with the real adapter).
    key_loads: Mutex<u32>,
}

impl FakeCluster {
    fn list_now(&self) -> Vec<ClusterLease> {
        self.leases
            .lock()
            .unwrap()
            .values()
            .map(|p| ClusterLease {
                lease_id: p.lease_id.clone(),
                pod_name: p.pod_name.clone(),
                expires_at: Some(p.expires_at),
                requester: Some(p.requester.clone()),
                tier: Some(p.tier.name.clone()),
                ssh_endpoint: Some("127.0.0.1:2222".parse().unwrap()),
                terminating: false,
                topups: self.topups.lock().unwrap().get(&p.lease_id).cloned().unwrap_or_default(),
                version: Some(self.versions.lock().unwrap().get(&p.lease_id).copied().unwrap_or(0).to_string()),
                request_id: Some(p.request_id.clone()),
                mint_url: Some(p.mint_url.clone()),
                rate_sats_per_hour: Some(p.rate_sats_per_hour),
                reply_via: Some(p.reply_via),
                failed: self.failed.lock().unwrap().get(&p.lease_id).cloned(),
                created_at: Some(0),
            })
            .collect()
    }
}

#[async_trait]
impl ClusterPort for FakeCluster {
    async fn ensure_lease_objects(&self, plan: &PodPlan) -> PortResult<()> {
        *self.creates.lock().unwrap() += 1;
        if *self.fail_create.lock().unwrap() {
            return Err(PortError::rejected(ErrorCode::ProvisioningFailed, "exceeded quota"));
        }
        let mut leases = self.leases.lock().unwrap();
        let existing = leases.entry(plan.lease_id.clone()).or_insert_with(|| plan.clone());
        // As the k8s adapter: an object of another request is never adopted.
        if existing.request_id != plan.request_id || existing.provider != plan.provider {
            return Err(PortError::permanent("already exists and was not made by this request"));
        }
        Ok(())
    }
    async fn wait_running(&self, lease_id: &str, _t: Duration) -> PortResult<SocketAddr> {
        if self.leases.lock().unwrap().contains_key(lease_id) {
            Ok("127.0.0.1:2222".parse().unwrap())
        } else {
            Err(PortError::permanent("gone"))
        }
    }
    async fn set_expiry(&self, lease_id: &str, update: &ExpiryUpdate) -> PortResult<()> {
        // Like a real API call, let other sagas run in between (concurrent top-ups interleave).
        tokio::task::yield_now().await;
        let mut leases = self.leases.lock().unwrap();
        let Some(p) = leases.get_mut(lease_id) else { return Err(PortError::permanent("no pod")) };
        let mut versions = self.versions.lock().unwrap();
        let version = versions.entry(lease_id.to_string()).or_default();
        if update.if_version.as_ref().is_some_and(|v| *v != version.to_string()) {
            return Err(PortError::transient("409 Conflict"));
        }
        *version += 1;
        p.expires_at = update.expires_at;
        self.topups.lock().unwrap().insert(lease_id.to_string(), update.topups.clone());
        Ok(())
    }
    async fn delete_lease(&self, lease_id: &str, if_version: Option<&str>) -> PortResult<()> {
        // A real API call: concurrent sagas interleave here (and a missing pod is no error, as listing
        // by label finds nothing to delete).
        tokio::task::yield_now().await;
        let version = self.versions.lock().unwrap().get(lease_id).copied().unwrap_or(0).to_string();
        if if_version.is_some_and(|v| v != version) {
            return Err(PortError::transient("409 Conflict: precondition failed"));
        }
        self.leases.lock().unwrap().remove(lease_id);
        self.keys.lock().unwrap().remove(lease_id);
        Ok(())
    }
    async fn delete_created(&self, lease_id: &str, request_id: &str) -> PortResult<()> {
        let mut leases = self.leases.lock().unwrap();
        if leases.get(lease_id).is_some_and(|p| p.request_id == request_id) {
            leases.remove(lease_id);
            self.keys.lock().unwrap().remove(lease_id);
        }
        Ok(())
    }
    async fn count_leases_of(&self, requester: &str) -> PortResult<usize> {
        Ok(self.leases.lock().unwrap().values().filter(|p| p.requester == requester).count())
    }
    async fn room_for(&self, _tier: &Tier) -> PortResult<Option<u64>> {
        Ok(*self.room.lock().unwrap())
    }
    async fn get_lease(&self, lease_id: &str) -> PortResult<Option<ClusterLease>> {
        tokio::task::yield_now().await;
        Ok(self.list_now().into_iter().find(|l| l.lease_id == lease_id))
    }
    async fn list_leases(&self) -> PortResult<Vec<ClusterLease>> {
        tokio::task::yield_now().await;
        let listed = self.list_now();
        if *self.write_after_list.lock().unwrap() {
            for v in self.versions.lock().unwrap().values_mut() {
                *v += 1;
            }
            for id in self.leases.lock().unwrap().keys() {
                self.versions.lock().unwrap().entry(id.clone()).or_insert(1);
            }
        }
        Ok(listed)
    }

    async fn list_orphans(&self) -> PortResult<Vec<OrphanObject>> {
        Ok(self.orphans.lock().unwrap().clone())
    }
    async fn delete_orphan(&self, orphan: &OrphanObject) -> PortResult<()> {
        self.orphans.lock().unwrap().retain(|o| o != orphan);
        Ok(())
    }
    async fn load_onion_key(&self, lease_id: &str) -> PortResult<Option<Vec<u8>>> {
        *self.key_loads.lock().unwrap() += 1;
        Ok(self.keys.lock().unwrap().get(lease_id).cloned())
    }
    async fn store_pool_key(&self, slot: &str, key: &[u8]) -> PortResult<()> {
        self.pool.lock().unwrap().insert(slot.into(), key.to_vec());
        Ok(())
    }
    async fn list_pool_keys(&self) -> PortResult<Vec<PoolKey>> {
        let pool = self.pool.lock().unwrap();
        Ok(pool.iter().map(|(slot, key)| PoolKey { slot: slot.clone(), key: key.clone() }).collect())
    }
    async fn take_pool_key(&self, slot: &str) -> PortResult<Option<Vec<u8>>> {
        tokio::task::yield_now().await;
        Ok(self.pool.lock().unwrap().remove(slot))
    }
    async fn store_onion_key(&self, lease_id: &str, key: &[u8]) -> PortResult<()> {
        self.keys.lock().unwrap().insert(lease_id.into(), key.to_vec());
        Ok(())
    }
    async fn ping(&self) -> PortResult<()> {
        Ok(())
    }
}

struct FakeProbe;
#[async_trait]
impl SshProbePort for FakeProbe {
    async fn probe(&self, _e: SocketAddr) -> PortResult<HostKey> {
        Ok(HostKey { fingerprint: "SHA256:abc".into(), public_key: "ssh-ed25519 AAAA".into() })
    }
}

#[derive(Default)]
struct FakeOnion {
    /// Running services (lease ids and pool slots) by key.
    running: Mutex<HashMap<String, Vec<u8>>>,
    /// Keys made so far (each key differs: its first bytes count them).
    made: Mutex<u32>,
    /// Every publication: (lease id or slot, address).
    published: Mutex<Vec<(String, String)>>,
    /// Services handed from a slot to a lease: (slot, lease id).
    adopted: Mutex<Vec<(String, String)>>,
    /// Handovers fail (the slot's service vanished).
    fail_adopt: Mutex<bool>,
    /// Leases whose service came back through `restore` (behind new leases), in order.
    restored: Mutex<Vec<String>>,
}

fn fake_address(key: &[u8]) -> String {
    format!("{}.onion", hex::encode(&key[..4]))
}
#[async_trait]
impl OnionPort for FakeOnion {
    fn enabled(&self) -> bool {
        true
    }
    fn generate_key(&self) -> PortResult<Vec<u8>> {
        let mut made = self.made.lock().unwrap();
        *made += 1;
        let mut key = vec![7; 64];
        key[..4].copy_from_slice(&made.to_be_bytes());
        Ok(key)
    }
    async fn launch(&self, lease_id: &str, key: &[u8], _t: SocketAddr) -> PortResult<String> {
        self.running.lock().unwrap().insert(lease_id.into(), key.to_vec());
        self.published.lock().unwrap().push((lease_id.into(), fake_address(key)));
        Ok(fake_address(key))
    }
    async fn restore(&self, lease_id: &str, key: &[u8], t: SocketAddr) -> PortResult<String> {
        self.restored.lock().unwrap().push(lease_id.into());
        self.launch(lease_id, key, t).await
    }
    async fn launch_idle(&self, slot: &str, key: &[u8]) -> PortResult<String> {
        tokio::task::yield_now().await;
        self.running.lock().unwrap().insert(slot.into(), key.to_vec());
        self.published.lock().unwrap().push((slot.into(), fake_address(key)));
        Ok(fake_address(key))
    }
    async fn adopt(&self, slot: &str, lease_id: &str, _t: SocketAddr) -> PortResult<String> {
        if *self.fail_adopt.lock().unwrap() {
            return Err(PortError::permanent("the pool slot runs no onion service"));
        }
        let mut running = self.running.lock().unwrap();
        if running.contains_key(lease_id) {
            return Err(PortError::permanent("the lease already has an onion service"));
        }
        let key = running.remove(slot).ok_or_else(|| PortError::permanent("the pool slot runs no onion service"))?;
        let address = fake_address(&key);
        running.insert(lease_id.into(), key);
        self.adopted.lock().unwrap().push((slot.into(), lease_id.into()));
        Ok(address)
    }
    async fn stop(&self, lease_id: &str) {
        self.running.lock().unwrap().remove(lease_id);
    }
    fn serves(&self, lease_id: &str, _target: SocketAddr) -> bool {
        self.running.lock().unwrap().contains_key(lease_id)
    }
    fn ready(&self) -> bool {
        true
    }
    fn running(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

#[derive(Default)]
struct FakeReplies {
    sent: Mutex<Vec<(ReplyRoute, Reply)>>,
    /// Sends that fail (relays unreachable) before one succeeds.
    fail_next: Mutex<u32>,
}
#[async_trait]
impl ReplyPort for FakeReplies {
    async fn send(&self, route: &ReplyRoute, reply: &Reply) -> PortResult<()> {
        let mut f = self.fail_next.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return Err(PortError::transient("no relay accepted the reply"));
        }
        self.sent.lock().unwrap().push((route.clone(), reply.clone()));
        Ok(())
    }
}

#[derive(Default)]
struct MemJournal {
    records: Mutex<BTreeMap<String, SagaRecord>>,
    tokens: Mutex<HashMap<String, String>>,
    ends: Mutex<HashMap<String, String>>,
}
impl Journal for MemJournal {
    fn insert_new(&self, r: &SagaRecord) -> PortResult<bool> {
        let mut m = self.records.lock().unwrap();
        if m.contains_key(&r.request_id) {
            return Ok(false);
        }
        m.insert(r.request_id.clone(), r.clone());
        Ok(true)
    }
    fn put(&self, r: &SagaRecord) -> PortResult<()> {
        self.records.lock().unwrap().insert(r.request_id.clone(), r.clone());
        Ok(())
    }
    fn get(&self, id: &str) -> PortResult<Option<SagaRecord>> {
        Ok(self.records.lock().unwrap().get(id).cloned())
    }
    fn unfinished(&self) -> PortResult<Vec<SagaRecord>> {
        Ok(self.records.lock().unwrap().values().filter(|r| r.step != Step::Done).cloned().collect())
    }
    fn claim_token(&self, digest: &str, request_id: &str) -> PortResult<Option<String>> {
        let mut t = self.tokens.lock().unwrap();
        match t.get(digest) {
            Some(owner) if owner != request_id => Ok(Some(owner.clone())),
            _ => {
                t.insert(digest.into(), request_id.into());
                Ok(None)
            }
        }
    }
    fn claim_end(&self, lease_id: &str, holder: &str, _now: u64) -> PortResult<Option<String>> {
        let mut e = self.ends.lock().unwrap();
        let h = e.entry(lease_id.into()).or_insert_with(|| holder.into());
        Ok(Some(h.clone()).filter(|h| h != holder))
    }
    fn release_end(&self, lease_id: &str, holder: &str) -> PortResult<()> {
        let mut e = self.ends.lock().unwrap();
        if e.get(lease_id).is_some_and(|h| h == holder) {
            e.remove(lease_id);
        }
        Ok(())
    }
    fn prune(&self, _delete_before: u64, _redact_before: u64, _max: usize) -> PortResult<super::journal::Pruned> {
        Ok(Default::default())
    }
    fn release_token(&self, digest: &str, request_id: &str) -> PortResult<()> {
        let mut t = self.tokens.lock().unwrap();
        if t.get(digest).is_some_and(|h| h == request_id) {
            t.remove(digest);
        }
        Ok(())
    }
}

struct World {
    svc: Arc<LeaseService>,
    payment: Arc<FakePayment>,
    cluster: Arc<FakeCluster>,
    onion: Arc<FakeOnion>,
    replies: Arc<FakeReplies>,
    journal: Arc<MemJournal>,
}

fn world() -> World {
    world_with(|_| {})
}

fn world_with(tune: impl FnOnce(&mut LeaseSettings)) -> World {
    let payment = Arc::new(FakePayment::default());
    let cluster = Arc::new(FakeCluster::default());
    let onion = Arc::new(FakeOnion::default());
    let replies = Arc::new(FakeReplies::default());
    let journal = Arc::new(MemJournal::default());
    let mut settings = LeaseSettings {
        namespace: "user-workloads".into(),
        ssh_port: 2222,
        default_image: "img:ok".into(),
        image_pull_policy: "IfNotPresent".into(),
        allowed_images: vec!["img:ok".into()],
        tiers: vec![Tier::new("basic", "500m", "512Mi", 100)],
        min_duration_secs: 60,
        max_duration_secs: 86_400,
        ready_timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(1),
        retry_attempts: 3,
        failpoint: None,
        lease_id_key: [9; 32],
        provider_id: "0123abcd".into(),
        max_leases_per_requester: 3,
        notice_thresholds: vec![],
        onion_pool: 0,
    };
    tune(&mut settings);
    let ports = Ports {
        payment: payment.clone(),
        cluster: cluster.clone(),
        probe: Arc::new(FakeProbe),
        onion: onion.clone(),
        replies: replies.clone(),
        journal: journal.clone(),
    };
    World {
        svc: Arc::new(LeaseService::new(settings, ports, Arc::new(Metrics::default()))),
        payment,
        cluster,
        onion,
        replies,
        journal,
    }
}

/// The same world after the provider restarted: cluster, wallet, journal and relays kept; a new onion
/// client (nothing published) and a new lease service.
fn restarted(w: &World, tune: impl FnOnce(&mut LeaseSettings)) -> World {
    let mut settings = w.svc.settings().clone();
    tune(&mut settings);
    let onion = Arc::new(FakeOnion::default());
    *onion.made.lock().unwrap() = 1000;
    let ports = Ports {
        payment: w.payment.clone(),
        cluster: w.cluster.clone(),
        probe: Arc::new(FakeProbe),
        onion: onion.clone(),
        replies: w.replies.clone(),
        journal: w.journal.clone(),
    };
    World {
        svc: Arc::new(LeaseService::new(settings, ports, Arc::new(Metrics::default()))),
        payment: w.payment.clone(),
        cluster: w.cluster.clone(),
        onion,
        replies: w.replies.clone(),
        journal: w.journal.clone(),
    }
}

fn route(id: &str, who: &str) -> ReplyRoute {
    ReplyRoute { request_id: id.into(), requester: who.into(), via: ReplyVia::Nip44 }
}

fn create(id: &str, token: &str) -> Incoming {
    Incoming::Create {
        route: route(id, "alice-pk"),
        request: LeaseRequest {
            cashu_token: token.into(),
            ssh_username: Some("alice".into()),
            pod_image: None,
            ssh_public_key: None,
            tier: None,
        },
    }
}

fn error_code(r: &Reply) -> Option<ErrorCode> {
    match r {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn top_up(id: &str, lease_id: &str, token: &str) -> Incoming {
    Incoming::TopUp {
        route: route(id, "alice-pk"),
        request: TopUpRequest { cashu_token: token.into(), lease: lease_id.into() },
    }
}

/// What a crash during the swap leaves: the record in Redeeming, still holding the token.
fn redeeming_record(id: &str, token: &str) -> SagaRecord {
    let ask = super::journal::Ask::Create(LeaseRequest {
        cashu_token: token.into(),
        ssh_username: Some("alice".into()),
        pod_image: None,
        ssh_public_key: None,
        tier: None,
    });
    SagaRecord {
        step: Step::Redeeming,
        mint_url: Some(MINT.into()),
        token_digest: Some(token.into()),
        ..SagaRecord::new(route(id, "alice-pk"), ask, now_secs())
    }
}

async fn wait_done(w: &World, id: &str) -> SagaRecord {
    for _ in 0..200 {
        if let Some(rec) = w.journal.get(id).unwrap().filter(|r| r.step == Step::Done) {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("saga {id} not done: {:?}", w.journal.get(id).unwrap().map(|r| r.step));
}

fn release(id: &str, lease_id: &str, who: &str) -> Incoming {
    Incoming::Release { route: route(id, who), request: crate::protocol::ReleaseRequest { lease: lease_id.into() } }
}

/// What a release decided and then cut leaves in the journal: its record in Ending, `minutes` unused
/// worth `amount`, judged on the pod at `version`.
fn release_in_ending(id: &str, lease_id: &str, minutes: u64, amount: u64, version: Option<&str>) -> SagaRecord {
    let mut rec = SagaRecord::new(
        route(id, "alice-pk"),
        super::journal::Ask::Release(crate::protocol::ReleaseRequest { lease: lease_id.into() }),
        now_secs(),
    );
    rec.step = Step::Ending;
    rec.lease_id = Some(lease_id.into());
    rec.amount = Some(amount);
    rec.unused_minutes = Some(minutes);
    rec.mint_url = Some(MINT.into());
    rec.pod_version = version.map(str::to_string);
    rec
}
