//! Errors of the k8s adapter and how the lease logic should treat each.

use std::time::Duration;

use crate::lease::ports::{FailureKind, PortError};
use crate::protocol::ErrorCode;

/// What the adapter was doing, for context in logs and for classifying API refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Get,
    List,
    Watch,
    Patch,
    Delete,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Get => "get",
            Action::List => "list",
            Action::Watch => "watch",
            Action::Patch => "patch",
            Action::Delete => "delete",
        })
    }
}

/// An API server message is shown to requesters for `Rejected`; keep it short.
const MAX_API_MESSAGE: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("k8s client configuration: {message}")]
    Config { message: String },

    #[error("lease id {lease_id:?} is not a valid lease id")]
    InvalidLeaseId { lease_id: String },

    #[error("lease {lease_id}: plan names {found:?}, expected {expected:?}")]
    PlanMismatch { lease_id: String, expected: String, found: String },

    /// The API server answered with an error status.
    #[error("lease {lease_id}: {action} {object} refused by the API server: {code} {reason}: {message}")]
    Api { lease_id: String, action: Action, object: String, code: u16, reason: String, message: String },

    /// No usable answer: connection, TLS, timeout of the call, undecodable body.
    #[error("lease {lease_id}: {action} {object}: {message}")]
    Transport { lease_id: String, action: Action, object: String, message: String, permanent: bool },

    #[error("lease {lease_id}: pod {pod} not found")]
    PodNotFound { lease_id: String, pod: String },

    #[error("lease {lease_id}: pod {pod} will not run: {why}")]
    PodDead { lease_id: String, pod: String, why: String },

    #[error("lease {lease_id}: pod {pod} not running after {waited:?} ({last})")]
    Timeout { lease_id: String, pod: String, waited: Duration, last: String },

    #[error("lease {lease_id}: a different onion key is already stored in {secret}")]
    OnionKeyConflict { lease_id: String, secret: String },

    #[error("lease {lease_id}: {secret} holds another password and the pod already uses it")]
    AuthSecretConflict { lease_id: String, secret: String },

    #[error("orphan {kind}/{name}: not an object this adapter deletes")]
    NotOurs { kind: String, name: String },

    /// An object of the lease's name exists but another request or provider made it: never adopted.
    #[error("lease {lease_id}: {object} already exists and was not made by this request")]
    Taken { lease_id: String, object: String },

    #[error("provider id {provider:?} is not a valid label value")]
    InvalidProvider { provider: String },
}

impl KubeError {
    pub(crate) fn from_kube(lease_id: &str, action: Action, object: &str, err: kube::Error) -> Self {
        let lease_id = lease_id.to_string();
        let object = object.to_string();
        match err {
            kube::Error::Api(status) => {
                let mut message = status.message.clone();
                if message.len() > MAX_API_MESSAGE {
                    let mut cut = MAX_API_MESSAGE;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                    message.push('…');
                }
                KubeError::Api { lease_id, action, object, code: status.code, reason: status.reason.clone(), message }
            }
            // A body we cannot decode or a request we cannot build will not improve on retry.
            e @ (kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) | kube::Error::HttpError(_)) => {
                KubeError::Transport { lease_id, action, object, message: e.to_string(), permanent: true }
            }
            e => KubeError::Transport { lease_id, action, object, message: e.to_string(), permanent: false },
        }
    }

    pub(crate) fn call_timeout(lease_id: &str, action: Action, object: &str, after: Duration) -> Self {
        KubeError::Transport {
            lease_id: lease_id.to_string(),
            action,
            object: object.to_string(),
            message: format!("no answer within {after:?}"),
            permanent: false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { code: 404, .. })
    }

    /// A precondition (uid, resourceVersion) that no longer holds.
    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Api { code: 409, reason, .. } if reason != "AlreadyExists")
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, KubeError::Api { code: 409, reason, .. } if reason == "AlreadyExists")
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            KubeError::Config { .. }
            | KubeError::PlanMismatch { .. }
            | KubeError::NotOurs { .. }
            | KubeError::Taken { .. }
            | KubeError::InvalidProvider { .. } => FailureKind::Permanent,
            KubeError::InvalidLeaseId { .. } | KubeError::PodNotFound { .. } => {
                FailureKind::Rejected(ErrorCode::LeaseNotFound)
            }
            KubeError::OnionKeyConflict { .. } | KubeError::AuthSecretConflict { .. } => FailureKind::Permanent,
            KubeError::PodDead { .. } => FailureKind::Rejected(ErrorCode::ProvisioningFailed),
            KubeError::Timeout { .. } => FailureKind::Transient,
            KubeError::Transport { permanent, .. } => {
                if *permanent {
                    FailureKind::Permanent
                } else {
                    FailureKind::Transient
                }
            }
            KubeError::Api { action, object, code, reason, message, .. } => {
                api_kind(*action, object, *code, reason, message)
            }
        }
    }
}

/// Classify an API error status. Creating the pod is where the cluster judges what was sold: a spec it
/// refuses (invalid, over quota, forbidden by policy) means the lease cannot be provisioned as asked, so
/// the requester is answered (and refunded) rather than retried forever.
fn api_kind(action: Action, object: &str, code: u16, reason: &str, message: &str) -> FailureKind {
    let creating_pod = action == Action::Create && object.starts_with("pod/");
    match code {
        // Too many requests, server-side timeouts, etcd hiccups, the apiserver restarting.
        429 | 500 | 502 | 503 | 504 => FailureKind::Transient,
        // Conflict on update (resourceVersion) or an object still being deleted: try again.
        409 if reason != "AlreadyExists" => FailureKind::Transient,
        400 | 422 if action == Action::Create => FailureKind::Rejected(ErrorCode::ProvisioningFailed),
        // ResourceQuota and admission policies answer 403 with a message; plain RBAC denials are our
        // deployment's fault.
        403 if creating_pod && !message.contains("cannot create resource") => {
            FailureKind::Rejected(ErrorCode::ProvisioningFailed)
        }
        404 if matches!(action, Action::Patch | Action::Get) && object.starts_with("pod/") => {
            FailureKind::Rejected(ErrorCode::LeaseNotFound)
        }
        _ => FailureKind::Permanent,
    }
}

impl From<KubeError> for PortError {
    fn from(e: KubeError) -> Self {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(action: Action, object: &str, code: u16, reason: &str, message: &str) -> KubeError {
        KubeError::Api {
            lease_id: "l1".into(),
            action,
            object: object.into(),
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn api_statuses_map_to_failure_kinds() {
        let pf = FailureKind::Rejected(ErrorCode::ProvisioningFailed);
        assert_eq!(api(Action::Create, "pod/p", 422, "Invalid", "spec.containers[0].image: Invalid").kind(), pf);
        assert_eq!(api(Action::Create, "pod/p", 403, "Forbidden", "exceeded quota: q, requested: cpu=1").kind(), pf);
        assert_eq!(
            api(
                Action::Create,
                "pod/p",
                403,
                "Forbidden",
                "pods is forbidden: User \"x\" cannot create resource \"pods\""
            )
            .kind(),
            FailureKind::Permanent
        );
        for code in [429, 500, 503, 504] {
            assert_eq!(api(Action::List, "pods", code, "", "").kind(), FailureKind::Transient, "{code}");
        }
        assert_eq!(api(Action::Create, "pod/p", 409, "Conflict", "").kind(), FailureKind::Transient);
        assert_eq!(
            api(Action::Patch, "pod/p", 404, "NotFound", "").kind(),
            FailureKind::Rejected(ErrorCode::LeaseNotFound)
        );
        assert_eq!(api(Action::List, "secrets", 401, "Unauthorized", "").kind(), FailureKind::Permanent);
        assert!(api(Action::Create, "pod/p", 409, "AlreadyExists", "").is_already_exists());
        assert!(api(Action::Get, "pod/p", 404, "NotFound", "").is_not_found());
    }

    #[test]
    fn port_error_keeps_kind_and_context() {
        let e: PortError = KubeError::Timeout {
            lease_id: "l1".into(),
            pod: "ssh-pod-l1".into(),
            waited: Duration::from_secs(3),
            last: "phase Pending".into(),
        }
        .into();
        assert!(e.is_transient());
        assert!(e.message.contains("ssh-pod-l1") && e.message.contains("Pending"));
    }
}
