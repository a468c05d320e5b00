//! Top-ups: applied once, also when resumed or concurrent.

use super::*;

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
