//! The Node object: created on start, its Ready condition and Lease kept fresh.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::{info, warn};

pub const HOST_IP: &str = "127.0.0.1";
const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i64 = 40;

pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub struct NodeAgent {
    client: Client,
    name: String,
    pod_cidr: String,
    kubelet_port: u16,
    started: String,
}

impl NodeAgent {
    pub fn new(client: Client, name: &str, pod_cidr: &str, kubelet_port: u16) -> Self {
        NodeAgent {
            client,
            name: name.to_string(),
            pod_cidr: pod_cidr.to_string(),
            kubelet_port,
            started: now_rfc3339(),
        }
    }

    /// Create the Node if missing, then publish its full status.
    pub async fn ensure(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        if nodes.get_opt(&self.name).await?.is_none() {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": self.name,
                    "labels": {
                        "kubernetes.io/hostname": self.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": go_arch(),
                        "paygress.dev/stack-node": "true",
                    },
                },
                "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            }))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => info!(node = %self.name, "node created"),
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(e) => return Err(e).context("creating node"),
            }
        }
        self.patch_status(true).await?;
        info!(node = %self.name, "node status published (Ready)");
        Ok(())
    }

    async fn patch_status(&self, full: bool) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = now_rfc3339();
        let cond = |ty: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": ty, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": self.started,
            })
        };
        let conditions = json!([
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "stack-node has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "stack-node has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "stack-node has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "stack-node is posting ready status"),
        ]);
        let status = if full {
            let resources = json!({"cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi"});
            json!({
                "capacity": resources,
                "allocatable": resources,
                "conditions": conditions,
                "addresses": [
                    {"type": "InternalIP", "address": HOST_IP},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
                "nodeInfo": {
                    "machineID": "stack-node", "systemUUID": "stack-node", "bootID": self.started,
                    "kernelVersion": kernel_version(), "osImage": "paygress test stack",
                    "containerRuntimeVersion": "stack-node://0.1.0",
                    "kubeletVersion": "v1.36.3", "kubeProxyVersion": "",
                    "operatingSystem": "linux", "architecture": go_arch(),
                },
            })
        } else {
            json!({"conditions": conditions})
        };
        nodes
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .context("patching node status")?;
        Ok(())
    }

    async fn renew_lease(&self) -> anyhow::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
        });
        leases
            .patch(&self.name, &PatchParams::apply("stack-node").force(), &Patch::Apply(body))
            .await
            .context("renewing node lease")?;
        Ok(())
    }

    /// Runs forever: Ready heartbeat (recreating the Node if someone deleted it) and Lease.
    pub async fn heartbeat(self) {
        let mut lease_warned = false;
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let res = match self.patch_status(false).await {
                Err(e) if is_not_found(&e) => self.ensure().await,
                r => r,
            };
            if let Err(e) = res {
                warn!(node = %self.name, "node heartbeat: {e:#}");
            }
            match self.renew_lease().await {
                Ok(()) => lease_warned = false,
                Err(e) if !lease_warned => {
                    warn!(node = %self.name, "{e:#} (ignored; nothing reads it without a controller-manager)");
                    lease_warned = true;
                }
                Err(_) => {}
            }
        }
    }
}

/// Architecture name as Kubernetes (GOARCH) spells it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.is_not_found()))
}
