//! Ends before expiry: failed pods, release by the owner, expiry notices.

use super::*;

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
            crate::lease::journal::Ask::End { lease_id: id.clone(), reason: "Evicted".into() },
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
    w.journal.put(&release_in_ending("r1", &id, 15, 25, None)).unwrap();
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

#[tokio::test]
async fn an_http_lease_ended_early_gives_its_refund_to_the_owners_next_status_request() {
    let w = world();
    let mut buy = create("h1", "tok:http:mint.test:100:a");
    if let Incoming::Create { route, .. } = &mut buy {
        route.via = ReplyVia::InBand;
    }
    w.svc.handle(buy).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    w.cluster.leases.lock().unwrap().get_mut(&id).unwrap().expires_at = now_secs() + 30 * 60 + 30;
    w.cluster.failed.lock().unwrap().insert(id.clone(), "Evicted".into());
    w.svc.reconcile_once().await.unwrap();
    wait_done(&w, &format!("end:{id}")).await;
    let status = |who: &str, rid: &str| Incoming::Status {
        route: ReplyRoute { request_id: rid.into(), requester: who.into(), via: ReplyVia::InBand },
        request: StatusRequest { lease: id.clone() },
    };
    let theirs = w.svc.handle(status("mallory-pk", "s0")).await.unwrap();
    assert_eq!(error_code(&theirs), Some(ErrorCode::LeaseNotFound), "{theirs:?}");
    let reply = w.svc.handle(status("alice-pk", "s1")).await.unwrap();
    let Reply::Error { code, refund_token, .. } = &reply else { panic!("{reply:?}") };
    assert_eq!((*code, refund_token.as_deref()), (ErrorCode::LeaseEnded, Some("refund:50")));
    // Asked again (a retry): the same token, never a second refund.
    w.svc.handle(status("alice-pk", "s2")).await.unwrap();
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![50]);
}
