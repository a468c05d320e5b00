//! The operator's day two with the wallet, against the stack's real mints and real lease containers: earnings
//! backed up while the provider runs, restored onto empty volumes (with the CLI, and by the provider itself
//! from PAYGRESS_WALLET_SEED) with the same balance, and cashed out to Lightning (NUT-05 melt at mint A of an
//! invoice mint B issued) through the running provider's admin endpoint.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::*;

const ADMIN_TOKEN: &str = "wallet-day-two-admin-token-of-this-test";

/// `paygress wallet ARGS` on `state_dir` (the key given, or the one kept there), through the provider at
/// `http` when one runs there; `stdin` fed when given.
fn wallet_cli(state_dir: &Path, key: Option<&str>, http: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(paygress_bin());
    c.env_clear()
        .env("PATH", env("PATH"))
        .env("HOME", env("HOME"))
        .env("RUST_LOG", "warn")
        .env("WHITELISTED_MINTS", env("CASHU_MINT_URL"))
        .env("PAYGRESS_STATE_DIR", state_dir)
        .env("PAYGRESS_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg("wallet")
        .args(args);
    if let Some(k) = key {
        c.env("NOSTR_PRIVATE_KEY", k);
    }
    if let Some(h) = http {
        c.env("PAYGRESS_HTTP_ADDR", h);
    }
    let out = match stdin {
        Some(text) => {
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().expect("spawn paygress wallet");
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write stdin");
            child.wait_with_output()
        }
        None => c.output(),
    };
    out.expect("run paygress wallet")
}

fn ok(out: Output) -> Result<String> {
    ensure!(out.status.success(), "paygress wallet failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The sum of "MINT\tN sat" lines.
fn total(balance_text: &str) -> Result<u64> {
    balance_text
        .lines()
        .filter_map(|l| l.trim().strip_suffix(" sat"))
        .map(|l| l.rsplit('\t').next().unwrap_or_default().parse::<u64>().map_err(|e| anyhow!("{l:?}: {e}")))
        .sum()
}

fn backup_line(backup: &str, prefix: &str) -> Result<String> {
    backup
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_string)
        .with_context(|| format!("no {prefix} line in the backup"))
}

/// A BOLT11 invoice of `sats` from mint B (its FakeWallet issues real-format invoices): what an operator's
/// Lightning wallet would give.
fn invoice(sats: u64) -> Result<String> {
    let url = format!("{}/v1/mint/quote/bolt11", env("CASHU_MINT_URL_ALT").trim_end_matches('/'));
    let body = format!(r#"{{"amount":{sats},"unit":"sat"}}"#);
    let out = run(Command::new("curl").args([
        "-sf",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ]))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["request"].as_str().map(str::to_string).context("no invoice in mint B's quote")
}

#[test]
fn a_backup_restores_the_same_balance_and_earnings_cash_out_to_lightning() -> Result<()> {
    let admin = [("PAYGRESS_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string())];
    let p = Provider::start(ProviderOptions { extra_env: admin.to_vec(), ..Default::default() })?;

    // Earnings: one paid lease (a real container).
    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(200)?;
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&w.send(60)?, "dave"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, Duration::from_secs(120))?;
    ensure!(reply["status"] == "ok", "{reply}");

    let before = total(&ok(wallet_cli(&p.state_dir, Some(&p.nsec_hex), Some(&p.http), &["balance"], None))?)?;
    ensure!(before >= 60, "the provider earned the lease's 60 sat: {before}");

    // The backup, taken while the provider runs (it reads files only), and none of it in the provider's log.
    let backup = ok(wallet_cli(&p.state_dir, Some(&p.nsec_hex), None, &["backup"], None))?;
    let phrase = backup_line(&backup, "PAYGRESS_WALLET_SEED=")?;
    let nsec = backup_line(&backup, "NOSTR_PRIVATE_KEY=")?;
    ensure!(
        phrase.split_whitespace().count() == 12 && nsec.starts_with("nsec1"),
        "backup: {} lines",
        backup.lines().count()
    );
    let log = p.log_text();
    ensure!(!log.contains(&phrase) && !log.contains(&nsec), "the provider logged the backup's secrets");

    // Never over a wallet: the running provider's own volume refuses a restore, and keeps its seed.
    let over = wallet_cli(&p.state_dir, Some(&p.nsec_hex), None, &["restore"], Some(&backup));
    ensure!(!over.status.success(), "a restore over an existing wallet must be refused");

    // 1. The CLI, onto an empty volume with no key of its own: the backup's key is kept there, the ecash found.
    let empty = tempfile::tempdir()?;
    let restored = ok(wallet_cli(empty.path(), None, None, &["restore"], Some(&backup)))?;
    ensure!(total(&restored)? == before, "restored {restored:?}, had {before}");
    ensure!(total(&ok(wallet_cli(empty.path(), None, None, &["balance"], None))?)? == before);
    ensure!(empty.path().join("nostr.key").exists(), "the backup's key was not kept on the new volume");

    // 2. The provider itself, from the Secret-shaped variables, onto another empty volume; then cash out through
    // its admin endpoint while it runs.
    let mut p_env = admin.to_vec();
    p_env.push(("PAYGRESS_WALLET_SEED".into(), phrase.clone()));
    p_env.push(("NOSTR_PRIVATE_KEY".into(), nsec.clone()));
    let p2 = Provider::start(ProviderOptions { extra_env: p_env, ..Default::default() })?;
    let cli2 = |args: &[&str]| wallet_cli(&p2.state_dir, Some(&nsec), Some(&p2.http), args, None);
    ensure!(total(&ok(cli2(&["balance"]))?)? == before, "the provider's restore found another balance");

    let too_much = cli2(&["pay", &invoice(before + 1000)?]);
    ensure!(!too_much.status.success(), "an invoice above the balance must be refused");
    ensure!(total(&ok(cli2(&["balance"]))?)? == before, "a refused payment moved ecash");

    let paid = ok(cli2(&["pay", &invoice(20)?])).map_err(|e| anyhow!("{e}; provider log:\n{}", p2.log_tail()))?;
    let fee: u64 = paid
        .split("(fee ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no fee in {paid:?}"))?;
    ensure!(paid.starts_with("paid 20 sat"), "{paid}");
    let after = total(&ok(cli2(&["balance"]))?)?;
    ensure!(after == before - 20 - fee, "balance {after} after paying 20 + {fee} from {before}");
    // The balance the wallet shows is real at the mint: all of it leaves as a token that a stranger's wallet
    // redeems (proofs the melt spent, had they been left "unspent", would sink it).
    let rest = ok(cli2(&["send", &after.to_string()]))?;
    w.receive(rest.trim())?;
    println!(
        "day two: earned {before} sat; backup restored {before} (CLI) and {before} (provider); paid 20 + {fee} fee"
    );

    drop(p2);
    drop(p);
    Ok(())
}

/// Earn `sats` for the provider `p`: one paid lease (a real container).
fn earn(p: &Provider, w: &Wallet, sats: u64) -> Result<()> {
    let user = User::new()?;
    let id = user.publish_nip44(1000, &request_json(&w.send(sats)?, "erin"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, Duration::from_secs(120))?;
    ensure!(reply["status"] == "ok", "{reply}");
    Ok(())
}

/// Cash-out is a money path: killed right before the melt is sent, or right after the mint paid, the provider
/// comes back with the balance the mint agrees with, and the same invoice is paid exactly once.
#[test]
fn a_cash_out_killed_before_or_after_the_melt_pays_the_invoice_once() -> Result<()> {
    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(300)?;
    for point in ["before_melt", "after_melt"] {
        let mut env_of = vec![("PAYGRESS_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string())];
        env_of.push(("PAYGRESS_FAILPOINT".into(), point.into()));
        let mut first = Provider::start(ProviderOptions { extra_env: env_of, ..Default::default() })?;
        let _kept = first.keep_state();
        let state_dir = first.state_dir.clone();
        earn(&first, &w, 60)?;
        let cli = |p: &Provider, args: &[&str]| wallet_cli(&p.state_dir, Some(&p.nsec_hex), Some(&p.http), args, None);
        let before = total(&ok(cli(&first, &["balance"]))?)?;
        let inv = invoice(20)?;
        ensure!(!cli(&first, &["pay", &inv]).status.success(), "{point}: the call must die with the provider");
        first.wait_exit(Duration::from_secs(60))?;
        ensure!(first.log_text().contains("PAYGRESS_FAILPOINT reached"), "{point}: {}", first.log_tail());
        drop(first);

        let admin = vec![("PAYGRESS_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string())];
        let second =
            Provider::start(ProviderOptions { extra_env: admin, state_dir: Some(state_dir), ..Default::default() })?;
        let restarted = total(&ok(cli(&second, &["balance"]))?)?;
        let retry = cli(&second, &["pay", &inv]);
        let after = total(&ok(cli(&second, &["balance"]))?)?;
        match point {
            // Nothing reached the mint: all the money is back, and the retry pays.
            "before_melt" => {
                ensure!(restarted == before, "{point}: {restarted} after the restart, {before} before");
                ensure!(retry.status.success(), "{point}: the retry: {}", String::from_utf8_lossy(&retry.stderr));
                ensure!(
                    after < before - 20 + 1 && after + 20 + 2 >= before,
                    "{point}: {after} after paying 20 from {before}"
                );
            }
            // Paid before the crash: the balance shows it, and the same invoice is not paid again.
            _ => {
                ensure!(
                    restarted < before - 20 + 1 && restarted + 20 + 2 >= before,
                    "{point}: {restarted} from {before}"
                );
                ensure!(!retry.status.success(), "{point}: the invoice was paid twice");
                ensure!(after == restarted, "{point}: the refused retry moved ecash: {after} vs {restarted}");
            }
        }
        // What the wallet shows is real at the mint.
        let rest = ok(cli(&second, &["send", &after.to_string()]))?;
        w.receive(rest.trim())?;
        println!(
            "cash-out killed {point}: {before} sat before, {restarted} after the restart, {after} after the retry"
        );
    }
    Ok(())
}
