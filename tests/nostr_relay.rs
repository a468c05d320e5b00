//! Black-box tests of the Nostr front end against the stack's independent relay (Python nostr-relay),
//! with `nak` (Go, go-nostr) as the independent client: its events, its NIP-44 and its gift wraps.
//!
//! Needs the stack env (`. ~/.cache/paygress/stack/env.sh`, or run through scripts/test): NOSTR_RELAYS and
//! a `nak` on PATH that has `encrypt`, `decrypt` and `gift`.
//!
//! The relay is shared: other tests may post kind-1000 events too, so every wait below looks only for
//! events of this test's fresh requester key.

use std::process::Stdio;
use std::time::Duration;

use nostr_sdk::nips::nip44;
use nostr_sdk::nips::nip59::UnwrappedGift;
use nostr_sdk::prelude::{Client, Event, EventBuilder, JsonUtil, Keys, Kind, Tag, ToBech32};
use paygress::lease::ports::{ReplyPort, ReplyRoute, ReplyVia};
use paygress::lease::Incoming;
use paygress::nostr::{NostrFrontend, NostrOptions};
use paygress::protocol::{ErrorCode, LeaseStatus, Offer, Reply, Tier};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Upper bound for something that normally takes milliseconds; only there so a broken build fails
/// instead of hanging. Not a performance assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn relays() -> Vec<String> {
    let v = std::env::var("NOSTR_RELAYS").unwrap_or_default();
    let relays: Vec<String> = v.split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect();
    assert!(!relays.is_empty(), "run through scripts/test (stack env missing: NOSTR_RELAYS)");
    relays
}

struct NakOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn nak(args: &[&str], stdin: Option<&str>) -> NakOut {
    let mut child = tokio::process::Command::new("nak")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run through scripts/test (stack env missing: nak on PATH): {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input.as_bytes()).await.unwrap();
        w.write_all(b"\n").await.unwrap();
        drop(w);
    }
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output()).await.expect("nak hung").unwrap();
    NakOut {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

async fn nak_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = nak(args, stdin).await;
    assert!(out.ok, "nak {args:?} failed: {}", out.stderr);
    out.stdout
}

async fn require_nak_crypto() {
    let help = nak(&["--help"], None).await;
    for cmd in ["encrypt", "decrypt", "gift"] {
        assert!(
            help.stdout.contains(cmd) || help.stderr.contains(cmd),
            "the stack's nak has no `{cmd}` (NIP-44 / NIP-59) command: {}",
            help.stdout
        );
    }
}

fn offer(pk: &str) -> Offer {
    Offer {
        provider_pubkey: pk.to_string(),
        tiers: vec![Tier::new("basic", "500m", "512Mi", 100)],
        default_tier: "basic".into(),
        accepted_mints: vec!["http://127.0.0.1:3338".into()],
        unit: "sat".into(),
        min_duration_seconds: 60,
        max_duration_seconds: 86_400,
        onion_access: true,
        p2pk_pubkey: format!("02{}", "11".repeat(32)),
        default_image: "img".into(),
        allowed_images: vec!["img".into()],
        ssh_port: 2222,
        request_kind: 1000,
        reply_kind: 1001,
        topup_kind: 1002,
        status_kind: 1003,
        release_kind: 1004,
        release_rule: paygress::protocol::RELEASE_RULE.into(),
        heartbeat_seconds: 60,
        payment_request: String::new(),
    }
}

struct Provider {
    keys: Keys,
    frontend: NostrFrontend,
    rx: mpsc::Receiver<Incoming>,
}

async fn provider() -> Provider {
    let keys = Keys::generate();
    let (tx, rx) = mpsc::channel(8);
    let opts = NostrOptions::new(relays(), Duration::from_secs(300));
    let frontend = NostrFrontend::start(keys.clone(), opts, offer(&keys.public_key().to_hex()), tx)
        .await
        .expect("front end starts");
    let mut connected = frontend.watch_connected_relays();
    tokio::time::timeout(PATIENCE, connected.wait_for(|n| *n >= 1)).await.expect("no relay connected").unwrap();
    Provider { keys, frontend, rx }
}

/// The next Incoming whose requester is `who` (events of other tests on the shared relay are skipped).
async fn next_from(rx: &mut mpsc::Receiver<Incoming>, who: &Keys) -> Incoming {
    let hex = who.public_key().to_hex();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let inc = rx.recv().await.expect("front end stopped");
            if inc.route().requester == hex {
                return inc;
            }
        }
    })
    .await
    .expect("no request arrived from the front end")
}

fn secret_hex(k: &Keys) -> String {
    k.secret_key().to_secret_hex()
}

fn tag_values(ev: &serde_json::Value, name: &str) -> Vec<String> {
    ev["tags"].as_array().unwrap().iter().filter(|t| t[0] == name).map(|t| t[1].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn nak_seed_request_arrives_garbage_is_skipped_and_replays_keep_the_request_id() {
    let mut p = provider().await;
    let relay = relays()[0].clone();
    let alice = Keys::generate();
    let sec = secret_hex(&alice);

    // Someone else's kind 1000, not addressed to us: must be skipped silently, so the first thing we
    // get from alice is the real request published after it.
    nak_ok(&["event", "--kind", "1000", "-c", "not ours", "--sec", &sec, &relay], None).await;
    let ev = nak_ok(
        &[
            "event",
            "--kind",
            "1000",
            "-c",
            r#"{"cashu_token":"cashuBx","ssh_username":"alice"}"#,
            "--sec",
            &sec,
            &relay,
        ],
        None,
    )
    .await;
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let id = ev["id"].as_str().unwrap().to_string();

    let first = next_from(&mut p.rx, &alice).await;
    let Incoming::Create { route, request } = &first else { panic!("expected Create, got {first:?}") };
    assert_eq!(route.request_id, id);
    assert_eq!(route.requester, alice.public_key().to_hex());
    assert_eq!(route.via, ReplyVia::Nip44);
    assert_eq!(request.cashu_token, "cashuBx");
    assert_eq!(request.ssh_username.as_deref(), Some("alice"));

    // The same signed event again: this relay refuses duplicates ("duplicate: exists") and does not
    // broadcast them, so the replay reaches us when the subscription is re-issued (as after a reconnect
    // or an overflow). It must carry the same request id: the journal dedupes on it.
    let again = nak(&["event", &relay], Some(&ev.to_string())).await;
    assert!(again.ok || again.stderr.contains("duplicate"), "{}", again.stderr);
    p.frontend.resubscribe().await.unwrap();
    let second = next_from(&mut p.rx, &alice).await;
    assert_eq!(second, first);
    p.frontend.shutdown().await;
}

#[tokio::test]
async fn nak_nip44_request_and_reply_decrypted_by_nak() {
    require_nak_crypto().await;
    let mut p = provider().await;
    let relay = relays()[0].clone();
    let bob = Keys::generate();
    let (bob_sec, bob_pk) = (secret_hex(&bob), bob.public_key().to_hex());
    let prov_pk = p.keys.public_key().to_hex();

    // Request: NIP-44 by nak (independent implementation) to the provider, p-tagged.
    let body = r#"{"lease":"lease-42"}"#;
    let ct = nak_ok(&["encrypt", "--sec", &bob_sec, "-p", &prov_pk, body], None).await;
    let ev = nak_ok(&["event", "--kind", "1003", "-c", &ct, "-p", &prov_pk, "--sec", &bob_sec, &relay], None).await;
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let inc = next_from(&mut p.rx, &bob).await;
    let Incoming::Status { route, request } = &inc else { panic!("expected Status, got {inc:?}") };
    assert_eq!(request.lease, "lease-42");
    assert_eq!(route.request_id, ev["id"].as_str().unwrap());
    assert_eq!(route.via, ReplyVia::Nip44);

    // Garbage addressed to us is answered (Invalid), not dropped.
    nak_ok(&["event", "--kind", "1002", "-c", "zzz", "-p", &prov_pk, "--sec", &bob_sec, &relay], None).await;
    let inc = next_from(&mut p.rx, &bob).await;
    assert!(matches!(inc, Incoming::Invalid { code: ErrorCode::InvalidRequest, .. }), "{inc:?}");

    // Reply through the port; bob fetches it with nak and decrypts it with nak.
    let reply = Reply::Status {
        request_id: route.request_id.clone(),
        lease: LeaseStatus {
            lease_id: "lease-42".into(),
            pod_name: "ssh-pod-lease-42".into(),
            state: "active".into(),
            expires_at: 1_900_000_000,
            seconds_remaining: 3600,
        },
    };
    p.frontend.send(route, &reply).await.expect("reply accepted");
    let got = nak_ok(&["req", "-k", "1001", "-p", &bob_pk, "-a", &prov_pk, &relay], None).await;
    let events: Vec<serde_json::Value> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| tag_values(e, "e").contains(&route.request_id))
        .collect();
    assert_eq!(events.len(), 1, "{got}");
    let reply_ev = &events[0];
    assert_eq!(tag_values(reply_ev, "p"), vec![bob_pk.clone()]);
    let content = reply_ev["content"].as_str().unwrap();
    assert!(!content.contains("lease-42"), "reply must be encrypted");
    let plain = nak_ok(&["decrypt", "--sec", &bob_sec, "-p", &prov_pk, content], None).await;
    assert_eq!(serde_json::from_str::<Reply>(&plain).unwrap(), reply);
    // nak's own signature check of the event as served by the relay.
    nak_ok(&["verify"], Some(&reply_ev.to_string())).await;

    // In-band routes send nothing and succeed.
    let inband = ReplyRoute { via: ReplyVia::InBand, ..route.clone() };
    p.frontend.send(&inband, &reply).await.unwrap();
    p.frontend.shutdown().await;
}

#[tokio::test]
async fn gift_wrapped_requests_from_nostr_sdk_and_nak_round_trip() {
    require_nak_crypto().await;
    let mut p = provider().await;
    let relay = relays()[0].clone();
    let prov_pk = p.keys.public_key();
    let carol = Keys::generate();

    // (1) nostr-sdk client, another key, gift-wrapped kind 1000 rumor.
    let client = Client::new(carol.clone());
    client.add_relay(relay.as_str()).await.unwrap();
    client.connect().await;
    client.wait_for_connection(PATIENCE).await;
    let mut rumor = EventBuilder::new(Kind::from(1000u16), r#"{"cashu_token":"cashuBgw"}"#).build(carol.public_key());
    let rumor_id = rumor.id().to_hex();
    let wrap = EventBuilder::gift_wrap(&carol, &prov_pk, rumor, []).await.unwrap();
    let out = client.send_event(&wrap).await.unwrap();
    assert!(!out.success.is_empty(), "relay refused the gift wrap: {:?}", out.failed);

    let inc = next_from(&mut p.rx, &carol).await;
    let Incoming::Create { route, request } = &inc else { panic!("expected Create, got {inc:?}") };
    assert_eq!(route.via, ReplyVia::GiftWrap);
    assert_eq!(route.request_id, rumor_id);
    assert_eq!(request.cashu_token, "cashuBgw");

    // Gift-wrapped reply: unwraps for carol (nostr-sdk) into a kind-1001 rumor from the provider.
    let reply = Reply::error(&rumor_id, ErrorCode::TokenSpent, "token already spent");
    p.frontend.send(route, &reply).await.expect("reply accepted");
    let filter = nostr_sdk::prelude::Filter::new().kind(Kind::GiftWrap).pubkey(carol.public_key());
    let wraps = client.fetch_events(filter, PATIENCE).await.unwrap();
    let mut found = None;
    for w in wraps.iter() {
        let g = UnwrappedGift::from_gift_wrap(&carol, w).await.unwrap();
        if g.rumor.tags.iter().any(|t| t.as_slice() == ["e", rumor_id.as_str()]) {
            found = Some((w.clone(), g));
        }
    }
    let (reply_wrap, gift) = found.expect("gift-wrapped reply on the relay");
    assert_eq!(gift.sender, prov_pk);
    assert_eq!(gift.rumor.kind, Kind::from(1001u16));
    assert_eq!(serde_json::from_str::<Reply>(&gift.rumor.content).unwrap(), reply);

    // ... and for nak, an independent NIP-59 implementation, checking the seal's signer.
    let rumor_json = nak_ok(
        &["gift", "unwrap", "--sec", &secret_hex(&carol), "--from", &prov_pk.to_hex()],
        Some(&reply_wrap.as_json()),
    )
    .await;
    let r: serde_json::Value = serde_json::from_str(&rumor_json).unwrap();
    assert_eq!(r["kind"], 1001);
    assert_eq!(r["pubkey"], prov_pk.to_hex());
    assert_eq!(serde_json::from_str::<Reply>(r["content"].as_str().unwrap()).unwrap(), reply);

    // (2) nak-built gift wrap of a kind-1002 rumor, published with nak.
    let dave = Keys::generate();
    let tmpl = r#"{"kind":1002,"content":"{\"cashu_token\":\"cashuBtop\",\"lease\":\"L7\"}","tags":[]}"#;
    let wrapped =
        nak_ok(&["gift", "wrap", "--sec", &secret_hex(&dave), "-p", &prov_pk.to_bech32().unwrap()], Some(tmpl)).await;
    nak_ok(&["event", &relay], Some(&wrapped)).await;
    let inc = next_from(&mut p.rx, &dave).await;
    let Incoming::TopUp { route, request } = &inc else { panic!("expected TopUp, got {inc:?}") };
    assert_eq!(route.via, ReplyVia::GiftWrap);
    assert_eq!(request.lease, "L7");
    client.shutdown().await;
    p.frontend.shutdown().await;
}

/// A relay replays every gift wrap of the lookback window (days wide: NIP-59 back-dates wraps) on each
/// re-subscription: each wrap is opened once all the same, and the periodic pass does not ask again.
#[tokio::test]
async fn a_replayed_gift_wrap_is_opened_once() {
    // Its own front end, keyed fresh: only this test's wraps are addressed to it.
    let mut p = provider().await;
    let relay = relays()[0].clone();
    let erin = Keys::generate();
    let client = Client::new(erin.clone());
    client.add_relay(relay.as_str()).await.unwrap();
    client.connect().await;
    client.wait_for_connection(PATIENCE).await;
    let rumor = EventBuilder::new(Kind::from(1003u16), r#"{"lease":"L1"}"#).build(erin.public_key());
    let wrap = EventBuilder::gift_wrap(&erin, &p.keys.public_key(), rumor, []).await.unwrap();
    assert!(!client.send_event(&wrap).await.unwrap().success.is_empty());
    next_from(&mut p.rx, &erin).await;
    assert_eq!(p.frontend.gift_wraps_opened(), 1);
    // Re-subscribing (as after a notification overflow) replays the wrap; it is not opened again.
    for _ in 0..3 {
        p.frontend.resubscribe().await.expect("resubscribe");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.frontend.gift_wraps_opened(), 1, "replays were decrypted again");
    while let Ok(inc) = p.rx.try_recv() {
        // Other tests' kind-1000 events share the relay; none of erin's may come again.
        assert_ne!(inc.route().requester, erin.public_key().to_hex(), "a replay was handed on again");
    }
    client.shutdown().await;
    p.frontend.shutdown().await;
}

#[tokio::test]
async fn impersonating_gift_wrap_is_dropped() {
    let mut p = provider().await;
    let relay = relays()[0].clone();
    let (alice, mallory) = (Keys::generate(), Keys::generate());
    let us = p.keys.public_key();

    // mallory seals a rumor that claims alice as its author.
    let mut rumor = EventBuilder::new(Kind::from(1003u16), r#"{"lease":"alice-lease"}"#).build(alice.public_key());
    rumor.ensure_id();
    let sealed = nip44::encrypt(mallory.secret_key(), &us, rumor.as_json(), nip44::Version::V2).unwrap();
    let seal = EventBuilder::new(Kind::Seal, sealed).sign_with_keys(&mallory).unwrap();
    let eph = Keys::generate();
    let wrapped = nip44::encrypt(eph.secret_key(), &us, seal.as_json(), nip44::Version::V2).unwrap();
    let wrap: Event = EventBuilder::new(Kind::GiftWrap, wrapped).tag(Tag::public_key(us)).sign_with_keys(&eph).unwrap();
    nak_ok(&["event", &relay], Some(&wrap.as_json())).await;

    // Then a genuine request from alice: it must be the first thing attributed to her.
    let ev = nak_ok(
        &["event", "--kind", "1000", "-c", r#"{"cashu_token":"cashuBreal"}"#, "--sec", &secret_hex(&alice), &relay],
        None,
    )
    .await;
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let inc = next_from(&mut p.rx, &alice).await;
    assert_eq!(inc.route().request_id, ev["id"].as_str().unwrap(), "{inc:?}");
    assert!(matches!(inc, Incoming::Create { .. }));
    p.frontend.shutdown().await;
}

#[tokio::test]
async fn offer_is_fetchable_with_nak() {
    let p = provider().await;
    let relay = relays()[0].clone();
    let pk = p.keys.public_key().to_hex();
    // start() publishes the offer from a background task; poll until the relay has it.
    let got = tokio::time::timeout(PATIENCE, async {
        loop {
            let out = nak_ok(&["req", "-k", "38400", "-a", &pk, &relay], None).await;
            if !out.is_empty() {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("offer never appeared on the relay");
    let ev: serde_json::Value = serde_json::from_str(got.lines().next().unwrap()).unwrap();
    assert_eq!(tag_values(&ev, "d"), vec!["paygress-offer".to_string()]);
    let exp: u64 = tag_values(&ev, "expiration")[0].parse().unwrap();
    assert!(exp > ev["created_at"].as_u64().unwrap());
    let o: Offer = serde_json::from_str(ev["content"].as_str().unwrap()).unwrap();
    assert_eq!(o, offer(&pk));

    // Re-publishing replaces it (addressable): still exactly one offer event for our key.
    p.frontend.publish_offer().await.unwrap();
    let out = nak_ok(&["req", "-k", "38400", "-a", &pk, &relay], None).await;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(p.frontend.connected_relays() >= 1);
    p.frontend.shutdown().await;
}

/// A renter who knows nothing but a relay finds the provider with standard events, fetched by nak: its
/// profile, its relay lists (NIP-65; NIP-17's inbox relays, where gift wraps must go) and a NIP-89 handler
/// naming the kinds it serves, beside its offer.
#[tokio::test]
async fn profile_relay_lists_and_handler_are_fetchable_with_nak() {
    let p = provider().await;
    let relay = relays()[0].clone();
    let pk = p.keys.public_key().to_hex();
    let fetch = |kind: &'static str| {
        let (pk, relay) = (pk.clone(), relay.clone());
        async move {
            tokio::time::timeout(PATIENCE, async {
                loop {
                    let out = nak_ok(&["req", "-k", kind, "-a", &pk, &relay], None).await;
                    if let Some(line) = out.lines().next() {
                        return serde_json::from_str::<serde_json::Value>(line).unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no kind {kind} event of the provider on the relay"))
        }
    };
    let profile = fetch("0").await;
    let meta: serde_json::Value = serde_json::from_str(profile["content"].as_str().unwrap()).unwrap();
    assert_eq!(meta["name"], "Paygress provider");
    assert_eq!(tag_values(&fetch("10002").await, "r"), relays());
    assert_eq!(tag_values(&fetch("10050").await, "relay"), relays());
    let handler = fetch("31990").await;
    assert_eq!(tag_values(&handler, "d"), vec!["paygress".to_string()]);
    let kinds = tag_values(&handler, "k");
    for k in ["1000", "1002", "1003", "1004", "38400"] {
        assert!(kinds.contains(&k.to_string()), "{k} not in {kinds:?}");
    }
    // Found by what it handles, with no key known: `nak req -k 31990 -t k=1000`.
    let by_kind = nak_ok(&["req", "-k", "31990", "-t", "k=1000", "--limit", "100", &relay], None).await;
    assert!(by_kind.contains(&pk), "{by_kind}");
    p.frontend.shutdown().await;
}
