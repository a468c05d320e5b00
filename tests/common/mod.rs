//! Black-box harness: the real peers of `scripts/stack` driven with the tools a user has (cashu, nak,
//! kubectl, ssh), and the `paygress` binary run as a process.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// Environment exported by `scripts/stack env`. Missing variables fail the test: these tests must never
/// pass without the real peers.
pub fn env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("run through scripts/test (stack env missing: {var})"),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command, return stdout; error names the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<String> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().ok_or(anyhow!("stdin"))?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd, out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn kubectl(args: &[&str]) -> Result<String> {
    run(Command::new("kubectl").args(args))
}

/// kubectl as admin of the cluster whose kubeconfig is `admin` (e.g. the real node's, beside the stack's).
pub fn kubectl_at(admin: &Path, args: &[&str]) -> Result<String> {
    run(Command::new("kubectl").arg("--kubeconfig").arg(admin).args(args))
}

// ---------------------------------------------------------------- Kubernetes as the provider sees it

/// Applies k8s/sidecar-service.yaml as admin (once per test process) and returns a kubeconfig for the
/// provider's own ServiceAccount, so the provider runs with exactly the manifest's RBAC.
pub fn provider_kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| make_provider_kubeconfig().expect("provider kubeconfig")).clone()
}

fn make_provider_kubeconfig() -> Result<PathBuf> {
    provider_kubeconfig_for(Path::new(&env("KUBECONFIG")), "stack")
}

/// `kubectl apply` of k8s/sidecar-service.yaml, unedited, but for its Deployment: the provider under test runs
/// as a host process; the manifest's own would take the node's CPU (scripts/smoke/deploy.sh runs that one).
pub fn apply_manifest(admin: &Path) -> Result<()> {
    let manifest = std::fs::read_to_string(repo_root().join("k8s/sidecar-service.yaml"))?;
    let docs: Vec<&str> = manifest.split("\n---\n").filter(|d| !d.contains("\nkind: Deployment\n")).collect();
    ensure!(docs.len() + 1 == manifest.split("\n---\n").count(), "the manifest has no Deployment to leave out");
    let mut apply = Command::new("kubectl");
    apply.arg("--kubeconfig").arg(admin).args(["apply", "-f", "-"]);
    run_with_stdin(&mut apply, &docs.join("\n---\n")).map(|_| ())
}

/// Apply k8s/sidecar-service.yaml as the admin of `admin`'s cluster and return a kubeconfig of the
/// provider's ServiceAccount there (`tag` names the file).
pub fn provider_kubeconfig_for(admin: &Path, tag: &str) -> Result<PathBuf> {
    let kubectl = |args: &[&str]| kubectl_at(admin, args);
    apply_manifest(admin)?;
    let token = kubectl(&["-n", "ingress-system", "create", "token", "paygress", "--duration", "6h"])?;
    let server = kubectl(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"])?;
    let ca = kubectl(&[
        "config",
        "view",
        "--minify",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ])?;
    let dir = std::env::temp_dir().join(format!("paygress-sa-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("kubeconfig-{tag}"));
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stack\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: paygress\n  user:\n    token: {token}\ncontexts:\n- name: paygress\n  context:\n    cluster: stack\n    user: paygress\n    namespace: user-workloads\n\
         current-context: paygress\n"
    );
    std::fs::write(&path, cfg)?;
    Ok(path)
}

/// `kubectl get pods` in the provider's namespace, selected by `label`, printed as `output`.
fn lease_pods(label: &str, output: &str) -> Result<String> {
    kubectl(&["-n", "user-workloads", "get", "pods", "-l", label, "-o", output])
}

pub fn pods_of_lease(lease_id: &str) -> Result<usize> {
    let out = lease_pods(&format!("paygress.io/lease-id={lease_id}"), "name")?;
    Ok(out.lines().filter(|l| !l.is_empty()).count())
}

pub fn managed_pod_names() -> Result<Vec<String>> {
    let out = lease_pods("app.kubernetes.io/managed-by=paygress", "jsonpath={.items[*].metadata.name}")?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Pods the provider made for one requester (by the requester annotation).
pub fn pods_of_requester(pubkey: &str) -> Result<usize> {
    let out = lease_pods(
        "app.kubernetes.io/managed-by=paygress",
        "jsonpath={range .items[*]}{.metadata.annotations.paygress\\.io/requester}{\"\\n\"}{end}",
    )?;
    Ok(out.lines().filter(|l| l.trim() == pubkey).count())
}

pub fn pod_ip(pod: &str) -> Result<String> {
    kubectl(&["-n", "user-workloads", "get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
}

// ---------------------------------------------------------------- Cashu, with the `cashu` CLI

/// A user's wallet: its own CASHU_DIR, talking to a stack mint.
pub struct Wallet {
    pub dir: tempfile::TempDir,
    pub mint: String,
}

impl Wallet {
    pub fn new(mint: &str) -> Result<Wallet> {
        let w = Wallet { dir: tempfile::tempdir()?, mint: mint.to_string() };
        Ok(w)
    }

    fn cashu(&self) -> Command {
        let mut c = Command::new("cashu");
        // Nutshell reads ./.env: run it from its own empty directory.
        c.current_dir(self.dir.path())
            .env("CASHU_DIR", self.dir.path())
            .env("MINT_URL", &self.mint)
            .env("HOME", self.dir.path())
            .arg("-y");
        c
    }

    /// `cashu invoice N` (the fake Lightning backend pays it).
    pub fn fund(&self, sats: u64) -> Result<()> {
        run(self.cashu().args(["invoice", &sats.to_string()])).map(|_| ())
    }

    fn token_from(out: &str) -> Result<String> {
        out.split_whitespace()
            .find(|w| w.starts_with("cashuA") || w.starts_with("cashuB"))
            .map(String::from)
            .ok_or_else(|| anyhow!("no token in cashu output: {out}"))
    }

    /// `cashu send N` → a cashuB token.
    pub fn send(&self, sats: u64) -> Result<String> {
        Self::token_from(&run(self.cashu().args(["send", &sats.to_string()]))?)
    }

    pub fn send_legacy(&self, sats: u64) -> Result<String> {
        Self::token_from(&run(self.cashu().args(["send", "--legacy", &sats.to_string()]))?)
    }

    pub fn send_locked(&self, sats: u64, pubkey_hex: &str) -> Result<String> {
        Self::token_from(&run(self.cashu().args(["send", "--lock", &format!("P2PK:{pubkey_hex}"), &sats.to_string()]))?)
    }

    /// `cashu pay creqA…` (NUT-18): a token as the request asks (amount with fees, its mint, its P2PK lock).
    pub fn pay_request(&self, creq: &str) -> Result<String> {
        Self::token_from(&run(self.cashu().args(["pay", creq]))?)
    }

    /// `cashu decode creqA…|cashuB…` as JSON.
    pub fn decode(&self, s: &str) -> Result<Value> {
        let out = run(self.cashu().args(["decode", s]))?;
        let start = out.find('{').ok_or_else(|| anyhow!("no JSON in cashu decode output: {out}"))?;
        Ok(serde_json::from_str(&out[start..])?)
    }

    /// `cashu lock p2pk`: a public key only this wallet can receive tokens locked to.
    pub fn lock_key(&self) -> Result<String> {
        let out = run(self.cashu().args(["lock", "p2pk"]))?;
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("P2PK:"))
            .map(String::from)
            .ok_or_else(|| anyhow!("no P2PK lock in cashu output: {out}"))
    }

    /// `cashu receive TOKEN`: succeeds only if the token is unspent, which is how a test proves that the
    /// provider left it alone.
    pub fn receive(&self, token: &str) -> Result<String> {
        run(self.cashu().args(["receive", token]))
    }

    pub fn balance(&self) -> Result<u64> {
        let out = run(self.cashu().args(["balance"]))?;
        // "Balance: 900 sat"
        out.split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok())
            .next()
            .ok_or_else(|| anyhow!("no balance in {out}"))
    }
}

// ---------------------------------------------------------------- Nostr, with `nak`

pub fn relay() -> String {
    env("NOSTR_RELAYS").split(',').next().unwrap_or_default().to_string()
}

/// A Nostr user with a fresh key, using nak as the independent client.
pub struct User {
    pub sec: String,
    pub pubkey: String,
}

impl User {
    pub fn new() -> Result<User> {
        let sec = run(Command::new("nak").args(["key", "generate"]))?;
        let pubkey = run(Command::new("nak").args(["key", "public", &sec]))?;
        Ok(User { sec, pubkey })
    }

    /// Publish an event; returns its id.
    pub fn publish(&self, kind: u16, content: &str, provider: Option<&str>) -> Result<String> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("content");
        std::fs::write(&file, content)?;
        let mut cmd = Command::new("nak");
        cmd.args(["event", "--sec", &self.sec, "-k", &kind.to_string(), "-c", &format!("@{}", file.display())]);
        if let Some(p) = provider {
            cmd.args(["-p", p]);
        }
        cmd.arg(relay());
        let ev: Value = serde_json::from_str(&run(&mut cmd)?)?;
        Ok(ev["id"].as_str().ok_or(anyhow!("no id"))?.to_string())
    }

    /// A kind-`kind` request with NIP-44 content to the provider.
    pub fn publish_nip44(&self, kind: u16, json: &str, provider: &str) -> Result<String> {
        let ct = self.encrypt(json, provider)?;
        self.publish(kind, &ct, Some(provider))
    }

    pub fn encrypt(&self, plaintext: &str, to: &str) -> Result<String> {
        run_with_stdin(Command::new("nak").args(["encrypt", "--sec", &self.sec, "-p", to]), plaintext)
    }

    pub fn decrypt(&self, ciphertext: &str, from: &str) -> Result<String> {
        run_with_stdin(Command::new("nak").args(["decrypt", "--sec", &self.sec, "-p", from]), ciphertext)
    }

    /// A NIP-17 gift wrap around a rumor of `kind` to the provider; returns the rumor id (the request id).
    pub fn publish_gift_wrap(&self, kind: u16, json: &str, provider: &str) -> Result<String> {
        let rumor = serde_json::json!({
            "kind": kind, "content": json, "tags": [["p", provider]],
            "created_at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
            "pubkey": self.pubkey,
        });
        let wrap = run_with_stdin(
            Command::new("nak").args(["gift", "wrap", "--sec", &self.sec, "-p", provider]),
            &rumor.to_string(),
        )?;
        let wrap_v: Value = serde_json::from_str(&wrap)?;
        run_with_stdin(Command::new("nak").args(["event", &relay()]), &wrap)?;
        // The rumor id is what the provider answers to; nak prints the wrap, so read the rumor back.
        let _ = wrap_v;
        let unwrapped = self.unwrap_own_rumor(&rumor)?;
        Ok(unwrapped)
    }

    fn unwrap_own_rumor(&self, rumor: &Value) -> Result<String> {
        // The rumor id is the NIP-01 id of the unsigned rumor: compute it as every client does.
        use sha2::{Digest, Sha256};
        let ser = serde_json::json!([
            0,
            rumor["pubkey"],
            rumor["created_at"],
            rumor["kind"],
            rumor["tags"],
            rumor["content"]
        ]);
        Ok(hex::encode(Sha256::digest(ser.to_string().as_bytes())))
    }

    /// The kind-1001 events from `provider` to us answering `request_id`, one JSON per line, as nak prints them.
    fn reply_events(&self, request_id: &str, provider: &str) -> Result<String> {
        run(Command::new("nak").args([
            "req",
            "-k",
            "1001",
            "-p",
            &self.pubkey,
            "-a",
            provider,
            "-e",
            request_id,
            &relay(),
        ]))
    }

    /// How many kind-1001 replies the provider published to `request_id` (NIP-44 route).
    pub fn count_replies(&self, request_id: &str, provider: &str) -> Result<usize> {
        let out = self.reply_events(request_id, provider)?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// Wait for the kind-1001 reply to `request_id` and decrypt it (NIP-44 or gift wrap).
    pub fn await_reply(&self, request_id: &str, provider: &str, timeout: Duration) -> Result<Value> {
        wait_until(&format!("reply to {request_id}"), timeout, || self.find_reply(request_id, provider).ok().flatten())
    }

    /// Wait for a NIP-44 reply to `request_id` that `pred` accepts (a request can be answered more than
    /// once: the reply, then e.g. the early end of its lease).
    pub fn await_reply_where(
        &self,
        request_id: &str,
        provider: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_until(&format!("a matching reply to {request_id}"), timeout, || {
            let out = self.reply_events(request_id, provider).ok()?;
            out.lines().filter(|l| !l.trim().is_empty()).find_map(|line| {
                let ev: Value = serde_json::from_str(line).ok()?;
                let plain = self.decrypt(ev["content"].as_str().unwrap_or_default(), provider).ok()?;
                serde_json::from_str::<Value>(&plain).ok().filter(|v| pred(v))
            })
        })
    }

    /// A NIP-17 chat message (kind 14, gift-wrapped) from `provider` in the thread of `request_id`, as a
    /// chat client shows it: its text.
    pub fn await_chat(&self, request_id: &str, provider: &str, timeout: Duration) -> Result<String> {
        wait_until(&format!("a chat message answering {request_id}"), timeout, || {
            let rumor = self.gift_rumor(14, request_id, provider).ok()??;
            Some(rumor["content"].as_str().unwrap_or_default().to_string())
        })
    }

    /// The first rumor of `kind` from `provider` answering `request_id` (its `e` tag) among the gift wraps
    /// to this user on the relay.
    fn gift_rumor(&self, kind: u16, request_id: &str, provider: &str) -> Result<Option<Value>> {
        let out = run(Command::new("nak").args(["req", "-k", "1059", "-p", &self.pubkey, &relay()]))?;
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(rumor) = run_with_stdin(Command::new("nak").args(["gift", "unwrap", "--sec", &self.sec]), line)
            else {
                continue;
            };
            let rumor: Value = serde_json::from_str(&rumor)?;
            let answers = rumor["tags"].as_array().into_iter().flatten().any(|t| t[0] == "e" && t[1] == request_id);
            if rumor["kind"] == kind && answers && rumor["pubkey"] == provider {
                return Ok(Some(rumor));
            }
        }
        Ok(None)
    }

    /// The reply to `request_id`: not a later message tagged with the same request (an expiry notice, an
    /// early end), which `await_reply_where` finds.
    fn find_reply(&self, request_id: &str, provider: &str) -> Result<Option<Value>> {
        let later = |v: &Value| v["status"] == "notice" || v["code"] == "lease_ended";
        let out = self.reply_events(request_id, provider)?;
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let ev: Value = serde_json::from_str(line)?;
            let plain = self.decrypt(ev["content"].as_str().unwrap_or_default(), provider)?;
            let v: Value = serde_json::from_str(&plain)?;
            if !later(&v) {
                return Ok(Some(v));
            }
        }
        match self.gift_rumor(1001, request_id, provider)? {
            Some(rumor) => Ok(Some(serde_json::from_str(rumor["content"].as_str().unwrap_or_default())?)),
            None => Ok(None),
        }
    }
}

// ---------------------------------------------------------------- the provider process

#[derive(Default)]
pub struct ProviderOptions {
    pub enable_tor: bool,
    /// RUN_MODE; `nostr` when None.
    pub run_mode: Option<&'static str>,
    /// Set last: overrides any variable above (RUST_LOG, PAYGRESS_ADMIN_TOKEN, …).
    pub extra_env: Vec<(String, String)>,
    /// Reuse a state dir (restarts); a fresh one when None.
    pub state_dir: Option<PathBuf>,
    /// The provider's kubeconfig; the stack's, as the manifest's ServiceAccount, when None.
    pub kubeconfig: Option<PathBuf>,
}

pub struct Provider {
    pub child: Child,
    pub state_dir: PathBuf,
    pub http: String,
    pub pubkey: String,
    pub nsec_hex: String,
    pub log: PathBuf,
    _state_tmp: Option<tempfile::TempDir>,
}

/// The provider binary: `PAYGRESS_TEST_BIN` if set, else a private copy of this build's binary taken at
/// first use. The target dir is shared by several worktrees, so `target/debug/paygress` may be replaced by
/// another branch's build while tests run; a copy keeps one test process on one binary.
pub fn paygress_bin() -> String {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(b) = std::env::var("PAYGRESS_TEST_BIN").or_else(|_| std::env::var("PAYGRESS_BIN")) {
            if !b.is_empty() {
                return b;
            }
        }
        pinned_copy(Path::new(env!("CARGO_BIN_EXE_paygress"))).unwrap_or_else(|| env!("CARGO_BIN_EXE_paygress").into())
    })
    .clone()
}

/// A copy of the binary that a rebuild elsewhere (another worktree sharing CARGO_TARGET_DIR) cannot swap
/// under a running test. Keyed by the binary's size and mtime, so test processes and runs of one build share
/// a copy; copies not used for a day are removed, so /tmp does not fill up run after run.
fn pinned_copy(src: &Path) -> Option<String> {
    let meta = std::fs::metadata(src).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let root = std::env::temp_dir().join("paygress-test-bin");
    let dir = root.join(format!("{}-{mtime}", meta.len()));
    let dst = dir.join("paygress");
    if !dst.exists() {
        std::fs::create_dir_all(&dir).ok()?;
        // Copy under a private name, then rename: concurrent test processes never see half a binary.
        let tmp = dir.join(format!(".paygress-{}", std::process::id()));
        std::fs::copy(src, &tmp).ok()?;
        std::fs::rename(&tmp, &dst).ok()?;
    }
    let _ = filetime_touch(&dir);
    let day = Duration::from_secs(86_400);
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if stale && entry.path() != dir {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Some(dst.display().to_string())
}

/// Marks a copy as used now (its directory's mtime), by creating and removing a file in it.
fn filetime_touch(dir: &Path) -> std::io::Result<()> {
    let mark = dir.join(format!(".used-{}", std::process::id()));
    std::fs::write(&mark, b"")?;
    std::fs::remove_file(mark)
}

/// `paygress --help`, e.g. to check that the binary under test is this branch's.
pub fn paygress_help() -> Result<String> {
    run(Command::new(paygress_bin()).arg("--help"))
}

/// A running `kubectl port-forward`, stopped on drop.
pub struct PortForward {
    child: std::process::Child,
    pub local_port: u16,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a reply's `port_forward_command` (`kubectl -n NS port-forward svc/NAME 2222:2222`) as given, except
/// that the local port is a free one on 127.0.0.1 (tests run side by side), and waits until it listens.
pub fn port_forward(reply_command: &str) -> Result<PortForward> {
    let mut words: Vec<String> = reply_command.split_whitespace().map(String::from).collect();
    ensure!(words.first().map(String::as_str) == Some("kubectl"), "not a kubectl command: {reply_command}");
    let last = words.pop().ok_or_else(|| anyhow!("empty command"))?;
    let (_, remote) = last.split_once(':').ok_or_else(|| anyhow!("no LOCAL:REMOTE in {reply_command}"))?;
    let local_port = free_port();
    words.extend(["--address".into(), "127.0.0.1".into(), format!("{local_port}:{remote}")]);
    let child = Command::new(&words[0])
        .args(&words[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("kubectl port-forward")?;
    let mut pf = PortForward { child, local_port };
    wait_until("kubectl port-forward listening", Duration::from_secs(30), || {
        if let Ok(Some(status)) = pf.child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = pf.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            return Some(Err(anyhow!("kubectl port-forward exited ({status}): {}", stderr.trim())));
        }
        std::net::TcpStream::connect(("127.0.0.1", local_port)).ok().map(|_| Ok(()))
    })??;
    Ok(pf)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(28091)
}

/// The harness's tiers: see [`Provider::start`].
pub const TEST_TIERS: &str = "basic:50m:64Mi";

/// `bash -c` body: `$1` admin kubeconfig, `$2` the provider's label selector, then the command. Waits on the test
/// process (`PAYGRESS_TEST_PID`) and the provider; kills the provider; if the test process is gone, deletes the
/// provider's lease objects.
const BABYSITTER: &str = r#"admin=$1; sel=$2; shift 2
"$@" & c=$!
while kill -0 "$PAYGRESS_TEST_PID" 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.5; done
kill -9 $c 2>/dev/null; wait
if ! kill -0 "$PAYGRESS_TEST_PID" 2>/dev/null; then
  kubectl --kubeconfig "$admin" delete pods,services,secrets --all-namespaces -l "$sel" --wait=false >/dev/null 2>&1
fi"#;

impl Provider {
    /// A provider (Tor off) with `extra` variables over the harness's, on `kubeconfig` (the stack's
    /// ServiceAccount when None), once it is ready.
    pub fn start_ready(extra: &[(&str, &str)], kubeconfig: Option<PathBuf>) -> Result<Provider> {
        let p = Provider::start(ProviderOptions {
            kubeconfig,
            extra_env: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        })?;
        p.wait_ready(Duration::from_secs(60))?;
        Ok(p)
    }

    pub fn start(opts: ProviderOptions) -> Result<Provider> {
        let (state_dir, tmp) = match opts.state_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        // One provider key per state dir, kept across restarts.
        let key_file = state_dir.join("test-nostr-key");
        let sec = match std::fs::read_to_string(&key_file) {
            Ok(s) => s.trim().to_string(),
            Err(_) => {
                let s = run(Command::new("nak").args(["key", "generate"]))?;
                std::fs::write(&key_file, &s)?;
                s
            }
        };
        let pubkey = run(Command::new("nak").args(["key", "public", &sec]))?;
        let http = format!("127.0.0.1:{}", free_port());
        let log = state_dir.join("provider.log");
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        // A babysitter shell kills the provider when this test process goes away (statics are never
        // dropped), so no stray provider outlives its test run and races the next one for tokens; then it
        // deletes the provider's lease objects, whose real containers would otherwise hold the node's CPU
        // through the next test binaries. (Not when only the provider died: a test restarting it on the same
        // state expects its leases back.)
        let mut cmd = Command::new("bash");
        cmd.args([
            "-c",
            BABYSITTER,
            "babysitter",
            &env("KUBECONFIG"),
            &format!("paygress.io/provider={}", paygress::lease::ports::provider_id(&pubkey)),
            &paygress_bin(),
        ]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.env_clear()
            .env("PAYGRESS_TEST_PID", std::process::id().to_string())
            .env("PATH", env("PATH"))
            .env("HOME", env("HOME"))
            .env("RUST_LOG", "info,paygress=debug")
            .env("RUN_MODE", opts.run_mode.unwrap_or("nostr"))
            .env("NOSTR_RELAYS", env("NOSTR_RELAYS"))
            .env("NOSTR_PRIVATE_KEY", &sec)
            .env("WHITELISTED_MINTS", env("CASHU_MINT_URL"))
            .env("KUBECONFIG", opts.kubeconfig.clone().unwrap_or_else(provider_kubeconfig))
            .env("POD_NAMESPACE", "user-workloads")
            .env("PAYMENT_RATE_SATS_PER_HOUR", "100")
            // Real containers on a 2-core node: a tier small enough that the tests' leases all fit (40 at once
            // at 50m), and that still runs sshd and a shell.
            .env("PAYGRESS_TIERS", TEST_TIERS)
            .env("PAYGRESS_STATE_DIR", &state_dir)
            .env("PAYGRESS_HTTP_ADDR", &http)
            .env("ENABLE_TOR_SIDECAR", if opts.enable_tor { "true" } else { "false" })
            .env("PAYGRESS_READY_TIMEOUT_SECONDS", "60")
            .env("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "2");
        if opts.enable_tor {
            cmd.env("PAYGRESS_TOR_NETWORK_CONFIG", env("PAYGRESS_TOR_NETWORK_CONFIG"));
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(logf.try_clone()?).stderr(logf).stdin(Stdio::null()).spawn()?;
        let p = Provider { child, state_dir, http, pubkey, nsec_hex: sec, log, _state_tmp: tmp };
        p.wait_ready(Duration::from_secs(if opts.enable_tor { 240 } else { 60 }))?;
        Ok(p)
    }

    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/readyz", self.http);
        wait_until("provider /readyz", timeout, || {
            Command::new("curl").args(["-sf", "-o", "/dev/null", &url]).status().ok().filter(|s| s.success())
        })
        .map(|_| ())
        .map_err(|e| anyhow!("{e}; provider log:\n{}", self.log_tail()))
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL to the provider and its babysitter, as a crash would.
    pub fn kill9(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ =
            Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }

    /// SIGTERM to the provider (and its babysitter), then wait until it has drained and exited.
    pub fn sigterm(&mut self, timeout: Duration) -> Result<()> {
        run(Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]))?;
        // Exited = no live (non-zombie) process left in its process group.
        let pgid = self.child.id().to_string();
        wait_until("provider exit after SIGTERM", timeout, || {
            let _ = self.child.try_wait();
            let ps = Command::new("ps").args(["-eo", "pgid=,stat="]).output().ok()?;
            let live = String::from_utf8_lossy(&ps.stdout).lines().any(|l| {
                let mut f = l.split_whitespace();
                f.next() == Some(pgid.as_str()) && !f.next().unwrap_or("Z").starts_with('Z')
            });
            (!live).then_some(())
        })
        .map_err(|e| anyhow!("{e}; provider log:\n{}", self.log_tail()))?;
        let _ = self.child.wait();
        Ok(())
    }

    /// The label value this provider puts on its objects.
    pub fn provider_label(&self) -> String {
        self.pubkey.chars().take(32).collect::<String>().to_ascii_lowercase()
    }

    /// Delete the onion pool's Secrets of this provider (tests that restart it call this at the end).
    pub fn delete_pool_secrets(&self) {
        let sel = format!("paygress.io/pool,paygress.io/provider={}", self.provider_label());
        let _ = kubectl(&["-n", "user-workloads", "delete", "secret", "-l", &sel, "--wait=false"]);
    }

    /// Addresses of this provider's pool slots whose Secret is in the cluster (published or about to be).
    pub fn pool_addresses(&self) -> Result<Vec<String>> {
        let sel = format!("paygress.io/pool,paygress.io/provider={}", self.provider_label());
        let out = kubectl(&["-n", "user-workloads", "get", "secret", "-l", &sel, "-o", "json"])?;
        let list: Value = serde_json::from_str(&out)?;
        let mut addresses = Vec::new();
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let b64 = item["data"]["hs_ed25519_secret_key"].as_str().unwrap_or_default();
            let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)?;
            addresses.push(paygress::onion::address_for_key(&key).map_err(|e| anyhow!(e))?);
        }
        Ok(addresses)
    }

    /// A gauge or counter from /metrics (first sample whose line starts with `series`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let m = self.metrics().ok()?;
        m.lines().find(|l| l.starts_with(series)).and_then(|l| l.split_whitespace().last()?.parse().ok())
    }

    /// Keep the state dir alive beyond this process (for restarts).
    pub fn keep_state(&mut self) -> Option<tempfile::TempDir> {
        self._state_tmp.take()
    }

    /// Wait until the provider process has exited by itself (a failpoint abort); its babysitter exits with it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = &mut self.child;
        wait_until("provider process exit", timeout, || child.try_wait().ok().flatten())
            .map_err(|e| anyhow!("{e}; provider log:\n{}", self.log_tail()))
    }

    /// SIGTERM to the provider itself (not its babysitter), then wait for it to drain and exit, so the
    /// single-process wallet database is free for `paygress wallet`.
    pub fn stop(&mut self) -> Result<()> {
        let bash = self.child.id().to_string();
        if let Ok(pid) = run(Command::new("pgrep").args(["-P", &bash, "-x", "paygress"])) {
            for p in pid.lines() {
                let _ = Command::new("kill").args(["-TERM", p.trim()]).status();
            }
        }
        let child = &mut self.child;
        wait_until("provider stop", Duration::from_secs(60), || child.try_wait().ok().flatten())?;
        Ok(())
    }

    /// Prometheus text of /metrics.
    pub fn metrics(&self) -> Result<String> {
        run(Command::new("curl").args(["-sf", &format!("http://{}/metrics", self.http)]))
    }

    /// `paygress wallet <args>` on this provider's state dir and key (stop the provider first).
    pub fn wallet_cli(&self, args: &[&str]) -> Result<String> {
        run(Command::new(paygress_bin())
            .args(["wallet"])
            .args(args)
            .env_clear()
            .env("PATH", env("PATH"))
            .env("HOME", env("HOME"))
            .env("RUST_LOG", "warn")
            .env("NOSTR_RELAYS", env("NOSTR_RELAYS"))
            .env("NOSTR_PRIVATE_KEY", &self.nsec_hex)
            .env("WHITELISTED_MINTS", env("CASHU_MINT_URL"))
            .env("PAYGRESS_STATE_DIR", &self.state_dir))
    }

    /// Sum of `paygress wallet balance` over all mints, in sats.
    pub fn wallet_balance(&self) -> Result<u64> {
        let out = self.wallet_cli(&["balance"])?;
        let mut total = 0;
        for line in out.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "sat") {
                total += words.get(i.wrapping_sub(1)).and_then(|n| n.parse::<u64>().ok()).ok_or(anyhow!("{out}"))?;
            }
        }
        Ok(total)
    }
}

/// Objects of one lease by kind (`pods`, `services`, `secrets`), by its lease-id label.
pub fn lease_objects(kind: &str, lease_id: &str) -> Result<Vec<String>> {
    let out = kubectl(&[
        "-n",
        "user-workloads",
        "get",
        kind,
        "-l",
        &format!("paygress.io/lease-id={lease_id}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Every pod, Service and Secret of a lease (empty when it is fully gone).
pub fn all_lease_objects(lease_id: &str) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for kind in ["pods", "services", "secrets"] {
        all.extend(lease_objects(kind, lease_id)?.into_iter().map(|n| format!("{kind}/{n}")));
    }
    Ok(all)
}

/// Delete what a test's lease left behind (as admin), so long leases do not outlive the test.
pub fn delete_lease(lease_id: &str) {
    for kind in ["pods", "services", "secrets"] {
        let _ = kubectl(&[
            "-n",
            "user-workloads",
            "delete",
            kind,
            "-l",
            &format!("paygress.io/lease-id={lease_id}"),
            "--wait=false",
        ]);
    }
}

/// The lease id a provider (by its secret key, hex) derives from a request id.
pub fn lease_id_for(nsec_hex: &str, request_id: &str) -> String {
    let secret: [u8; 32] = hex::decode(nsec_hex).ok().and_then(|b| b.try_into().ok()).expect("64-hex provider key");
    paygress::lease::service::lease_id_for(&paygress::lease::service::lease_id_key(&secret), request_id)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill9();
        // The pool's Secrets outlive a provider by design (a restart publishes them again); one whose
        // state dir goes away now will never restart, so they go too.
        if self._state_tmp.is_some() {
            self.delete_pool_secrets();
        }
    }
}

/// A request body in the seed's JSON.
pub fn request_json(token: &str, user: &str) -> String {
    serde_json::json!({"cashu_token": token, "ssh_username": user}).to_string()
}

/// `ssh` (OpenSSH) into `user@host:port` with a password, running `cmd`.
pub fn ssh_password(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    cmd: &str,
    known_hosts: Option<&Path>,
) -> Result<String> {
    password_ssh(None, host, port, user, password, cmd, known_hosts, 20)
}

/// OpenSSH with a password through sshpass, optionally under a wrapper (torsocks); a pinned known_hosts
/// turns strict host-key checking on.
#[allow(clippy::too_many_arguments)]
fn password_ssh(
    wrapper: Option<&str>,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    cmd: &str,
    known_hosts: Option<&Path>,
    connect_timeout: u32,
) -> Result<String> {
    let kh = known_hosts.map(|p| p.display().to_string()).unwrap_or_else(|| "/dev/null".into());
    let strict = if known_hosts.is_some() { "yes" } else { "no" };
    let mut c = Command::new("sshpass");
    c.args(["-p", password]);
    if let Some(w) = wrapper {
        c.arg(w);
    }
    run(c.args([
        "ssh",
        "-p",
        &port.to_string(),
        "-o",
        &format!("StrictHostKeyChecking={strict}"),
        "-o",
        &format!("UserKnownHostsFile={kh}"),
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        &format!("ConnectTimeout={connect_timeout}"),
        &format!("{user}@{host}"),
        cmd,
    ]))
}

/// Fingerprint of the host key at host:port as OpenSSH computes it (ssh-keyscan | ssh-keygen -lf -).
pub fn openssh_fingerprint(host: &str, port: u16) -> Result<String> {
    let scan = run(Command::new("ssh-keyscan").args(["-p", &port.to_string(), "-t", "ed25519", host]))?;
    let out = run_with_stdin(Command::new("ssh-keygen").args(["-lf", "-"]), &scan)?;
    out.split_whitespace().nth(1).map(String::from).ok_or_else(|| anyhow!("no fingerprint in {out}"))
}

// ---------------------------------------------------------------- HTTP, with `curl`

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Raw header block (lowercase names are not guaranteed; search case-insensitively).
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One request with curl: `headers` as (name, value), the body from a file (any size).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<HttpResponse> {
    let dir = tempfile::tempdir()?;
    let (hfile, bfile, infile) = (dir.path().join("h"), dir.path().join("b"), dir.path().join("in"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "300", "-X", method, "-D"]).arg(&hfile).arg("-o").arg(&bfile);
    cmd.args(["-w", "%{http_code}"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(b) = body {
        std::fs::write(&infile, b)?;
        cmd.arg("--data-binary").arg(format!("@{}", infile.display()));
    }
    cmd.arg(url);
    let code = run(&mut cmd)?;
    Ok(HttpResponse {
        status: code.trim().parse().with_context(|| format!("curl printed {code:?}"))?,
        headers: std::fs::read_to_string(&hfile).unwrap_or_default(),
        body: std::fs::read_to_string(&bfile).unwrap_or_default(),
    })
}

// ---------------------------------------------------------------- Tor, with the stack's C tor client

/// Directory ports of the private network's authorities, from the stack's network.json (written next to
/// the arti fragment by scripts/stack.d/tor.sh).
fn tor_authority_dirports() -> Result<Vec<u16>> {
    let frag = PathBuf::from(env("PAYGRESS_TOR_NETWORK_CONFIG"));
    let json = frag.with_file_name("network.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).with_context(|| json.display().to_string())?)?;
    let ports: Vec<u16> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["role"] == "auth")
        .filter_map(|n| n["dir_port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    if ports.is_empty() {
        bail!("no authorities in {}", json.display());
    }
    Ok(ports)
}

/// Whether an authority serves a consensus with both shared random values (tor.sh `tor_srv_ready`).
/// Until then arti onion services stay Bootstrapping, so launches time out.
/// Where the stack's peers listen (its bridge address; env.sh says).
pub fn stack_addr() -> String {
    env("PAYGRESS_STACK_ADDR")
}

pub fn tor_srv_ready() -> Result<bool> {
    let host = stack_addr();
    for port in tor_authority_dirports()? {
        let url = format!("http://{host}:{port}/tor/status-vote/current/consensus-microdesc");
        let Ok(out) = Command::new("curl").args(["-s", "--max-time", "3", &url]).stdin(Stdio::null()).output() else {
            continue;
        };
        let c = String::from_utf8_lossy(&out.stdout);
        let has = |k: &str| c.lines().any(|l| l.starts_with(k));
        if has("shared-rand-current-value") && has("shared-rand-previous-value") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Wait until the private Tor network can host arti onion services (up to 17 min on a fresh network).
pub fn wait_tor_can_host_onions() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let started = Instant::now();
        wait_until("shared random values in the Tor consensus", Duration::from_secs(1020), || {
            tor_srv_ready().ok().filter(|r| *r)
        })
        .expect("tor network");
        if started.elapsed() > Duration::from_secs(1) {
            println!("waited {:?} for the Tor network's shared random values", started.elapsed());
        }
    });
}

/// `torsocks ssh` (OpenSSH through the stack's C tor client) into `user@onion:port` with a password.
/// With `known_hosts` the host key must match it (StrictHostKeyChecking=yes).
pub fn tor_ssh_password(
    onion: &str,
    port: u16,
    user: &str,
    password: &str,
    cmd: &str,
    known_hosts: Option<&Path>,
) -> Result<String> {
    env("TORSOCKS_CONF_FILE");
    password_ssh(Some("torsocks"), onion, port, user, password, cmd, known_hosts, 60)
}

/// An object's JSON, or None when it does not exist.
pub fn kubectl_json(kind: &str, name: &str) -> Result<Option<Value>> {
    let out = Command::new("kubectl")
        .args(["-n", "user-workloads", "get", kind, name, "-o", "json", "--ignore-not-found"])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("kubectl get {kind} {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(&s)?))
}

/// Seconds since midnight UTC of a provider log line's RFC 3339 timestamp (`2026-11-24T04:03:00.123456Z …`).
pub fn log_line_secs(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let t = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds between the provider's "token redeemed" and "reply sent" for one request (from its log).
pub fn redeem_to_reply_secs(log: &str, request_id: &str) -> Option<f64> {
    let log = strip_ansi(log);
    let tag = format!("request_id={request_id}");
    let at = |msg: &str| log.lines().filter(|l| l.contains(&tag) && l.contains(msg)).find_map(log_line_secs);
    let (a, b) = (at("token redeemed")?, at("reply sent")?);
    Some(if b >= a { b - a } else { b + 86400.0 - a })
}

/// The log without terminal colour codes (tracing colours field names even into a file).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (0x40..=0x7e)
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SOCKS5 CONNECT (domain-name form) to `host:port` through the stack's C tor client; returns the
/// reply code (0 = connected, 4 = host unreachable, 5 = refused by the far end, 6 = TTL expired …).
pub fn socks5_connect_code(host: &str, port: u16, timeout: Duration) -> Result<u8> {
    socks5_open(host, port, None, timeout).map(|(code, _)| code)
}

/// As [`socks5_connect_code`], keeping the stream. With `isolation`, a SOCKS username: C tor puts streams of
/// different usernames on different circuits (IsolateSOCKSAuth).
pub fn socks5_open(
    host: &str,
    port: u16,
    isolation: Option<&str>,
    timeout: Duration,
) -> Result<(u8, std::net::TcpStream)> {
    use std::io::Read;
    let socks = format!("{}:{}", env("TORSOCKS_TOR_ADDRESS"), env("TORSOCKS_TOR_PORT"));
    let mut s = std::net::TcpStream::connect(&socks).with_context(|| format!("SocksPort {socks}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&[5, 1, if isolation.is_some() { 2 } else { 0 }])?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf)?;
    match (isolation, buf) {
        (None, [5, 0]) => {}
        (Some(user), [5, 2]) => {
            let mut auth = vec![1, u8::try_from(user.len())?];
            auth.extend_from_slice(user.as_bytes());
            auth.extend_from_slice(&[1, b'x']);
            s.write_all(&auth)?;
            s.read_exact(&mut buf)?;
            ensure!(buf[1] == 0, "SOCKS username refused");
        }
        _ => bail!("SOCKS method negotiation refused: {buf:?}"),
    }
    let mut req = vec![5, 1, 0, 3, u8::try_from(host.len())?];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).context("SOCKS reply")?;
    Ok((head[1], s))
}
