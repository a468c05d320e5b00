//! One SSH server per pod, bound at `<podIP>:2222`, standing in for the
//! linuxserver/openssh-server container: it accepts exactly the pod's
//! credentials and runs session commands with `/bin/sh` on the host, in a
//! per-pod home directory.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use russh::keys::PrivateKey;
use russh::server::{Auth, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::creds::{Credentials, SSH_PORT};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
];

pub struct ServerSpec {
    /// "namespace/name", for logs.
    pub pod: String,
    pub ip: Ipv4Addr,
    pub creds: Credentials,
    pub host_key: PrivateKey,
    /// Working directory and $HOME of sessions.
    pub home: PathBuf,
}

/// Process groups started for one pod, killed when the pod's server stops.
#[derive(Default)]
struct ProcGroups(Mutex<HashSet<u32>>);

impl ProcGroups {
    fn add(&self, pgid: u32) {
        if let Ok(mut g) = self.0.lock() {
            g.insert(pgid);
        }
    }

    fn kill_all(&self) {
        let groups: Vec<u32> = match self.0.lock() {
            Ok(mut g) => g.drain().collect(),
            Err(_) => return,
        };
        for pgid in groups {
            // No libc in this crate: kill(1) with a negative pid signals the group.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

struct Shared {
    pod: String,
    /// Offered again after every failure, as sshd does (so clients can retry, up to max_auth_attempts).
    methods: MethodSet,
    creds: Credentials,
    home: PathBuf,
    groups: Arc<ProcGroups>,
}

/// A running per-pod server. Dropping it stops it too (without waiting).
pub struct PodServer {
    pub addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    groups: Arc<ProcGroups>,
}

impl PodServer {
    pub async fn start(spec: ServerSpec) -> anyhow::Result<PodServer> {
        let addr = SocketAddr::from((spec.ip, SSH_PORT));
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        if let Err(e) = std::fs::create_dir_all(&spec.home) {
            warn!(pod = %spec.pod, "creating home {}: {e}", spec.home.display());
        }
        let methods: &[MethodKind] = if spec.creds.password_enabled() {
            &[MethodKind::PublicKey, MethodKind::Password]
        } else {
            &[MethodKind::PublicKey]
        };
        let config = Arc::new(russh::server::Config {
            methods: MethodSet::from(methods),
            max_auth_attempts: 6,
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![spec.host_key],
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        });
        let groups = Arc::new(ProcGroups::default());
        let shared = Arc::new(Shared {
            pod: spec.pod,
            methods: MethodSet::from(methods),
            creds: spec.creds,
            home: spec.home,
            groups: groups.clone(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, config, shared, stop_rx));
        Ok(PodServer { addr, stop_tx, accept_task: Some(accept_task), groups })
    }

    /// Close the listener, disconnect live sessions and kill their processes;
    /// returns once the port is closed.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = self.accept_task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
        self.groups.kill_all();
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        self.groups.kill_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop_rx) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let handler = Conn {
                        shared: shared.clone(),
                        peer,
                        chans: HashMap::new(),
                    };
                    let config = config.clone();
                    let stop_rx = stop_rx.clone();
                    sessions.spawn(run_session(config, sock, handler, stop_rx, shared.pod.clone(), peer));
                }
                Err(e) => {
                    warn!(pod = %shared.pod, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    drop(listener);
    // Sessions saw the same stop signal and disconnect themselves; give them a moment.
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(3), drain).await.is_err() {
        sessions.abort_all();
    }
    debug!(pod = %shared.pod, "ssh server stopped");
}

async fn run_session(
    config: Arc<russh::server::Config>,
    sock: tokio::net::TcpStream,
    handler: Conn,
    mut stop_rx: watch::Receiver<bool>,
    pod: String,
    peer: SocketAddr,
) {
    let setup = tokio::select! {
        _ = stopped(&mut stop_rx) => return,
        r = tokio::time::timeout(Duration::from_secs(30), russh::server::run_stream(config, sock, handler)) => r,
    };
    let session = match setup {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%pod, %peer, "ssh handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%pod, %peer, "ssh handshake timed out");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                debug!(%pod, %peer, "ssh session ended: {e}");
            }
        }
        _ = stopped(&mut stop_rx) => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "pod deleted".into(), String::new())
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
        }
    }
}

struct ChanState {
    pty: bool,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    task: Option<JoinHandle<()>>,
}

/// Per-connection handler.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    chans: HashMap<ChannelId, ChanState>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, c) in self.chans.drain() {
            if let Some(t) = c.task {
                t.abort();
            }
        }
    }
}

enum What {
    Exec(String),
    Shell,
    Sftp(&'static str),
}

impl Conn {
    fn start(&mut self, channel: ChannelId, what: What, session: &mut Session) -> bool {
        let Some(state) = self.chans.get_mut(&channel) else {
            return false;
        };
        if state.task.is_some() {
            // One program per channel (RFC 4254 §6.5).
            return false;
        }
        let shared = &self.shared;
        let mut cmd = match &what {
            What::Exec(c) => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-c").arg(c);
                cmd
            }
            What::Shell => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-i");
                cmd
            }
            What::Sftp(path) => tokio::process::Command::new(path),
        };
        let home = if shared.home.is_dir() { shared.home.as_path() } else { Path::new("/") };
        cmd.env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOME", &shared.home)
            .env("USER", &shared.creds.user)
            .env("LOGNAME", &shared.creds.user)
            .env("SHELL", "/bin/sh")
            .env("LANG", "C.UTF-8")
            .env("SSH_CONNECTION", format!("{} {} {}", self.peer.ip(), self.peer.port(), SSH_PORT))
            .current_dir(home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if state.pty {
            cmd.env("TERM", "xterm");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.stdin = Some(tx);
        let desc = match &what {
            What::Exec(c) => format!("exec {c:?}"),
            What::Shell => "shell".to_string(),
            What::Sftp(_) => "sftp".to_string(),
        };
        info!(pod = %shared.pod, peer = %self.peer, "{desc}");
        state.task = Some(tokio::spawn(run_process(
            session.handle(),
            channel,
            cmd,
            rx,
            state.pty,
            shared.groups.clone(),
            shared.pod.clone(),
        )));
        true
    }
}

impl Conn {
    fn reject(&self) -> Auth {
        Auth::Reject { proceed_with_methods: Some(self.shared.methods.clone()), partial_success: false }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self.shared.creds.check_password(user, password) {
            info!(pod = %self.shared.pod, peer = %self.peer, %user, "password accepted");
            Ok(Auth::Accept)
        } else {
            info!(pod = %self.shared.pod, peer = %self.peer, %user, "password rejected");
            Ok(self.reject())
        }
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        if self.shared.creds.check_key(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            debug!(pod = %self.shared.pod, %user, "public key not authorised");
            Ok(self.reject())
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if self.shared.creds.check_key(user, key.public_key) {
            info!(pod = %self.shared.pod, peer = %self.peer, %user, "public key accepted");
            Ok(Auth::Accept)
        } else {
            info!(pod = %self.shared.pod, peer = %self.peer, %user, "public key rejected");
            Ok(self.reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Requests and data reach us through the Handler callbacks; the Channel
        // object itself is not needed (dropping it is fine, sends to it are ignored).
        self.chans.insert(channel.id(), ChanState { pty: false, stdin: None, task: None });
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.get_mut(&channel) {
            c.pty = true;
        }
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        if self.start(channel, What::Exec(command), session) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        if self.start(channel, What::Shell, session) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let sftp = SFTP_SERVERS.iter().copied().find(|p| Path::new(p).is_file());
        match (name, sftp) {
            ("sftp", Some(path)) if self.start(channel, What::Sftp(path), session) => session.channel_success(channel),
            _ => session.channel_failure(channel),
        }
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.get(&channel) {
            if let Some(tx) = &c.stdin {
                let bytes = if c.pty {
                    // Raw-mode client terminals send CR for Enter.
                    data.iter().map(|&b| if b == b'\r' { b'\n' } else { b }).collect()
                } else {
                    data.to_vec()
                };
                let _ = tx.send(bytes);
            }
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.get_mut(&channel) {
            c.stdin = None;
        }
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.remove(&channel) {
            if let Some(t) = c.task {
                t.abort();
            }
        }
        Ok(())
    }
}

async fn pump<R: AsyncRead + Unpin>(mut r: R, handle: &Handle, channel: ChannelId, ext: Option<u32>, pty: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let out: Vec<u8> = if pty {
            let mut v = Vec::with_capacity(n + n / 8);
            for &b in chunk {
                if b == b'\n' {
                    v.push(b'\r');
                }
                v.push(b);
            }
            v
        } else {
            chunk.to_vec()
        };
        let sent = match ext {
            Some(code) => handle.extended_data(channel, code, out).await.is_ok(),
            None => handle.data(channel, out).await.is_ok(),
        };
        if !sent {
            return;
        }
    }
}

async fn run_process(
    handle: Handle,
    channel: ChannelId,
    mut cmd: tokio::process::Command,
    mut stdin_rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pty: bool,
    groups: Arc<ProcGroups>,
    pod: String,
) {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(%pod, "spawning session process: {e}");
            let _ = handle.extended_data(channel, 1, format!("stack-node: cannot start: {e}\n").into_bytes()).await;
            let _ = handle.exit_status_request(channel, 127).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            return;
        }
    };
    if let Some(pid) = child.id() {
        groups.add(pid);
    }
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let writer = tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(chunk) = stdin_rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
            let _ = stdin.flush().await;
        }
        // Client sent EOF (or the channel went away): close the pipe.
        let _ = stdin.shutdown().await;
    });
    // Aborts the writer whatever way this task ends.
    let _writer_guard = AbortOnDrop(writer.abort_handle());

    let out = async {
        if let Some(s) = stdout {
            pump(s, &handle, channel, None, pty).await;
        }
    };
    // With a pty, a terminal merges stderr into the same stream.
    let err = async {
        if let Some(s) = stderr {
            pump(s, &handle, channel, if pty { None } else { Some(1) }, pty).await;
        }
    };
    tokio::join!(out, err);
    let code = match child.wait().await {
        Ok(st) => st.code().map(|c| c as u32).unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + st.signal().unwrap_or(0) as u32
        }),
        Err(e) => {
            warn!(%pod, "waiting for session process: {e}");
            255
        }
    };
    debug!(%pod, code, "session process exited");
    let _ = handle.exit_status_request(channel, code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once the stop flag is set (or its sender is gone). Holds no watch guard across awaits.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
    use russh::{client, ChannelMsg};
    use std::collections::BTreeMap;

    struct TestClient;

    impl client::Handler for TestClient {
        type Error = russh::Error;

        async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    async fn connect(addr: SocketAddr) -> client::Handle<TestClient> {
        client::connect(Arc::new(client::Config::default()), addr, TestClient).await.unwrap()
    }

    /// (stdout, stderr, exit status) of one exec; None once the server drops the connection.
    async fn exec(h: &client::Handle<TestClient>, cmd: &str) -> (Vec<u8>, Vec<u8>, Option<u32>) {
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cmd).await.unwrap();
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => err.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                _ => {}
            }
        }
        (out, err, code)
    }

    #[tokio::test]
    async fn serves_exactly_the_pod_credentials() {
        let user_key = PrivateKey::from(Ed25519Keypair::from_seed(&[9u8; 32]));
        let other_key = PrivateKey::from(Ed25519Keypair::from_seed(&[10u8; 32]));
        let env: BTreeMap<String, String> = [
            ("USER_NAME", "alice".to_string()),
            ("USER_PASSWORD", "secret".to_string()),
            ("PASSWORD_ACCESS", "true".to_string()),
            ("PUBLIC_KEY", user_key.public_key().to_openssh().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let home = std::env::temp_dir().join(format!("stack-node-sshd-{}", std::process::id()));
        // Outside the stack's pod CIDR so a running stack does not collide.
        let ip: Ipv4Addr = "127.0.99.7".parse().unwrap();
        let server = PodServer::start(ServerSpec {
            pod: "test/pod".into(),
            ip,
            creds: Credentials::from_env(&env),
            host_key: PrivateKey::from(Ed25519Keypair::from_seed(&[7u8; 32])),
            home: home.clone(),
        })
        .await
        .unwrap();
        let addr = server.addr;

        let mut h = connect(addr).await;
        assert!(!h.authenticate_password("alice", "wrong").await.unwrap().success());
        assert!(!h.authenticate_password("bob", "secret").await.unwrap().success());
        assert!(!h
            .authenticate_publickey("alice", PrivateKeyWithHashAlg::new(Arc::new(other_key), None))
            .await
            .unwrap()
            .success());
        // Rejections leave password auth available, as with sshd.
        assert!(h.authenticate_password("alice", "secret").await.unwrap().success());
        let (out, err, code) = exec(&h, "echo out; echo err >&2; pwd; exit 3").await;
        assert_eq!(String::from_utf8_lossy(&out), format!("out\n{}\n", home.display()));
        assert_eq!(err, b"err\n");
        assert_eq!(code, Some(3));

        let mut hk = connect(addr).await;
        assert!(!hk
            .authenticate_publickey("bob", PrivateKeyWithHashAlg::new(Arc::new(user_key.clone()), None))
            .await
            .unwrap()
            .success());
        assert!(hk
            .authenticate_publickey("alice", PrivateKeyWithHashAlg::new(Arc::new(user_key), None))
            .await
            .unwrap()
            .success());
        let (out, _, code) = exec(&hk, "echo $USER").await;
        assert_eq!((out.as_slice(), code), (&b"alice\n"[..], Some(0)));

        // A live session is dropped when the server stops, and the port closes.
        let live = tokio::spawn(async move { exec(&hk, "sleep 30; echo never").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.stop().await;
        let (out, _, code) = tokio::time::timeout(Duration::from_secs(5), live).await.unwrap().unwrap();
        assert!(out.is_empty());
        assert_eq!(code, None);
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        drop(h);
        let _ = std::fs::remove_dir_all(&home);
    }
}
