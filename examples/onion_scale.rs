//! Bench helper for scripts/bench/onion-scale.sh (prints numbers, asserts nothing). Three subcommands:
//!
//! - `serve KEYDIR N TARGET`: the provider's design in one process — one arti `TorClient`, one
//!   `ArtiOnion` service per lease — with N services forwarding port 2222 to TARGET. Keys are
//!   `KEYDIR/key-<i>` (64 bytes, created if missing), so a second `serve` after `kill -9` republishes the
//!   same addresses; the addresses go to `KEYDIR/addresses` before any launch (so a prober can start at
//!   once). Then it idles until killed: RSS and CPU are read from outside, from /proc. The N services come
//!   back as the provider restores leases (`OnionPort::restore`). Env: `ONION_SCALE_PUBLISH=total,reserved`
//!   (publications in flight, and how many of them only new leases take; default 16,4),
//!   `ONION_SCALE_NEW_LEASE_AFTER=<s>` (publish one new lease that long into the restore and write its
//!   publication time to `KEYDIR/new-lease`).
//! - `probe ADDRFILE [BUDGET_S]`: SOCKS5 CONNECT through a C tor client (`TORSOCKS_TOR_PORT`) to every `<addr>:2222`
//!   listed, until each has sent an SSH banner, at most `ONION_SCALE_PROBES` (default 32) in flight;
//!   prints `answering=A total=T all_s=<seconds until the last answered> p50_s p95_s`.
//! - `banner PORTFILE`: a stand-in for a pod's sshd (banner line, close) on a free loopback port.
//!
//! Needs the stack env (`. ~/.cache/paygress/stack/env.sh`): PAYGRESS_TOR_NETWORK_CONFIG, TORSOCKS_TOR_PORT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt as _;
use paygress::lease::ports::OnionPort;
use paygress::onion::{address_for_key, generate_key_bytes, ArtiOnion};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[path = "support/probe.rs"]
mod probe;
use probe::{need, talk};

fn key_for(dir: &Path, i: usize) -> Result<Vec<u8>> {
    let path = dir.join(format!("key-{i}"));
    if let Ok(k) = std::fs::read(&path) {
        return Ok(k);
    }
    let k = generate_key_bytes()?;
    std::fs::write(&path, &k).with_context(|| path.display().to_string())?;
    Ok(k)
}

async fn serve(dir: PathBuf, n: usize, target: SocketAddr) -> Result<()> {
    let network = PathBuf::from(need("PAYGRESS_TOR_NETWORK_CONFIG")?);
    std::fs::create_dir_all(&dir)?;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| key_for(&dir, i)).collect::<Result<_>>()?;
    let mut addrs = String::new();
    for k in &keys {
        addrs.push_str(&address_for_key(k).map_err(|e| anyhow!("{e}"))?);
        addrs.push('\n');
    }
    std::fs::write(dir.join("addresses.tmp"), addrs)?;
    std::fs::rename(dir.join("addresses.tmp"), dir.join("addresses"))?;

    // The Tor state dir is kept across a kill -9, like the provider's PAYGRESS_STATE_DIR volume.
    let t0 = Instant::now();
    let mut onion = ArtiOnion::new(&dir.join("state"), Some(&network))?.with_ports(&[2222]);
    // ONION_SCALE_PUBLISH=total,reserved: publications in flight, and how many only new leases take.
    if let Some((total, reserved)) = std::env::var("ONION_SCALE_PUBLISH").ok().and_then(|v| {
        let (t, r) = v.split_once(',')?;
        Some((t.parse().ok()?, r.parse().ok()?))
    }) {
        onion = onion.with_publish_concurrency(total, reserved);
    }
    // A lease paid for while all N come back: published as the provider publishes a new lease, started
    // ONION_SCALE_NEW_LEASE_AFTER seconds into the restore; its time goes to KEYDIR/new-lease.
    let new_lease = async {
        let Some(after) = std::env::var("ONION_SCALE_NEW_LEASE_AFTER").ok().and_then(|v| v.parse::<f64>().ok()) else {
            return Ok::<_, anyhow::Error>(());
        };
        tokio::time::sleep(Duration::from_secs_f64(after)).await;
        let key = generate_key_bytes()?;
        let t = Instant::now();
        let outcome = match onion.launch("new-lease", &key, target).await {
            Ok(_) => format!("{:.3}", t.elapsed().as_secs_f64()),
            Err(e) => format!("failed after {:.1}s: {}", t.elapsed().as_secs_f64(), e.message),
        };
        println!("arti: a new lease {after}s into the restore published in {outcome}");
        std::fs::write(dir.join("new-lease"), outcome + "\n")?;
        Ok(())
    };
    // restore() calls at once for all of them, as the provider's reconciler after a restart (which also
    // bounds itself); ArtiOnion publishes at most 16 at a time, 4 of them kept for new leases. A restore
    // that gives up (publish timeout) is retried at once, as the reconciler's next pass would, so every
    // service is eventually up.
    let restores = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, k)| {
            let onion = &onion;
            async move {
                let mut failed = 0u32;
                while let Err(e) = onion.restore(&format!("scale-{i}"), k, target).await {
                    if failed == 0 {
                        println!("arti: scale-{i} failed at {:.1}s: {}", t0.elapsed().as_secs_f64(), e.message);
                    }
                    failed += 1;
                }
                failed
            }
        })
        .buffer_unordered(n.max(1))
        .collect::<Vec<_>>();
    // Timed when the last restore is done, not when the new lease is (it may come later).
    let restores = async { (restores.await, t0.elapsed().as_secs_f64()) };
    let ((retries, published_s), new_lease) = tokio::join!(restores, new_lease);
    new_lease?;
    println!(
        "arti: {n} of {n} published in {published_s:.1}s; {} launches timed out and were retried ({} services); {} stall relaunches",
        retries.iter().sum::<u32>(),
        retries.iter().filter(|&&r| r > 0).count(),
        onion.relaunches(),
    );
    std::fs::write(dir.join("launched"), format!("{published_s:.3}\n"))?;
    // Idle until killed (the script sends SIGKILL or SIGTERM).
    std::future::pending::<()>().await;
    Ok(())
}

async fn probe(file: PathBuf, budget: Duration) -> Result<()> {
    let socks: SocketAddr = format!("127.0.0.1:{}", need("TORSOCKS_TOR_PORT")?).parse()?;
    let in_flight: usize = std::env::var("ONION_SCALE_PROBES").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let t0 = Instant::now();
    // Times count from ONION_SCALE_T0 (unix seconds) when given: the moment the services were started.
    let offset = std::env::var("ONION_SCALE_T0")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |t| std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0.0, |now| now.as_secs_f64() - t));
    // The list may not exist yet (the serve process writes it, C tor writes hostname files).
    let text = loop {
        match std::fs::read_to_string(&file) {
            Ok(t) => break t,
            Err(_) if t0.elapsed() < budget => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => bail!("{}: {e}", file.display()),
        }
    };
    let addrs: Vec<String> = text.split_whitespace().map(String::from).collect();
    let total = addrs.len();
    // Each address is retried until it answers or the budget is spent; a probe that hangs is cut at 30 s
    // (the C tor client may sit on a cached descriptor's dead introduction points that long).
    let mut times: Vec<f64> = futures::stream::iter(addrs)
        .map(|a| async move {
            // Checked before every attempt, so addresses still queued when the budget runs out are not tried.
            while t0.elapsed() <= budget {
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(30), talk(socks, &a, 2222)).await {
                    return Some(offset + t0.elapsed().as_secs_f64());
                }
                // Not faster: every failed attempt costs the shared C tor client a descriptor-fetch circuit,
                // and at 500 services it held ~2 450 of them (docs/benchmarks.md).
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            None
        })
        .buffer_unordered(in_flight)
        .filter_map(|t| async move { t })
        .collect()
        .await;
    times.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    println!(
        "answering={} total={total} all_s={} p50_s={} p95_s={}",
        times.len(),
        if times.len() == total { fmt(times.last().copied()) } else { "-".into() },
        fmt(pick(0.5)),
        fmt(pick(0.95))
    );
    Ok(())
}

async fn banner(port_file: PathBuf) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    std::fs::write(&port_file, listener.local_addr()?.port().to_string())?;
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = sock.write_all(b"SSH-2.0-onion-scale\r\n").await;
        });
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .ok_or_else(|| anyhow!("usage: serve KEYDIR N TARGET | probe ADDRFILE [BUDGET_S] | banner PORTFILE"))
    };
    match arg(0)?.as_str() {
        "serve" => serve(arg(1)?.into(), arg(2)?.parse()?, arg(3)?.parse()?).await,
        "probe" => {
            let budget = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(600);
            probe(arg(1)?.into(), Duration::from_secs(budget)).await
        }
        "banner" => banner(arg(1)?.into()).await,
        other => bail!("unknown subcommand {other}"),
    }
}
