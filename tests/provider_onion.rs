//! Onion access end to end, as a user drives it: `cashu` pays, `nak` asks (NIP-44), OpenSSH logs in through
//! the stack's C tor client (`torsocks ssh`) to the provider's in-process arti onion service, whose key
//! lives in the lease's Kubernetes Secret. The provider runs as a process (tests/common/mod.rs).
//!
//! Needs the stack env (scripts/test): besides the usual, PAYGRESS_TOR_NETWORK_CONFIG, TORSOCKS_CONF_FILE
//! and TORSOCKS_TOR_PORT. Prints timings (docs/onion.md); never asserts on them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use base64::Engine as _;
use common::*;
use serde_json::Value;

/// The reply waits for the onion descriptor to be published (publish timeout 120 s in the provider).
const REPLY_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a client keeps retrying `torsocks ssh` before calling the onion unreachable.
const TOR_SSH_BUDGET: Duration = Duration::from_secs(240);

fn wallet(sats: u64) -> Wallet {
    let w = Wallet::new(&env("CASHU_MINT_URL")).expect("wallet");
    w.fund(sats).expect("cashu invoice");
    w
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn tor_provider(extra_env: &[(&str, &str)], state_dir: Option<&Path>) -> Provider {
    wait_tor_can_host_onions();
    Provider::start(ProviderOptions {
        enable_tor: true,
        extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        state_dir: state_dir.map(Path::to_path_buf),
        ..Default::default()
    })
    .expect("provider with tor starts")
}

/// Checks the onion fields of an ok reply and returns (access, onion address).
fn onion_access(reply: &Value, user: &str) -> (Value, String) {
    assert_eq!(reply["status"], "ok", "reply: {reply}");
    let access = reply["access"].clone();
    let onion = access["onion_address"].as_str().unwrap_or_else(|| panic!("no onion_address: {reply}")).to_string();
    assert!(onion.ends_with(".onion") && onion.len() == 62, "{onion}");
    assert_eq!(access["tor_ssh_command"], format!("torsocks ssh -p 2222 {user}@{onion}"), "{access}");
    assert_eq!(access["ssh_port"], 2222);
    (access, onion)
}

/// known_hosts pinning `[onion]:2222` to a key ("ssh-ed25519 AAAA…").
fn known_hosts(dir: &Path, onion: &str, public_key: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("known_hosts-{}", &onion[..8]));
    std::fs::write(&path, format!("[{onion}]:2222 {}\n", public_key.trim()))?;
    Ok(path)
}

/// Retries `torsocks ssh` until it runs `cmd` (or the budget is spent); returns output and time taken.
fn tor_ssh_until_ok(
    onion: &str,
    user: &str,
    pw: &str,
    cmd: &str,
    kh: Option<&Path>,
    budget: Duration,
) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < budget {
        match tor_ssh_password(onion, 2222, user, pw, cmd, kh) {
            Ok(out) => return Ok((out, started.elapsed())),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(anyhow!("torsocks ssh to {onion} failed for {budget:?}: {last:?}"))
}

/// The lease's onion Secret: exists, is labelled with the lease, and holds the key of `onion`.
/// Returns the key bytes (to look for them in the log).
fn check_onion_secret(lease_id: &str, onion: &str) -> Result<Vec<u8>> {
    let name = format!("ssh-pod-{lease_id}-onion");
    let s = kubectl_json("secret", &name)?.ok_or_else(|| anyhow!("secret {name} missing"))?;
    assert_eq!(s["metadata"]["labels"]["paygress.io/lease-id"], lease_id, "{s}");
    assert_eq!(s["metadata"]["labels"]["app.kubernetes.io/managed-by"], "paygress", "{s}");
    let b64 = s["data"]["hs_ed25519_secret_key"].as_str().ok_or_else(|| anyhow!("no key in {name}"))?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64)?;
    assert_eq!(key.len(), 64);
    assert_eq!(paygress::onion::address_for_key(&key).map_err(|e| anyhow!(e))?, onion, "Secret holds another key");
    Ok(key)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn assert_key_not_in_log(log: &str, key: &[u8]) {
    let forms = [
        hex::encode(key),
        hex::encode_upper(key),
        base64::engine::general_purpose::STANDARD.encode(key),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
        // the secret scalar alone
        hex::encode(&key[..32]),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&key[..32]),
    ];
    for f in forms {
        assert!(!log.contains(&f[..40]), "onion key material in the provider log");
    }
}

/// 1–4: request → onion reply; torsocks ssh logs in; host key pinned; Secret; kill -9 and restart keep the
/// address working without a new payment; the key never reaches the log. Also takes the timing samples.
#[test]
fn onion_lease_end_to_end_survives_kill9() -> Result<()> {
    let mut p = tor_provider(&[], None);
    let w = wallet(1000);
    let tmp = tempfile::tempdir()?;
    let mut leases = Vec::new();
    for sample in 1..=3 {
        let token = w.send(100)?;
        let user = User::new()?;
        let t0 = Instant::now();
        let id = user.publish_nip44(1000, &request_json(&token, "alice"), &p.pubkey)?;
        let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
        let t_reply = t0.elapsed();
        let (access, onion) = onion_access(&reply, "alice");
        let pw = access["ssh_password"].as_str().expect("password").to_string();
        let host_key = access["host_public_key"].as_str().expect("host_public_key").to_string();
        let kh = known_hosts(tmp.path(), &onion, &host_key)?;

        // 2 + 3: OpenSSH through C tor, host key pinned to the reply's.
        let (out, t_ssh) = tor_ssh_until_ok(&onion, "alice", &pw, "echo over-tor-as-$USER", Some(&kh), TOR_SSH_BUDGET)?;
        assert!(out.contains("over-tor-as-alice"), "{out}");
        let t_first = t0.elapsed();
        // The reply's fingerprint is the pinned key's.
        let fp = run_with_stdin(std::process::Command::new("ssh-keygen").args(["-lf", "-"]), &host_key)?;
        assert_eq!(fp.split_whitespace().nth(1), access["host_key_fingerprint"].as_str());
        let provider_side = redeem_to_reply_secs(&p.log_text(), &id);
        println!(
            "onion sample {sample}: request published -> reply {:.1}s; -> first torsocks ssh ok {:.1}s \
             (ssh attempts took {:.1}s); provider 'token redeemed' -> 'reply sent' {}",
            t_reply.as_secs_f64(),
            t_first.as_secs_f64(),
            t_ssh.as_secs_f64(),
            provider_side.map_or("n/a".into(), |s| format!("{s:.1}s"))
        );
        leases.push((access, onion, pw, kh));
    }

    // 3, the negative: a known_hosts pinned to another key refuses the connection.
    let (_, onion0, pw0, _) = &leases[0];
    let other = tmp.path().join("other");
    run(std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other))?;
    let other_pub = std::fs::read_to_string(other.with_extension("pub"))?;
    let other_pub: String = other_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let wrong_dir = tmp.path().join("wrong");
    std::fs::create_dir(&wrong_dir)?;
    let wrong = known_hosts(&wrong_dir, onion0, &other_pub)?;
    let err = tor_ssh_password(onion0, 2222, "alice", pw0, "true", Some(&wrong)).expect_err("wrong host key accepted");
    assert!(
        err.to_string().contains("HOST IDENTIFICATION HAS CHANGED") || err.to_string().contains("verification failed"),
        "{err}"
    );

    // 4: the Secret of each lease.
    let mut keys = Vec::new();
    for (access, onion, _, _) in &leases {
        keys.push(check_onion_secret(access["lease_id"].as_str().unwrap(), onion)?);
    }

    // kill -9, restart on the same state dir: the reconciler relaunches from the Secrets.
    let _state = p.keep_state();
    let state_dir = p.state_dir.clone();
    p.kill9();
    drop(p);
    let t_restart = Instant::now();
    let p = tor_provider(&[], Some(&state_dir));
    println!("restarted provider ready after {:.1}s", t_restart.elapsed().as_secs_f64());
    // A lease bought while the old ones are being restored does not wait behind them (issue 13: it used to
    // answer in 4 s and let `torsocks ssh` in only after 180 s).
    let user = User::new()?;
    let t_new = Instant::now();
    let id = user.publish_nip44(1000, &request_json(&w.send(100)?, "alice"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let t_new_reply = t_new.elapsed();
    let (fresh, fresh_onion) = onion_access(&reply, "alice");
    let pw = fresh["ssh_password"].as_str().unwrap_or_default();
    let (out, _) = tor_ssh_until_ok(&fresh_onion, "alice", pw, "echo fresh", None, TOR_SSH_BUDGET)?;
    assert!(out.contains("fresh"), "{out}");
    println!(
        "new lease right after the restart: reply {:.1}s, first torsocks ssh ok {:.1}s after the request",
        t_new_reply.as_secs_f64(),
        t_new.elapsed().as_secs_f64()
    );
    for (access, onion, pw, kh) in &leases {
        let (out, t) = tor_ssh_until_ok(onion, "alice", pw, "echo again", Some(kh), TOR_SSH_BUDGET)?;
        assert!(out.contains("again"), "{out}");
        println!(
            "after kill -9: {} reachable {:.1}s after the restart began (ssh attempts {:.1}s)",
            access["lease_id"].as_str().unwrap(),
            t_restart.elapsed().as_secs_f64(),
            t.as_secs_f64()
        );
    }
    // Still exactly one pod per lease and the same key in each Secret: nothing new was bought or made.
    for ((access, onion, _, _), key) in leases.iter().zip(&keys) {
        let lease_id = access["lease_id"].as_str().unwrap();
        assert_eq!(pods_of_lease(lease_id)?, 1);
        assert_eq!(&check_onion_secret(lease_id, onion)?, key);
    }
    // SIGTERM: the provider stops its onion services before it exits (they come back from the Secrets).
    let mut p = p;
    p.sigterm(Duration::from_secs(60))?;
    let log = p.log_text();
    let plain = strip_ansi(&log);
    assert!(plain.contains("onion service published"), "no relaunch in the log");
    let after_restart = &plain[plain.rfind("paygress starting").unwrap_or(0)..];
    for (access, _, _, _) in &leases {
        let stopped = format!("onion service stopped lease_id=\"{}\"", access["lease_id"].as_str().unwrap());
        assert!(after_restart.contains(&stopped), "SIGTERM did not stop {stopped}; log:\n{}", tail(after_restart, 30));
    }
    assert!(after_restart.contains("drained; bye"));
    for key in &keys {
        assert_key_not_in_log(&log, key);
    }
    delete_lease(fresh["lease_id"].as_str().unwrap_or_default());
    Ok(())
}

/// The onion pool (on by default): a paid lease is handed a service that was published before it paid, so
/// its reply waits for no publication; that address reaches the lease's pod through C tor, its key becomes
/// the lease's Secret, and the pool refills with other addresses.
#[test]
fn a_warm_pool_hands_a_published_service_to_a_paid_lease() -> Result<()> {
    let p = tor_provider(&[("PAYGRESS_ONION_POOL", "2")], None);
    wait_until("two pool slots published", REPLY_TIMEOUT, || {
        (p.metric("paygress_onion_services{status=\"pooled\"}") == Some(2.0)).then_some(())
    })?;
    let waiting = p.pool_addresses()?;
    assert_eq!(waiting.len(), 2, "one Secret per slot: {waiting:?}");

    let w = wallet(300);
    let user = User::new()?;
    let t0 = Instant::now();
    let id = user.publish_nip44(1000, &request_json(&w.send(100)?, "alice"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let t_reply = t0.elapsed();
    let (access, onion) = onion_access(&reply, "alice");
    assert!(waiting.contains(&onion), "the lease did not get a pool service: {onion} not in {waiting:?}");
    assert!(strip_ansi(&p.log_text()).contains("pooled onion service assigned to the lease"));
    // The slot's key is the lease's Secret now, and no longer a pool Secret.
    let lease_id = access["lease_id"].as_str().unwrap_or_default();
    let key = check_onion_secret(lease_id, &onion)?;
    assert!(!p.pool_addresses()?.contains(&onion));

    let pw = access["ssh_password"].as_str().unwrap_or_default();
    let (out, t_ssh) = tor_ssh_until_ok(&onion, "alice", pw, "echo pooled-$USER", None, TOR_SSH_BUDGET)?;
    assert!(out.contains("pooled-alice"), "{out}");
    println!(
        "pooled lease: request published -> reply {:.1}s; first torsocks ssh ok after {:.1}s more (attempts {:.1}s)",
        t_reply.as_secs_f64(),
        (t0.elapsed() - t_reply).as_secs_f64(),
        t_ssh.as_secs_f64()
    );

    // Refilled, with fresh addresses: the one given out is not offered again.
    wait_until("pool refilled", REPLY_TIMEOUT, || {
        (p.metric("paygress_onion_services{status=\"pooled\"}") == Some(2.0)).then_some(())
    })?;
    let refilled = p.pool_addresses()?;
    assert_eq!(refilled.len(), 2);
    assert!(!refilled.contains(&onion));
    assert_key_not_in_log(&p.log_text(), &key);
    delete_lease(lease_id);
    Ok(())
}

/// 5: ENABLE_TOR_SIDECAR=false: no Tor at all; the Service route to the pod.
#[test]
fn without_tor_there_is_no_onion_and_the_service_reaches_the_pod() -> Result<()> {
    let p = Provider::start(ProviderOptions::default())?;
    let w = wallet(1000);
    let token = w.send(50)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&token, "bob"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(reply["status"], "ok", "{reply}");
    let access = &reply["access"];
    assert!(access["onion_address"].is_null(), "{access}");
    assert!(access["tor_ssh_command"].is_null(), "{access}");
    let lease_id = access["lease_id"].as_str().unwrap();
    let pod = access["pod_name"].as_str().unwrap();

    // No Tor started: arti would have made <state>/tor; no onion Secret.
    assert!(!p.state_dir.join("tor").exists(), "tor state dir created with Tor disabled");
    assert!(kubectl_json("secret", &format!("ssh-pod-{lease_id}-onion"))?.is_none());
    assert!(!strip_ansi(&p.log_text()).contains("tor client created"));

    // The port-forward route: the Service selects the pod and maps 2222 -> 2222.
    let svc = kubectl_json("service", &format!("{pod}-ssh"))?.ok_or_else(|| anyhow!("no service"))?;
    let pod_obj = kubectl_json("pod", pod)?.ok_or_else(|| anyhow!("no pod"))?;
    let selector = svc["spec"]["selector"].as_object().ok_or_else(|| anyhow!("service without selector"))?;
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&pod_obj["metadata"]["labels"][k], v, "selector {k} does not match the pod");
    }
    let ports = svc["spec"]["ports"].as_array().ok_or_else(|| anyhow!("no ports"))?;
    assert_eq!(ports.len(), 1, "{svc}");
    assert_eq!(ports[0]["port"], 2222);
    // targetPort is 2222 itself or the name of a container port that is 2222.
    let container_ports = pod_obj["spec"]["containers"][0]["ports"].as_array().cloned().unwrap_or_default();
    let target = &ports[0]["targetPort"];
    let target_port = if target.is_number() {
        target.clone()
    } else {
        container_ports.iter().find(|p| &p["name"] == target).map(|p| p["containerPort"].clone()).unwrap_or_default()
    };
    assert_eq!(target_port, 2222, "targetPort {target} in {svc}");
    // The reply's own command: kubectl port-forward (kubectl -> kube-apiserver -> the node's kubelet API ->
    // the pod), then ssh to the local end with the reply's password; the host key is the reply's.
    let command = access["port_forward_command"].as_str().unwrap();
    assert_eq!(command, format!("kubectl -n user-workloads port-forward svc/{pod}-ssh 2222:2222"));
    let pf = port_forward(command)?;
    let tmp = tempfile::tempdir()?;
    let kh = tmp.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}\n", pf.local_port, access["host_public_key"].as_str().unwrap()))?;
    let pw = access["ssh_password"].as_str().unwrap();
    let out = ssh_password("127.0.0.1", pf.local_port, "bob", pw, "echo via-port-forward", Some(&kh))?;
    assert!(out.contains("via-port-forward"), "{out}");
    drop(pf);
    // And directly at the pod's IP, where the forward delivers.
    let ip = pod_ip(pod)?;
    std::fs::write(&kh, format!("[{ip}]:2222 {}\n", access["host_public_key"].as_str().unwrap()))?;
    let out = ssh_password(&ip, 2222, "bob", pw, "echo via-pod-ip", Some(&kh))?;
    assert!(out.contains("via-pod-ip"), "{out}");
    Ok(())
}

/// 6: an expired lease's onion address stops answering and its Secret goes.
#[test]
fn expired_lease_onion_stops_answering() -> Result<()> {
    let p = tor_provider(&[("PAYMENT_RATE_SATS_PER_HOUR", "3600"), ("PAYGRESS_MIN_DURATION_SECONDS", "10")], None);
    let w = wallet(200);
    let token = w.send(60)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&token, "carol"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let (access, onion) = onion_access(&reply, "carol");
    let lease_id = access["lease_id"].as_str().unwrap().to_string();
    let expires = access["expires_at"].as_u64().unwrap();
    let pw = access["ssh_password"].as_str().unwrap();
    check_onion_secret(&lease_id, &onion)?;

    // While paid, it answers (at 1 sat/s a 60 s lease, room to spare under load; published before the reply).
    let budget = Duration::from_secs(expires.saturating_sub(now() + 2));
    let (out, _) = tor_ssh_until_ok(&onion, "carol", pw, "echo paid", None, budget)?;
    assert!(out.contains("paid"));
    let code = socks5_connect_code(&onion, 2222, Duration::from_secs(120))?;
    assert_eq!(code, 0, "SOCKS connect to a live lease");

    // After expiry the reconciler (every 2 s) stops the onion service, then deletes the objects. (Other
    // providers sharing the stack's namespace may delete the objects first; this provider must still stop
    // its service.)
    let stopped = format!("onion service stopped lease_id=\"{lease_id}\"");
    wait_until("onion stopped and lease objects removed after expiry", Duration::from_secs(120), || {
        (now() > expires
            && strip_ansi(&p.log_text()).contains(&stopped)
            && kubectl_json("secret", &format!("ssh-pod-{lease_id}-onion")).ok()?.is_none()
            && pods_of_lease(&lease_id).ok()? == 0)
            .then_some(())
    })
    .map_err(|e| {
        let log = strip_ansi(&p.log_text());
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&lease_id) || l.contains("onion")).collect();
        anyhow!("{e}; now {} expires {expires}; provider:\n{}", now(), lines.join("\n"))
    })?;
    let t = Instant::now();
    let code = socks5_connect_code(&onion, 2222, Duration::from_secs(180))?;
    println!("expired onion: SOCKS reply {code:#04x} after {:.1}s", t.elapsed().as_secs_f64());
    if code == 5 {
        let log = strip_ansi(&p.log_text());
        for l in log.lines().filter(|l| l.contains(&lease_id) || l.contains("onion")) {
            println!("  provider: {l}");
        }
    }
    assert_ne!(code, 0, "an expired lease's onion address still connects");
    // 5 would mean the service still runs and only the pod refused: the onion itself must be gone.
    assert_ne!(code, 5, "the onion service still answers (the pod refused)");
    assert!(tor_ssh_password(&onion, 2222, "carol", pw, "true", None).is_err());
    Ok(())
}
