//! Onion adapter: one in-process arti `TorClient` publishing one onion service per lease, each forwarding
//! the SSH ports to the lease's pod.
//!
//! Keys: the primary keystore is ephemeral, so a lease's identity key lives only where lease logic keeps it
//! (a Kubernetes Secret) and is handed to [`ArtiOnion::launch`] on every start; the address survives
//! restarts because the key does. Onion-service state that arti keeps on disk (intro points, replay logs)
//! refers to keys of that ephemeral keystore, so it is purged when the client is created (see
//! [`purge_service_state`]).
//!
//! Network: nothing about the Tor network is built in. An optional TOML fragment (the stack's
//! `PAYGRESS_TOR_NETWORK_CONFIG`) is merged into arti's configuration exactly as arti merges its own config
//! files; our storage and keystore settings are layered on top of it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arti_client::config::{ConfigurationSource, ConfigurationSources};
use arti_client::{TorClient, TorClientConfig};
use async_trait::async_trait;
use futures::StreamExt;
use safelog::DisplayRedacted as _;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_config::load::ConfigResolveOptions;
use tor_config::sources::MustRead;
use tor_hscrypto::pk::{HsIdKey, HsIdKeypair};
use tor_hsservice::config::{OnionServiceConfigBuilder, TokenBucketConfig};
use tor_hsservice::status::{OnionServiceStatus, OnionServiceStatusStream, State as ServiceState};
use tor_hsservice::{HsIdKeypairSpecifier, HsNickname, RunningOnionService, StreamRequest};
use tor_keymgr::KeystoreSelector;
use tor_llcrypto::pk::ed25519;
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;
use tracing::{debug, info, warn};

use crate::lease::ports::{FailureKind, OnionPort, PortError, PortResult};

/// Onion ports forwarded to the target: the advertised SSH port and the conventional one, so both
/// `ssh -p 2222 x.onion` and `ssh x.onion` work (lesson 15: the old sidecar mapped port 80).
pub const DEFAULT_PORTS: [u16; 2] = [2222, 22];
/// Length of a stored identity key: arti's expanded ed25519 secret key (scalar ‖ hash prefix).
pub const KEY_LEN: usize = 64;
/// Used like `PAYGRESS_TOR_NETWORK_CONFIG` when that is unset and this file exists.
pub const MOUNTED_NETWORK_CONFIG: &str = "/etc/paygress/tor/network.toml";
/// Nickname prefix; also how purging recognises services that are ours.
const NICK_PREFIX: &str = "pg-";
/// Longest lease id used verbatim in a nickname (it becomes a file name inside arti's state dir).
const NICK_MAX_ID: usize = 48;

const DEFAULT_BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(120);
/// A new service not reachable after this long is stopped and launched again with the same key, within
/// the publish timeout; each relaunch doubles the wait, so a slow network is not thrashed. Services
/// normally publish in 0.4–13 s (docs/onion.md); rarely one stays Bootstrapping (its descriptor publisher,
/// with no problem reported) while its siblings publish, and a fresh launch (new introduction points, a new
/// upload schedule) gets it out.
const DEFAULT_PUBLISH_STALL: Duration = Duration::from_secs(40);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one lease's service forwards at once: a tenant (or a stranger) opening thousands of streams to
/// a stalling listener must not exhaust the provider's tasks and sockets for everyone.
pub const MAX_STREAMS_PER_SERVICE: usize = 64;
/// Streams all services forward at once.
pub const MAX_STREAMS_TOTAL: usize = 4096;
/// Streams one rendezvous circuit may hold open (arti's own bound, enforced before a stream reaches us).
const MAX_STREAMS_PER_CIRCUIT: u32 = 16;
/// Introductions each intro point passes on per second, and in a burst (C tor's defaults for the same
/// defence).
const INTRO_RATE: u32 = 25;
const INTRO_BURST: u32 = 200;
/// A forwarded stream with no byte in either direction for this long is closed (SSH clients that want
/// to idle longer send keepalives: ServerAliveInterval).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// New services being published at once. On the private test network a burst of 40 launches in one client
/// published only 18 within 120 s (arti's pool of onion-service circuits backs off: "Too many preemptive
/// onion service circuits failed"); 8 at a time published all 40 in 13 s (docs/onion.md).
const MAX_CONCURRENT_PUBLISH: usize = 8;

/// Errors of the onion adapter. Messages carry context (lease, address, path) but never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum OnionError {
    #[error("onion services are disabled (ENABLE_TOR_SIDECAR=false); lease {lease_id}")]
    Disabled { lease_id: String },
    #[error("tor network config {path}: {message}")]
    NetworkConfig { path: PathBuf, message: String },
    #[error("tor client setup ({action}): {message}")]
    Setup { action: &'static str, message: String },
    #[error("onion key of lease {lease_id}: {message}")]
    BadKey { lease_id: String, message: String },
    #[error("generating an onion key: {message}")]
    KeyGen { message: String },
    #[error("tor not bootstrapped after {waited:?} (lease {lease_id}): {status}")]
    BootstrapTimeout { lease_id: String, waited: Duration, status: String },
    #[error("launching the onion service of lease {lease_id}: {message}")]
    Launch { lease_id: String, message: String, transient: bool },
    #[error("onion service {address} of lease {lease_id} not published after {waited:?} (state {state}{problem})")]
    PublishTimeout { lease_id: String, address: String, waited: Duration, state: String, problem: String },
}

impl OnionError {
    pub fn kind(&self) -> FailureKind {
        match self {
            OnionError::Disabled { .. }
            | OnionError::NetworkConfig { .. }
            | OnionError::Setup { .. }
            | OnionError::BadKey { .. }
            | OnionError::KeyGen { .. } => FailureKind::Permanent,
            OnionError::BootstrapTimeout { .. } | OnionError::PublishTimeout { .. } => FailureKind::Transient,
            OnionError::Launch { transient, .. } => {
                if *transient {
                    FailureKind::Transient
                } else {
                    FailureKind::Permanent
                }
            }
        }
    }
}

impl From<OnionError> for PortError {
    fn from(e: OnionError) -> Self {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

/// Where the background bootstrap stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Boot {
    Pending,
    /// Failed at least once; retrying. Holds the last error (arti errors hold no secrets).
    Retrying {
        attempts: u32,
        last_error: String,
    },
    Ready,
}

/// One published lease.
struct Service {
    nickname: HsNickname,
    address: String,
    svc: Arc<RunningOnionService>,
    /// Where onion streams go; updated in place when the pod moves.
    target: watch::Sender<SocketAddr>,
    /// Accepts streams and owns every forwarded connection: aborting it closes them all.
    forwarder: JoinHandle<()>,
}

struct Enabled {
    client: Arc<TorClient<PreferredRuntime>>,
    boot: watch::Receiver<Boot>,
    bootstrapper: JoinHandle<()>,
    services: Mutex<HashMap<String, Service>>,
    /// Bounds how many new services are being published at once (see [`MAX_CONCURRENT_PUBLISH`]).
    publishing: Arc<tokio::sync::Semaphore>,
    /// Serialises launch/stop per lease so two callers never race on one nickname.
    lease_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    ports: Arc<[u16]>,
    bootstrap_timeout: Duration,
    publish_timeout: Duration,
    publish_stall: Duration,
    /// Services relaunched because they stalled (see [`DEFAULT_PUBLISH_STALL`]).
    relaunched: AtomicU64,
    /// Forwarded streams of all services (see [`MAX_STREAMS_TOTAL`]).
    streams: Arc<tokio::sync::Semaphore>,
}

impl Drop for Enabled {
    fn drop(&mut self) {
        self.bootstrapper.abort();
        if let Ok(services) = self.services.get_mut() {
            for s in services.values() {
                s.forwarder.abort();
            }
        }
    }
}

/// The arti onion adapter. `ArtiOnion::disabled()` when ENABLE_TOR_SIDECAR=false.
pub struct ArtiOnion {
    inner: Option<Enabled>,
}

impl ArtiOnion {
    /// A variant that offers no onion services and creates no Tor client.
    pub fn disabled() -> Self {
        ArtiOnion { inner: None }
    }

    /// From the provider's configuration: `ENABLE_TOR_SIDECAR`, `PAYGRESS_STATE_DIR`,
    /// `PAYGRESS_TOR_NETWORK_CONFIG`. Also forwards `PAYGRESS_SSH_PORT` if it is not one of the defaults.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, OnionError> {
        if !cfg.enable_tor {
            return Ok(Self::disabled());
        }
        let mut ports = DEFAULT_PORTS.to_vec();
        if !ports.contains(&cfg.ssh_port) {
            ports.push(cfg.ssh_port);
        }
        // The manifest mounts the optional ConfigMap `paygress-tor-network` here (private networks, bridges).
        let mounted = Path::new(MOUNTED_NETWORK_CONFIG);
        let network = cfg.tor_network_config.as_deref().or_else(|| mounted.is_file().then_some(mounted));
        if let Some(path) = network {
            info!(path = %path.display(), "tor network configuration");
        }
        Ok(Self::new(&cfg.state_dir, network)?.with_ports(&ports))
    }

    /// Create the Tor client (state and cache under `<state_dir>/tor/`) and start bootstrapping it in the
    /// background; returns at once. Must be called inside a Tokio runtime.
    pub fn new(state_dir: &Path, network_config: Option<&Path>) -> Result<Self, OnionError> {
        let tor_dir = state_dir.join("tor");
        let config = client_config(&tor_dir, network_config)?;
        let runtime =
            PreferredRuntime::current().map_err(|e| OnionError::Setup { action: "runtime", message: e.to_string() })?;

        purge_service_state(&tor_dir.join("state"), &config);

        let client = TorClient::with_runtime(runtime)
            .config(config)
            .create_unbootstrapped()
            .map_err(|e| OnionError::Setup { action: "create client", message: report(&e) })?;

        let (boot_tx, boot_rx) = watch::channel(Boot::Pending);
        let bootstrapper = tokio::spawn(bootstrap_forever(Arc::clone(&client), boot_tx));
        info!(state_dir = %tor_dir.display(), network = ?network_config, "tor client created, bootstrapping");

        Ok(ArtiOnion {
            inner: Some(Enabled {
                client,
                boot: boot_rx,
                bootstrapper,
                services: Mutex::new(HashMap::new()),
                publishing: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PUBLISH)),
                lease_locks: Mutex::new(HashMap::new()),
                ports: Arc::from(DEFAULT_PORTS.as_slice()),
                bootstrap_timeout: DEFAULT_BOOTSTRAP_TIMEOUT,
                publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                publish_stall: DEFAULT_PUBLISH_STALL,
                relaunched: AtomicU64::new(0),
                streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_TOTAL)),
            }),
        })
    }

    /// Onion ports to forward (default 2222 and 22).
    pub fn with_ports(mut self, ports: &[u16]) -> Self {
        if let Some(inner) = self.inner.as_mut() {
            inner.ports = Arc::from(ports);
        }
        self
    }

    /// How long `launch` waits for bootstrap, then for the descriptor to be published. Also sets the stall
    /// window to `publish / 3` (at most 40 s; it doubles with each relaunch); set it after this to change it.
    pub fn with_timeouts(mut self, bootstrap: Duration, publish: Duration) -> Self {
        if let Some(inner) = self.inner.as_mut() {
            inner.bootstrap_timeout = bootstrap;
            inner.publish_timeout = publish;
            inner.publish_stall = DEFAULT_PUBLISH_STALL.min(publish / 3);
        }
        self
    }

    /// How long a new service may stay unreachable before it is relaunched (the wait doubles each time;
    /// at least 100 ms, which already forces relaunches).
    pub fn with_publish_stall(mut self, stall: Duration) -> Self {
        if let Some(inner) = self.inner.as_mut() {
            inner.publish_stall = stall.max(Duration::from_millis(100));
        }
        self
    }

    /// How many stalled services were relaunched since start.
    pub fn relaunches(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.relaunched.load(Ordering::Relaxed))
    }

    /// Stop every service and the Tor client, and wait (bounded) until the client has released its state
    /// directory, so a successor on the same volume starts clean. Dropping also stops everything, but
    /// arti releases its locks asynchronously.
    pub async fn shutdown(mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let leases: Vec<String> = lock(&inner.services).keys().cloned().collect();
        for lease_id in leases {
            inner.stop_locked(&lease_id);
        }
        let stopped = inner.client.wait_for_stop();
        drop(inner);
        if tokio::time::timeout(Duration::from_secs(10), stopped).await.is_err() {
            warn!("tor client did not stop within 10s");
        }
    }

    /// Stop every onion service, leaving the client up (SIGTERM: the provider holds this adapter behind
    /// shared handles, so it cannot take it by value for [`ArtiOnion::shutdown`]). Returns how many ran.
    pub async fn stop_all(&self) -> usize {
        let Some(inner) = self.inner.as_ref() else {
            return 0;
        };
        let leases: Vec<String> = lock(&inner.services).keys().cloned().collect();
        for lease_id in &leases {
            OnionPort::stop(self, lease_id).await;
        }
        leases.len()
    }

    /// The address of a lease's running service, if any.
    pub fn address_of(&self, lease_id: &str) -> Option<String> {
        let inner = self.inner.as_ref()?;
        lock(&inner.services).get(lease_id).map(|s| s.address.clone())
    }

    async fn launch_inner(&self, lease_id: &str, key: &[u8], target: SocketAddr) -> Result<String, OnionError> {
        let inner = self.inner.as_ref().ok_or_else(|| OnionError::Disabled { lease_id: lease_id.into() })?;
        let keypair =
            keypair_from_bytes(key).map_err(|message| OnionError::BadKey { lease_id: lease_id.into(), message })?;
        let address = onion_address(&keypair);
        let nickname = nickname_for(lease_id).map_err(|message| OnionError::Launch {
            lease_id: lease_id.into(),
            message,
            transient: false,
        })?;

        let lease_lock = inner.lease_lock(lease_id);
        let guard = lease_lock.lock().await;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + inner.publish_timeout;

        let existing = {
            let services = lock(&inner.services);
            services.get(lease_id).map(|s| (s.address.clone(), Arc::clone(&s.svc), s.target.clone()))
        };
        let mut permit = None;
        let svc = match existing {
            Some((running, svc, target_tx)) if running == address => {
                // Idempotent: keep publishing; follow the pod if it moved.
                target_tx.send_if_modified(|t| std::mem::replace(t, target) != target);
                svc
            }
            other => {
                // Held until the descriptor is out (or the wait gives up); the semaphore is never closed.
                permit = Arc::clone(&inner.publishing).acquire_owned().await.ok();
                if other.is_some() {
                    // A different key for the same lease: the key from the Secret wins.
                    warn!(lease_id, address = %redact(&address), "lease relaunched with a different onion key; replacing its service");
                    inner.stop_locked(lease_id);
                }
                inner.wait_bootstrapped(lease_id).await?;
                let service = inner.start_service(lease_id, nickname.clone(), keypair, address.clone(), target).await?;
                let svc = Arc::clone(&service.svc);
                lock(&inner.services).insert(lease_id.to_string(), service);
                svc
            }
        };
        drop(guard);

        // Wait without holding the service (see `Watch`).
        let mut watch = Watch::of(&svc);
        drop(svc);
        // Only the launch that started the service (it holds a publish permit) relaunches it; others wait.
        let mut driving = permit.is_some();
        let mut relaunches = 0u32;
        let mut stall = inner.publish_stall;
        loop {
            let stall_at = if driving { tokio::time::Instant::now() + stall } else { deadline };
            match inner.wait_reachable(&mut watch.status, &mut watch.events, stall_at.min(deadline)).await {
                Waited::Reachable => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    info!(lease_id, address = %redact(&address), elapsed_ms, relaunches, "onion service published");
                    return Ok(address);
                }
                Waited::Gone | Waited::TimedOut if tokio::time::Instant::now() >= deadline => break,
                // Stopped or replaced meanwhile: follow the lease's current service if it has this address.
                // The same service with an ended stream has stopped by itself: give up at once.
                Waited::Gone => {
                    let Some((current, _)) = inner.current_service(lease_id, &address) else { break };
                    if watch.is(&current) {
                        break;
                    }
                    (watch, driving) = (Watch::of(&current), false);
                }
                Waited::TimedOut => {
                    let guard = lease_lock.lock().await;
                    let Some((current, target)) = inner.current_service(lease_id, &address) else { break };
                    if !watch.is(&current) {
                        // Another launch replaced it and drives the new one; wait for that instead.
                        (watch, driving) = (Watch::of(&current), false);
                        continue;
                    }
                    drop(current);
                    relaunches += 1;
                    stall = stall.saturating_mul(2);
                    inner.relaunched.fetch_add(1, Ordering::Relaxed);
                    warn!(lease_id, address = %redact(&address), relaunches, state = ?watch.status.state(), ipt_and_publisher = ?watch.status,
                        "onion service still not reachable; relaunching it with the same key");
                    inner.stop_locked(lease_id);
                    let keypair = keypair_from_bytes(key)
                        .map_err(|message| OnionError::BadKey { lease_id: lease_id.into(), message })?;
                    let service =
                        inner.start_service(lease_id, nickname.clone(), keypair, address.clone(), target).await?;
                    watch = Watch::of(&service.svc);
                    lock(&inner.services).insert(lease_id.to_string(), service);
                    drop(guard);
                }
            }
        }
        // The driver gives up on its service, so that a later launch (a retry, the reconciler) starts afresh
        // and drives it instead of waiting on one nobody relaunches.
        if driving {
            let _guard = lease_lock.lock().await;
            if inner.current_service(lease_id, &address).is_some_and(|(current, _)| watch.is(&current)) {
                inner.stop_locked(lease_id);
            }
        }
        let status = watch.status;
        drop(permit);
        Err(OnionError::PublishTimeout {
            lease_id: lease_id.into(),
            address: redact(&address),
            waited: Duration::from_secs(started.elapsed().as_secs()),
            state: format!("{:?}", status.state()),
            problem: status.current_problem().map(|p| format!(", problem: {p:?}")).unwrap_or_default(),
        })
    }
}

/// What a launch waits on, without holding the service: a relaunch must be able to drop the old one, which
/// releases its state-directory lock. `svc` tells that service from one that replaced it meanwhile.
struct Watch {
    status: OnionServiceStatus,
    events: OnionServiceStatusStream,
    svc: Weak<RunningOnionService>,
}

impl Watch {
    fn of(svc: &Arc<RunningOnionService>) -> Watch {
        Watch { status: svc.status(), events: svc.status_events(), svc: Arc::downgrade(svc) }
    }

    fn is(&self, svc: &Arc<RunningOnionService>) -> bool {
        Weak::ptr_eq(&self.svc, &Arc::downgrade(svc))
    }
}

/// How a wait for reachability ended.
enum Waited {
    Reachable,
    /// The status stream ended: the service was stopped (or replaced by a relaunch).
    Gone,
    TimedOut,
}

impl Enabled {
    fn lease_lock(&self, lease_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.lease_locks).entry(lease_id.to_string()).or_default())
    }

    async fn wait_bootstrapped(&self, lease_id: &str) -> Result<(), OnionError> {
        let mut boot = self.boot.clone();
        let waited = tokio::time::timeout(self.bootstrap_timeout, boot.wait_for(|b| *b == Boot::Ready)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            // The sender only goes away with `self`; treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(OnionError::BootstrapTimeout {
                lease_id: lease_id.into(),
                waited: self.bootstrap_timeout,
                status: format!("{:?}; {}", *self.boot.borrow(), self.client.bootstrap_status()),
            }),
        }
    }

    async fn start_service(
        &self,
        lease_id: &str,
        nickname: HsNickname,
        keypair: HsIdKeypair,
        address: String,
        target: SocketAddr,
    ) -> Result<Service, OnionError> {
        let launch_err =
            |message: String, transient: bool| OnionError::Launch { lease_id: lease_id.into(), message, transient };
        let config = OnionServiceConfigBuilder::default()
            .nickname(nickname.clone())
            .max_concurrent_streams_per_circuit(MAX_STREAMS_PER_CIRCUIT)
            // Asks each introduction point to pass on at most this many introductions (per second, burst),
            // so an intro flood costs the service bounded work (C tor's HiddenServiceEnableIntroDoSDefense).
            .rate_limit_at_intro(Some(TokenBucketConfig::new(INTRO_RATE, INTRO_BURST)))
            .build()
            .map_err(|e| launch_err(e.to_string(), false))?;

        // Insert with overwrite ourselves rather than `launch_onion_service_with_hsid`, which refuses a key
        // that is already there: after stop() in this process the ephemeral keystore still holds it.
        let keymgr = self.client.keymgr().map_err(|e| launch_err(report(&e), false))?;
        keymgr
            .insert(keypair, &HsIdKeypairSpecifier::new(nickname.clone()), KeystoreSelector::Primary, true)
            .map_err(|e| launch_err(format!("storing the identity key in the keystore: {e}"), false))?;

        // A service just stopped may still hold its state-directory lock for a moment while its tasks wind
        // down; retry briefly before giving up (transiently).
        let mut attempt = 0u32;
        let (svc, rend_requests) = loop {
            attempt += 1;
            match self.client.launch_onion_service(config.clone()) {
                Ok(Some(pair)) => break pair,
                Ok(None) => return Err(launch_err("service disabled in its config".into(), false)),
                Err(e) if attempt < 20 => {
                    debug!(lease_id, attempt, error = %report(&e), "onion service launch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(launch_err(report(&e), true)),
            }
        };

        let (target_tx, target_rx) = watch::channel(target);
        let forwarder = tokio::spawn(forward_streams(
            lease_id.to_string(),
            tor_hsservice::handle_rend_requests(rend_requests),
            target_rx,
            Arc::clone(&self.ports),
            StreamBounds {
                per_service: MAX_STREAMS_PER_SERVICE,
                total: Arc::clone(&self.streams),
                idle: STREAM_IDLE_TIMEOUT,
            },
        ));
        info!(lease_id, address = %redact(&address), %target, ports = ?self.ports, "onion service launched");
        Ok(Service { nickname, address, svc, target: target_tx, forwarder })
    }

    /// Wait for arti to call the service fully reachable: descriptors uploaded for the current time period
    /// AND the secondary one (previous or next). That needs the consensus to carry shared-random values
    /// covering both, which a freshly started Tor network lacks for up to two SR rounds (on the private
    /// network, 2 × 24 × 20 s = 16 min): meanwhile the service stays Bootstrapping and this times out.
    async fn wait_reachable(
        &self,
        status: &mut OnionServiceStatus,
        events: &mut OnionServiceStatusStream,
        until: tokio::time::Instant,
    ) -> Waited {
        loop {
            if status.state().is_fully_reachable() {
                return Waited::Reachable;
            }
            match tokio::time::timeout_at(until, events.next()).await {
                Ok(Some(ev)) => {
                    debug!(state = ?ev.state(), "onion service status");
                    *status = ev;
                }
                Ok(None) => return Waited::Gone,
                Err(_) => return Waited::TimedOut,
            }
        }
    }

    /// The lease's running service, if it has this address, and where it forwards to.
    fn current_service(&self, lease_id: &str, address: &str) -> Option<(Arc<RunningOnionService>, SocketAddr)> {
        let services = lock(&self.services);
        services.get(lease_id).filter(|s| s.address == address).map(|s| (Arc::clone(&s.svc), *s.target.borrow()))
    }

    /// Stop a lease's service; the caller holds the lease lock.
    fn stop_locked(&self, lease_id: &str) -> bool {
        let Some(service) = lock(&self.services).remove(lease_id) else {
            return false;
        };
        service.forwarder.abort();
        // Drop the key from memory too; a later launch inserts it again.
        if let Ok(keymgr) = self.client.keymgr() {
            let spec = HsIdKeypairSpecifier::new(service.nickname.clone());
            if let Err(e) = keymgr.remove::<HsIdKeypair>(&spec, KeystoreSelector::Primary) {
                debug!(lease_id, error = %e, "removing the identity key from the keystore failed");
            }
        }
        let state = service.svc.status().state();
        drop(service.svc);
        info!(lease_id, address = %redact(&service.address), last_state = ?state, "onion service stopped");
        state != ServiceState::Shutdown
    }
}

#[async_trait]
impl OnionPort for ArtiOnion {
    fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn generate_key(&self) -> PortResult<Vec<u8>> {
        generate_key_bytes().map_err(PortError::from)
    }

    async fn launch(&self, lease_id: &str, key: &[u8], target: SocketAddr) -> PortResult<String> {
        self.launch_inner(lease_id, key, target).await.map_err(PortError::from)
    }

    async fn stop(&self, lease_id: &str) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        let lease_lock = inner.lease_lock(lease_id);
        let guard = lease_lock.lock().await;
        inner.stop_locked(lease_id);
        drop(guard);
        // Forget the lock unless another caller is already waiting on it (it holds a clone): the map
        // would otherwise grow by one entry per lease ever launched.
        let mut locks = lock(&inner.lease_locks);
        if locks.get(lease_id).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(lease_id);
        }
        drop(locks);
        drop(lease_lock);
    }

    fn ready(&self) -> bool {
        match &self.inner {
            None => true,
            Some(inner) => *inner.boot.borrow() == Boot::Ready,
        }
    }

    fn running(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| lock(&inner.services).len())
    }

    fn relaunches(&self) -> u64 {
        ArtiOnion::relaunches(self)
    }
}

/// An error with its chain of causes (arti's errors say little at the top level).
fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let _ = write!(out, ": {s}");
        src = s.source();
    }
    out
}

/// A poisoned map only means a panic elsewhere; its data is still consistent enough to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- configuration --------------------------------------------------------------------------------------

/// Build the client configuration the way arti builds its own: the network fragment first, then our
/// settings as a later source (later sources win), resolved by `tor_config`. Unknown keys in the fragment
/// are an error: a misspelt key would otherwise silently leave us on the public network.
pub fn client_config(tor_dir: &Path, network_config: Option<&Path>) -> Result<TorClientConfig, OnionError> {
    let setup = |message: String| OnionError::Setup { action: "config", message };
    let mut sources = ConfigurationSources::new_empty();
    if let Some(path) = network_config {
        sources.push_source(ConfigurationSource::from_path(path), MustRead::MustRead);
    }
    let mut ours = storage_overrides(&tor_dir.join("state"), &tor_dir.join("cache")).map_err(setup)?;
    if let Some(gid) = trusted_group(tor_dir) {
        // A volume mounted with fsGroup is group-writable by that group, which is ours (Kubernetes adds it
        // to the pod's groups); arti's default trusts only a group named like the user and would refuse.
        ours.push_str(&format!("\n[storage.permissions]\ntrust_group = {gid}\n"));
    }
    sources.push_source(ConfigurationSource::from_verbatim(ours), MustRead::MustRead);

    let fragment_err = |message: String| match network_config {
        Some(path) => OnionError::NetworkConfig { path: path.to_path_buf(), message },
        None => OnionError::Setup { action: "config", message },
    };
    let tree = sources.load().map_err(|e| fragment_err(e.to_string()))?;
    let resolved = tor_config::resolve_return_results::<TorClientConfig>(&tree, &ConfigResolveOptions::default())
        .map_err(|e| fragment_err(e.to_string()))?;
    if !resolved.unrecognized.is_empty() {
        let keys: Vec<String> = resolved.unrecognized.iter().map(|k| k.to_string()).collect();
        return Err(fragment_err(format!("unrecognized keys: {}", keys.join(", "))));
    }
    for k in &resolved.deprecated {
        warn!(key = %k, "deprecated key in the tor network config");
    }
    Ok(resolved.value)
}

/// The group of the nearest existing ancestor of `dir` (the state volume), if this process is a member of
/// it and it is not root's: arti may then trust that group's write access.
fn trusted_group(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let existing = dir.ancestors().find(|p| p.exists())?;
    let gid = std::fs::metadata(existing).ok()?.gid();
    (gid != 0 && process_groups().contains(&gid)).then_some(gid)
}

/// This process's effective and supplementary group ids (from /proc/self/status).
fn process_groups() -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return Vec::new() };
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Gid:") {
            // real, effective, saved, filesystem: the effective one decides.
            groups.extend(rest.split_whitespace().nth(1).and_then(|g| g.parse::<u32>().ok()));
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups.extend(rest.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    groups
}

/// Our layer of arti configuration: storage under the provider's volume, literal paths (no `${…}`
/// expansion), and an ephemeral primary keystore so keys only ever come from lease logic.
fn storage_overrides(state: &Path, cache: &Path) -> Result<String, String> {
    let lit = |p: &Path| -> Result<String, String> {
        p.to_str().map(toml_string).ok_or_else(|| format!("path {} is not UTF-8", p.display()))
    };
    Ok(format!(
        "[storage]\nstate_dir = {{ literal = {} }}\ncache_dir = {{ literal = {} }}\n\n\
         [storage.keystore]\nenabled = true\n\n[storage.keystore.primary]\nkind = \"ephemeral\"\n",
        lit(state)?,
        lit(cache)?
    ))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Remove the on-disk state of our onion services left by an earlier process. It refers to intro-point
/// keys of the previous process's ephemeral keystore; without this purge arti reports "bug: HS service …
/// missing previous key … Regenerating" for each one, and the directories of ended leases pile up.
/// Best effort: a failure only costs that noise.
fn purge_service_state(state_dir: &Path, config: &TorClientConfig) {
    use tor_persist::slug::SlugRef;
    use tor_persist::state_dir::{
        InstancePurgeHandler, InstancePurgeInfo, InstanceStateHandle, Liveness, StateDirectory,
    };

    struct PurgeOurs(usize);
    impl InstancePurgeHandler for PurgeOurs {
        fn kind(&self) -> &'static str {
            "hss"
        }
        fn name_filter(&mut self, id: &SlugRef) -> tor_persist::state_dir::Result<Liveness> {
            Ok(if id.as_str().starts_with(NICK_PREFIX) { Liveness::PossiblyUnused } else { Liveness::Live })
        }
        fn age_filter(&mut self, _id: &SlugRef, _age: Duration) -> tor_persist::state_dir::Result<Liveness> {
            Ok(Liveness::PossiblyUnused)
        }
        fn dispose(
            &mut self,
            _info: &InstancePurgeInfo,
            handle: InstanceStateHandle,
        ) -> tor_persist::state_dir::Result<()> {
            self.0 += 1;
            handle.purge()
        }
    }

    if !state_dir.join("hss").exists() {
        return;
    }
    let dir = match StateDirectory::new(state_dir, config.fs_mistrust()) {
        Ok(dir) => dir,
        Err(e) => {
            warn!(error = %e, "could not open the tor state directory to purge old onion service state");
            return;
        }
    };
    let mut handler = PurgeOurs(0);
    match dir.purge_instances(std::time::SystemTime::now(), &mut handler) {
        Ok(()) => debug!(purged = handler.0, "onion service state of the previous run purged"),
        Err(e) => warn!(error = %e, "could not purge onion service state of the previous run"),
    }
}

// ---- bootstrap ------------------------------------------------------------------------------------------

async fn bootstrap_forever(client: Arc<TorClient<PreferredRuntime>>, tx: watch::Sender<Boot>) {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        match client.bootstrap().await {
            Ok(()) => {
                info!(elapsed_ms = started.elapsed().as_millis() as u64, "tor bootstrapped");
                let _ = tx.send(Boot::Ready);
                return;
            }
            Err(e) => {
                attempts += 1;
                let last_error = report(&e);
                warn!(attempts, error = %last_error, "tor bootstrap failed; retrying");
                let _ = tx.send(Boot::Retrying { attempts, last_error });
                tokio::time::sleep(Duration::from_secs(u64::from(attempts.min(12)) * 5)).await;
            }
        }
    }
}

// ---- forwarding -----------------------------------------------------------------------------------------

/// Bounds on what one service's forwarding may hold.
#[derive(Clone)]
struct StreamBounds {
    per_service: usize,
    /// Shared by every service.
    total: Arc<tokio::sync::Semaphore>,
    idle: Duration,
}

async fn forward_streams(
    lease_id: String,
    requests: impl futures::Stream<Item = StreamRequest>,
    target: watch::Receiver<SocketAddr>,
    ports: Arc<[u16]>,
    bounds: StreamBounds,
) {
    let mut requests = std::pin::pin!(requests);
    // Owned here so that aborting this task closes every forwarded connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            req = requests.next() => match req {
                Some(req) => {
                    let slot = if conns.len() < bounds.per_service {
                        Arc::clone(&bounds.total).try_acquire_owned().ok()
                    } else {
                        None
                    };
                    let Some(slot) = slot else {
                        debug!(lease_id, open = conns.len(), "onion stream refused: stream limit reached");
                        conns.spawn(async move {
                            let _ = req.reject(End::new_with_reason(EndReason::RESOURCELIMIT)).await;
                        });
                        continue;
                    };
                    let to = *target.borrow();
                    let (lease, ports, idle) = (lease_id.clone(), Arc::clone(&ports), bounds.idle);
                    conns.spawn(async move {
                        forward_one(lease, req, to, ports, idle).await;
                        drop(slot);
                    });
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    debug!(lease_id, "onion request stream ended");
    while conns.join_next().await.is_some() {}
}

async fn forward_one(lease_id: String, req: StreamRequest, target: SocketAddr, ports: Arc<[u16]>, idle: Duration) {
    let port = match req.request() {
        IncomingStreamRequest::Begin(begin) => Some(begin.port()),
        _ => None,
    };
    let Some(port) = port.filter(|p| ports.contains(p)) else {
        debug!(lease_id, ?port, "onion stream to an unserved port rejected");
        let _ = req.reject(End::new_with_reason(EndReason::EXITPOLICY)).await;
        return;
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            debug!(lease_id, port, %target, error = %e, "target refused an onion stream");
            let _ = req.reject(End::new_with_reason(EndReason::CONNECTREFUSED)).await;
            return;
        }
        Err(_) => {
            debug!(lease_id, port, %target, "target did not answer an onion stream");
            let _ = req.reject(End::new_with_reason(EndReason::TIMEOUT)).await;
            return;
        }
    };
    let onion = match req.accept(Connected::new_empty()).await {
        Ok(s) => s,
        Err(e) => {
            debug!(lease_id, port, error = %e, "accepting an onion stream failed");
            return;
        }
    };
    match copy_until_idle(onion, tcp, idle).await {
        Ok((up, down)) => debug!(lease_id, port, up, down, "onion stream closed"),
        Err(e) => debug!(lease_id, port, error = %e, "onion stream ended"),
    }
}

/// `copy_bidirectional`, ended once no byte has moved either way for `idle`.
async fn copy_until_idle<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Active { inner: a, started, last: Arc::clone(&last) };
    let mut b = Active { inner: b, started, last: Arc::clone(&last) };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let check = (idle / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep(check) => {
                let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if quiet_since.elapsed() >= idle {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"));
                }
            }
        }
    }
}

/// A stream that records when it last read a byte (milliseconds since `started`).
struct Active<S> {
    inner: S,
    started: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Active<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Active<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---- keys and names ---------------------------------------------------------------------------------------

/// A fresh identity key as 64 secret bytes (see [`KEY_LEN`]).
pub fn generate_key_bytes() -> Result<Vec<u8>, OnionError> {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|e| OnionError::KeyGen { message: e.to_string() })?;
    let keypair = ed25519::Keypair::from_bytes(&seed);
    seed.fill(0);
    Ok(ed25519::ExpandedKeypair::from(&keypair).to_secret_key_bytes().to_vec())
}

/// Restore an identity keypair from its 64 stored bytes. The message never contains key material.
pub fn keypair_from_bytes(key: &[u8]) -> Result<HsIdKeypair, String> {
    let bytes: [u8; KEY_LEN] = key.try_into().map_err(|_| format!("expected {KEY_LEN} bytes, got {}", key.len()))?;
    let expanded = ed25519::ExpandedKeypair::from_secret_key_bytes(bytes).ok_or("not a valid ed25519 secret key")?;
    Ok(HsIdKeypair::from(expanded))
}

/// `<56 base32 chars>.onion` of a keypair.
pub fn onion_address(keypair: &HsIdKeypair) -> String {
    HsIdKey::from(keypair).id().display_unredacted().to_string()
}

/// An onion address as logs show it: enough to tell services apart, not enough to reach one (anyone who
/// reads the logs must not be able to knock on every tenant's door).
pub fn redact(address: &str) -> String {
    let head: String = address.chars().take(6).collect();
    format!("{head}…")
}

/// The onion address a stored key publishes, without launching anything.
pub fn address_for_key(key: &[u8]) -> Result<String, String> {
    keypair_from_bytes(key).map(|k| onion_address(&k))
}

/// arti nickname of a lease's service: `pg-<lease id>` when the id is already a short lowercase slug,
/// otherwise a sanitised prefix plus a hash of the full id, so distinct ids never share a nickname.
pub fn nickname_for(lease_id: &str) -> Result<HsNickname, String> {
    let plain = !lease_id.is_empty()
        && lease_id.len() <= NICK_MAX_ID
        && lease_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let name = if plain {
        format!("{NICK_PREFIX}{lease_id}")
    } else {
        let prefix: String = lease_id
            .chars()
            .take(24)
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        let digest = hex::encode(&Sha256::digest(lease_id.as_bytes())[..8]);
        format!("{NICK_PREFIX}{prefix}-{digest}")
    };
    // Only slug characters are produced, so this fails only if arti narrows its nickname rules.
    HsNickname::new(name.clone()).map_err(|e| format!("nickname {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_forwarded_stream_that_stays_silent_is_closed_and_a_busy_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_millis(200);
        // Silent: a peer that never sends (a stalling listener) is cut off after `idle`.
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        let r = tokio::time::timeout(Duration::from_secs(10), copy_until_idle(a, b, idle)).await;
        assert!(matches!(r, Ok(Err(ref e)) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
        // Busy: bytes every 50 ms keep it open past several idle periods, then it ends normally.
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let copy = tokio::spawn(copy_until_idle(a, b, idle));
        for _ in 0..16 {
            a_peer.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b_peer.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(a_peer);
        drop(b_peer);
        let r = copy.await.unwrap();
        assert!(!matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
    }

    use super::*;

    #[test]
    fn key_round_trip_keeps_the_address() {
        let key = generate_key_bytes().unwrap();
        assert_eq!(key.len(), KEY_LEN);
        let a1 = address_for_key(&key).unwrap();
        let a2 = onion_address(&keypair_from_bytes(&key).unwrap());
        assert_eq!(a1, a2);
        assert!(a1.ends_with(".onion") && a1.len() == 56 + 6, "{a1}");
        assert!(a1[..56].bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        // The address parses back as an HsId equal to the key's.
        let parsed: tor_hscrypto::pk::HsId = a1.parse().unwrap();
        assert_eq!(parsed, HsIdKey::from(&keypair_from_bytes(&key).unwrap()).id());
        // Another key, another address.
        assert_ne!(address_for_key(&generate_key_bytes().unwrap()).unwrap(), a1);
    }

    #[test]
    fn bad_keys_are_rejected_without_echoing_them() {
        let err = keypair_from_bytes(&[7u8; 32]).err().unwrap();
        assert!(err.contains("64") && err.contains("32"), "{err}");
        let e = OnionError::BadKey { lease_id: "l1".into(), message: err };
        assert_eq!(e.kind(), FailureKind::Permanent);
        assert!(!e.to_string().contains("0707"));
    }

    /// C tor's `hs_ed25519_secret_key`: a 32-byte header, then the same 64 bytes. This is the key of the
    /// rend-spec test vector that arti checks against C tor (tor-hscrypto `key_blinding_testvec`).
    #[test]
    fn bytes_match_c_tor_secret_key_file_layout() {
        let expanded = hex::decode(
            "D8C7FF0E31295B66540D789AF3E3DF992038A9592EEA01D8B7CBA06D6E66D159\
             4D6167696320576F7264733A20737065697373636F62616C742062697669756D",
        )
        .unwrap();
        let mut file = b"== ed25519v1-secret: type0 ==\0\0\0".to_vec();
        assert_eq!(file.len(), 32);
        file.extend_from_slice(&expanded);
        let key = &file[32..96];
        let kp = keypair_from_bytes(key).unwrap();
        let id = HsIdKey::from(&kp).id();
        assert_eq!(hex::encode_upper(id.as_ref()), "833990B085C1A688C1D4C8B1F6B56AFAF5A2ECA674449E1D704F83765CCB7BC6");
        // And our own keys export to that layout byte for byte.
        let ours = generate_key_bytes().unwrap();
        let exported = [b"== ed25519v1-secret: type0 ==\0\0\0".as_slice(), &ours].concat();
        assert_eq!(address_for_key(&exported[32..96]).unwrap(), address_for_key(&ours).unwrap());
    }

    #[test]
    fn nicknames_are_valid_slugs_and_distinct() {
        assert_eq!(nickname_for("abc-123").unwrap().to_string(), "pg-abc-123");
        let odd = ["Lease.One", "lease one", "", "-x", "ÜBER", &"x".repeat(200), "a/b", "A", "a"];
        let mut seen = std::collections::HashSet::new();
        for id in odd {
            let n = nickname_for(id).unwrap().to_string();
            assert!(n.starts_with(NICK_PREFIX), "{n}");
            assert!(n.len() <= 64, "{n}");
            assert!(HsNickname::new(n.clone()).is_ok(), "{n}");
            assert!(seen.insert(n.clone()), "duplicate nickname {n} for {id:?}");
        }
        // Deterministic: the same lease always maps to the same service state.
        assert_eq!(nickname_for("Lease.One"), nickname_for("Lease.One"));
        assert_ne!(nickname_for("Lease.One"), nickname_for("lease.one"));
    }

    #[test]
    fn toml_strings_escape_what_toml_requires() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(toml_string("x\ny\u{7f}"), "\"x\\u000Ay\\u007F\"");
    }

    #[test]
    fn fragment_is_merged_and_our_storage_wins() {
        let dir = tempfile::tempdir().unwrap();
        let frag = dir.path().join("net.toml");
        std::fs::write(
            &frag,
            r#"
[tor_network]
fallback_caches = [
  { rsa_identity = "225547F380180D9F363982FF0350BD2891447BF8", ed_identity = "BZGMQlSD+Y7/n2daB2k9Rza3XcQdZws6t2UxgcspJM0", orports = ["127.0.0.1:25000"] },
]
[tor_network.authorities]
v3idents = ["3ED02B120981F0F480403EAA379300823DE0A572"]
uploads = [["127.0.0.1:25020"]]
downloads = [["127.0.0.1:25020"]]
votes = [["127.0.0.1:25020"]]
[storage]
state_dir = "/somewhere/else"
[address_filter]
allow_local_addrs = true
[override_net_params]
hsdir_interval = 8
"#,
        )
        .unwrap();
        let tor_dir = dir.path().join("odd $HOME \"dir\"").join("tor");
        let cfg = client_config(&tor_dir, Some(&frag)).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(dbg.contains("3ed02b120981f0f480403eaa379300823de0a572"), "authorities not merged: {dbg}");
        assert!(dbg.contains(r#"{"hsdir_interval": 8}"#), "net params not merged: {dbg}");
        assert!(dbg.contains("allow_local_addrs: true"), "address filter not merged");
        assert!(!dbg.contains("/somewhere/else"), "our state dir must override the fragment's");
        assert!(dbg.contains("Ephemeral"), "keystore must be ephemeral: {dbg}");

        // A misspelt key is an error, not a silent fallback to the public network.
        std::fs::write(&frag, "[tor_netwrk]\nfallback_caches = []\n").unwrap();
        let e = client_config(&tor_dir, Some(&frag)).unwrap_err();
        assert!(matches!(e, OnionError::NetworkConfig { .. }), "{e}");
        assert!(e.to_string().contains("tor_netwrk"), "{e}");
        // A missing file too.
        let e = client_config(&tor_dir, Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert_eq!(e.kind(), FailureKind::Permanent);
        // Without a fragment: public defaults, still our storage.
        let cfg = client_config(&tor_dir, None).unwrap();
        assert!(!format!("{cfg:?}").contains("3ed02b120981f0f480403eaa379300823de0a572"));
    }

    #[tokio::test]
    async fn disabled_variant_creates_nothing() {
        let o = ArtiOnion::disabled();
        assert!(!o.enabled());
        assert!(o.ready());
        assert_eq!(o.running(), 0);
        let key = o.generate_key().unwrap();
        let e = o.launch("l1", &key, "127.0.0.1:22".parse().unwrap()).await.unwrap_err();
        assert_eq!(e.kind, FailureKind::Permanent);
        assert!(e.message.contains("l1"));
        o.stop("l1").await;
    }

    #[test]
    fn error_kinds() {
        let t = OnionError::PublishTimeout {
            lease_id: "l".into(),
            address: "x.onion".into(),
            waited: Duration::from_secs(1),
            state: "Bootstrapping".into(),
            problem: String::new(),
        };
        assert_eq!(PortError::from(t).kind, FailureKind::Transient);
        let full = "a".repeat(56) + ".onion";
        assert!(!redact(&full).contains(&full[..16]), "a log line must not carry a usable address");
        let l = OnionError::Launch { lease_id: "l".into(), message: "m".into(), transient: false };
        assert_eq!(l.kind(), FailureKind::Permanent);
    }
}
