//! `paygress-cli`: the requester's side of the protocol in docs/protocol.md. Lists offers, buys, tops up
//! and queries leases over Nostr, pays from its own cdk wallet or a given token, and logs in over the
//! lease's onion service through an in-process arti client (`ssh` runs OpenSSH with `connect` as proxy).

mod creq;
mod home;
mod keepalive;
mod relay;
mod ssh;
mod tor;
mod wallet;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use nostr_sdk::prelude::{Keys, PublicKey, ToBech32};

use crate::config::normalize_mint_url;
use crate::protocol::{
    LeaseRequest, ReleaseRequest, Reply, StatusRequest, TopUpRequest, KIND_RELEASE, KIND_REQUEST, KIND_STATUS,
    KIND_TOPUP,
};
use home::{Home, LeaseRecord};
use wallet::CliWallet;

/// The failures a script may want to tell apart (exit codes 2, 3, 4); everything else exits 1.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    #[error("reply timeout: {0}")]
    Timeout(String),
    #[error("refused with code {code}: {message}")]
    Refused { code: String, message: String },
}

#[derive(Parser, Debug)]
#[command(name = "paygress-cli", version, about = "Buy and use Paygress SSH pods over Nostr and Tor")]
struct Cli {
    /// Data dir (key, wallet, leases, known_hosts). Default: $PAYGRESS_CLI_HOME or ~/.config/paygress-cli.
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    /// Nostr secret key (nsec or hex) or a file holding one. Default: <home>/nostr.nsec, made on first use.
    #[arg(long, global = true)]
    key: Option<String>,
    /// Relay URL (repeatable). Default: $NOSTR_RELAYS (comma-separated), or the lease's relays.
    #[arg(long = "relay", global = true)]
    relays: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List providers' offers (kind 38400).
    Offers {
        #[arg(long)]
        json: bool,
        /// Seconds to collect offers.
        #[arg(long, default_value_t = 8)]
        timeout: u64,
        /// Order: cheapest tier first (price), most free leases first (capacity), or most recently seen.
        #[arg(long, value_parser = ["price", "capacity", "seen"], default_value = "price")]
        sort: String,
    },
    /// Buy a lease.
    Request(RequestArgs),
    /// Extend a lease.
    Topup {
        lease: String,
        #[command(flatten)]
        pay: PayArgs,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Keep a lease alive: top it up from the wallet shortly before each expiry, until the budget or
    /// --until runs out. Restarted with only the lease, it goes on with what is left.
    Keepalive {
        lease: String,
        /// Sats of each top-up (paid from the wallet at --mint); required the first time.
        #[arg(long)]
        amount: Option<u64>,
        #[arg(long)]
        mint: Option<String>,
        /// Spend at most this many sats in all.
        #[arg(long)]
        budget: Option<u64>,
        /// Do not extend the lease past this time (unix seconds, or +SECONDS from now).
        #[arg(long)]
        until: Option<String>,
        /// Top up this many seconds before the expiry.
        #[arg(long, default_value_t = 120)]
        lead: u64,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Ask the provider about a lease.
    Status {
        lease: String,
        #[command(flatten)]
        io: IoArgs,
    },
    /// End a lease now: its unused whole minutes come back into the wallet.
    Release {
        lease: String,
        #[command(flatten)]
        io: IoArgs,
    },
    /// Print what providers send about your leases as it arrives: expiry notices (with the top-up
    /// command) and early ends.
    Watch {
        /// Also show messages of this many seconds back.
        #[arg(long, default_value_t = 3600)]
        since: u64,
        /// Stop after this many seconds (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Leases saved in the data dir.
    Leases {
        #[arg(long)]
        json: bool,
    },
    /// Log in to a lease over its onion service (OpenSSH through our own Tor client, host key pinned).
    Ssh {
        lease: String,
        /// Type the password with sshpass instead of printing it.
        #[arg(long)]
        sshpass: bool,
        /// Arguments passed to ssh after the destination (e.g. a command).
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Open a Tor stream to HOST:PORT and relay stdin/stdout (ssh ProxyCommand).
    Connect { host: String, port: u16 },
    /// The CLI's own Cashu wallet.
    Wallet {
        #[command(subcommand)]
        cmd: WalletCmd,
    },
    /// Print the CLI's Nostr public key.
    Whoami,
}

#[derive(Subcommand, Debug)]
enum WalletCmd {
    /// Mint ecash by paying a Lightning invoice.
    Fund {
        #[arg(long)]
        amount: u64,
        #[arg(long)]
        mint: String,
        /// Seconds to wait for the invoice to be paid.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Spendable sats per mint.
    Balance {
        #[arg(long)]
        json: bool,
    },
    /// Receive a token (`-` = stdin) into the wallet.
    Receive { token: String },
}

#[derive(Args, Debug)]
struct PayArgs {
    /// Cashu token to pay with (`-` reads it from stdin).
    #[arg(long, conflicts_with_all = ["amount", "mint"])]
    token: Option<String>,
    /// Sats to pay from the CLI's own wallet (with --mint).
    #[arg(long, requires = "mint")]
    amount: Option<u64>,
    /// Mint to pay from (with --amount).
    #[arg(long, requires = "amount")]
    mint: Option<String>,
}

#[derive(Args, Debug)]
struct IoArgs {
    /// Send as a NIP-17 gift wrap instead of NIP-44 content with a `p` tag.
    #[arg(long)]
    nip17: bool,
    /// Print only the provider's reply as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args, Debug)]
struct RequestArgs {
    /// Provider's npub or hex public key.
    #[arg(long)]
    provider: String,
    #[command(flatten)]
    pay: PayArgs,
    /// Pay for this many minutes as the offer's NUT-18 payment request asks (price, mints, P2PK lock), from
    /// the wallet, instead of --token or --amount/--mint.
    #[arg(long, conflicts_with_all = ["token", "amount", "mint"])]
    minutes: Option<u64>,
    #[arg(long)]
    tier: Option<String>,
    /// SSH user name in the pod.
    #[arg(long)]
    user: Option<String>,
    /// OpenSSH public key file to log in with (no password is generated then).
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    #[arg(long)]
    image: Option<String>,
    /// Then keep the lease alive (see `keepalive`): top-ups of the same amount from the wallet, spending
    /// at most this many sats.
    #[arg(long, value_name = "BUDGET", requires = "amount")]
    keepalive: Option<u64>,
    #[command(flatten)]
    io: IoArgs,
}

const RELAY_CONNECT: Duration = Duration::from_secs(10);
const OFFER_LOOKUP: Duration = Duration::from_secs(8);

/// Entry point of the binary: runs the command, prints any error as one line, maps it to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYGRESS_CLI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paygress-cli: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(cli));
    // Relay and Tor tasks may linger; do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("paygress-cli: {line}");
            match e.downcast_ref::<Fail>() {
                Some(Fail::Unreachable(_)) => ExitCode::from(2),
                Some(Fail::Timeout(_)) => ExitCode::from(3),
                Some(Fail::Refused { .. }) => ExitCode::from(4),
                None => ExitCode::from(1),
            }
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::resolve(cli.home.as_deref())?;
    let relays = |saved: &[String]| -> Vec<String> {
        if !cli.relays.is_empty() {
            return cli.relays.clone();
        }
        if !saved.is_empty() {
            return saved.to_vec();
        }
        std::env::var("NOSTR_RELAYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    match &cli.cmd {
        Cmd::Offers { json, timeout, sort } => {
            let keys = Keys::generate(); // reading offers needs no identity
            offers(&keys, &relays(&[]), *json, Duration::from_secs(*timeout), sort).await
        }
        Cmd::Request(args) => {
            let keys = home.keys(cli.key.as_deref())?;
            request(&home, &keys, &relays(&[]), args).await
        }
        Cmd::Topup { lease, pay, io } => {
            let keys = home.keys(cli.key.as_deref())?;
            let rec = home.find_lease(lease)?;
            let relays = relays(&rec.relays);
            topup(&home, &keys, &relays, rec, pay, io).await
        }
        Cmd::Keepalive { lease, amount, mint, budget, until, lead, io } => {
            let keys = home.keys(cli.key.as_deref())?;
            let rec = home.find_lease(lease)?;
            let relays = relays(&rec.relays);
            let now = crate::lease::service::now_secs();
            let until = match until.as_deref() {
                None => None,
                Some(u) => Some(match u.strip_prefix('+') {
                    Some(rel) => now + rel.parse::<u64>().context("--until +SECONDS")?,
                    None => u.parse::<u64>().context("--until: unix seconds or +SECONDS")?,
                }),
            };
            let plan = match (keepalive::load(&home, &rec.lease_id)?, amount, mint) {
                // Given anew: the new plan replaces a saved one.
                (_, Some(amount), Some(mint)) => keepalive::Plan {
                    lease_id: rec.lease_id.clone(),
                    amount: *amount,
                    mint: mint.clone(),
                    budget_left: *budget,
                    until,
                    lead: *lead,
                },
                (Some(saved), None, None) => {
                    eprintln!("keepalive of lease {} resumed", rec.lease_id);
                    saved
                }
                _ => bail!("--amount and --mint are needed the first time"),
            };
            keepalive::run(&home, &keys, &relays, plan, io).await
        }
        Cmd::Status { lease, io } => {
            let keys = home.keys(cli.key.as_deref())?;
            let rec = home.find_lease(lease)?;
            let relays = relays(&rec.relays);
            status(&home, &keys, &relays, rec, io).await
        }
        Cmd::Release { lease, io } => {
            let keys = home.keys(cli.key.as_deref())?;
            let rec = home.find_lease(lease)?;
            let relays = relays(&rec.relays);
            release(&home, &keys, &relays, rec, io).await
        }
        Cmd::Watch { since, timeout, json } => {
            let keys = home.keys(cli.key.as_deref())?;
            let saved = home.leases()?;
            let mut providers: Vec<nostr_sdk::prelude::PublicKey> =
                saved.iter().filter_map(|l| relay::parse_pubkey(&l.provider).ok()).collect();
            providers.sort();
            providers.dedup();
            if providers.is_empty() {
                bail!("no saved leases: nothing to watch");
            }
            let mut all_relays: Vec<String> = saved.iter().flat_map(|l| relays(&l.relays)).collect();
            all_relays.sort();
            all_relays.dedup();
            let client = relay::connect(&keys, &all_relays, RELAY_CONNECT).await?;
            let until = (*timeout > 0).then(|| Duration::from_secs(*timeout));
            let json = *json;
            relay::watch(&client, &keys, &providers, Duration::from_secs(*since), until, |_, reply| {
                if json {
                    println!("{}", serde_json::to_string(reply).unwrap_or_default());
                    return;
                }
                match reply {
                    Reply::Notice { lease_id, seconds_left, expires_at, sats_per_hour, topup_command, .. } => println!(
                        "lease {lease_id} ends in {} (at {}); an hour more costs {sats_per_hour} sat: {topup_command}",
                        span(*seconds_left),
                        when(*expires_at)
                    ),
                    Reply::Error { code, message, .. } => println!("{code}: {message}"),
                    _ => {}
                }
            })
            .await?;
            client.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Leases { json } => {
            let all = home.leases()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                eprintln!("no leases in {}", home.dir.display());
            }
            for r in all.iter().filter(|_| !*json) {
                println!(
                    "{}  {}  tier {}  expires {}  provider {}",
                    r.lease_id,
                    r.access.pod_name,
                    r.access.tier,
                    when(r.expires_at),
                    npub(&r.provider)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ssh { lease, sshpass, extra } => {
            let rec = home.find_lease(lease)?;
            let (mut cmd, password) = ssh::command(&home, &rec, *sshpass, extra)?;
            if let (false, Some(pw)) = (*sshpass, &password) {
                eprintln!("password for {}: {pw}", rec.access.ssh_username);
            }
            eprintln!("connecting over Tor (the first connection bootstraps the Tor client)…");
            let status = cmd.status().with_context(|| format!("running {:?}", cmd.get_program()))?;
            Ok(ExitCode::from(status.code().unwrap_or(255).clamp(0, 255) as u8))
        }
        Cmd::Connect { host, port } => {
            tor::connect(&home, host, *port).await?;
            Ok(ExitCode::SUCCESS)
        }
        // The key signs for a locked payment that came back (see `request --minutes`).
        Cmd::Wallet { cmd } => wallet_cmd(&home, cmd, home.keys(cli.key.as_deref()).ok()).await,
        Cmd::Whoami => {
            let keys = home.keys(cli.key.as_deref())?;
            println!("{}", keys.public_key().to_bech32().map_err(|e| anyhow!("{e}"))?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn npub(hex: &str) -> String {
    PublicKey::from_hex(hex).ok().and_then(|p| p.to_bech32().ok()).unwrap_or_else(|| hex.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `2026-11-24 10:00:00 UTC (in 1h 0m)`.
fn when(ts: u64) -> String {
    let n = now();
    let rel = if ts >= n { format!("in {}", span(ts - n)) } else { format!("{} ago", span(n - ts)) };
    format!("{} ({rel})", utc(ts))
}

fn span(s: u64) -> String {
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Civil date from unix seconds (Howard Hinnant's days-to-civil).
fn utc(ts: u64) -> String {
    let days = (ts / 86400) as i64;
    let sod = ts % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", sod / 3600, (sod % 3600) / 60, sod % 60)
}

/// A provider whose last offer is older than twice its heartbeat (and a minute of slack) is gone.
fn alive(s: &relay::SeenOffer, now: u64) -> bool {
    let hb = s.offer.heartbeat_seconds;
    hb == 0 || now.saturating_sub(s.created_at) <= 2 * hb + 60
}

/// Leases all tiers can still place; None when any tier is unbounded (or its provider does not say).
fn capacity(o: &crate::protocol::Offer) -> Option<u64> {
    o.tiers.iter().map(|t| t.capacity).sum()
}

async fn offers(keys: &Keys, relays: &[String], json: bool, timeout: Duration, sort: &str) -> Result<ExitCode> {
    let client = relay::connect(keys, relays, RELAY_CONNECT).await?;
    let found = relay::fetch_offers(&client, None, timeout).await;
    client.shutdown().await;
    let now = crate::lease::service::now_secs();
    let mut found: Vec<_> = found?.into_iter().filter(|s| alive(s, now)).collect();
    let cheapest = |s: &relay::SeenOffer| s.offer.tiers.iter().map(|t| t.sats_per_hour).min().unwrap_or(u64::MAX);
    match sort {
        "capacity" => found.sort_by_key(|s| std::cmp::Reverse(capacity(&s.offer).unwrap_or(u64::MAX))),
        "seen" => found.sort_by_key(|s| std::cmp::Reverse(s.created_at)),
        _ => found.sort_by_key(cheapest),
    }
    if json {
        let v: Vec<serde_json::Value> = found
            .iter()
            .map(|s| {
                serde_json::json!({
                    "npub": s.npub(), "pubkey": s.pubkey.to_hex(), "last_seen": s.created_at, "offer": s.offer,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        eprintln!("no offers on {}", relays.join(", "));
    }
    for s in &found {
        let o = &s.offer;
        println!("{}", s.npub());
        println!("  last seen: {}", when(s.created_at));
        println!("  onion:     {}", if o.onion_access { "yes" } else { "no" });
        println!("  mints:     {}", o.accepted_mints.join(", "));
        println!(
            "  lease:     {}s to {}s, unit {}, default tier {}",
            o.min_duration_seconds, o.max_duration_seconds, o.unit, o.default_tier
        );
        for t in &o.tiers {
            let free = t.capacity.map_or("free: unbounded".to_string(), |c| format!("free: {c}"));
            println!(
                "  tier {:<10} {:>6} sat/h  cpu {}  memory {}  {}  isolation {}",
                t.name, t.sats_per_hour, t.cpu, t.memory, free, t.isolation
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the money for a request comes from.
enum Paid {
    Token(String),
    /// From our wallet: if the provider takes nothing, we swap it back.
    Wallet(String),
    /// From our wallet, P2PK-locked to the provider as its payment request asks: ours again only after the
    /// lock's refund time (unix seconds).
    Locked(String, u64),
}

impl Paid {
    fn token(&self) -> &str {
        match self {
            Paid::Token(t) | Paid::Wallet(t) | Paid::Locked(t, _) => t,
        }
    }
}

async fn pay(home: &Home, pay: &PayArgs, accepted: Option<&[String]>) -> Result<Paid> {
    match (&pay.token, pay.amount, &pay.mint) {
        (Some(t), _, _) => {
            let t = if t == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("reading the token from stdin")?;
                s
            } else {
                t.clone()
            };
            let t = t.trim().to_string();
            if !(t.starts_with("cashuA") || t.starts_with("cashuB")) {
                bail!("--token is not a cashuA/cashuB token");
            }
            Ok(Paid::Token(t))
        }
        (None, Some(amount), Some(mint)) => {
            let norm = normalize_mint_url(mint).ok_or_else(|| anyhow!("bad mint URL {mint}"))?;
            if let Some(acc) = accepted {
                if !acc.iter().any(|m| normalize_mint_url(m).as_deref() == Some(norm.as_str())) {
                    bail!("the provider does not accept {mint} (it accepts: {})", acc.join(", "));
                }
            }
            let w = CliWallet::open(&home.wallet_dir())?;
            eprintln!("paying {amount} sat from the wallet at {norm}");
            Ok(Paid::Wallet(w.send(&norm, amount).await?))
        }
        _ => bail!("pay with --token TOKEN or --amount N --mint URL"),
    }
}

/// After an error reply: take a refund token into the wallet, or our unspent wallet token back.
async fn settle_refusal(home: &Home, paid: &Paid, refund: Option<&str>) {
    let wallet = CliWallet::open(&home.wallet_dir());
    match (refund, paid, wallet) {
        (Some(r), _, Ok(w)) => match w.receive(r).await {
            Ok(n) => eprintln!("refund of {n} sat received into the wallet ({})", w.dir().display()),
            Err(e) => {
                eprintln!("the provider refunded a token, but the wallet could not take it ({e}); the token:");
                println!("{r}");
            }
        },
        (None, Paid::Wallet(t), Ok(w)) => {
            if let Ok(n) = w.receive(t).await {
                eprintln!("the provider took nothing; {n} sat back in the wallet");
            }
        }
        (None, Paid::Locked(t, at), _) => keep_locked(home, t, *at),
        (Some(r), _, Err(_)) => {
            eprintln!("the provider refunded a token:");
            println!("{r}");
        }
        _ => {}
    }
}

/// A locked payment the provider did not take is ours after its refund time: keep it until then.
fn keep_locked(home: &Home, token: &str, at: u64) {
    use sha2::Digest;
    // Named by a digest: a file name must not carry any of the token.
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let name = format!("locked-{at}-{}", &digest[..16]);
    match home.keep_pending_token(&name, token) {
        Ok(p) => eprintln!(
            "the payment was locked to the provider; after {} take it back: paygress-cli wallet receive - < {}",
            utc(at),
            p.display()
        ),
        Err(_) => eprintln!("the payment was locked to the provider; after {} receive this token:\n{token}", utc(at)),
    }
}

/// Money paid beyond the longest lease comes back with the lease: into the wallet, or printed.
async fn receive_change(home: &Home, change: Option<&str>) {
    let Some(token) = change else { return };
    match CliWallet::open(&home.wallet_dir()) {
        Ok(w) => match w.receive(token).await {
            Ok(n) => eprintln!("{n} sat came back into the wallet"),
            Err(e) => {
                eprintln!("the provider returned change, but the wallet could not take it ({e}); the token:");
                println!("{token}");
            }
        },
        Err(_) => {
            eprintln!("the provider returned change beyond the longest lease:");
            println!("{token}");
        }
    }
}

fn refused(reply: &Reply) -> Option<Fail> {
    match reply {
        Reply::Error { code, message, .. } => Some(Fail::Refused { code: code.to_string(), message: message.clone() }),
        _ => None,
    }
}

async fn request(home: &Home, keys: &Keys, relays: &[String], a: &RequestArgs) -> Result<ExitCode> {
    let provider = relay::parse_pubkey(&a.provider)?;
    let quiet = a.io.json;
    let client = relay::connect(keys, relays, RELAY_CONNECT).await?;
    let res = request_with(home, keys, relays, a, &client, provider, quiet).await;
    client.shutdown().await;
    res
}

async fn request_with(
    home: &Home,
    keys: &Keys,
    relays: &[String],
    a: &RequestArgs,
    client: &nostr_sdk::Client,
    provider: PublicKey,
    quiet: bool,
) -> Result<ExitCode> {
    let npub = provider.to_bech32().unwrap_or_else(|_| provider.to_hex());
    let offers = relay::fetch_offers(client, Some(provider), OFFER_LOOKUP).await?;
    let Some(offer) = offers.into_iter().next() else {
        return Err(Fail::Unreachable(format!("no offer from {npub} on {}", relays.join(", "))).into());
    };
    let o = &offer.offer;
    if let Some(t) = &a.tier {
        if !o.tiers.iter().any(|x| &x.name == t) {
            let names: Vec<&str> = o.tiers.iter().map(|x| x.name.as_str()).collect();
            bail!("the provider offers no tier {t:?} (tiers: {})", names.join(", "));
        }
    }
    if !quiet {
        let tier = a.tier.as_deref().unwrap_or(&o.default_tier);
        let price = o.tiers.iter().find(|x| x.name == tier).map(|x| x.sats_per_hour).unwrap_or(0);
        eprintln!("provider {npub}: tier {tier} at {price} sat/h, onion {}", if o.onion_access { "yes" } else { "no" });
    }
    let (ssh_public_key, ssh_identity) = match &a.ssh_key {
        Some(p) => {
            let p = expand_tilde(p);
            let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let key = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string();
            let private = p.to_str().and_then(|s| s.strip_suffix(".pub")).map(PathBuf::from).filter(|x| x.exists());
            (Some(key), private)
        }
        None => (None, None),
    };
    let paid = match a.minutes {
        Some(m) => {
            let priced = creq::price(o, a.tier.as_deref(), m)?;
            let now = crate::lease::service::now_secs();
            let (token, mint) = creq::pay(&CliWallet::open(&home.wallet_dir())?, &priced, keys, now).await?;
            if !quiet {
                let lock = if priced.creq.p2pk.is_some() { ", locked to the provider" } else { "" };
                eprintln!("paying {} sat for {} min from the wallet at {mint}{lock}", priced.amount, priced.secs / 60);
            }
            Paid::Locked(token, now + creq::REFUND_AFTER_SECS)
        }
        None => pay(home, &a.pay, Some(&o.accepted_mints)).await?,
    };
    let body = LeaseRequest {
        cashu_token: paid.token().to_string(),
        ssh_username: a.user.clone(),
        pod_image: a.image.clone(),
        ssh_public_key,
        tier: a.tier.clone(),
    };
    let json = serde_json::to_string(&body)?;
    // The payment request's transport is NIP-17.
    let nip17 = a.io.nip17 || a.minutes.is_some();
    let out = relay::build_request(keys, &provider, KIND_REQUEST, &json, nip17).await?;
    let rid = out.request_id.to_hex();
    let reply = match relay::exchange(client, keys, &provider, &out, Duration::from_secs(a.io.timeout), quiet).await {
        Ok(r) => r,
        Err(e) => {
            match &paid {
                Paid::Wallet(t) => {
                    if let Ok(p) = home.keep_pending_token(&rid, t) {
                        eprintln!("the token paid is kept in {} (paygress-cli wallet receive - < it)", p.display());
                    }
                }
                Paid::Locked(t, at) => keep_locked(home, t, *at),
                Paid::Token(_) => {}
            }
            return Err(e);
        }
    };
    if a.io.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    }
    match &reply {
        Reply::Ok { request_id, amount_sats, duration_seconds, access, refund_token } => {
            receive_change(home, refund_token.as_deref()).await;
            let rec = LeaseRecord {
                lease_id: access.lease_id.clone(),
                provider: provider.to_hex(),
                relays: relays.to_vec(),
                request_id: request_id.clone(),
                amount_sats: *amount_sats,
                duration_seconds: *duration_seconds,
                expires_at: access.expires_at,
                access: (**access).clone(),
                ssh_identity,
            };
            home.save_lease(&rec)?;
            if let (Some(onion), Some(key)) = (&access.onion_address, &access.host_public_key) {
                home.pin_host_key(&format!("[{onion}]:{}", access.ssh_port), key)?;
            }
            if !a.io.json {
                print_access(&rec);
            }
            if let (Some(budget), Some(amount), Some(mint)) = (a.keepalive, a.pay.amount, a.pay.mint.clone()) {
                let plan = keepalive::Plan {
                    lease_id: rec.lease_id.clone(),
                    amount,
                    mint,
                    budget_left: Some(budget),
                    until: None,
                    lead: 120,
                };
                return keepalive::run(home, keys, relays, plan, &a.io).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { refund_token, .. } => {
            settle_refusal(home, &paid, refund_token.as_deref()).await;
            Err(refused(&reply).map(anyhow::Error::from).unwrap_or_else(|| anyhow!("refused")))
        }
        other => bail!("unexpected reply to a lease request: {}", serde_json::to_string(other)?),
    }
}

fn expand_tilde(p: &std::path::Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(h)) => PathBuf::from(h).join(rest),
        _ => p.to_path_buf(),
    }
}

fn print_access(rec: &LeaseRecord) {
    let a = &rec.access;
    println!("lease {} ({}), tier {}", a.lease_id, a.pod_name, a.tier);
    println!("  paid:      {} sat for {}", rec.amount_sats, span(rec.duration_seconds));
    println!("  expires:   {}", when(a.expires_at));
    println!("  user:      {}", a.ssh_username);
    if let Some(pw) = &a.ssh_password {
        println!("  password:  {pw}");
    }
    println!("  host key:  {}", a.host_key_fingerprint);
    match &a.onion_address {
        Some(onion) => {
            println!("  onion:     {onion} port {}", a.ssh_port);
            println!("  ssh:       paygress-cli ssh {}", a.lease_id);
        }
        None => {
            println!("  no onion service; from inside the cluster's network:");
            println!("  ssh:       {} && {}", a.port_forward_command, a.ssh_command);
        }
    }
}

async fn topup(
    home: &Home,
    keys: &Keys,
    relays: &[String],
    mut rec: LeaseRecord,
    pay_args: &PayArgs,
    io: &IoArgs,
) -> Result<ExitCode> {
    let provider = relay::parse_pubkey(&rec.provider)?;
    let client = relay::connect(keys, relays, RELAY_CONNECT).await?;
    let res = async {
        let paid = pay(home, pay_args, None).await?;
        let body = TopUpRequest { cashu_token: paid.token().to_string(), lease: rec.lease_id.clone() };
        let out = relay::build_request(keys, &provider, KIND_TOPUP, &serde_json::to_string(&body)?, io.nip17).await?;
        let reply = relay::exchange(&client, keys, &provider, &out, Duration::from_secs(io.timeout), io.json).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                if let Paid::Wallet(t) = &paid {
                    if let Ok(p) = home.keep_pending_token(&out.request_id.to_hex(), t) {
                        eprintln!("the token paid is kept in {}", p.display());
                    }
                }
                return Err(e);
            }
        };
        Ok((paid, reply))
    }
    .await;
    client.shutdown().await;
    let (paid, reply) = res?;
    if io.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    }
    match &reply {
        Reply::Extended { amount_sats, added_seconds, expires_at, refund_token, .. } => {
            receive_change(home, refund_token.as_deref()).await;
            rec.expires_at = *expires_at;
            rec.access.expires_at = *expires_at;
            home.save_lease(&rec)?;
            if !io.json {
                println!(
                    "lease {} extended by {} for {amount_sats} sat; expires {}",
                    rec.lease_id,
                    span(*added_seconds),
                    when(*expires_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { refund_token, .. } => {
            settle_refusal(home, &paid, refund_token.as_deref()).await;
            Err(refused(&reply).map(anyhow::Error::from).unwrap_or_else(|| anyhow!("refused")))
        }
        other => bail!("unexpected reply to a top-up: {}", serde_json::to_string(other)?),
    }
}

/// Send one request about a saved lease that pays nothing, and wait for the provider's reply (printed
/// whole with --json).
async fn ask(
    keys: &Keys,
    relays: &[String],
    rec: &LeaseRecord,
    kind: u16,
    body: &impl serde::Serialize,
    io: &IoArgs,
) -> Result<Reply> {
    let provider = relay::parse_pubkey(&rec.provider)?;
    let client = relay::connect(keys, relays, RELAY_CONNECT).await?;
    let res = async {
        let out = relay::build_request(keys, &provider, kind, &serde_json::to_string(body)?, io.nip17).await?;
        relay::exchange(&client, keys, &provider, &out, Duration::from_secs(io.timeout), io.json).await
    }
    .await;
    client.shutdown().await;
    let reply = res?;
    if io.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    }
    Ok(reply)
}

async fn status(home: &Home, keys: &Keys, relays: &[String], mut rec: LeaseRecord, io: &IoArgs) -> Result<ExitCode> {
    let reply = ask(keys, relays, &rec, KIND_STATUS, &StatusRequest { lease: rec.lease_id.clone() }, io).await?;
    match &reply {
        Reply::Status { lease, .. } => {
            rec.expires_at = lease.expires_at;
            home.save_lease(&rec)?;
            if !io.json {
                println!(
                    "lease {} ({}): {}, expires {}",
                    lease.lease_id,
                    lease.pod_name,
                    lease.state,
                    when(lease.expires_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { .. } => Err(refused(&reply).map(anyhow::Error::from).unwrap_or_else(|| anyhow!("refused"))),
        other => bail!("unexpected reply to a status query: {}", serde_json::to_string(other)?),
    }
}

async fn release(home: &Home, keys: &Keys, relays: &[String], mut rec: LeaseRecord, io: &IoArgs) -> Result<ExitCode> {
    let reply = ask(keys, relays, &rec, KIND_RELEASE, &ReleaseRequest { lease: rec.lease_id.clone() }, io).await?;
    match &reply {
        Reply::Released { lease_id, unused_minutes, refund_token, .. } => {
            receive_change(home, refund_token.as_deref()).await;
            rec.expires_at = crate::lease::service::now_secs();
            rec.access.expires_at = rec.expires_at;
            home.save_lease(&rec)?;
            if !io.json {
                println!("lease {lease_id} released; {unused_minutes} unused minutes refunded");
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { .. } => Err(refused(&reply).map(anyhow::Error::from).unwrap_or_else(|| anyhow!("refused"))),
        other => bail!("unexpected reply to a release: {}", serde_json::to_string(other)?),
    }
}

async fn wallet_cmd(home: &Home, cmd: &WalletCmd, keys: Option<Keys>) -> Result<ExitCode> {
    let w = CliWallet::open(&home.wallet_dir())?;
    match cmd {
        WalletCmd::Fund { amount, mint, wait } => {
            let n = w.fund(mint, *amount, Duration::from_secs(*wait)).await?;
            println!("minted {n} sat at {mint}");
        }
        WalletCmd::Balance { json } => {
            let b = w.balances().await?;
            if *json {
                let m: serde_json::Map<String, serde_json::Value> =
                    b.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect();
                println!("{}", serde_json::Value::Object(m));
            } else {
                for (mint, sats) in &b {
                    println!("{sats} sat  {mint}");
                }
                println!("{} sat total", b.iter().map(|(_, s)| s).sum::<u64>());
            }
        }
        WalletCmd::Receive { token } => {
            let t = if token == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                token.clone()
            };
            let key = keys.as_ref().map(creq::refund_key).transpose()?;
            println!("received {} sat", w.receive_with(t.trim(), key.as_ref()).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn fail_lines_are_the_documented_ones() {
        let f = Fail::Refused { code: "token_spent".into(), message: "already used".into() };
        assert_eq!(f.to_string(), "refused with code token_spent: already used");
        assert!(Fail::Timeout("x".into()).to_string().starts_with("reply timeout: "));
        assert!(Fail::Unreachable("x".into()).to_string().starts_with("provider unreachable: "));
    }

    #[test]
    fn pay_flags_are_exclusive() {
        let ok = Cli::try_parse_from(["p", "request", "--provider", "x", "--amount", "5", "--mint", "http://m"]);
        assert!(ok.is_ok());
        assert!(Cli::try_parse_from(["p", "request", "--provider", "x", "--amount", "5"]).is_err());
        assert!(Cli::try_parse_from([
            "p",
            "request",
            "--provider",
            "x",
            "--token",
            "t",
            "--amount",
            "5",
            "--mint",
            "m"
        ])
        .is_err());
        let ssh = Cli::try_parse_from(["p", "ssh", "L", "--", "echo", "ok"]).unwrap();
        match ssh.cmd {
            Cmd::Ssh { extra, .. } => assert_eq!(extra, ["echo", "ok"]),
            _ => panic!("not ssh"),
        }
    }
}
