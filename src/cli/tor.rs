//! `paygress-cli connect HOST PORT`: an in-process arti client (no C tor, no SOCKS port) that opens one
//! stream and relays stdin/stdout over it; ssh uses it as its ProxyCommand.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use arti_client::config::BoolOrAuto;
use arti_client::{StreamPrefs, TorClient};
use tokio::io::AsyncWriteExt;
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
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let upstream = async move {
        // tokio::io::copy flushes whenever stdin has nothing more for now; arti's stream needs that.
        let r = tokio::io::copy(&mut stdin, &mut to_tor).await;
        let _ = to_tor.shutdown().await;
        r
    };
    let downstream = async move {
        let r = tokio::io::copy(&mut from_tor, &mut stdout).await;
        let _ = stdout.flush().await;
        r
    };
    tokio::pin!(upstream);
    tokio::pin!(downstream);
    // The session ends when the remote side closes; stdin closing first only half-closes.
    tokio::select! {
        r = &mut downstream => { r.map_err(|e| anyhow!("reading from {host}:{port}: {e}"))?; }
        r = &mut upstream => {
            r.map_err(|e| anyhow!("writing to {host}:{port}: {e}"))?;
            downstream.await.map_err(|e| anyhow!("reading from {host}:{port}: {e}"))?;
        }
    }
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
