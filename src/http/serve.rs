//! The HTTP listener, bounded against slow and many clients: at most [`MAX_CONNECTIONS`] at once and
//! [`MAX_PER_CLIENT`] of them from one address, request headers within [`HEADER_TIMEOUT`] (slowloris),
//! bodies within [`BODY_TIMEOUT`] (see `ApiJson`), and a graceful stop that lets requests in flight finish.
//!
//! Probes never wait behind the API: a connection that finds no room (the listener full, or its client
//! over its share) is still accepted into a small pool of its own, [`PROBE_SLOTS`] connections of at most
//! [`PROBE_SLOTS_PER_CLIENT`] per address, where `/healthz` and `/readyz` are answered and everything else
//! gets 503 at once. So one client holding every API connection cannot make the kubelet restart us.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Of those, from one client address: a quarter, so one client never holds them all.
pub const MAX_PER_CLIENT: usize = 64;
/// Connections beyond those limits, served only health and readiness (503 for the rest).
pub const PROBE_SLOTS: usize = 16;
pub const PROBE_SLOTS_PER_CLIENT: usize = 2;
/// A client must send a request's headers within this, or the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and, in the probe pool, within this (a probe sends its request at once).
pub const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and its body within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop waits for connections in flight.
const DRAIN: Duration = Duration::from_secs(25);

/// The client's address, as an extension on every request of its connection (the admin endpoints count
/// wrong tokens per address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The listener's bounds (tests shrink them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub per_client: usize,
    pub probe_slots: usize,
    pub probe_per_client: usize,
    pub header_timeout: Duration,
    pub probe_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            per_client: MAX_PER_CLIENT,
            probe_slots: PROBE_SLOTS,
            probe_per_client: PROBE_SLOTS_PER_CLIENT,
            header_timeout: HEADER_TIMEOUT,
            probe_header_timeout: PROBE_HEADER_TIMEOUT,
        }
    }
}

/// Connections per client address in one pool; a guard gives its place back when dropped.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct ClientSlot {
    pool: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { pool: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.pool.0.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

/// One pool of connections: a global bound and a bound per client.
struct Pool {
    slots: Arc<Semaphore>,
    clients: Arc<PerClient>,
    per_client: usize,
}

impl Pool {
    fn new(size: usize, per_client: usize) -> Pool {
        Pool { slots: Arc::new(Semaphore::new(size)), clients: Arc::default(), per_client }
    }

    fn enter(&self, ip: IpAddr) -> Option<(OwnedSemaphorePermit, ClientSlot)> {
        let client = self.clients.enter(ip, self.per_client)?;
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some((permit, client))
    }
}

/// Serve `router` on `listener` until `shutdown` completes, then drain; connections beyond the bounds get
/// `probes` (health and readiness only).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    probes: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, router, probes, shutdown, Limits::default()).await
}

pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    probes: Router,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> std::io::Result<()> {
    let main = Pool::new(limits.max_connections, limits.per_client);
    let probe_pool = Pool::new(limits.probe_slots, limits.probe_per_client);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let (held, router, header_timeout, keep_alive) = if let Some(held) = main.enter(peer.ip()) {
            (held, router.clone(), limits.header_timeout, true)
        } else if let Some(held) = probe_pool.enter(peer.ip()) {
            (held, probes.clone(), limits.probe_header_timeout, false)
        } else {
            debug!(%peer, "connection refused: no room for this client");
            continue; // dropped: closed at once
        };
        let router = router.layer(axum::Extension(ClientAddr(peer.ip())));
        let conn = connection(stream, router, header_timeout, keep_alive);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "http connection ended");
            }
            drop(held);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

fn connection(
    stream: TcpStream,
    router: Router,
    header_timeout: Duration,
    keep_alive: bool,
) -> hyper::server::conn::http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>> {
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(keep_alive)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max: usize, per_client: usize, header_timeout: Duration) -> Limits {
        Limits {
            max_connections: max,
            per_client,
            probe_slots: 4,
            probe_per_client: 2,
            header_timeout,
            probe_header_timeout: Duration::from_millis(500),
        }
    }

    async fn start(l: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route("/healthz", axum::routing::get(|| async { "healthy" }));
        let probes = Router::new()
            .route("/healthz", axum::routing::get(|| async { "healthy" }))
            .fallback(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy") });
        tokio::spawn(serve_with(listener, router, probes, std::future::pending(), l));
        addr
    }

    /// A connection from `from` (any 127/8 address: each is another client).
    async fn connect(addr: std::net::SocketAddr, from: &str) -> tokio::net::TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        sock.connect(addr).await.unwrap()
    }

    async fn get_from(addr: std::net::SocketAddr, from: &str, path: &str) -> String {
        let mut s = connect(addr, from).await;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        get_from(addr, "127.0.0.1", "/").await
    }

    /// `n` keep-alive connections from `from`, each having asked once and holding on.
    async fn hold(addr: std::net::SocketAddr, from: &str, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut s = connect(addr, from).await;
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            held.push(s);
        }
        held
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let addr = start(limits(8, 8, Duration::from_millis(300))).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        // Without a header timeout this read waits forever; the bound only keeps the test finite.
        let closed = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(_)) | Ok(Err(_))), "the slow connection was never closed");
    }

    #[tokio::test]
    async fn slow_clients_cannot_hold_every_connection_for_long() {
        let addr = start(limits(4, 4, Duration::from_millis(300))).await;
        let mut hogs = Vec::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            hogs.push(s);
        }
        // Every slot is taken by a stalling client; a real request is served once they are cut off.
        let mut answer = String::new();
        for _ in 0..50 {
            answer = get(addr).await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn one_client_cannot_take_every_connection() {
        // 8 connections, 4 per client: a hog keeping keep-alive connections open gets 4 of them.
        let addr = start(limits(8, 4, Duration::from_secs(30))).await;
        let _hog = hold(addr, "127.0.0.2", 12).await;
        let answer = get_from(addr, "127.0.0.3", "/").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "another client is served: {answer:?}");
    }

    #[tokio::test]
    async fn probes_are_answered_when_every_connection_is_held() {
        // Eight clients hold all 8 connections with keep-alive: the API is full, the probe is answered.
        let addr = start(limits(8, 1, Duration::from_secs(30))).await;
        let mut hogs = Vec::new();
        for i in 0..8 {
            hogs.extend(hold(addr, &format!("127.0.1.{}", i + 1), 1).await);
        }
        let probe = get_from(addr, "127.0.0.9", "/healthz").await;
        assert!(probe.starts_with("HTTP/1.1 200") && probe.ends_with("healthy"), "{probe:?}");
        let api = get_from(addr, "127.0.0.9", "/").await;
        assert!(api.starts_with("HTTP/1.1 503"), "the API says busy at once: {api:?}");
    }
}
