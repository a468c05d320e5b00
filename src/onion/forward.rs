//! Forwarding onion streams to the lease's pod, within bounds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::StreamRequest;
use tor_proto::stream::IncomingStreamRequest;
use tracing::debug;

use super::*;

/// Where a service's streams go: the lease it serves and its pod's SSH endpoint. None while the service
/// waits in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) lease_id: Arc<str>,
    pub(super) addr: SocketAddr,
}

impl Target {
    pub(super) fn new(lease_id: &str, addr: SocketAddr) -> Self {
        Target { lease_id: Arc::from(lease_id), addr }
    }
}

/// Bounds on what one service's forwarding may hold.
#[derive(Clone)]
pub(super) struct StreamBounds {
    pub(super) per_service: usize,
    /// Streams every service may open whatever the others hold: its own, not taken from `total`.
    pub(super) guaranteed: usize,
    /// Shared by every service, beyond their guaranteed streams.
    pub(super) total: Arc<tokio::sync::Semaphore>,
    pub(super) idle: Duration,
}

/// Room for one more stream of a service that has `open` streams: one of its own guaranteed permits, else
/// one of the shared pool, never more than `per_service` in all. So leases that fill the shared pool (64
/// cheap ones would) still leave every other lease its own streams: its owner can always log in.
pub(super) fn stream_slot(
    open: usize,
    own: &Arc<tokio::sync::Semaphore>,
    bounds: &StreamBounds,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if open >= bounds.per_service {
        return None;
    }
    Arc::clone(own).try_acquire_owned().or_else(|_| Arc::clone(&bounds.total).try_acquire_owned()).ok()
}

pub(super) async fn forward_streams(
    service: String,
    requests: impl futures::Stream<Item = StreamRequest>,
    target: watch::Receiver<Option<Target>>,
    ports: Arc<[u16]>,
    bounds: StreamBounds,
) {
    let mut requests = std::pin::pin!(requests);
    // Owned here so that aborting this task closes every forwarded connection.
    let mut conns = JoinSet::new();
    let own = Arc::new(tokio::sync::Semaphore::new(bounds.guaranteed));
    loop {
        tokio::select! {
            req = requests.next() => match req {
                Some(req) => {
                    let slot = stream_slot(conns.len(), &own, &bounds);
                    let Some(slot) = slot else {
                        debug!(service, open = conns.len(), "onion stream refused: stream limit reached");
                        conns.spawn(async move {
                            let _ = req.reject(End::new_with_reason(EndReason::RESOURCELIMIT)).await;
                        });
                        continue;
                    };
                    let Some(to) = target.borrow().clone() else {
                        // A pool slot: nobody was given this address, so nothing is served yet.
                        debug!(service, "onion stream to an unassigned service refused");
                        conns.spawn(async move {
                            let _ = req.reject(End::new_with_reason(EndReason::CONNECTREFUSED)).await;
                        });
                        continue;
                    };
                    let (ports, idle) = (Arc::clone(&ports), bounds.idle);
                    conns.spawn(async move {
                        forward_one(to.lease_id.to_string(), req, to.addr, ports, idle).await;
                        drop(slot);
                    });
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    debug!(service, "onion request stream ended");
    while conns.join_next().await.is_some() {}
}

async fn forward_one(lease_id: String, req: StreamRequest, target: SocketAddr, ports: Arc<[u16]>, idle: Duration) {
    let port = match req.request() {
        IncomingStreamRequest::Begin(begin) => Some(begin.port()),
        _ => None,
    };
    let Some(port) = port.filter(|p| ports.contains(p)) else {
        debug!(lease_id, ?port, "onion stream to an unserved port rejected");
        let _ = req.reject(End::new_with_reason(EndReason::EXITPOLICY)).await;
        return;
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            debug!(lease_id, port, %target, error = %e, "target refused an onion stream");
            let _ = req.reject(End::new_with_reason(EndReason::CONNECTREFUSED)).await;
            return;
        }
        Err(_) => {
            debug!(lease_id, port, %target, "target did not answer an onion stream");
            let _ = req.reject(End::new_with_reason(EndReason::TIMEOUT)).await;
            return;
        }
    };
    let onion = match req.accept(Connected::new_empty()).await {
        Ok(s) => s,
        Err(e) => {
            debug!(lease_id, port, error = %e, "accepting an onion stream failed");
            return;
        }
    };
    match copy_until_idle(onion, tcp, idle).await {
        Ok((up, down)) => debug!(lease_id, port, up, down, "onion stream closed"),
        Err(e) => debug!(lease_id, port, error = %e, "onion stream ended"),
    }
}

/// `copy_bidirectional`, ended once no byte has moved either way for `idle`.
pub(super) async fn copy_until_idle<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Active { inner: a, started, last: Arc::clone(&last) };
    let mut b = Active { inner: b, started, last: Arc::clone(&last) };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let check = (idle / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep(check) => {
                let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if quiet_since.elapsed() >= idle {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"));
                }
            }
        }
    }
}

/// A stream that records when it last read a byte (milliseconds since `started`).
struct Active<S> {
    inner: S,
    started: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Active<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Active<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
