//! Changes of one lease that arrive together: a lease ends once and refunds once (hostile issue, round two).

use super::*;

/// A 100 sat/h lease with 30 whole minutes (50 sat) and some seconds left.
async fn half_hour_lease(w: &World) -> String {
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 30 * 60 + 30;
    id
}

fn refunds(w: &World) -> Vec<u64> {
    w.payment.refunds.lock().unwrap().clone()
}

#[tokio::test]
async fn four_concurrent_releases_end_the_lease_once_and_refund_once() {
    let w = world();
    let id = half_hour_lease(&w).await;
    let (a, b, c, d) = tokio::join!(
        w.svc.handle(release("r1", &id, "alice-pk")),
        w.svc.handle(release("r2", &id, "alice-pk")),
        w.svc.handle(release("r3", &id, "alice-pk")),
        w.svc.handle(release("r4", &id, "alice-pk")),
    );
    let replies = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    let released = replies.iter().filter(|r| matches!(r, Reply::Released { .. })).count();
    assert_eq!(released, 1, "{replies:?}");
    assert!(replies.iter().all(|r| matches!(r, Reply::Released { .. }) || error_code(r).is_some()));
    assert_eq!(refunds(&w), vec![50]);
    assert!(w.cluster.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_release_racing_the_providers_early_end_refunds_once() {
    let w = world();
    let id = half_hour_lease(&w).await;
    w.cluster.failed.lock().unwrap().insert(id.clone(), "Evicted: ephemeral storage".into());
    let (reply, _) = tokio::join!(w.svc.handle(release("r1", &id, "alice-pk")), w.svc.reconcile_once());
    // The early end runs in the background: wait for it whatever it decided.
    for _ in 0..100 {
        if w.journal.get(&format!("end:{id}")).unwrap().is_none_or(|r| r.step == Step::Done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(refunds(&w), vec![50], "release reply: {reply:?}");
    assert!(w.cluster.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_release_racing_a_top_up_keeps_nothing_unearned() {
    let w = world();
    let id = half_hour_lease(&w).await;
    let (rel, top) = tokio::join!(
        w.svc.handle(release("r1", &id, "alice-pk")),
        w.svc.handle(top_up("t1", &id, "tok:http:mint.test:50:b")),
    );
    let (rel, top) = (rel.unwrap(), top.unwrap());
    assert!(matches!(rel, Reply::Released { .. }), "{rel:?}");
    // Either the top-up landed first (the release refunds its 30 minutes too) or it came too late (it is
    // refunded whole): 100 sat back either way, in one or two refunds.
    let total: u64 = refunds(&w).iter().sum();
    assert_eq!(total, 100, "refunds {:?}, top-up reply {top:?}", refunds(&w));
    assert!(refunds(&w).len() <= 2);
    assert!(w.cluster.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_release_decided_before_expiry_refunds_nothing_once_expiry_ended_the_lease() {
    let w = world();
    let id = half_hour_lease(&w).await;
    // A release decided while 15 minutes were left, then cut (a crash, or parked on the API server) ...
    w.journal.put(&release_in_ending("r1", &id, 15, 25, Some("0"))).unwrap();
    // ... while the lease ran out and the reconciler ended it.
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() - 1;
    w.svc.reconcile_once().await.unwrap();
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    w.svc.resume_unfinished().await;
    let done = wait_done(&w, "r1").await;
    assert_eq!(done.reply.as_ref().and_then(error_code), Some(ErrorCode::LeaseExpired), "{done:?}");
    assert!(refunds(&w).is_empty(), "the minutes were used: {:?}", refunds(&w));
}

#[tokio::test]
async fn expiry_leaves_a_lease_to_the_release_that_claimed_it() {
    let w = world();
    let id = half_hour_lease(&w).await;
    // The release claimed the end and was cut before its delete.
    assert_eq!(w.journal.claim_end(&id, "r1", now_secs()).unwrap(), None);
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() - 1;
    w.svc.reconcile_once().await.unwrap();
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1, "the release deletes it, once");
}
