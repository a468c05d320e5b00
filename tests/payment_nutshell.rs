//! Black-box tests of the payment adapter against the stack's real Nutshell mints, with the `cashu` CLI as
//! the requester's wallet. Run through scripts/test (it exports the stack env).
//!
//! Mint A (CASHU_MINT_URL) is whitelisted and charges no input fee; mint B (CASHU_MINT_URL_ALT) is not
//! whitelisted and charges 100 ppk.

use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use paygress::lease::ports::{FailureKind, PaymentPort, TokenState};
use paygress::payment::CashuPayment;
use paygress::protocol::ErrorCode;
use tempfile::TempDir;

/// The provider's P2PK key in these tests (any valid secp256k1 scalar).
const PROVIDER_KEY: [u8; 32] = [0x42; 32];

fn env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("run through scripts/test (stack env missing: {var})"),
    }
}

fn mint_a() -> String {
    env("CASHU_MINT_URL")
}

fn mint_b() -> String {
    env("CASHU_MINT_URL_ALT")
}

/// A requester's Nutshell wallet in its own temporary CASHU_DIR, talking to one mint.
struct CliWallet {
    dir: TempDir,
    mint: String,
}

impl CliWallet {
    fn new(mint: &str) -> CliWallet {
        // The stack's wallet dir must be exported even though each test uses a fresh one.
        let _ = env("CASHU_DIR");
        CliWallet { dir: tempfile::tempdir().expect("tempdir"), mint: mint.to_string() }
    }

    fn run(&self, args: &[&str]) -> String {
        // Nutshell lets ./.env and ~/.cashu/.env override the environment: isolate cwd and HOME.
        let out = Command::new("cashu")
            .args(["-y"])
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("CASHU_DIR", self.dir.path().join("cashu"))
            .env("MINT_URL", &self.mint)
            .env("TOR", "FALSE")
            .env_remove("SOCKS_HOST")
            .output()
            .unwrap_or_else(|e| panic!("cannot run `cashu` (stack env PATH?): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "cashu {args:?} failed: {stdout}\n{stderr}");
        stdout + &stderr
    }

    fn balance(&self) -> u64 {
        let out = self.run(&["balance"]);
        let line = out.lines().find(|l| l.contains("Balance")).unwrap_or_else(|| panic!("no balance in {out}"));
        line.split_whitespace().find_map(|w| w.parse::<u64>().ok()).unwrap_or_else(|| panic!("no number in {line}"))
    }

    fn fund(&self, sats: u64) {
        self.run(&["invoice", &sats.to_string()]);
        assert!(self.balance() >= sats, "invoice did not fund the CLI wallet");
    }

    fn send(&self, sats: u64, extra: &[&str]) -> String {
        let mut args = vec!["send".to_string(), sats.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&argv);
        out.split_whitespace()
            .find(|w| w.starts_with("cashuA") || w.starts_with("cashuB"))
            .unwrap_or_else(|| panic!("no token printed by cashu send"))
            .to_string()
    }

    /// Receive a token; returns how much the wallet balance grew.
    fn receive(&self, token: &str) -> u64 {
        let before = self.balance();
        self.run(&["receive", token]);
        self.balance() - before
    }
}

fn provider(dir: &Path, mints: &[String]) -> CashuPayment {
    CashuPayment::new(dir, mints, &PROVIDER_KEY, "sat").expect("open wallet")
}

fn rejected(code: ErrorCode) -> FailureKind {
    FailureKind::Rejected(code)
}

#[tokio::test(flavor = "multi_thread")]
async fn redeem_once_then_token_spent() {
    let a = mint_a();
    let cli = CliWallet::new(&a);
    cli.fund(1000);
    let token = cli.send(100, &[]);
    assert!(token.starts_with("cashuB"));

    let dir = tempfile::tempdir().expect("tempdir");
    let p = provider(dir.path(), std::slice::from_ref(&a));
    let info = p.inspect(&token).expect("inspect");
    assert_eq!(info.amount, 100);
    assert_eq!(info.unit, "sat");
    assert!(!info.p2pk_locked);
    assert_eq!(info.mint_url, paygress::config::normalize_mint_url(&a).expect("url"));
    assert_eq!(p.token_state(&token).await.expect("state"), TokenState::Unspent);
    assert_eq!(p.received_amount(&token).await.expect("received"), None);

    assert_eq!(p.redeem(&token).await.expect("redeem"), 100);
    assert_eq!(p.received_amount(&token).await.expect("received"), Some(100));
    assert_eq!(p.token_state(&token).await.expect("state"), TokenState::Spent);
    let again = p.redeem(&token).await.expect_err("second redeem must fail");
    assert_eq!(again.kind, rejected(ErrorCode::TokenSpent), "{again}");
    assert_eq!(p.balance().await.expect("balance"), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_cashu_a_redeems_and_digest_matches_v4() {
    let a = mint_a();
    let cli = CliWallet::new(&a);
    cli.fund(1000);
    let token = cli.send(100, &["--legacy"]);
    assert!(token.starts_with("cashuA"), "expected a v3 token");

    let dir = tempfile::tempdir().expect("tempdir");
    let p = provider(dir.path(), std::slice::from_ref(&a));
    let info = p.inspect(&format!(" cashu:{token}\n")).expect("inspect");
    assert_eq!(info.amount, 100);
    // The same proofs re-encoded as cashuB have the same digest (one token, one lease, any encoding).
    let v3 = match cdk::nuts::Token::from_str(&token).expect("decode") {
        cdk::nuts::Token::TokenV3(t) => t,
        cdk::nuts::Token::TokenV4(_) => panic!("--legacy printed a v4 token"),
    };
    let v4 = cdk::nuts::Token::TokenV4(cdk::nuts::TokenV4::try_from(v3).expect("v3 to v4")).to_string();
    assert!(v4.starts_with("cashuB"));
    assert_eq!(p.inspect(&v4).expect("inspect v4").digest, info.digest);
    assert_eq!(p.redeem(&token).await.expect("redeem"), 100);
    assert_eq!(p.balance().await.expect("balance"), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn p2pk_locked_to_provider_redeems_and_to_others_is_refused() {
    let a = mint_a();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = provider(dir.path(), std::slice::from_ref(&a));
    let cli = CliWallet::new(&a);
    cli.fund(1000);

    let token = cli.send(100, &["--lock", &format!("P2PK:{}", p.p2pk_pubkey_hex())]);
    let info = p.inspect(&token).expect("inspect");
    assert!(info.p2pk_locked);
    assert_eq!(p.redeem(&token).await.expect("redeem locked token"), 100);

    // Locked to somebody else: refused offline, and still unspent at the mint.
    let other = CashuPayment::new(&dir.path().join("other"), std::slice::from_ref(&a), &[0x43; 32], "sat")
        .expect("other wallet");
    let foreign = cli.send(50, &["--lock", &format!("P2PK:{}", other.p2pk_pubkey_hex())]);
    let err = p.inspect(&foreign).expect_err("locked to another key");
    assert_eq!(err.kind, rejected(ErrorCode::InvalidToken), "{err}");
    let err = p.redeem(&foreign).await.expect_err("locked to another key");
    assert_eq!(err.kind, rejected(ErrorCode::InvalidToken), "{err}");
    assert_eq!(p.token_state(&foreign).await.expect("state"), TokenState::Unspent);
    assert_eq!(other.redeem(&foreign).await.expect("its owner can redeem"), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_of_other_mint_is_refused_and_left_unspent() {
    let (a, b) = (mint_a(), mint_b());
    let cli_b = CliWallet::new(&b);
    cli_b.fund(1000);
    let token = cli_b.send(100, &[]);

    let dir = tempfile::tempdir().expect("tempdir");
    let p = provider(dir.path(), std::slice::from_ref(&a));
    let err = p.inspect(&token).expect_err("mint B is not whitelisted");
    assert_eq!(err.kind, rejected(ErrorCode::MintNotAllowed), "{err}");
    let err = p.redeem(&token).await.expect_err("mint B is not whitelisted");
    assert_eq!(err.kind, rejected(ErrorCode::MintNotAllowed), "{err}");
    let err = p.token_state(&token).await.expect_err("no call to mint B");
    assert_eq!(err.kind, rejected(ErrorCode::MintNotAllowed), "{err}");

    // A wallet that does trust mint B sees the token unspent, and a user can still receive it.
    let dir_b = tempfile::tempdir().expect("tempdir");
    let pb = provider(dir_b.path(), std::slice::from_ref(&b));
    assert_eq!(pb.token_state(&token).await.expect("state at B"), TokenState::Unspent);
    let receiver = CliWallet::new(&b);
    let got = receiver.receive(&token);
    assert!(got > 0 && got <= 100, "token should still be spendable at mint B (got {got})");
}

#[tokio::test(flavor = "multi_thread")]
async fn refund_is_receivable_and_wallet_survives_reopen() {
    let a = mint_a();
    let cli = CliWallet::new(&a);
    cli.fund(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let p = provider(dir.path(), std::slice::from_ref(&a));
        assert_eq!(p.redeem(&cli.send(100, &[])).await.expect("redeem"), 100);
        assert_eq!(p.redeem(&cli.send(64, &["--legacy"])).await.expect("redeem"), 64);
    }
    // A restart: same dir, new instance.
    let p = provider(dir.path(), std::slice::from_ref(&a));
    assert_eq!(p.balance().await.expect("balance"), 164);
    let norm = paygress::config::normalize_mint_url(&a).expect("url");
    assert_eq!(p.balances().await.expect("balances"), vec![(norm.clone(), 164)]);

    let refund = p.refund(&a, 40, "r1").await.expect("refund");
    assert!(refund.starts_with("cashuB"));
    assert_eq!(p.balance().await.expect("balance"), 124);
    let requester = CliWallet::new(&a);
    assert_eq!(requester.receive(&refund), 40);

    // More than the wallet holds: the most it can, reported as such.
    let sent = p.send_up_to(Some(&a), 1000).await.expect("partial send");
    assert_eq!(sent.amount, 124);
    assert_eq!(sent.requested, 1000);
    assert_eq!(p.balance().await.expect("balance"), 0);
    assert_eq!(requester.receive(&sent.token), 124);

    let err = p.refund(&a, 1, "r2").await.expect_err("empty wallet");
    assert_eq!(err.kind, FailureKind::Permanent, "{err}");

    // Operator send from whichever mint holds the most.
    assert_eq!(p.redeem(&cli.send(30, &[])).await.expect("redeem"), 30);
    let token = p.send(None, 30).await.expect("send");
    assert_eq!(requester.receive(&token), 30);
    p.recover().await.expect("nothing to recover");

    // A restart with a new whitelist (only B): ecash still held at A can be refunded there.
    assert_eq!(p.redeem(&cli.send(20, &[])).await.expect("redeem"), 20);
    drop(p);
    let b = mint_b();
    let p = provider(dir.path(), std::slice::from_ref(&b));
    let norm_b = paygress::config::normalize_mint_url(&b).expect("url");
    let mut expected = vec![(norm.clone(), 20), (norm_b, 0)];
    expected.sort();
    assert_eq!(p.balances().await.expect("balances"), expected);
    assert_eq!(requester.receive(&p.refund(&a, 20, "r3").await.expect("refund at old mint")), 20);
    let err = p.refund(&a, 1, "r4").await.expect_err("nothing left at A");
    assert!(matches!(err.kind, FailureKind::Rejected(ErrorCode::MintNotAllowed)), "{err}");
    drop(p);
    let reopened = provider(dir.path(), std::slice::from_ref(&a));
    assert_eq!(reopened.balance().await.expect("balance"), 0);
}

/// A refund is minted once per request id: a repeat (a saga resumed after a crash between minting the
/// token and recording it) returns the same token, also after a restart, and the wallet pays once.
/// Once the requester has redeemed it, a repeat is refused rather than paid again.
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_is_minted_once_per_request() {
    let a = mint_a();
    let cli = CliWallet::new(&a);
    cli.fund(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = {
        let p = provider(dir.path(), std::slice::from_ref(&a));
        assert_eq!(p.redeem(&cli.send(100, &[])).await.expect("redeem"), 100);
        let first = p.refund_once(&a, 30, "request-1").await.expect("refund");
        let again = p.refund_once(&a, 30, "request-1").await.expect("refund again");
        assert_eq!(first.token, again.token, "the same request gets the same token");
        assert_eq!(p.balance().await.expect("balance"), 70, "paid once");
        let other = p.refund_once(&a, 5, "request-2").await.expect("another request");
        assert_ne!(other.token, first.token);
        assert_eq!(p.balance().await.expect("balance"), 65);
        first.token
    };
    // A restart: the open send is found in the wallet database.
    let p = provider(dir.path(), std::slice::from_ref(&a));
    let after_restart = p.refund_once(&a, 30, "request-1").await.expect("refund after restart");
    assert_eq!(after_restart.token, token);
    assert_eq!(p.balance().await.expect("balance"), 65);

    let requester = CliWallet::new(&a);
    assert_eq!(requester.receive(&token), 30);
    drop(p);
    // Reopening checks open sends at the mint: this one is now spent, so a repeat is refused.
    let p = provider(dir.path(), std::slice::from_ref(&a));
    let err = p.refund_once(&a, 30, "request-1").await.expect_err("already redeemed");
    assert_eq!(err.kind(), FailureKind::Permanent, "{err}");
    assert_eq!(p.balance().await.expect("balance"), 65);
}

/// The token with its first proof changed by `forge` (a v4 token, as `cashu send` makes them).
fn forged(token: &str, forge: impl FnOnce(&mut cdk::nuts::nut00::ProofV4)) -> String {
    let mut t = cdk::nuts::Token::from_str(token).expect("token");
    let cdk::nuts::Token::TokenV4(v4) = &mut t else { panic!("not a v4 token") };
    forge(&mut v4.token[0].proofs[0]);
    t.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_proofs_are_refused_before_the_swap() {
    let a = mint_a();
    let cli = CliWallet::new(&a);
    cli.fund(300);
    // Nutshell includes NUT-12 DLEQ proofs when asked.
    let token = cli.send(100, &["--dleq"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = provider(dir.path(), std::slice::from_ref(&a));
    PaymentPort::vet(&p, &token).await.expect("a real token passes, with the mint's keys");

    // A signature the mint never made: its DLEQ proof does not verify against the mint's key.
    let other_point = cdk::nuts::SecretKey::from_slice(&[5u8; 32]).expect("key").public_key();
    let bad_sig = forged(&token, |proof| proof.c = other_point);
    let e = PaymentPort::vet(&p, &bad_sig).await.expect_err("forged signature");
    assert_eq!(e.kind, rejected(ErrorCode::InvalidToken), "{e}");
    assert!(e.message.contains("DLEQ"), "{}", e.message);
    // An amount no keyset signs (3 is not a power of two).
    let bad_amount = forged(&token, |proof| proof.amount = cdk::Amount::from(3));
    let e = PaymentPort::vet(&p, &bad_amount).await.expect_err("forged amount");
    assert_eq!(e.kind, rejected(ErrorCode::InvalidToken), "{e}");
    // Neither was sent to the mint: the real token is still unspent and redeems in full.
    assert_eq!(p.token_state(&token).await.expect("state"), TokenState::Unspent);
    assert_eq!(p.redeem(&token).await.expect("redeem"), 100);
}
