//! Pure builders and readers of the Kubernetes objects of one lease: names, labels, the Secret, Pod and
//! Service specs, and what a listed pod says about its lease. No I/O here, so all of it is unit-tested.

mod build;
mod quota;
mod read;
#[cfg(test)]
mod tests;

pub use build::{auth_secret, onion_secret, pod, service};
pub use quota::{milli_quantity, room_in_quota};
pub use read::{cluster_lease, declared_ssh_port, format_topups, parse_topups, progress, PodProgress};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::lease::ports::PodPlan;

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

pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}
