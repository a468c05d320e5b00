use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_follow_the_seed() {
    let c = Config::from_map(&env(&[("WHITELISTED_MINTS", "https://mint.example/")])).unwrap();
    assert_eq!(c.run_mode, RunMode::Nostr);
    assert_eq!(c.namespace, "user-workloads");
    assert_eq!(c.default_tier().sats_per_hour, 100);
    assert_eq!(c.ssh_port, 2222);
    assert!(c.enable_tor);
    assert_eq!(c.whitelisted_mints, vec!["https://mint.example".to_string()]);
    assert_eq!(c.allowed_images, vec![c.default_image.clone(), SEED_IMAGE.to_string()]);
}

#[test]
fn every_bad_variable_is_reported_at_once() {
    let e = Config::from_map(&env(&[
        ("RUN_MODE", "grpc"),
        ("NOSTR_RELAYS", "http://x"),
        ("PAYMENT_RATE_SATS_PER_HOUR", "lots"),
        ("ENABLE_TOR_SIDECAR", "maybe"),
        ("POD_NAMESPACE", "Bad_NS"),
        ("NOSTR_PRIVATE_KEY", "hunter2"),
    ]))
    .unwrap_err();
    let vars: Vec<&str> = e.0.iter().map(|e| e.var).collect();
    for v in [
        "RUN_MODE",
        "NOSTR_RELAYS",
        "PAYMENT_RATE_SATS_PER_HOUR",
        "ENABLE_TOR_SIDECAR",
        "POD_NAMESPACE",
        "WHITELISTED_MINTS",
        "NOSTR_PRIVATE_KEY",
    ] {
        assert!(vars.contains(&v), "{v} missing from {vars:?}");
    }
    assert!(!e.to_string().contains("hunter2"), "a secret must never be echoed");
}

#[test]
fn admin_token_sources() {
    let base = [("WHITELISTED_MINTS", "https://mint.example/")];
    assert_eq!(Config::from_map(&env(&base)).unwrap().admin_token, None);
    let c = Config::from_map(&env(&[base[0], ("PAYGRESS_ADMIN_TOKEN", "0123456789abcdef")])).unwrap();
    assert_eq!(c.admin_token, Some(AdminTokenSource::Inline("0123456789abcdef".into())));
    assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug must redact the admin token");
    let c = Config::from_map(&env(&[base[0], ("PAYGRESS_ADMIN_TOKEN_FILE", "/run/secrets/admin")])).unwrap();
    assert_eq!(c.admin_token, Some(AdminTokenSource::File("/run/secrets/admin".into())));
    let e = Config::from_map(&env(&[base[0], ("PAYGRESS_ADMIN_TOKEN", "short-secret")])).unwrap_err();
    assert!(e.0.iter().any(|e| e.var == "PAYGRESS_ADMIN_TOKEN"));
    assert!(!e.to_string().contains("short-secret"));
    let both = [base[0], ("PAYGRESS_ADMIN_TOKEN", "0123456789abcdef"), ("PAYGRESS_ADMIN_TOKEN_FILE", "/x")];
    assert!(Config::from_map(&env(&both)).is_err());
}

#[test]
fn mint_normalisation_is_exact_not_prefix() {
    assert_eq!(normalize_mint_url("HTTPS://Mint.X:443/"), Some("https://mint.x".into()));
    assert_eq!(normalize_mint_url("http://127.0.0.1:3338/"), Some("http://127.0.0.1:3338".into()));
    assert_ne!(normalize_mint_url("https://mint.x.evil.io"), normalize_mint_url("https://mint.x"));
    assert_ne!(normalize_mint_url("https://mint.x/evil"), normalize_mint_url("https://mint.x"));
    assert_eq!(normalize_mint_url("ftp://mint.x"), None);
    assert_eq!(normalize_mint_url("https://user:pw@mint.x"), None);
}

#[test]
fn failpoints_parse_and_bad_names_are_refused() {
    let base = [("WHITELISTED_MINTS", "https://mint.example/")];
    assert_eq!(Config::from_map(&env(&base)).unwrap().failpoint, None);
    for (name, fp) in [
        ("after_redeem", Failpoint::AfterRedeem),
        ("after_pod_create", Failpoint::AfterPodCreate),
        ("after_ready", Failpoint::AfterReady),
        ("after_onion", Failpoint::AfterReady),
        ("before_reply", Failpoint::BeforeReply),
        ("before_melt", Failpoint::BeforeMelt),
        ("after_melt", Failpoint::AfterMelt),
        ("after_pool_take", Failpoint::AfterPoolTake),
    ] {
        let c = Config::from_map(&env(&[base[0], ("PAYGRESS_FAILPOINT", name)])).unwrap();
        assert_eq!(c.failpoint, Some(fp));
    }
    let e = Config::from_map(&env(&[base[0], ("PAYGRESS_FAILPOINT", "after_lunch")])).unwrap_err();
    assert_eq!(e.0[0].var, "PAYGRESS_FAILPOINT");
    assert!(Config::help_text().contains("PAYGRESS_FAILPOINT"));
}

#[test]
fn tiers_parse_with_and_without_rate() {
    let t = parse_tiers("basic:500m:512Mi, big:2:4Gi:400", 100).unwrap();
    assert_eq!(t[0].sats_per_hour, 100);
    assert_eq!(t[1].sats_per_hour, 400);
    assert!(parse_tiers("basic:lots:512Mi", 100).is_err());
    assert!(parse_tiers("a:1:1Gi,a:1:1Gi", 100).is_err());
}

#[test]
fn a_tier_may_run_under_a_sandboxing_runtime_class() {
    let t = parse_tiers("basic:500m:512Mi,isolated:1:1Gi:300:gvisor,cheap:500m:512Mi::runsc.example", 100).unwrap();
    assert_eq!((t[0].runtime_class.as_deref(), t[0].isolation.as_str()), (None, "container"));
    assert_eq!((t[1].runtime_class.as_deref(), t[1].isolation.as_str()), (Some("gvisor"), "sandbox"));
    assert_eq!((t[2].sats_per_hour, t[2].runtime_class.as_deref()), (100, Some("runsc.example")));
    assert!(parse_tiers("x:1:1Gi:100:Not_A_Name", 100).is_err());
    assert!(parse_tiers("x:1:1Gi:100:gvisor:extra", 100).is_err());
}

#[test]
fn the_profile_has_defaults_and_bad_values_are_reported_together() {
    let c = Config::from_map(&env(&[("WHITELISTED_MINTS", "https://mint.example/")])).unwrap();
    assert_eq!(c.profile.name, "Paygress provider");
    assert!(c.profile.about.contains("Cashu") && c.profile.website.is_none() && c.profile.nip05.is_none());
    let ok = Config::from_map(&env(&[
        ("WHITELISTED_MINTS", "https://mint.example/"),
        ("PAYGRESS_PROFILE_NAME", "Pods by Ann"),
        ("PAYGRESS_PROFILE_WEBSITE", "https://pods.example"),
        ("PAYGRESS_PROFILE_NIP05", "ann@pods.example"),
    ]))
    .unwrap();
    assert_eq!(ok.profile.nip05.as_deref(), Some("ann@pods.example"));
    let errs = Config::from_map(&env(&[
        ("WHITELISTED_MINTS", "https://mint.example/"),
        ("PAYGRESS_PROFILE_NAME", &"x".repeat(65)),
        ("PAYGRESS_PROFILE_WEBSITE", "javascript:alert(1)"),
        ("PAYGRESS_PROFILE_NIP05", "ann"),
    ]))
    .unwrap_err();
    let vars: Vec<&str> = errs.0.iter().map(|e| e.var).collect();
    assert_eq!(vars, ["PAYGRESS_PROFILE_NAME", "PAYGRESS_PROFILE_WEBSITE", "PAYGRESS_PROFILE_NIP05"]);
}
