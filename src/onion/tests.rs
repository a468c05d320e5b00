#[tokio::test]
async fn a_forwarded_stream_that_stays_silent_is_closed_and_a_busy_one_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = Duration::from_millis(200);
    // Silent: a peer that never sends (a stalling listener) is cut off after `idle`.
    let (a, _a_peer) = tokio::io::duplex(64);
    let (b, _b_peer) = tokio::io::duplex(64);
    let r = tokio::time::timeout(Duration::from_secs(10), copy_until_idle(a, b, idle)).await;
    assert!(matches!(r, Ok(Err(ref e)) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
    // Busy: bytes every 50 ms keep it open past several idle periods, then it ends normally.
    let (a, mut a_peer) = tokio::io::duplex(64);
    let (b, mut b_peer) = tokio::io::duplex(64);
    let copy = tokio::spawn(copy_until_idle(a, b, idle));
    for _ in 0..16 {
        a_peer.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        b_peer.read_exact(&mut one).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a_peer);
    drop(b_peer);
    let r = copy.await.unwrap();
    assert!(!matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
}

use super::config::toml_string;
use super::forward::copy_until_idle;
use super::*;
use tor_hscrypto::pk::HsIdKey;

#[test]
fn key_round_trip_keeps_the_address() {
    let key = generate_key_bytes().unwrap();
    assert_eq!(key.len(), KEY_LEN);
    let a1 = address_for_key(&key).unwrap();
    let a2 = onion_address(&keypair_from_bytes(&key).unwrap());
    assert_eq!(a1, a2);
    assert!(a1.ends_with(".onion") && a1.len() == 56 + 6, "{a1}");
    assert!(a1[..56].bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
    // The address parses back as an HsId equal to the key's.
    let parsed: tor_hscrypto::pk::HsId = a1.parse().unwrap();
    assert_eq!(parsed, HsIdKey::from(&keypair_from_bytes(&key).unwrap()).id());
    // Another key, another address.
    assert_ne!(address_for_key(&generate_key_bytes().unwrap()).unwrap(), a1);
}

#[test]
fn bad_keys_are_rejected_without_echoing_them() {
    let err = keypair_from_bytes(&[7u8; 32]).err().unwrap();
    assert!(err.contains("64") && err.contains("32"), "{err}");
    let e = OnionError::BadKey { lease_id: "l1".into(), message: err };
    assert_eq!(e.kind(), FailureKind::Permanent);
    assert!(!e.to_string().contains("0707"));
}

/// C tor's `hs_ed25519_secret_key`: a 32-byte header, then the same 64 bytes. This is the key of the
/// rend-spec test vector that arti checks against C tor (tor-hscrypto `key_blinding_testvec`).
#[test]
fn bytes_match_c_tor_secret_key_file_layout() {
    let expanded = hex::decode(
        "D8C7FF0E31295B66540D789AF3E3DF992038A9592EEA01D8B7CBA06D6E66D159\
         4D6167696320576F7264733A20737065697373636F62616C742062697669756D",
    )
    .unwrap();
    let mut file = b"== ed25519v1-secret: type0 ==\0\0\0".to_vec();
    assert_eq!(file.len(), 32);
    file.extend_from_slice(&expanded);
    let key = &file[32..96];
    let kp = keypair_from_bytes(key).unwrap();
    let id = HsIdKey::from(&kp).id();
    assert_eq!(hex::encode_upper(id.as_ref()), "833990B085C1A688C1D4C8B1F6B56AFAF5A2ECA674449E1D704F83765CCB7BC6");
    // And our own keys export to that layout byte for byte.
    let ours = generate_key_bytes().unwrap();
    let exported = [b"== ed25519v1-secret: type0 ==\0\0\0".as_slice(), &ours].concat();
    assert_eq!(address_for_key(&exported[32..96]).unwrap(), address_for_key(&ours).unwrap());
}

#[test]
fn nicknames_are_valid_slugs_and_distinct() {
    assert_eq!(nickname_for("abc-123").unwrap().to_string(), "pg-abc-123");
    let odd = ["Lease.One", "lease one", "", "-x", "ÜBER", &"x".repeat(200), "a/b", "A", "a"];
    let mut seen = std::collections::HashSet::new();
    for id in odd {
        let n = nickname_for(id).unwrap().to_string();
        assert!(n.starts_with(NICK_PREFIX), "{n}");
        assert!(n.len() <= 64, "{n}");
        assert!(HsNickname::new(n.clone()).is_ok(), "{n}");
        assert!(seen.insert(n.clone()), "duplicate nickname {n} for {id:?}");
    }
    // Deterministic: the same lease always maps to the same service state.
    assert_eq!(nickname_for("Lease.One"), nickname_for("Lease.One"));
    assert_ne!(nickname_for("Lease.One"), nickname_for("lease.one"));
}

#[test]
fn toml_strings_escape_what_toml_requires() {
    assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    assert_eq!(toml_string("x\ny\u{7f}"), "\"x\\u000Ay\\u007F\"");
}

#[test]
fn fragment_is_merged_and_our_storage_wins() {
    let dir = tempfile::tempdir().unwrap();
    let frag = dir.path().join("net.toml");
    std::fs::write(
        &frag,
        r#"
[tor_network]
fallback_caches = [
  { rsa_identity = "225547F380180D9F363982FF0350BD2891447BF8", ed_identity = "BZGMQlSD+Y7/n2daB2k9Rza3XcQdZws6t2UxgcspJM0", orports = ["127.0.0.1:25000"] },
]
[tor_network.authorities]
v3idents = ["3ED02B120981F0F480403EAA379300823DE0A572"]
uploads = [["127.0.0.1:25020"]]
downloads = [["127.0.0.1:25020"]]
votes = [["127.0.0.1:25020"]]
[storage]
state_dir = "/somewhere/else"
[address_filter]
allow_local_addrs = true
[override_net_params]
hsdir_interval = 8
"#,
    )
    .unwrap();
    let tor_dir = dir.path().join("odd $HOME \"dir\"").join("tor");
    let cfg = client_config(&tor_dir, Some(&frag)).unwrap();
    let dbg = format!("{cfg:?}");
    assert!(dbg.contains("3ed02b120981f0f480403eaa379300823de0a572"), "authorities not merged: {dbg}");
    assert!(dbg.contains(r#"{"hsdir_interval": 8}"#), "net params not merged: {dbg}");
    assert!(dbg.contains("allow_local_addrs: true"), "address filter not merged");
    assert!(!dbg.contains("/somewhere/else"), "our state dir must override the fragment's");
    assert!(dbg.contains("Ephemeral"), "keystore must be ephemeral: {dbg}");

    // A misspelt key is an error, not a silent fallback to the public network.
    std::fs::write(&frag, "[tor_netwrk]\nfallback_caches = []\n").unwrap();
    let e = client_config(&tor_dir, Some(&frag)).unwrap_err();
    assert!(matches!(e, OnionError::NetworkConfig { .. }), "{e}");
    assert!(e.to_string().contains("tor_netwrk"), "{e}");
    // A missing file too.
    let e = client_config(&tor_dir, Some(&dir.path().join("missing.toml"))).unwrap_err();
    assert_eq!(e.kind(), FailureKind::Permanent);
    // Without a fragment: public defaults, still our storage.
    let cfg = client_config(&tor_dir, None).unwrap();
    assert!(!format!("{cfg:?}").contains("3ed02b120981f0f480403eaa379300823de0a572"));
}

/// The manifest mounts the network fragment from a ConfigMap: a world-writable volume root (drwxrwsrwx, as the
/// kubelet makes it) holding symlinks into a timestamped directory. arti's own loader refuses that path, and the
/// provider crash-looped on the real node with "Problem accessing configuration file(s)".
#[test]
fn a_fragment_mounted_from_a_configmap_is_read() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("tor-network");
    let data = vol.join("..2026_11_28_13_44_44.1");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("network.toml"), "[address_filter]\nallow_local_addrs = true\n").unwrap();
    symlink("..2026_11_28_13_44_44.1", vol.join("..data")).unwrap();
    symlink("..data/network.toml", vol.join("network.toml")).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o2777)).unwrap();
    let cfg = client_config(&dir.path().join("state/tor"), Some(&vol.join("network.toml"))).unwrap();
    assert!(format!("{cfg:?}").contains("allow_local_addrs: true"), "fragment not merged");
}

/// k3s's local-path provisioner (and minikube's hostpath one) hand out a volume root owned by root, mode 0777, no
/// fsGroup. arti refused it ("problem with filesystem permissions"), so the provider exited at once; now only
/// the provider's own directories in it are checked.
#[test]
fn a_world_writable_volume_root_of_another_owner_is_left_unchecked() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to give the volume root another owner");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vol = dir.path().join("pvc-0123");
    std::fs::create_dir(&vol).unwrap();
    std::os::unix::fs::chown(&vol, Some(4242), Some(4242)).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
    let tor_dir = vol.join("tor");
    let cfg = client_config(&tor_dir, None).unwrap();
    cfg.fs_mistrust().make_directory(tor_dir.join("state")).expect("arti accepts the provider's dir in the volume");
    // Without the exception arti refuses the same volume: the defence is what makes it pass.
    let strict = arti_client::TorClientConfig::default().fs_mistrust().clone();
    assert!(strict.make_directory(tor_dir.join("other")).is_err(), "a world-writable root must fail by default");
    // The provider's own directory stays private.
    let mode = std::fs::metadata(tor_dir.join("state")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // A world-writable state dir of our own is made private instead.
    let ours = dir.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o777)).unwrap();
    client_config(&ours.join("tor"), None).unwrap();
    assert_eq!(std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777, 0o750);
}

#[tokio::test]
async fn disabled_variant_creates_nothing() {
    let o = ArtiOnion::disabled();
    assert!(!o.enabled());
    assert!(o.ready());
    assert_eq!(o.running(), 0);
    let key = o.generate_key().unwrap();
    let e = o.launch("l1", &key, "127.0.0.1:22".parse().unwrap()).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert!(e.message.contains("l1"));
    o.stop("l1").await;
}

#[test]
fn error_kinds() {
    let t = OnionError::PublishTimeout {
        lease_id: "l".into(),
        address: "x.onion".into(),
        waited: Duration::from_secs(1),
        state: "Bootstrapping".into(),
        problem: String::new(),
    };
    assert_eq!(PortError::from(t).kind, FailureKind::Transient);
    let full = "a".repeat(56) + ".onion";
    assert!(!redact(&full).contains(&full[..16]), "a log line must not carry a usable address");
    let l = OnionError::Launch { lease_id: "l".into(), message: "m".into(), transient: false };
    assert_eq!(l.kind(), FailureKind::Permanent);
}

#[test]
fn leases_that_fill_the_shared_streams_leave_every_other_lease_its_own() {
    use super::forward::{stream_slot, StreamBounds};
    let bounds = StreamBounds {
        per_service: 64,
        guaranteed: 4,
        total: Arc::new(tokio::sync::Semaphore::new(128)),
        idle: Duration::from_secs(60),
    };
    // Two cheap leases take all they may: their own 4 and then the shared pool, 60 more each.
    let mut held = Vec::new();
    for _ in 0..2 {
        let own = Arc::new(tokio::sync::Semaphore::new(bounds.guaranteed));
        let mut open = 0;
        while let Some(p) = stream_slot(open, &own, &bounds) {
            held.push(p);
            open += 1;
        }
        assert_eq!(open, 64, "a service is held at its bound");
        held.push(Arc::clone(&own).try_acquire_many_owned(0).unwrap());
    }
    // A third lease now finds no shared stream, and the rest of the pool filled by others ...
    let rest = bounds.total.available_permits();
    let _filled = Arc::clone(&bounds.total).try_acquire_many_owned(rest as u32).unwrap();
    assert_eq!(bounds.total.available_permits(), 0);
    // ... yet its owner still logs in: its own guaranteed streams, and no more.
    let own = Arc::new(tokio::sync::Semaphore::new(bounds.guaranteed));
    let mine: Vec<_> = (0..10).map_while(|open| stream_slot(open, &own, &bounds)).collect();
    assert_eq!(mine.len(), 4);
    // A closed stream gives its place back.
    drop(mine);
    assert!(stream_slot(0, &own, &bounds).is_some());
}
