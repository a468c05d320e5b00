//! Black-box test of the onion adapter on the stack's private Tor network: our in-process arti service is
//! reached by an independent Tor implementation (the stack's C tor client, through its SocksPort).
//!
//! Needs the stack env (`. ~/.cache/paygress/stack/env.sh`, or run through scripts/test):
//! PAYGRESS_TOR_NETWORK_CONFIG (arti fragment) and TORSOCKS_TOR_PORT (the C tor client's SocksPort).
//! Prints timings; never asserts on them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use paygress::lease::ports::OnionPort;
use paygress::onion::{address_for_key, ArtiOnion};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn stack_env(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => bail!("run through scripts/test (stack env missing: {var})"),
    }
}

/// The C tor client's SocksPort.
fn socks_addr() -> Result<SocketAddr> {
    let port = stack_env("TORSOCKS_TOR_PORT")?;
    let host = std::env::var("TORSOCKS_TOR_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into());
    format!("{host}:{port}").parse().context("TORSOCKS_TOR_ADDRESS/TORSOCKS_TOR_PORT")
}

/// A stand-in for a pod's sshd: sends an SSH banner carrying `tag`, then echoes lines.
async fn banner_server(tag: String) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tag = tag.clone();
            tokio::spawn(async move {
                let _ = sock.write_all(format!("SSH-2.0-{tag}\r\n").as_bytes()).await;
                let (r, mut w) = sock.split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("echo:{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// SOCKS5 CONNECT to `host:port` through `socks` (RFC 1928, domain-name form so the Tor client resolves
/// the onion address itself).
async fn socks5_connect(socks: SocketAddr, host: &str, port: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(socks).await.context("connecting to the SocksPort")?;
    s.write_all(&[5, 1, 0]).await?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await?;
    if buf != [5, 0] {
        bail!("SOCKS method negotiation refused: {buf:?}");
    }
    let mut req = vec![5, 1, 0, 3, u8::try_from(host.len())?];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        bail!("SOCKS connect failed with reply code {:#04x}", head[1]);
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).await?;
            usize::from(l[0]) + 2
        }
        t => bail!("SOCKS reply with address type {t}"),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    Ok(s)
}

/// One session through Tor: read the banner, check one echo.
async fn talk(socks: SocketAddr, onion: &str, port: u16, tag: &str) -> Result<()> {
    let s = socks5_connect(socks, onion, port).await?;
    let (r, mut w) = tokio::io::split(s);
    let mut lines = BufReader::new(r).lines();
    let banner = lines.next_line().await?.ok_or_else(|| anyhow!("closed before the banner"))?;
    if banner.trim_end() != format!("SSH-2.0-{tag}") {
        bail!("unexpected banner {banner:?}");
    }
    w.write_all(b"ping\n").await?;
    let echo = lines.next_line().await?.ok_or_else(|| anyhow!("closed before the echo"))?;
    if echo != "echo:ping" {
        bail!("unexpected echo {echo:?}");
    }
    Ok(())
}

/// Retry `talk` until it works or `budget` is spent; returns the time it took.
async fn reach(socks: SocketAddr, onion: &str, port: u16, tag: &str, budget: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match tokio::time::timeout(Duration::from_secs(60), talk(socks, onion, port, tag)).await {
            Ok(Ok(())) => return Ok(t0.elapsed()),
            Ok(Err(e)) if t0.elapsed() < budget => {
                println!("  attempt {attempt} to {onion}:{port}: {e:#}")
            }
            Err(_) if t0.elapsed() < budget => {
                println!("  attempt {attempt} to {onion}:{port}: timed out")
            }
            Ok(Err(e)) => bail!("{onion}:{port} not reachable after {attempt} attempts: {e:#}"),
            Err(_) => bail!("{onion}:{port} not reachable after {attempt} attempts: timed out"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// After a stop: the address must stop answering within a few attempts (a Tor client may still hold a
/// rendezvous circuit or cached descriptor, so one early success is tolerated, but not indefinitely).
async fn expect_unreachable(socks: SocketAddr, onion: &str, port: u16, tag: &str) -> Result<Duration> {
    let t0 = Instant::now();
    for attempt in 1..=10 {
        match tokio::time::timeout(Duration::from_secs(60), talk(socks, onion, port, tag)).await {
            Ok(Ok(())) => println!("  attempt {attempt}: stopped service still answered"),
            Ok(Err(e)) => {
                println!("  stopped service refused as expected: {e:#}");
                return Ok(t0.elapsed());
            }
            Err(_) => {
                println!("  stopped service timed out as expected");
                return Ok(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("{onion} still answers 10 attempts after stop()")
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("paygress=info,warn")),
        )
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arti_service_is_reached_by_c_tor_and_survives_restart() -> Result<()> {
    init_logs();
    let network = PathBuf::from(stack_env("PAYGRESS_TOR_NETWORK_CONFIG")?);
    let socks = socks_addr()?;
    if TcpStream::connect(socks).await.is_err() {
        bail!("the stack's C tor client is not listening on {socks}: scripts/stack up tor");
    }

    let tag = format!("paygress-onion-test-{}", std::process::id());
    let target = banner_server(tag.clone()).await?;
    let state = tempfile::tempdir()?;
    let lease = "lease-onion-test";

    // ---- first process ----
    let t_start = Instant::now();
    let onion = ArtiOnion::new(state.path(), Some(&network))?;
    assert!(onion.enabled());
    let key = onion.generate_key()?;
    assert_eq!(key.len(), 64);
    let expected = address_for_key(&key).map_err(|e| anyhow!(e))?;

    let address = onion.launch(lease, &key, target).await?;
    println!("bootstrap + publish: {:?} ({address})", t_start.elapsed());
    assert_eq!(address, expected);
    assert!(onion.ready());
    assert_eq!(onion.running(), 1);

    // Idempotent.
    let t = Instant::now();
    assert_eq!(onion.launch(lease, &key, target).await?, address);
    assert_eq!(onion.running(), 1);
    println!("second launch of a running lease: {:?}", t.elapsed());

    let took = reach(socks, &address, 2222, &tag, Duration::from_secs(180)).await?;
    println!(
        "reachable through the C tor client on port 2222: {took:?} after publish ({:?} after start)",
        t_start.elapsed()
    );
    let took = reach(socks, &address, 22, &tag, Duration::from_secs(60)).await?;
    println!("port 22: {took:?}");
    // Other ports are refused.
    match tokio::time::timeout(Duration::from_secs(60), talk(socks, &address, 80, &tag)).await {
        Ok(Ok(())) => bail!("port 80 must not be forwarded"),
        Ok(Err(e)) => println!("port 80 refused as expected: {e:#}"),
        Err(_) => println!("port 80 timed out (refused)"),
    }

    // ---- stop: the address stops answering ----
    onion.stop(lease).await;
    assert_eq!(onion.running(), 0);
    let took = expect_unreachable(socks, &address, 2222, &tag).await?;
    println!("unreachable {took:?} after stop");
    onion.stop(lease).await; // idempotent

    // ---- relaunch in the same process (key already in the ephemeral keystore) ----
    let t = Instant::now();
    assert_eq!(onion.launch(lease, &key, target).await?, address);
    let took = reach(socks, &address, 2222, &tag, Duration::from_secs(180)).await?;
    println!("relaunched in-process: published in {:?}, reachable {took:?} later", t.elapsed() - took);

    // ---- restart: a new client on the same state dir, the same key, the same address ----
    // What the provider does on SIGTERM; a plain drop also works but arti then releases its locks a
    // moment later, so the successor logs noise about the previous run's intro-point keys.
    onion.shutdown().await;
    let t = Instant::now();
    let onion = ArtiOnion::new(state.path(), Some(&network))?;
    let again = onion.launch(lease, &key, target).await?;
    assert_eq!(again, address, "same key must publish the same address after a restart");
    let published = t.elapsed();
    let took = reach(socks, &again, 2222, &tag, Duration::from_secs(180)).await?;
    println!("after restart: bootstrap + publish {published:?}, reachable {took:?} later");
    assert_eq!(onion.running(), 1);
    onion.stop(lease).await;
    assert_eq!(onion.running(), 0);
    onion.shutdown().await;
    Ok(())
}

/// A service that is not reachable within the stall window is stopped and launched again with the same
/// key, until it publishes. A 300 ms first window (doubling) forces relaunches on the private network,
/// where publishing takes about a second; the address must be the same and answer through C tor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_service_is_relaunched_with_the_same_key() -> Result<()> {
    init_logs();
    let network = PathBuf::from(stack_env("PAYGRESS_TOR_NETWORK_CONFIG")?);
    let socks = socks_addr()?;
    let tag = format!("paygress-relaunch-test-{}", std::process::id());
    let target = banner_server(tag.clone()).await?;
    let state = tempfile::tempdir()?;
    let onion = ArtiOnion::new(state.path(), Some(&network))?.with_publish_stall(Duration::from_millis(300));
    let key = onion.generate_key()?;
    let expected = address_for_key(&key).map_err(|e| anyhow!(e))?;

    let t = Instant::now();
    let address = onion.launch("lease-relaunch-test", &key, target).await?;
    println!("published after {} relaunch(es) in {:?}", onion.relaunches(), t.elapsed());
    assert_eq!(address, expected);
    assert!(onion.relaunches() >= 1, "publishing takes longer than the 300 ms window");
    assert_eq!(onion.running(), 1, "relaunches replace the service, never add one");
    reach(socks, &address, 2222, &tag, Duration::from_secs(180)).await?;
    onion.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_key_is_refused_before_any_network_use() -> Result<()> {
    // Needs no network: a key of the wrong length is rejected at once, as a permanent failure.
    let network = PathBuf::from(stack_env("PAYGRESS_TOR_NETWORK_CONFIG")?);
    let state = tempfile::tempdir()?;
    let onion = ArtiOnion::new(state.path(), Some(&network))?;
    let e = onion.launch("l1", &[1u8; 10], "127.0.0.1:1".parse()?).await.unwrap_err();
    assert_eq!(e.kind, paygress::lease::ports::FailureKind::Permanent);
    assert!(e.message.contains("l1") && e.message.contains("64"), "{}", e.message);
    Ok(())
}

/// Keys move between us and C tor both ways: a key we generate, written as C tor's `hs_ed25519_secret_key`
/// (32-byte header + our 64 bytes), gives the same `hostname` in C tor; a key C tor generates, read back
/// from bytes 32..96 of that file, gives C tor's `hostname` here. C tor runs with DisableNetwork 1.
#[tokio::test]
async fn keys_interoperate_with_c_tor_hidden_service_dirs() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    const HEADER: &[u8; 32] = b"== ed25519v1-secret: type0 ==\0\0\0";

    if std::process::Command::new("tor").arg("--version").output().is_err() {
        bail!("run through scripts/test (stack env missing: tor on PATH)");
    }
    let dir = tempfile::tempdir()?;
    let mkdir = |name: &str| -> Result<PathBuf> {
        let p = dir.path().join(name);
        std::fs::create_dir(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        Ok(p)
    };
    let (data, ours, theirs) = (mkdir("data")?, mkdir("hs-ours")?, mkdir("hs-theirs")?);

    let key = paygress::onion::generate_key_bytes()?;
    let secret = ours.join("hs_ed25519_secret_key");
    std::fs::write(&secret, [HEADER.as_slice(), &key].concat())?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;

    // C tor will not read /dev/null as a torrc.
    let torrc = dir.path().join("torrc");
    std::fs::write(&torrc, "")?;
    let port_line = "22 127.0.0.1:9";
    let mut tor = tokio::process::Command::new("tor")
        .arg("--defaults-torrc")
        .arg(&torrc)
        .arg("-f")
        .arg(&torrc)
        .args(["--DisableNetwork", "1"])
        .args(["--SocksPort", "0", "--Log", "notice stdout", "--DataDirectory"])
        .arg(&data)
        .arg("--HiddenServiceDir")
        .arg(&ours)
        .args(["--HiddenServicePort", port_line, "--HiddenServiceDir"])
        .arg(&theirs)
        .args(["--HiddenServicePort", port_line])
        .stdout(std::fs::File::create(dir.path().join("tor.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting tor")?;

    let t0 = Instant::now();
    let (h_ours, h_theirs) = (ours.join("hostname"), theirs.join("hostname"));
    while !(h_ours.exists() && h_theirs.exists()) {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("C tor wrote no hostname files within 30s");
        }
        if let Some(status) = tor.try_wait()? {
            let log = std::fs::read_to_string(dir.path().join("tor.log")).unwrap_or_default();
            bail!("tor exited early: {status}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let the writes finish
    tor.kill().await?;
    println!("C tor wrote both hostnames in {:?}", t0.elapsed());

    let ours_host = std::fs::read_to_string(&h_ours)?.trim().to_string();
    assert_eq!(ours_host, address_for_key(&key).map_err(|e| anyhow!(e))?, "our key exported to C tor");

    let file = std::fs::read(theirs.join("hs_ed25519_secret_key"))?;
    assert_eq!(file.len(), 96);
    assert_eq!(&file[..32], HEADER.as_slice());
    let theirs_host = std::fs::read_to_string(&h_theirs)?.trim().to_string();
    assert_eq!(address_for_key(&file[32..96]).map_err(|e| anyhow!(e))?, theirs_host, "C tor key imported");
    Ok(())
}
