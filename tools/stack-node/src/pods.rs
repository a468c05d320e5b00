//! The pod loop: schedule (bind) unbound pods to this node, make bound pods
//! Running with a loopback IP and an SSH server, and finish deletions the way
//! a kubelet would.
//!
//! Everything runs on one task that owns all state; a periodic resync retries
//! whatever failed (missing Secret, port still busy, API hiccups).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::creds::{self, Credentials, EnvSource};
use crate::ipam::Ipam;
use crate::node::{now_rfc3339, HOST_IP};
use crate::sshd::{PodServer, ServerSpec};
use crate::state;

const RESYNC: Duration = Duration::from_secs(5);
const REBIND_AFTER: Duration = Duration::from_secs(5);
const REDELETE_AFTER: Duration = Duration::from_secs(15);

/// A pod this node has made real.
struct Served {
    ip: Ipv4Addr,
    /// None when the pod has no SSH container.
    server: Option<PodServer>,
}

/// Why a pod's "container" could not be started.
enum PrepError {
    /// The pod spec refers to something missing (a kubelet reports CreateContainerConfigError).
    Config(String),
    /// Transient; retried on the next resync.
    Other(anyhow::Error),
}

pub struct PodAgent {
    client: Client,
    node: String,
    state_dir: PathBuf,
    ipam: Ipam,
    synced: Arc<AtomicBool>,
    cache: HashMap<String, Pod>,
    served: HashMap<String, Served>,
    bind_attempts: HashMap<String, Instant>,
    delete_attempts: HashMap<String, Instant>,
    /// Last start-up problem per pod uid, so retries every resync do not repeat the same warning.
    last_problem: HashMap<String, String>,
    init_buf: Option<Vec<Pod>>,
}

fn meta(pod: &Pod) -> Option<(String, String, String)> {
    let m = &pod.metadata;
    Some((m.uid.clone()?, m.namespace.clone()?, m.name.clone()?))
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn status_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// Whether the status already says what `patch_running` would write.
fn status_is_running(pod: &Pod, ip: Ipv4Addr) -> bool {
    let (Some(spec), Some(st)) = (pod.spec.as_ref(), pod.status.as_ref()) else {
        return false;
    };
    let ready = st.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let containers_ok = st.container_statuses.as_ref().is_some_and(|cs| {
        cs.len() == spec.containers.len()
            && cs.iter().all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
    });
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.as_deref() == Some(ip.to_string().as_str())
        && ready
        && containers_ok
}

impl PodAgent {
    pub fn new(
        client: Client,
        node: &str,
        pod_cidr: &str,
        state_dir: PathBuf,
        synced: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        Ok(PodAgent {
            client,
            node: node.to_string(),
            state_dir,
            ipam: Ipam::new(pod_cidr)?,
            synced,
            cache: HashMap::new(),
            served: HashMap::new(),
            bind_attempts: HashMap::new(),
            delete_attempts: HashMap::new(),
            last_problem: HashMap::new(),
            init_buf: None,
        })
    }

    /// Runs until the shutdown future completes (or the watch stream ends).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => self.on_event(ev).await,
                    Some(Err(e)) => warn!("pod watcher: {e}"),
                    None => {
                        warn!("pod watch stream ended");
                        break;
                    }
                },
                _ = tick.tick() => {
                    if self.synced.load(Ordering::SeqCst) {
                        self.resync().await;
                    }
                }
            }
        }
        let n = self.served.values().filter(|s| s.server.is_some()).count();
        info!("stopping {n} ssh servers");
        for (_, s) in self.served.drain() {
            if let Some(server) = s.server {
                server.stop().await;
            }
        }
    }

    async fn on_event(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.init_buf = Some(Vec::new()),
            Event::InitApply(p) => match &mut self.init_buf {
                Some(buf) => buf.push(p),
                None => self.apply(p).await,
            },
            Event::InitDone => {
                let pods = self.init_buf.take().unwrap_or_default();
                self.initial_sync(pods).await;
                if !self.synced.swap(true, Ordering::SeqCst) {
                    info!(
                        pods = self.cache.len(),
                        served = self.served.len(),
                        ips = self.ipam.allocated(),
                        "pod watcher synced"
                    );
                }
            }
            Event::Apply(p) => self.apply(p).await,
            Event::Delete(p) => {
                if let Some((uid, ns, name)) = meta(&p) {
                    info!(pod = %format!("{ns}/{name}"), "pod gone");
                    self.forget(&uid).await;
                }
            }
        }
    }

    /// A (re)list: reserve the IPs pods already have before handing out new
    /// ones, drop pods that vanished meanwhile, then reconcile everything.
    async fn initial_sync(&mut self, pods: Vec<Pod>) {
        let live: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let gone: Vec<String> =
            self.cache.keys().chain(self.served.keys()).filter(|u| !live.contains(*u)).cloned().collect();
        for uid in gone {
            info!(%uid, "pod vanished while not watching");
            self.forget(&uid).await;
        }
        for p in &pods {
            let (Some((uid, ns, name)), Some(ip)) = (meta(p), status_ip(p)) else {
                continue;
            };
            if node_name(p) != Some(self.node.as_str())
                || host_network(p)
                || matches!(phase(p), "Succeeded" | "Failed")
                || self.served.contains_key(&uid)
            {
                continue;
            }
            if !self.ipam.contains(ip) {
                info!(pod = %format!("{ns}/{name}"), %ip, "pod IP is outside the pod CIDR; keeping it");
            }
            if let Err(owner) = self.ipam.reserve(&uid, ip) {
                warn!(pod = %format!("{ns}/{name}"), %ip, %owner, "pod IP already taken by another pod");
            }
        }
        self.cache = pods.into_iter().filter_map(|p| Some((p.metadata.uid.clone()?, p))).collect();
        self.gc_state_dirs(&live);
        self.resync().await;
    }

    async fn resync(&mut self) {
        let pods: Vec<Pod> = self.cache.values().cloned().collect();
        for p in pods {
            self.reconcile(p).await;
        }
    }

    async fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.cache.insert(uid, pod.clone());
        self.reconcile(pod).await;
    }

    /// Stop serving a pod that is gone from the API and free what it held.
    async fn forget(&mut self, uid: &str) {
        self.cache.remove(uid);
        self.bind_attempts.remove(uid);
        self.delete_attempts.remove(uid);
        self.last_problem.remove(uid);
        if let Some(s) = self.served.remove(uid) {
            if let Some(server) = s.server {
                server.stop().await;
                info!(%uid, ip = %s.ip, "ssh server stopped");
            }
        }
        self.ipam.release(uid);
        self.remove_state_dirs(|u| u == uid);
    }

    /// Remove per-pod state directories whose uid matches.
    fn remove_state_dirs(&self, matches: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("pods")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((_, uid)) = name.rsplit_once('_') else {
                continue;
            };
            if matches(uid) {
                debug!("removing state {}", e.path().display());
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    warn!("removing {}: {err}", e.path().display());
                }
            }
        }
    }

    /// Remove per-pod state directories of pods that no longer exist (deleted while we were down).
    fn gc_state_dirs(&self, live: &HashSet<String>) {
        self.remove_state_dirs(|uid| !live.contains(uid));
    }

    async fn reconcile(&mut self, pod: Pod) {
        let Some((uid, ns, name)) = meta(&pod) else {
            return;
        };
        let key = format!("{ns}/{name}");
        let bound_here = node_name(&pod) == Some(self.node.as_str());

        if pod.metadata.deletion_timestamp.is_some() {
            if bound_here {
                self.finish_deletion(&pod, &uid, &ns, &name).await;
            }
            return;
        }
        match node_name(&pod) {
            None | Some("") => {
                if !matches!(phase(&pod), "Succeeded" | "Failed") {
                    self.bind(&uid, &ns, &name).await;
                }
                return;
            }
            Some(_) if !bound_here => return,
            Some(_) => {}
        }
        self.bind_attempts.remove(&uid);
        if matches!(phase(&pod), "Succeeded" | "Failed") {
            if let Some(s) = self.served.remove(&uid) {
                if let Some(server) = s.server {
                    server.stop().await;
                }
            }
            self.ipam.release(&uid);
            return;
        }

        // The pod's IP: the one we serve it at, else what its status says, else a new one.
        let ip = if host_network(&pod) {
            Ipv4Addr::LOCALHOST
        } else if let Some(s) = self.served.get(&uid) {
            s.ip
        } else if let Some(ip) = status_ip(&pod).filter(|ip| match self.ipam.reserve(&uid, *ip) {
            Ok(()) => true,
            Err(owner) => {
                warn!(pod = %key, %ip, %owner, "status.podIP is held by another pod; allocating a new one");
                false
            }
        }) {
            ip
        } else {
            match self.ipam.allocate(&uid) {
                Some(ip) => ip,
                None => {
                    warn!(pod = %key, "pod CIDR exhausted; pod stays Pending");
                    return;
                }
            }
        };

        if !self.served.contains_key(&uid) {
            match self.prepare(&pod, &uid, &ns, &name, ip).await {
                Ok(served) => {
                    self.last_problem.remove(&uid);
                    match &served.server {
                        Some(s) => info!(pod = %key, addr = %s.addr, "ssh server started"),
                        None => {
                            info!(pod = %key, %ip, "pod has no ssh container; running without a server")
                        }
                    }
                    self.served.insert(uid.clone(), served);
                }
                Err(PrepError::Config(msg)) => {
                    self.problem(&uid, &key, &msg);
                    self.patch_config_error(&pod, &ns, &name, &msg).await;
                    return;
                }
                Err(PrepError::Other(e)) => {
                    self.problem(&uid, &key, &format!("starting pod (will retry): {e:#}"));
                    return;
                }
            }
        }

        if !status_is_running(&pod, ip) {
            self.patch_running(&pod, &uid, &ns, &name, ip).await;
        }
    }

    /// Warn about a pod's start-up problem once per distinct message.
    fn problem(&mut self, uid: &str, key: &str, msg: &str) {
        if self.last_problem.get(uid).map(String::as_str) != Some(msg) {
            warn!(pod = %key, "{msg}");
            self.last_problem.insert(uid.to_string(), msg.to_string());
        } else {
            debug!(pod = %key, "{msg}");
        }
    }

    async fn bind(&mut self, uid: &str, ns: &str, name: &str) {
        if self.bind_attempts.get(uid).is_some_and(|t| t.elapsed() < REBIND_AFTER) {
            return;
        }
        self.bind_attempts.insert(uid.to_string(), Instant::now());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        match api.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding).await {
            Ok(_) => info!(pod = %format!("{ns}/{name}"), node = %self.node, "bound"),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                debug!(pod = %format!("{ns}/{name}"), "binding: {}", s.message)
            }
            Err(e) => warn!(pod = %format!("{ns}/{name}"), "binding: {e}"),
        }
    }

    async fn finish_deletion(&mut self, pod: &Pod, uid: &str, ns: &str, name: &str) {
        if let Some(s) = self.served.get_mut(uid) {
            if let Some(server) = s.server.take() {
                server.stop().await;
                info!(pod = %format!("{ns}/{name}"), ip = %s.ip, "ssh server stopped (pod terminating)");
            }
        }
        if self.delete_attempts.get(uid).is_some_and(|t| t.elapsed() < REDELETE_AFTER) {
            return;
        }
        self.delete_attempts.insert(uid.to_string(), Instant::now());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                let fin = pod.metadata.finalizers.as_ref().map_or(0, Vec::len);
                if fin > 0 {
                    info!(pod = %format!("{ns}/{name}"), "deleted (waiting on {fin} finalizers)");
                } else {
                    info!(pod = %format!("{ns}/{name}"), "deleted");
                }
            }
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(e) => warn!(pod = %format!("{ns}/{name}"), "deleting: {e}"),
        }
    }

    /// Resolve the SSH container's credentials, load the host key, start the server.
    async fn prepare(&mut self, pod: &Pod, uid: &str, ns: &str, name: &str, ip: Ipv4Addr) -> Result<Served, PrepError> {
        let dir = state::pod_dir(&self.state_dir, ns, name, uid);
        let Some(container) = creds::ssh_container(pod) else {
            return Ok(Served { ip, server: None });
        };
        let env = self.resolve_env(ns, container).await?;
        let creds = Credentials::from_env(&env);
        if creds.bad_key_lines > 0 {
            warn!(pod = %format!("{ns}/{name}"), "{} PUBLIC_KEY line(s) are not OpenSSH public keys; ignored", creds.bad_key_lines);
        }
        let rsa = creds.keys.iter().filter(|k| k.key_data().is_rsa()).count();
        if rsa > 0 {
            warn!(pod = %format!("{ns}/{name}"), "{rsa} RSA PUBLIC_KEY(s): this build's russh has no `rsa` feature, so they cannot log in");
        }
        info!(
            pod = %format!("{ns}/{name}"),
            user = %creds.user,
            password = creds.password_enabled(),
            keys = creds.keys.len(),
            "ssh credentials"
        );
        let key_dir = dir.clone();
        let host_key = tokio::task::spawn_blocking(move || state::load_or_create_host_key(&key_dir))
            .await
            .map_err(|e| PrepError::Other(e.into()))?
            .map_err(PrepError::Other)?;
        debug!(pod = %format!("{ns}/{name}"), fingerprint = %state::fingerprint(&host_key), "host key");
        let server =
            PodServer::start(ServerSpec { pod: format!("{ns}/{name}"), ip, creds, host_key, home: dir.join("home") })
                .await
                .map_err(PrepError::Other)?;
        Ok(Served { ip, server: Some(server) })
    }

    async fn resolve_env(&self, ns: &str, c: &Container) -> Result<BTreeMap<String, String>, PrepError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let mut secret_cache: HashMap<String, Option<BTreeMap<String, String>>> = HashMap::new();
        let mut cm_cache: HashMap<String, Option<BTreeMap<String, String>>> = HashMap::new();
        let mut env = BTreeMap::new();
        for (var, src) in creds::env_sources(c) {
            let (kind, obj, data, optional) = match &src {
                EnvSource::Literal(v) => {
                    if let Some(var) = var {
                        env.insert(var, v.clone());
                    }
                    continue;
                }
                EnvSource::Unsupported => continue,
                EnvSource::SecretKey { name, optional, .. } | EnvSource::SecretAll { name, optional, .. } => {
                    if !secret_cache.contains_key(name) {
                        let got = secrets.get_opt(name).await.map_err(|e| PrepError::Other(e.into()))?.map(|s| {
                            s.data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                                .collect()
                        });
                        secret_cache.insert(name.clone(), got);
                    }
                    ("Secret", name, secret_cache.get(name).cloned().flatten(), *optional)
                }
                EnvSource::ConfigMapKey { name, optional, .. } | EnvSource::ConfigMapAll { name, optional, .. } => {
                    if !cm_cache.contains_key(name) {
                        let got = cms
                            .get_opt(name)
                            .await
                            .map_err(|e| PrepError::Other(e.into()))?
                            .map(|m| m.data.unwrap_or_default());
                        cm_cache.insert(name.clone(), got);
                    }
                    ("ConfigMap", name, cm_cache.get(name).cloned().flatten(), *optional)
                }
            };
            let Some(data) = data else {
                if optional {
                    continue;
                }
                return Err(PrepError::Config(format!("{kind} \"{obj}\" not found")));
            };
            match &src {
                EnvSource::SecretKey { key, .. } | EnvSource::ConfigMapKey { key, .. } => match (data.get(key), var) {
                    (Some(v), Some(var)) => {
                        env.insert(var, v.clone());
                    }
                    (None, _) if !optional => {
                        return Err(PrepError::Config(format!("couldn't find key {key} in {kind} {ns}/{obj}")));
                    }
                    _ => {}
                },
                EnvSource::SecretAll { prefix, .. } | EnvSource::ConfigMapAll { prefix, .. } => {
                    for (k, v) in data {
                        env.insert(format!("{prefix}{k}"), v);
                    }
                }
                EnvSource::Literal(_) | EnvSource::Unsupported => {}
            }
        }
        Ok(env)
    }

    async fn patch_running(&mut self, pod: &Pod, uid: &str, ns: &str, name: &str, ip: Ipv4Addr) {
        let now = now_rfc3339();
        let spec = pod.spec.clone().unwrap_or_default();
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now));
        let container_status = |c: &Container| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("stack-node://{uid}/{}", c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        };
        let init_status = |c: &Container| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("stack-node://{uid}/{}", c.name),
                "ready": true,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started}},
            })
        };
        let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let mut status = json!({
            "phase": "Running",
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": started,
            "conditions": [
                cond("PodReadyToStartContainers"),
                cond("Initialized"),
                cond("Ready"),
                cond("ContainersReady"),
                cond("PodScheduled"),
            ],
            "containerStatuses": spec.containers.iter().map(container_status).collect::<Vec<_>>(),
        });
        if let Some(inits) = spec.init_containers.as_ref().filter(|v| !v.is_empty()) {
            status["initContainerStatuses"] = json!(inits.iter().map(init_status).collect::<Vec<_>>());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await {
            Ok(p) => {
                info!(pod = %format!("{ns}/{name}"), %ip, "Running");
                self.cache.insert(uid.to_string(), p);
            }
            Err(e) => {
                warn!(pod = %format!("{ns}/{name}"), "patching status Running (will retry): {e}")
            }
        }
    }

    async fn patch_config_error(&mut self, pod: &Pod, ns: &str, name: &str, msg: &str) {
        let already = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.message.as_deref()) == Some(msg)
            })
        });
        if already {
            return;
        }
        let now = now_rfc3339();
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "ready": false, "started": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "CreateContainerConfigError", "message": msg}},
                })
            })
            .collect();
        let status = json!({
            "phase": "Pending",
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastProbeTime": null, "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await {
            Ok(p) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    self.cache.insert(uid, p);
                }
            }
            Err(e) => debug!(pod = %format!("{ns}/{name}"), "patching status: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_detection() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {"nodeName": "node", "containers": [{"name": "c", "image": "i"}]},
            "status": {
                "phase": "Running", "podIP": "127.0.100.2",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]
            }
        }))
        .unwrap();
        assert!(status_is_running(&pod, "127.0.100.2".parse().unwrap()));
        assert!(!status_is_running(&pod, "127.0.100.3".parse().unwrap()));
        assert_eq!(status_ip(&pod), Some("127.0.100.2".parse().unwrap()));
        assert_eq!(node_name(&pod), Some("node"));
        let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert!(!status_is_running(&bare, Ipv4Addr::LOCALHOST));
        assert!(meta(&bare).is_none());
        assert_eq!(phase(&bare), "");
    }
}
