//! Benchmark, not a test: prints how long paid requests take, from publishing a kind-1000 request to the
//! kind-1001 reply arriving, for batches sent at once. Nothing here asserts a time.
//!
//! Run with the stack up: `scripts/bench/leases.sh` (or `cargo test --test bench_leases -- --ignored
//! --nocapture` with the stack env). `BENCH_LEASES=1,10,20` sets the batch sizes; `BENCH_TOR=1` runs the
//! provider with onion services (without a pool the reply then waits for each descriptor to be published);
//! `BENCH_POOLS=0,50` runs one provider per onion pool size, side by side, each batch sent only once its
//! pool is full again (warm). `BENCH_KEEP_LOGS=<dir>` keeps each provider's log there. Leases stay live
//! until the provider's run ends, so later batches meet the earlier ones: `BENCH_LEASES=9,50,40,50` sends a
//! burst of 50 at 9 and 99 live leases ("live" column: the provider's own count). The stack's simulated node
//! has addresses for 253 pods, so a run stays below that.
//!
//! Requests are NIP-44, each from its own key, sent and awaited over one nostr-sdk connection to the stack's
//! relay, so the times have millisecond resolution (no CLI polling in the loop).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::*;
use nostr_sdk::prelude::*;

const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn relaunches(provider: &Provider) -> Result<u64> {
    let metrics = provider.metrics()?;
    let line = metrics.lines().find(|l| l.starts_with("paygress_onion_relaunches_total "));
    Ok(line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench/leases.sh"]
async fn lease_request_to_reply() -> Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_LEASES")
        .unwrap_or_else(|_| "1,10,20".into())
        .split(',')
        .map(|s| s.trim().parse().context("BENCH_LEASES: comma-separated counts"))
        .collect::<Result<_>>()?;
    let tor = std::env::var("BENCH_TOR").is_ok_and(|v| v == "1");
    let pools: Vec<usize> = std::env::var("BENCH_POOLS")
        .unwrap_or_else(|_| "0".into())
        .split(',')
        .map(|s| s.trim().parse().context("BENCH_POOLS: comma-separated pool sizes"))
        .collect::<Result<_>>()?;
    println!("provider: Tor {}; batches {sizes:?}; 10 sat per lease", if tor { "on" } else { "off" });
    println!(
        "{:>5} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9}",
        "pool", "live", "leases", "p50", "p95", "max", "wall", "leases/min", "relaunches", "warm-up"
    );
    for pool in pools {
        let pool = if tor { pool } else { 0 };
        let provider = Provider::start(ProviderOptions {
            enable_tor: tor,
            extra_env: vec![
                ("PAYGRESS_ONION_POOL".into(), pool.to_string()),
                // 10 sat buys 10 hours: no lease ends during a run, so the live count only grows.
                ("PAYMENT_RATE_SATS_PER_HOUR".into(), "1".into()),
            ],
            ..Default::default()
        })?;
        provider.wait_ready(Duration::from_secs(180))?;
        bench_provider(&provider, &sizes, pool).await?;
    }
    Ok(())
}

/// Waits until `pool` slots are published; returns how long that took.
fn wait_pool(provider: &Provider, pool: usize) -> Result<Duration> {
    let t = Instant::now();
    wait_until("onion pool full", Duration::from_secs(900), || {
        (provider.metric("paygress_onion_services{status=\"pooled\"}").unwrap_or(0.0) as usize >= pool).then_some(())
    })?;
    Ok(t.elapsed())
}

async fn bench_provider(provider: &Provider, sizes: &[usize], pool: usize) -> Result<()> {
    let provider_pk = PublicKey::from_hex(&provider.pubkey)?;
    let client = Client::default();
    client.add_relay(relay().as_str()).await?;
    client.connect().await;
    let mut notifications = client.notifications();

    let wallet = Wallet::new(&env("CASHU_MINT_URL"))?;
    let mut relaunched_before = 0;
    for &n in sizes {
        // Preparation (funding, tokens, keys, encryption, signing) is not timed.
        wallet.fund(10 * n as u64 + 10)?;
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let keys = Keys::generate();
            let token = wallet.send(10)?;
            let content = nip44::encrypt(
                keys.secret_key(),
                &provider_pk,
                request_json(&token, &format!("bench{i}")),
                nip44::Version::V2,
            )?;
            let event = EventBuilder::new(Kind::from(1000u16), content)
                .tag(Tag::public_key(provider_pk))
                .sign_with_keys(&keys)?;
            batch.push((keys, event));
        }
        let filter = Filter::new()
            .kind(Kind::from(1001u16))
            .author(provider_pk)
            .pubkeys(batch.iter().map(|(k, _)| k.public_key()))
            .since(Timestamp::now() - Duration::from_secs(5));
        let sub = client.subscribe(filter, None).await?;
        let warm = wait_pool(provider, pool)?;
        let live = provider.metric("paygress_live_leases").unwrap_or(0.0) as u64;

        let mut sent_at: HashMap<EventId, (Instant, Keys)> = HashMap::new();
        let start = Instant::now();
        let sends = batch.iter().map(|(_, e)| client.send_event(e));
        for (out, (keys, event)) in futures::future::join_all(sends).await.into_iter().zip(&batch) {
            ensure!(!out?.success.is_empty(), "the relay refused a request");
            sent_at.insert(event.id, (start, keys.clone()));
        }

        let mut took = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        while took.len() < n {
            let note = tokio::time::timeout_at(deadline, notifications.recv())
                .await
                .map_err(|_| anyhow!("{} of {n} replies within {REPLY_TIMEOUT:?}", took.len()))??;
            let RelayPoolNotification::Event { event, .. } = note else { continue };
            let answered = event.tags.iter().find_map(|t| {
                let s = t.as_slice();
                (s.first().map(String::as_str) == Some("e"))
                    .then(|| s.get(1).and_then(|v| EventId::from_hex(v).ok()))?
            });
            let Some((sent, keys)) = answered.and_then(|id| sent_at.remove(&id)) else { continue };
            let plain = nip44::decrypt(keys.secret_key(), &provider_pk, &event.content)?;
            let reply: serde_json::Value = serde_json::from_str(&plain)?;
            ensure!(reply["status"] == "ok", "reply: {}", reply["code"]);
            took.push(sent.elapsed());
        }
        let wall = start.elapsed();
        client.unsubscribe(&sub.val).await;
        took.sort();
        // Onion services relaunched because they stalled (the reconciler copies the count every 2 s).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let relaunched = relaunches(provider)?;
        println!(
            "{pool:>5} {live:>5} {n:>6} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2}s {:>11.1} {:>11} {:>8.0}s",
            percentile(&took, 0.5).as_secs_f64(),
            percentile(&took, 0.95).as_secs_f64(),
            took[took.len() - 1].as_secs_f64(),
            wall.as_secs_f64(),
            n as f64 * 60.0 / wall.as_secs_f64(),
            relaunched - relaunched_before,
            warm.as_secs_f64(),
        );
        relaunched_before = relaunched;
    }
    client.disconnect().await;
    // Where the time went is in the provider's log (per-lease spans): kept when asked.
    if let Ok(dir) = std::env::var("BENCH_KEEP_LOGS") {
        let _ = std::fs::copy(&provider.log, std::path::Path::new(&dir).join(format!("provider-pool{pool}.log")));
    }
    // The leases it bought would otherwise run until they expire (and nobody ends them once it is gone).
    let sel = format!("paygress.io/provider={}", provider.provider_label());
    let _ = kubectl(&["-n", "user-workloads", "delete", "pods,services,secrets", "-l", &sel, "--wait=false"]);
    Ok(())
}
