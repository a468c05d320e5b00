//! The provider end to end, as a user drives it: `cashu` for money, `nak` for Nostr, OpenSSH to log in,
//! against the stack's real mint, relay and kube-apiserver. The provider runs as a process with a
//! kubeconfig of its own ServiceAccount from k8s/sidecar-service.yaml, so RBAC is exactly the manifest's.
//! Tor is off here (tests/provider_onion.rs covers it).

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::Value;

const REPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// One provider for this file's tests: each test uses its own users and tokens.
fn provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| Provider::start(ProviderOptions::default()).expect("provider starts"))
}

/// A funded wallet at the whitelisted mint.
fn wallet(sats: u64) -> Wallet {
    let w = Wallet::new(&env("CASHU_MINT_URL")).expect("wallet");
    w.fund(sats).expect("cashu invoice");
    w
}

fn assert_lease(reply: &Value, paid: u64) -> Value {
    assert_eq!(reply["status"], "ok", "reply: {reply}");
    assert_eq!(reply["amount_sats"], paid);
    let access = reply["access"].clone();
    // At 100 sat/h, each sat buys 36 s; the clock started when the token was redeemed.
    let duration = reply["duration_seconds"].as_u64().unwrap();
    let expected = paid * 36;
    assert!(duration <= expected && duration + 120 >= expected, "duration {duration} vs {expected}");
    let expires = access["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expires <= now + expected && expires + 180 >= now + expected);
    assert_eq!(access["namespace"], "user-workloads");
    assert!(access["pod_name"].as_str().unwrap().starts_with("ssh-pod-"));
    assert!(access["host_key_fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let pf = access["port_forward_command"].as_str().unwrap();
    assert_eq!(
        pf,
        format!("kubectl -n user-workloads port-forward svc/{}-ssh 2222:2222", access["pod_name"].as_str().unwrap())
    );
    access
}

/// Logs in with OpenSSH at the pod's endpoint and checks the host key against the reply.
fn assert_ssh_works(access: &Value) {
    let pod = access["pod_name"].as_str().unwrap();
    let ip = pod_ip(pod).unwrap();
    let user = access["ssh_username"].as_str().unwrap();
    let pw = access["ssh_password"].as_str().expect("password");
    let out = ssh_password(&ip, 2222, user, pw, "echo logged-in-as-$USER", None).unwrap();
    assert!(out.contains("logged-in"), "{out}");
    assert!(ssh_password(&ip, 2222, user, "wrong-password", "true", None).is_err());
    assert_eq!(openssh_fingerprint(&ip, 2222).unwrap(), access["host_key_fingerprint"].as_str().unwrap());
    // The Service exists and selects the pod.
    let sel =
        kubectl(&["-n", "user-workloads", "get", "svc", &format!("{pod}-ssh"), "-o", "jsonpath={.spec.ports[0].port}"])
            .unwrap();
    assert_eq!(sel, "2222");
}

#[test]
fn seed_plain_json_request_with_nak_gives_a_lease() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let token = w.send(100)?;
    let user = User::new()?;
    // Exactly the seed's walkthrough: plain JSON content, no p tag, and its Docker Hub short image name.
    let content = format!(
        r#"{{"cashu_token":"{token}","ssh_username":"alice","pod_image":"linuxserver/openssh-server:latest"}}"#
    );
    let id = user.publish(1000, &content, None)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let access = assert_lease(&reply, 100);
    assert_eq!(access["ssh_username"], "alice");
    assert_ssh_works(&access);
    // Labels the reconciler relies on.
    let lease_id = access["lease_id"].as_str().unwrap();
    assert_eq!(pods_of_lease(lease_id)?, 1);
    // The pod runs the reference that was checked, in its canonical form.
    let pod = kubectl_json("pod", access["pod_name"].as_str().unwrap())?.expect("the lease's pod");
    assert_eq!(pod["spec"]["containers"][0]["image"], "docker.io/linuxserver/openssh-server:latest");
    // The token was redeemed: the user can no longer spend it.
    assert!(w.receive(&token).is_err());
    Ok(())
}

#[test]
fn nip44_request_gives_a_lease() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let token = w.send(50)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&token, "bob"), &p.pubkey)?;
    let access = assert_lease(&user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?, 50);
    assert_ssh_works(&access);
    Ok(())
}

#[test]
fn gift_wrapped_request_gives_a_gift_wrapped_lease() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let token = w.send_legacy(60)?; // cashuA, to cover v3 tokens too
    let user = User::new()?;
    let id = user.publish_gift_wrap(1000, &request_json(&token, "carol"), &p.pubkey)?;
    let access = assert_lease(&user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?, 60);
    assert_ssh_works(&access);
    Ok(())
}

#[test]
fn p2pk_locked_token_to_the_provider_is_accepted() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    // Lock to the key the provider advertises in its offer.
    let offer = offer_of(p)?;
    let p2pk = offer["p2pk_pubkey"].as_str().expect("offer has p2pk_pubkey");
    assert_eq!(&p2pk[2..], p.pubkey, "P2PK key is the provider's Nostr key");
    let token = w.send_locked(40, p2pk)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&token, "dave"), &p.pubkey)?;
    assert_lease(&user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?, 40);
    Ok(())
}

/// The provider's offer (kind 38400) as published on the relay.
fn offer_of(p: &Provider) -> Result<Value> {
    let out = std::process::Command::new("nak")
        .args(["req", "-k", "38400", "-a", &p.pubkey, "--limit", "1", &relay()])
        .output()?;
    let event: Value = serde_json::from_slice(&out.stdout)?;
    Ok(serde_json::from_str(event["content"].as_str().unwrap_or_default())?)
}

fn assert_refused(user: &User, provider: &Provider, id: &str, code: &str) {
    let reply = user.await_reply(id, &provider.pubkey, REPLY_TIMEOUT).unwrap();
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert!(reply.get("refund_token").is_none() || reply["refund_token"].is_null());
}

#[test]
fn bad_inputs_get_their_code_create_nothing_and_keep_tokens_unspent() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let alt = Wallet::new(&env("CASHU_MINT_URL_ALT"))?;
    alt.fund(200)?;
    let user = User::new()?;

    let body = |token: &str, extra: Value| {
        let mut v = serde_json::json!({"cashu_token": token, "ssh_username": "erin"});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        v.to_string()
    };

    // Malformed JSON, garbage and oversize content, addressed to the provider.
    let id = user.publish(1000, "{\"cashu_token\": ", Some(&p.pubkey))?;
    assert_refused(&user, p, &id, "invalid_request");
    let id = user.publish(1000, "\u{1}\u{2} garbage \u{3}", Some(&p.pubkey))?;
    assert_refused(&user, p, &id, "invalid_request");
    let id = user.publish(1000, &"x".repeat(40 * 1024), Some(&p.pubkey))?;
    assert_refused(&user, p, &id, "content_too_large");

    // A real second mint that is not whitelisted.
    let t = alt.send(100)?;
    let id = user.publish_nip44(1000, &body(&t, Value::Null), &p.pubkey)?;
    assert_refused(&user, p, &id, "mint_not_allowed");
    alt.receive(&t)?;

    // Wrong unit: the same money re-labelled (cashuA JSON) as usd.
    let t = w.send_legacy(100)?;
    let relabelled = relabel_unit(&t, "usd")?;
    let id = user.publish_nip44(1000, &body(&relabelled, Value::Null), &p.pubkey)?;
    assert_refused(&user, p, &id, "unit_not_supported");
    w.receive(&t)?;

    // A spent token.
    let t = w.send(100)?;
    w.receive(&t)?;
    let id = user.publish_nip44(1000, &body(&t, Value::Null), &p.pubkey)?;
    assert_refused(&user, p, &id, "token_spent");

    // Too small an amount (the minimum lease, 60 s at 100 sat/h, costs 2 sat).
    let t = w.send(1)?;
    let id = user.publish_nip44(1000, &body(&t, Value::Null), &p.pubkey)?;
    assert_refused(&user, p, &id, "amount_too_small");
    w.receive(&t)?;

    // A disallowed image, and an invalid username.
    let t = w.send(100)?;
    let id = user.publish_nip44(
        1000,
        &body(&t, serde_json::json!({"pod_image": "docker.io/library/alpine:latest"})),
        &p.pubkey,
    )?;
    assert_refused(&user, p, &id, "image_not_allowed");
    let id = user.publish_nip44(1000, &body(&t, serde_json::json!({"ssh_username": "root; rm -rf /"})), &p.pubkey)?;
    assert_refused(&user, p, &id, "invalid_username");
    w.receive(&t)?;

    assert_eq!(pods_of_requester(&user.pubkey)?, 0, "nothing may be provisioned for bad input");
    Ok(())
}

/// Re-encode a cashuA token with another unit.
fn relabel_unit(token: &str, unit: &str) -> Result<String> {
    use base64::Engine as _;
    let b64 = token.trim_start_matches("cashuA");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(b64))?;
    let mut v: Value = serde_json::from_slice(&raw)?;
    v["unit"] = Value::String(unit.into());
    Ok(format!("cashuA{}", base64::engine::general_purpose::URL_SAFE.encode(v.to_string())))
}

#[test]
fn the_same_token_in_two_requests_gives_one_lease() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let token = w.send(30)?;
    let (a, b) = (User::new()?, User::new()?);
    let id_a = a.publish_nip44(1000, &request_json(&token, "frank"), &p.pubkey)?;
    let id_b = b.publish_nip44(1000, &request_json(&token, "grace"), &p.pubkey)?;
    let ra = a.await_reply(&id_a, &p.pubkey, REPLY_TIMEOUT)?;
    let rb = b.await_reply(&id_b, &p.pubkey, REPLY_TIMEOUT)?;
    let oks = [&ra, &rb].iter().filter(|r| r["status"] == "ok").count();
    assert_eq!(oks, 1, "{ra}\n{rb}");
    let err = if ra["status"] == "ok" { &rb } else { &ra };
    assert_eq!(err["code"], "token_spent");
    // Re-publishing the winning event (a replay) changes nothing either.
    Ok(())
}

#[test]
fn requests_from_twenty_keys_at_once_are_all_served() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let tokens: Vec<String> = (0..20).map(|_| w.send(10)).collect::<Result<_>>()?;
    let users: Vec<User> = (0..20).map(|_| User::new()).collect::<Result<_>>()?;
    let ids: Vec<String> = users
        .iter()
        .zip(&tokens)
        .map(|(u, t)| u.publish_nip44(1000, &request_json(t, "load"), &p.pubkey))
        .collect::<Result<_>>()?;
    let handles: Vec<_> = users
        .into_iter()
        .zip(ids)
        .map(|(u, id)| {
            let pk = p.pubkey.clone();
            std::thread::spawn(move || u.await_reply(&id, &pk, Duration::from_secs(240)))
        })
        .collect();
    let mut served = 0;
    for h in handles {
        let reply = h.join().expect("thread")?;
        assert_eq!(reply["status"], "ok", "{reply}");
        served += 1;
    }
    assert_eq!(served, 20);
    Ok(())
}

#[test]
fn no_secret_reaches_the_provider_log() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let token = w.send(20)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&token, "heidi"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let pw = reply["access"]["ssh_password"].as_str().unwrap().to_string();
    let log = p.log_text();
    assert!(!log.contains(&token[..40]), "token in log");
    assert!(!log.contains(&pw), "password in log");
    assert!(!log.contains(&p.nsec_hex), "nsec in log");
    Ok(())
}

/// The offer's NUT-18 payment request over its own transport, as a NUT-18 wallet pays it: `cashu pay` makes the
/// token the request asks for (its amount, P2PK-locked to the provider), and the payload `{id, memo, mint, unit,
/// proofs}` goes as a NIP-17 message to the nprofile's key. The provider takes it as a lease of the default tier
/// and answers the payer in a NIP-17 chat message its client shows; a payload for another payment id is not the provider's to redeem and stays unspent.
#[test]
fn nut18_payload_over_the_offers_nostr_transport_buys_a_lease() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let offer = offer_of(p)?;
    let creq = offer["payment_request"].as_str().expect("offer has payment_request").to_string();
    let pr = w.decode(&creq)?;
    assert_eq!(pr["a"], 100, "an hour of the default tier: {pr}");
    assert_eq!(pr["u"], "sat");
    assert_eq!(pr["m"], offer["accepted_mints"]);
    assert_eq!(pr["nut10"]["k"], "P2PK");
    assert_eq!(pr["nut10"]["d"], offer["p2pk_pubkey"]);
    let t = &pr["t"][0];
    assert_eq!(t["t"], "nostr", "{pr}");
    assert_eq!(t["g"], serde_json::json!([["n", "17"]]), "{pr}");
    let nprofile = t["a"].as_str().expect("target");
    let decoded: Value = serde_json::from_str(&run(std::process::Command::new("nak").args(["decode", nprofile]))?)?;
    assert_eq!(decoded["pubkey"], p.pubkey.as_str(), "{decoded}");

    // A payload names proofs by their full keyset id; a v4 token only by its short form (NUT-02).
    let keysets: Value = serde_json::from_str(&run(
        std::process::Command::new("curl").args(["-sS", &format!("{}/v1/keysets", env("CASHU_MINT_URL"))])
    )?)?;
    let full_id = |short: &str| {
        keysets["keysets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["id"].as_str())
            .find(|id| id.starts_with(short))
            .unwrap_or(short)
            .to_string()
    };
    let payload = |token: &str, id: &str| -> Result<String> {
        // `cashu decode` prints a v4 token compactly: {m, u, t: [{i, p: [{a, s, c}]}]}.
        let v = w.decode(token)?;
        let mut proofs = Vec::new();
        for group in v["t"].as_array().into_iter().flatten() {
            let keyset = full_id(group["i"].as_str().unwrap_or_default());
            for pf in group["p"].as_array().into_iter().flatten() {
                proofs.push(serde_json::json!({"amount": pf["a"], "id": keyset, "secret": pf["s"], "C": pf["c"]}));
            }
        }
        Ok(serde_json::json!({"id": id, "memo": "nut18", "mint": v["m"], "unit": v["u"], "proofs": proofs}).to_string())
    };
    let token = w.pay_request(&creq)?;
    let user = User::new()?;
    let id = user.publish_gift_wrap(14, &payload(&token, "paygress-lease")?, &p.pubkey)?;
    // The payer's client shows chat messages: the answer is one, in words (the login and password), with
    // the reply's JSON after them.
    let chat = user.await_chat(&id, &p.pubkey, REPLY_TIMEOUT).map_err(|e| anyhow::anyhow!("{e}\n{}", p.log_tail()))?;
    let (words, json) = chat.split_once("\n\n").unwrap_or_default();
    let reply: Value = serde_json::from_str(json)?;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert!(
        words.contains("Log in: ")
            && words.contains(&format!("Password: {}", reply["access"]["ssh_password"].as_str().unwrap_or("?"))),
        "{words}"
    );
    assert!(reply["duration_seconds"].as_u64().is_some_and(|d| (3550..=3600).contains(&d)), "{reply}");
    assert!(reply["access"]["ssh_password"].is_string(), "a password, as no key came: {reply}");
    delete_lease(reply["access"]["lease_id"].as_str().unwrap_or_default());

    // Someone else's payment request id: ignored, the (unlocked) proofs left alone.
    let other = w.send(30)?;
    let id = user.publish_gift_wrap(14, &payload(&other, "someone-elses-invoice")?, &p.pubkey)?;
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(user.count_replies(&id, &p.pubkey)?, 0);
    w.receive(&other).expect("the proofs are still the payer's");
    Ok(())
}
