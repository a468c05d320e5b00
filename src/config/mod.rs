//! Configuration from environment variables. Everything is parsed and validated before any I/O, and every
//! bad variable is reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::protocol::Tier;

mod parse;
mod vars;

pub use parse::{is_dns_label, normalize_mint_url};
use parse::{is_hex_key, parse_tiers, Parser};
pub use vars::{VarDoc, VARS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Nostr,
    Http,
}

/// Where a wallet seed to restore comes from. Debug never shows the words.
#[derive(Clone, PartialEq, Eq)]
pub enum SeedSource {
    Inline(String),
    /// A file holding it (a mounted Secret).
    File(PathBuf),
}

impl fmt::Debug for SeedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeedSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SeedSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl SeedSource {
    /// The mnemonic's text (read from the file when it is one).
    pub fn read(&self) -> std::io::Result<String> {
        match self {
            SeedSource::Inline(s) => Ok(s.clone()),
            SeedSource::File(p) => std::fs::read_to_string(p),
        }
    }
}

/// Where the provider's Nostr secret key comes from. Parsing the key itself belongs to the nostr adapter;
/// here we only check its shape, so config stays free of I/O.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// nsec… or hex, given inline.
    Inline(String),
    /// A file holding nsec… or hex (a mounted Secret).
    File(PathBuf),
    /// Generated on first start and kept in the state dir.
    Generated(PathBuf),
}

/// Upper bound of `PAYGRESS_ONION_POOL`: each slot is a published service with its own circuits.
pub const MAX_ONION_POOL: usize = 256;

/// Kill points of the lease saga (`PAYGRESS_FAILPOINT`): the process aborts right after this step is
/// persisted, so crash recovery can be tested against the real peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The Redeemed record is written: the money is in the wallet, nothing exists in the cluster.
    AfterRedeem,
    /// The lease's Secret, Pod and Service are created; readiness not yet awaited.
    AfterPodCreate,
    /// SSH answers and the onion service (if any) is up; the reply is not yet built.
    AfterReady,
    /// The Replying record (the final reply to a paid request) is written; nothing sent yet.
    BeforeReply,
    /// A pool slot's Secret is taken (deleted; its key only in memory); the lease's onion Secret not yet written.
    AfterPoolTake,
    /// Cash-out: cdk's melt saga is prepared (proofs reserved), nothing sent to the mint.
    BeforeMelt,
    /// Cash-out: the mint answered that the invoice is paid; the operator has no answer yet.
    AfterMelt,
}

impl Failpoint {
    pub fn parse(s: &str) -> Option<Failpoint> {
        match s {
            "after_redeem" => Some(Failpoint::AfterRedeem),
            "after_pod_create" => Some(Failpoint::AfterPodCreate),
            // With Tor off the onion step is empty, so both names mean "the lease is ready".
            "after_ready" | "after_onion" => Some(Failpoint::AfterReady),
            "before_reply" => Some(Failpoint::BeforeReply),
            "after_pool_take" => Some(Failpoint::AfterPoolTake),
            "before_melt" => Some(Failpoint::BeforeMelt),
            "after_melt" => Some(Failpoint::AfterMelt),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Failpoint::AfterRedeem => "after_redeem",
            Failpoint::AfterPodCreate => "after_pod_create",
            Failpoint::AfterReady => "after_ready",
            Failpoint::BeforeReply => "before_reply",
            Failpoint::BeforeMelt => "before_melt",
            Failpoint::AfterMelt => "after_melt",
            Failpoint::AfterPoolTake => "after_pool_take",
        }
    }
}

impl fmt::Debug for KeySource {
    // Never print the key itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Inline(_) => f.write_str("Inline(<redacted>)"),
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Generated(p) => write!(f, "Generated({})", p.display()),
        }
    }
}

/// Where the operator's admin token comes from. Read by `app` (config does no I/O); never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    Inline(String),
    File(PathBuf),
}

impl fmt::Debug for AdminTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminTokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            AdminTokenSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// Shortest admin token accepted: it guards the wallet.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    pub run_mode: RunMode,
    pub relays: Vec<String>,
    pub nostr_key: KeySource,
    /// Normalised (see [`normalize_mint_url`]).
    pub whitelisted_mints: Vec<String>,
    pub namespace: String,
    pub enable_tor: bool,
    pub tor_image_ignored: Option<String>,
    pub tor_network_config: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub wallet_dir: PathBuf,
    /// A backed-up mnemonic to restore onto an empty wallet dir (PAYGRESS_WALLET_SEED).
    pub wallet_seed: Option<SeedSource>,
    pub default_image: String,
    /// Lease pods' imagePullPolicy.
    pub image_pull_policy: String,
    pub max_leases_per_requester: usize,
    /// Onion services kept published ahead of demand (`PAYGRESS_ONION_POOL`).
    pub onion_pool: usize,
    /// Seconds before a lease's end at which its owner is told, ascending.
    pub expiry_notices: Vec<u64>,
    pub allowed_images: Vec<String>,
    pub tiers: Vec<Tier>,
    pub min_duration_secs: u64,
    pub max_duration_secs: u64,
    pub ssh_port: u16,
    pub http_addr: SocketAddr,
    pub max_concurrent_requests: usize,
    pub ready_timeout_secs: u64,
    pub offer_interval_secs: u64,
    pub reconcile_interval_secs: u64,
    pub resume_interval_secs: u64,
    pub failpoint: Option<Failpoint>,
    pub log_json: bool,
    /// Admin endpoints (wallet) are served only when set.
    pub admin_token: Option<AdminTokenSource>,
    /// How the provider presents itself on Nostr (kind 0, NIP-89).
    pub profile: Profile,
}

/// The provider's public profile (NIP-01 kind 0), also the content of its NIP-89 handler announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub about: String,
    /// http(s) URL, when the operator has one.
    pub website: Option<String>,
    /// NIP-05 identifier (`name@domain`), when the operator has one.
    pub nip05: Option<String>,
}

/// Longest profile fields accepted (relays and clients cut longer ones anyway).
const MAX_PROFILE_NAME: usize = 64;
const MAX_PROFILE_ABOUT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

/// All problems found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.var, e.message)?;
        }
        Ok(())
    }
}

/// The default tier's CPU and memory when PAYGRESS_TIERS is not set.
/// The image the seed's example request names, in canonical form.
const SEED_IMAGE: &str = "docker.io/linuxserver/openssh-server:latest";
const DEFAULT_TIERS: &str = "basic:500m:512Mi";

impl Config {
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Self::from_map(&std::env::vars().collect())
    }

    pub fn from_map(env: &BTreeMap<String, String>) -> Result<Config, ConfigErrors> {
        let mut p = Parser { env, errors: Vec::new() };

        let run_mode = match p.str("RUN_MODE", "nostr").to_ascii_lowercase().as_str() {
            "nostr" => RunMode::Nostr,
            "http" => RunMode::Http,
            other => {
                p.err("RUN_MODE", format!("must be nostr or http, not {other:?}"));
                RunMode::Nostr
            }
        };

        let relays: Vec<String> = p.list("NOSTR_RELAYS", "wss://relay.damus.io,wss://nos.lol");
        for r in &relays {
            let ok = url::Url::parse(r).map(|u| matches!(u.scheme(), "ws" | "wss")).unwrap_or(false);
            if !ok {
                p.err("NOSTR_RELAYS", format!("{r:?} is not a ws:// or wss:// URL"));
            }
        }
        if relays.is_empty() && run_mode == RunMode::Nostr {
            p.err("NOSTR_RELAYS", "at least one relay is needed in nostr mode".into());
        }

        let state_dir = PathBuf::from(p.str("PAYGRESS_STATE_DIR", "/var/lib/paygress"));
        let wallet_dir = match env.get("PAYGRESS_WALLET_DIR").filter(|v| !v.trim().is_empty()) {
            Some(v) => PathBuf::from(v.trim()),
            None => state_dir.join("wallet"),
        };

        let wallet_seed = match env.get("PAYGRESS_WALLET_SEED").map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) if v.starts_with('/') || v.starts_with("./") => Some(SeedSource::File(PathBuf::from(v))),
            // Checked for shape only (the words themselves when it is used): never echoed.
            Some(v) if v.split_whitespace().count() >= 12 => Some(SeedSource::Inline(v.to_string())),
            Some(_) => {
                p.err(
                    "PAYGRESS_WALLET_SEED",
                    "must be a BIP-39 mnemonic (12 or more words) or an absolute file path".into(),
                );
                None
            }
        };

        let nostr_key = match env.get("NOSTR_PRIVATE_KEY").map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => KeySource::Generated(state_dir.join("nostr.key")),
            Some(v) if v.starts_with("nsec1") || is_hex_key(v) => KeySource::Inline(v.to_string()),
            Some(v) if v.starts_with('/') || v.starts_with("./") => KeySource::File(PathBuf::from(v)),
            Some(_) => {
                // Do not echo the value: it may be a mistyped secret.
                p.err("NOSTR_PRIVATE_KEY", "must be nsec1…, 64 hex characters, or an absolute file path".into());
                KeySource::Generated(state_dir.join("nostr.key"))
            }
        };

        let mut whitelisted_mints = Vec::new();
        let raw_mints = p.list("WHITELISTED_MINTS", "");
        if raw_mints.is_empty() {
            p.err("WHITELISTED_MINTS", "at least one mint URL is required".into());
        }
        for m in raw_mints {
            match normalize_mint_url(&m) {
                Some(n) => whitelisted_mints.push(n),
                None => p.err("WHITELISTED_MINTS", format!("{m:?} is not an http(s) mint URL")),
            }
        }

        let namespace = p.str("POD_NAMESPACE", "user-workloads");
        if !is_dns_label(&namespace) {
            p.err("POD_NAMESPACE", format!("{namespace:?} is not a valid namespace name"));
        }

        let enable_tor = p.bool("ENABLE_TOR_SIDECAR", true);
        let tor_image_ignored = env.get("TOR_IMAGE").map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let tor_network_config =
            env.get("PAYGRESS_TOR_NETWORK_CONFIG").map(|v| v.trim()).filter(|v| !v.is_empty()).map(PathBuf::from);

        let default_image = p.str("PAYGRESS_DEFAULT_IMAGE", "lscr.io/linuxserver/openssh-server:latest");
        let max_leases_per_requester = p.num("PAYGRESS_MAX_LEASES_PER_REQUESTER", 10) as usize;
        if max_leases_per_requester == 0 {
            p.err("PAYGRESS_MAX_LEASES_PER_REQUESTER", "must be at least 1".into());
        }
        let onion_pool = p.num("PAYGRESS_ONION_POOL", 4) as usize;
        if onion_pool > MAX_ONION_POOL {
            p.err("PAYGRESS_ONION_POOL", format!("at most {MAX_ONION_POOL}"));
        }
        let mut expiry_notices = Vec::new();
        let notices_raw =
            env.get("PAYGRESS_EXPIRY_NOTICES").map(|v| v.trim().to_string()).unwrap_or_else(|| "600,60".into());
        for item in notices_raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.parse::<u64>() {
                Ok(n) if n > 0 => expiry_notices.push(n),
                _ => p.err("PAYGRESS_EXPIRY_NOTICES", format!("{item:?} is not a positive number of seconds")),
            }
        }
        expiry_notices.sort_unstable();
        expiry_notices.dedup();
        let image_pull_policy = p.str("PAYGRESS_IMAGE_PULL_POLICY", "IfNotPresent");
        if !matches!(image_pull_policy.as_str(), "IfNotPresent" | "Always" | "Never") {
            p.err("PAYGRESS_IMAGE_PULL_POLICY", format!("{image_pull_policy:?} is not IfNotPresent, Always or Never"));
        }
        // By default also the seed's own request: `linuxserver/openssh-server:latest` (Docker Hub), the same
        // image as lscr.io's.
        let mut allowed_images = p.list("PAYGRESS_ALLOWED_IMAGES", SEED_IMAGE);
        if !allowed_images.contains(&default_image) {
            allowed_images.insert(0, default_image.clone());
        }
        for entry in &allowed_images {
            if crate::lease::image::Allowed::parse(entry).is_none() {
                p.err(
                    "PAYGRESS_ALLOWED_IMAGES",
                    format!("{entry:?} is not an image reference (REPO[:TAG][@DIGEST], REPO:* or REPO@*)"),
                );
            }
        }
        if crate::lease::image::ImageRef::parse(&default_image).is_none() {
            p.err("PAYGRESS_DEFAULT_IMAGE", format!("{default_image:?} is not an image reference"));
        }

        let base_rate = p.num("PAYMENT_RATE_SATS_PER_HOUR", 100);
        if base_rate == 0 {
            p.err("PAYMENT_RATE_SATS_PER_HOUR", "must be at least 1".into());
        }
        let tiers_raw = p.str("PAYGRESS_TIERS", DEFAULT_TIERS);
        let tiers = parse_tiers(&tiers_raw, base_rate).unwrap_or_else(|m| {
            p.err("PAYGRESS_TIERS", m);
            Vec::new()
        });

        let min_duration_secs = p.num("PAYGRESS_MIN_DURATION_SECONDS", 60);
        let max_duration_secs = p.num("PAYGRESS_MAX_DURATION_SECONDS", 7 * 24 * 3600);
        if min_duration_secs == 0 {
            p.err("PAYGRESS_MIN_DURATION_SECONDS", "must be at least 1".into());
        }
        if max_duration_secs < min_duration_secs {
            p.err("PAYGRESS_MAX_DURATION_SECONDS", "must not be below PAYGRESS_MIN_DURATION_SECONDS".into());
        }

        let ssh_port = p.num("PAYGRESS_SSH_PORT", 2222);
        let ssh_port = u16::try_from(ssh_port).ok().filter(|p| *p > 0).unwrap_or_else(|| {
            p.err("PAYGRESS_SSH_PORT", "must be a port number 1..65535".into());
            2222
        });

        let http_raw = p.str("PAYGRESS_HTTP_ADDR", "127.0.0.1:8080");
        let http_addr = http_raw.parse().unwrap_or_else(|_| {
            p.err("PAYGRESS_HTTP_ADDR", format!("{http_raw:?} is not host:port"));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });

        let max_concurrent_requests = p.num("PAYGRESS_MAX_CONCURRENT_REQUESTS", 32) as usize;
        if max_concurrent_requests == 0 {
            p.err("PAYGRESS_MAX_CONCURRENT_REQUESTS", "must be at least 1".into());
        }
        let ready_timeout_secs = p.num("PAYGRESS_READY_TIMEOUT_SECONDS", 180);
        let offer_interval_secs = p.num("PAYGRESS_OFFER_INTERVAL_SECONDS", 900).max(10);
        let reconcile_interval_secs = p.num("PAYGRESS_RECONCILE_INTERVAL_SECONDS", 5).max(1);
        let resume_interval_secs = p.num("PAYGRESS_RESUME_INTERVAL_SECONDS", 30).max(1);
        let failpoint = match p.str("PAYGRESS_FAILPOINT", "").as_str() {
            "" => None,
            name => Failpoint::parse(name).or_else(|| {
                p.err(
                    "PAYGRESS_FAILPOINT",
                    format!(
                        "{name:?} is not one of after_redeem, after_pod_create, after_pool_take, after_ready, after_onion, \
                         before_reply, before_melt, after_melt"
                    ),
                );
                None
            }),
        };
        let log_json = match p.str("PAYGRESS_LOG_FORMAT", "text").as_str() {
            "text" => false,
            "json" => true,
            other => {
                p.err("PAYGRESS_LOG_FORMAT", format!("must be text or json, not {other:?}"));
                false
            }
        };

        let admin_inline = env.get("PAYGRESS_ADMIN_TOKEN").map(|v| v.trim()).filter(|v| !v.is_empty());
        let admin_file = env.get("PAYGRESS_ADMIN_TOKEN_FILE").map(|v| v.trim()).filter(|v| !v.is_empty());
        let admin_token = match (admin_inline, admin_file) {
            (Some(_), Some(_)) => {
                p.err("PAYGRESS_ADMIN_TOKEN", "set PAYGRESS_ADMIN_TOKEN or PAYGRESS_ADMIN_TOKEN_FILE, not both".into());
                None
            }
            // Do not echo the value.
            (Some(t), None) if t.len() < MIN_ADMIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                p.err(
                    "PAYGRESS_ADMIN_TOKEN",
                    format!("must be at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters"),
                );
                None
            }
            (Some(t), None) => Some(AdminTokenSource::Inline(t.to_string())),
            (None, Some(f)) => Some(AdminTokenSource::File(PathBuf::from(f))),
            (None, None) => None,
        };

        let profile = Profile {
            name: p.str("PAYGRESS_PROFILE_NAME", "Paygress provider"),
            about: p.str(
                "PAYGRESS_PROFILE_ABOUT",
                "SSH pods for Cashu ecash, each reachable as its own Tor onion service. Requests: kind 1000 \
                 (see the kind-38400 offer for tiers, prices and mints).",
            ),
            website: Some(p.str("PAYGRESS_PROFILE_WEBSITE", "")).filter(|w| !w.is_empty()),
            nip05: Some(p.str("PAYGRESS_PROFILE_NIP05", "")).filter(|n| !n.is_empty()),
        };
        if profile.name.chars().count() > MAX_PROFILE_NAME {
            p.err("PAYGRESS_PROFILE_NAME", format!("at most {MAX_PROFILE_NAME} characters"));
        }
        if profile.about.chars().count() > MAX_PROFILE_ABOUT {
            p.err("PAYGRESS_PROFILE_ABOUT", format!("at most {MAX_PROFILE_ABOUT} characters"));
        }
        if let Some(w) = &profile.website {
            if !url::Url::parse(w).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some()) {
                p.err("PAYGRESS_PROFILE_WEBSITE", format!("{w:?} is not an http(s) URL"));
            }
        }
        if let Some(n) = &profile.nip05 {
            let ok = n.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
                    && domain.contains('.')
                    && domain.split('.').all(is_dns_label)
            });
            if !ok {
                p.err("PAYGRESS_PROFILE_NIP05", format!("{n:?} is not a NIP-05 identifier like name@example.com"));
            }
        }

        if !p.errors.is_empty() {
            return Err(ConfigErrors(p.errors));
        }
        Ok(Config {
            run_mode,
            relays,
            nostr_key,
            whitelisted_mints,
            namespace,
            enable_tor,
            tor_image_ignored,
            tor_network_config,
            state_dir,
            wallet_dir,
            wallet_seed,
            default_image,
            image_pull_policy,
            max_leases_per_requester,
            onion_pool,
            expiry_notices,
            allowed_images,
            tiers,
            min_duration_secs,
            max_duration_secs,
            ssh_port,
            http_addr,
            max_concurrent_requests,
            ready_timeout_secs,
            offer_interval_secs,
            reconcile_interval_secs,
            resume_interval_secs,
            failpoint,
            log_json,
            admin_token,
            profile,
        })
    }

    pub fn default_tier(&self) -> &Tier {
        // Validation guarantees at least one tier.
        &self.tiers[0]
    }

    pub fn tier(&self, name: Option<&str>) -> Option<&Tier> {
        match name {
            None => Some(self.default_tier()),
            Some(n) => self.tiers.iter().find(|t| t.name == n),
        }
    }

    /// Text of `paygress --help`.
    pub fn help_text() -> String {
        let mut s = String::from(
            "paygress — sells SSH pods for Cashu ecash over Nostr, each reachable as a Tor onion service.\n\n\
             Usage: paygress [wallet balance | wallet send <sats> [--mint URL]]\n\n\
             Configuration (environment variables):\n",
        );
        for v in VARS {
            s.push_str(&format!("  {:<36} {}\n  {:<36}   default: {}\n", v.name, v.help, "", v.default));
        }
        s
    }
}

#[cfg(test)]
mod tests;
