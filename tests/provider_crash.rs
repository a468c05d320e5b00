//! Crash safety: the provider is killed (PAYGRESS_FAILPOINT aborts it, as kill -9 would) at each step of a
//! paid lease request, then restarted on the same state dir without the failpoint. Whatever the kill point,
//! the requester gets exactly one reply with a working lease, the cluster holds exactly one set of objects
//! for it, the token was redeemed once, and every sat paid is in the provider's wallet.
//! The target dir is shared between worktrees: run with PAYGRESS_TEST_BIN=<a copy of this branch's binary>
//! (see common::paygress_bin); the test checks that the binary knows the failpoints.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;

const PAID: u64 = 120;

fn base_env() -> Vec<(String, String)> {
    [
        ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
        ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
        ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
        ("PAYGRESS_RESUME_INTERVAL_SECONDS", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn crash_and_recover(point: &str) -> Result<()> {
    // The failpoints must be in the binary under test, and documented (see common::paygress_bin).
    let help = paygress_help()?;
    assert!(help.contains("PAYGRESS_FAILPOINT") && help.contains(point), "binary without failpoint {point}:\n{help}");
    let mut env_fp = base_env();
    env_fp.push(("PAYGRESS_FAILPOINT".into(), point.into()));
    let mut first = Provider::start(ProviderOptions { extra_env: env_fp, ..Default::default() })?;
    let state = first.keep_state();
    let state_dir = first.state_dir.clone();

    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(200)?;
    let user = User::new()?;
    let token = w.send(PAID)?;
    let id = user.publish_nip44(1000, &request_json(&token, "crash"), &first.pubkey)?;
    let lease_id = lease_id_for(&first.nsec_hex, &id);
    let t0 = Instant::now();

    // (The babysitter's exit status says nothing about the provider's; its log does.)
    let exited = first.wait_exit(Duration::from_secs(180));
    let _ = std::fs::copy(&first.log, std::env::temp_dir().join(format!("paygress-crash-{point}.log")));
    exited?;
    let died_after = t0.elapsed();
    assert!(first.log_text().contains("PAYGRESS_FAILPOINT reached"), "{}", first.log_tail());
    let left = all_lease_objects(&lease_id)?;
    let replies_before = user.count_replies(&id, &first.pubkey)?;
    assert_eq!(replies_before, 0, "no reply may go out before the kill point");
    let provider_pk = first.pubkey.clone();
    drop(first);

    let t1 = Instant::now();
    let mut second = Provider::start(ProviderOptions {
        extra_env: base_env(),
        state_dir: Some(state_dir.clone()),
        ..Default::default()
    })?;
    assert_eq!(second.pubkey, provider_pk, "same state dir, same provider key");
    let reply = user.await_reply(&id, &second.pubkey, Duration::from_secs(180))?;
    let recovered_after = t1.elapsed();
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["amount_sats"], PAID, "{reply}");
    let access = &reply["access"];
    assert_eq!(access["lease_id"], lease_id.as_str());

    // The lease works: log in with the password of the reply (the pod must have been made with it).
    let pod = access["pod_name"].as_str().unwrap_or_default().to_string();
    let ip = pod_ip(&pod)?;
    let pw = access["ssh_password"].as_str().unwrap_or_default();
    assert!(ssh_password(&ip, 2222, "crash", pw, "echo alive", None)?.contains("alive"));

    // Exactly one reply, even after a few resume passes.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(user.count_replies(&id, &second.pubkey)?, 1, "exactly one reply");

    // Exactly one set of objects: one pod (no duplicate under another name), its Service, its auth Secret.
    assert_eq!(lease_objects("pods", &lease_id)?, vec![pod.clone()]);
    assert_eq!(pods_of_requester(&user.pubkey)?, 1, "no second pod for this request");
    assert_eq!(lease_objects("services", &lease_id)?, vec![format!("{pod}-ssh")]);
    assert_eq!(lease_objects("secrets", &lease_id)?, vec![format!("{pod}-auth")]);

    // The token was redeemed, once: the user cannot spend it any more.
    assert!(w.receive(&token).is_err(), "the token must be spent");

    // Zero loss: every sat paid is in the provider's wallet (read with the provider stopped).
    let metrics = second.metrics().unwrap_or_default();
    second.stop()?;
    let balance = second.wallet_balance()?;
    println!(
        "kill point {point}: died {:.1}s after the request; left in the cluster: {left:?}; after restart the \
         reply came in {:.1}s; wallet {balance} sat of {PAID} paid; restarted process counted {} sat received",
        died_after.as_secs_f64(),
        recovered_after.as_secs_f64(),
        metrics
            .lines()
            .find(|l| l.starts_with("paygress_sats_received_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
    );
    assert_eq!(balance, PAID, "sats lost at kill point {point}");

    delete_lease(&lease_id);
    drop(state);
    Ok(())
}

#[test]
fn crash_after_redeem() -> Result<()> {
    crash_and_recover("after_redeem")
}

#[test]
fn crash_after_pod_create() -> Result<()> {
    crash_and_recover("after_pod_create")
}

#[test]
fn crash_after_ready() -> Result<()> {
    crash_and_recover("after_ready")
}

#[test]
fn crash_after_onion_is_the_ready_point_without_tor() -> Result<()> {
    crash_and_recover("after_onion")
}

#[test]
fn crash_before_reply() -> Result<()> {
    crash_and_recover("before_reply")
}

/// The pool's step: the provider dies after taking a published pool slot's key (its Secret deleted) and
/// before the lease's Secret holds it. The restarted provider finishes the lease, paid once; the taken
/// slot's address is never handed out (not in the reply, not back in the pool).
#[test]
fn crash_after_pool_take() -> Result<()> {
    let help = paygress_help()?;
    assert!(help.contains("after_pool_take"), "binary without failpoint after_pool_take");
    wait_tor_can_host_onions();
    let with_pool = |extra: &[(&str, &str)]| {
        let mut e = base_env();
        e.push(("PAYGRESS_ONION_POOL".into(), "1".into()));
        e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        e
    };
    let pooled = "paygress_onion_services{status=\"pooled\"}";
    let mut first = Provider::start(ProviderOptions {
        enable_tor: true,
        extra_env: with_pool(&[("PAYGRESS_FAILPOINT", "after_pool_take")]),
        ..Default::default()
    })?;
    let state = first.keep_state();
    let state_dir = first.state_dir.clone();
    wait_until("pool slot published", Duration::from_secs(240), || (first.metric(pooled) == Some(1.0)).then_some(()))?;
    let slot = first.pool_addresses()?;
    assert_eq!(slot.len(), 1);

    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(200)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&w.send(PAID)?, "crash"), &first.pubkey)?;
    let lease_id = lease_id_for(&first.nsec_hex, &id);
    first.wait_exit(Duration::from_secs(180))?;
    assert!(first.log_text().contains("PAYGRESS_FAILPOINT reached"), "{}", first.log_tail());
    // (The filler may already have stored the next slot's key.)
    assert!(!first.pool_addresses()?.contains(&slot[0]), "the slot's Secret was taken before the kill point");
    assert_eq!(user.count_replies(&id, &first.pubkey)?, 0);
    drop(first);

    let second = Provider::start(ProviderOptions {
        enable_tor: true,
        extra_env: with_pool(&[]),
        state_dir: Some(state_dir),
        ..Default::default()
    })?;
    let reply = user.await_reply(&id, &second.pubkey, Duration::from_secs(240))?;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["amount_sats"], PAID, "{reply}");
    let onion = reply["access"]["onion_address"].as_str().unwrap_or_default().to_string();
    assert!(onion.ends_with(".onion"), "{reply}");
    assert!(!slot.contains(&onion), "the address whose key was lost in the crash was handed out");
    wait_until("pool refilled", Duration::from_secs(240), || (second.metric(pooled) == Some(1.0)).then_some(()))?;
    assert!(!second.pool_addresses()?.iter().any(|a| slot.contains(a) || *a == onion));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(user.count_replies(&id, &second.pubkey)?, 1, "exactly one reply");
    assert_eq!(pods_of_requester(&user.pubkey)?, 1);
    delete_lease(&lease_id);
    second.delete_pool_secrets();
    drop(state);
    Ok(())
}
