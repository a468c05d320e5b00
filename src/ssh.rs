//! ssh adapter: [`RusshProbe`] checks that a pod's SSH server really answers, by running one SSH key
//! exchange (no login) and reporting the host key it presented, fingerprinted as `ssh-keygen -lf` prints it.
//! The requester can then pin that key instead of trusting on first use over Tor.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use tracing::debug;

use crate::lease::ports::{FailureKind, HostKey, PortError, PortResult, SshProbePort};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh probe of {endpoint}: connect failed: {source}")]
    Connect { endpoint: SocketAddr, source: std::io::Error },
    #[error("ssh probe of {endpoint}: no key exchange within {after:?}")]
    Timeout { endpoint: SocketAddr, after: Duration },
    #[error("ssh probe of {endpoint}: handshake failed: {message}")]
    Handshake { endpoint: SocketAddr, message: String },
    #[error("ssh probe of {endpoint}: the server presented no host key")]
    NoHostKey { endpoint: SocketAddr },
    #[error("ssh probe of {endpoint}: cannot encode the host key: {message}")]
    Encode { endpoint: SocketAddr, message: String },
}

impl SshError {
    pub fn kind(&self) -> FailureKind {
        match self {
            // The pod may still be starting sshd: the caller retries until its own deadline.
            SshError::Connect { .. }
            | SshError::Timeout { .. }
            | SshError::Handshake { .. }
            | SshError::NoHostKey { .. } => FailureKind::Transient,
            SshError::Encode { .. } => FailureKind::Permanent,
        }
    }
}

impl From<SshError> for PortError {
    fn from(e: SshError) -> Self {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

/// The host key in the two forms users see: `SHA256:<base64, no padding>` and the OpenSSH public key line
/// (no comment), e.g. for `known_hosts`.
pub fn host_key(key: &PublicKey) -> Result<HostKey, String> {
    let bare = PublicKey::new(key.key_data().clone(), "");
    let public_key = bare.to_openssh().map_err(|e| e.to_string())?;
    Ok(HostKey { fingerprint: key.fingerprint(HashAlg::Sha256).to_string(), public_key })
}

/// Accepts whatever host key the server shows (we are learning it, not trusting it) and keeps it.
struct Capture {
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl russh::client::Handler for Capture {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A host certificate: report the key it certifies, which is what `ssh-keygen -lf` shows for it.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::new(cert.public_key().clone(), ""),
        };
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(key);
        }
        Ok(true)
    }
}

#[derive(Debug, Clone)]
pub struct RusshProbe {
    timeout: Duration,
}

impl Default for RusshProbe {
    fn default() -> Self {
        RusshProbe { timeout: DEFAULT_TIMEOUT }
    }
}

impl RusshProbe {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bound on the whole probe: TCP connect, version exchange and key exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn handshake(&self, endpoint: SocketAddr) -> Result<HostKey, SshError> {
        let stream =
            tokio::net::TcpStream::connect(endpoint).await.map_err(|source| SshError::Connect { endpoint, source })?;
        let _ = stream.set_nodelay(true);
        let config = Arc::new(russh::client::Config { inactivity_timeout: Some(self.timeout), ..Default::default() });
        let seen = Arc::new(Mutex::new(None));
        // `connect_stream` returns once the first key exchange is done, i.e. the server signed the exchange
        // with the host key passed to `check_server_key`.
        let handle = russh::client::connect_stream(config, stream, Capture { seen: seen.clone() })
            .await
            .map_err(|e| SshError::Handshake { endpoint, message: e.to_string() })?;
        let key = seen.lock().ok().and_then(|mut s| s.take());
        if let Err(e) = handle.disconnect(russh::Disconnect::ByApplication, "probe done", "en").await {
            debug!(%endpoint, error = %e, "ssh probe: disconnect failed (session already closed)");
        }
        let key = key.ok_or(SshError::NoHostKey { endpoint })?;
        host_key(&key).map_err(|message| SshError::Encode { endpoint, message })
    }
}

#[async_trait]
impl SshProbePort for RusshProbe {
    async fn probe(&self, endpoint: SocketAddr) -> PortResult<HostKey> {
        let key = tokio::time::timeout(self.timeout, self.handshake(endpoint))
            .await
            .map_err(|_| SshError::Timeout { endpoint, after: self.timeout })??;
        debug!(%endpoint, fingerprint = %key.fingerprint, "ssh probe: host key");
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PrivateKey;
    use tokio::net::TcpListener;

    /// Made with `ssh-keygen -t ed25519 -N '' -C ''`; `ssh-keygen -lf` printed the fingerprint below.
    const TEST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBfRfHnDVy40Seb+0t/nqUfgYaXbMi5Yk4PhBpp7KCLNQAAAIgHwauPB8Gr
jwAAAAtzc2gtZWQyNTUxOQAAACBfRfHnDVy40Seb+0t/nqUfgYaXbMi5Yk4PhBpp7KCLNQ
AAAECgn4VGOm474bEVwmLAMRYYTAOEVKlW0MKrvGnx8RMDHV9F8ecNXLjRJ5v7S3+epR+B
hpdsyLliTg+EGmnsoIs1AAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
";
    const TEST_FP: &str = "SHA256:bvQV+iTeE8eN27WupCqD1yzKwY7Wwg67I2le7l+yD64";
    const TEST_PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF9F8ecNXLjRJ5v7S3+epR+BhpdsyLliTg+EGmnsoIs1";

    struct Srv;
    impl russh::server::Handler for Srv {
        type Error = russh::Error;
    }

    /// An in-process russh server on 127.0.0.1:0 with `key` as its host key; serves any number of clients.
    async fn server(key: PrivateKey) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(russh::server::Config { keys: vec![key], ..Default::default() });
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, sock, Srv).await {
                        let _ = session.await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probe_reports_the_known_host_key() {
        let addr = server(PrivateKey::from_openssh(TEST_KEY).unwrap()).await;
        let probe = RusshProbe::new();
        let key = probe.probe(addr).await.unwrap();
        assert_eq!(key.fingerprint, TEST_FP);
        assert_eq!(key.public_key, TEST_PUB);
        // Twice: the server is left in a state to serve the next client.
        assert_eq!(probe.probe(addr).await.unwrap(), key);
    }

    #[tokio::test]
    async fn fingerprint_matches_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        for (t, extra) in [("ed25519", &[][..]), ("ecdsa", &["-b", "256"][..])] {
            let path = dir.path().join(format!("hostkey_{t}"));
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", t])
                .args(extra)
                .args(["-N", "", "-C", "", "-f"])
                .arg(&path)
                .status()
                .expect("ssh-keygen must be installed for this test");
            assert!(st.success());
            let key = PrivateKey::read_openssh_file(&path).unwrap();
            let addr = server(key).await;
            let got = RusshProbe::new().probe(addr).await.unwrap();

            // What ssh-keygen says of the public key the probe returned, written to a file as users would.
            let pub_path = dir.path().join(format!("probed_{t}.pub"));
            std::fs::write(&pub_path, format!("{}\n", got.public_key)).unwrap();
            let out = std::process::Command::new("ssh-keygen").arg("-lf").arg(&pub_path).output().unwrap();
            assert!(out.status.success());
            let line = String::from_utf8(out.stdout).unwrap();
            let expected = line.split_whitespace().nth(1).unwrap();
            assert_eq!(got.fingerprint, expected, "{t}");
            // And it is the server's real key, not just self-consistent.
            let on_disk = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            assert_eq!(got.public_key, on_disk.trim(), "{t}");
        }
    }

    #[tokio::test]
    async fn silent_server_times_out_as_transient() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and says nothing, like a pod whose port is open before sshd is ready.
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let e = RusshProbe::new().with_timeout(Duration::from_millis(300)).probe(addr).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.message.contains("no key exchange"), "{e}");
    }

    #[tokio::test]
    async fn closed_port_is_transient() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = RusshProbe::new().probe(addr).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.message.contains("connect failed"), "{e}");
    }

    #[tokio::test]
    async fn not_ssh_is_transient() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let e = RusshProbe::new().with_timeout(Duration::from_secs(5)).probe(addr).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
    }
}
