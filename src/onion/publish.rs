//! Publishing a lease's service: launch, wait until reachable, relaunch a stalled one, stop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tor_hscrypto::pk::HsIdKeypair;
use tor_hsservice::config::{OnionServiceConfigBuilder, TokenBucketConfig};
use tor_hsservice::status::{OnionServiceStatus, OnionServiceStatusStream, State as ServiceState};
use tor_hsservice::{HsIdKeypairSpecifier, HsNickname, RunningOnionService};
use tor_keymgr::KeystoreSelector;
use tracing::{debug, info, warn};

use super::*;

impl ArtiOnion {
    /// Hand a pool slot's running service to a lease (see [`OnionPort::adopt`]). No publication: the
    /// descriptor is already out, so only where streams go changes.
    pub(super) async fn adopt_inner(
        &self,
        slot: &str,
        lease_id: &str,
        target: SocketAddr,
    ) -> Result<String, OnionError> {
        let inner = self.inner.as_ref().ok_or_else(|| OnionError::Disabled { lease_id: lease_id.into() })?;
        let refuse =
            |message: &str| OnionError::Launch { lease_id: lease_id.into(), message: message.into(), transient: false };
        // Slot first, then lease: the only place holding two, so no other order can deadlock with it.
        let slot_lock = inner.lease_lock(slot);
        let slot_guard = slot_lock.lock().await;
        let lease_lock = inner.lease_lock(lease_id);
        let lease_guard = lease_lock.lock().await;
        let adopted = {
            let mut services = lock(&inner.services);
            if services.contains_key(lease_id) {
                Err(refuse("the lease already has an onion service"))
            } else if let Some(service) = services.remove(slot) {
                service.target.send_replace(Some(Target::new(lease_id, target)));
                let address = service.address.clone();
                services.insert(lease_id.to_string(), service);
                Ok(address)
            } else {
                Err(refuse("the pool slot runs no onion service"))
            }
        };
        drop((lease_guard, slot_guard));
        inner.forget_lock(slot, slot_lock);
        if let Ok(address) = &adopted {
            info!(lease_id, slot, address = %redact(address), %target, "pooled onion service assigned to the lease");
        }
        adopted
    }

    pub(super) async fn launch_inner(
        &self,
        lease_id: &str,
        key: &[u8],
        target: Option<SocketAddr>,
        urgency: Urgency,
    ) -> Result<String, OnionError> {
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
        let mut deadline = tokio::time::Instant::now() + inner.publish_timeout;

        let existing = {
            let services = lock(&inner.services);
            services.get(lease_id).map(|s| (s.address.clone(), Arc::clone(&s.svc), s.target.clone()))
        };
        let mut permit = None;
        let svc = match existing {
            Some((running, svc, target_tx)) if running == address => {
                // Idempotent: keep publishing; follow the pod if it moved.
                if let Some(addr) = target {
                    let to = Some(Target::new(lease_id, addr));
                    target_tx.send_if_modified(|t| std::mem::replace(t, to.clone()) != to);
                }
                svc
            }
            other => {
                // Held until the descriptor is out (or the wait gives up); the semaphore is never closed.
                permit = inner.publishing.acquire(urgency).await;
                // The publish timeout starts now: time queued behind other publications is not publishing,
                // and a service started past its deadline was stopped at once (a burst of 500 launches
                // published 217 in 120 s and failed the other 283 as they got their permits).
                deadline = tokio::time::Instant::now() + inner.publish_timeout;
                if other.is_some() {
                    // A different key for the same lease: the key from the Secret wins.
                    warn!(lease_id, address = %redact(&address), "lease relaunched with a different onion key; replacing its service");
                    inner.stop_locked(lease_id);
                }
                inner.wait_bootstrapped(lease_id).await?;
                let to = target.map(|addr| Target::new(lease_id, addr));
                let service = inner.start_service(lease_id, nickname.clone(), keypair, address.clone(), to).await?;
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
    pub(super) fn lease_lock(&self, lease_id: &str) -> Arc<tokio::sync::Mutex<()>> {
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
        target: Option<Target>,
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

        let target_log = target.as_ref().map(|t| t.addr);
        let (target_tx, target_rx) = watch::channel(target);
        let forwarder = tokio::spawn(forward_streams(
            lease_id.to_string(),
            tor_hsservice::handle_rend_requests(rend_requests),
            target_rx,
            Arc::clone(&self.ports),
            StreamBounds {
                per_service: MAX_STREAMS_PER_SERVICE,
                guaranteed: GUARANTEED_STREAMS_PER_SERVICE,
                total: Arc::clone(&self.streams),
                idle: STREAM_IDLE_TIMEOUT,
            },
        ));
        info!(lease_id, address = %redact(&address), target = ?target_log, ports = ?self.ports, "onion service launched");
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
    fn current_service(&self, lease_id: &str, address: &str) -> Option<(Arc<RunningOnionService>, Option<Target>)> {
        let services = lock(&self.services);
        services.get(lease_id).filter(|s| s.address == address).map(|s| (Arc::clone(&s.svc), s.target.borrow().clone()))
    }

    /// Drop a lease's lock from the map unless another caller holds or waits on it (a clone): the map would
    /// otherwise grow by one entry per lease or slot ever launched.
    pub(super) fn forget_lock(&self, lease_id: &str, held: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = lock(&self.lease_locks);
        if locks.get(lease_id).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(lease_id);
        }
        drop(locks);
        drop(held);
    }

    /// Stop a lease's service; the caller holds the lease lock.
    pub(super) fn stop_locked(&self, lease_id: &str) -> bool {
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
