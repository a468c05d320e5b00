//! What only a real node shows (every lease pod of the black-box tests is a real container of the stack's
//! linuxserver/openssh-server stand-in; these tests look at the node itself): containers in containerd, restarts
//! in place, quota, gVisor, NetworkPolicy enforcement. The provider runs as a host process with the manifest's
//! ServiceAccount. The provider as the manifest's Deployment in its pod, built from the Dockerfile, is
//! scripts/smoke/deploy.sh.
//!
//! Needs the stack's env (`KUBECONFIG`, `CONTAINERD_ADDRESS`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use serde_json::Value;

const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
const NS: &str = "user-workloads";

/// Tests here share the node's user-workloads namespace (and one of them puts a quota on it): one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn admin() -> PathBuf {
    PathBuf::from(env("KUBECONFIG"))
}

fn pod_json(name: &str) -> Result<Option<Value>> {
    let out = kubectl_at(&admin(), &["-n", NS, "get", "pod", name, "-o", "json", "--ignore-not-found"])?;
    Ok(if out.trim().is_empty() { None } else { Some(serde_json::from_str(&out)?) })
}

/// The container ids containerd runs, in Kubernetes' namespace.
fn containers() -> Result<String> {
    run(Command::new("ctr").args(["-a", &env("CONTAINERD_ADDRESS"), "-n", "k8s.io", "containers", "ls", "-q"]))
}

#[test]
fn a_lease_is_a_real_container_that_restarts_in_place_and_goes_at_expiry() -> Result<()> {
    let _one = one_at_a_time();
    let kubeconfig = provider_kubeconfig_for(&admin(), "real-node")?;
    let extra = [
        ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
        ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
        ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
        // The node has 2 CPUs: a small tier, so tests never wait for room.
        ("PAYGRESS_TIERS", "basic:100m:128Mi"),
    ];
    let p = Provider::start_ready(&extra, Some(kubeconfig))?;
    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(200)?;
    let user = User::new()?;
    // 60 s of lease at 1 sat/s.
    let token = w.send(60)?;
    let started = std::time::Instant::now();
    let id = user.publish_nip44(1000, &request_json(&token, "realuser"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let replied = started.elapsed();
    assert_eq!(reply["status"], "ok", "{reply}");
    let access = &reply["access"];
    let pod_name = access["pod_name"].as_str().context("pod name")?.to_string();
    let password = access["ssh_password"].as_str().context("password")?.to_string();

    // A real container on the bridge, running the image's init and sshd as the user, with bash.
    let pod = pod_json(&pod_name)?.context("the lease's pod")?;
    let ip = pod["status"]["podIP"].as_str().context("pod IP")?.to_string();
    assert!(ip.starts_with("198.18."), "pod IP {ip} is not on the stack's bridge");
    let cid = pod["status"]["containerStatuses"][0]["containerID"].as_str().context("container id")?.to_string();
    let cid = cid.trim_start_matches("containerd://").to_string();
    assert!(containers()?.lines().any(|c| c == cid), "containerd does not run {cid}");
    let who = ssh_password(&ip, 2222, "realuser", &password, "id -un; echo $SHELL", None)?;
    // Printed for docs/benchmarks.md, never asserted: container start included (the image is on the node).
    println!("real node: request → reply {replied:?}, → first SSH login {:?}", started.elapsed());
    assert_eq!(who.split_whitespace().collect::<Vec<_>>(), ["realuser", "/bin/bash"], "{who}");
    let logs = kubectl_at(&admin(), &["-n", NS, "logs", &pod_name])?;
    assert!(!logs.contains(&password), "the password reached the container's log");
    // The lease, seen from inside: its expiry where a shell (or a login banner) reads it.
    let inside = ssh_password(&ip, 2222, "realuser", &password, "cat /etc/paygress/lease/expires-at", None)?;
    assert_eq!(inside.trim(), access["expires_at"].to_string(), "expiry inside the pod");

    // The tenant's container crashes: it restarts in place (same pod, same IP), and the lease goes on.
    run(Command::new("ctr").args([
        "-a",
        &env("CONTAINERD_ADDRESS"),
        "-n",
        "k8s.io",
        "tasks",
        "kill",
        "-s",
        "SIGKILL",
        &cid,
    ]))?;
    let restarted = wait_until("the container to restart in place", Duration::from_secs(60), || {
        let pod = pod_json(&pod_name).ok()??;
        let st = &pod["status"]["containerStatuses"][0];
        (st["restartCount"].as_u64() >= Some(1) && st["ready"] == true).then_some(pod)
    })?;
    assert_eq!(restarted["status"]["podIP"].as_str(), Some(ip.as_str()), "restarted elsewhere");
    let again = wait_until("ssh after the restart", Duration::from_secs(30), || {
        ssh_password(&ip, 2222, "realuser", &password, "echo ok", None).ok()
    })?;
    assert_eq!(again.trim(), "ok");

    // A top-up moves the expiry the tenant reads inside (the kubelet refreshes the downward-API volume).
    let top = w.send(20)?;
    let body = serde_json::json!({ "cashu_token": top, "lease": access["lease_id"] }).to_string();
    let tid = user.publish_nip44(1002, &body, &p.pubkey)?;
    let extended = user.await_reply(&tid, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(extended["status"], "extended", "{extended}");
    let expires_at = extended["expires_at"].as_u64().context("new expiry")?;
    wait_until("the new expiry inside the pod", Duration::from_secs(90), || {
        let now = ssh_password(&ip, 2222, "realuser", &password, "cat /etc/paygress/lease/expires-at", None).ok()?;
        (now.trim() == expires_at.to_string()).then_some(())
    })?;

    // At expiry the provider deletes the pod, and the container goes with it.
    let wait = Duration::from_secs(expires_at.saturating_sub(now_secs()) + 60);
    wait_until("the lease's pod to go at expiry", wait, || pod_json(&pod_name).ok().flatten().is_none().then_some(()))?;
    let current = restarted["status"]["containerStatuses"][0]["containerID"].as_str().unwrap_or_default();
    let current = current.trim_start_matches("containerd://").to_string();
    wait_until("containerd to drop the lease's containers", Duration::from_secs(60), || {
        let running = containers().ok()?;
        (!running.lines().any(|c| c == cid || c == current)).then_some(())
    })?;
    Ok(())
}

/// The provider's latest offer on the stack's relay.
fn latest_offer(provider: &str) -> Result<Value> {
    let out = run(Command::new("nak").args(["req", "-k", "38400", "-a", provider, "--limit", "1", &relay()]))?;
    let ev: Value = serde_json::from_str(out.lines().next().context("no offer")?)?;
    Ok(serde_json::from_str(ev["content"].as_str().unwrap_or_default())?)
}

/// With a ResourceQuota on the namespace (the real quota controller fills in its usage), the offer states
/// how many leases of each tier still fit, and a request that would not fit is refused before payment.
#[test]
fn the_offer_shows_the_room_left_and_no_money_is_taken_without_it() -> Result<()> {
    let _one = one_at_a_time();
    let quota = |cpu: &str| {
        format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: paygress-test-room\n  namespace: {NS}\n\
             spec:\n  hard:\n    pods: \"20\"\n    requests.cpu: \"{cpu}\"\n"
        )
    };
    let apply = |yaml: String| -> Result<String> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("quota.yaml");
        std::fs::write(&f, yaml)?;
        kubectl_at(&admin(), &["apply", "-f", f.to_str().unwrap_or_default()])
    };
    struct Drop_;
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = kubectl_at(
                &admin(),
                &["-n", NS, "delete", "resourcequota", "paygress-test-room", "--ignore-not-found"],
            );
        }
    }
    let _cleanup = Drop_;
    apply(quota("1"))?;
    wait_until("the quota controller to count usage", Duration::from_secs(60), || {
        let used = kubectl_at(
            &admin(),
            &["-n", NS, "get", "resourcequota", "paygress-test-room", "-o", "jsonpath={.status.used.pods}"],
        )
        .ok()?;
        (!used.is_empty()).then_some(())
    })?;
    let kubeconfig = provider_kubeconfig_for(&admin(), "real-node-room")?;
    let extra = [("PAYGRESS_TIERS", "basic:100m:128Mi"), ("PAYMENT_RATE_SATS_PER_HOUR", "3600")];
    let p = Provider::start_ready(&extra, Some(kubeconfig))?;
    // 1 CPU of requests, nothing of ours running: room for 10 leases of 100m (fewer if other pods run).
    let room = wait_until("the offer to state the room", Duration::from_secs(60), || {
        latest_offer(&p.pubkey).ok()?["tiers"][0]["capacity"].as_u64()
    })?;
    assert!((1..=10).contains(&room), "capacity {room}");
    // No room left: the offer says so, and a request is refused with its token untouched.
    apply(quota("50m"))?;
    wait_until("the offer to show no room", Duration::from_secs(60), || {
        (latest_offer(&p.pubkey).ok()?["tiers"][0]["capacity"].as_u64() == Some(0)).then_some(())
    })?;
    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(100)?;
    let user = User::new()?;
    let token = w.send(60)?;
    let id = user.publish_nip44(1000, &request_json(&token, "noroom"), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    assert_eq!(reply["code"], "no_capacity", "{reply}");
    w.receive(&token).context("the token must still be spendable: nothing was taken")?;
    Ok(())
}

/// Kernel isolation as a tier (issue 11): a tier naming the RuntimeClass `gvisor` (the real node's runsc
/// handler, scripts/stack.d/node.sh) runs its leases under gVisor, whose kernel the tenant sees.
#[test]
fn a_lease_of_a_gvisor_tier_runs_under_gvisors_kernel() -> Result<()> {
    let _one = one_at_a_time();
    let kubeconfig = provider_kubeconfig_for(&admin(), "real-node-gvisor")?;
    let extra = [
        ("PAYMENT_RATE_SATS_PER_HOUR", "3600"),
        ("PAYGRESS_MIN_DURATION_SECONDS", "10"),
        ("PAYGRESS_RECONCILE_INTERVAL_SECONDS", "1"),
        ("PAYGRESS_TIERS", "basic:100m:128Mi,isolated:100m:128Mi:100:gvisor"),
    ];
    let p = Provider::start_ready(&extra, Some(kubeconfig))?;
    let w = Wallet::new(&env("CASHU_MINT_URL"))?;
    w.fund(20)?;
    let user = User::new()?;
    // 4 sats at 100 sats/hour: a 144 s lease (the gVisor pod's init runs under ptrace within 100m of CPU: on a
    // busy node reply and first login took over 72 s, and the lease was gone under the login).
    let token = w.send(4)?;
    let mut request: Value = serde_json::from_str(&request_json(&token, "sandboxed"))?;
    request["tier"] = "isolated".into();
    let started = std::time::Instant::now();
    let id = user.publish_nip44(1000, &request.to_string(), &p.pubkey)?;
    let reply = user.await_reply(&id, &p.pubkey, REPLY_TIMEOUT)?;
    let replied = started.elapsed();
    assert_eq!(reply["status"], "ok", "{reply}");
    let access = &reply["access"];
    assert_eq!(access["tier"], "isolated", "{reply}");
    let pod_name = access["pod_name"].as_str().context("pod name")?.to_string();
    let password = access["ssh_password"].as_str().context("password")?.to_string();

    // The pod names the RuntimeClass, and containerd runs its container with gVisor's shim.
    let pod = pod_json(&pod_name)?.context("the lease's pod")?;
    assert_eq!(pod["spec"]["runtimeClassName"], "gvisor", "{}", pod["spec"]);
    let ip = pod["status"]["podIP"].as_str().context("pod IP")?.to_string();
    let cid = pod["status"]["containerStatuses"][0]["containerID"].as_str().context("container id")?.to_string();
    let cid = cid.trim_start_matches("containerd://").to_string();
    let info: Value = serde_json::from_str(&run(Command::new("ctr").args([
        "-a",
        &env("CONTAINERD_ADDRESS"),
        "-n",
        "k8s.io",
        "containers",
        "info",
        &cid,
    ]))?)?;
    assert_eq!(info["Runtime"]["Name"], "io.containerd.runsc.v1", "{}", info["Runtime"]);

    // The tenant logs in with the password and sees gVisor's kernel, not the node's.
    let seen = ssh_password(&ip, 2222, "sandboxed", &password, "id -un; dmesg | head -1; cat /proc/version", None)?;
    println!("real node, gVisor tier: request → reply {replied:?}, → first SSH login {:?}", started.elapsed());
    println!("the tenant sees: {seen}");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.first().copied(), Some("sandboxed"), "{seen}");
    assert!(lines.get(1).is_some_and(|l| l.contains("Starting gVisor")), "dmesg is not gVisor's: {seen}");
    let host = std::fs::read_to_string("/proc/version")?;
    assert_ne!(lines.get(2).copied(), Some(host.trim()), "the lease sees the node's kernel: {seen}");

    // At expiry the provider deletes the pod, and gVisor's container goes with it.
    let expires_at = access["expires_at"].as_u64().context("expiry")?;
    let wait = Duration::from_secs(expires_at.saturating_sub(now_secs()) + 60);
    wait_until("the lease's pod to go at expiry", wait, || pod_json(&pod_name).ok().flatten().is_none().then_some(()))?;
    wait_until("containerd to drop the lease's container", Duration::from_secs(60), || {
        (!containers().ok()?.lines().any(|c| c == cid)).then_some(())
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Tenant isolation by the manifest's NetworkPolicies (issue 11), enforced on the real node by kube-network-policies
// (scripts/stack.d/node.sh). Real containers: two tenants (pods labelled as leases), a stand-in for the provider
// (a pod labelled as it, in its namespace, serving a line on 8080 and on 9090) and an outsider pod in `default`.

const SSH_IMAGE: &str = "lscr.io/linuxserver/openssh-server:latest";

/// The pods and Service of one isolation test; deleted on drop.
struct Isolation {
    tag: String,
    a: String,
    b: String,
    b_service: String,
    provider: String,
    outsider: String,
}

impl Isolation {
    fn up(test: &str) -> Result<Isolation> {
        // The real manifest, as an operator applies it (its NetworkPolicies among the rest).
        apply_manifest(&admin())?;
        for (ns, name) in [
            (NS, "paygress-ssh-pods-ingress"),
            (NS, "paygress-ssh-pods-egress"),
            ("ingress-system", "paygress-provider-ingress"),
        ] {
            kubectl_at(&admin(), &["-n", ns, "get", "networkpolicy", name, "-o", "name"])?;
        }
        let tag = format!("{test}{}", std::process::id());
        let f = Isolation {
            a: format!("{tag}-tenant-a"),
            b: format!("{tag}-tenant-b"),
            b_service: format!("{tag}-tenant-b"),
            provider: format!("{tag}-provider"),
            outsider: format!("{tag}-outsider"),
            tag,
        };
        let tenant = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels: {{app: paygress-ssh-pod, paygress.test/pod: {name}}}\n\
                 spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: ssh\n    image: {SSH_IMAGE}\n    imagePullPolicy: IfNotPresent\n\
                 \x20   env: [{{name: USER_NAME, value: tenant}}, {{name: USER_PASSWORD, value: hunter2}}, {{name: PASSWORD_ACCESS, value: \"true\"}}]\n\
                 \x20   readinessProbe: {{tcpSocket: {{port: 2222}}, periodSeconds: 1}}\n---\n"
            )
        };
        // The provider's namespace enforces the "restricted" Pod Security profile.
        let listener = "$SIG{PIPE} = 'IGNORE'; for my $p (8080, 9090) { next if fork; my $s = IO::Socket::INET->new(LocalPort => $p, \
                        Listen => 8, ReuseAddr => 1) or die \"$p: $!\"; while (my $c = $s->accept) { print $c \"PROVIDER\\n\"; \
                        close $c } exit } 1 while wait != -1";
        let yaml = format!(
            "{}{}apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {NS}\n\
             spec:\n  selector: {{paygress.test/pod: {b}}}\n  ports: [{{port: 2222, targetPort: 2222}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: {provider}\n  namespace: ingress-system\n  labels: {{app.kubernetes.io/name: paygress-sidecar}}\n\
             spec:\n  terminationGracePeriodSeconds: 1\n  securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}\n\
             \x20 containers:\n  - name: listener\n    image: {SSH_IMAGE}\n    imagePullPolicy: IfNotPresent\n\
             \x20   command: [perl, -MIO::Socket::INET, -e, {listener}]\n\
             \x20   securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}\n\
             \x20   readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: {outsider}\n  namespace: default\n\
             spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {SSH_IMAGE}\n    imagePullPolicy: IfNotPresent\n\
             \x20   command: [sleep, infinity]\n",
            tenant(&f.a),
            tenant(&f.b),
            svc = f.b_service,
            b = f.b,
            provider = f.provider,
            outsider = f.outsider,
            listener = serde_json::to_string(listener)?,
        );
        run_with_stdin(Command::new("kubectl").arg("--kubeconfig").arg(admin()).args(["apply", "-f", "-"]), &yaml)?;
        for (ns, pod) in [(NS, &f.a), (NS, &f.b), ("ingress-system", &f.provider), ("default", &f.outsider)] {
            kubectl_at(
                &admin(),
                &["-n", ns, "wait", "--for=condition=Ready", &format!("pod/{pod}"), "--timeout=120s"],
            )?;
        }
        Ok(f)
    }

    fn ip(&self, ns: &str, pod: &str) -> Result<String> {
        kubectl_at(&admin(), &["-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        let del = |args: &[&str]| {
            let _ = kubectl_at(&admin(), &[args, &["--ignore-not-found", "--wait=false"]].concat());
        };
        del(&["-n", NS, "delete", "pod", &self.a, &self.b]);
        del(&["-n", NS, "delete", "service", &self.b_service]);
        del(&["-n", "ingress-system", "delete", "pod", &self.provider]);
        del(&["-n", "default", "delete", "pod", &self.outsider]);
        println!("isolation test {}: cleaned up", self.tag);
    }
}

/// From inside `pod`: does a TCP connection to ip:port open within 4 s? Some(first bytes it reads) if so.
/// (The verdict is printed by the pod's shell, so a failing `kubectl exec` is an error, never a "blocked".)
fn dial(ns: &str, pod: &str, ip: &str, port: u16) -> Result<Option<String>> {
    let script = r#"timeout 4 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1; timeout 1 head -c 8 <&3; exit 0' "$0" "$1"; echo "verdict=$?""#;
    let out = kubectl_at(&admin(), &["-n", ns, "exec", pod, "--", "bash", "-c", script, ip, &port.to_string()])?;
    let (read, rc) = out.rsplit_once("verdict=").with_context(|| format!("no verdict from {pod}: {out}"))?;
    Ok((rc.trim() == "0").then(|| read.trim().to_string()))
}

/// The API server's ClusterIP (the `kubernetes` Service), its endpoint, and the node's address and kubelet port.
fn node_targets() -> Result<(String, String, u16, String, u16)> {
    let cip = kubectl_at(&admin(), &["-n", "default", "get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"])?;
    let ep = kubectl_at(
        &admin(),
        &[
            "-n",
            "default",
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[0].addresses[0].ip} {.subsets[0].ports[0].port}",
        ],
    )?;
    let (api_ip, api_port) = ep.split_once(' ').context("kubernetes endpoint")?;
    let node = kubectl_at(
        &admin(),
        &[
            "get",
            "node",
            "-o",
            r#"jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address} {.items[0].status.daemonEndpoints.kubeletEndpoint.Port}"#,
        ],
    )?;
    let (node_ip, kubelet_port) = node.split_once(' ').context("node address")?;
    Ok((cip, api_ip.to_string(), api_port.parse()?, node_ip.to_string(), kubelet_port.parse()?))
}

/// (a) A tenant opens no connection to another tenant, by pod IP or Service; (b) nor to the provider, the API
/// server (Service or endpoint) or the node's kubelet; and nothing but the provider reaches a tenant's SSH port,
/// nor anything the provider's other ports. The outsider (no policy) reaching the API server and the provider's
/// 8080 shows the paths exist: what a tenant cannot reach is refused by policy, not by routing.
#[test]
fn tenants_reach_neither_each_other_nor_the_provider_nor_the_node() -> Result<()> {
    let _one = one_at_a_time();
    let f = Isolation::up("iso")?;
    let a_ip = f.ip(NS, &f.a)?;
    let b_ip = f.ip(NS, &f.b)?;
    let b_cip = kubectl_at(&admin(), &["-n", NS, "get", "svc", &f.b_service, "-o", "jsonpath={.spec.clusterIP}"])?;
    let provider_ip = f.ip("ingress-system", &f.provider)?;
    let (api_cip, api_ip, api_port, node_ip, kubelet_port) = node_targets()?;

    // Policies apply once the enforcer has seen the new pods' addresses (from the API): at most a few seconds.
    // (Not fatal by itself: the list below says which connections opened.)
    let _ = wait_until("tenant a to be cut off from tenant b", Duration::from_secs(30), || {
        dial(NS, &f.a, &b_ip, 2222).ok()?.is_none().then_some(())
    });
    let blocked = [
        ("tenant a → tenant b", NS, &f.a, b_ip.as_str(), 2222),
        ("tenant a → tenant b's Service", NS, &f.a, b_cip.as_str(), 2222),
        ("tenant b → tenant a", NS, &f.b, a_ip.as_str(), 2222),
        ("tenant a → the provider's 8080", NS, &f.a, provider_ip.as_str(), 8080),
        ("tenant a → the API server's Service", NS, &f.a, api_cip.as_str(), 443),
        ("tenant a → the API server", NS, &f.a, api_ip.as_str(), api_port),
        ("tenant a → the kubelet", NS, &f.a, node_ip.as_str(), kubelet_port),
        ("the outsider → tenant b's SSH", "default", &f.outsider, b_ip.as_str(), 2222),
        ("the outsider → the provider's 9090", "default", &f.outsider, provider_ip.as_str(), 9090),
    ];
    let mut opened = Vec::new();
    for (what, ns, from, ip, port) in blocked {
        if let Some(read) = dial(ns, from, ip, port)? {
            opened.push(format!("{what} ({ip}:{port}, read {read:?})"));
        }
    }
    assert!(opened.is_empty(), "connections the policies forbid opened:\n{}", opened.join("\n"));
    assert_eq!(
        dial("default", &f.outsider, &provider_ip, 8080)?.as_deref(),
        Some("PROVIDER"),
        "outsider → provider:8080"
    );
    assert!(dial("default", &f.outsider, &api_cip, 443)?.is_some(), "outsider → the API server's Service");
    Ok(())
}

/// (c) What the policies must leave working: the provider (a pod labelled as it, in its namespace) reaches a
/// tenant's SSH port by pod IP and by the lease's Service, and SSH from the node into a lease through its
/// Service works (the node's own traffic is never policed: kubelet probes, the provider as a host process).
#[test]
fn the_provider_and_the_node_still_reach_a_tenant_under_the_policies() -> Result<()> {
    let _one = one_at_a_time();
    let f = Isolation::up("reach")?;
    let b_ip = f.ip(NS, &f.b)?;
    let b_cip = kubectl_at(&admin(), &["-n", NS, "get", "svc", &f.b_service, "-o", "jsonpath={.spec.clusterIP}"])?;
    for ip in [&b_ip, &b_cip] {
        let banner = wait_until("the provider to reach tenant b", Duration::from_secs(30), || {
            dial("ingress-system", &f.provider, ip, 2222).ok().flatten()
        })?;
        assert!(banner.starts_with("SSH-2.0"), "provider → {ip}:2222 read {banner:?}");
    }
    let who = wait_until("SSH from the node through the Service", Duration::from_secs(30), || {
        ssh_password(&b_cip, 2222, "tenant", "hunter2", "id -un", None).ok()
    })?;
    assert_eq!(who.trim(), "tenant");
    Ok(())
}
