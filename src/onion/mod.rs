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

mod config;
mod forward;
mod keys;
mod permits;
mod publish;
#[cfg(test)]
mod tests;

pub use config::client_config;
pub use keys::{address_for_key, generate_key_bytes, keypair_from_bytes, nickname_for, onion_address, redact};
pub use permits::Urgency;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arti_client::TorClient;
use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tor_hsservice::{HsNickname, RunningOnionService};
use tor_rtcompat::PreferredRuntime;
use tracing::{info, warn};

use crate::lease::ports::{FailureKind, OnionPort, PortError, PortResult};

use config::purge_service_state;
use forward::{forward_streams, StreamBounds, Target};
use permits::PublishPermits;

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
/// Streams all services forward at once, beyond each one's guaranteed streams.
pub const MAX_STREAMS_TOTAL: usize = 4096;
/// Streams each service forwards whatever the others hold (its owner's sessions; the shared pool is first
/// come, first served, and 64 cheap leases could hold all of it).
pub const GUARANTEED_STREAMS_PER_SERVICE: usize = 4;
/// Streams one rendezvous circuit may hold open (arti's own bound, enforced before a stream reaches us).
const MAX_STREAMS_PER_CIRCUIT: u32 = 16;
/// Introductions each intro point passes on per second, and in a burst (C tor's defaults for the same
/// defence).
const INTRO_RATE: u32 = 25;
const INTRO_BURST: u32 = 200;
/// A forwarded stream with no byte in either direction for this long is closed (SSH clients that want
/// to idle longer send keepalives: ServerAliveInterval).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// New services being published at once. Bounded so a restore of hundreds of leases cannot start hundreds
/// of publications (each builds introduction and upload circuits) at one moment. On the private network,
/// with a live-like circuit-build timeout floor (docs/benchmarks.md), 500 services published in 41 s with 8
/// in flight, 42 s with 16 and 37 s with 32; on the live network a publication takes seconds, so more in
/// flight matters there.
const MAX_CONCURRENT_PUBLISH: usize = 16;
/// Of those, permits that restores and pool refills never take, so a paid lease publishes at once even
/// while hundreds of services come back after a restart (see `permits`).
const RESERVED_FOR_NEW_LEASES: usize = 4;

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
    target: watch::Sender<Option<Target>>,
    /// Accepts streams and owns every forwarded connection: aborting it closes them all.
    forwarder: JoinHandle<()>,
}

struct Enabled {
    client: Arc<TorClient<PreferredRuntime>>,
    boot: watch::Receiver<Boot>,
    bootstrapper: JoinHandle<()>,
    services: Mutex<HashMap<String, Service>>,
    /// Bounds how many new services are being published at once (see [`MAX_CONCURRENT_PUBLISH`]).
    publishing: PublishPermits,
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
                publishing: PublishPermits::new(MAX_CONCURRENT_PUBLISH, RESERVED_FOR_NEW_LEASES),
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

    /// How many new services publish at once, and how many of those only new leases may take (defaults 16
    /// and 4). For benchmarks and tests; the provider uses the defaults.
    pub fn with_publish_concurrency(mut self, total: usize, reserved_for_new_leases: usize) -> Self {
        if let Some(inner) = self.inner.as_mut() {
            inner.publishing = PublishPermits::new(total, reserved_for_new_leases);
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
        self.launch_inner(lease_id, key, Some(target), Urgency::NewLease).await.map_err(PortError::from)
    }

    async fn restore(&self, lease_id: &str, key: &[u8], target: SocketAddr) -> PortResult<String> {
        self.launch_inner(lease_id, key, Some(target), Urgency::Background).await.map_err(PortError::from)
    }

    async fn launch_idle(&self, slot: &str, key: &[u8]) -> PortResult<String> {
        self.launch_inner(slot, key, None, Urgency::Background).await.map_err(PortError::from)
    }

    async fn adopt(&self, slot: &str, lease_id: &str, target: SocketAddr) -> PortResult<String> {
        self.adopt_inner(slot, lease_id, target).await.map_err(PortError::from)
    }

    async fn stop(&self, lease_id: &str) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        let lease_lock = inner.lease_lock(lease_id);
        let guard = lease_lock.lock().await;
        inner.stop_locked(lease_id);
        drop(guard);
        inner.forget_lock(lease_id, lease_lock);
    }

    fn serves(&self, lease_id: &str, target: SocketAddr) -> bool {
        let Some(inner) = self.inner.as_ref() else { return false };
        let services = lock(&inner.services);
        services.get(lease_id).is_some_and(|s| s.target.borrow().as_ref().is_some_and(|t| t.addr == target))
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
