//! Black-box test of the k8s and ssh adapters against the stack's real kube-apiserver and node agent.
//!
//! The manifest k8s/sidecar-service.yaml is applied as admin; the adapter is then driven with a token of the
//! `paygress` ServiceAccount, so it has exactly the manifest's RBAC. Run through scripts/test (needs the
//! stack env: KUBECONFIG and kubectl on PATH).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use paygress::k8s::{self, KubeCluster};
use paygress::lease::ports::{
    AppliedTopUp, ClusterPort, ExpiryUpdate, FailureKind, OrphanObject, PodPlan, SshProbePort,
};
use paygress::protocol::{ErrorCode, Tier};
use paygress::ssh::RusshProbe;

const NS: &str = "user-workloads";
const SA_NS: &str = "ingress-system";
const SSH_PORT: u16 = 2222;
/// The image of the stack's lease pods (a real container on the node: a made-up name would never pull).
const SSH_IMAGE: &str = "lscr.io/linuxserver/openssh-server:latest";
/// Generous bounds on waits for the cluster; never asserted as durations.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// This test process's provider label (each test file a provider of its own).
const PROVIDER: &str = "7e57c1a55";

fn admin_kubeconfig() -> PathBuf {
    match std::env::var("KUBECONFIG") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!("run through scripts/test (stack env missing: KUBECONFIG)"),
    }
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(admin_kubeconfig()).args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().context("kubectl not found: run through scripts/test (stack env missing: PATH with kubectl)")?;
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("k8s/sidecar-service.yaml")
}

/// Apply the manifest once per test process (tests run in parallel; concurrent applies can conflict).
/// kubectl creates the Namespaces first, as they come first in the file.
fn apply_manifest() -> Result<()> {
    static APPLIED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = APPLIED.lock().map_err(|_| anyhow!("poisoned"))?;
    if !*done {
        // All but the Deployment: the provider is this test's code (the manifest's would take the node's CPU).
        let text = std::fs::read_to_string(manifest())?;
        let docs: Vec<&str> = text.split("\n---\n").filter(|d| !d.contains("\nkind: Deployment\n")).collect();
        kubectl(&["apply", "-f", "-"], Some(&docs.join("\n---\n")))?;
        *done = true;
    }
    Ok(())
}

/// A kube Config that authenticates as the paygress ServiceAccount: token from the API, server and CA from
/// the admin kubeconfig.
async fn sa_config() -> Result<kube::Config> {
    let token = kubectl(&["-n", SA_NS, "create", "token", "paygress", "--duration=1h"], None)?;
    let admin = Kubeconfig::read_from(admin_kubeconfig())?;
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("admin kubeconfig has no cluster"))?;
    let server = cluster.server.ok_or_else(|| anyhow!("no server"))?;
    let ca = cluster.certificate_authority_data.ok_or_else(|| anyhow!("no CA data"))?;
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: paygress\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: paygress\n\
         current-context: c\n",
        token.trim()
    );
    let kc = Kubeconfig::from_yaml(&yaml)?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}

async fn sa_cluster() -> Result<KubeCluster> {
    Ok(KubeCluster::from_config(sa_config().await?, NS, SSH_PORT, PROVIDER)?.with_orphan_grace(Duration::ZERO))
}

fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn plan(lease_id: &str, password: &str, image: &str) -> PodPlan {
    PodPlan {
        lease_id: lease_id.into(),
        pod_name: k8s::pod_name(lease_id),
        service_name: k8s::service_name(lease_id),
        namespace: NS.into(),
        image: image.into(),
        image_pull_policy: "IfNotPresent".into(),
        ssh_username: "tester".into(),
        ssh_password: Some(password.into()),
        ssh_public_key: None,
        tier: Tier::new("basic", "100m", "64Mi", 100),
        ssh_port: SSH_PORT,
        expires_at: now() + 3600,
        requester: "ab".repeat(32),
        request_id: format!("req-{lease_id}"),
        provider: PROVIDER.into(),
        mint_url: "http://127.0.0.1:23338".into(),
        rate_sats_per_hour: 100,
        reply_via: paygress::lease::ports::ReplyVia::Nip44,
    }
}

/// Removes whatever a test left behind, even when it fails half-way.
struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.0 {
            let sel = format!("paygress.io/lease-id={id}");
            let _ = kubectl(&["-n", NS, "delete", "pod,service,secret", "-l", &sel, "--wait=false"], None);
        }
    }
}

/// Every object of a lease as admin sees it: `kind/name` lines.
fn objects_of(lease_id: &str) -> Result<Vec<String>> {
    let sel = format!("paygress.io/lease-id={lease_id}");
    let out = kubectl(&["-n", NS, "get", "pod,service,secret", "-l", &sel, "-o", "name"], None)?;
    Ok(out.lines().map(String::from).filter(|l| !l.is_empty()).collect())
}

async fn wait_gone(lease_id: &str) -> Result<()> {
    let mut left = Vec::new();
    for _ in 0..120 {
        left = objects_of(lease_id)?;
        if left.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("objects of {lease_id} still there: {left:?}")
}

/// `ssh-keyscan` + `ssh-keygen -lf -`: OpenSSH's own view of the host key fingerprints at the endpoint.
fn openssh_fingerprints(ep: SocketAddr) -> Result<String> {
    let scan = Command::new("ssh-keyscan")
        .args(["-T", "10", "-p", &ep.port().to_string(), &ep.ip().to_string()])
        .stderr(Stdio::null())
        .output()
        .context("ssh-keyscan")?;
    let mut keygen =
        Command::new("ssh-keygen").args(["-lf", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    {
        use std::io::Write;
        keygen.stdin.take().context("stdin")?.write_all(&scan.stdout)?;
    }
    Ok(String::from_utf8(keygen.wait_with_output()?.stdout)?)
}

#[tokio::test]
async fn lease_lifecycle_with_the_manifest_rbac() -> Result<()> {
    apply_manifest()?;
    let cluster = sa_cluster().await?;
    cluster.ping().await.context("ping as the ServiceAccount")?;

    let id = unique_id("kt");
    let orphan_id = unique_id("ko");
    let _cleanup = Cleanup(vec![id.clone(), orphan_id.clone()]);
    let password = format!("pw-{}", unique_id("x"));
    let p = plan(&id, &password, SSH_IMAGE);

    // Idempotent: a resumed saga creates again.
    cluster.ensure_lease_objects(&p).await.context("ensure #1")?;
    cluster.ensure_lease_objects(&p).await.context("ensure #2")?;
    let mut objs = objects_of(&id)?;
    objs.sort();
    let expected =
        vec![format!("pod/ssh-pod-{id}"), format!("secret/ssh-pod-{id}-auth"), format!("service/ssh-pod-{id}-ssh")];
    ensure!(objs == expected, "objects {objs:?}, expected {expected:?}");

    // What the API server stored: labels everywhere, annotations on the pod, the password nowhere but the
    // Secret.
    let pod_json = kubectl(&["-n", NS, "get", "pod", &k8s::pod_name(&id), "-o", "json"], None)?;
    ensure!(!pod_json.contains(&password), "password visible in the pod object");
    let pod: Pod = serde_json::from_str(&pod_json)?;
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    ensure!(ann.get("paygress.io/expires-at") == Some(&p.expires_at.to_string()));
    ensure!(ann.get("paygress.io/tier").map(String::as_str) == Some("basic"));
    for kind in ["pod", "service", "secret"] {
        let sel = format!(
            "app.kubernetes.io/managed-by=paygress,app.kubernetes.io/name=paygress-ssh-pod,paygress.io/lease-id={id}"
        );
        let n = kubectl(&["-n", NS, "get", kind, "-l", &sel, "-o", "name"], None)?;
        ensure!(n.lines().count() == 1, "{kind} not labelled: {n:?}");
    }
    let svc_json = kubectl(&["-n", NS, "get", "service", &k8s::service_name(&id), "-o", "json"], None)?;
    ensure!(!svc_json.contains(&password));
    let secret: Secret =
        serde_json::from_str(&kubectl(&["-n", NS, "get", "secret", &k8s::auth_secret_name(&id), "-o", "json"], None)?)?;
    let stored = secret.data.and_then(|d| d.get("password").cloned()).context("password key")?;
    ensure!(stored.0 == password.as_bytes());

    // Running: the endpoint as the cluster reports it, and SSH really answers there.
    let ep = cluster.wait_running(&id, RUN_TIMEOUT).await.context("wait_running")?;
    ensure!(ep.port() == SSH_PORT, "endpoint {ep}");
    let probe = RusshProbe::new();
    // Running is not listening: the image's init starts sshd a moment later (the provider retries the same way).
    let mut host_key = probe.probe(ep).await;
    for _ in 0..60 {
        if host_key.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        host_key = probe.probe(ep).await;
    }
    let host_key = host_key.context("probe")?;
    ensure!(host_key.fingerprint.starts_with("SHA256:"), "{host_key:?}");
    ensure!(probe.probe(ep).await? == host_key, "host key changed between probes");
    let openssh = openssh_fingerprints(ep)?;
    ensure!(
        openssh.contains(&host_key.fingerprint),
        "OpenSSH sees {openssh:?}, the probe reported {}",
        host_key.fingerprint
    );

    // The credentials the pod got from the Secret let the user in (OpenSSH client, password via env).
    let login = Command::new("sshpass")
        .env("SSHPASS", &password)
        .args(["-e", "ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "PubkeyAuthentication=no", "-o", "ConnectTimeout=10", "-p", &ep.port().to_string()])
        .arg(format!("tester@{}", ep.ip()))
        .arg("echo logged-in")
        .output()
        .context("sshpass/ssh")?;
    ensure!(
        String::from_utf8_lossy(&login.stdout).contains("logged-in"),
        "password login failed: {}",
        String::from_utf8_lossy(&login.stderr)
    );

    // Top-up moves the annotation and records itself, conditional on the resourceVersion read;
    // list_leases reads both back.
    let before = cluster.list_leases().await?.into_iter().find(|l| l.lease_id == id).context("lease not listed")?;
    ensure!(before.topups.is_empty() && before.version.is_some(), "{before:?}");
    let new_expiry = p.expires_at + 7200;
    let record = AppliedTopUp { id: "0123456789abcdef".into(), added_secs: 7200, expires_at: new_expiry };
    let update = ExpiryUpdate { expires_at: new_expiry, topups: vec![record.clone()], if_version: before.version };
    cluster.set_expiry(&id, &update).await.context("set_expiry")?;
    // The same write again carries a stale resourceVersion: the API server refuses it (409, retryable).
    let stale = cluster.set_expiry(&id, &update).await.unwrap_err();
    ensure!(stale.kind == FailureKind::Transient && stale.message.contains("409"), "{stale:?}");
    let leases = cluster.list_leases().await?;
    let l = leases.iter().find(|l| l.lease_id == id).context("lease not listed")?;
    ensure!(l.expires_at == Some(new_expiry), "{l:?}");
    ensure!(l.topups == vec![record], "{l:?}");
    ensure!(l.ssh_endpoint == Some(ep), "{l:?}");
    ensure!(l.requester.as_deref() == Some(p.requester.as_str()) && l.tier.as_deref() == Some("basic"));
    ensure!(!l.terminating);
    let nothing = ExpiryUpdate { expires_at: 1, topups: vec![], if_version: None };
    let missing = cluster.set_expiry(&unique_id("none"), &nothing).await.unwrap_err();
    ensure!(missing.kind == FailureKind::Rejected(ErrorCode::LeaseNotFound), "{missing:?}");

    // Onion key: stored once, read back, never silently replaced.
    let key: Vec<u8> = (0u8..64).collect();
    ensure!(cluster.load_onion_key(&id).await?.is_none());
    cluster.store_onion_key(&id, &key).await?;
    cluster.store_onion_key(&id, &key).await.context("same key again")?;
    ensure!(cluster.load_onion_key(&id).await?.as_deref() == Some(&key[..]));
    let other: Vec<u8> = (1u8..65).collect();
    ensure!(cluster.store_onion_key(&id, &other).await.is_err(), "a different key replaced the stored one");

    // An orphan: a labelled Service whose lease has no pod (made by admin, as a crash would leave it).
    let orphan_svc = k8s::service_name(&orphan_id);
    let svc_yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {orphan_svc}\n  namespace: {NS}\n  labels:\n    \
         app.kubernetes.io/managed-by: paygress\n    app.kubernetes.io/name: paygress-ssh-pod\n    \
         paygress.io/provider: {PROVIDER}\n    paygress.io/lease-id: {orphan_id}\nspec:\n  ports:\n  - port: 2222\n  selector:\n    paygress.io/lease-id: {orphan_id}\n"
    );
    kubectl(&["apply", "-f", "-"], Some(&svc_yaml))?;
    let orphans = cluster.list_orphans().await?;
    let o = orphans
        .iter()
        .find(|o| o.lease_id == orphan_id)
        .with_context(|| format!("orphan not found in {orphans:?}"))?
        .clone();
    ensure!(o.kind == "Service" && o.name == orphan_svc, "{o:?}");
    ensure!(!orphans.iter().any(|o| o.lease_id == id), "live lease reported as orphan: {orphans:?}");
    cluster.delete_orphan(&o).await?;
    ensure!(kubectl(&["-n", NS, "get", "service", &orphan_svc], None).is_err(), "orphan still there");
    let not_ours = OrphanObject { kind: "Service".into(), name: "kubernetes".into(), lease_id: orphan_id.clone() };
    ensure!(cluster.delete_orphan(&not_ours).await.unwrap_err().kind == FailureKind::Permanent);

    // The end: everything labelled with the lease goes; twice is fine.
    cluster.delete_lease(&id, None).await.context("delete_lease")?;
    cluster.delete_lease(&id, None).await.context("delete_lease again")?;
    wait_gone(&id).await?;
    ensure!(!cluster.list_leases().await?.iter().any(|l| l.lease_id == id));
    let e = cluster.wait_running(&id, Duration::from_secs(10)).await.unwrap_err();
    ensure!(!e.is_transient(), "waiting on a deleted lease must fail for good: {e:?}");
    Ok(())
}

#[tokio::test]
async fn refused_pod_is_a_provisioning_failure() -> Result<()> {
    apply_manifest()?;
    let cluster = sa_cluster().await?;
    let id = unique_id("kr");
    let _cleanup = Cleanup(vec![id.clone()]);
    // The API server's validation refuses an image name with surrounding whitespace.
    let e = cluster
        .ensure_lease_objects(&plan(&id, "pw-refused", " lscr.io/linuxserver/openssh-server:latest"))
        .await
        .unwrap_err();
    ensure!(e.kind == FailureKind::Rejected(ErrorCode::ProvisioningFailed), "{e:?}");
    ensure!(e.message.contains(&k8s::pod_name(&id)), "no context in {e}");
    ensure!(!e.message.contains("pw-refused"));
    cluster.delete_lease(&id, None).await?;
    wait_gone(&id).await?;

    // A stale auth Secret of the same request with another password and no pod (an attempt that failed
    // before its pod) is replaced, so the password the user is told is the one the pod gets.
    let id2 = unique_id("ks");
    let _cleanup2 = Cleanup(vec![id2.clone()]);
    let secret_name = k8s::auth_secret_name(&id2);
    let stale = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret_name}\n  namespace: {NS}\n  labels:\n    \
         app.kubernetes.io/managed-by: paygress\n    app.kubernetes.io/name: paygress-ssh-pod\n    \
         paygress.io/provider: {PROVIDER}\n    paygress.io/lease-id: {id2}\n  annotations:\n    \
         paygress.io/request: req-{id2}\nstringData:\n  password: stale-pw\n"
    );
    kubectl(&["apply", "-f", "-"], Some(&stale))?;
    let p2 = plan(&id2, "fresh-pw", "lscr.io/linuxserver/openssh-server:latest");
    cluster.ensure_lease_objects(&p2).await.context("ensure over a stale secret")?;
    let secret: Secret =
        serde_json::from_str(&kubectl(&["-n", NS, "get", "secret", &secret_name, "-o", "json"], None)?)?;
    ensure!(secret.data.and_then(|d| d.get("password").cloned()).map(|b| b.0) == Some(b"fresh-pw".to_vec()));
    cluster.delete_lease(&id2, None).await?;
    wait_gone(&id2).await?;

    let bad = cluster.wait_running("Bad,Id", Duration::from_secs(1)).await.unwrap_err();
    ensure!(bad.kind == FailureKind::Rejected(ErrorCode::LeaseNotFound), "{bad:?}");
    Ok(())
}

#[tokio::test]
async fn service_account_is_confined_to_its_role() -> Result<()> {
    apply_manifest()?;
    let client = kube::Client::try_from(sa_config().await?)?;

    // Real calls: secrets of other namespaces are out of reach.
    for ns in [SA_NS, "default", "kube-system"] {
        let err =
            Api::<Secret>::namespaced(client.clone(), ns).list(&ListParams::default().limit(1)).await.unwrap_err();
        match err {
            kube::Error::Api(s) if s.code == 403 => {}
            other => bail!("listing secrets in {ns}: expected 403, got {other:?}"),
        }
    }
    let err = Api::<Pod>::all(client.clone()).list(&ListParams::default().limit(1)).await.unwrap_err();
    ensure!(matches!(&err, kube::Error::Api(s) if s.code == 403), "cluster-wide pod list: {err:?}");
    // The adapter pointed at another namespace is refused, and says so for good.
    let elsewhere = KubeCluster::from_config(sa_config().await?, "default", SSH_PORT, PROVIDER)?;
    let e = elsewhere.ping().await.unwrap_err();
    ensure!(e.kind == FailureKind::Permanent, "{e:?}");

    // The whole grant, as the authorizer sees it.
    let sa = format!("system:serviceaccount:{SA_NS}:paygress");
    // `pods/exec` on the can-i command line would mean "the pod named exec"; subresources go in their own flag.
    let can = |verb: &str, res: &str, ns: &str| -> Result<bool> {
        let (resource, sub) = res.split_once('/').map_or((res, None), |(r, s)| (r, Some(s)));
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(admin_kubeconfig()).args(["auth", "can-i", verb, resource, "-n", ns, "--as", &sa]);
        if let Some(sub) = sub {
            cmd.arg(format!("--subresource={sub}"));
        }
        let out = cmd.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    for (verbs, res) in [
        (&["get", "list", "watch", "create", "delete", "patch"][..], "pods"),
        (&["get", "list", "create", "delete"][..], "services"),
        (&["get", "list", "create", "delete"][..], "secrets"),
    ] {
        for v in verbs {
            ensure!(can(v, res, NS)?, "{sa} cannot {v} {res}");
        }
    }
    for (v, res, ns) in [
        ("create", "pods/exec", NS),
        ("get", "pods/log", NS),
        ("update", "pods", NS),
        ("patch", "pods/status", NS),
        ("update", "secrets", NS),
        ("patch", "secrets", NS),
        ("watch", "secrets", NS),
        ("deletecollection", "pods", NS),
        ("patch", "services", NS),
        ("create", "configmaps", NS),
        ("list", "secrets", SA_NS),
        ("get", "secrets", "default"),
        ("create", "pods", "default"),
        ("delete", "namespaces", NS),
        ("create", "roles", NS),
    ] {
        ensure!(!can(v, res, ns)?, "{sa} may {v} {res} in {ns}: more than the adapter needs");
    }
    Ok(())
}

/// Lease hijack: another request that lands on a live lease's id (by grinding an unkeyed id, say) is never
/// handed its objects, and its failure cleanup deletes none of them.
#[tokio::test]
async fn a_saga_never_adopts_or_deletes_another_requests_lease() -> Result<()> {
    apply_manifest()?;
    let cluster = sa_cluster().await?;
    let id = unique_id("hj");
    let _cleanup = Cleanup(vec![id.clone()]);
    let victim = plan(&id, "victim-password", "lscr.io/linuxserver/openssh-server:latest");
    cluster.ensure_lease_objects(&victim).await.context("victim's lease")?;
    let attacker = PodPlan {
        request_id: "req-attacker".into(),
        requester: "cd".repeat(32),
        ssh_password: Some("attacker-password".into()),
        ..victim.clone()
    };
    let e = cluster.ensure_lease_objects(&attacker).await.expect_err("the attacker's saga adopted the lease");
    ensure!(e.kind == FailureKind::Permanent, "{e:?}");
    // Its cleanup removes only what it made: nothing.
    cluster.delete_created(&id, "req-attacker").await?;
    let lease = cluster.get_lease(&id).await?.context("the victim's lease is gone")?;
    ensure!(lease.requester.as_deref() == Some(victim.requester.as_str()));
    ensure!(lease.request_id.as_deref() == Some(victim.request_id.as_str()));
    let objects =
        kubectl(&["-n", NS, "get", "service,secret", "-l", &format!("paygress.io/lease-id={id}"), "-o", "name"], None)?;
    ensure!(objects.lines().count() == 2, "service and auth secret must survive: {objects}");
    // The owner's resumed saga still adopts its own objects, and its cleanup removes them.
    cluster.ensure_lease_objects(&victim).await.context("resume of the owner's saga")?;
    cluster.delete_created(&id, &victim.request_id).await?;
    wait_gone(&id).await
}

/// Two providers in one namespace: each sees, restores and ends only its own leases.
#[tokio::test]
async fn a_provider_acts_only_on_its_own_leases() -> Result<()> {
    apply_manifest()?;
    let ours = sa_cluster().await?;
    let theirs = KubeCluster::from_config(sa_config().await?, NS, SSH_PORT, "0the7provider")?;
    let id = unique_id("pv");
    let _cleanup = Cleanup(vec![id.clone()]);
    theirs.ensure_lease_objects(&PodPlan { provider: "0the7provider".into(), ..plan(&id, "pw", SSH_IMAGE) }).await?;
    ensure!(!ours.list_leases().await?.iter().any(|l| l.lease_id == id), "another provider's lease listed");
    ensure!(ours.get_lease(&id).await?.is_none());
    ensure!(ours.load_onion_key(&id).await?.is_none());
    ours.delete_lease(&id, None).await?;
    ensure!(!ours.list_orphans().await?.iter().any(|o| o.lease_id == id));
    ensure!(theirs.get_lease(&id).await?.is_some(), "our delete reached another provider's lease");
    theirs.delete_lease(&id, None).await?;
    wait_gone(&id).await
}

/// The reconciler decides to end a lease from a listing; a top-up written after that listing must win.
#[tokio::test]
async fn ending_a_lease_is_conditional_on_the_version_that_was_judged() -> Result<()> {
    apply_manifest()?;
    let cluster = sa_cluster().await?;
    let id = unique_id("rv");
    let _cleanup = Cleanup(vec![id.clone()]);
    cluster.ensure_lease_objects(&plan(&id, "pw", SSH_IMAGE)).await?;
    // The kubelet is still writing the new pod's status: judge it once it runs, and retry the top-up
    // on 409 as the saga does.
    cluster.wait_running(&id, RUN_TIMEOUT).await?;
    let mut judged = cluster.get_lease(&id).await?.context("lease")?;
    for attempt in 0.. {
        judged = cluster.get_lease(&id).await?.context("lease")?;
        let update = ExpiryUpdate { expires_at: now() + 7200, topups: vec![], if_version: judged.version.clone() };
        match cluster.set_expiry(&id, &update).await {
            Ok(()) => break,
            Err(e) if e.kind == FailureKind::Transient && attempt < 10 => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stale = cluster.delete_lease(&id, judged.version.as_deref()).await;
    ensure!(stale.as_ref().is_err_and(|e| e.kind == FailureKind::Transient), "{stale:?}");
    ensure!(cluster.get_lease(&id).await?.is_some_and(|l| !l.terminating), "the topped-up lease was deleted");
    let fresh = cluster.get_lease(&id).await?.context("lease")?;
    cluster.delete_lease(&id, fresh.version.as_deref()).await?;
    wait_gone(&id).await
}

/// The onion pool's keys through the manifest's RBAC: a slot's key is stored before use, listed while
/// waiting, and taken by exactly one of two takers racing for it (the API server's delete preconditions).
#[tokio::test]
async fn a_pool_key_is_taken_once() -> Result<()> {
    apply_manifest()?;
    let provider = format!("pool{:x}", std::process::id());
    let a = KubeCluster::from_config(sa_config().await?, NS, SSH_PORT, &provider)?;
    let b = KubeCluster::from_config(sa_config().await?, NS, SSH_PORT, &provider)?;
    let slot = format!("{:032x}", u128::from(std::process::id()) << 64 | u128::from(now()));
    let key = vec![5u8; 64];
    a.store_pool_key(&slot, &key).await?;
    a.store_pool_key(&slot, &key).await.context("a retried store is idempotent")?;
    ensure!(a.list_pool_keys().await?.iter().any(|k| k.slot == slot && k.key == key));
    // Another provider's pool is not ours to list or take.
    let stranger = KubeCluster::from_config(sa_config().await?, NS, SSH_PORT, "0the7provider")?;
    ensure!(stranger.list_pool_keys().await?.iter().all(|k| k.slot != slot));
    ensure!(stranger.take_pool_key(&slot).await?.is_none());

    let (x, y) = tokio::join!(a.take_pool_key(&slot), b.take_pool_key(&slot));
    let got: Vec<Vec<u8>> = [x?, y?].into_iter().flatten().collect();
    ensure!(got == vec![key], "exactly one taker gets the key: {} did", got.len());
    ensure!(!a.list_pool_keys().await?.iter().any(|k| k.slot == slot));
    ensure!(a.take_pool_key(&slot).await?.is_none());
    Ok(())
}
