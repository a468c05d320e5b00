//! Onion services published ahead of demand. Publishing a descriptor takes seconds (more in a burst, see
//! docs/onion.md); a paid lease instead takes a service that is already reachable, and only where its
//! streams go changes.
//!
//! Invariants:
//! - A slot's key is in its own Secret before its service is launched, so no published address exists
//!   that the cluster does not hold.
//! - A slot is handed out by popping it from `ready` (in memory, once), then taking its Secret (a delete
//!   under its uid and resourceVersion: at most one taker, also across processes), then storing its key
//!   as the lease's onion Secret. Only then is the address the lease's, and only the lease's reply tells
//!   it: an address is never given twice.
//! - A crash between take and store loses a key that nobody was given; the resumed saga takes another
//!   slot. A crash after the store leaves an ordinary lease key. A slot never taken survives a restart:
//!   the next run publishes it again and keeps it in the pool (its address was never given to anyone, and
//!   discarding it would only cost a fresh publication).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::lease::ports::PoolKey;

/// Slots being published at once: below the onion adapter's bound (8) so that a lease that finds the pool
/// empty, and restores after a restart, still get publication slots.
const FILL_CONCURRENCY: usize = 2;
/// After a failed publication, a filler waits this long before its place is taken by another attempt.
const FILL_BACKOFF: Duration = Duration::from_secs(10);
/// How often the filler looks again without being woken (a missed wake-up costs at most this).
const FILL_PERIOD: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(super) struct Pool {
    /// Slots whose service is published and forwards nothing yet.
    ready: Mutex<VecDeque<String>>,
    /// Slots being published (or restored) now, or waiting for a publication permit.
    filling: AtomicUsize,
    /// Slots left by an earlier run, to publish again before any new one.
    restored: Mutex<VecDeque<PoolKey>>,
    wake: Notify,
}

/// The onion adapter's name for a slot's service (where a lease id would be).
fn service_of(slot: &str) -> String {
    format!("pool-{slot}")
}

fn new_slot() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill(&mut b);
    hex::encode(b)
}

impl LeaseService {
    /// Slots published and waiting for a lease.
    pub fn pool_ready(&self) -> usize {
        self.pool.ready.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Keep the pool full, for ever: first the slots an earlier run left, then new ones as leases take
    /// them. Returns at once when the pool is off.
    pub async fn run_onion_pool(self: &Arc<Self>) {
        let size = self.settings.onion_pool;
        if size == 0 || !self.ports.onion.enabled() {
            return;
        }
        // Publication needs a bootstrapped client; failing every fill meanwhile would only churn Secrets.
        while !self.ports.onion.ready() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut left = loop {
            match self.ports.cluster.list_pool_keys().await {
                Ok(keys) => break keys,
                Err(e) => {
                    warn!(error = %e, "cannot list the onion pool's keys; retrying");
                    tokio::time::sleep(FILL_BACKOFF).await;
                }
            }
        };
        if left.len() > size {
            // The pool was made smaller: forget the extra slots (never given out, so nothing depends on them).
            for extra in left.split_off(size) {
                if let Err(e) = self.ports.cluster.take_pool_key(&extra.slot).await {
                    warn!(slot = %extra.slot, error = %e, "could not delete an extra pool key");
                }
            }
        }
        if !left.is_empty() {
            info!(slots = left.len(), "publishing the onion pool's slots again");
        }
        if let Ok(mut r) = self.pool.restored.lock() {
            r.extend(left);
        }
        let permits = Arc::new(Semaphore::new(FILL_CONCURRENCY));
        loop {
            let have = self.pool_ready() + self.pool.filling.load(Ordering::Acquire);
            for _ in have..size {
                self.pool.filling.fetch_add(1, Ordering::AcqRel);
                let (this, permits) = (Arc::clone(self), Arc::clone(&permits));
                tokio::spawn(async move {
                    if let Ok(_permit) = permits.acquire_owned().await {
                        this.fill_one().await;
                    }
                    this.pool.filling.fetch_sub(1, Ordering::AcqRel);
                    this.pool.wake.notify_one();
                });
            }
            self.metrics.onion_pool_ready.store(self.pool_ready() as u64, Ordering::Relaxed);
            let _ = tokio::time::timeout(FILL_PERIOD, self.pool.wake.notified()).await;
        }
    }

    /// Publish one slot (a restored one first) and put it in `ready`; on failure forget it and pause.
    async fn fill_one(&self) {
        let restored = self.pool.restored.lock().ok().and_then(|mut r| r.pop_front());
        let (slot, key) = match restored {
            Some(PoolKey { slot, key }) => (slot, key),
            None => {
                let slot = new_slot();
                let stored = match self.ports.onion.generate_key() {
                    Ok(key) => self.ports.cluster.store_pool_key(&slot, &key).await.map(|()| key),
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(key) => (slot, key),
                    Err(e) => {
                        warn!(error = %e, "could not store a new pool key");
                        tokio::time::sleep(FILL_BACKOFF).await;
                        return;
                    }
                }
            }
        };
        let service = service_of(&slot);
        let started = Instant::now();
        match self.ports.onion.launch_idle(&service, &key).await {
            Ok(_) => {
                debug!(slot = %slot, elapsed_ms = started.elapsed().as_millis() as u64, "pool slot published");
                if let Ok(mut r) = self.pool.ready.lock() {
                    r.push_back(slot);
                }
            }
            Err(e) => {
                warn!(slot = %slot, error = %e, "pool slot not published; discarding it");
                self.ports.onion.stop(&service).await;
                if let Err(e) = self.ports.cluster.take_pool_key(&slot).await {
                    warn!(slot = %slot, error = %e, "could not delete a discarded pool key");
                }
                tokio::time::sleep(FILL_BACKOFF).await;
            }
        }
    }

    /// Give the lease a published service from the pool, forwarding to `endpoint`. None when the pool has
    /// none ready, or its key could not be taken: the caller then publishes a service of its own.
    pub(super) async fn launch_from_pool(
        &self,
        lease_id: &str,
        endpoint: SocketAddr,
    ) -> Option<Result<String, PortError>> {
        if self.settings.onion_pool == 0 {
            return None;
        }
        let slot = self.pool.ready.lock().ok()?.pop_front()?;
        self.pool.wake.notify_one();
        let service = service_of(&slot);
        let taken = self.retry(|| self.ports.cluster.take_pool_key(&slot)).await;
        let Ok(Some(key)) = taken else {
            warn!(slot = %slot, outcome = ?taken.err(), "pool key could not be taken; publishing a new service");
            self.ports.onion.stop(&service).await;
            return None;
        };
        self.failpoint(Failpoint::AfterPoolTake);
        // From here the key exists only in this process until the lease's Secret holds it: a crash loses
        // an address that nobody was given, and the resumed saga takes another.
        if let Err(e) = self.retry(|| self.ports.cluster.store_onion_key(lease_id, &key)).await {
            self.ports.onion.stop(&service).await;
            return Some(Err(e));
        }
        match self.ports.onion.adopt(&service, lease_id, endpoint).await {
            Ok(address) => Some(Ok(address)),
            Err(e) => {
                // The key is the lease's now, whatever happened to the slot's service: publish it anew.
                warn!(slot = %slot, error = %e, "pooled service could not be handed over; publishing the lease's key");
                self.ports.onion.stop(&service).await;
                Some(self.ports.onion.launch(lease_id, &key, endpoint).await)
            }
        }
    }
}
