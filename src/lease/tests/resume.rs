//! Crashes and resumes: sagas cut mid-step, the reconciler, replies parked and delivered once.

use super::*;

#[tokio::test]
async fn a_saga_interrupted_after_redeem_resumes_to_a_lease() {
    let w = world();
    // What a crash right after the redeem leaves in the journal.
    let ask = crate::lease::journal::Ask::Create(LeaseRequest {
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
