//! Paid requests: a lease at the rate, replays, bad input, ownership.

use super::*;

#[tokio::test]
async fn paid_request_yields_a_lease_at_the_rate() {
    let w = world();
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let Reply::Ok { access, amount_sats, duration_seconds, .. } = reply else { panic!("{reply:?}") };
    assert_eq!(amount_sats, 100);
    assert!((3598..=3600).contains(&duration_seconds));
    assert!(access.ssh_password.as_ref().is_some_and(|p| p.len() >= 20));
    assert!(access.onion_address.is_some());
    assert!(access.port_forward_command.contains("port-forward svc/ssh-pod-"));
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
    assert_eq!(w.replies.sent.lock().unwrap().len(), 1);
    assert_eq!(w.journal.get("e1").unwrap().unwrap().step, Step::Done);
    // The token is not kept once redeemed.
    assert_eq!(w.journal.get("e1").unwrap().unwrap().ask.token(), "");
}

#[tokio::test]
async fn the_same_event_twice_makes_one_lease_and_one_reply() {
    let w = world();
    let (a, b) = tokio::join!(
        w.svc.handle(create("e1", "tok:http:mint.test:100:a")),
        w.svc.handle(create("e1", "tok:http:mint.test:100:a"))
    );
    assert!(a.is_some() || b.is_some());
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1);
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
    assert_eq!(w.replies.sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn one_token_in_two_requests_buys_one_lease() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let second = w.svc.handle(create("e2", "tok:http:mint.test:100:a")).await.unwrap();
    assert_eq!(error_code(&second), Some(ErrorCode::TokenSpent));
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1);
    assert_eq!(w.cluster.leases.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_before_any_redeem() {
    let w = world();
    let mut cases = vec![
        (create("m", "tok:http:evil.test:100:a"), ErrorCode::MintNotAllowed),
        (create("s", "tok:http:mint.test:1:a"), ErrorCode::AmountTooSmall),
        (create("g", "garbage"), ErrorCode::InvalidToken),
    ];
    let mut bad_image = create("i", "tok:http:mint.test:100:b");
    if let Incoming::Create { request, .. } = &mut bad_image {
        request.pod_image = Some("evil:latest".into());
    }
    cases.push((bad_image, ErrorCode::ImageNotAllowed));
    let mut bad_user = create("u", "tok:http:mint.test:100:c");
    if let Incoming::Create { request, .. } = &mut bad_user {
        request.ssh_username = Some("root".into());
    }
    cases.push((bad_user, ErrorCode::InvalidUsername));
    for (incoming, code) in cases {
        let reply = w.svc.handle(incoming).await.unwrap();
        assert_eq!(error_code(&reply), Some(code));
    }
    assert_eq!(*w.payment.redeems.lock().unwrap(), 0);
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert_eq!(*w.cluster.creates.lock().unwrap(), 0);
}

#[tokio::test]
async fn failure_after_redeem_refunds_and_leaves_nothing() {
    let w = world();
    *w.cluster.fail_create.lock().unwrap() = true;
    let reply = w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await.unwrap();
    let Reply::Error { code, refund_token, .. } = reply else { panic!() };
    assert_eq!(code, ErrorCode::ProvisioningFailed);
    assert_eq!(refund_token.as_deref(), Some("refund:100"));
    assert_eq!(*w.payment.refunds.lock().unwrap(), vec![100]);
    assert!(w.cluster.leases.lock().unwrap().is_empty());
    assert_eq!(w.onion.running(), 0);
}

#[tokio::test]
async fn only_the_owner_may_top_up_or_ask_status() {
    let w = world();
    w.svc.handle(create("e1", "tok:http:mint.test:100:a")).await;
    let lease_id = w.cluster.leases.lock().unwrap().keys().next().unwrap().clone();
    let before = w.cluster.leases.lock().unwrap()[&lease_id].expires_at;

    let stranger = Incoming::TopUp {
        route: route("t1", "mallory-pk"),
        request: TopUpRequest { cashu_token: "tok:http:mint.test:100:b".into(), lease: lease_id.clone() },
    };
    assert_eq!(error_code(&w.svc.handle(stranger).await.unwrap()), Some(ErrorCode::LeaseNotFound));
    let peek =
        Incoming::Status { route: route("s1", "mallory-pk"), request: StatusRequest { lease: lease_id.clone() } };
    assert_eq!(error_code(&w.svc.handle(peek).await.unwrap()), Some(ErrorCode::LeaseNotFound));
    assert_eq!(*w.payment.redeems.lock().unwrap(), 1, "a stranger's token is not redeemed");

    let owner = Incoming::TopUp {
        route: route("t2", "alice-pk"),
        request: TopUpRequest { cashu_token: "tok:http:mint.test:50:c".into(), lease: format!("ssh-pod-{lease_id}") },
    };
    let Reply::Extended { added_seconds, expires_at, .. } = w.svc.handle(owner).await.unwrap() else { panic!() };
    assert_eq!(added_seconds, 1800);
    assert_eq!(expires_at, before + 1800);
    let status = Incoming::Status { route: route("s2", "alice-pk"), request: StatusRequest { lease: lease_id } };
    let Reply::Status { lease, .. } = w.svc.handle(status).await.unwrap() else { panic!() };
    assert_eq!(lease.state, "active");
    assert!(lease.seconds_remaining > 3600);
}
