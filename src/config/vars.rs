//! Every variable the provider reads, documented once: `paygress --help` and the README table come from
//! here.

/// One documented variable: name, default, meaning. `paygress --help` and the README table come from this.
pub struct VarDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const VARS: &[VarDoc] = &[
    VarDoc { name: "RUN_MODE", default: "nostr", help: "nostr (serve requests from relays) or http (REST API)" },
    VarDoc { name: "NOSTR_RELAYS", default: "wss://relay.damus.io,wss://nos.lol", help: "comma-separated relay URLs" },
    VarDoc {
        name: "NOSTR_PRIVATE_KEY",
        default: "(generated into PAYGRESS_STATE_DIR/nostr.key)",
        help: "provider key: nsec…, 64 hex chars, or a path to a file holding one (a mounted Secret)",
    },
    VarDoc {
        name: "WHITELISTED_MINTS",
        default: "(required)",
        help: "comma-separated mint URLs accepted, compared normalised and exactly",
    },
    VarDoc {
        name: "PAYMENT_RATE_SATS_PER_HOUR",
        default: "100",
        help: "price of the default tier, and of tiers that name no rate",
    },
    VarDoc {
        name: "POD_NAMESPACE",
        default: "user-workloads",
        help: "namespace of SSH pods, their Services and Secrets",
    },
    VarDoc {
        name: "ENABLE_TOR_SIDECAR",
        default: "true",
        help: "run an in-process arti onion service per lease (no sidecar exists; the name is the seed's)",
    },
    VarDoc {
        name: "TOR_IMAGE",
        default: "(unused)",
        help: "accepted for compatibility; Tor runs in-process, so it has no effect",
    },
    VarDoc {
        name: "PAYGRESS_TOR_NETWORK_CONFIG",
        default: "(public Tor network)",
        help: "arti TOML fragment naming another Tor network (authorities, fallbacks)",
    },
    VarDoc {
        name: "PAYGRESS_STATE_DIR",
        default: "/var/lib/paygress",
        help: "persistent volume: request journal, Tor state, default wallet and key",
    },
    VarDoc {
        name: "PAYGRESS_WALLET_DIR",
        default: "PAYGRESS_STATE_DIR/wallet",
        help: "Cashu wallet (seed and database); must be persistent",
    },
    VarDoc {
        name: "PAYGRESS_WALLET_SEED",
        default: "(none)",
        help: "restore: a wallet's backed-up BIP-39 mnemonic (`paygress wallet backup`), or a file holding it; on an \
               empty wallet dir the provider writes it and finds its ecash again at the mints before serving; refused \
               over a wallet of another seed",
    },
    VarDoc {
        name: "PAYGRESS_DEFAULT_IMAGE",
        default: "lscr.io/linuxserver/openssh-server:latest",
        help: "image used when a request names none",
    },
    VarDoc {
        name: "PAYGRESS_MAX_LEASES_PER_REQUESTER",
        default: "10",
        help: "live leases one key may hold at once (more are refused before payment)",
    },
    VarDoc {
        name: "PAYGRESS_ONION_POOL",
        default: "4",
        help: "onion services kept published ahead of demand, so a paid lease's reply does not wait for a \
               descriptor to be published (0: none; ignored when ENABLE_TOR_SIDECAR=false)",
    },
    VarDoc {
        name: "PAYGRESS_EXPIRY_NOTICES",
        default: "600,60",
        help: "seconds before a lease ends at which its owner gets an encrypted notice (empty: none)",
    },
    VarDoc {
        name: "PAYGRESS_IMAGE_PULL_POLICY",
        default: "IfNotPresent",
        help: "lease pods' imagePullPolicy: IfNotPresent, Always or Never",
    },
    VarDoc {
        name: "PAYGRESS_ALLOWED_IMAGES",
        default: "PAYGRESS_DEFAULT_IMAGE,docker.io/linuxserver/openssh-server:latest",
        help: "comma-separated images a request may ask for, compared canonically (`linuxserver/x` is \
               docker.io/linuxserver/x:latest); REPO:* allows any tag, REPO@* only digests",
    },
    VarDoc {
        name: "PAYGRESS_TIERS",
        default: "basic:500m:512Mi",
        help: "comma-separated name:cpu:memory[:sats_per_hour[:runtime_class]]; the first is the default; a \
               RuntimeClass (e.g. gvisor) gives that tier's pods a kernel of their own",
    },
    VarDoc { name: "PAYGRESS_MIN_DURATION_SECONDS", default: "60", help: "shortest lease sold" },
    VarDoc { name: "PAYGRESS_MAX_DURATION_SECONDS", default: "604800", help: "longest lease sold (also caps top-ups)" },
    VarDoc {
        name: "PAYGRESS_SSH_PORT",
        default: "2222",
        help: "SSH port of the pods, their Services and onion services",
    },
    VarDoc {
        name: "PAYGRESS_HTTP_ADDR",
        default: "127.0.0.1:8080",
        help: "health/metrics listener (and the API in http mode)",
    },
    VarDoc {
        name: "PAYGRESS_MAX_CONCURRENT_REQUESTS",
        default: "32",
        help: "requests handled at once; more wait in a bounded queue",
    },
    VarDoc {
        name: "PAYGRESS_READY_TIMEOUT_SECONDS",
        default: "180",
        help: "how long to wait for a pod to run and answer SSH",
    },
    VarDoc {
        name: "PAYGRESS_PROFILE_NAME",
        default: "Paygress provider",
        help: "the provider's name in its Nostr profile (kind 0) and NIP-89 handler announcement",
    },
    VarDoc {
        name: "PAYGRESS_PROFILE_ABOUT",
        default: "(what it sells)",
        help: "the profile's description (at most 1000 characters)",
    },
    VarDoc { name: "PAYGRESS_PROFILE_WEBSITE", default: "(none)", help: "the profile's website, an http(s) URL" },
    VarDoc { name: "PAYGRESS_PROFILE_NIP05", default: "(none)", help: "the profile's NIP-05 identifier, name@domain" },
    VarDoc { name: "PAYGRESS_OFFER_INTERVAL_SECONDS", default: "900", help: "how often the offer is re-published" },
    VarDoc {
        name: "PAYGRESS_RECONCILE_INTERVAL_SECONDS",
        default: "5",
        help: "how often leases are checked for expiry and orphans",
    },
    VarDoc {
        name: "PAYGRESS_ADMIN_TOKEN",
        default: "(admin endpoints off)",
        help: "enables /admin/wallet/* on the HTTP listener (Bearer token, 16+ chars); used by `paygress wallet` too",
    },
    VarDoc {
        name: "PAYGRESS_ADMIN_TOKEN_FILE",
        default: "(unset)",
        help: "file holding the admin token (a mounted Secret), instead of PAYGRESS_ADMIN_TOKEN",
    },
    VarDoc {
        name: "PAYGRESS_RESUME_INTERVAL_SECONDS",
        default: "30",
        help: "how often requests parked by a transient failure (mint, relays, API server) are retried",
    },
    VarDoc {
        name: "PAYGRESS_FAILPOINT",
        default: "(none)",
        help: "testing/operations aid: abort the process (like kill -9) right after a saga step is persisted: \
               after_redeem, after_pod_create, after_pool_take, after_ready (alias after_onion) or before_reply; of a \
               cash-out: before_melt, after_melt; never set in production",
    },
    VarDoc { name: "PAYGRESS_LOG_FORMAT", default: "text", help: "text or json" },
    VarDoc { name: "RUST_LOG", default: "info", help: "tracing filter" },
];
