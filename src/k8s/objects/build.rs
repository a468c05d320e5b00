//! The Secret, Pod and Service specs of one lease.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::lease::ports::PodPlan;

use super::*;

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
