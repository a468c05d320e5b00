//! Saga tests with in-memory fakes of every port. The same paths run against the real peers in tests/.

mod pool;

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

#[tokio::test]
async fn paid_request_yields_a_lease_at_the_rate() {
    let w = world();
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let Reply::Ok { access, amount_sats, duration_seconds, .. } = reply else { panic!("{reply:?}") };
    assert_eq!(amount_sats, 100);
    assert!((3598..=3600).contains(&duration_seconds));
    assert!(access.ssh_password.as_ref().is_some_and(|p| p.len() >= 20));
    assert!(access.onion_address.is_some());
    assert!(access.port_forward_command.contains("port-forward svc/ssh-pod-"));
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
    assert_eq!(w.replies.sent.lock().unwrap().len(), 1);
    assert_eq!(w.journal.get("e1").unwrap().unwrap().step, Step::Done);
    // The token is not kept once redeemed.
    assert_eq!(w.journal.get("e1").unwrap().unwrap().ask.token(), "");
}

#[tokio::test]
async fn the_same_event_twice_makes_one_lease_and_one_reply() {
    let w = world();
    let (a, b) = tokio::join!(
        w.svc.handle(create("e1", "tok:http:mint.test:100:a")),
        w.svc.handle(create("e1", "tok:http:mint.test:100:a"))
    );
    assert!(a.is_some() || b.is_some());
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1);
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
    assert_eq!(w.replies.sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn one_token_in_two_requests_buys_one_lease() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let second = w.svc.handle(create("e2", "tok:http:mint.test:100:a")).await.unwrap();
    assert_eq!(error_code(&second), Some(ErrorCode::TokenSpent));
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1);
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_before_any_redeem() {
    let w = world();
    let mut cases = vec![
        (create("m", "tok:http:evil.test:100:a"), ErrorCode::MintNotAllowed),
        (create("s", "tok:http:mint.test:1:a"), ErrorCode::AmountTooSmall),
        (create("g", "garbage"), ErrorCode::InvalidToken),
    ];
    let mut bad_image = create("i", "tok:http:mint.test:100:b");
    if let Incoming::Create { request, .. } = &mut bad_image {
        request.pod_image = Some("evil:latest".into());
    }
    cases.push((bad_image, ErrorCode::ImageNotAllowed));
    let mut bad_user = create("u", "tok:http:mint.test:100:c");
    if let Incoming::Create { request, .. } = &mut bad_user {
        request.ssh_username = Some("root".into());
    }
    cases.push((bad_user, ErrorCode::InvalidUsername));
    for (incoming, code) in cases {
        let reply = w.svc.handle(incoming).await.unwrap();
        assert_eq!(error_code(&reply), Some(code));
    }
    assert_eq!(*w.payment.redeems.lock().unwrap(), 0);
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert_eq!(*w.cluster.creates.lock().unwrap(), 0);
}

#[tokio::test]
async fn failure_after_redeem_refunds_and_leaves_nothing() {
    let w = world();
    *w.cluster.fail_create.lock().unwrap() = true;
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let Reply::Error { code, refund_token, .. } = reply else { panic!() };
    assert_eq!(code, ErrorCode::ProvisioningFailed);
    assert_eq!(refund_token.as_deref(), Some("refund:100"));
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![100]);
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert_eq!(w.onion.running(), 0);
}

#[tokio::test]
async fn only_the_owner_may_top_up_or_ask_status() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let lease_id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    let before = w.cluster.leases.lock().unwrap()[&lease_id].expires_at;

    let stranger = Incoming::TopUp {
        route: route("t1", "mallory-pk"),
        request: TopUpRequest { cashu_token: "tok:http:mint.test:100:b".into(), lease: lease_id.clone() },
    };
    assert_eq!(error_code(&w.svc.handle(stranger).await.unwrap()), Some(ErrorCode::LeaseNotFound));
    let peek =
        Incoming::Status { route: route("s1", "mallory-pk"), request: StatusRequest { lease: lease_id.clone() } };
    assert_eq!(error_code(&w.svc.handle(peek).await.unwrap()), Some(ErrorCode::LeaseNotFound));
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1, "a stranger's token is not redeemed");

    let owner = Incoming::TopUp {
        route: route("t2", "alice-pk"),
        request: TopUpRequest { cashu_token: "tok:http:mint.test:50:c".into(), lease: format!("ssh-pod-{lease_id}") },
    };
    let Reply::Extended { added_seconds, expires_at, .. } = w.svc.handle(owner).await.unwrap() else { panic!() };
    assert_eq!(added_seconds, 1800);
    assert_eq!(expires_at, before + 1800);
    let status = Incoming::Status { route: route("s2", "alice-pk"), request: StatusRequest { lease: lease_id } };
    let Reply::Status { lease, .. } = w.svc.handle(status).await.unwrap() else { panic!() };
    assert_eq!(lease.state, "active");
    assert!(lease.seconds_remaining > 3600);
}

fn top_up(id: &str, lease_id: &str, token: &str) -> Incoming {
    Incoming::TopUp {
        route: route(id, "alice-pk"),
        request: TopUpRequest { cashu_token: token.into(), lease: lease_id.into() },
    }
}

#[tokio::test]
async fn a_top_up_resumed_after_its_write_extends_once() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let lease_id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    let before = w.cluster.leases.lock().unwrap()[&lease_id].expires_at;
    let first = w.svc.handle(top_up("t1", &lease_id, "tok:http:mint.test:50:b")).await.unwrap();
    assert!(matches!(first, Reply::Extended { added_seconds: 1800, .. }), "{first:?}");

    // A crash after the pod was patched but before the journal moved on leaves the saga in Redeemed.
    let mut rec = w.journal.get("t1").unwrap().unwrap();
    rec.step = Step::Redeemed;
    rec.reply = None;
    w.journal.put(&rec).unwrap();
    w.svc.resume_unfinished().await;
    let rec = wait_done(&w, "t1").await;
    assert_eq!(rec.reply, Some(first), "the resumed top-up replies as the first run did");
    assert_eq!(w.cluster.leases.lock().unwrap()[&lease_id].expires_at, before + 1800, "extended once");
    assert_eq!(*w.payment.redeems.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_refund_resumed_after_minting_pays_once() {
    let w = world();
    *w.cluster.fail_create.lock().unwrap() = true;
    let first = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    // A crash after the refund token was minted but before the journal recorded it.
    let mut rec = w.journal.get("e1").unwrap().unwrap();
    rec.step = Step::Refunding;
    rec.reply = None;
    w.journal.put(&rec).unwrap();
    w.svc.resume_unfinished().await;
    wait_done(&w, "e1").await;
    let resent = w.replies.sent.lock().unwrap().last().map(|(_, r)| r.clone());
    assert_eq!(resent, Some(first), "the same refund token goes out again");
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![100], "paid once");
}

#[tokio::test]
async fn concurrent_top_ups_all_count() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let lease_id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    let before = w.cluster.leases.lock().unwrap()[&lease_id].expires_at;
    let (a, b, c) = tokio::join!(
        w.svc.handle(top_up("t1", &lease_id, "tok:http:mint.test:50:b")),
        w.svc.handle(top_up("t2", &lease_id, "tok:http:mint.test:50:c")),
        w.svc.handle(top_up("t3", &lease_id, "tok:http:mint.test:50:d")),
    );
    for r in [a, b, c] {
        assert!(matches!(r, Some(Reply::Extended { added_seconds: 1800, .. })), "{r:?}");
    }
    assert_eq!(w.cluster.leases.lock().unwrap()[&lease_id].expires_at, before + 3 * 1800);
    assert_eq!(w.cluster.topups.lock().unwrap()[&lease_id].len(), 3);
}

#[tokio::test]
async fn a_saga_interrupted_after_redeem_resumes_to_a_lease() {
    let w = world();
    // What a crash right after the redeem leaves in the journal.
    let ask = super::journal::Ask::Create(LeaseRequest {
        cashu_token: String::new(),
        ssh_username: Some("alice".into()),
        pod_image: None,
        ssh_public_key: None,
        tier: None,
    });
    let mut rec = SagaRecord {
        step: Step::Redeemed,
        mint_url: Some(MINT.into()),
        token_digest: Some("d".into()),
        amount: Some(100),
        ..SagaRecord::new(route("e9", "alice-pk"), ask, now_secs())
    };
    w.journal.put(&rec).unwrap();
    w.svc.resume_unfinished().await;
    for _ in 0..100 {
        rec = w.journal.get("e9").unwrap().unwrap();
        if rec.step == Step::Done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rec.step, Step::Done);
    assert!(matches!(rec.reply, Some(Reply::Ok { .. })));
    assert_eq!(*w.payment.redeems.lock().unwrap(), 0, "resuming never redeems again");
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn reconcile_ends_expired_leases_and_removes_orphans() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() - 1;
    w.cluster.orphans.lock().unwrap().push(OrphanObject {
        kind: "Service".into(),
        name: "ssh-pod-x-ssh".into(),
        lease_id: "x".into(),
    });
    w.svc.reconcile_once().await.unwrap();
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert!(w.cluster.orphans.lock().unwrap().is_empty());
    assert_eq!(w.onion.running(), 0);
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

#[tokio::test]
async fn a_crash_mid_swap_that_reached_the_mint_still_gives_the_lease() {
    let w = world();
    let token = "tok:http:mint.test:100:z";
    // The swap happened before the crash: the mint says spent, our wallet holds the ecash.
    w.payment.spent.lock().unwrap().insert(token.into());
    w.payment.received.lock().unwrap().insert(token.into(), 100);
    w.journal.put(&redeeming_record("e7", token)).unwrap();
    w.svc.resume_unfinished().await;
    let rec = wait_done(&w, "e7").await;
    assert!(matches!(rec.reply, Some(Reply::Ok { amount_sats: 100, .. })), "{:?}", rec.reply);
    assert_eq!(rec.ask.token(), "", "the token is dropped once the money is ours");
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
    assert!(w.payment.refunds.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_crash_mid_swap_that_lost_the_race_is_token_spent() {
    let w = world();
    let token = "tok:http:mint.test:100:y";
    // Someone else spent it: spent at the mint, nothing in our wallet.
    w.payment.spent.lock().unwrap().insert(token.into());
    w.journal.put(&redeeming_record("e8", token)).unwrap();
    w.svc.resume_unfinished().await;
    let rec = wait_done(&w, "e8").await;
    assert_eq!(rec.reply.as_ref().and_then(error_code), Some(ErrorCode::TokenSpent));
    assert!(w.cluster.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_delivered_reply_leaves_no_secret_in_the_journal() {
    let w = world();
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:2600:a")).await.unwrap();
    let Reply::Ok { access, .. } = &reply else { panic!("{reply:?}") };
    let password = access.ssh_password.clone().unwrap();
    let stored = serde_json::to_string(&w.journal.get("e1").unwrap().unwrap()).unwrap();
    for secret in [password.as_str(), "onion", "refund:"] {
        assert!(!stored.contains(secret), "{secret} kept in the journal: {stored}");
    }
}

#[tokio::test]
async fn a_reply_that_cannot_be_sent_is_parked_and_delivered_once_by_resume() {
    let w = world();
    // More failures than the saga's own retries: it must park in Replying.
    *w.replies.fail_next.lock().unwrap() = 4;
    let first = w.svc.handle(create("e5", "tok:http:mint.test:100:r")).await;
    assert!(first.is_none(), "not delivered yet");
    assert_eq!(w.journal.get("e5").unwrap().unwrap().step, Step::Replying);
    assert!(w.replies.sent.lock().unwrap().is_empty());
    // The periodic resume (app.rs, PAYGRESS_RESUME_INTERVAL_SECONDS) delivers it.
    w.svc.resume_unfinished().await;
    let rec = wait_done(&w, "e5").await;
    assert!(matches!(rec.reply, Some(Reply::Ok { .. })));
    w.svc.resume_unfinished().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(w.replies.sent.lock().unwrap().len(), 1, "exactly one reply");
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1);
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_saga_never_adopts_or_deletes_a_lease_it_did_not_create() {
    let w = world();
    w.svc.handle(create("victim-req", "tok:http:mint.test:100:v")).await;
    let (victim_id, victim) = {
        let leases = w.cluster.leases.lock().unwrap();
        let (id, plan) = leases.iter().next().unwrap();
        (id.clone(), plan.clone())
    };
    // Force what grinding could do with unkeyed ids: the attacker's request maps to the victim's lease id.
    let attacker_id = super::service::lease_id_for(&w.svc.settings().lease_id_key, "attacker-req");
    {
        let mut leases = w.cluster.leases.lock().unwrap();
        let plan = leases.remove(&victim_id).unwrap();
        leases.insert(attacker_id.clone(), PodPlan { lease_id: attacker_id.clone(), ..plan });
    }
    let mut attack = create("attacker-req", "tok:http:mint.test:100:x");
    if let Incoming::Create { route, .. } = &mut attack {
        route.requester = "mallory-pk".into();
    }
    let reply = w.svc.handle(attack).await.unwrap();
    let Reply::Error { code, refund_token, .. } = reply else { panic!("attacker got a lease: {reply:?}") };
    assert_eq!(code, ErrorCode::ProvisioningFailed);
    assert!(refund_token.is_some(), "the attacker's own money comes back");
    let leases = w.cluster.leases.lock().unwrap();
    let still = leases.get(&attacker_id).expect("the victim's lease must survive");
    assert_eq!((still.request_id.as_str(), still.requester.as_str()), ("victim-req", victim.requester.as_str()));
    assert!(w.onion.running.lock().unwrap().contains_key(&victim_id) || w.onion.running() == 1);
}

#[tokio::test]
async fn the_reconciler_never_ends_a_lease_topped_up_after_it_looked() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() - 1;
    // A top-up lands between the reconciler's list and its delete: the pod's version moves on.
    *w.cluster.write_after_list.lock().unwrap() = true;
    w.svc.reconcile_once().await.unwrap();
    assert!(w.cluster.leases.lock().unwrap().contains_key(&id), "the lease topped up meanwhile lives on");
    // The next pass sees the new state and decides afresh.
    *w.cluster.write_after_list.lock().unwrap() = false;
    w.svc.reconcile_once().await.unwrap();
    assert!(w.cluster.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_redeem_that_timed_out_then_met_another_error_is_settled_by_the_mint() {
    let w = world();
    // The first swap reached the mint, but its answer was lost; the retry meets a refusal (the mint sees
    // the proofs spent or pending and answers with some 4xx). Before: "invalid_token, nothing taken".
    w.payment.script.lock().unwrap().extend([
        Scripted { swapped: true, answer: PortError::transient("timeout") },
        Scripted { swapped: false, answer: PortError::rejected(ErrorCode::InvalidToken, "400 proofs pending") },
    ]);
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    assert!(matches!(reply, Reply::Ok { amount_sats: 100, .. }), "{reply:?}");
}

#[tokio::test]
async fn a_token_the_mint_never_took_can_pay_again() {
    let w = world();
    let busy = || Scripted { swapped: false, answer: PortError::transient("429 Too Many Requests") };
    w.payment.script.lock().unwrap().extend([busy(), busy(), busy()]);
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::MintUnavailable));
    // The same token, later, in a new request: the claim was released, so it buys the lease.
    let reply = w.svc.handle(create("e2", "tok:http:mint.test:100:a")).await.unwrap();
    assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
}

#[tokio::test]
async fn money_beyond_the_longest_lease_comes_back_with_it() {
    let w = world();
    // 86 400 s at 100 sat/h cost 2 400 sat; 2 600 sat passes the offline bound (10 % + 10) but buys nothing more.
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:2600:a")).await.unwrap();
    let Reply::Ok { refund_token, duration_seconds, .. } = &reply else { panic!("{reply:?}") };
    assert!(*duration_seconds <= 86_400);
    assert_eq!(refund_token.as_deref(), Some("refund:200"));
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![200]);

    // A top-up of a lease already near its maximum keeps only what the added time costs.
    let lease_id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    w.cluster.leases.lock().unwrap().get_mut(&lease_id).unwrap().expires_at = now_secs() + 86_400 - 3600;
    let reply = w.svc.handle(top_up("t1", &lease_id, "tok:http:mint.test:500:b")).await.unwrap();
    let Reply::Extended { added_seconds, refund_token, .. } = &reply else { panic!("{reply:?}") };
    assert!((3598..=3601).contains(added_seconds), "{added_seconds}");
    let back: u64 = refund_token.as_deref().unwrap().trim_start_matches("refund:").parse().unwrap();
    assert!((399..=401).contains(&back), "{back}");
}

#[tokio::test]
async fn excess_returned_after_a_crash_is_paid_once() {
    let w = world();
    let first = w.svc.handle(create("e1", "tok:http:mint.test:2600:a")).await.unwrap();
    // A crash after the excess token was minted but before the journal recorded it.
    let mut rec = w.journal.get("e1").unwrap().unwrap();
    rec.step = Step::ReturningExcess;
    let mut before = first.clone();
    if let Reply::Ok { refund_token, .. } = &mut before {
        *refund_token = None;
    }
    rec.reply = Some(before);
    w.journal.put(&rec).unwrap();
    w.svc.resume_unfinished().await;
    wait_done(&w, "e1").await;
    let resent = w.replies.sent.lock().unwrap().last().map(|(_, r)| r.clone());
    assert_eq!(resent, Some(first), "the same change token goes out again");
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![200], "paid once");
}

#[tokio::test]
async fn no_money_is_taken_for_a_lease_that_would_not_fit_or_one_too_many() {
    let w = world();
    *w.cluster.room.lock().unwrap() = Some(0);
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::NoCapacity));
    assert_eq!(*w.payment.redeems.lock().unwrap(), 0);
    // The same token pays once there is room.
    *w.cluster.room.lock().unwrap() = None;
    for (i, nonce) in ["a", "b", "c"].iter().enumerate() {
        let reply = w.svc.handle(create(&format!("ok{i}"), &format!("tok:http:mint.test:100:{nonce}"))).await.unwrap();
        assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
    }
    // A fourth lease of the same key is refused before its token is redeemed.
    let redeems = *w.payment.redeems.lock().unwrap();
    let reply = w.svc.handle(create("e4", "tok:http:mint.test:100:d")).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::TooManyRequests));
    assert_eq!(*w.payment.redeems.lock().unwrap(), redeems);
}

#[tokio::test]
async fn a_lease_whose_pod_failed_is_ended_and_its_unused_minutes_refunded_once() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    // 30 minutes and some seconds left of a 100 sat/h lease: 30 whole minutes = 50 sat back.
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 30 * 60 + 30;
    w.cluster.failed.lock().unwrap().insert(id.clone(), "pod phase Failed Evicted".into());
    w.svc.reconcile_once().await.unwrap();
    assert_eq!(w.onion.running(), 0, "forwarding stops at once");
    let rec = wait_done(&w, &format!("end:{id}")).await;
    let Some(Reply::Error { code, refund_token, .. }) = &rec.reply else { panic!("{rec:?}") };
    assert_eq!(*code, ErrorCode::LeaseEnded);
    assert!(refund_token.is_none(), "cleared from the journal once delivered");
    let (route, sent) = w.replies.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!((route.request_id.as_str(), route.requester.as_str()), ("e1", "alice-pk"));
    assert!(
        matches!(sent, Reply::Error { code: ErrorCode::LeaseEnded, refund_token: Some(ref t), .. } if t == "refund:50")
    );
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    // Noticed again (another pass, or after a restart): never paid twice.
    w.svc.reconcile_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![50]);
}

#[tokio::test]
async fn an_early_end_cut_after_its_delete_still_refunds_once() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 12 * 60 + 10;
    w.cluster.failed.lock().unwrap().insert(id.clone(), "Evicted".into());
    // What a crash right after the delete leaves: the decision journaled in Ending, the lease gone.
    let mut rec = SagaRecord {
        request_id: format!("end:{id}"),
        ..SagaRecord::new(
            route("e1", "alice-pk"),
            super::journal::Ask::End { lease_id: id.clone(), reason: "Evicted".into() },
            now_secs(),
        )
    };
    rec.step = Step::Ending;
    rec.lease_id = Some(id.clone());
    rec.amount = Some(20);
    rec.mint_url = Some(MINT.into());
    rec.failure = Some((ErrorCode::LeaseEnded, "ended".into()));
    w.journal.put(&rec).unwrap();
    w.cluster.leases.lock().unwrap().clear();
    w.svc.resume_unfinished().await;
    wait_done(&w, &format!("end:{id}")).await;
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![20]);
}

fn release(id: &str, lease_id: &str, who: &str) -> Incoming {
    Incoming::Release { route: route(id, who), request: crate::protocol::ReleaseRequest { lease: lease_id.into() } }
}

#[tokio::test]
async fn the_owner_releases_a_lease_and_gets_its_unused_minutes_back_once() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    // 30 whole minutes left of a 100 sat/h lease: 50 sat.
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 30 * 60 + 30;
    let stranger = w.svc.handle(release("r0", &id, "mallory-pk")).await.unwrap();
    assert_eq!(error_code(&stranger), Some(ErrorCode::LeaseNotFound));
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1, "a stranger cannot end it");

    let reply = w.svc.handle(release("r1", &id, "alice-pk")).await.unwrap();
    let Reply::Released { lease_id, unused_minutes, amount_sats, refund_token, .. } = &reply else {
        panic!("{reply:?}")
    };
    assert_eq!((lease_id.as_str(), *unused_minutes, *amount_sats), (id.as_str(), 30, 50));
    assert_eq!(refund_token.as_deref(), Some("refund:50"));
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert_eq!(w.onion.running(), 0);
    // The same release again (a relay's replay, a retry): answered, never paid twice.
    w.svc.handle(release("r1", &id, "alice-pk")).await;
    let again = w.svc.handle(release("r2", &id, "alice-pk")).await.unwrap();
    assert_eq!(error_code(&again), Some(ErrorCode::LeaseNotFound));
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![50]);
}

#[tokio::test]
async fn a_release_cut_after_its_delete_still_refunds_once() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    // What a crash right after the delete leaves: the release decided in Ending, the lease gone.
    let mut rec = SagaRecord::new(
        route("r1", "alice-pk"),
        super::journal::Ask::Release(crate::protocol::ReleaseRequest { lease: id.clone() }),
        now_secs(),
    );
    rec.step = Step::Ending;
    rec.lease_id = Some(id.clone());
    rec.amount = Some(25);
    rec.unused_minutes = Some(15);
    rec.mint_url = Some(MINT.into());
    w.journal.put(&rec).unwrap();
    w.cluster.leases.lock().unwrap().clear();
    w.svc.resume_unfinished().await;
    let done = wait_done(&w, "r1").await;
    assert!(matches!(done.reply, Some(Reply::Released { unused_minutes: 15, amount_sats: 25, .. })), "{done:?}");
    let (_, sent) = w.replies.sent.lock().unwrap().last().cloned().unwrap();
    assert!(matches!(sent, Reply::Released { refund_token: Some(ref t), .. } if t == "refund:25"));
    w.svc.resume_unfinished().await;
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![25], "paid once");
}

#[tokio::test]
async fn an_expiry_notice_goes_once_per_threshold_and_not_after_a_top_up_past_it() {
    let w = world_with(|s| s.notice_thresholds = vec![60, 600]);
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    let notices = |w: &World| {
        w.replies
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| matches!(r, Reply::Notice { .. }))
            .cloned()
            .collect::<Vec<_>>()
    };
    // Plenty of time left: nothing.
    w.svc.reconcile_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(notices(&w).is_empty());
    // Under 10 minutes: one notice, however many passes (and restarts: the journal remembers it).
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 500;
    for _ in 0..3 {
        w.svc.reconcile_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let sent = notices(&w);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (route, Reply::Notice { lease_id, seconds_left, sats_per_hour, topup_command, .. }) = &sent[0] else {
        panic!()
    };
    assert_eq!((route.request_id.as_str(), route.requester.as_str()), ("e1", "alice-pk"));
    assert_eq!((lease_id.as_str(), *sats_per_hour), (id.as_str(), 100));
    assert!((495..=500).contains(seconds_left), "{seconds_left}");
    assert_eq!(*topup_command, format!("paygress-cli topup {id} --amount 100 --mint {MINT}"));
    // Topped up past both thresholds: nothing more.
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 7200;
    w.svc.reconcile_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(notices(&w).len(), 1);
    // The last minute: the second notice.
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 45;
    w.svc.reconcile_once().await.unwrap();
    w.svc.reconcile_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(notices(&w).len(), 2);
}
