//! Nostr adapter: the provider's identity ([`load_keys`]), its relay front end ([`NostrFrontend`]: offer,
//! request subscriptions, decoding into [`Incoming`]) and its [`ReplyPort`].
//!
//! Wire format (docs/protocol.md): requests are kinds 1000/1002/1003, either NIP-44 v2 to the provider
//! with a `p` tag, or NIP-17/NIP-59 gift wraps (kind 1059) whose rumor has that kind, or (seed clients)
//! plain JSON. Replies are kind 1001 with `e` = request id and `p` = requester, NIP-44 to the requester,
//! or gift-wrapped when the request was.

mod chat;
mod decode;
mod discovery;
mod keys;
mod seen;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nostr_sdk::nips::nip44;
use nostr_sdk::prelude::{
    Client, Event, EventBuilder, EventId, Filter, Keys, PublicKey, RelayMessage, RelayPoolNotification, SubscriptionId,
    Tag, Timestamp,
};
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tokio::task::JoinHandle;

pub use decode::{decode_event, Decoded, IgnoreReason, Transport, KIND_GIFT_WRAP, KIND_SEAL};
pub use discovery::{discovery_events, profile_json, HANDLED_KINDS, HANDLER_D_TAG, KIND_HANDLER};
pub use keys::{load_keys, parse_secret, save_key};

use crate::lease::ports::{FailureKind, PortError, PortResult, ReplyPort, ReplyRoute, ReplyVia};
use crate::lease::Incoming;
use crate::protocol::{
    Offer, Reply, KIND_OFFER, KIND_RELEASE, KIND_REPLY, KIND_REQUEST, KIND_STATUS, KIND_TOPUP, OFFER_D_TAG,
};

/// Errors of the Nostr adapter. Messages carry context but never key material or request content.
#[derive(Debug, thiserror::Error)]
pub enum NostrError {
    #[error("invalid Nostr secret key from {origin}: {reason}")]
    InvalidKey { origin: String, reason: String },
    #[error("cannot {action} Nostr key file {path}: {source}")]
    KeyFile {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid relay URL {relay:?}: {reason}")]
    InvalidRelay { relay: String, reason: String },
    #[error("no Nostr relays configured")]
    NoRelays,
    #[error("invalid reply route for request {request_id}: {reason}")]
    InvalidRoute { request_id: String, reason: String },
    #[error("cannot build {what} for request {request_id}: {reason}")]
    Build { what: &'static str, request_id: String, reason: String },
    #[error("no relay accepted {what} {event_id}: {failures}")]
    NotAccepted { what: &'static str, event_id: String, failures: String },
    #[error("Nostr client failed to {action}: {reason}")]
    Client { action: &'static str, reason: String },
}

impl NostrError {
    pub fn kind(&self) -> FailureKind {
        match self {
            NostrError::NotAccepted { .. } | NostrError::Client { .. } => FailureKind::Transient,
            NostrError::InvalidKey { .. }
            | NostrError::KeyFile { .. }
            | NostrError::InvalidRelay { .. }
            | NostrError::NoRelays
            | NostrError::InvalidRoute { .. }
            | NostrError::Build { .. } => FailureKind::Permanent,
        }
    }
}

impl From<NostrError> for PortError {
    fn from(e: NostrError) -> Self {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

/// Tunables of the front end; [`NostrOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct NostrOptions {
    pub relays: Vec<String>,
    /// The offer is re-published this often and expires (NIP-40) after twice this.
    pub offer_interval: Duration,
    /// Requests are fetched from this far back on (re)subscription, to cover restarts and clock skew.
    pub request_lookback: Duration,
    /// Gift wraps are back-dated up to 2 days by NIP-59, so their window must be wider.
    pub gift_wrap_lookback: Duration,
    /// Subscriptions are re-issued this often so that a reconnect replays only a recent window.
    pub resubscribe_interval: Duration,
    /// How long `start` waits for a first relay connection (it never fails for lack of one).
    pub connect_timeout: Duration,
    /// Profile, relay lists and NIP-89 handler (see `discovery`), refreshed this often.
    pub profile: crate::config::Profile,
    pub discovery_interval: Duration,
}

impl NostrOptions {
    pub fn new(relays: Vec<String>, offer_interval: Duration) -> Self {
        NostrOptions {
            relays,
            offer_interval,
            request_lookback: Duration::from_secs(10 * 60),
            gift_wrap_lookback: Duration::from_secs(3 * 24 * 3600),
            resubscribe_interval: Duration::from_secs(30 * 60),
            connect_timeout: Duration::from_secs(10),
            profile: crate::config::Profile {
                name: "Paygress provider".into(),
                about: "SSH pods for Cashu ecash".into(),
                website: None,
                nip05: None,
            },
            discovery_interval: Duration::from_secs(6 * 3600),
        }
    }
}

const SUB_REQUESTS: &str = "paygress-requests";
const SUB_ADDRESSED: &str = "paygress-addressed";
const SUB_GIFT_WRAPS: &str = "paygress-giftwraps";

/// The provider's presence on Nostr: publishes the offer, listens for requests and forwards them,
/// decoded, to the lease logic; sends replies ([`ReplyPort`]). Cheap to clone.
#[derive(Clone)]
pub struct NostrFrontend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    opts: NostrOptions,
    offer: Mutex<Offer>,
    /// created_at of the last offer published: a newer one must be later, or relays keep the older
    /// (replaceable events of one second are ordered by id, NIP-01).
    offer_at: Mutex<u64>,
    connected: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Gift wraps already opened (see `seen`).
    wraps_seen: std::sync::Mutex<seen::SeenWraps>,
    /// Gift wraps opened (decrypted) so far.
    wraps_opened: AtomicU64,
}

impl NostrFrontend {
    /// Connect to the relays, subscribe, start publishing the offer and forwarding requests to `incoming`.
    ///
    /// Returns once subscriptions are issued; relays that are down are retried in the background
    /// (watch [`Self::connected_relays`]).
    pub async fn start(
        keys: Keys,
        opts: NostrOptions,
        offer: Offer,
        incoming: mpsc::Sender<Incoming>,
    ) -> Result<Self, NostrError> {
        if opts.relays.is_empty() {
            return Err(NostrError::NoRelays);
        }
        let client = Client::builder().signer(keys.clone()).build();
        for relay in &opts.relays {
            client
                .add_relay(relay.as_str())
                .await
                .map_err(|e| NostrError::InvalidRelay { relay: relay.clone(), reason: e.to_string() })?;
        }
        // Take the receiver before anything can arrive, so no event slips past.
        let notifications = client.notifications();
        client.connect().await;
        client.wait_for_connection(opts.connect_timeout).await;

        let (stop, _) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(0usize);
        let frontend = NostrFrontend {
            inner: Arc::new(Inner {
                client,
                keys,
                opts,
                offer: Mutex::new(offer),
                offer_at: Mutex::new(0),
                connected,
                stop,
                tasks: Mutex::new(Vec::new()),
                wraps_seen: Default::default(),
                wraps_opened: AtomicU64::new(0),
            }),
        };
        frontend.resubscribe().await?;
        tracing::info!(
            pubkey = %frontend.public_key(),
            relays = frontend.inner.opts.relays.len(),
            "nostr front end started"
        );

        let tasks = vec![
            tokio::spawn(frontend.clone().notification_loop(notifications, incoming)),
            tokio::spawn(frontend.clone().offer_loop()),
            tokio::spawn(frontend.clone().resubscribe_loop()),
            tokio::spawn(frontend.clone().status_loop(connected_tx)),
        ];
        frontend.inner.tasks.lock().await.extend(tasks);
        Ok(frontend)
    }

    pub fn public_key(&self) -> PublicKey {
        self.inner.keys.public_key()
    }

    /// Gift wraps decrypted so far: each once, however often relays replay it.
    pub fn gift_wraps_opened(&self) -> u64 {
        self.inner.wraps_opened.load(Ordering::Relaxed)
    }

    /// Relays currently connected (readiness, metrics). Updated about once a second.
    pub fn connected_relays(&self) -> usize {
        *self.inner.connected.borrow()
    }

    /// The same count, to await changes.
    pub fn watch_connected_relays(&self) -> watch::Receiver<usize> {
        self.inner.connected.clone()
    }

    /// Stop the background tasks and disconnect.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        for t in self.inner.tasks.lock().await.drain(..) {
            let _ = t.await;
        }
        self.inner.client.shutdown().await;
    }

    /// (Re-)issue the three subscriptions with windows ending now. Same ids: relays replace the old REQ
    /// and replay what they hold in the lookback windows (duplicates for the journal to drop). Done
    /// periodically and after a notification overflow; public for the app and tests.
    pub async fn resubscribe(&self) -> Result<(), NostrError> {
        self.subscribe(true).await
    }

    /// Issue the request subscriptions, and the gift wraps' when `wraps`. The periodic pass leaves the gift
    /// wraps' alone: its window is days wide whenever it is issued (NIP-59 back-dates wraps), so a new
    /// REQ would only make every relay send the whole window again.
    async fn subscribe(&self, wraps: bool) -> Result<(), NostrError> {
        let now = Timestamp::now();
        let us = self.public_key();
        let since_requests = now - self.inner.opts.request_lookback;
        let subs = [
            // All kind 1000: seed clients post plain JSON without a `p` tag.
            (SUB_REQUESTS, Filter::new().kind(decode::kind(KIND_REQUEST)).since(since_requests)),
            (
                SUB_ADDRESSED,
                Filter::new()
                    .kinds([decode::kind(KIND_TOPUP), decode::kind(KIND_STATUS), decode::kind(KIND_RELEASE)])
                    .pubkey(us)
                    .since(since_requests),
            ),
            (
                SUB_GIFT_WRAPS,
                Filter::new()
                    .kind(decode::kind(KIND_GIFT_WRAP))
                    .pubkey(us)
                    .since(now - self.inner.opts.gift_wrap_lookback),
            ),
        ];
        for (id, filter) in subs {
            if id == SUB_GIFT_WRAPS && !wraps {
                continue;
            }
            self.inner
                .client
                .subscribe_with_id(SubscriptionId::new(id), filter, None)
                .await
                .map_err(|e| NostrError::Client { action: "subscribe", reason: e.to_string() })?;
        }
        Ok(())
    }

    /// Only decodes and forwards (lesson 9): handling happens in the lease logic, off this loop.
    ///
    /// Backpressure: when `incoming` is full this loop waits for room instead of dropping. Meanwhile the
    /// relay pool keeps buffering in its broadcast channel; if that overflows (`Lagged`), the lost
    /// events are recovered by re-subscribing, which makes relays replay the lookback window (the
    /// journal dedupes replays). So a slow consumer delays requests but never loses them.
    async fn notification_loop(
        self,
        mut notifications: broadcast::Receiver<RelayPoolNotification>,
        incoming: mpsc::Sender<Incoming>,
    ) {
        let ours: HashSet<SubscriptionId> =
            [SUB_REQUESTS, SUB_ADDRESSED, SUB_GIFT_WRAPS].into_iter().map(SubscriptionId::new).collect();
        let mut stop = self.inner.stop.subscribe();
        loop {
            let notification = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                n = notifications.recv() => n,
            };
            match notification {
                // `Message` fires for every delivery (also replays and the same event from several
                // relays); `Event` only the first time the pool sees an id, which would hide replays
                // we ask for after a `Lagged`.
                Ok(RelayPoolNotification::Message {
                    relay_url,
                    message: RelayMessage::Event { subscription_id, event },
                }) if ours.contains(subscription_id.as_ref()) => {
                    if event.kind.as_u16() == KIND_GIFT_WRAP {
                        // Replays of wraps already opened cost no decryption.
                        let first = self.inner.wraps_seen.lock().map(|mut s| s.first(event.id)).unwrap_or(true);
                        if !first {
                            continue;
                        }
                        self.inner.wraps_opened.fetch_add(1, Ordering::Relaxed);
                    }
                    let Some(item) = self.decode_logged(&event, relay_url.as_str()) else {
                        continue;
                    };
                    if let Err(mpsc::error::TrySendError::Full(item)) = incoming.try_send(item) {
                        tracing::debug!(event_id = %event.id, "lease logic busy; waiting for room");
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => break,
                            sent = incoming.send(item) => if sent.is_err() {
                                tracing::info!("request receiver closed; nostr loop stops");
                                break;
                            }
                        }
                    } else if incoming.is_closed() {
                        tracing::info!("request receiver closed; nostr loop stops");
                        break;
                    }
                }
                Ok(RelayPoolNotification::Shutdown) => break,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "nostr notifications overflowed; re-subscribing to replay them");
                    if let Err(e) = self.resubscribe().await {
                        tracing::warn!(error = %e, "re-subscribe failed");
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }

    fn decode_logged(&self, event: &Event, relay: &str) -> Option<Incoming> {
        let kind = event.kind.as_u16();
        match decode_event(&self.inner.keys, event, Timestamp::now().as_secs()) {
            Decoded::Deliver { incoming, transport } => {
                let route = incoming.route();
                let what = match &incoming {
                    Incoming::Create { .. } => "create",
                    Incoming::TopUp { .. } => "topup",
                    Incoming::Status { .. } => "status",
                    Incoming::Release { .. } => "release",
                    Incoming::Invalid { .. } => "invalid",
                };
                tracing::info!(
                    event_id = %event.id,
                    request_id = %route.request_id,
                    kind,
                    author = %route.requester,
                    transport = transport.as_str(),
                    request = what,
                    relay,
                    "nostr request received"
                );
                if transport == Transport::PlainJson
                    && matches!(incoming, Incoming::Create { .. } | Incoming::TopUp { .. })
                {
                    // Seed clients: the token was public on the relay; the lease logic redeems at once.
                    tracing::info!(event_id = %event.id, "token arrived in clear (plain JSON); anyone on the relay could redeem it first");
                }
                Some(incoming)
            }
            Decoded::Ignore(reason) if reason.is_suspicious() => {
                tracing::warn!(event_id = %event.id, kind, reason = reason.as_str(), relay, "nostr event dropped");
                None
            }
            Decoded::Ignore(reason) => {
                tracing::trace!(event_id = %event.id, kind, reason = reason.as_str(), "nostr event ignored");
                None
            }
        }
    }

    async fn offer_loop(self) {
        let mut stop = self.inner.stop.subscribe();
        let mut discovery_due = tokio::time::Instant::now();
        loop {
            match self.publish_offer().await {
                Ok((id, relays)) => tracing::info!(event_id = %id, relays, "offer published"),
                Err(e) => tracing::warn!(error = %e, "offer not published; retrying next interval"),
            }
            if tokio::time::Instant::now() >= discovery_due {
                match self.publish_discovery().await {
                    Ok(accepted) => {
                        tracing::info!(accepted, "profile, relay lists and handler published");
                        discovery_due = tokio::time::Instant::now() + self.inner.opts.discovery_interval;
                    }
                    Err(e) => tracing::warn!(error = %e, "discovery events not published; retrying next interval"),
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(self.inner.opts.offer_interval) => {}
            }
        }
    }

    /// Publish the offer now; returns its id and how many relays took it.
    /// Replace the offer (fresh capacity); published now when it changed, and on every heartbeat.
    pub async fn update_offer(&self, offer: Offer) {
        let changed = {
            let mut o = self.inner.offer.lock().await;
            let changed = *o != offer;
            *o = offer;
            changed
        };
        if changed {
            if let Err(e) = self.publish_offer().await {
                tracing::warn!(error = %e, "updated offer not published; the next heartbeat retries");
            }
        }
    }

    pub async fn publish_offer(&self) -> Result<(EventId, usize), NostrError> {
        let offer = self.inner.offer.lock().await.clone();
        let created_at = {
            let mut last = self.inner.offer_at.lock().await;
            *last = Timestamp::now().as_secs().max(*last + 1);
            Timestamp::from(*last)
        };
        let content = serde_json::to_string(&offer).map_err(|e| NostrError::Build {
            what: "offer",
            request_id: "-".into(),
            reason: e.to_string(),
        })?;
        let expires = Timestamp::now() + self.inner.opts.offer_interval * 2;
        let event = EventBuilder::new(decode::kind(KIND_OFFER), content)
            .tags([Tag::identifier(OFFER_D_TAG), Tag::expiration(expires)])
            .custom_created_at(created_at)
            .sign_with_keys(&self.inner.keys)
            .map_err(|e| NostrError::Build { what: "offer", request_id: "-".into(), reason: e.to_string() })?;
        let n = self.publish_event("offer", &event).await?;
        Ok((event.id, n))
    }

    async fn resubscribe_loop(self) {
        let mut stop = self.inner.stop.subscribe();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(self.inner.opts.resubscribe_interval) => {}
            }
            if let Err(e) = self.subscribe(false).await {
                tracing::warn!(error = %e, "periodic re-subscribe failed");
            }
        }
    }

    async fn status_loop(self, tx: watch::Sender<usize>) {
        let mut stop = self.inner.stop.subscribe();
        loop {
            let n = self.inner.client.relays().await.values().filter(|r| r.is_connected()).count();
            tx.send_if_modified(|old| {
                let changed = *old != n;
                *old = n;
                changed
            });
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Send to all relays; Ok(number that accepted) if at least one did.
    async fn publish_event(&self, what: &'static str, event: &Event) -> Result<usize, NostrError> {
        // Fail fast when nothing is connected: the pool would otherwise wait ~10 s per relay for an OK
        // that cannot come, holding up the caller's retry schedule.
        let relays = self.inner.client.relays().await;
        if !relays.values().any(|r| r.is_connected()) {
            return Err(NostrError::NotAccepted {
                what,
                event_id: event.id.to_hex(),
                failures: format!("none of {} relays is connected", relays.len()),
            });
        }
        let out = self.inner.client.send_event(event).await.map_err(|e| NostrError::NotAccepted {
            what,
            event_id: event.id.to_hex(),
            failures: e.to_string(),
        })?;
        // A relay that already holds this very event (same id) has what we wanted; some relays (the
        // Python nostr-relay) answer `OK false "duplicate: …"`, e.g. for a re-publish within one second.
        let holding = out.failed.values().filter(|why| why.starts_with("duplicate:")).count();
        let accepted = out.success.len() + holding;
        if accepted == 0 {
            let failures = out.failed.iter().map(|(url, why)| format!("{url}: {why}")).collect::<Vec<_>>().join("; ");
            return Err(NostrError::NotAccepted { what, event_id: event.id.to_hex(), failures });
        }
        Ok(accepted)
    }

    /// The kind-1001 reply event (NIP-44 content, or a gift wrap around it as a rumor).
    pub async fn build_reply(&self, route: &ReplyRoute, reply: &Reply) -> Result<Event, NostrError> {
        build_reply(&self.inner.keys, route, reply).await
    }
}

/// Build the reply for `route`: kind 1001, tags `e` = request id and `p` = requester. For
/// [`ReplyVia::Nip44`] the content is NIP-44 v2 to the requester; for [`ReplyVia::GiftWrap`] the
/// same-tagged kind-1001 event is the rumor (plain JSON, as NIP-17 rumors are) of a gift wrap to them.
pub async fn build_reply(keys: &Keys, route: &ReplyRoute, reply: &Reply) -> Result<Event, NostrError> {
    let bad_route = |reason: String| NostrError::InvalidRoute { request_id: route.request_id.clone(), reason };
    let build = |reason: String| NostrError::Build { what: "reply", request_id: route.request_id.clone(), reason };
    let requester =
        PublicKey::from_hex(&route.requester).map_err(|e| bad_route(format!("requester is not a public key: {e}")))?;
    let request_id =
        EventId::from_hex(&route.request_id).map_err(|e| bad_route(format!("request id is not an event id: {e}")))?;
    let json = serde_json::to_string(reply).map_err(|e| build(e.to_string()))?;
    let tags = [Tag::event(request_id), Tag::public_key(requester)];
    match route.via {
        ReplyVia::Nip44 | ReplyVia::InBand => {
            let content = nip44::encrypt(keys.secret_key(), &requester, json, nip44::Version::V2)
                .map_err(|e| build(e.to_string()))?;
            EventBuilder::new(decode::kind(KIND_REPLY), content)
                .tags(tags)
                .sign_with_keys(keys)
                .map_err(|e| build(e.to_string()))
        }
        ReplyVia::GiftWrap => {
            let rumor = EventBuilder::new(decode::kind(KIND_REPLY), json).tags(tags).build(keys.public_key());
            EventBuilder::gift_wrap(keys, &requester, rumor, []).await.map_err(|e| build(e.to_string()))
        }
        // A chat message in the payment's thread (`e` = the payment's rumor), as NIP-17 replies are.
        ReplyVia::Chat => {
            let text = chat::chat_text(reply, &json);
            let rumor =
                EventBuilder::new(decode::kind(decode::KIND_PRIVATE_DM), text).tags(tags).build(keys.public_key());
            EventBuilder::gift_wrap(keys, &requester, rumor, []).await.map_err(|e| build(e.to_string()))
        }
    }
}

#[async_trait]
impl ReplyPort for NostrFrontend {
    /// Retries are the caller's: `Transient` when no relay accepted the event.
    async fn send(&self, route: &ReplyRoute, reply: &Reply) -> PortResult<()> {
        if route.via == ReplyVia::InBand {
            return Ok(());
        }
        let event = self.build_reply(route, reply).await?;
        let relays = self.publish_event("reply", &event).await?;
        tracing::info!(
            event_id = %event.id,
            request_id = %route.request_id,
            requester = %route.requester,
            via = ?route.via,
            relays,
            "reply sent"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use nostr_sdk::nips::nip59::UnwrappedGift;

    fn route(requester: &Keys, via: ReplyVia) -> ReplyRoute {
        ReplyRoute {
            request_id: EventId::all_zeros().to_hex().replace('0', "a"),
            requester: requester.public_key().to_hex(),
            via,
        }
    }

    #[tokio::test]
    async fn nip44_reply_is_tagged_and_decrypts_for_the_requester_only() {
        let (us, alice) = (Keys::generate(), Keys::generate());
        let r = route(&alice, ReplyVia::Nip44);
        let reply = Reply::error(&r.request_id, ErrorCode::TokenSpent, "spent");
        let ev = build_reply(&us, &r, &reply).await.unwrap();
        assert_eq!(ev.kind.as_u16(), KIND_REPLY);
        assert_eq!(ev.pubkey, us.public_key());
        let tags: Vec<Vec<String>> = ev.tags.iter().map(|t| t.as_slice().to_vec()).collect();
        assert!(tags.contains(&vec!["e".to_string(), r.request_id.clone()]));
        assert!(tags.contains(&vec!["p".to_string(), r.requester.clone()]));
        assert!(!ev.content.contains("spent"));
        let plain = nip44::decrypt(alice.secret_key(), &us.public_key(), &ev.content).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&plain).unwrap(), reply);
        assert!(nip44::decrypt(Keys::generate().secret_key(), &us.public_key(), &ev.content).is_err());
    }

    #[tokio::test]
    async fn gift_wrapped_reply_unwraps_to_a_tagged_kind_1001_rumor_from_us() {
        let (us, alice) = (Keys::generate(), Keys::generate());
        let r = route(&alice, ReplyVia::GiftWrap);
        let reply = Reply::error(&r.request_id, ErrorCode::LeaseNotFound, "no such lease");
        let wrap = build_reply(&us, &r, &reply).await.unwrap();
        assert_eq!(wrap.kind.as_u16(), KIND_GIFT_WRAP);
        assert_ne!(wrap.pubkey, us.public_key());
        let gift = UnwrappedGift::from_gift_wrap(&alice, &wrap).await.unwrap();
        assert_eq!(gift.sender, us.public_key());
        assert_eq!(gift.rumor.kind.as_u16(), KIND_REPLY);
        let tags: Vec<Vec<String>> = gift.rumor.tags.iter().map(|t| t.as_slice().to_vec()).collect();
        assert!(tags.contains(&vec!["e".to_string(), r.request_id.clone()]));
        assert!(tags.contains(&vec!["p".to_string(), r.requester.clone()]));
        assert_eq!(serde_json::from_str::<Reply>(&gift.rumor.content).unwrap(), reply);
    }

    /// No relay up: start still succeeds (the provider keeps serving, readiness says 0 relays) and a
    /// reply fails as Transient, for the caller to retry.
    #[tokio::test]
    async fn without_relays_start_succeeds_and_replies_are_transient() {
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        let mut opts = NostrOptions::new(vec!["ws://127.0.0.1:9".into()], Duration::from_secs(60));
        opts.connect_timeout = Duration::from_millis(200);
        let us = Keys::generate();
        let offer: Offer = serde_json::from_value(serde_json::json!({
            "provider_pubkey": us.public_key().to_hex(), "tiers": [], "default_tier": "x",
            "accepted_mints": [], "unit": "sat", "min_duration_seconds": 1, "max_duration_seconds": 2,
            "onion_access": false, "p2pk_pubkey": "", "default_image": "i", "allowed_images": [],
            "ssh_port": 2222, "request_kind": 1000, "reply_kind": 1001, "topup_kind": 1002,
            "status_kind": 1003
        }))
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let fe = NostrFrontend::start(us, opts, offer, tx).await.unwrap();
        assert_eq!(fe.connected_relays(), 0);
        let alice = Keys::generate();
        let r = route(&alice, ReplyVia::Nip44);
        let err = fe.send(&r, &Reply::error(&r.request_id, ErrorCode::Internal, "x")).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let inband = ReplyRoute { via: ReplyVia::InBand, ..r };
        fe.send(&inband, &Reply::error("a", ErrorCode::Internal, "x")).await.unwrap();
        fe.shutdown().await;
    }

    #[test]
    fn no_relays_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let offer = serde_json::from_value::<Offer>(serde_json::json!({
            "provider_pubkey": "", "tiers": [], "default_tier": "x", "accepted_mints": [], "unit": "sat",
            "min_duration_seconds": 1, "max_duration_seconds": 2, "onion_access": false,
            "p2pk_pubkey": "", "default_image": "i", "allowed_images": [], "ssh_port": 2222,
            "request_kind": 1000, "reply_kind": 1001, "topup_kind": 1002, "status_kind": 1003
        }))
        .unwrap();
        let opts = NostrOptions::new(vec![], Duration::from_secs(60));
        let r = rt.block_on(NostrFrontend::start(Keys::generate(), opts, offer, tx));
        assert!(matches!(r, Err(NostrError::NoRelays)));
    }

    #[tokio::test]
    async fn bad_route_is_permanent() {
        let us = Keys::generate();
        let r = ReplyRoute { request_id: "zz".into(), requester: us.public_key().to_hex(), via: ReplyVia::Nip44 };
        let e = build_reply(&us, &r, &Reply::error("zz", ErrorCode::Internal, "x")).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Permanent);
        let p: PortError = e.into();
        assert!(!p.is_transient());
        let t: PortError =
            NostrError::NotAccepted { what: "reply", event_id: "e".into(), failures: "relay down".into() }.into();
        assert!(t.is_transient());
    }
}
