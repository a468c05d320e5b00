//! The HTTP listener, bounded against slow and many clients: at most [`MAX_CONNECTIONS`] at once, request
//! headers within [`HEADER_TIMEOUT`] (slowloris), bodies within [`BODY_TIMEOUT`] (see `ApiJson`), and a
//! graceful stop that lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's headers within this, or the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and its body within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop waits for connections in flight.
const DRAIN: Duration = Duration::from_secs(25);

/// Serve `router` on `listener` until `shutdown` completes, then drain.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, MAX_CONNECTIONS, HEADER_TIMEOUT).await
}

pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    max_connections: usize,
    header_timeout: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(max: usize, header_timeout: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve_with(listener, router, std::future::pending(), max, header_timeout));
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let addr = start(8, Duration::from_millis(300)).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        // Without a header timeout this read waits forever; the bound only keeps the test finite.
        let closed = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(_)) | Ok(Err(_))), "the slow connection was never closed");
    }

    #[tokio::test]
    async fn slow_clients_cannot_hold_every_connection_for_long() {
        let addr = start(4, Duration::from_millis(300)).await;
        let mut hogs = Vec::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            hogs.push(s);
        }
        // Every slot is taken by a stalling client; a real request is served once they are cut off.
        let answer = tokio::time::timeout(Duration::from_secs(20), get(addr)).await.expect("served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
