//! Assembly: the only module that knows every concrete adapter. Wires them into the lease service and
//! runs the provider: startup order, workers, reconciler, readiness, SIGTERM drain.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use crate::config::AdminTokenSource;
use crate::config::{Config, RunMode};
use crate::http::{Admin, Api, HealthState, Readiness, WalletAdmin, WalletPaid, WalletSent};
use crate::lease::ports::{ClusterPort, OnionPort, PaymentPort, PortError};
use crate::lease::{Incoming, LeaseService, LeaseSettings, Ports};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Offer};

/// Queue between the Nostr front end and the workers: bounded, so a flood waits instead of growing memory.
const INCOMING_QUEUE: usize = 1024;
/// Workers for requests that pay nothing (status, invalid requests).
const FREE_WORKERS: usize = 4;
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// How often the offer's capacity is recomputed.
const CAPACITY_INTERVAL: Duration = Duration::from_secs(10);
/// How long SIGTERM waits for requests in flight before exiting (their sagas resume on restart anyway).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The offer as published: everything a client needs to build a request.
pub fn offer(cfg: &Config, provider_pubkey: &str, p2pk_pubkey: &str) -> Offer {
    Offer {
        provider_pubkey: provider_pubkey.to_string(),
        tiers: cfg.tiers.clone(),
        default_tier: cfg.default_tier().name.clone(),
        accepted_mints: cfg.whitelisted_mints.clone(),
        unit: "sat".into(),
        min_duration_seconds: cfg.min_duration_secs,
        max_duration_seconds: cfg.max_duration_secs,
        onion_access: cfg.enable_tor,
        p2pk_pubkey: p2pk_pubkey.to_string(),
        default_image: cfg.default_image.clone(),
        allowed_images: cfg.allowed_images.clone(),
        ssh_port: cfg.ssh_port,
        request_kind: protocol::KIND_REQUEST,
        reply_kind: protocol::KIND_REPLY,
        topup_kind: protocol::KIND_TOPUP,
        status_kind: protocol::KIND_STATUS,
        release_kind: protocol::KIND_RELEASE,
        release_rule: protocol::RELEASE_RULE.into(),
        heartbeat_seconds: cfg.offer_interval_secs,
        payment_request: crate::protocol::creq::for_offer(
            cfg.default_tier(),
            &cfg.whitelisted_mints,
            p2pk_pubkey,
            // Only a provider that listens on relays can take a payment over the Nostr transport.
            matches!(cfg.run_mode, RunMode::Nostr).then_some((provider_pubkey, cfg.relays.as_slice())),
        ),
    }
}

/// Raise the soft open-file limit to the hard one; returns (before, after). Each onion service holds about 4
/// descriptors (replay logs, state locks: 783 at 500 services, docs/benchmarks.md), so a container's usual
/// soft limit of 1024 would run out near 250 leases. Raising soft up to hard needs no privilege.
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return None;
            }
        }
        Some((before, lim.rlim_cur))
    }
}

/// Run the provider until SIGTERM/SIGINT. `cfg` is already validated.
pub async fn run(cfg: Config) -> Result<()> {
    if let Some(image) = &cfg.tor_image_ignored {
        info!(tor_image = %image, "TOR_IMAGE is ignored: Tor runs inside the provider (arti), there is no sidecar");
    }
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("state dir {}", cfg.state_dir.display()))?;
    match raise_fd_limit() {
        Some((before, now)) if now > before => info!(before, now, "open-file limit raised to its hard limit"),
        Some(_) => {}
        None => warn!("could not read or raise the open-file limit"),
    }

    // Local state first: journal, keys, wallet.
    let journal = Arc::new(crate::store::RedbJournal::open(&cfg.state_dir).context("open request journal")?);
    let keys = crate::nostr::load_keys(&cfg.nostr_key).context("load the provider's Nostr key")?;
    if let Some(source) = &cfg.wallet_seed {
        let phrase = source.read().context("read PAYGRESS_WALLET_SEED")?;
        let restored = crate::payment::CashuPayment::restore_seed(&cfg.wallet_dir, &phrase)
            .context("restore the wallet from PAYGRESS_WALLET_SEED")?;
        info!(?restored, "PAYGRESS_WALLET_SEED checked against the wallet dir");
    }
    let payment = Arc::new(
        crate::payment::CashuPayment::new(
            &cfg.wallet_dir,
            &cfg.whitelisted_mints,
            &keys.secret_key().secret_bytes(),
            "sat",
        )
        .context("open the Cashu wallet")?
        .with_failpoint(cfg.failpoint),
    );
    // A restored seed: its ecash is found at the mints before any request can touch the wallet.
    if payment.restore_pending() {
        let balances = payment.restore_from_mints().await.context("restore the wallet's ecash at the mints")?;
        info!(total = balances.iter().map(|(_, b)| b).sum::<u64>(), "wallet restored");
    }

    // Then the outside world.
    let pubkey_hex = keys.public_key().to_hex();
    let provider = crate::lease::ports::provider_id(&pubkey_hex);
    let cluster = Arc::new(
        crate::k8s::KubeCluster::connect(cfg.namespace.clone(), cfg.ssh_port, &provider)
            .await
            .context("Kubernetes client")?,
    );
    let arti = Arc::new(if cfg.enable_tor {
        crate::onion::ArtiOnion::from_config(&cfg).context("start arti")?
    } else {
        info!("ENABLE_TOR_SIDECAR=false: no Tor; leases are reached by kubectl port-forward");
        crate::onion::ArtiOnion::disabled()
    });
    let onion: Arc<dyn OnionPort> = arti.clone();

    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let (tx, rx) = mpsc::channel::<Incoming>(INCOMING_QUEUE);

    let offer = offer(&cfg, &pubkey_hex, &payment.p2pk_pubkey_hex());
    let offer_for_api = offer.clone();
    let frontend = match cfg.run_mode {
        RunMode::Nostr => {
            let opts = crate::nostr::NostrOptions {
                profile: cfg.profile.clone(),
                ..crate::nostr::NostrOptions::new(cfg.relays.clone(), Duration::from_secs(cfg.offer_interval_secs))
            };
            Some(
                crate::nostr::NostrFrontend::start(keys.clone(), opts, offer, tx.clone())
                    .await
                    .context("connect to Nostr relays")?,
            )
        }
        RunMode::Http => {
            readiness.relays.store(true, Ordering::Relaxed);
            None
        }
    };
    let replies: Arc<dyn crate::lease::ports::ReplyPort> = match &frontend {
        Some(f) => Arc::new(f.clone()),
        None => Arc::new(InBandReplies),
    };

    let workers = Arc::new(Semaphore::new(cfg.max_concurrent_requests));
    let service = Arc::new(
        LeaseService::new(
            LeaseSettings::from(&cfg).with_provider(&keys.secret_key().secret_bytes(), &pubkey_hex),
            Ports {
                payment: payment.clone(),
                cluster: cluster.clone(),
                probe: Arc::new(crate::ssh::RusshProbe::new()),
                onion: onion.clone(),
                replies,
                journal,
            },
            metrics.clone(),
        )
        .with_workers(workers.clone()),
    );
    info!(pubkey = %pubkey_hex, namespace = %cfg.namespace, mode = ?cfg.run_mode, tor = cfg.enable_tor, "paygress starting");
    if let Some(fp) = cfg.failpoint {
        warn!(
            failpoint = fp.name(),
            "PAYGRESS_FAILPOINT set: the process will abort at this kill point (testing only)"
        );
    }

    let admin = match &cfg.admin_token {
        Some(source) => Some(Arc::new(Admin::new(
            &read_admin_token(source)?,
            Arc::new(OperatorWallet(payment.clone())) as Arc<dyn WalletAdmin>,
        ))),
        None => None,
    };
    let api = match cfg.run_mode {
        RunMode::Http => Some(Arc::new(Api {
            service: service.clone(),
            payment: payment.clone() as Arc<dyn PaymentPort>,
            offer: offer_for_api.clone(),
            lease_secret_key: lease_secret_key(&keys.secret_key().secret_bytes()),
            workers: workers.clone(),
            free: Arc::new(Semaphore::new(FREE_WORKERS)),
        })),
        RunMode::Nostr => None,
    };
    info!(admin = admin.is_some(), api = api.is_some(), addr = %cfg.http_addr, "http listener");
    let http = tokio::net::TcpListener::bind(cfg.http_addr).await.with_context(|| format!("bind {}", cfg.http_addr))?;
    let health = HealthState { readiness: readiness.clone(), metrics: metrics.clone() };
    let probes = crate::http::probe_router(health.clone());
    let router = crate::http::router(health, api, admin);
    // Graceful shutdown is triggered only in http mode: there the listener is the front end to close. In
    // nostr mode it keeps answering probes (readyz says draining) until the process exits.
    let (stop_http, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        if let Err(e) = crate::http::serve(http, router, probes, stopped).await {
            warn!(error = %e, "http listener stopped");
        }
    });

    // Finish what a previous run left in flight, within the workers' bound, beside new work.
    tokio::spawn({
        let service = service.clone();
        async move { service.resume_unfinished().await }
    });
    tokio::spawn(prune_loop(service.clone()));
    tokio::spawn(readiness_loop(readiness.clone(), metrics.clone(), cluster.clone(), onion.clone(), frontend.clone()));
    tokio::spawn(reconcile_loop(service.clone(), Duration::from_secs(cfg.reconcile_interval_secs)));
    tokio::spawn({
        let service = service.clone();
        async move { service.run_onion_pool().await }
    });
    tokio::spawn(resume_loop(service.clone(), Duration::from_secs(cfg.resume_interval_secs)));

    let free = Arc::new(Semaphore::new(FREE_WORKERS));
    if let Some(f) = &frontend {
        tokio::spawn(capacity_loop(f.clone(), cluster.clone(), offer_for_api.clone(), CAPACITY_INTERVAL));
    }
    let dispatcher = tokio::spawn(dispatch(rx, service.clone(), workers.clone(), free));

    shutdown_signal().await;
    info!("shutdown requested: no new requests, draining");
    readiness.draining.store(true, Ordering::Relaxed);
    if let Some(f) = &frontend {
        f.shutdown().await;
    }
    drop(tx);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        if cfg.run_mode == RunMode::Http {
            // Stop accepting; requests in flight get their answers.
            let _ = stop_http.send(true);
            let _ = server.await;
        }
        let _ = dispatcher.await;
        let _ = workers.acquire_many(cfg.max_concurrent_requests as u32).await;
    })
    .await;
    // Stop publishing: the services come back from their Secrets when a successor starts.
    let stopped = arti.stop_all().await;
    info!(onion_services = stopped, "drained; bye");
    Ok(())
}

/// Hand each request to a worker task; at most `workers` paid requests run at once, the rest wait in the
/// queue. Requests that pay nothing (status, garbage) have their own small budget and are dropped when it
/// is spent, so they never hold up a paid one.
async fn dispatch(
    mut rx: mpsc::Receiver<Incoming>,
    service: Arc<LeaseService>,
    workers: Arc<Semaphore>,
    free: Arc<Semaphore>,
) {
    while let Some(incoming) = rx.recv().await {
        // Release moves money too (a refund): it takes a paid request's worker, unless offline checks
        // already refuse it (like a create whose token is garbage).
        let paid = matches!(incoming, Incoming::Create { .. } | Incoming::TopUp { .. } | Incoming::Release { .. })
            && !service.refused_offline(&incoming);
        let permit = if paid {
            let Ok(p) = workers.clone().acquire_owned().await else { break };
            p
        } else {
            match free.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    service.metrics().outcome("shed");
                    tracing::debug!("free request dropped: its budget is in use");
                    continue;
                }
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            service.handle(incoming).await;
            drop(permit);
        });
    }
}

/// The offer's free capacity per tier, from what the namespace's quota still has room for; the offer is
/// re-published when it changes (and on every heartbeat anyway).
async fn capacity_loop(
    frontend: crate::nostr::NostrFrontend,
    cluster: Arc<crate::k8s::KubeCluster>,
    base: Offer,
    every: Duration,
) {
    loop {
        let mut offer = base.clone();
        for tier in &mut offer.tiers {
            tier.capacity = cluster.room_for(tier).await.ok().flatten();
        }
        frontend.update_offer(offer).await;
        tokio::time::sleep(every).await;
    }
}

/// Old finished sagas are pruned, and their secrets cleared, this often.
async fn prune_loop(service: Arc<LeaseService>) {
    loop {
        service.prune_journal();
        tokio::time::sleep(PRUNE_INTERVAL).await;
    }
}

async fn readiness_loop(
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    cluster: Arc<crate::k8s::KubeCluster>,
    onion: Arc<dyn OnionPort>,
    frontend: Option<crate::nostr::NostrFrontend>,
) {
    loop {
        let api_ok = cluster.ping().await.is_ok();
        readiness.api_server.store(api_ok, Ordering::Relaxed);
        readiness.tor.store(onion.ready(), Ordering::Relaxed);
        if let Some(f) = &frontend {
            let n = f.connected_relays();
            metrics.connected_relays.store(n as u64, Ordering::Relaxed);
            readiness.relays.store(n > 0, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn reconcile_loop(service: Arc<LeaseService>, every: Duration) {
    loop {
        if let Err(e) = service.reconcile_once().await {
            warn!(error = %e, "reconcile pass failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// Parked sagas (transient failures) are retried every `every` (PAYGRESS_RESUME_INTERVAL_SECONDS).
async fn resume_loop(service: Arc<LeaseService>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        service.resume_unfinished().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// HTTP mode answers in the response itself; nothing is sent later.
struct InBandReplies;

#[async_trait::async_trait]
impl crate::lease::ports::ReplyPort for InBandReplies {
    async fn send(
        &self,
        _route: &crate::lease::ports::ReplyRoute,
        _reply: &protocol::Reply,
    ) -> crate::lease::ports::PortResult<()> {
        Ok(())
    }
}

/// The admin token from its source (a file is trimmed, like a mounted Secret with a trailing newline).
fn read_admin_token(source: &AdminTokenSource) -> Result<String> {
    let token = match source {
        AdminTokenSource::Inline(t) => t.clone(),
        AdminTokenSource::File(p) => std::fs::read_to_string(p)
            .with_context(|| format!("read PAYGRESS_ADMIN_TOKEN_FILE {}", p.display()))?
            .trim()
            .to_string(),
    };
    if token.len() < crate::config::MIN_ADMIN_TOKEN_LEN {
        anyhow::bail!("the admin token must be at least {} characters", crate::config::MIN_ADMIN_TOKEN_LEN);
    }
    Ok(token)
}

/// Lease secrets of the HTTP API are derived from this (see `http::lease_secret`): a key of its own,
/// derived from the provider's key so it persists without another file.
fn lease_secret_key(provider_secret: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"paygress-http-lease-secret-key\0");
    h.update(provider_secret);
    h.finalize().into()
}

/// The operator's wallet endpoints over the payment adapter.
struct OperatorWallet(Arc<crate::payment::CashuPayment>);

fn operator_error(e: crate::payment::PaymentError) -> PortError {
    use crate::payment::PaymentError as E;
    match e {
        // The operator asked for something the wallet cannot do: a bad request, not a payment problem.
        E::InsufficientFunds { .. } | E::MintNotAllowed { .. } => {
            PortError::rejected(ErrorCode::InvalidRequest, e.to_string())
        }
        other => other.into(),
    }
}

#[async_trait::async_trait]
impl WalletAdmin for OperatorWallet {
    async fn balances(&self) -> Result<Vec<(String, u64)>, PortError> {
        self.0.settled_balances().await.map_err(operator_error)
    }

    async fn send(&self, mint: Option<&str>, amount: u64) -> Result<WalletSent, PortError> {
        let sent = self.0.send_up_to(mint, amount).await.map_err(operator_error)?;
        Ok(WalletSent { token: sent.token, mint: sent.mint_url, amount: sent.amount })
    }

    async fn pay(&self, invoice: &str, mint: Option<&str>) -> Result<WalletPaid, PortError> {
        let paid = self.0.pay_invoice(invoice, mint).await.map_err(operator_error)?;
        Ok(WalletPaid { mint: paid.mint, amount: paid.amount, fee: paid.fee, preimage: paid.preimage })
    }
}

const WALLET_USAGE: &str = "usage: paygress wallet balance | send <sats> [--mint URL] | pay <bolt11> [--mint URL] | \
backup | restore   (restore reads a backup on stdin)";

/// The backup's two lines that matter; the rest is comment. Both are needed: the seed holds the ecash, the
/// key receives P2PK-locked tokens and is the provider's identity on Nostr.
const BACKUP_SEED: &str = "PAYGRESS_WALLET_SEED=";
const BACKUP_KEY: &str = "NOSTR_PRIVATE_KEY=";

enum WalletOp {
    Backup,
    Restore,
    /// What needs the wallet database: opened here, or through the running provider that holds it.
    Db(DbOp),
}

enum DbOp {
    Balance,
    Send { amount: u64, mint: Option<String> },
    Pay { invoice: String, mint: Option<String> },
}

fn wallet_op(args: &[String]) -> Result<WalletOp> {
    let mint = || args.iter().position(|a| a == "--mint").and_then(|i| args.get(i + 1)).cloned();
    Ok(match args.first().map(String::as_str) {
        Some("balance") => WalletOp::Db(DbOp::Balance),
        Some("send") => WalletOp::Db(DbOp::Send {
            amount: args.get(1).and_then(|a| a.parse().ok()).context(WALLET_USAGE)?,
            mint: mint(),
        }),
        Some("pay") => WalletOp::Db(DbOp::Pay {
            invoice: args.get(1).filter(|a| !a.starts_with("--")).cloned().context(WALLET_USAGE)?,
            mint: mint(),
        }),
        Some("backup") => WalletOp::Backup,
        Some("restore") => WalletOp::Restore,
        _ => anyhow::bail!(WALLET_USAGE),
    })
}

/// `paygress wallet backup`'s text: what restores the wallet, as lines an operator can keep (and that
/// `paygress wallet restore` and a Secret's env both read).
fn backup_text(phrase: &str, nsec: &str, mints: &[String]) -> String {
    format!(
        "# Paygress wallet backup. Whoever holds this can spend the provider's earnings: keep it offline.\n\
         # Restore onto an empty volume: `paygress wallet restore < this-file`, or in Kubernetes the Secrets\n\
         # paygress-wallet-seed and paygress-nostr-key (README, \"Day two\").\n\
         # Mints: {}\n{BACKUP_SEED}{phrase}\n{BACKUP_KEY}{nsec}\n",
        mints.join(" ")
    )
}

/// The seed and key of a backup's text (comments and blank lines ignored).
fn parse_backup(text: &str) -> Result<(String, Option<String>)> {
    let value = |prefix: &str| {
        text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().trim_matches('"').to_string())
    };
    let seed = value(BACKUP_SEED).filter(|s| !s.is_empty()).context("the backup has no PAYGRESS_WALLET_SEED= line")?;
    Ok((seed, value(BACKUP_KEY).filter(|k| !k.is_empty())))
}

/// `paygress wallet …`: the operator's access to earned ecash. The wallet database is single-process: while
/// the provider runs it is locked, and balance, send and pay go through the provider's admin endpoint instead
/// (PAYGRESS_HTTP_ADDR with PAYGRESS_ADMIN_TOKEN[_FILE]). Backup reads files only; restore wants an empty
/// wallet dir and no running provider.
pub async fn wallet_command(cfg: &Config, args: &[String]) -> Result<()> {
    let op = match wallet_op(args)? {
        WalletOp::Backup => {
            let phrase =
                crate::payment::CashuPayment::backup_phrase(&cfg.wallet_dir).context("read the wallet seed")?;
            let keys = crate::nostr::load_keys(&cfg.nostr_key).context("load the provider's Nostr key")?;
            let nsec = nostr_sdk::ToBech32::to_bech32(keys.secret_key()).context("encode the Nostr key")?;
            print!("{}", backup_text(&phrase, &nsec, &cfg.whitelisted_mints));
            return Ok(());
        }
        WalletOp::Restore => return wallet_restore(cfg).await,
        WalletOp::Db(op) => op,
    };
    let keys = crate::nostr::load_keys(&cfg.nostr_key).context("load the provider's Nostr key")?;
    let wallet = crate::payment::CashuPayment::new(
        &cfg.wallet_dir,
        &cfg.whitelisted_mints,
        &keys.secret_key().secret_bytes(),
        "sat",
    );
    let payment = match wallet {
        Ok(payment) => payment,
        Err(open_err) => return wallet_via_provider(cfg, op, open_err).await,
    };
    match op {
        DbOp::Balance => {
            for (mint, sats) in payment.settled_balances().await? {
                println!("{mint}\t{sats} sat");
            }
        }
        DbOp::Send { amount, mint } => println!("{}", payment.send(mint.as_deref(), amount).await?),
        DbOp::Pay { invoice, mint } => {
            let paid = payment.pay_invoice(&invoice, mint.as_deref()).await?;
            println!("paid {} sat (fee {} sat) from {}", paid.amount, paid.fee, paid.mint);
        }
    }
    Ok(())
}

/// `paygress wallet restore < backup`: the seed into the (empty) wallet dir, the key where the provider
/// reads it when it keeps its own, then the ecash found again at every whitelisted mint.
async fn wallet_restore(cfg: &Config) -> Result<()> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("read the backup from stdin")?;
    let (phrase, nsec) = parse_backup(&text)?;
    let backed_up = match &nsec {
        Some(k) => Some(crate::nostr::parse_secret(k, "the backup's NOSTR_PRIVATE_KEY")?),
        None => None,
    };
    if let (Some(k), crate::config::KeySource::Generated(path)) = (&backed_up, &cfg.nostr_key) {
        if !path.exists() {
            crate::nostr::save_key(path, k).context("keep the backup's Nostr key")?;
        }
    }
    let keys = crate::nostr::load_keys(&cfg.nostr_key).context("load the provider's Nostr key")?;
    if let Some(backed_up) = &backed_up {
        if backed_up.public_key() != keys.public_key() {
            anyhow::bail!(
                "the provider's Nostr key is not the backup's: tokens locked to the backup's key could not be spent"
            );
        }
    }
    crate::payment::CashuPayment::restore_seed(&cfg.wallet_dir, &phrase).context("restore the wallet seed")?;
    let payment = crate::payment::CashuPayment::new(
        &cfg.wallet_dir,
        &cfg.whitelisted_mints,
        &keys.secret_key().secret_bytes(),
        "sat",
    )
    .context("open the restored wallet (stop the provider first)")?;
    for (mint, sats) in payment.restore_from_mints().await.context("find the ecash at the mints")? {
        println!("{mint}\t{sats} sat");
    }
    Ok(())
}

/// Balance, send and pay through the running provider, which holds the wallet database.
async fn wallet_via_provider(cfg: &Config, op: DbOp, open_err: crate::payment::PaymentError) -> Result<()> {
    let Some(source) = &cfg.admin_token else {
        return Err(anyhow::Error::new(open_err).context(
            "open the Cashu wallet (a running provider holds it: stop it, or set PAYGRESS_ADMIN_TOKEN to go through it)",
        ));
    };
    let token = read_admin_token(source)?;
    let via = |e: crate::http::AdminClientError| {
        anyhow::anyhow!("the wallet is not available locally ({open_err}) and through the provider: {e}")
    };
    let call = |method: &'static str, path: &'static str, body: Option<serde_json::Value>| {
        let token = token.clone();
        async move { crate::http::admin_call(cfg.http_addr, &token, method, path, body.as_ref()).await }
    };
    match op {
        DbOp::Balance => {
            let v = call("GET", "/admin/wallet/balance", None).await.map_err(via)?;
            let balances = v["balances"].as_array().context("no balances in the provider's answer")?;
            for b in balances {
                println!("{}\t{} sat", b["mint"].as_str().unwrap_or("?"), b["sats"].as_u64().unwrap_or(0));
            }
        }
        DbOp::Send { amount, mint } => {
            let body = serde_json::json!({"amount": amount, "mint": mint});
            let v = call("POST", "/admin/wallet/send", Some(body)).await.map_err(via)?;
            println!("{}", v["token"].as_str().context("no token in the provider's answer")?);
        }
        DbOp::Pay { invoice, mint } => {
            let body = serde_json::json!({"invoice": invoice, "mint": mint});
            let v = call("POST", "/admin/wallet/pay", Some(body)).await.map_err(via)?;
            println!(
                "paid {} sat (fee {} sat) from {}",
                v["amount"].as_u64().unwrap_or(0),
                v["fee"].as_u64().unwrap_or(0),
                v["mint"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_backup_text_reads_back() {
        let text = super::backup_text("abandon ability able", "nsec1xyz", &["http://m".into()]);
        let (seed, key) = super::parse_backup(&text).expect("parse");
        assert_eq!((seed.as_str(), key.as_deref()), ("abandon ability able", Some("nsec1xyz")));
        assert!(super::parse_backup("# nothing here\n").is_err());
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let read = || {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: as in raise_fd_limit.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
            lim
        };
        let hard = read().rlim_max;
        // A lower soft limit first (as a container's 1024 would be), so the raise is seen.
        let low = libc::rlimit { rlim_cur: hard.min(512), rlim_max: hard };
        // SAFETY: as in raise_fd_limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let (before, now) = super::raise_fd_limit().expect("limits readable");
        assert_eq!((before, now), (hard.min(512), hard));
        assert_eq!(read().rlim_cur, hard);
    }
}
