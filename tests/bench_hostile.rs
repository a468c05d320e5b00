//! Benchmark, not a test: how the provider holds against strangers. Prints numbers; asserts none.
//!
//! 1. Junk absorbed: N junk events addressed to the provider (kind 1000, our `p` tag, content that is not a
//!    request), from fresh keys and from one key, published at once; events per second until the provider's
//!    counters account for all of them, with the journal's size and the provider's RSS before and after.
//! 2. A paid request alone, then the same while 1 000 junk events arrive: request → reply, side by side.
//! 3. With `BENCH_TOR=1`: a stalling client opens 300 streams to one lease's onion service (30 circuits of
//!    10, through the stack's C tor, sending nothing); how many the provider holds, its RSS, and another
//!    tenant's `torsocks ssh` login time before and during.
//!
//! 4. Concurrent releases: leases each released by 4 NIP-44 releases sent at once; refunds paid per lease.
//! 5. Floods that used to reach the journal: releases with a 20 KB `lease` field, and creates with forged
//!    proofs (a real token's signature replaced; its DLEQ proof no longer verifies), each from fresh keys;
//!    journal bytes and RSS before and after, and a paid request's latency during each flood.
//! 6. One HTTP client holding 300 keep-alive connections to the provider's HTTP port: how many it gets,
//!    and the latency of `/healthz` from another address before and during.
//!
//! Run with the stack up: `scripts/bench/hostile.sh` (or `cargo test --test bench_hostile -- --ignored
//! --nocapture` with the stack env). `BENCH_JUNK=2000` sets N.

mod common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::*;
use nostr_sdk::prelude::*;

const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The provider process (the child of the harness's babysitter shell).
fn provider_pid(p: &Provider) -> u32 {
    let parent = p.child.id();
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "paygress"))
        .unwrap_or(parent)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn journal_kib(p: &Provider) -> u64 {
    std::fs::metadata(p.state_dir.join("journal.redb")).map(|m| m.len() / 1024).unwrap_or(0)
}

/// Every request the provider has accounted for: answered (any outcome), shed or rate-limited.
fn accounted(p: &Provider) -> Result<u64> {
    let m = p.metrics()?;
    Ok(m.lines()
        .filter(|l| l.starts_with("paygress_requests_total{"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

fn junk(provider: &PublicKey, keys: &Keys, i: usize) -> Result<Event> {
    Ok(EventBuilder::new(Kind::from(1000u16), format!("{{\"junk\":{i}}}"))
        .tag(Tag::public_key(*provider))
        .sign_with_keys(keys)?)
}

async fn publish_all(client: &Client, events: &[Event]) -> Result<()> {
    for chunk in events.chunks(200) {
        for out in futures::future::join_all(chunk.iter().map(|e| client.send_event(e))).await {
            out?;
        }
    }
    Ok(())
}

/// Publish a paid NIP-44 request and wait for its reply.
async fn paid_request(client: &Client, provider: &PublicKey, wallet: &Wallet, user: &str) -> Result<Duration> {
    Ok(buy(client, provider, wallet, user).await?.0)
}

/// A lease: how long its reply took, and the reply.
async fn buy(
    client: &Client,
    provider: &PublicKey,
    wallet: &Wallet,
    user: &str,
) -> Result<(Duration, serde_json::Value)> {
    let keys = Keys::generate();
    let token = wallet.send(10)?;
    let content = nip44::encrypt(keys.secret_key(), provider, request_json(&token, user), nip44::Version::V2)?;
    let event =
        EventBuilder::new(Kind::from(1000u16), content).tag(Tag::public_key(*provider)).sign_with_keys(&keys)?;
    let filter = Filter::new().kind(Kind::from(1001u16)).author(*provider).pubkey(keys.public_key()).event(event.id);
    let mut notes = client.notifications();
    let sub = client.subscribe(filter, None).await?;
    let start = Instant::now();
    ensure!(!client.send_event(&event).await?.success.is_empty(), "the relay refused the request");
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    let took = loop {
        let note = tokio::time::timeout_at(deadline, notes.recv()).await.map_err(|_| anyhow!("no reply"))??;
        let RelayPoolNotification::Event { event: reply, .. } = note else { continue };
        if reply.tags.iter().any(|t| t.as_slice().get(1).map(String::as_str) == Some(&event.id.to_hex())) {
            let plain = nip44::decrypt(keys.secret_key(), provider, &reply.content)?;
            let v: serde_json::Value = serde_json::from_str(&plain)?;
            ensure!(v["status"] == "ok", "reply: {v}");
            break (start.elapsed(), v);
        }
    };
    client.unsubscribe(&sub.val).await;
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench/hostile.sh"]
async fn hostile() -> Result<()> {
    let n: usize = std::env::var("BENCH_JUNK").unwrap_or_else(|_| "2000".into()).parse().context("BENCH_JUNK")?;
    let provider = Provider::start(ProviderOptions::default())?;
    provider.wait_ready(Duration::from_secs(120))?;
    let pid = provider_pid(&provider);
    let pk = PublicKey::from_hex(&provider.pubkey)?;
    let client = Client::default();
    client.add_relay(relay().as_str()).await?;
    client.connect().await;
    let wallet = Wallet::new(&env("CASHU_MINT_URL"))?;
    wallet.fund(100)?;

    println!("1. junk absorbed ({n} events published at once; Tor off)");
    println!(
        "{:>12} {:>10} {:>11} {:>12} {:>12} {:>10} {:>10}",
        "senders", "events/s", "publish/s", "journal KiB", "", "RSS MiB", ""
    );
    println!("{:>12} {:>10} {:>11} {:>12} {:>12} {:>10} {:>10}", "", "", "", "before", "after", "before", "after");
    for (label, fresh) in [("fresh keys", true), ("one key", false)] {
        let one = Keys::generate();
        let events: Vec<Event> =
            (0..n).map(|i| junk(&pk, &if fresh { Keys::generate() } else { one.clone() }, i)).collect::<Result<_>>()?;
        let (j0, r0, a0) = (journal_kib(&provider), rss_kib(pid), accounted(&provider)?);
        let start = Instant::now();
        publish_all(&client, &events).await?;
        // The relay's own pace bounds the rest: the events cannot be absorbed faster than they arrive.
        let published = start.elapsed().as_secs_f64();
        let done = wait_until("the provider to account for the junk", Duration::from_secs(300), || {
            accounted(&provider).ok().filter(|a| *a >= a0 + n as u64)
        });
        let secs = start.elapsed().as_secs_f64();
        let seen = accounted(&provider)? - a0;
        println!(
            "{label:>12} {:>10.0} {:>11.0} {j0:>12} {:>12} {:>10.1} {:>10.1}{}",
            seen as f64 / secs,
            n as f64 / published,
            journal_kib(&provider),
            r0 as f64 / 1024.0,
            rss_kib(pid) as f64 / 1024.0,
            if done.is_ok() { String::new() } else { format!("  (only {seen} of {n} accounted for)") }
        );
    }

    println!("\n2. a paid request, alone and while 1000 junk events arrive (request → reply)");
    let mut alone = Vec::new();
    let mut flooded = Vec::new();
    for round in 0..3 {
        alone.push(paid_request(&client, &pk, &wallet, &format!("alone{round}")).await?);
        let events: Vec<Event> = (0..1000).map(|i| junk(&pk, &Keys::generate(), i)).collect::<Result<_>>()?;
        let name = format!("flood{round}");
        let flood = publish_all(&client, &events);
        let (flood, took) = tokio::join!(flood, paid_request(&client, &pk, &wallet, &name));
        flood?;
        flooded.push(took?);
    }
    alone.sort();
    flooded.sort();
    let (a, f) = (alone[1].as_secs_f64(), flooded[1].as_secs_f64());
    println!("{:>14} {:>14} {:>8}", "alone p50", "flooded p50", "ratio");
    println!("{a:>13.2}s {f:>13.2}s {:>8.2}", f / a);
    println!("runs: alone {alone:?}; flooded {flooded:?}");
    concurrent_releases(&client, &pk, &wallet).await?;
    floods(&client, &provider, pid, &wallet).await?;
    connection_hog(&provider).await?;
    if std::env::var("BENCH_TOR").is_ok_and(|v| v == "1") {
        stalling_streams(&client, &wallet).await?;
    }
    client.disconnect().await;
    Ok(())
}

fn login_secs(access: &serde_json::Value) -> Result<f64> {
    let start = Instant::now();
    let out = tor_ssh_password(
        access["onion_address"].as_str().context("onion address")?,
        2222,
        access["ssh_username"].as_str().unwrap_or_default(),
        access["ssh_password"].as_str().context("password")?,
        "echo ok",
        None,
    )?;
    ensure!(out.trim() == "ok", "{out}");
    Ok(start.elapsed().as_secs_f64())
}

async fn stalling_streams(client: &Client, wallet: &Wallet) -> Result<()> {
    const STREAMS: usize = 300;
    const PER_CIRCUIT: usize = 10;
    let provider = Provider::start(ProviderOptions { enable_tor: true, ..Default::default() })?;
    provider.wait_ready(Duration::from_secs(180))?;
    wait_tor_can_host_onions();
    let pid = provider_pid(&provider);
    let pk = PublicKey::from_hex(&provider.pubkey)?;
    wallet.fund(30)?;
    let (_, victim) = buy(client, &pk, wallet, "victim").await?;
    let (_, stalling) = buy(client, &pk, wallet, "staller").await?;
    let (victim, stalling) = (victim["access"].clone(), stalling["access"].clone());
    let before = login_secs(&victim)?;
    let rss0 = rss_kib(pid);
    // The stalling client: open every stream, then send nothing and hold them.
    let onion = stalling["onion_address"].as_str().context("onion address")?.to_string();
    let opened = std::thread::scope(|s| {
        let handles: Vec<_> = (0..STREAMS / PER_CIRCUIT)
            .map(|c| {
                let onion = onion.clone();
                s.spawn(move || {
                    (0..PER_CIRCUIT)
                        .map(|_| socks5_open(&onion, 2222, Some(&format!("stall{c}")), Duration::from_secs(60)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect::<Vec<_>>()
    });
    let held: Vec<_> = opened.iter().filter(|r| matches!(r, Ok((0, _)))).collect();
    let refused = opened.len() - held.len();
    let rss1 = rss_kib(pid);
    let during = login_secs(&victim)?;
    println!("\n3. a stalling client: {STREAMS} streams to one lease's onion service, {PER_CIRCUIT} per circuit");
    println!(
        "{:>8} {:>9} {:>14} {:>14} {:>16} {:>16}",
        "held", "refused", "RSS MiB before", "RSS MiB during", "victim login s", "during attack s"
    );
    println!(
        "{:>8} {refused:>9} {:>14.1} {:>14.1} {before:>16.2} {during:>16.2}",
        held.len(),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0
    );
    drop(opened);
    Ok(())
}

/// A NIP-44 event of `kind` from `keys` to the provider.
fn nip44_event(keys: &Keys, provider: &PublicKey, kind: u16, json: &str) -> Result<Event> {
    let content = nip44::encrypt(keys.secret_key(), provider, json, nip44::Version::V2)?;
    Ok(EventBuilder::new(Kind::from(kind), content).tag(Tag::public_key(*provider)).sign_with_keys(keys)?)
}

/// The decrypted replies (kind 1001) to `ids` from the provider, collected until all came or `wait` passed.
async fn replies_to(
    client: &Client,
    keys: &Keys,
    provider: &PublicKey,
    ids: &[EventId],
    wait: Duration,
) -> Result<Vec<serde_json::Value>> {
    let filter = Filter::new().kind(Kind::from(1001u16)).author(*provider).pubkey(keys.public_key());
    let deadline = Instant::now() + wait;
    loop {
        let events = client.fetch_events(filter.clone(), Duration::from_secs(5)).await?;
        let mut out = Vec::new();
        for e in events.iter() {
            let answers =
                e.tags.iter().any(|t| t.as_slice().get(1).is_some_and(|v| ids.iter().any(|id| id.to_hex() == *v)));
            if answers {
                out.push(serde_json::from_str(&nip44::decrypt(keys.secret_key(), provider, &e.content)?)?);
            }
        }
        if out.len() >= ids.len() || Instant::now() > deadline {
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn concurrent_releases(client: &Client, provider: &PublicKey, wallet: &Wallet) -> Result<()> {
    const LEASES: usize = 5;
    println!("\n4. concurrent releases: {LEASES} leases, each released by 4 NIP-44 releases sent at once");
    wallet.fund(100)?;
    let (mut refunds, mut sats, mut lease_count) = (0, 0u64, 0);
    for i in 0..LEASES {
        let keys = Keys::generate();
        let token = wallet.send(10)?;
        let create = nip44_event(&keys, provider, 1000, &request_json(&token, &format!("rel{i}")))?;
        client.send_event(&create).await?;
        let r = replies_to(client, &keys, provider, &[create.id], REPLY_TIMEOUT).await?;
        let Some(lease) = r.first().and_then(|v| v["access"]["lease_id"].as_str()).map(str::to_string) else {
            println!("lease {i}: no lease ({r:?})");
            continue;
        };
        lease_count += 1;
        let body = serde_json::json!({ "lease": lease }).to_string();
        let events: Vec<Event> = (0..4).map(|_| nip44_event(&keys, provider, 1004, &body)).collect::<Result<_>>()?;
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        futures::future::join_all(events.iter().map(|e| client.send_event(e))).await;
        for v in replies_to(client, &keys, provider, &ids, Duration::from_secs(60)).await? {
            if v["status"] == "released" && v["refund_token"].is_string() {
                refunds += 1;
                sats += v["amount_sats"].as_u64().unwrap_or(0);
            }
        }
    }
    println!("{:>8} {:>10} {:>14} {:>12}", "leases", "releases", "refunds paid", "sats back");
    println!("{lease_count:>8} {:>10} {refunds:>14} {sats:>12}", lease_count * 4);
    Ok(())
}

/// A real token with its first proof's signature replaced: its DLEQ proof no longer verifies.
fn forge(token: &str) -> Result<String> {
    use std::str::FromStr as _;
    let mut t = cdk::nuts::Token::from_str(token)?;
    let cdk::nuts::Token::TokenV4(v4) = &mut t else { anyhow::bail!("not a v4 token") };
    v4.token[0].proofs[0].c = cdk::nuts::SecretKey::generate().public_key();
    Ok(t.to_string())
}

async fn floods(client: &Client, provider_proc: &Provider, pid: u32, wallet: &Wallet) -> Result<()> {
    const N: usize = 300;
    let pk = PublicKey::from_hex(&provider_proc.pubkey)?;
    println!("\n5. floods from {N} fresh keys each, and a paid request during each");
    println!("{:>26} {:>12} {:>12} {:>10} {:>10} {:>12}", "flood", "journal KiB", "", "RSS MiB", "", "paid reply s");
    println!("{:>26} {:>12} {:>12} {:>10} {:>10}", "", "before", "after", "before", "after");
    let real = wallet.send(10)?;
    for label in ["20 KB lease field releases", "forged-proof creates"] {
        let events: Vec<Event> = (0..N)
            .map(|i| {
                let keys = Keys::generate();
                if label.starts_with("forged") {
                    nip44_event(&keys, &pk, 1000, &request_json(&forge(&real)?, &format!("forged{i}")))
                } else {
                    let body = serde_json::json!({ "lease": "x".repeat(20_000) }).to_string();
                    nip44_event(&keys, &pk, 1004, &body)
                }
            })
            .collect::<Result<_>>()?;
        let (j0, r0, a0) = (journal_kib(provider_proc), rss_kib(pid), accounted(provider_proc)?);
        let flood = publish_all(client, &events);
        let (flood, took) = tokio::join!(
            flood,
            paid_request(client, &pk, wallet, if label.starts_with("forged") { "paidforged" } else { "paidrelease" })
        );
        flood?;
        let _ = wait_until("the provider to account for the flood", Duration::from_secs(120), || {
            accounted(provider_proc).ok().filter(|a| *a >= a0 + N as u64)
        });
        println!(
            "{label:>26} {j0:>12} {:>12} {:>10.1} {:>10.1} {:>12.2}",
            journal_kib(provider_proc),
            r0 as f64 / 1024.0,
            rss_kib(pid) as f64 / 1024.0,
            took?.as_secs_f64()
        );
    }
    Ok(())
}

/// `GET /healthz` from `from` (a 127/8 address): seconds to the full answer, None when not answered in 3 s.
async fn probe_secs(http: &str, from: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let go = async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(format!("{from}:0").parse().ok()?).ok()?;
        let mut s = sock.connect(http.parse().ok()?).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(3), go).await.ok().flatten().map(|_| start.elapsed().as_secs_f64())
}

async fn connection_hog(p: &Provider) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HOG: usize = 300;
    let http = p.http.trim_start_matches("http://").trim_end_matches('/').to_string();
    let before: Vec<Option<f64>> = futures::future::join_all((0..5).map(|_| probe_secs(&http, "127.0.0.2"))).await;
    // One client, 300 keep-alive connections, each asking every 4 s (inside the 10 s header timeout, so
    // no connection is ever idle long enough to be closed).
    let held = std::sync::Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(25);
    let hogs: Vec<_> = (0..HOG)
        .map(|_| {
            let (http, held) = (http.clone(), held.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(&http).await else { return };
                let mut counted = false;
                while Instant::now() < until {
                    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 512];
                    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200") => {
                            if !counted {
                                held.fetch_add(1, Ordering::Relaxed);
                                counted = true;
                            }
                        }
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
                if counted {
                    held.fetch_sub(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let holding = held.load(Ordering::Relaxed);
    let during: Vec<Option<f64>> = futures::future::join_all((0..5).map(|_| probe_secs(&http, "127.0.0.2"))).await;
    for h in hogs {
        h.abort();
    }
    let show = |v: &[Option<f64>]| {
        let ok: Vec<f64> = v.iter().flatten().copied().collect();
        let worst = ok.iter().copied().fold(0.0, f64::max);
        format!("{}/{} answered, worst {worst:.3}s", ok.len(), v.len())
    };
    println!("\n6. one HTTP client keeping {HOG} keep-alive connections busy (a request on each every 4 s)");
    println!("{:>10} {:>34} {:>34}", "it holds", "/healthz before (5 probes)", "/healthz during (5 probes)");
    println!("{holding:>10} {:>34} {:>34}", show(&before), show(&during));
    Ok(())
}
