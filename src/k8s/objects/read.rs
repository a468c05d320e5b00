//! What a listed pod says about its lease: progress while it starts, and the lease it records.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;

use crate::lease::ports::{AppliedTopUp, ClusterLease};

use super::*;

/// What a pod tells while we wait for it to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodProgress {
    /// Running with an IP: SSH should answer here.
    Running(SocketAddr),
    /// Not yet; the text says why (for the timeout message).
    Pending(String),
    /// It will never run: phase Failed/Succeeded, being deleted, or a spec the node can never start.
    Dead(String),
}

/// Container waiting reasons after which the pod can never start without a new spec.
const FATAL_WAITING: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];

/// The SSH port the pod declares (its `ssh` containerPort), else `default`.
pub fn declared_ssh_port(pod: &Pod, default: u16) -> u16 {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.containers.iter().flat_map(|c| c.ports.iter().flatten()).find(|p| p.name.as_deref() == Some(PORT_NAME))
        })
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(default)
}

pub fn progress(pod: &Pod, default_port: u16) -> PodProgress {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodProgress::Dead("the pod is being deleted".into());
    }
    let Some(status) = &pod.status else {
        return PodProgress::Pending("no status yet (not scheduled)".into());
    };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .filter_map(|w| w.reason.clone())
        .collect::<Vec<_>>();
    match phase {
        "Failed" | "Succeeded" => {
            let why = status.reason.clone().or_else(|| status.message.clone()).unwrap_or_default();
            PodProgress::Dead(format!("pod phase {phase} {why}").trim_end().to_string())
        }
        _ if waiting.iter().any(|r| FATAL_WAITING.contains(&r.as_str())) => {
            PodProgress::Dead(format!("container cannot start: {}", waiting.join(", ")))
        }
        "Running" => match status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) {
            Some(ip) => PodProgress::Running(SocketAddr::new(ip, declared_ssh_port(pod, default_port))),
            None => PodProgress::Pending("running but no pod IP yet".into()),
        },
        _ if waiting.is_empty() => PodProgress::Pending(format!("phase {phase}")),
        _ => PodProgress::Pending(format!("phase {phase}, waiting: {}", waiting.join(", "))),
    }
}

/// The lease a managed pod belongs to; None for a pod without a usable lease-id label.
pub fn cluster_lease(pod: &Pod, default_port: u16) -> Option<ClusterLease> {
    let lease_id = label(&pod.metadata, LABEL_LEASE).filter(|id| valid_lease_id(id))?;
    let (ssh_endpoint, failed) = match progress(pod, default_port) {
        PodProgress::Running(addr) => (Some(addr), None),
        PodProgress::Dead(why) if pod.metadata.deletion_timestamp.is_none() => (None, Some(why)),
        _ => (None, None),
    };
    Some(ClusterLease {
        lease_id: lease_id.to_string(),
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        expires_at: annotation(&pod.metadata, ANN_EXPIRES_AT).and_then(|v| v.trim().parse::<u64>().ok()),
        requester: annotation(&pod.metadata, ANN_REQUESTER).map(String::from),
        tier: annotation(&pod.metadata, ANN_TIER).map(String::from),
        ssh_endpoint,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        topups: annotation(&pod.metadata, ANN_TOPUPS).map(parse_topups).unwrap_or_default(),
        version: pod.metadata.resource_version.clone(),
        request_id: annotation(&pod.metadata, ANN_REQUEST).map(String::from),
        mint_url: annotation(&pod.metadata, ANN_MINT).map(String::from),
        rate_sats_per_hour: annotation(&pod.metadata, ANN_RATE).and_then(|v| v.parse().ok()),
        reply_via: annotation(&pod.metadata, ANN_REPLY_VIA).and_then(crate::lease::ports::ReplyVia::parse),
        failed,
        created_at: pod.metadata.creation_timestamp.as_ref().and_then(|t| u64::try_from(t.0.as_second()).ok()),
    })
}

pub fn format_topups(topups: &[AppliedTopUp]) -> String {
    let entries: Vec<String> = topups.iter().map(|t| format!("{}:{}:{}", t.id, t.added_secs, t.expires_at)).collect();
    entries.join(",")
}

/// Unreadable entries are skipped: the record only prevents double application, it never grants time.
pub fn parse_topups(value: &str) -> Vec<AppliedTopUp> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().splitn(3, ':');
            let id = parts.next().filter(|id| !id.is_empty())?.to_string();
            let added_secs = parts.next()?.parse().ok()?;
            let expires_at = parts.next()?.parse().ok()?;
            Some(AppliedTopUp { id, added_secs, expires_at })
        })
        .collect()
}
