//! Hostile requesters: no adoption of foreign objects, settled redeems, excess and capacity.

use super::*;

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
    let attacker_id = crate::lease::service::lease_id_for(&w.svc.settings().lease_id_key, "attacker-req");
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
async fn strangers_releases_and_forged_tokens_are_never_journaled() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    let records = |w: &World| w.journal.records.lock().unwrap().len();
    let before = records(&w);
    // Releases and top-ups from fresh keys: oversized lease fields, made-up ids, and the real lease id
    // (not theirs). Each is answered, none is stored.
    // 250 of each: under the 600 error replies a minute that all strangers together get.
    for i in 0..250 {
        let who = format!("fresh-{i}");
        let name = match i % 3 {
            0 => "x".repeat(20_000),
            1 => format!("{:032x}", i),
            _ => id.clone(),
        };
        let reply = w.svc.handle(release(&format!("rel-{i}"), &name, &who)).await;
        if i < 10 {
            assert_eq!(reply.as_ref().and_then(error_code), Some(ErrorCode::LeaseNotFound), "{reply:?}");
        }
        let mut top = top_up(&format!("top-{i}"), &name, &format!("tok:http:mint.test:100:t{i}"));
        if let Incoming::TopUp { route, .. } = &mut top {
            route.requester = who;
        }
        w.svc.handle(top).await;
    }
    // Forged proofs (the mint's keys do not verify them): refused before the journal and the swap.
    let forged = w.svc.handle(create("f1", "tok:http:mint.test:100:forged")).await.unwrap();
    assert_eq!(error_code(&forged), Some(ErrorCode::InvalidToken));
    assert_eq!(records(&w), before, "nothing stored for requests that cannot move money");
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1, "only the real lease's token was swapped");
    assert!(w.journal.tokens.lock().unwrap().len() == 1);
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_over_its_refusal_rate_is_told_to_slow_down_once_then_not_answered() {
    let w = world();
    let mut answered = Vec::new();
    for i in 0..15 {
        // A token of a mint that is not whitelisted: refused offline, unjournaled.
        let reply = w.svc.handle(create(&format!("bad-{i}"), "tok:http:evil.test:100:x")).await;
        answered.push(reply.as_ref().and_then(error_code));
    }
    let limit = crate::lease::admission::ERROR_REPLIES_PER_WINDOW as usize;
    assert!(answered[..limit].iter().all(|c| *c == Some(ErrorCode::MintNotAllowed)), "{answered:?}");
    assert_eq!(answered[limit], Some(ErrorCode::TooManyRequests), "one slow-down: {answered:?}");
    assert!(answered[limit + 1..].iter().all(Option::is_none), "then silence: {answered:?}");
    let sent = w.replies.sent.lock().unwrap();
    let (_, last) = sent.last().unwrap();
    assert!(matches!(last, Reply::Error { message, .. } if message.starts_with("slow down")), "{last:?}");
}
