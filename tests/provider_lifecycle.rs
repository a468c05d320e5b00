//! Leases over their whole life, against the stack's real mint, relay and kube-apiserver: they end on time,
//! can be extended by their owner only, report their status, and a failure after payment refunds.
//! Prices are set so that 1 sat buys 1 s (PAYMENT_RATE_SATS_PER_HOUR=3600), so lifetimes are short.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use serde_json::Value;

const REPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// An image reference the API server refuses (a ValidatingAdmissionPolicy applied by `refusing_policy`).
/// kube-apiserver 1.36 validates only leading/trailing whitespace in `image`, and the provider's
/// configuration trims list items, so the refusal is made explicit with a policy.
const REFUSED_IMAGE: &str = "paygress.test/refused-by-policy:1";

fn provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| {
        refusing_policy().expect("admission policy");
        let extra = [
            ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
            ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
            ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
            ("PAYGRESS_ALLOWED_IMAGES", REFUSED_IMAGE),
        ];
        let opts = ProviderOptions {
            extra_env: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        Provider::start(opts).expect("provider starts")
    })
}

/// A policy denying pods of `REFUSED_IMAGE` at admission (idempotent; harmless to every other pod).
fn refusing_policy() -> Result<()> {
    let yaml = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: paygress-test-refused-image
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE"]
      resources: ["pods"]
  validations:
  - expression: "!object.spec.containers.exists(c, c.image.startsWith('paygress.test/refused-by-policy'))"
    message: "image refused by policy paygress-test-refused-image (test fixture)"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: paygress-test-refused-image
spec:
  policyName: paygress-test-refused-image
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {}
"#;
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, yaml)?;
    kubectl(&["apply", "-f", f.to_str().unwrap_or_default()])?;
    // Policies take effect once the API server has loaded them: wait until a dry run is refused.
    let probe = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"policy-probe"},"spec":{"containers":[{"name":"c","image":"paygress.test/refused-by-policy:1"}]}}"#;
    let pf = dir.path().join("probe.json");
    std::fs::write(&pf, probe)?;
    wait_until("admission policy in force", Duration::from_secs(30), || {
        kubectl(&["-n", "user-workloads", "create", "--dry-run=server", "-f", pf.to_str().unwrap_or_default()])
            .is_err()
            .then_some(())
    })
}

fn wallet(sats: u64) -> Wallet {
    let w = Wallet::new(&env("CASHU_MINT_URL")).expect("wallet");
    w.fund(sats).expect("cashu invoice");
    w
}

/// Buy a lease of `sats` seconds; returns (request id, reply).
fn buy(user: &User, w: &Wallet, sats: u64, name: &str) -> Result<(String, Value)> {
    let p = provider();
    let token = w.send(sats)?;
    let id = user.publish_nip44(1000, &request_json(&token, name), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(reply["status"], "ok", "{reply}");
    Ok((id, reply))
}

fn expiry_annotation(pod: &str) -> Result<u64> {
    let out = kubectl(&[
        "-n",
        "user-workloads",
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.metadata.annotations.paygress\\.io/expires-at}",
    ])?;
    Ok(out.trim().parse()?)
}

fn topup_json(token: &str, lease: &str) -> String {
    serde_json::json!({"cashu_token": token, "lease": lease}).to_string()
}

fn status_json(lease: &str) -> String {
    serde_json::json!({"lease": lease}).to_string()
}

fn assert_error(reply: &Value, codes: &[&str]) {
    assert_eq!(reply["status"], "error", "{reply}");
    assert!(codes.contains(&reply["code"].as_str().unwrap_or_default()), "expected {codes:?}: {reply}");
    assert!(reply["refund_token"].is_null(), "nothing was taken, so nothing is refunded: {reply}");
}

#[test]
fn a_lease_ends_on_time_and_leaves_nothing_behind() -> Result<()> {
    let p = provider();
    let w = wallet(100);
    let user = User::new()?;
    let (_, reply) = buy(&user, &w, 20, "expiry")?;
    let access = &reply["access"];
    let lease_id = access["lease_id"].as_str().unwrap().to_string();
    let pod = access["pod_name"].as_str().unwrap().to_string();
    let expires_at = access["expires_at"].as_u64().unwrap();
    let duration = reply["duration_seconds"].as_u64().unwrap();
    assert!((15..=20).contains(&duration), "20 sat at 3600 sat/h buy 20 s: {duration}");

    // It works while it lasts.
    let ip = pod_ip(&pod)?;
    let pw = access["ssh_password"].as_str().unwrap();
    assert!(ssh_password(&ip, 2222, "expiry", pw, "echo up", None)?.contains("up"));
    assert_eq!(all_lease_objects(&lease_id)?.len(), 3, "pod, Service, auth Secret");

    // Then everything goes: pod, Service and Secrets.
    let now_ms = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    };
    let gone_ms = wait_until("lease objects deleted", Duration::from_secs(duration + 60), || {
        all_lease_objects(&lease_id).ok().filter(|o| o.is_empty()).map(|_| now_ms())
    })?;
    let lag_ms = gone_ms - expires_at as i64 * 1000;
    println!("expiry: lease {lease_id} paid for {duration} s; objects gone {lag_ms} ms after expires_at");
    // expires_at is whole seconds and the pod ends when it is <= now: never before that second.
    assert!(lag_ms >= 0, "deleted {} ms before its expiry", -lag_ms);
    assert!(lag_ms <= 30_000, "deleted {lag_ms} ms after expiry (bound 30 s)");
    // And SSH at its endpoint no longer answers.
    wait_until("ssh refused after expiry", Duration::from_secs(30), || {
        ssh_password(&ip, 2222, "expiry", pw, "true", None).is_err().then_some(())
    })?;
    assert_eq!(pods_of_requester(&user.pubkey)?, 0);
    let _ = p;
    Ok(())
}

#[test]
fn the_owner_extends_a_lease_with_nip44_and_plain_top_ups() -> Result<()> {
    let p = provider();
    let w = wallet(200);
    let user = User::new()?;
    let (_, reply) = buy(&user, &w, 20, "topup")?;
    let access = &reply["access"];
    let lease_id = access["lease_id"].as_str().unwrap().to_string();
    let pod = access["pod_name"].as_str().unwrap().to_string();
    let first_expiry = access["expires_at"].as_u64().unwrap();
    assert_eq!(expiry_annotation(&pod)?, first_expiry);

    // NIP-44 top-up by lease id.
    let t = w.send(30)?;
    let id = user.publish_nip44(1002, &topup_json(&t, &lease_id), &p.pubkey)?;
    let r = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(r["status"], "extended", "{r}");
    assert_eq!(r["lease_id"], lease_id.as_str());
    assert_eq!(r["amount_sats"], 30);
    assert_eq!(r["added_seconds"], 30);
    let second_expiry = r["expires_at"].as_u64().unwrap();
    assert_eq!(second_expiry, first_expiry + 30, "{r}");
    assert_eq!(expiry_annotation(&pod)?, second_expiry, "the annotation moved");
    assert!(w.receive(&t).is_err(), "the top-up token was redeemed");

    // Plain JSON top-up (p-tagged), by pod name.
    let t = w.send(40)?;
    let id = user.publish(1002, &topup_json(&t, &pod), Some(&p.pubkey))?;
    let r = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(r["status"], "extended", "{r}");
    let third_expiry = r["expires_at"].as_u64().unwrap();
    assert_eq!(third_expiry, second_expiry + 40, "{r}");
    assert_eq!(expiry_annotation(&pod)?, third_expiry);

    // The pod outlives its first expiry, and status agrees.
    while now_secs() < first_expiry + 5 {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(pods_of_lease(&lease_id)?, 1, "the lease survived its old expiry");
    let id = user.publish_nip44(1003, &status_json(&lease_id), &p.pubkey)?;
    let s = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(s["status"], "status", "{s}");
    assert_eq!(s["lease"]["state"], "active");
    assert_eq!(s["lease"]["expires_at"], third_expiry);
    let remaining = s["lease"]["seconds_remaining"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= third_expiry - first_expiry, "{s}");
    delete_lease(&lease_id);
    Ok(())
}

#[test]
fn strangers_are_refused_and_keep_their_tokens_and_status_works_for_the_owner() -> Result<()> {
    let p = provider();
    let w = wallet(300);
    let (owner, stranger) = (User::new()?, User::new()?);
    let (_, reply) = buy(&owner, &w, 60, "owner")?;
    let lease_id = reply["access"]["lease_id"].as_str().unwrap().to_string();
    let pod = reply["access"]["pod_name"].as_str().unwrap().to_string();
    let expiry = expiry_annotation(&pod)?;

    // A stranger's top-up: refused as if the lease did not exist; the token stays theirs.
    let t = w.send(30)?;
    let id = stranger.publish_nip44(1002, &topup_json(&t, &lease_id), &p.pubkey)?;
    assert_error(&stranger.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?, &["lease_not_found"]);
    w.receive(&t)?;
    assert_eq!(expiry_annotation(&pod)?, expiry, "a stranger cannot move the expiry");

    // A stranger's status request learns nothing.
    let id = stranger.publish_nip44(1003, &status_json(&lease_id), &p.pubkey)?;
    let r = stranger.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_error(&r, &["lease_not_found"]);
    assert!(!r.to_string().contains(&expiry.to_string()), "no lease details for strangers: {r}");

    // Top-up of a lease that does not exist: error, token not redeemed.
    let t = w.send(30)?;
    let id = owner.publish_nip44(1002, &topup_json(&t, "0123456789ab"), &p.pubkey)?;
    assert_error(&owner.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?, &["lease_not_found"]);
    w.receive(&t)?;

    // The owner's status.
    let id = owner.publish_nip44(1003, &status_json(&pod), &p.pubkey)?;
    let s = owner.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(s["status"], "status", "{s}");
    assert_eq!(s["lease"]["lease_id"], lease_id.as_str());
    assert_eq!(s["lease"]["state"], "active");
    assert_eq!(s["lease"]["expires_at"], expiry);
    let remaining = s["lease"]["seconds_remaining"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= 60, "{s}");
    delete_lease(&lease_id);
    Ok(())
}

#[test]
fn a_top_up_of_an_expired_lease_is_refused_and_takes_nothing() -> Result<()> {
    let p = provider();
    let w = wallet(100);
    let user = User::new()?;
    let (_, reply) = buy(&user, &w, 10, "short")?;
    let lease_id = reply["access"]["lease_id"].as_str().unwrap().to_string();
    let expires_at = reply["access"]["expires_at"].as_u64().unwrap();
    while now_secs() <= expires_at {
        std::thread::sleep(Duration::from_millis(300));
    }
    // Whether the reconciler has deleted it yet or not, the money must stay with the user.
    let t = w.send(30)?;
    let id = user.publish_nip44(1002, &topup_json(&t, &lease_id), &p.pubkey)?;
    assert_error(&user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?, &["lease_expired", "lease_not_found"]);
    w.receive(&t)?;
    // And its status says so (or that it is gone).
    let id = user.publish_nip44(1003, &status_json(&lease_id), &p.pubkey)?;
    let s = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert!(s["code"] == "lease_not_found" || s["lease"]["state"] == "expired", "{s}");
    Ok(())
}

#[test]
fn a_failure_after_payment_refunds_and_leaves_no_objects() -> Result<()> {
    let p = provider();
    let w = wallet(100);
    let user = User::new()?;
    let token = w.send(50)?;
    let before = w.balance()?;
    let body = serde_json::json!({"cashu_token": token, "ssh_username": "refund", "pod_image": REFUSED_IMAGE});
    let started = Instant::now();
    let id = user.publish_nip44(1000, &body.to_string(), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    println!("refund: error reply after {:?}", started.elapsed());
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["code"], "provisioning_failed", "{reply}");
    let refund = reply["refund_token"].as_str().expect("refund_token");
    // The user's token was taken (it bought a lease that failed) ...
    assert!(w.receive(&token).is_err(), "the token was redeemed");
    // ... and the refund is real money at the mint, claimed with the cashu CLI.
    w.receive(refund)?;
    assert_eq!(w.balance()?, before + 50, "the whole payment came back (the stack mint charges no fee)");
    // Nothing of the lease remains.
    let lease_id = lease_id_for(&p.nsec_hex, &id);
    let left = wait_until("no objects of the failed lease", Duration::from_secs(30), || {
        all_lease_objects(&lease_id).ok().filter(|o| o.is_empty())
    });
    assert!(left.is_ok(), "left behind: {:?}", all_lease_objects(&lease_id));
    assert_eq!(pods_of_requester(&user.pubkey)?, 0);
    Ok(())
}

/// A lease whose pod can never run again (evicted: phase Failed) is ended at once and its unused whole
/// minutes come back to its owner as a token, at the rate paid.
#[test]
fn an_evicted_lease_is_ended_early_with_a_refund_of_its_unused_minutes() -> Result<()> {
    let p = provider();
    let w = wallet(700);
    let user = User::new()?;
    // 600 sat at 1 sat/s: 10 minutes.
    let token = w.send(600)?;
    let id = user.publish_nip44(1000, &request_json(&token, "evicted"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(reply["status"], "ok", "{reply}");
    let pod = reply["access"]["pod_name"].as_str().unwrap_or_default().to_string();
    let lease_id = reply["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let before = w.balance()?;
    // What the kubelet writes when it evicts a pod.
    kubectl(&[
        "-n",
        "user-workloads",
        "patch",
        "pod",
        &pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed","reason":"Evicted","message":"The node was low on resource: memory."}}"#,
    ])?;
    let ended = user.await_reply_where(&id, &p.pubkey, REPLY_TIMEOUT, |v| v["code"] == "lease_ended")?;
    let refund = ended["refund_token"].as_str().unwrap_or_default();
    assert!(refund.starts_with("cashu"), "{ended}");
    w.receive(refund)?;
    let back = w.balance()? - before;
    // About 9 whole minutes were left (the lease ran for a few seconds): 540 sat, at 60 sat a minute.
    assert!((480..=600).contains(&back) && back % 60 == 0, "refunded {back} sat: {ended}");
    let gone = wait_until("the evicted lease's objects to go", Duration::from_secs(30), || {
        all_lease_objects(&lease_id).ok().filter(|o| o.is_empty())
    });
    assert!(gone.is_ok(), "left behind: {:?}", all_lease_objects(&lease_id));
    Ok(())
}

/// The owner releases a lease early (kind 1004): it goes at once, and its unused whole minutes come back as a
/// token at the rate paid; nobody else can release it.
#[test]
fn the_owner_releases_a_lease_early_and_gets_its_unused_minutes_back() -> Result<()> {
    let p = provider();
    let w = wallet(700);
    let (user, stranger) = (User::new()?, User::new()?);
    let token = w.send(600)?;
    let id = user.publish_nip44(1000, &request_json(&token, "release"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(reply["status"], "ok", "{reply}");
    let lease_id = reply["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let body = serde_json::json!({ "lease": lease_id }).to_string();
    let theirs = stranger.publish_nip44(1004, &body, &p.pubkey)?;
    let refused = stranger.await_reply(&theirs, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(refused["code"], "lease_not_found", "{refused}");
    let before = w.balance()?;
    let rid = user.publish_nip44(1004, &body, &p.pubkey)?;
    let released = user.await_reply(&rid, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(released["status"], "released", "{released}");
    w.receive(released["refund_token"].as_str().unwrap_or_default())?;
    let back = w.balance()? - before;
    assert_eq!(back, released["amount_sats"].as_u64().unwrap_or(0), "{released}");
    assert!((480..=600).contains(&back) && back % 60 == 0, "refunded {back} sat: {released}");
    let gone = wait_until("the released lease's objects to go", Duration::from_secs(30), || {
        all_lease_objects(&lease_id).ok().filter(|o| o.is_empty())
    });
    assert!(gone.is_ok(), "left behind: {:?}", all_lease_objects(&lease_id));
    Ok(())
}

/// Four releases of one lease sent at once (as a tenant racing itself would): the lease ends once and one
/// refund comes back; the other three are told it has already ended.
#[test]
fn four_simultaneous_releases_refund_once() -> Result<()> {
    let p = provider();
    let w = wallet(700);
    let user = User::new()?;
    let token = w.send(600)?;
    let id = user.publish_nip44(1000, &request_json(&token, "release4"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(reply["status"], "ok", "{reply}");
    let lease_id = reply["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let body = serde_json::json!({ "lease": lease_id }).to_string();
    let ids: Vec<String> = std::thread::scope(|s| {
        let sends: Vec<_> = (0..4).map(|_| s.spawn(|| user.publish_nip44(1004, &body, &p.pubkey))).collect();
        sends.into_iter().map(|h| h.join().expect("thread")).collect::<Result<Vec<_>>>()
    })?;
    let before = w.balance()?;
    let mut released = 0;
    for rid in &ids {
        let r = user.await_reply(rid, &p.pubkey, REPLY_TIMEOUT)?;
        match r["status"].as_str() {
            Some("released") => {
                released += 1;
                w.receive(r["refund_token"].as_str().unwrap_or_default())?;
            }
            _ => assert_error(&r, &["lease_expired", "lease_not_found"]),
        }
    }
    let back = w.balance()? - before;
    assert_eq!(released, 1, "one release ends the lease");
    assert!((480..=600).contains(&back), "refunded once: {back} sat");
    Ok(())
}

/// Shortly before a lease ends its owner gets one encrypted notice (kind 1001, tagged with the request that
/// bought it): time left, the price of an hour, the exact top-up command.
#[test]
fn the_owner_is_told_once_before_the_lease_ends() -> Result<()> {
    let extra = [
        ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
        ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
        ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
        ("PAYGRESS_EXPIRY_NOTICES", "20"),
    ];
    let p = Provider::start_ready(&extra, None)?;
    let w = wallet(100);
    let user = User::new()?;
    let token = w.send(40)?;
    let id = user.publish_nip44(1000, &request_json(&token, "noticed"), &p.pubkey)?;
    let reply = user.await_reply_where(&id, &p.pubkey, REPLY_TIMEOUT, |v| v["status"] == "ok")?;
    let lease_id = reply["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let notice = user.await_reply_where(&id, &p.pubkey, Duration::from_secs(60), |v| v["status"] == "notice")?;
    assert_eq!(notice["lease_id"], lease_id.as_str(), "{notice}");
    assert_eq!(notice["sats_per_hour"], 3600, "{notice}");
    assert!(notice["seconds_left"].as_u64().is_some_and(|s| s <= 20), "{notice}");
    assert!(notice["topup_command"]
        .as_str()
        .is_some_and(|c| c.starts_with(&format!("paygress-cli topup {lease_id} "))));
    // Once: after the lease ended, the request has its reply and exactly one notice.
    wait_until("the lease to end", Duration::from_secs(60), || {
        all_lease_objects(&lease_id).ok().filter(|o| o.is_empty())
    })?;
    assert_eq!(user.count_replies(&id, &p.pubkey)?, 2, "one reply and one notice");
    Ok(())
}
