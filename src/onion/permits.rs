//! Publish permits: how many new services publish at once, with a share kept free for new leases.
//!
//! After a restart with hundreds of live leases, every restore wants a permit. A newly paid lease must not
//! queue behind them all (seen: 180 s until its address let `torsocks ssh` in), so background work
//! (restores, pool refills) may hold at most `total - reserved` permits and a new lease takes any free one.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who asks to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A lease someone has just paid for and waits on.
    NewLease,
    /// A service coming back after a restart, or a pool slot: nobody waits on it right now.
    Background,
}

pub(super) struct PublishPermits {
    all: Arc<Semaphore>,
    background: Arc<Semaphore>,
}

/// Held while a service publishes; dropping it frees the slot(s).
pub(super) struct PublishPermit {
    _background: Option<OwnedSemaphorePermit>,
    _all: OwnedSemaphorePermit,
}

impl PublishPermits {
    /// `total` publications at once (at least 1); `reserved` of them (fewer than `total`) only for new leases.
    pub(super) fn new(total: usize, reserved: usize) -> Self {
        let total = total.max(1);
        let background = total - reserved.min(total - 1);
        PublishPermits { all: Arc::new(Semaphore::new(total)), background: Arc::new(Semaphore::new(background)) }
    }

    /// Wait for a permit. Background callers first take a background slot, so while they hold all of those,
    /// `reserved` permits stay free for new leases. None only if the semaphores were closed (they never are).
    pub(super) async fn acquire(&self, urgency: Urgency) -> Option<PublishPermit> {
        let background = match urgency {
            Urgency::Background => Some(Arc::clone(&self.background).acquire_owned().await.ok()?),
            Urgency::NewLease => None,
        };
        let all = Arc::clone(&self.all).acquire_owned().await.ok()?;
        Some(PublishPermit { _background: background, _all: all })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn blocks(p: &PublishPermits, u: Urgency) -> bool {
        tokio::time::timeout(Duration::from_millis(50), p.acquire(u)).await.is_err()
    }

    #[tokio::test]
    async fn restores_never_take_the_permits_kept_for_new_leases() {
        let p = PublishPermits::new(4, 1);
        let held: Vec<_> = futures::future::join_all((0..3).map(|_| p.acquire(Urgency::Background))).await;
        assert!(held.iter().all(Option::is_some));
        assert!(blocks(&p, Urgency::Background).await, "a fourth restore must wait");
        let lease = p.acquire(Urgency::NewLease).await;
        assert!(lease.is_some(), "a new lease gets the reserved permit at once");
        assert!(blocks(&p, Urgency::NewLease).await, "the total bound still holds");
        drop(held);
        assert!(!blocks(&p, Urgency::NewLease).await, "freed permits serve new leases too");
    }

    #[tokio::test]
    async fn new_leases_may_use_every_permit() {
        let p = PublishPermits::new(3, 1);
        let held: Vec<_> = futures::future::join_all((0..3).map(|_| p.acquire(Urgency::NewLease))).await;
        assert!(held.iter().all(Option::is_some));
        assert!(blocks(&p, Urgency::Background).await);
    }

    #[tokio::test]
    async fn a_reservation_never_starves_background_work_entirely() {
        let p = PublishPermits::new(2, 5);
        let one = p.acquire(Urgency::Background).await;
        assert!(one.is_some());
        assert!(blocks(&p, Urgency::Background).await);
        assert!(!blocks(&p, Urgency::NewLease).await);
    }
}
