//! Shared by the onion benchmarks (examples/onion_rss.rs, examples/onion_scale.rs): the stack's environment
//! and a probe through its C tor client. Not an example itself (Cargo looks for examples/*.rs and
//! examples/*/main.rs only).

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A variable of the stack's env.sh, or an error naming it.
pub fn need(var: &str) -> Result<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| anyhow!("stack env missing: {var}"))
}

/// SOCKS5 CONNECT through the C tor client, then read the banner.
pub async fn talk(socks: SocketAddr, host: &str, port: u16) -> Result<()> {
    let mut s = TcpStream::connect(socks).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await?;
    let mut req = vec![5, 1, 0, 3, u8::try_from(host.len())?];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 10];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        bail!("SOCKS reply {:#04x}", head[1]);
    }
    let mut banner = [0u8; 8];
    s.read_exact(&mut banner).await?;
    if &banner != b"SSH-2.0-" {
        bail!("unexpected banner");
    }
    Ok(())
}
