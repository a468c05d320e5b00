use super::*;
use crate::lease::ports::AppliedTopUp;
use crate::protocol::Tier;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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

    p.status = Some(pod_json(serde_json::json!({"status": {"phase": "Failed", "reason": "Evicted"}})).status.unwrap());
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
