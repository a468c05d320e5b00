//! `GET /healthz` → 200 once the pod watcher has synced, 503 before. Hand-written HTTP/1.0-style responder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

pub async fn serve(listener: TcpListener, synced: Arc<AtomicBool>) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let synced = synced.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond(sock, &synced).await {
                        debug!("health request: {e}");
                    }
                });
            }
            Err(e) => {
                debug!("health accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Status line and body for a request head.
pub fn route(head: &str, synced: bool) -> (&'static str, &'static str) {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/healthz") if synced => ("200 OK", "ok\n"),
        ("GET" | "HEAD", "/healthz") => ("503 Service Unavailable", "pod watcher not synced yet\n"),
        (_, "/healthz") => ("405 Method Not Allowed", "method not allowed\n"),
        _ => ("404 Not Found", "not found\n"),
    }
}

async fn respond(mut sock: TcpStream, synced: &AtomicBool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read_head = async {
        loop {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") || buf.len() > 8192 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), read_head).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, body) = route(&head, synced.load(Ordering::SeqCst));
    let is_head = head.starts_with("HEAD ");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if is_head { "" } else { body }
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes() {
        assert_eq!(route("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true).0, "200 OK");
        assert_eq!(route("GET /healthz?verbose HTTP/1.1\r\n\r\n", true).0, "200 OK");
        assert_eq!(route("GET /healthz HTTP/1.1\r\n\r\n", false).0, "503 Service Unavailable");
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n", true).0, "404 Not Found");
        assert_eq!(route("POST /healthz HTTP/1.1\r\n\r\n", true).0, "405 Method Not Allowed");
        assert_eq!(route("", true).0, "404 Not Found");
    }
}
