//! `paygress-cli` black-box, as a user runs it: the built binary against a real provider (started with the
//! harness) on the stack's relay, mint, Kubernetes and private Tor network. The CLI gets its own data dir
//! and no C tor settings (no torsocks, no SOCKS port): its `ssh` must reach the onion through its own arti.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use common::*;
use serde_json::Value;

const REPLY_TIMEOUT: &str = "240";

fn provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| Provider::start(ProviderOptions::default()).expect("provider starts"))
}

fn tor_provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| {
        Provider::start(ProviderOptions { enable_tor: true, ..Default::default() }).expect("tor provider starts")
    })
}

fn wallet(sats: u64) -> Wallet {
    let w = Wallet::new(&env("CASHU_MINT_URL")).expect("wallet");
    w.fund(sats).expect("cashu invoice");
    w
}

/// One CLI user: a fresh data dir (key, wallet, leases, known_hosts).
struct Cli {
    home: tempfile::TempDir,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Result<Run> {
        if self.code == Some(0) {
            Ok(self)
        } else {
            Err(anyhow!("paygress-cli exited {:?}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr))
        }
    }
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).map_err(|e| anyhow!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl Cli {
    fn new() -> Cli {
        // Fail loudly without the stack.
        env("NOSTR_RELAYS");
        env("CASHU_MINT_URL");
        Cli { home: tempfile::tempdir().expect("tempdir") }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_paygress-cli"));
        c.env("PAYGRESS_CLI_HOME", self.home.path())
            .env("NOSTR_RELAYS", env("NOSTR_RELAYS"))
            // Only the network description: no SOCKS port or torsocks for the client side.
            .env("PAYGRESS_TOR_NETWORK_CONFIG", env("PAYGRESS_TOR_NETWORK_CONFIG"))
            .env_remove("TORSOCKS_CONF_FILE")
            .env_remove("TORSOCKS_TOR_ADDRESS")
            .env_remove("TORSOCKS_TOR_PORT")
            .env_remove("PAYGRESS_TOR_SOCKS")
            .env_remove("ALL_PROXY")
            .env_remove("LD_PRELOAD");
        c
    }

    fn run(&self, args: &[&str]) -> Result<Run> {
        self.run_in(args, None)
    }

    fn run_in(&self, args: &[&str], stdin: Option<&str>) -> Result<Run> {
        let mut cmd = self.cmd();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn()?;
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().ok_or(anyhow!("stdin"))?.write_all(input.as_bytes())?;
        }
        let Output { status, stdout, stderr } = child.wait_with_output()?;
        Ok(Run {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    }

    /// `request --amount N --mint M --json`, paid from the CLI's own wallet: the reply.
    fn buy(&self, provider: &str, amount: &str, mint: &str) -> Result<Value> {
        let args = ["request", "--provider", provider, "--amount", amount, "--mint", mint, "--json"];
        self.run(&[&args[..], &["--timeout", REPLY_TIMEOUT]].concat())?.ok()?.json()
    }

    fn pubkey(&self) -> Result<String> {
        let npub = self.run(&["whoami"])?.ok()?.stdout;
        run(Command::new("nak").args(["decode", &npub])).map(|s| {
            serde_json::from_str::<Value>(&s)
                .ok()
                .and_then(|v| v["pubkey"].as_str().map(String::from).or_else(|| v.as_str().map(String::from)))
                .unwrap_or(s)
        })
    }

    fn lease_file(&self, lease_id: &str) -> std::path::PathBuf {
        self.home.path().join("leases").join(format!("{lease_id}.json"))
    }
}

fn assert_ok_lease(reply: &Value, paid: u64) -> Value {
    assert_eq!(reply["status"], "ok", "reply: {reply}");
    assert_eq!(reply["amount_sats"], paid);
    let access = reply["access"].clone();
    assert!(access["host_key_fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    access
}

#[test]
fn offers_lists_the_provider_human_and_json() -> Result<()> {
    let p = provider();
    let cli = Cli::new();
    let out = cli.run(&["offers", "--json"])?.ok()?;
    let list = out.json()?;
    let mine = list
        .as_array()
        .ok_or(anyhow!("not a list"))?
        .iter()
        .find(|o| o["pubkey"] == p.pubkey.as_str())
        .ok_or_else(|| anyhow!("provider {} not in offers: {list}", p.pubkey))?
        .clone();
    assert!(mine["npub"].as_str().unwrap().starts_with("npub1"));
    assert!(mine["last_seen"].as_u64().unwrap() > 0);
    assert_eq!(mine["offer"]["onion_access"], false);
    assert!(mine["offer"]["accepted_mints"].to_string().contains(&env("CASHU_MINT_URL")));
    assert!(!mine["offer"]["tiers"].as_array().unwrap().is_empty());

    let human = cli.run(&["offers"])?.ok()?.stdout;
    let npub = mine["npub"].as_str().unwrap();
    let block: String =
        human.split("npub1").find(|b| npub.ends_with(b.lines().next().unwrap_or("-"))).unwrap_or_default().into();
    assert!(block.contains("sat/h") && block.contains("onion:     no") && block.contains("last seen"), "{human}");
    Ok(())
}

#[test]
fn request_with_token_json_then_status_and_topup() -> Result<()> {
    let p = provider();
    let w = wallet(1000);
    let cli = Cli::new();
    let token = w.send(100)?;
    // Token from stdin, NIP-44 to the provider.
    let out = cli.run_in(
        &["request", "--provider", &p.pubkey, "--token", "-", "--user", "carol", "--json", "--timeout", REPLY_TIMEOUT],
        Some(&token),
    )?;
    let reply = out.ok()?.json()?;
    let access = assert_ok_lease(&reply, 100);
    assert_eq!(access["ssh_username"], "carol");
    let lease = access["lease_id"].as_str().unwrap().to_string();
    // Saved for later commands, private.
    let file = cli.lease_file(&lease);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    assert_eq!(pods_of_requester(&cli.pubkey()?)?, 1);

    let status = cli.run(&["status", &lease, "--json", "--timeout", REPLY_TIMEOUT])?.ok()?.json()?;
    assert_eq!(status["status"], "status", "{status}");
    assert_eq!(status["lease"]["state"], "active");
    let before = status["lease"]["expires_at"].as_u64().unwrap();

    // Top-up by pod name, token on the command line.
    let t2 = w.send(50)?;
    let pod = access["pod_name"].as_str().unwrap();
    let ext = cli.run(&["topup", pod, "--token", &t2, "--json", "--timeout", REPLY_TIMEOUT])?.ok()?.json()?;
    assert_eq!(ext["status"], "extended", "{ext}");
    assert_eq!(ext["amount_sats"], 50);
    assert_eq!(ext["expires_at"].as_u64().unwrap(), before + ext["added_seconds"].as_u64().unwrap());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    assert_eq!(saved["expires_at"], ext["expires_at"]);

    // Human status line.
    let human = cli.run(&["status", &lease, "--timeout", REPLY_TIMEOUT])?.ok()?;
    assert!(human.stdout.contains("active") && human.stdout.contains(&lease), "{}", human.stdout);
    Ok(())
}

#[test]
fn request_paid_from_own_wallet_and_gift_wrapped() -> Result<()> {
    let p = provider();
    let cli = Cli::new();
    let mint = env("CASHU_MINT_URL");
    let funded = cli.run(&["wallet", "fund", "--amount", "300", "--mint", &mint])?.ok()?;
    assert!(funded.stdout.contains("minted 300 sat"), "{}", funded.stdout);
    let bal = cli.run(&["wallet", "balance", "--json"])?.ok()?.json()?;
    assert_eq!(bal.as_object().unwrap().values().filter_map(Value::as_u64).sum::<u64>(), 300, "{bal}");

    // Human output: access details and the command to log in.
    let out = cli
        .run(&["request", "--provider", &p.pubkey, "--amount", "100", "--mint", &mint, "--timeout", REPLY_TIMEOUT])?
        .ok()?;
    assert!(out.stdout.contains("password:") && out.stdout.contains("host key:  SHA256:"), "{}", out.stdout);
    assert!(out.stdout.contains("port-forward") && out.stdout.contains("ssh -p 2222"), "{}", out.stdout);
    assert!(out.stderr.contains("waiting up to"), "progress on stderr: {}", out.stderr);

    // NIP-17 gift wrap both ways, also paid from the wallet, with an ssh key instead of a password.
    let keyfile = cli.home.path().join("id_ed25519");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", keyfile.to_str().unwrap()]))?;
    let pubfile = keyfile.with_extension("pub");
    let args = [
        "request",
        "--provider",
        &p.pubkey,
        "--amount",
        "100",
        "--mint",
        &mint,
        "--nip17",
        "--json",
        "--timeout",
        REPLY_TIMEOUT,
        "--ssh-key",
        pubfile.to_str().unwrap(),
        "--user",
        "erin",
    ];
    let reply = cli.run(&args)?.ok()?.json()?;
    let access = assert_ok_lease(&reply, 100);
    assert!(access.get("ssh_password").is_none(), "{access}");
    let ip = pod_ip(access["pod_name"].as_str().unwrap())?;
    let login = format!("erin@{ip}");
    let out = run(Command::new("ssh").args([
        "-i",
        keyfile.to_str().unwrap(),
        "-p",
        "2222",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        &login,
        "echo key-login-ok",
    ]))?;
    assert!(out.contains("key-login-ok"), "{out}");
    let bal = cli.run(&["wallet", "balance", "--json"])?.ok()?.json()?;
    assert_eq!(bal.as_object().unwrap().values().filter_map(Value::as_u64).sum::<u64>(), 100, "{bal}");
    assert_eq!(pods_of_requester(&cli.pubkey()?)?, 2);
    let leases = cli.run(&["leases", "--json"])?.ok()?.json()?;
    assert_eq!(leases.as_array().unwrap().len(), 2);
    Ok(())
}

#[test]
fn refused_request_prints_the_code_and_takes_nothing() -> Result<()> {
    let p = provider();
    let cli = Cli::new();
    // A mint the provider does not accept.
    let alt = Wallet::new(&env("CASHU_MINT_URL_ALT"))?;
    alt.fund(200)?;
    let token = alt.send(100)?;
    let out = cli.run(&["request", "--provider", &p.pubkey, "--token", &token, "--timeout", REPLY_TIMEOUT])?;
    assert_eq!(out.code, Some(4), "stderr: {}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("paygress-cli: refused with code mint_not_allowed: "), "{}", out.stderr);
    // The provider never touched it.
    alt.receive(&token)?;

    // --json still prints the error reply, as JSON only.
    let t2 = alt.send(50)?;
    let out = cli.run(&["request", "--provider", &p.pubkey, "--token", &t2, "--json", "--timeout", REPLY_TIMEOUT])?;
    assert_eq!(out.code, Some(4));
    let reply = out.json()?;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["code"], "mint_not_allowed");
    Ok(())
}

#[test]
fn reply_timeout_and_unreachable_are_one_line_each() -> Result<()> {
    let cli = Cli::new();
    // A provider that published its offer and then died.
    let mut dead = Provider::start(ProviderOptions::default())?;
    let dead_key = dead.pubkey.clone();
    let seen = wait_until("dead provider's offer", std::time::Duration::from_secs(30), || {
        cli.run(&["offers", "--json"])
            .ok()?
            .json()
            .ok()?
            .as_array()?
            .iter()
            .any(|o| o["pubkey"] == dead_key.as_str())
            .then_some(())
    });
    dead.kill9();
    seen?;
    let w = wallet(200);
    let token = w.send(100)?;
    let out = cli.run(&["request", "--provider", &dead_key, "--token", &token, "--timeout", "5"])?;
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("paygress-cli: reply timeout: no reply from npub1"), "{}", out.stderr);
    assert!(last.contains("within 5s"), "{last}");

    // A key with no offer at all.
    let nobody = User::new()?;
    let out = cli.run(&["request", "--provider", &nobody.pubkey, "--token", &token, "--timeout", "5"])?;
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("provider unreachable: no offer from npub1"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // No relay answers.
    let out = cli.run(&["--relay", "ws://127.0.0.1:9", "offers"])?;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("provider unreachable: no relay connects (ws://127.0.0.1:9)"), "{}", out.stderr);
    // The token was never spent by anyone.
    w.receive(&token)?;
    Ok(())
}

#[test]
fn ssh_logs_in_over_the_clis_own_arti_with_the_host_key_pinned() -> Result<()> {
    let p = tor_provider();
    let w = wallet(500);
    let cli = Cli::new();
    let token = w.send(100)?;
    let reply = cli
        .run(&["request", "--provider", &p.pubkey, "--token", &token, "--user", "dave", "--json", "--timeout", "400"])?
        .ok()?
        .json()?;
    let access = assert_ok_lease(&reply, 100);
    let onion = access["onion_address"].as_str().ok_or(anyhow!("no onion address: {reply}"))?.to_string();
    let lease = access["lease_id"].as_str().unwrap().to_string();
    let key = access["host_public_key"].as_str().unwrap();
    let known = std::fs::read_to_string(cli.home.path().join("known_hosts"))?;
    let key_b64 = key.split_whitespace().nth(1).unwrap();
    assert!(known.contains(&format!("[{onion}]:2222 ssh-ed25519 {key_b64}")), "{known}");

    let out = cli.run(&["ssh", &lease, "--sshpass", "--", "echo", "ok-from-$USER"])?;
    let out = out.ok()?;
    assert_eq!(out.stdout.lines().last(), Some("ok-from-dave"), "stderr: {}", out.stderr);
    // The CLI's own Tor client kept its state under the data dir.
    assert!(cli.home.path().join("tor/state").is_dir());

    // A wrong pinned key must stop ssh before any login: the pin is what is checked.
    let (_, fake) = fake_host_key(cli.home.path())?;
    let known = std::fs::read_to_string(cli.home.path().join("known_hosts"))?.replace(key_b64, &fake);
    std::fs::write(cli.home.path().join("known_hosts"), &known)?;
    // Run ssh exactly as the CLI would, but with the tampered file (the `ssh` command re-pins from the lease).
    let exe = env!("CARGO_BIN_EXE_paygress-cli");
    let proxy = format!("'{exe}' --home '{}' connect %h %p", cli.home.path().display());
    let pw = access["ssh_password"].as_str().unwrap();
    let bad = Command::new("sshpass")
        .env("SSHPASS", pw)
        .env("PAYGRESS_TOR_NETWORK_CONFIG", env("PAYGRESS_TOR_NETWORK_CONFIG"))
        .args(["-e", "ssh", "-p", "2222", "-o", &format!("ProxyCommand={proxy}")])
        .args(["-o", &format!("UserKnownHostsFile={}", cli.home.path().join("known_hosts").display())])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlgorithms=ssh-ed25519"])
        .arg(format!("dave@{onion}"))
        .arg("echo should-not-run")
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "login with a wrong pinned key succeeded");
    assert!(err.contains("Host key verification failed") || err.contains("HOST IDENTIFICATION HAS CHANGED"), "{err}");
    Ok(())
}

/// A fresh ed25519 public key (base64 part) to put in place of the real one.
fn fake_host_key(dir: &Path) -> Result<(String, String)> {
    let path = dir.join("fake_host_key");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", path.to_str().unwrap()]))?;
    let pubkey = std::fs::read_to_string(path.with_extension("pub"))?;
    let b64 = pubkey.split_whitespace().nth(1).ok_or(anyhow!("bad key"))?.to_string();
    Ok((pubkey, b64))
}

/// `watch` prints the expiry notice of a lease bought with the CLI; `release` ends another early and puts its
/// unused whole minutes back into the CLI's wallet.
#[test]
fn watch_shows_the_expiry_notice_and_release_refunds_into_the_wallet() -> Result<()> {
    let extra = [
        ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
        ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
        ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
        ("PAYGRESS_EXPIRY_NOTICES", "20"),
    ];
    let p = Provider::start_ready(&extra, None)?;
    let cli = Cli::new();
    let mint = env("CASHU_MINT_URL");
    cli.run(&["wallet", "fund", "--amount", "300", "--mint", &mint])?.ok()?;
    let balance = |cli: &Cli| -> Result<u64> {
        let b = cli.run(&["wallet", "balance", "--json"])?.ok()?.json()?;
        Ok(b.as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0))
    };

    // A lease of 150 s, released at once: 2 whole minutes (120 sat) come back.
    let long = cli.buy(&p.pubkey, "150", &mint)?["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let before = balance(&cli)?;
    let released = cli.run(&["release", &long, "--json", "--timeout", REPLY_TIMEOUT])?.ok()?;
    let r = released.json()?;
    assert_eq!(r["status"], "released", "{r}");
    assert_eq!(r["unused_minutes"], 2, "{r}");
    assert_eq!(balance(&cli)? - before, 120, "the refund is in the wallet: {}", released.stderr);

    // A lease of 30 s: its notice comes 20 s before the end, and `watch` prints it.
    let short = cli.buy(&p.pubkey, "30", &mint)?["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let watched = cli.run(&["watch", "--timeout", "30", "--json"])?.ok()?;
    let notice = watched
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["status"] == "notice" && v["lease_id"] == short.as_str())
        .ok_or_else(|| anyhow!("no notice for {short}: {}\n{}", watched.stdout, watched.stderr))?;
    assert!(notice["topup_command"].as_str().is_some_and(|c| c.contains(&short)), "{notice}");
    Ok(())
}

/// `keepalive` tops a lease up from the wallet before each expiry until its budget is spent, and a restarted
/// `keepalive <lease>` goes on with what is left of it.
#[test]
fn keepalive_tops_up_until_the_budget_is_spent_across_a_restart() -> Result<()> {
    let extra = [
        ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
        ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
        ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
    ];
    let p = Provider::start_ready(&extra, None)?;
    let cli = Cli::new();
    let mint = env("CASHU_MINT_URL");
    cli.run(&["wallet", "fund", "--amount", "200", "--mint", &mint])?.ok()?;
    let reply = cli.buy(&p.pubkey, "30", &mint)?;
    let lease = reply["access"]["lease_id"].as_str().unwrap_or_default().to_string();
    let first_expiry = reply["access"]["expires_at"].as_u64().unwrap_or_default();
    let saved_expiry = |cli: &Cli| -> u64 {
        std::fs::read_to_string(cli.lease_file(&lease))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["expires_at"].as_u64())
            .unwrap_or(0)
    };
    // Budget for two top-ups of 20 s; cut after the first.
    let mut ka = cli.cmd();
    ka.args(["keepalive", &lease, "--amount", "20", "--mint", &mint, "--budget", "40", "--lead", "15"]);
    let mut child = ka.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let once = wait_until("the first top-up", std::time::Duration::from_secs(60), || {
        (saved_expiry(&cli) > first_expiry).then(|| saved_expiry(&cli))
    });
    let _ = child.kill();
    let _ = child.wait();
    let once = once?;
    assert_eq!(once, first_expiry + 20);
    // Restarted with only the lease: the rest of the budget, then it stops by itself.
    let done = cli.run(&["keepalive", &lease])?.ok()?;
    assert!(done.stdout.contains("the budget is spent"), "{}\n{}", done.stdout, done.stderr);
    assert_eq!(saved_expiry(&cli), first_expiry + 40);
    Ok(())
}

/// `request --minutes N` pays as the offer's NUT-18 payment request asks: its price for N minutes, a mint it
/// accepts, a token P2PK-locked to the provider (with a refund to the CLI's key), sent over NIP-17.
#[test]
fn request_paid_from_the_offers_payment_request() -> Result<()> {
    let p = provider();
    let cli = Cli::new();
    let mint = env("CASHU_MINT_URL");
    cli.run(&["wallet", "fund", "--amount", "300", "--mint", &mint])?.ok()?;
    let offers = cli.run(&["offers", "--json", "--timeout", "8"])?.ok()?.json()?;
    let offer = offers
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["pubkey"] == p.pubkey.as_str())
        .map(|o| o["offer"].clone())
        .expect("the provider's offer");
    assert!(offer["payment_request"].as_str().is_some_and(|c| c.starts_with("creqA")), "{offer}");

    let out = cli.run(&["request", "--provider", &p.pubkey, "--minutes", "30", "--timeout", REPLY_TIMEOUT])?.ok()?;
    assert!(
        out.stderr.contains("paying 50 sat for 30 min") && out.stderr.contains("locked to the provider"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("password:"), "{}", out.stdout);
    let leases = cli.run(&["leases", "--json"])?.ok()?.json()?;
    let lease = &leases.as_array().expect("leases")[0];
    assert!(lease["duration_seconds"].as_u64().is_some_and(|d| (1750..=1800).contains(&d)), "{lease}");
    let bal = cli.run(&["wallet", "balance", "--json"])?.ok()?.json()?;
    let left = bal.as_object().unwrap().values().filter_map(Value::as_u64).sum::<u64>();
    assert!((240..=250).contains(&left), "50 sat and fees paid: {bal}");
    delete_lease(lease["lease_id"].as_str().unwrap_or_default());

    // --minutes names no mint or token: the request decides.
    let bad = cli.run(&["request", "--provider", &p.pubkey, "--minutes", "5", "--amount", "5", "--mint", &mint])?;
    assert_ne!(bad.code, Some(0));
    Ok(())
}
