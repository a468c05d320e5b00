//! RUN_MODE=http end to end, as a client drives it: `curl` for every endpoint, `cashu` for money, OpenSSH to
//! log in, against the stack's real mint and kube-apiserver. The provider runs with RUST_LOG=debug, and at the
//! end its log must hold none of the secrets that went through it.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use anyhow::Result;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const JSON: (&str, &str) = ("Content-Type", "application/json");

struct Setup {
    provider: Provider,
    admin_token: String,
}

/// One provider for the file, with an admin token and debug logging.
fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let admin_token = hex::encode(rand_bytes());
        let provider = Provider::start(ProviderOptions {
            run_mode: Some("http"),
            extra_env: vec![("RUST_LOG".into(), "debug".into()), ("PAYGRESS_ADMIN_TOKEN".into(), admin_token.clone())],
            ..Default::default()
        })
        .expect("provider starts in http mode");
        Setup { provider, admin_token }
    })
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    b
}

fn url(path: &str) -> String {
    format!("http://{}{path}", setup().provider.http)
}

fn wallet(sats: u64) -> Wallet {
    let w = Wallet::new(&env("CASHU_MINT_URL")).expect("wallet");
    w.fund(sats).expect("cashu invoice");
    w
}

fn post_json(path: &str, body: &Value, extra: &[(&str, &str)]) -> HttpResponse {
    let mut h = vec![JSON];
    h.extend_from_slice(extra);
    http("POST", &url(path), &h, Some(body.to_string().as_bytes())).unwrap()
}

fn get(path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    http("GET", &url(path), extra, None).unwrap()
}

fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let v = r.json();
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(line_prefix)?.trim().parse::<f64>().ok()).map(|v| v as u64).unwrap_or(0)
}

/// Everything secret that the test handed to or got from the provider: none may reach its log.
#[derive(Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, s: &str) -> String {
        self.0.push(s.to_string());
        s.to_string()
    }
}

#[test]
fn every_endpoint_end_to_end_and_no_secret_in_the_debug_log() -> Result<()> {
    let s = setup();
    let p = &s.provider;
    let mut secrets = Secrets::default();
    secrets.add(&s.admin_token);
    let mint = env("CASHU_MINT_URL");
    let w = wallet(2000);

    // --- operations and discovery
    assert_eq!(get("/healthz", &[]).status, 200);
    let ready = get("/readyz", &[]);
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json()["relays"], true, "http mode needs no relays");
    let offer = get("/v1/offer", &[]);
    assert_eq!(offer.status, 200);
    let offer = offer.json();
    assert_eq!(offer["unit"], "sat");
    assert_eq!(offer["tiers"][0]["sats_per_hour"], 100);
    let api = get("/openapi.json", &[]);
    assert_eq!(api.status, 200);
    let api = api.json();
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v1/leases", "/v1/leases/{id}", "/v1/leases/{id}/topup", "/v1/offer", "/auth"] {
        assert!(api["paths"][path].is_object(), "openapi lacks {path}");
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("docs/openapi.json"))?)?;
    assert_eq!(api, committed, "served OpenAPI document differs from docs/openapi.json");

    // --- /auth: checks without redeeming
    let t = secrets.add(&w.send(20)?);
    let r = get(&format!("/auth?token={t}&duration_minutes=10"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"ok": true, "amount": 20, "required": 17}));
    let r = post_json("/auth", &json!({"token": t, "duration_minutes": 60}), &[]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!((v["ok"].clone(), v["amount"].clone(), v["required"].clone()), (json!(false), json!(20), json!(100)));
    assert_eq!(v["code"], "amount_too_small");
    let r = post_json("/auth", &json!({"token": "cashuBgarbage", "duration_minutes": 1}), &[]);
    assert_eq!(r.json()["ok"], false);
    assert_eq!(r.json()["code"], "invalid_token");
    assert_error(&get("/auth?duration_minutes=1", &[]), 400, "invalid_request");
    // Neither check spent it: the user can still take it back.
    w.receive(&t)?;
    // ... and now that it is spent, /auth says so.
    let r = post_json("/auth", &json!({"token": t, "duration_minutes": 1}), &[]);
    assert_eq!(r.json()["ok"], false, "{r:?}");
    assert_eq!(r.json()["code"], "token_spent");

    // --- create a lease (Idempotency-Key: the retry is the same lease, paid once)
    let token = secrets.add(&w.send(20)?);
    let key = hex::encode(rand_bytes());
    let body = json!({"cashu_token": token, "ssh_username": "hana"});
    let created = post_json("/v1/leases", &body, &[("Idempotency-Key", &key)]);
    assert_eq!(created.status, 201, "{created:?}\n{}", p.log_tail());
    let c = created.json();
    assert_eq!(c["status"], "ok");
    assert_eq!(c["amount_sats"], 20);
    let lease_secret = secrets.add(c["lease_secret"].as_str().expect("lease_secret"));
    assert_eq!(lease_secret.len(), 64);
    let access = &c["access"];
    let lease_id = access["lease_id"].as_str().unwrap().to_string();
    assert_eq!(created.header("location").as_deref(), Some(format!("/v1/leases/{lease_id}").as_str()));
    let password = secrets.add(access["ssh_password"].as_str().expect("password"));
    assert!(w.receive(&token).is_err(), "the token was redeemed");
    let pod = access["pod_name"].as_str().unwrap();
    let out = ssh_password(&pod_ip(pod)?, 2222, "hana", &password, "echo logged-in-as-$USER", None)?;
    assert!(out.contains("logged-in-as-hana"), "{out}");
    assert_eq!(openssh_fingerprint(&pod_ip(pod)?, 2222)?, access["host_key_fingerprint"].as_str().unwrap());
    // The owner recorded on the pod is hex(sha256(S)), not S.
    let owner = hex::encode(Sha256::digest(hex::decode(&lease_secret)?));
    assert_eq!(pods_of_requester(&owner)?, 1);

    let again = post_json("/v1/leases", &body, &[("Idempotency-Key", &key)]);
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.json()["access"]["lease_id"], lease_id.as_str());
    assert_eq!(again.json()["lease_secret"], lease_secret.as_str());
    assert_eq!(pods_of_requester(&owner)?, 1, "a retried POST makes no second lease");

    // --- status and top-up, with and without the lease secret
    let auth = format!("Bearer {lease_secret}");
    let st = get(&format!("/v1/leases/{lease_id}"), &[("Authorization", &auth)]);
    assert_eq!(st.status, 200, "{st:?}");
    assert_eq!(st.json()["status"], "status");
    assert_eq!(st.json()["lease"]["state"], "active");
    let before = st.json()["lease"]["expires_at"].as_u64().unwrap();

    let missing = get(&format!("/v1/leases/{lease_id}"), &[]);
    assert_error(&missing, 401, "invalid_request");
    assert_eq!(missing.header("www-authenticate").as_deref(), Some("Bearer"));
    let stranger = format!("Bearer {}", hex::encode(rand_bytes()));
    assert_error(&get(&format!("/v1/leases/{lease_id}"), &[("Authorization", &stranger)]), 404, "lease_not_found");
    // A stranger and a lease that does not exist look the same.
    assert_error(&get("/v1/leases/000000000000", &[("Authorization", &auth)]), 404, "lease_not_found");

    let top = secrets.add(&w.send(10)?);
    let r =
        post_json(&format!("/v1/leases/{lease_id}/topup"), &json!({"cashu_token": top}), &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["status"], "extended");
    assert_eq!(v["added_seconds"], 360);
    assert_eq!(v["expires_at"].as_u64().unwrap(), before + 360);

    let top2 = secrets.add(&w.send(10)?);
    let path = format!("/v1/leases/{lease_id}/topup");
    assert_error(
        &post_json(&path, &json!({"cashu_token": top2}), &[("Authorization", &stranger)]),
        404,
        "lease_not_found",
    );
    assert_error(&post_json(&path, &json!({"cashu_token": top2}), &[]), 401, "invalid_request");
    w.receive(&top2)?; // refused top-ups take nothing

    // --- a spent token
    let spent = secrets.add(&w.send(10)?);
    w.receive(&spent)?;
    let r = post_json("/v1/leases", &json!({"cashu_token": spent, "ssh_username": "ivan"}), &[]);
    assert_error(&r, 402, "token_spent");

    // --- malformed requests, answered in JSON
    let r = http("POST", &url("/v1/leases"), &[JSON], Some(b"{\"cashu_token\": "))?;
    assert_error(&r, 400, "invalid_request");
    let r = http("POST", &url("/v1/leases"), &[("Content-Type", "text/plain")], Some(b"{}"))?;
    assert_error(&r, 415, "invalid_request");
    let huge = format!("{{\"cashu_token\": \"{}\"}}", "a".repeat(64 * 1024));
    let r = http("POST", &url("/v1/leases"), &[JSON], Some(huge.as_bytes()))?;
    assert_error(&r, 413, "content_too_large");
    assert_error(&get("/v1/nothing", &[]), 404, "invalid_request");
    assert_error(&get("/v1/leases", &[]), 405, "invalid_request");

    // --- metrics count what happened
    let m = wait_until("metrics to show the leases", std::time::Duration::from_secs(30), || {
        let t = get("/metrics", &[]).body;
        (metric(&t, "paygress_live_leases ") >= 1).then_some(t)
    })?;
    for (outcome, at_least) in [
        ("ok", 1),
        ("extended", 1),
        ("status", 1),
        ("lease_not_found", 2),
        ("token_spent", 1),
        ("invalid_request", 3),
        ("content_too_large", 1),
    ] {
        let n = metric(&m, &format!("paygress_requests_total{{outcome=\"{outcome}\"}} "));
        assert!(n >= at_least, "{outcome}: {n}\n{m}");
    }
    assert!(metric(&m, "paygress_sats_received_total ") >= 30, "{m}");
    assert!(metric(&m, "paygress_reply_seconds_count ") >= 5, "{m}");
    assert!(m.contains("paygress_onion_services{status=\"running\"} 0"), "{m}");
    assert!(m.contains("paygress_connected_relays 0"), "{m}");

    // --- operator wallet: admin endpoints and the CLI while the provider runs
    let admin = format!("Bearer {}", s.admin_token);
    assert_error(&get("/admin/wallet/balance", &[]), 401, "invalid_request");
    assert_error(&get("/admin/wallet/balance", &[("Authorization", &auth)]), 401, "invalid_request");
    let b = get("/admin/wallet/balance", &[("Authorization", &admin)]);
    assert_eq!(b.status, 200, "{b:?}");
    assert!(b.json()["total"].as_u64().unwrap() >= 30, "{b:?}");
    assert_error(&post_json("/admin/wallet/send", &json!({"amount": 3}), &[]), 401, "invalid_request");
    let sent = post_json("/admin/wallet/send", &json!({"amount": 3}), &[("Authorization", &admin)]);
    assert_eq!(sent.status, 200, "{sent:?}");
    let sent_token = secrets.add(sent.json()["token"].as_str().unwrap());
    assert_eq!(sent.json()["amount"], 3);
    w.receive(&sent_token)?;

    let cli = |admin_token: Option<&str>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paygress"));
        c.env_clear()
            .env("PATH", env("PATH"))
            .env("HOME", env("HOME"))
            .env("WHITELISTED_MINTS", &mint)
            .env("NOSTR_PRIVATE_KEY", &p.nsec_hex)
            .env("PAYGRESS_STATE_DIR", &p.state_dir)
            .env("PAYGRESS_HTTP_ADDR", &p.http)
            .arg("wallet")
            .args(args);
        if let Some(t) = admin_token {
            c.env("PAYGRESS_ADMIN_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = cli(Some(&s.admin_token), &["balance"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let normalised = mint.trim_end_matches('/');
    assert!(
        text.lines().any(|l| l.starts_with(normalised) && l.ends_with(" sat")),
        "stdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(Some(&s.admin_token), &["send", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_token = secrets.add(String::from_utf8_lossy(&out.stdout).trim());
    w.receive(&cli_token)?;
    let out = cli(None, &["balance"]);
    assert!(!out.status.success(), "without the admin token the locked wallet cannot be reached");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYGRESS_ADMIN_TOKEN"));

    // --- early release: only the owner, once; the unused whole minutes come back
    let release = format!("/v1/leases/{lease_id}");
    assert_error(&http("DELETE", &url(&release), &[("Authorization", &stranger)], None)?, 404, "lease_not_found");
    let r = http("DELETE", &url(&release), &[("Authorization", &auth), ("Idempotency-Key", "rel-1")], None)?;
    assert_eq!(r.status, 200, "{r:?}");
    let released = r.json();
    assert_eq!(released["status"], "released", "{released}");
    if let Some(t) = released["refund_token"].as_str() {
        w.receive(&secrets.add(t))?;
    }
    let again = http("DELETE", &url(&release), &[("Authorization", &auth), ("Idempotency-Key", "rel-1")], None)?;
    assert_eq!(again.json(), released, "a retry is answered with the same release");

    // --- SIGTERM: the listener stops accepting, the request in flight still gets its lease
    let drain_token = secrets.add(&w.send(20)?);
    let redeemed_before = p.log_text().matches("token redeemed").count();
    let in_flight = std::thread::spawn(move || {
        post_json("/v1/leases", &json!({"cashu_token": drain_token, "ssh_username": "jo"}), &[])
    });
    wait_until("the in-flight request to be redeemed", std::time::Duration::from_secs(60), || {
        (p.log_text().matches("token redeemed").count() > redeemed_before).then_some(())
    })?;
    let pid = run(Command::new("pgrep").args(["-P", &p.child.id().to_string(), "paygress"]))?;
    run(Command::new("kill").args(["-TERM", pid.trim()]))?;
    let r = in_flight.join().expect("request thread");
    assert_eq!(r.status, 201, "in-flight request cut by SIGTERM: {r:?}\n{}", p.log_tail());
    secrets.add(r.json()["lease_secret"].as_str().unwrap());
    secrets.add(r.json()["access"]["ssh_password"].as_str().unwrap());
    wait_until("the provider to drain and exit", std::time::Duration::from_secs(60), || {
        p.log_text().contains("drained; bye").then_some(())
    })?;
    assert!(http("GET", &url("/healthz"), &[], None).is_err(), "the listener still accepts after SIGTERM");
    // Stopped provider: `paygress wallet` opens the wallet itself, no admin token needed.
    wait_until("the provider process to exit", std::time::Duration::from_secs(30), || {
        Command::new("kill").args(["-0", pid.trim()]).status().ok().filter(|s| !s.success())
    })?;
    let out = cli(None, &["balance"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.starts_with(normalised) && l.ends_with(" sat")), "{text}");

    // --- the debug log holds none of it
    let log = p.log_text();
    assert!(log.contains("DEBUG"), "the provider did not log at debug level");
    // Positive control: the log does record the lease (so a missing secret is not a missing log).
    assert!(log.contains(&lease_id) && log.contains("reply sent"), "the log lacks the lease");
    for (i, secret) in secrets.0.iter().enumerate() {
        assert!(!log.contains(secret.as_str()), "secret #{i} appears in the provider log");
        // Tokens also must not leak in part (a proof's secret is a long substring).
        if secret.len() > 80 {
            assert!(!log.contains(&secret[10..70]), "part of secret #{i} appears in the provider log");
        }
    }
    Ok(())
}

/// The NUT-24 tests' own provider: the end-to-end test above stops the shared one with SIGTERM.
fn nut_provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| {
        Provider::start(ProviderOptions {
            run_mode: Some("http"),
            extra_env: vec![
                ("RUST_LOG".into(), "debug".into()),
                // A dearer second tier: a top-up's 402 must price the lease's own tier, not one asked for.
                ("PAYGRESS_TIERS".into(), "basic:500m:512Mi:100,big:1:1Gi:400".into()),
            ],
            ..Default::default()
        })
        .expect("provider starts in http mode")
    })
}

fn nut_url(path: &str) -> String {
    format!("http://{}{path}", nut_provider().http)
}

/// NUT-24 with a client that knows only NUT-24: curl for HTTP, the `cashu` CLI for money. No payment: 402 with
/// `X-Cashu: creqA…` (decoded by `cashu decode`); `cashu pay` makes the token; the retry carries it in X-Cashu.
/// A token the provider refuses is a 400 (NUT-24) and stays the payer's.
#[test]
fn nut24_lease_and_top_up_with_curl_and_the_cashu_cli() -> Result<()> {
    let mint = env("CASHU_MINT_URL");
    let w = wallet(1000);

    // --- no payment: 402, a payment request for 30 minutes at 100 sat/h, nothing made or journaled
    let r = http("POST", &nut_url("/v1/leases?duration_minutes=30"), &[], None)?;
    assert_error(&r, 402, "payment_required");
    assert!(r.header("idempotency-key").is_none(), "a 402 makes no request to retry: {r:?}");
    let creq = r.header("x-cashu").expect("X-Cashu on a 402");
    assert!(creq.starts_with("creqA"), "{creq}");
    let pr = w.decode(&creq)?;
    assert_eq!(pr["a"], 50, "{pr}");
    assert_eq!(pr["u"], "sat", "{pr}");
    assert_eq!(pr["m"], json!([mint]), "{pr}");
    assert!(pr.get("t").is_none() && pr.get("nut10").is_none(), "in-band, unlocked: {pr}");
    // Without a duration it prices an hour; the JSON body form without a token is a 402 too.
    let hour = http("POST", &nut_url("/v1/leases"), &[JSON], Some(br#"{"ssh_username": "nut"}"#))?;
    assert_error(&hour, 402, "payment_required");
    assert_eq!(w.decode(&hour.header("x-cashu").expect("X-Cashu"))?["a"], 100);

    // --- pay it and retry with the token in X-Cashu (no body at all)
    let before = w.balance()?;
    let token = w.pay_request(&creq)?;
    assert!(token.starts_with("cashuB"), "{token}");
    let paid: [(&str, &str); 2] = [("X-Cashu", &token), ("Idempotency-Key", "nut24-create")];
    let created = http("POST", &nut_url("/v1/leases?duration_minutes=30"), &paid, None)?;
    assert_eq!(created.status, 201, "{created:?}");
    let c = created.json();
    let lease_id = c["access"]["lease_id"].as_str().expect("lease id").to_string();
    // What is left of the 30 minutes when the reply is made: a second may have passed since the redeem.
    assert!(c["duration_seconds"].as_u64().is_some_and(|d| (1750..=1800).contains(&d)), "{c}");
    assert!(w.balance()? <= before - 50);
    let auth = format!("Bearer {}", c["lease_secret"].as_str().expect("lease_secret"));
    // The retry with the same key is the same request: the same lease, paid once.
    let again = http("POST", &nut_url("/v1/leases?duration_minutes=30"), &paid, None)?;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.json()["access"]["lease_id"], lease_id.as_str());
    // Spent already: as another request it is refused, 400 per NUT-24.
    let spent = http("POST", &nut_url("/v1/leases"), &[("X-Cashu", &token)], None)?;
    assert_error(&spent, 400, "token_spent");

    // --- top-up: 402 without payment (priced at the lease's own tier, whatever `?tier=` says; only for the
    // lease's owner), then X-Cashu
    let topup = format!("/v1/leases/{lease_id}/topup?duration_minutes=12");
    let r = http("POST", &nut_url(&format!("{topup}&tier=big")), &[("Authorization", &auth)], None)?;
    assert_error(&r, 402, "payment_required");
    let creq = r.header("x-cashu").expect("X-Cashu on a top-up 402");
    assert_eq!(w.decode(&creq)?["a"], 20, "12 min of the lease's tier (basic, 100 sat/h)");
    let stranger = http("POST", &nut_url(&topup), &[("Authorization", "Bearer not-the-lease-secret-at-all")], None)?;
    assert_error(&stranger, 404, "lease_not_found");
    let top = w.pay_request(&creq)?;
    let r = http("POST", &nut_url(&topup), &[("Authorization", &auth), ("X-Cashu", &top)], None)?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "extended", "{r:?}");

    // --- refusals of an X-Cashu token are 400 and take nothing
    let alt = Wallet::new(&env("CASHU_MINT_URL_ALT"))?;
    alt.fund(100)?;
    let foreign = alt.send(60)?;
    let r = http("POST", &nut_url("/v1/leases"), &[("X-Cashu", &foreign)], None)?;
    assert_error(&r, 400, "mint_not_allowed");
    alt.receive(&foreign).expect("the refused token is still the payer's");
    let small = w.send(10)?;
    let r = http("POST", &nut_url("/v1/leases?duration_minutes=30"), &[("X-Cashu", &small)], None)?;
    assert_error(&r, 400, "amount_too_small");
    w.receive(&small).expect("the refused token is still the payer's");
    assert_error(&http("POST", &nut_url("/v1/leases"), &[("X-Cashu", "creqAnotatoken")], None)?, 400, "invalid_token");

    let r = http("DELETE", &nut_url(&format!("/v1/leases/{lease_id}")), &[("Authorization", &auth)], None)?;
    assert_eq!(r.status, 200, "{r:?}");
    // Tokens that came in a header are as secret as those in a body.
    let log = nut_provider().log_text();
    assert!(log.contains("DEBUG") && log.contains(&lease_id), "the log records the lease");
    for t in [&token, &top, &foreign, &small] {
        assert!(!log.contains(&t[10..70]), "an X-Cashu token appears in the provider log");
    }
    Ok(())
}

/// The offer's NUT-18 request locks to the provider's key: `cashu pay` of it gives a P2PK-locked token, which the
/// provider can sign for; a token locked to another key is refused and stays its owner's.
#[test]
fn offer_payment_request_pays_with_a_token_locked_to_the_provider() -> Result<()> {
    let w = wallet(500);
    let offer = http("GET", &nut_url("/v1/offer"), &[], None)?.json();
    let creq = offer["payment_request"].as_str().expect("offer has payment_request").to_string();
    let pr = w.decode(&creq)?;
    assert_eq!(pr["a"], offer["tiers"][0]["sats_per_hour"], "{pr}");
    assert_eq!(pr["u"], "sat");
    assert_eq!(pr["m"], json!(offer["accepted_mints"]));
    assert_eq!(pr["nut10"]["k"], "P2PK", "{pr}");
    assert_eq!(pr["nut10"]["d"], offer["p2pk_pubkey"], "{pr}");
    assert!(pr.get("t").is_none(), "http mode listens on no relay: {pr}");

    let locked = w.pay_request(&creq)?;
    let secret = w.decode(&locked)?["t"][0]["p"][0]["s"].as_str().unwrap_or_default().to_string();
    assert!(secret.contains("P2PK"), "the token is locked: {secret}");
    let body = json!({"cashu_token": locked}).to_string();
    let r = http("POST", &nut_url("/v1/leases"), &[JSON], Some(body.as_bytes()))?;
    assert_eq!(r.status, 201, "{r:?}");
    delete_lease(r.json()["access"]["lease_id"].as_str().unwrap_or_default());

    let other = Wallet::new(&env("CASHU_MINT_URL"))?;
    let to_other = w.send_locked(100, &other.lock_key()?)?;
    let body = json!({"cashu_token": to_other}).to_string();
    let r = http("POST", &nut_url("/v1/leases"), &[JSON], Some(body.as_bytes()))?;
    assert_error(&r, 400, "invalid_token");
    other.receive(&to_other).expect("the token locked to another key is untouched");
    Ok(())
}

/// A create without an Idempotency-Key whose answer was lost (a proxy timed out) is retried as it was: the
/// token names the request, so the retry gets the same lease and secret, and the token pays once.
#[test]
fn a_create_without_a_key_retried_as_it_was_is_the_same_lease() -> Result<()> {
    let w = wallet(40);
    let token = w.send(20)?;
    let body = json!({"cashu_token": token, "ssh_username": "kai"});
    let first = post_json("/v1/leases", &body, &[]);
    assert_eq!(first.status, 201, "{first:?}");
    let again = post_json("/v1/leases", &body, &[]);
    assert_eq!(again.status, 201, "the retry is answered with the lease: {again:?}");
    let (a, b) = (first.json(), again.json());
    assert_eq!(a["access"]["lease_id"], b["access"]["lease_id"]);
    assert_eq!(a["lease_secret"], b["lease_secret"]);
    assert!(
        first.headers.to_ascii_lowercase().contains("idempotency-key: token-"),
        "the key the token names is returned: {}",
        first.headers
    );
    Ok(())
}
