//! `paygress-cli connect HOST PORT`: an in-process arti client (no C tor, no SOCKS port) that opens one
//! stream and relays stdin/stdout over it; ssh uses it as its ProxyCommand.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use arti_client::config::BoolOrAuto;
use arti_client::{StreamPrefs, TorClient};
use std::io::{Read, Write};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tor_rtcompat::PreferredRuntime;

use super::home::Home;

/// The network fragment (the stack's private Tor network), or None for the public network.
pub fn network_config() -> Option<PathBuf> {
    std::env::var_os("PAYGRESS_TOR_NETWORK_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

pub async fn connect(home: &Home, host: &str, port: u16) -> Result<()> {
    let net = network_config();
    // Same configuration as the provider's client (fragment merged like arti merges its own files),
    // with state and cache under the CLI's data dir.
    let config = crate::onion::client_config(&home.tor_dir(), net.as_deref()).map_err(|e| anyhow!("{e}"))?;
    let runtime = PreferredRuntime::current().map_err(|e| anyhow!("tor runtime: {e}"))?;
    let client = TorClient::with_runtime(runtime)
        .config(config)
        .create_bootstrapped()
        .await
        .map_err(|e| anyhow!("tor bootstrap failed: {}", report(&e)))?;
    let mut prefs = StreamPrefs::new();
    prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
    let stream = client
        .connect_with_prefs((host, port), &prefs)
        .await
        .map_err(|e| anyhow!("tor connection to {host}:{port} failed: {}", report(&e)))?;
    let (mut from_tor, mut to_tor) = tokio::io::split(stream);
    // stdin/stdout through std in threads: tokio's io-std feature is not enabled in this crate (enabling
    // it would rebuild every tokio dependent for one small command).
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let upstream = async move {
        while let Some(chunk) = in_rx.recv().await {
            to_tor.write_all(&chunk).await?;
            // arti buffers a stream until flushed.
            to_tor.flush().await?;
        }
        to_tor.shutdown().await
    };
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        for chunk in out_rx {
            stdout.write_all(&chunk)?;
            stdout.flush()?;
        }
        Ok(())
    });
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_tor.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if out_tx.send(buf[..n].to_vec()).is_err() {
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdout closed"));
            }
        }
    };
    // The session ends when the remote side closes; stdin closing first only half-closes. The block
    // drops both futures (and with them the writer's sender) before the writer is joined.
    {
        tokio::pin!(upstream);
        tokio::pin!(downstream);
        tokio::select! {
            r = &mut downstream => { r.map_err(|e| anyhow!("reading from {host}:{port}: {e}"))?; }
            r = &mut upstream => {
                r.map_err(|e| anyhow!("writing to {host}:{port}: {e}"))?;
                downstream.await.map_err(|e| anyhow!("reading from {host}:{port}: {e}"))?;
            }
        }
    }
    // Let the writer drain what was read before the process exits (it ends when `downstream` is dropped).
    let _ = writer.join();
    Ok(())
}

fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
