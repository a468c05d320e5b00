//! k8s adapter: [`KubeCluster`] runs each lease as a Pod, a ClusterIP Service and Secrets in one namespace
//! (`POD_NAMESPACE`), through the Kubernetes API (kube 5). Every object carries the lease-id label; the
//! pod's annotations are the cluster's record of the lease (expiry, requester, tier).
//!
//! RBAC it needs, namespaced (k8s/sidecar-service.yaml): pods get/list/watch/create/delete/patch,
//! services get/list/create/delete, secrets get/list/create/delete. Nothing else.

mod error;
pub mod objects;
mod pool;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

pub use error::{Action, KubeError};
pub use objects::{auth_secret_name, onion_secret_name, pod_name, provider_id, service_name, valid_lease_id};

use crate::lease::ports::{
    default_probe_interval, ClusterLease, ClusterPort, ExpiryUpdate, FailureKind, OrphanObject, PodPlan, PoolKey,
    PortResult,
};
use crate::protocol::Tier;
use objects::PodProgress;

/// Upper bound of one ordinary API call; a hung connection must not stall a saga.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-side timeout of one watch request while waiting for a pod; the wait then re-reads and re-watches.
const WATCH_SECONDS: u32 = 30;
/// Page size of list calls.
const PAGE: u32 = 250;
/// Services and Secrets younger than this are never called orphans: `ensure_lease_objects` creates the
/// auth Secret before the Pod, so a sweep in between must not take it away.
const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(300);

pub struct KubeCluster {
    client: Client,
    namespace: String,
    /// This provider's label value: every list and delete is scoped to it.
    provider: String,
    /// SSH port assumed for pods that declare no `ssh` containerPort.
    ssh_port: u16,
    call_timeout: Duration,
    poll_interval: Duration,
    orphan_grace: Duration,
}

impl KubeCluster {
    /// `provider`: this provider's label value ([`provider_id`] of its public key).
    pub fn new(client: Client, namespace: impl Into<String>, ssh_port: u16, provider: &str) -> Result<Self, KubeError> {
        if !objects::valid_provider_id(provider) {
            return Err(KubeError::InvalidProvider { provider: provider.chars().take(80).collect() });
        }
        Ok(KubeCluster {
            client,
            namespace: namespace.into(),
            provider: provider.to_string(),
            ssh_port,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            poll_interval: default_probe_interval(),
            orphan_grace: DEFAULT_ORPHAN_GRACE,
        })
    }

    /// Client from the default configuration: `KUBECONFIG` / `~/.kube/config`, else in-cluster.
    pub async fn connect(namespace: impl Into<String>, ssh_port: u16, provider: &str) -> Result<Self, KubeError> {
        let config = kube::Config::infer().await.map_err(|e| KubeError::Config { message: e.to_string() })?;
        Self::from_config(config, namespace, ssh_port, provider)
    }

    pub fn from_config(
        config: kube::Config,
        namespace: impl Into<String>,
        ssh_port: u16,
        provider: &str,
    ) -> Result<Self, KubeError> {
        let client = Client::try_from(config).map_err(|e| KubeError::Config { message: e.to_string() })?;
        Self::new(client, namespace, ssh_port, provider)
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn with_call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    pub fn with_poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    pub fn with_orphan_grace(mut self, d: Duration) -> Self {
        self.orphan_grace = d;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One API call, bounded in time, its error given context.
    async fn call<T>(
        &self,
        lease_id: &str,
        action: Action,
        object: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubeError> {
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(KubeError::from_kube(lease_id, action, object, e)),
            Err(_) => Err(KubeError::call_timeout(lease_id, action, object, self.call_timeout)),
        }
    }

    /// Create, treating "already exists" as done: a resumed saga calls this again.
    async fn create_idempotent<K>(
        &self,
        api: &Api<K>,
        lease_id: &str,
        object: &str,
        obj: &K,
    ) -> Result<Option<K>, KubeError>
    where
        K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        match self.call(lease_id, Action::Create, object, api.create(&PostParams::default(), obj)).await {
            Ok(created) => {
                info!(lease_id, object, "created");
                Ok(Some(created))
            }
            Err(e) if e.is_already_exists() => {
                debug!(lease_id, object, "already exists");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An object that already existed under a lease's name: adopted only if this provider made it for
    /// this request (a resumed saga); anything else is refused and left as it is.
    async fn check_made_by<K>(&self, api: &Api<K>, plan: &PodPlan, object: &str, name: &str) -> Result<(), KubeError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let id = plan.lease_id.as_str();
        match self.call(id, Action::Get, object, api.get_opt(name)).await? {
            Some(found) if objects::made_by(found.meta(), &self.provider, &plan.request_id) => Ok(()),
            // Deleted in between: the saga's retry creates it afresh.
            None => Err(KubeError::Transport {
                lease_id: id.to_string(),
                action: Action::Get,
                object: object.to_string(),
                message: "existed a moment ago and is gone".into(),
                permanent: false,
            }),
            Some(_) => {
                warn!(lease_id = id, object, "an object of this lease's name belongs to another request; not adopted");
                Err(KubeError::Taken { lease_id: id.to_string(), object: object.to_string() })
            }
        }
    }

    /// Delete one object, only if it is still the very object we looked at (uid) and, when given, still
    /// at that resourceVersion.
    async fn delete_exact<K>(
        &self,
        api: &Api<K>,
        lease_id: &str,
        kind: &str,
        found: &K,
        version: Option<&str>,
    ) -> Result<(), KubeError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let name = found.name_any();
        let object = format!("{kind}/{name}");
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: found.meta().uid.clone(),
                resource_version: version.map(String::from),
            }),
            ..DeleteParams::default()
        };
        self.delete_named(api, lease_id, &object, &name, &dp).await
    }

    async fn delete_named<K>(
        &self,
        api: &Api<K>,
        lease_id: &str,
        object: &str,
        name: &str,
        dp: &DeleteParams,
    ) -> Result<(), KubeError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        match self.call(lease_id, Action::Delete, object, api.delete(name, dp)).await {
            Ok(_) => {
                info!(lease_id, object, "deleted");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object of kind K matching `selector`, following continue tokens.
    async fn list_all<K>(&self, api: &Api<K>, what: &str, selector: &str) -> Result<Vec<K>, KubeError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().labels(selector).limit(PAGE);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = self.call("-", Action::List, what, api.list(&lp)).await?;
            items.extend(page.items);
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(items);
            }
        }
    }

    fn check_id(lease_id: &str) -> Result<(), KubeError> {
        if valid_lease_id(lease_id) {
            Ok(())
        } else {
            Err(KubeError::InvalidLeaseId { lease_id: lease_id.chars().take(80).collect() })
        }
    }

    fn check_plan(&self, plan: &PodPlan) -> Result<(), KubeError> {
        Self::check_id(&plan.lease_id)?;
        let id = &plan.lease_id;
        for (expected, found) in [
            (pod_name(id), &plan.pod_name),
            (service_name(id), &plan.service_name),
            (self.namespace.clone(), &plan.namespace),
            (self.provider.clone(), &plan.provider),
        ] {
            if &expected != found {
                return Err(KubeError::PlanMismatch { lease_id: id.clone(), expected, found: found.clone() });
            }
        }
        Ok(())
    }

    /// Watch the pod until it runs with an IP or cannot run any more. `last` keeps the latest state seen,
    /// for the message when the caller's timeout ends the wait.
    async fn watch_until_running(&self, lease_id: &str, last: &mut String) -> Result<SocketAddr, KubeError> {
        let name = pod_name(lease_id);
        let object = format!("pod/{name}");
        let pods = self.pods();
        let dead = |why: String| KubeError::PodDead { lease_id: lease_id.to_string(), pod: name.clone(), why };
        loop {
            let pod = match self.call(lease_id, Action::Get, &object, pods.get_opt(&name)).await {
                Ok(Some(pod)) => pod,
                Ok(None) => return Err(dead("the pod does not exist (deleted?)".into())),
                Err(e) if e.kind() == FailureKind::Transient => {
                    *last = e.to_string();
                    tokio::time::sleep(self.poll_interval).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match objects::progress(&pod, self.ssh_port) {
                PodProgress::Running(addr) => return Ok(addr),
                PodProgress::Dead(why) => return Err(dead(why)),
                PodProgress::Pending(why) => *last = why,
            }
            // Then wait for changes instead of polling; any hiccup falls back to a fresh read.
            let rv = pod.resource_version().unwrap_or_default();
            let wp = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(WATCH_SECONDS);
            match pods.watch(&wp, &rv).await {
                Ok(stream) => {
                    let mut stream = pin!(stream);
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                                match objects::progress(&p, self.ssh_port) {
                                    PodProgress::Running(addr) => return Ok(addr),
                                    PodProgress::Dead(why) => return Err(dead(why)),
                                    PodProgress::Pending(why) => *last = why,
                                }
                            }
                            Ok(WatchEvent::Deleted(_)) => return Err(dead("the pod was deleted".into())),
                            Ok(WatchEvent::Bookmark(_)) => {}
                            // 410 Gone (resourceVersion too old) and the like: read afresh.
                            Ok(WatchEvent::Error(status)) => {
                                debug!(lease_id, code = status.code, "watch error; re-reading pod");
                                break;
                            }
                            Err(e) => {
                                debug!(lease_id, error = %e, "watch stream failed; re-reading pod");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = KubeError::from_kube(lease_id, Action::Watch, &object, e);
                    if e.kind() != FailureKind::Transient {
                        return Err(e);
                    }
                    *last = e.to_string();
                }
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// The auth Secret already existed (a resumed saga). If it holds another password (left by an earlier
    /// attempt that never made its pod), the user would be told a password the pod does not accept: replace
    /// it while no pod uses it, refuse once one does.
    async fn reconcile_auth_secret(&self, lease_id: &str, object: &str, wanted: &Secret) -> Result<(), KubeError> {
        let name = auth_secret_name(lease_id);
        let existing = self.call(lease_id, Action::Get, object, self.secrets().get_opt(&name)).await?;
        if existing.as_ref().and_then(|s| s.data.as_ref()) == wanted.data.as_ref() {
            return Ok(());
        }
        if self.pod_uid(lease_id).await?.is_some() {
            return Err(KubeError::AuthSecretConflict { lease_id: lease_id.to_string(), secret: name });
        }
        warn!(lease_id, object, "stale auth secret from an earlier attempt; replacing it");
        self.delete_named(&self.secrets(), lease_id, object, &name, &DeleteParams::default()).await?;
        match self.call(lease_id, Action::Create, object, self.secrets().create(&PostParams::default(), wanted)).await {
            Ok(_) => Ok(()),
            // Deletion not finished yet: the saga's retry will get here again.
            Err(e) if e.is_already_exists() => Err(KubeError::Transport {
                lease_id: lease_id.to_string(),
                action: Action::Create,
                object: object.to_string(),
                message: "stale secret still being deleted".into(),
                permanent: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// The pod's uid, to make it the owner of the objects created after it.
    async fn pod_uid(&self, lease_id: &str) -> Result<Option<String>, KubeError> {
        let name = pod_name(lease_id);
        let pod = self.call(lease_id, Action::Get, &format!("pod/{name}"), self.pods().get_opt(&name)).await?;
        Ok(pod.and_then(|p| p.metadata.uid))
    }
}

fn lease_of(meta: &ObjectMeta) -> Option<&str> {
    objects::label(meta, objects::LABEL_LEASE)
}

fn older_than(meta: &ObjectMeta, grace: Duration) -> bool {
    if grace.is_zero() {
        return true;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match &meta.creation_timestamp {
        Some(t) => u64::try_from(t.0.as_second()).map(|c| now.saturating_sub(c) >= grace.as_secs()).unwrap_or(false),
        None => false,
    }
}

#[async_trait]
impl ClusterPort for KubeCluster {
    async fn ensure_lease_objects(&self, plan: &PodPlan) -> PortResult<()> {
        self.check_plan(plan)?;
        let id = plan.lease_id.as_str();
        // Secret before Pod: the pod's USER_PASSWORD refers to it and cannot start without it.
        if let Some(secret) = objects::auth_secret(plan) {
            let name = auth_secret_name(id);
            let object = format!("secret/{name}");
            if self.create_idempotent(&self.secrets(), id, &object, &secret).await?.is_none() {
                self.check_made_by(&self.secrets(), plan, &object, &name).await?;
                self.reconcile_auth_secret(id, &object, &secret).await?;
            }
        }
        let pod_object = format!("pod/{}", plan.pod_name);
        let uid = match self.create_idempotent(&self.pods(), id, &pod_object, &objects::pod(plan)).await? {
            Some(created) => created.metadata.uid,
            None => {
                self.check_made_by(&self.pods(), plan, &pod_object, &plan.pod_name).await?;
                self.pod_uid(id).await?
            }
        };
        let owner = uid.map(|uid| objects::pod_owner(&plan.pod_name, &uid));
        let svc_object = format!("service/{}", plan.service_name);
        let service = objects::service(plan, owner);
        if self.create_idempotent(&self.services(), id, &svc_object, &service).await?.is_none() {
            self.check_made_by(&self.services(), plan, &svc_object, &plan.service_name).await?;
        }
        Ok(())
    }

    async fn wait_running(&self, lease_id: &str, timeout: Duration) -> PortResult<SocketAddr> {
        Self::check_id(lease_id)?;
        let mut last = String::from("not seen yet");
        let waited = tokio::time::timeout(timeout, self.watch_until_running(lease_id, &mut last)).await;
        match waited {
            Ok(Ok(addr)) => {
                info!(lease_id, endpoint = %addr, "pod running");
                Ok(addr)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(KubeError::Timeout {
                lease_id: lease_id.to_string(),
                pod: pod_name(lease_id),
                waited: timeout,
                last,
            }
            .into()),
        }
    }

    async fn set_expiry(&self, lease_id: &str, update: &ExpiryUpdate) -> PortResult<()> {
        Self::check_id(lease_id)?;
        let name = pod_name(lease_id);
        let expires_at = update.expires_at;
        let mut patch = serde_json::json!({
            "metadata": { "annotations": {
                objects::ANN_EXPIRES_AT: expires_at.to_string(),
                objects::ANN_TOPUPS: objects::format_topups(&update.topups),
            } }
        });
        // A resourceVersion in a merge patch is a precondition: the API server answers 409 Conflict
        // (Transient) if the pod changed since it was read.
        if let Some(version) = &update.if_version {
            patch["metadata"]["resourceVersion"] = serde_json::Value::String(version.clone());
        }
        let object = format!("pod/{name}");
        self.call(
            lease_id,
            Action::Patch,
            &object,
            self.pods().patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map_err(|e| {
            if e.is_not_found() {
                KubeError::PodNotFound { lease_id: lease_id.to_string(), pod: name.clone() }
            } else {
                e
            }
        })?;
        info!(lease_id, expires_at, "expiry annotation moved");
        Ok(())
    }

    async fn delete_lease(&self, lease_id: &str, if_version: Option<&str>) -> PortResult<()> {
        Self::check_id(lease_id)?;
        let selector = objects::lease_selector(&self.provider, lease_id);
        // The pod first, under the version the caller decided on: a top-up written since then makes this
        // fail with 409 (Transient) and the lease lives on. Its grace period (5 s) lets sshd end sessions.
        for pod in self.list_all(&self.pods(), "pods", &selector).await? {
            self.delete_exact(&self.pods(), lease_id, "pod", &pod, if_version).await?;
        }
        for s in self.list_all(&self.services(), "services", &selector).await? {
            self.delete_exact(&self.services(), lease_id, "service", &s, None).await?;
        }
        for s in self.list_all(&self.secrets(), "secrets", &selector).await? {
            self.delete_exact(&self.secrets(), lease_id, "secret", &s, None).await?;
        }
        Ok(())
    }

    async fn delete_created(&self, lease_id: &str, request_id: &str) -> PortResult<()> {
        Self::check_id(lease_id)?;
        let selector = objects::lease_selector(&self.provider, lease_id);
        let mine = |m: &ObjectMeta| objects::made_by(m, &self.provider, request_id);
        for pod in self.list_all(&self.pods(), "pods", &selector).await?.iter().filter(|o| mine(&o.metadata)) {
            self.delete_exact(&self.pods(), lease_id, "pod", pod, None).await?;
        }
        for s in self.list_all(&self.services(), "services", &selector).await?.iter().filter(|o| mine(&o.metadata)) {
            self.delete_exact(&self.services(), lease_id, "service", s, None).await?;
        }
        for s in self.list_all(&self.secrets(), "secrets", &selector).await?.iter().filter(|o| mine(&o.metadata)) {
            self.delete_exact(&self.secrets(), lease_id, "secret", s, None).await?;
        }
        Ok(())
    }

    async fn list_leases(&self) -> PortResult<Vec<ClusterLease>> {
        let pods = self.list_all(&self.pods(), "pods", &objects::managed_selector(&self.provider)).await?;
        let mut leases = Vec::with_capacity(pods.len());
        for pod in &pods {
            match objects::cluster_lease(pod, self.ssh_port) {
                Some(l) => leases.push(l),
                None => {
                    warn!(pod = %pod.name_any(), "managed pod without a valid lease-id label; ignored")
                }
            }
        }
        Ok(leases)
    }

    async fn get_lease(&self, lease_id: &str) -> PortResult<Option<ClusterLease>> {
        if !valid_lease_id(lease_id) {
            return Ok(None);
        }
        let selector = objects::lease_selector(&self.provider, lease_id);
        let pods = self.list_all(&self.pods(), "pods", &selector).await?;
        Ok(pods.iter().filter_map(|p| objects::cluster_lease(p, self.ssh_port)).find(|l| l.lease_id == lease_id))
    }

    async fn count_leases_of(&self, requester: &str) -> PortResult<usize> {
        let label = objects::requester_label(requester);
        if label.is_empty() {
            return Ok(0);
        }
        let selector = format!("{},{}={label}", objects::managed_selector(&self.provider), objects::LABEL_REQUESTER);
        let pods = self.list_all(&self.pods(), "pods", &selector).await?;
        Ok(pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count())
    }

    async fn room_for(&self, tier: &Tier) -> PortResult<Option<u64>> {
        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = self.call("-", Action::List, "resourcequotas", quotas.list(&ListParams::default())).await?;
        let eph = objects::LEASE_EPHEMERAL_STORAGE;
        let need = [
            ("pods", "1"),
            ("count/pods", "1"),
            ("services", "1"),
            ("cpu", tier.cpu.as_str()),
            ("requests.cpu", tier.cpu.as_str()),
            ("limits.cpu", tier.cpu.as_str()),
            ("memory", tier.memory.as_str()),
            ("requests.memory", tier.memory.as_str()),
            ("limits.memory", tier.memory.as_str()),
            ("ephemeral-storage", eph),
            ("requests.ephemeral-storage", eph),
            ("limits.ephemeral-storage", eph),
        ];
        let mut room: Option<u64> = None;
        for q in &list.items {
            let Some(status) = &q.status else { continue };
            let (Some(hard), Some(used)) = (&status.hard, &status.used) else { continue };
            if let Some(r) = objects::room_in_quota(hard, used, &need) {
                room = Some(room.map_or(r, |x| x.min(r)));
            }
        }
        Ok(room)
    }

    async fn list_orphans(&self) -> PortResult<Vec<OrphanObject>> {
        let selector = objects::managed_selector(&self.provider);
        // Services and Secrets before pods: a lease created between the two lists then shows its pod, and
        // is not mistaken for an orphan.
        let services = self.list_all(&self.services(), "services", &selector).await?;
        let secrets = self.list_all(&self.secrets(), "secrets", &selector).await?;
        let pods = self.list_all(&self.pods(), "pods", &selector).await?;
        let live: BTreeSet<&str> = pods.iter().filter_map(|p| lease_of(&p.metadata)).collect();
        let candidates =
            services.iter().map(|s| ("Service", &s.metadata)).chain(secrets.iter().map(|s| ("Secret", &s.metadata)));
        let mut orphans = Vec::new();
        for (kind, meta) in candidates {
            let Some(lease_id) = lease_of(meta) else {
                continue;
            };
            if live.contains(lease_id) || !older_than(meta, self.orphan_grace) {
                continue;
            }
            orphans.push(OrphanObject {
                kind: kind.to_string(),
                name: meta.name.clone().unwrap_or_default(),
                lease_id: lease_id.to_string(),
            });
        }
        Ok(orphans)
    }

    async fn delete_orphan(&self, orphan: &OrphanObject) -> PortResult<()> {
        // Only names this adapter makes: a bad record must not delete someone else's object.
        let not_ours = || KubeError::NotOurs { kind: orphan.kind.clone(), name: orphan.name.clone() };
        if !valid_lease_id(&orphan.lease_id) || !orphan.name.starts_with(&pod_name(&orphan.lease_id)) {
            return Err(not_ours().into());
        }
        let dp = DeleteParams::default();
        let id = orphan.lease_id.as_str();
        match orphan.kind.as_str() {
            "Service" => {
                self.delete_named(&self.services(), id, &format!("service/{}", orphan.name), &orphan.name, &dp).await?
            }
            "Secret" => {
                self.delete_named(&self.secrets(), id, &format!("secret/{}", orphan.name), &orphan.name, &dp).await?
            }
            _ => return Err(not_ours().into()),
        }
        Ok(())
    }

    async fn load_onion_key(&self, lease_id: &str) -> PortResult<Option<Vec<u8>>> {
        Self::check_id(lease_id)?;
        let name = onion_secret_name(lease_id);
        let secret = self.call(lease_id, Action::Get, &format!("secret/{name}"), self.secrets().get_opt(&name)).await?;
        // Another provider's key is never used (nor overwritten: creating ours then fails as a conflict).
        let ours = secret.filter(|s| objects::label(&s.metadata, objects::LABEL_PROVIDER) == Some(&self.provider));
        Ok(ours.and_then(|s| s.data).and_then(|mut d| d.remove(objects::ONION_KEY)).map(|b| b.0))
    }

    async fn store_pool_key(&self, slot: &str, key: &[u8]) -> PortResult<()> {
        Ok(self.store_pool_key_inner(slot, key).await?)
    }

    async fn list_pool_keys(&self) -> PortResult<Vec<PoolKey>> {
        Ok(self.list_pool_keys_inner().await?)
    }

    async fn take_pool_key(&self, slot: &str) -> PortResult<Option<Vec<u8>>> {
        Ok(self.take_pool_key_inner(slot).await?)
    }

    async fn store_onion_key(&self, lease_id: &str, key: &[u8]) -> PortResult<()> {
        Self::check_id(lease_id)?;
        let name = onion_secret_name(lease_id);
        let object = format!("secret/{name}");
        let pod = pod_name(lease_id);
        let found = self.call(lease_id, Action::Get, &format!("pod/{pod}"), self.pods().get_opt(&pod)).await?;
        let found = found.filter(|p| objects::label(&p.metadata, objects::LABEL_PROVIDER) == Some(&self.provider));
        let owner = found.as_ref().and_then(|p| p.metadata.uid.as_deref()).map(|uid| objects::pod_owner(&pod, uid));
        let request = found.as_ref().and_then(|p| objects::annotation(&p.metadata, objects::ANN_REQUEST));
        let secret = objects::onion_secret(&self.namespace, &self.provider, lease_id, request, key, owner);
        if self.create_idempotent(&self.secrets(), lease_id, &object, &secret).await?.is_none() {
            // The address must never change under a lease: an existing, different key is an error.
            let existing = self.load_onion_key(lease_id).await?;
            if existing.as_deref() != Some(key) {
                return Err(KubeError::OnionKeyConflict { lease_id: lease_id.to_string(), secret: name }.into());
            }
        }
        Ok(())
    }

    async fn ping(&self) -> PortResult<()> {
        // A namespaced list exercises what the provider needs (reachability, credentials, RBAC), unlike /version.
        let lp = ListParams::default().limit(1);
        self.call("-", Action::List, "pods", self.pods().list_metadata(&lp)).await?;
        Ok(())
    }
}
