//! Pure builders and readers of the Kubernetes objects of one lease: names, labels, the Secret, Pod and
//! Service specs, and what a listed pod says about its lease. No I/O here, so all of it is unit-tested.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::lease::ports::{AppliedTopUp, ClusterLease, PodPlan};

pub const LABEL_APP: &str = "app";
pub const APP: &str = "paygress-ssh-pod";
pub const LABEL_LEASE: &str = "paygress.io/lease-id";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "paygress";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Which provider made the object (see [`provider_id`]): a provider acts only on its own leases, so two
/// providers (or a stranger's objects) in one namespace are left alone.
pub const LABEL_PROVIDER: &str = "paygress.io/provider";
/// On lease pods: who holds the lease ([`requester_label`]), to count a requester's leases by label.
pub const LABEL_REQUESTER: &str = "paygress.io/requester";
/// Scratch disk of a lease pod (its writable layer, logs, emptyDirs): bounded, so one tenant cannot fill
/// the node's disk.
pub const LEASE_EPHEMERAL_STORAGE: &str = "1Gi";

pub const ANN_EXPIRES_AT: &str = "paygress.io/expires-at";
pub const ANN_REQUESTER: &str = "paygress.io/requester";
pub const ANN_TIER: &str = "paygress.io/tier";
/// Top-ups applied to the lease: `id:added_secs:expires_at`, comma-separated, oldest first.
pub const ANN_TOPUPS: &str = "paygress.io/topups";
/// Where the lease was paid, the rate paid (sats/hour), and how its owner is reached: an early end (the pod
/// failed) refunds the unused time there, at that rate, and tells the owner that way.
pub const ANN_MINT: &str = "paygress.io/mint";
pub const ANN_RATE: &str = "paygress.io/rate";
pub const ANN_REPLY_VIA: &str = "paygress.io/reply-via";
/// The request whose saga created the object: a saga adopts or deletes only objects that carry its own.
pub const ANN_REQUEST: &str = "paygress.io/request";

/// Data key of the auth Secret.
pub const PASSWORD_KEY: &str = "password";
/// Data key of the onion Secret: C tor's file name for the same key.
pub const ONION_KEY: &str = "hs_ed25519_secret_key";

pub const CONTAINER_NAME: &str = "ssh";
/// Where a tenant reads its lease from inside the pod (a downward-API volume of the pod's annotations, kept
/// current by the kubelet when a top-up moves the expiry): `expires-at` (unix seconds), `lease-id`, `tier`.
pub const LEASE_INFO_DIR: &str = "/etc/paygress/lease";
const LEASE_INFO_VOLUME: &str = "paygress-lease";
pub const PORT_NAME: &str = "ssh";

pub use crate::lease::ports::{provider_id, requester_label};

/// A provider id usable in a label selector (spliced into it, like a lease id).
pub fn valid_provider_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 63 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Selects every object this provider created (pods, Services, Secrets).
pub fn managed_selector(provider: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_NAME}={APP},{LABEL_PROVIDER}={provider}")
}

/// Selects the objects of one lease. `lease_id` must have passed [`valid_lease_id`]: it is spliced into a
/// selector, and an unchecked `a,b=c` would widen it.
pub fn lease_selector(provider: &str, lease_id: &str) -> String {
    format!("{},{LABEL_LEASE}={lease_id}", managed_selector(provider))
}

/// Longest lease id whose Service name (`ssh-pod-<id>-ssh`) is still a 63-character DNS label.
pub const MAX_LEASE_ID_LEN: usize = 63 - "ssh-pod-".len() - "-ssh".len();

/// A lease id usable in object names and label selectors: a DNS label short enough for every derived name.
pub fn valid_lease_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEASE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

pub fn pod_name(lease_id: &str) -> String {
    format!("ssh-pod-{lease_id}")
}
pub fn service_name(lease_id: &str) -> String {
    format!("ssh-pod-{lease_id}-ssh")
}
pub fn auth_secret_name(lease_id: &str) -> String {
    format!("ssh-pod-{lease_id}-auth")
}
pub fn onion_secret_name(lease_id: &str) -> String {
    format!("ssh-pod-{lease_id}-onion")
}

/// Labels of every object this provider manages (what [`managed_selector`] selects).
pub fn base_labels(provider: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_NAME.to_string(), APP.to_string()),
        (LABEL_PROVIDER.to_string(), provider.to_string()),
    ])
}

/// Labels of every object of a lease; pods also get `app=` (the NetworkPolicy and Service select on it).
pub fn labels(provider: &str, lease_id: &str, is_pod: bool) -> BTreeMap<String, String> {
    let mut l = base_labels(provider);
    l.insert(LABEL_LEASE.to_string(), lease_id.to_string());
    if is_pod {
        l.insert(LABEL_APP.to_string(), APP.to_string());
    }
    l
}

/// Metadata of one lease object: labels, and the creating request as an annotation.
fn meta(name: String, plan: &PodPlan, is_pod: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(&plan.provider, &plan.lease_id, is_pod)),
        annotations: Some(BTreeMap::from([(ANN_REQUEST.to_string(), plan.request_id.clone())])),
        ..Default::default()
    }
}

/// Whether an object found under a lease's name was made by this provider for this request.
pub fn made_by(meta: &ObjectMeta, provider: &str, request_id: &str) -> bool {
    label(meta, LABEL_PROVIDER) == Some(provider) && annotation(meta, ANN_REQUEST) == Some(request_id)
}

/// Owner reference to the lease pod, so that on a cluster with a garbage collector a deleted pod takes its
/// Service and onion Secret along even if the provider never gets to it. Not blocking: that would need
/// extra RBAC (OwnerReferencesPermissionEnforcement) and buys nothing here.
pub fn pod_owner(pod_name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod_name.to_string(),
        uid: uid.to_string(),
        controller: Some(false),
        block_owner_deletion: None,
    }
}

/// The Secret holding the SSH password, or None when the plan has no password (key-only login).
pub fn auth_secret(plan: &PodPlan) -> Option<Secret> {
    let pw = plan.ssh_password.as_ref()?;
    Some(Secret {
        metadata: meta(auth_secret_name(&plan.lease_id), plan, false),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(PASSWORD_KEY.to_string(), ByteString(pw.as_bytes().to_vec()))])),
        // Nothing in the pod ever rewrites it.
        immutable: Some(true),
        ..Default::default()
    })
}

/// The onion key's Secret. `request_id` is the lease pod's creating request (the Secret is made later,
/// by whichever launch first needs the key), so a failed saga's cleanup finds it as its own.
pub fn onion_secret(
    namespace: &str,
    provider: &str,
    lease_id: &str,
    request_id: Option<&str>,
    key: &[u8],
    owner: Option<OwnerReference>,
) -> Secret {
    let metadata = ObjectMeta {
        name: Some(onion_secret_name(lease_id)),
        namespace: Some(namespace.to_string()),
        labels: Some(labels(provider, lease_id, false)),
        annotations: request_id.map(|r| BTreeMap::from([(ANN_REQUEST.to_string(), r.to_string())])),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    };
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(ONION_KEY.to_string(), ByteString(key.to_vec()))])),
        immutable: Some(true),
        ..Default::default()
    }
}

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

/// Environment as linuxserver/openssh-server reads it. The password only ever travels as a secretKeyRef.
fn env(plan: &PodPlan) -> Vec<EnvVar> {
    let mut env = vec![
        literal("PUID", "1000"),
        literal("PGID", "1000"),
        literal("TZ", "UTC"),
        literal("USER_NAME", plan.ssh_username.clone()),
    ];
    if let Some(key) = &plan.ssh_public_key {
        env.push(literal("PUBLIC_KEY", key.clone()));
    }
    // A key, when given, is the only way in: password login stays off even if a password was also made.
    let password_access = plan.ssh_password.is_some() && plan.ssh_public_key.is_none();
    if plan.ssh_password.is_some() {
        env.push(EnvVar {
            name: "USER_PASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: auth_secret_name(&plan.lease_id),
                    key: PASSWORD_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        });
    }
    env.push(literal("PASSWORD_ACCESS", if password_access { "true" } else { "false" }));
    env
}

pub fn pod(plan: &PodPlan) -> Pod {
    let mut metadata = meta(plan.pod_name.clone(), plan, true);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_REQUESTER.to_string(), requester_label(&plan.requester));
    metadata.annotations.get_or_insert_with(BTreeMap::new).extend([
        (ANN_EXPIRES_AT.to_string(), plan.expires_at.to_string()),
        (ANN_REQUESTER.to_string(), plan.requester.clone()),
        (ANN_TIER.to_string(), plan.tier.name.clone()),
        (ANN_MINT.to_string(), plan.mint_url.clone()),
        (ANN_RATE.to_string(), plan.rate_sats_per_hour.to_string()),
        (ANN_REPLY_VIA.to_string(), plan.reply_via.as_str().to_string()),
    ]);
    let quantities = BTreeMap::from([
        ("cpu".to_string(), Quantity(plan.tier.cpu.clone())),
        ("memory".to_string(), Quantity(plan.tier.memory.clone())),
        ("ephemeral-storage".to_string(), Quantity(LEASE_EPHEMERAL_STORAGE.to_string())),
    ]);
    let port = i32::from(plan.ssh_port);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(plan.image.clone()),
        image_pull_policy: Some(plan.image_pull_policy.clone()),
        env: Some(env(plan)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // requests = limits: Guaranteed QoS, the tier is what was paid for, no more, no less.
        resources: Some(ResourceRequirements {
            requests: Some(quantities.clone()),
            limits: Some(quantities),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: LEASE_INFO_VOLUME.into(),
            mount_path: LEASE_INFO_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port), host: None }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            // The image starts as root (s6-overlay init), fixes the user's uid/gid and home ownership, then
            // runs sshd as that user (port 2222, so no NET_BIND_SERVICE). Root in the init needs exactly:
            // CHOWN (chown /config to the user), FOWNER + DAC_OVERRIDE (chmod/write files root does not own,
            // e.g. the user's ~/.ssh), SETUID + SETGID (s6-setuidgid drops to the user). Everything else —
            // NET_RAW, MKNOD, SYS_CHROOT, KILL, AUDIT_WRITE… — is dropped.
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"].map(String::from).to_vec()),
            }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            // The pod never talks to the API server, and must not be handed a token to do so.
            automount_service_account_token: Some(false),
            // A sandboxed tier (e.g. gVisor) does not share the node's kernel with its tenant.
            runtime_class_name: plan.tier.runtime_class.clone(),
            volumes: Some(vec![lease_info_volume()]),
            // No env vars advertising every Service of the namespace (other tenants' ssh Services).
            enable_service_links: Some(false),
            // OnFailure: a crash or OOM kill of the leased container restarts it in place (same pod IP, so
            // Service and onion target stay right) for the rest of the paid time. Never would strand a paying
            // user after one crash; Always would also resurrect a container the user deliberately shut down
            // (exit 0). The lease's end is the provider deleting the pod, which no policy affects; and
            // activeDeadlineSeconds is not used since it cannot be raised on top-up.
            restart_policy: Some("OnFailure".into()),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The lease as its tenant sees it: the pod's own annotations and labels, no API access needed (no token,
/// no exec rights for anyone). No secret is among them.
fn lease_info_volume() -> Volume {
    let field = |path: &str, field_path: &str| DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), api_version: None }),
        ..Default::default()
    };
    Volume {
        name: LEASE_INFO_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![
                field("expires-at", &format!("metadata.annotations['{ANN_EXPIRES_AT}']")),
                field("tier", &format!("metadata.annotations['{ANN_TIER}']")),
                field("lease-id", &format!("metadata.labels['{LABEL_LEASE}']")),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service(plan: &PodPlan, owner: Option<OwnerReference>) -> Service {
    let mut metadata = meta(plan.service_name.clone(), plan, false);
    metadata.owner_references = owner.map(|o| vec![o]);
    let mut selector = BTreeMap::from([(LABEL_LEASE.to_string(), plan.lease_id.clone())]);
    selector.insert(LABEL_APP.to_string(), APP.to_string());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: i32::from(plan.ssh_port),
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

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

pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
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

/// A Kubernetes quantity in thousandths of its unit ("500m" → 500, "1" → 1000, "1Ki" → 1 024 000), or
/// None for what this reader does not understand (then nothing is concluded from it).
pub fn milli_quantity(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let frac3: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    let base: u128 = whole.parse::<u128>().unwrap_or(0).checked_mul(1000)?.checked_add(frac3.parse::<u128>().ok()?)?;
    let mult: u128 = match suffix {
        "" => 1,
        "m" => return Some(base / 1000),
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    base.checked_mul(mult)
}

/// How many more pods of this need fit in a quota of `hard` with `used` taken; the smallest over every
/// resource both name (None when none is named).
pub fn room_in_quota(
    hard: &BTreeMap<String, Quantity>,
    used: &BTreeMap<String, Quantity>,
    need: &[(&str, &str)],
) -> Option<u64> {
    let mut room: Option<u64> = None;
    for (resource, amount) in need {
        let (Some(h), Some(u)) = (hard.get(*resource), used.get(*resource)) else { continue };
        let (Some(h), Some(u), Some(n)) = (milli_quantity(&h.0), milli_quantity(&u.0), milli_quantity(amount)) else {
            continue;
        };
        let fits = h.saturating_sub(u).checked_div(n).map_or(u64::MAX, |f| u64::try_from(f).unwrap_or(u64::MAX));
        room = Some(room.map_or(fits, |r| r.min(fits)));
    }
    room
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Tier;

    fn plan(password: Option<&str>, key: Option<&str>) -> PodPlan {
        PodPlan {
            lease_id: "abc123".into(),
            pod_name: pod_name("abc123"),
            service_name: service_name("abc123"),
            namespace: "user-workloads".into(),
            image: "lscr.io/linuxserver/openssh-server:latest".into(),
            image_pull_policy: "IfNotPresent".into(),
            ssh_username: "alice".into(),
            ssh_password: password.map(String::from),
            ssh_public_key: key.map(String::from),
            tier: Tier::new("basic", "500m", "512Mi", 100),
            ssh_port: 2222,
            expires_at: 1_900_000_000,
            requester: "ab".repeat(32),
            request_id: "cd".repeat(32),
            provider: "0123abcd".into(),
            mint_url: "http://mint.test".into(),
            rate_sats_per_hour: 100,
            reply_via: crate::lease::ports::ReplyVia::GiftWrap,
        }
    }

    fn env_of(p: &Pod) -> Vec<EnvVar> {
        p.spec.as_ref().unwrap().containers[0].env.clone().unwrap()
    }

    fn env_value(p: &Pod, name: &str) -> Option<String> {
        env_of(p).into_iter().find(|e| e.name == name).and_then(|e| e.value)
    }

    #[test]
    fn lease_ids_are_checked_before_use_in_names_and_selectors() {
        assert!(valid_lease_id("abc-123"));
        assert!(valid_lease_id(&"a".repeat(MAX_LEASE_ID_LEN)));
        assert!(!valid_lease_id(&"a".repeat(MAX_LEASE_ID_LEN + 1)));
        for bad in ["", "-a", "a-", "A", "a,b=c", "a b", "a/b", "a.b", "a_b"] {
            assert!(!valid_lease_id(bad), "{bad:?}");
        }
        assert_eq!(service_name(&"a".repeat(MAX_LEASE_ID_LEN)).len(), 63);
        assert_eq!(
            lease_selector("0123abcd", "x1"),
            "app.kubernetes.io/managed-by=paygress,app.kubernetes.io/name=paygress-ssh-pod,\
             paygress.io/provider=0123abcd,paygress.io/lease-id=x1"
        );
        assert!(valid_provider_id(&provider_id(&"AB".repeat(32))));
        assert_eq!(provider_id(&"ab".repeat(32)).len(), 32);
        for bad in ["", "a,b=c", "A", "a-b"] {
            assert!(!valid_provider_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn password_travels_only_through_the_secret() {
        let p = plan(Some("hunter2-secret"), None);
        let pod = pod(&p);
        let json = serde_json::to_string(&pod).unwrap();
        assert!(!json.contains("hunter2-secret"), "password leaked into the pod spec");
        let pw = env_of(&pod).into_iter().find(|e| e.name == "USER_PASSWORD").unwrap();
        assert!(pw.value.is_none());
        let r = pw.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("ssh-pod-abc123-auth", PASSWORD_KEY));
        assert_eq!(env_value(&pod, "PASSWORD_ACCESS").as_deref(), Some("true"));
        assert_eq!(env_value(&pod, "USER_NAME").as_deref(), Some("alice"));
        assert_eq!(env_value(&pod, "PUID").as_deref(), Some("1000"));

        let s = auth_secret(&p).unwrap();
        assert_eq!(s.data.unwrap()[PASSWORD_KEY].0, b"hunter2-secret");
        let s_meta = serde_json::to_string(&s.metadata).unwrap();
        assert!(!s_meta.contains("hunter2"));
        assert!(auth_secret(&plan(None, Some("ssh-ed25519 AAAA"))).is_none());
    }

    #[test]
    fn a_public_key_turns_password_login_off() {
        let pod = pod(&plan(None, Some("ssh-ed25519 AAAAC3 k")));
        assert_eq!(env_value(&pod, "PUBLIC_KEY").as_deref(), Some("ssh-ed25519 AAAAC3 k"));
        assert_eq!(env_value(&pod, "PASSWORD_ACCESS").as_deref(), Some("false"));
        assert!(env_of(&pod).iter().all(|e| e.name != "USER_PASSWORD"));
        let both = super::pod(&plan(Some("pw"), Some("ssh-ed25519 AAAAC3 k")));
        assert_eq!(env_value(&both, "PASSWORD_ACCESS").as_deref(), Some("false"));
    }

    #[test]
    fn pod_is_locked_down_and_labelled() {
        let pod = pod(&plan(Some("pw"), None));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
        let c = &spec.containers[0];
        // `:latest` would default to Always: a pull on every lease start.
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(caps.add.as_ref().unwrap().len(), 5);
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.requests, res.limits);
        assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "512Mi");
        assert_eq!(res.limits.as_ref().unwrap()["ephemeral-storage"].0, LEASE_EPHEMERAL_STORAGE);
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 2222);
        assert_eq!(c.ports.as_ref().unwrap()[0].name.as_deref(), Some("ssh"));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (LEASE_INFO_DIR, Some(true)));
        let vol = &spec.volumes.as_ref().unwrap()[0];
        let items = vol.downward_api.as_ref().unwrap().items.as_ref().unwrap();
        assert!(items.iter().any(|i| i.path == "expires-at"
            && i.field_ref.as_ref().unwrap().field_path == "metadata.annotations['paygress.io/expires-at']"));
        let probe = c.readiness_probe.as_ref().unwrap().tcp_socket.as_ref().unwrap();
        assert_eq!(probe.port, IntOrString::Int(2222));

        let l = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(l[LABEL_APP], APP);
        assert_eq!(l[LABEL_LEASE], "abc123");
        assert_eq!(l[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(l[LABEL_NAME], APP);
        let a = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[ANN_EXPIRES_AT], "1900000000");
        assert_eq!(a[ANN_TIER], "basic");
        assert_eq!(a[ANN_REQUESTER], "ab".repeat(32));
        assert_eq!(l[LABEL_PROVIDER], "0123abcd");
        assert_eq!(a[ANN_REQUEST], "cd".repeat(32));
    }

    #[test]
    fn a_sandboxed_tier_names_its_runtime_class() {
        let mut p = plan(Some("pw"), None);
        assert_eq!(pod(&p).spec.unwrap().runtime_class_name, None);
        p.tier.runtime_class = Some("gvisor".into());
        assert_eq!(pod(&p).spec.unwrap().runtime_class_name.as_deref(), Some("gvisor"));
    }

    #[test]
    fn quantities_and_quota_room() {
        assert_eq!(milli_quantity("500m"), Some(500));
        assert_eq!(milli_quantity("1"), Some(1000));
        assert_eq!(milli_quantity("1.5"), Some(1500));
        assert_eq!(milli_quantity("512Mi"), Some(512 * 1024 * 1024 * 1000));
        assert_eq!(milli_quantity("1Gi"), Some(1024 * 1024 * 1024 * 1000));
        assert_eq!(milli_quantity("2G"), Some(2_000_000_000_000));
        assert_eq!(milli_quantity("lots"), None);
        let q = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
            pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
        };
        let hard = q(&[("pods", "10"), ("requests.cpu", "2"), ("requests.memory", "4Gi")]);
        let used = q(&[("pods", "3"), ("requests.cpu", "1500m"), ("requests.memory", "1Gi")]);
        let need = [("pods", "1"), ("requests.cpu", "500m"), ("requests.memory", "512Mi"), ("limits.cpu", "500m")];
        assert_eq!(room_in_quota(&hard, &used, &need), Some(1), "cpu is the bound");
        assert_eq!(room_in_quota(&hard, &q(&[]), &need), None, "usage unknown: nothing concluded");
    }

    #[test]
    fn every_object_names_its_provider_and_request() {
        let p = plan(Some("pw"), None);
        let metas = [
            pod(&p).metadata,
            service(&p, None).metadata,
            auth_secret(&p).unwrap().metadata,
            onion_secret(&p.namespace, &p.provider, &p.lease_id, Some(&p.request_id), &[1; 64], None).metadata,
        ];
        for m in &metas {
            assert!(made_by(m, "0123abcd", &"cd".repeat(32)), "{m:?}");
            assert!(!made_by(m, "0123abcd", &"ef".repeat(32)), "another request's object must not pass");
            assert!(!made_by(m, "99999999", &"cd".repeat(32)), "another provider's object must not pass");
        }
    }

    #[test]
    fn topup_records_round_trip_and_skip_garbage() {
        let t = vec![
            AppliedTopUp { id: "a1b2".into(), added_secs: 3600, expires_at: 1_900_000_000 },
            AppliedTopUp { id: "c3d4".into(), added_secs: 60, expires_at: 1_900_000_060 },
        ];
        assert_eq!(parse_topups(&format_topups(&t)), t);
        assert_eq!(parse_topups("a1b2:3600:1900000000,junk,:1:2,x:y:z"), t[..1]);
        assert!(parse_topups("").is_empty());
    }

    #[test]
    fn service_selects_the_lease_pod_by_label() {
        let p = plan(Some("pw"), None);
        let s = service(&p, Some(pod_owner("ssh-pod-abc123", "uid-1")));
        assert_eq!(s.metadata.name.as_deref(), Some("ssh-pod-abc123-ssh"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let sel = spec.selector.unwrap();
        assert_eq!(sel[LABEL_LEASE], "abc123");
        // Every selector label is on the pod.
        let pod_labels = pod(&p).metadata.labels.unwrap();
        assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(spec.ports.unwrap()[0].port, 2222);
        assert_eq!(s.metadata.labels.unwrap()[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(s.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    fn pod_json(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn progress_reads_phase_ip_and_fatal_reasons() {
        let base = pod(&plan(Some("pw"), None));
        let mut p = base.clone();
        assert!(matches!(progress(&p, 2222), PodProgress::Pending(_)));

        p.status =
            Some(pod_json(serde_json::json!({"status": {"phase": "Running", "podIP": "127.0.100.7"}})).status.unwrap());
        assert_eq!(progress(&p, 1), PodProgress::Running("127.0.100.7:2222".parse().unwrap()));

        p.status = Some(pod_json(serde_json::json!({"status": {"phase": "Running"}})).status.unwrap());
        assert!(matches!(progress(&p, 2222), PodProgress::Pending(_)));

        p.status =
            Some(pod_json(serde_json::json!({"status": {"phase": "Failed", "reason": "Evicted"}})).status.unwrap());
        assert_eq!(progress(&p, 2222), PodProgress::Dead("pod phase Failed Evicted".into()));

        p.status = Some(
            pod_json(serde_json::json!({"status": {"phase": "Pending", "containerStatuses": [
                {"name": "ssh", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "InvalidImageName"}}}]}}))
            .status
            .unwrap(),
        );
        assert!(matches!(progress(&p, 2222), PodProgress::Dead(m) if m.contains("InvalidImageName")));

        let mut gone = base;
        gone.metadata.deletion_timestamp = Some(
            pod_json(serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}))
                .metadata
                .deletion_timestamp
                .unwrap(),
        );
        assert!(matches!(progress(&gone, 2222), PodProgress::Dead(_)));
    }

    #[test]
    fn cluster_lease_tolerates_missing_or_garbage_annotations() {
        let mut p = pod(&plan(Some("pw"), None));
        let l = cluster_lease(&p, 2222).unwrap();
        assert_eq!(l.lease_id, "abc123");
        assert_eq!(l.mint_url.as_deref(), Some("http://mint.test"));
        assert_eq!(l.rate_sats_per_hour, Some(100));
        assert_eq!(l.reply_via, Some(crate::lease::ports::ReplyVia::GiftWrap));
        assert_eq!(l.failed, None);
        let mut evicted = p.clone();
        evicted.status =
            Some(pod_json(serde_json::json!({"status": {"phase": "Failed", "reason": "Evicted"}})).status.unwrap());
        assert_eq!(cluster_lease(&evicted, 2222).unwrap().failed.as_deref(), Some("pod phase Failed Evicted"));
        assert_eq!(l.expires_at, Some(1_900_000_000));
        assert_eq!(l.tier.as_deref(), Some("basic"));
        assert_eq!(l.ssh_endpoint, None);
        assert!(!l.terminating);

        p.metadata.annotations.as_mut().unwrap().insert(ANN_EXPIRES_AT.into(), "soon".into());
        assert_eq!(cluster_lease(&p, 2222).unwrap().expires_at, None);
        p.metadata.annotations = None;
        let l = cluster_lease(&p, 2222).unwrap();
        assert_eq!((l.expires_at, l.requester), (None, None));

        p.metadata.labels.as_mut().unwrap().insert(LABEL_LEASE.into(), "Bad,Id".into());
        assert!(cluster_lease(&p, 2222).is_none());
    }
}
