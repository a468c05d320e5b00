//! Assembly: the only module that knows every concrete adapter. Wires them into the lease service and
//! runs the provider: startup order, workers, reconciler, readiness, SIGTERM drain.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use crate::config::{Config, RunMode};
use crate::http::{health_router, HealthState, Readiness};
use crate::lease::ports::{ClusterPort, OnionPort};
use crate::lease::{Incoming, LeaseService, LeaseSettings, Ports};
use crate::metrics::Metrics;
use crate::protocol::{self, Offer};

/// Queue between the Nostr front end and the workers: bounded, so a flood waits instead of growing memory.
const INCOMING_QUEUE: usize = 1024;
/// How long SIGTERM waits for requests in flight before exiting (their sagas resume on restart anyway).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Parked sagas (transient failures) are retried this often.
const RESUME_INTERVAL: Duration = Duration::from_secs(30);

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
    }
}

/// Run the provider until SIGTERM/SIGINT. `cfg` is already validated.
pub async fn run(cfg: Config) -> Result<()> {
    if let Some(image) = &cfg.tor_image_ignored {
        info!(tor_image = %image, "TOR_IMAGE is ignored: Tor runs inside the provider (arti), there is no sidecar");
    }
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("state dir {}", cfg.state_dir.display()))?;

    // Local state first: journal, keys, wallet.
    let journal = Arc::new(crate::store::RedbJournal::open(&cfg.state_dir).context("open request journal")?);
    let keys = crate::nostr::load_keys(&cfg.nostr_key).context("load the provider's Nostr key")?;
    let payment = Arc::new(
        crate::payment::CashuPayment::new(
            &cfg.wallet_dir,
            &cfg.whitelisted_mints,
            &keys.secret_key().secret_bytes(),
            "sat",
        )
        .context("open the Cashu wallet")?,
    );

    // Then the outside world.
    let cluster = Arc::new(
        crate::k8s::KubeCluster::connect(cfg.namespace.clone(), cfg.ssh_port).await.context("Kubernetes client")?,
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

    let pubkey_hex = keys.public_key().to_hex();
    let offer = offer(&cfg, &pubkey_hex, &payment.p2pk_pubkey_hex());
    let frontend = match cfg.run_mode {
        RunMode::Nostr => {
            let opts =
                crate::nostr::NostrOptions::new(cfg.relays.clone(), Duration::from_secs(cfg.offer_interval_secs));
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

    let service = Arc::new(LeaseService::new(
        LeaseSettings::from(&cfg),
        Ports {
            payment: payment.clone(),
            cluster: cluster.clone(),
            probe: Arc::new(crate::ssh::RusshProbe::new()),
            onion: onion.clone(),
            replies,
            journal,
        },
        metrics.clone(),
    ));
    info!(pubkey = %pubkey_hex, namespace = %cfg.namespace, mode = ?cfg.run_mode, tor = cfg.enable_tor, "paygress starting");

    let http = tokio::net::TcpListener::bind(cfg.http_addr).await.with_context(|| format!("bind {}", cfg.http_addr))?;
    let router = health_router(HealthState { readiness: readiness.clone(), metrics: metrics.clone() });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, router).await {
            warn!(error = %e, "http listener stopped");
        }
    });

    // Finish what a previous run left in flight before taking new work.
    service.resume_unfinished().await;
    tokio::spawn(readiness_loop(readiness.clone(), metrics.clone(), cluster.clone(), onion.clone(), frontend.clone()));
    tokio::spawn(reconcile_loop(service.clone(), Duration::from_secs(cfg.reconcile_interval_secs)));
    tokio::spawn(resume_loop(service.clone()));

    let workers = Arc::new(Semaphore::new(cfg.max_concurrent_requests));
    let dispatcher = tokio::spawn(dispatch(rx, service.clone(), workers.clone()));

    shutdown_signal().await;
    info!("shutdown requested: no new requests, draining");
    readiness.draining.store(true, Ordering::Relaxed);
    if let Some(f) = &frontend {
        f.shutdown().await;
    }
    drop(tx);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = dispatcher.await;
        let _ = workers.acquire_many(cfg.max_concurrent_requests as u32).await;
    })
    .await;
    // Stop publishing: the services come back from their Secrets when a successor starts.
    let stopped = arti.stop_all().await;
    info!(onion_services = stopped, "drained; bye");
    Ok(())
}

/// Hand each request to a worker task; at most `workers` run at once, the rest wait in the queue.
async fn dispatch(mut rx: mpsc::Receiver<Incoming>, service: Arc<LeaseService>, workers: Arc<Semaphore>) {
    while let Some(incoming) = rx.recv().await {
        let Ok(permit) = workers.clone().acquire_owned().await else { break };
        let service = service.clone();
        tokio::spawn(async move {
            service.handle(incoming).await;
            drop(permit);
        });
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

async fn resume_loop(service: Arc<LeaseService>) {
    loop {
        tokio::time::sleep(RESUME_INTERVAL).await;
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

/// `paygress wallet balance|send`: the operator's access to earned ecash.
pub async fn wallet_command(cfg: &Config, args: &[String]) -> Result<()> {
    let keys = crate::nostr::load_keys(&cfg.nostr_key).context("load the provider's Nostr key")?;
    let payment = crate::payment::CashuPayment::new(
        &cfg.wallet_dir,
        &cfg.whitelisted_mints,
        &keys.secret_key().secret_bytes(),
        "sat",
    )
    .context("open the Cashu wallet (stop the provider first: the wallet database is single-process)")?;
    match args.first().map(String::as_str) {
        Some("balance") => {
            for (mint, sats) in payment.balances().await? {
                println!("{mint}\t{sats} sat");
            }
            Ok(())
        }
        Some("send") => {
            let amount: u64 =
                args.get(1).and_then(|a| a.parse().ok()).context("usage: paygress wallet send <sats> [--mint URL]")?;
            let mint = args.iter().position(|a| a == "--mint").and_then(|i| args.get(i + 1)).map(String::as_str);
            println!("{}", payment.send(mint, amount).await?);
            Ok(())
        }
        _ => anyhow::bail!("usage: paygress wallet balance | paygress wallet send <sats> [--mint URL]"),
    }
}
