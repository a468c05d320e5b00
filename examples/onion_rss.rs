//! Bench (prints numbers, asserts nothing): memory and reach time of N onion services in ONE process, the
//! way the provider runs them (one arti `TorClient`, one `ArtiOnion` service per lease).
//!
//! Launches services with fresh keys, in steps up to 1, 10 and 50 live services (override with
//! `ONION_RSS_STEPS=1,10,50`), each forwarding to a local TCP server, and for every service measures the
//! time from `launch()` to the first successful connection through the stack's C tor client (SOCKS), with
//! at most `ONION_RSS_CONCURRENCY` (default 64) `launch()` calls in flight. After
//! each step it prints this process's VmRSS from /proc/self/status.
//!
//! Run on the stack: `. ~/.cache/paygress/stack/env.sh && cargo run --release --example onion_rss`
//! (needs PAYGRESS_TOR_NETWORK_CONFIG and TORSOCKS_TOR_PORT).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use paygress::lease::ports::OnionPort;
use paygress::onion::{generate_key_bytes, ArtiOnion};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[path = "support/probe.rs"]
mod probe;
use probe::{need, talk};

fn vm_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A stand-in for a pod's sshd: writes a banner line and closes.
async fn banner_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = sock.write_all(b"SSH-2.0-onion-rss\r\n").await;
            });
        }
    });
    Ok(addr)
}

/// launch() then retry connecting until it works; returns (launch time, launch → reachable).
async fn launch_and_reach(
    onion: &ArtiOnion,
    socks: SocketAddr,
    lease: String,
    target: SocketAddr,
) -> Result<(Duration, Duration)> {
    let key = generate_key_bytes()?;
    let t0 = Instant::now();
    let addr = onion.launch(&lease, &key, target).await.map_err(|e| anyhow!("{lease}: {}", e.message))?;
    let launched = t0.elapsed();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), talk(socks, &addr, 2222)).await {
            Ok(Ok(())) => return Ok((launched, t0.elapsed())),
            _ if t0.elapsed() > Duration::from_secs(300) => bail!("{lease}: {addr} unreachable after 300 s"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn summary(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    format!("median {med:.1}s, min {:.1}s, max {:.1}s (n={})", v[0], v[v.len() - 1], v.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let network = std::path::PathBuf::from(need("PAYGRESS_TOR_NETWORK_CONFIG")?);
    let socks: SocketAddr = format!("127.0.0.1:{}", need("TORSOCKS_TOR_PORT")?).parse()?;
    let steps: Vec<usize> = std::env::var("ONION_RSS_STEPS")
        .unwrap_or_else(|_| "1,10,50".into())
        .split(',')
        .map(|s| s.trim().parse().context("ONION_RSS_STEPS"))
        .collect::<Result<_>>()?;
    // launch() calls in flight at once (default: the whole batch; ArtiOnion itself publishes at most 16 new
    // services at a time, so launch() times include that queueing).
    let concurrency: usize = std::env::var("ONION_RSS_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let me = std::process::id().to_string();
    let target = banner_server().await?;
    let state = tempfile::tempdir()?;

    println!("RSS before the Tor client: {} KiB", vm_rss_kib(&me));
    let t0 = Instant::now();
    let onion = ArtiOnion::new(state.path(), Some(&network))?;
    while !onion.ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("bootstrapped in {:.1}s", t0.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("services=0 rss_kib={}", vm_rss_kib(&me));

    let mut live = 0usize;
    for &n in &steps {
        let batch = n.saturating_sub(live);
        let t_batch = Instant::now();
        use futures::StreamExt as _;
        let results: Vec<_> = futures::stream::iter(live..live + batch)
            .map(|i| launch_and_reach(&onion, socks, format!("bench-{i}"), target))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let (mut launch, mut reach) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok((l, r)) => {
                    launch.push(l.as_secs_f64());
                    reach.push(r.as_secs_f64());
                }
                Err(e) => println!("  failed: {e:#}"),
            }
        }
        live = n;
        let all = t_batch.elapsed().as_secs_f64();
        // Let circuits and descriptor uploads settle before reading memory.
        tokio::time::sleep(Duration::from_secs(10)).await;
        println!(
            "services={n} rss_kib={} running={} | batch of {batch}, {concurrency} at a time: launch() {} ; launch -> reachable {} ; whole batch {all:.1}s",
            vm_rss_kib(&me),
            onion.running(),
            summary(&mut launch),
            summary(&mut reach)
        );
    }
    onion.shutdown().await;
    Ok(())
}
