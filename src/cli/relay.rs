//! Talking to the provider over Nostr exactly as src/nostr decodes it: requests as NIP-44 v2 content with
//! a `p` tag (or NIP-17 gift wraps), replies as kind 1001 with `e` = request id, and kind-38400 offers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use nostr_sdk::nips::nip44;
use nostr_sdk::nips::nip59::UnwrappedGift;
use nostr_sdk::prelude::{
    Client, Event, EventBuilder, EventId, Filter, Keys, Kind, PublicKey, RelayPoolNotification, Tag, Timestamp,
    ToBech32,
};

use super::Fail;
use crate::protocol::{Offer, Reply, KIND_OFFER, KIND_REPLY};

const KIND_GIFT_WRAP: u16 = 1059;

/// A provider's newest offer and when it was published.
pub struct SeenOffer {
    pub pubkey: PublicKey,
    pub created_at: u64,
    pub offer: Offer,
}

impl SeenOffer {
    pub fn npub(&self) -> String {
        self.pubkey.to_bech32().unwrap_or_else(|_| self.pubkey.to_hex())
    }
}

/// `npub1…` or 64 hex chars.
pub fn parse_pubkey(s: &str) -> Result<PublicKey> {
    PublicKey::parse(s.trim()).map_err(|_| anyhow!("{s:?} is not an npub or hex public key"))
}

/// A connected client, or `Fail::Unreachable` when no relay answers.
pub async fn connect(keys: &Keys, relays: &[String], timeout: Duration) -> Result<Client> {
    if relays.is_empty() {
        return Err(Fail::Unreachable("no relays: pass --relay URL or set NOSTR_RELAYS".into()).into());
    }
    let client = Client::builder().signer(keys.clone()).build();
    for r in relays {
        client.add_relay(r.as_str()).await.map_err(|e| anyhow!("bad relay URL {r}: {e}"))?;
    }
    client.connect().await;
    client.wait_for_connection(timeout).await;
    let up = client.relays().await.values().filter(|r| r.is_connected()).count();
    if up == 0 {
        client.shutdown().await;
        return Err(Fail::Unreachable(format!("no relay connects ({})", relays.join(", "))).into());
    }
    Ok(client)
}

/// Newest offer per provider (optionally of one provider only).
pub async fn fetch_offers(client: &Client, author: Option<PublicKey>, timeout: Duration) -> Result<Vec<SeenOffer>> {
    let mut filter = Filter::new().kind(Kind::from(KIND_OFFER));
    if let Some(a) = author {
        filter = filter.author(a);
    }
    let events = client.fetch_events(filter, timeout).await.map_err(|e| anyhow!("fetching offers: {e}"))?;
    let now = Timestamp::now();
    let mut newest: BTreeMap<PublicKey, SeenOffer> = BTreeMap::new();
    for ev in events {
        if ev.verify().is_err() || ev.is_expired_at(&now) {
            continue;
        }
        let Ok(offer) = serde_json::from_str::<Offer>(&ev.content) else { continue };
        // An offer naming another key than its signer's is someone's mistake or a lie: skip it.
        if !offer.provider_pubkey.eq_ignore_ascii_case(&ev.pubkey.to_hex()) {
            continue;
        }
        let seen = SeenOffer { pubkey: ev.pubkey, created_at: ev.created_at.as_secs(), offer };
        match newest.get(&ev.pubkey) {
            Some(old) if old.created_at >= seen.created_at => {}
            _ => {
                newest.insert(ev.pubkey, seen);
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// A signed request ready to publish, and the id the reply will carry in its `e` tag.
pub struct Outgoing {
    pub event: Event,
    pub request_id: EventId,
    pub gift_wrapped: bool,
}

/// Kind `kind` with `json` for `provider`: NIP-44 v2 content and a `p` tag, or (nip17) a gift wrap whose
/// rumor is that event (the request id is then the rumor's id).
pub async fn build_request(keys: &Keys, provider: &PublicKey, kind: u16, json: &str, nip17: bool) -> Result<Outgoing> {
    if nip17 {
        let mut rumor =
            EventBuilder::new(Kind::from(kind), json).tags([Tag::public_key(*provider)]).build(keys.public_key());
        let request_id = rumor.id();
        let event =
            EventBuilder::gift_wrap(keys, provider, rumor, []).await.map_err(|e| anyhow!("building gift wrap: {e}"))?;
        Ok(Outgoing { event, request_id, gift_wrapped: true })
    } else {
        let content = nip44::encrypt(keys.secret_key(), provider, json, nip44::Version::V2)
            .map_err(|e| anyhow!("NIP-44 encryption: {e}"))?;
        let event = EventBuilder::new(Kind::from(kind), content)
            .tags([Tag::public_key(*provider)])
            .sign_with_keys(keys)
            .map_err(|e| anyhow!("signing request: {e}"))?;
        let request_id = event.id;
        Ok(Outgoing { event, request_id, gift_wrapped: false })
    }
}

/// Subscribe for the reply, publish, wait for it (progress on stderr), decrypt.
pub async fn exchange(
    client: &Client,
    keys: &Keys,
    provider: &PublicKey,
    out: &Outgoing,
    timeout: Duration,
    quiet: bool,
) -> Result<Reply> {
    let me = keys.public_key();
    // Subscribe BEFORE publishing so a fast reply is never missed.
    let mut notifications = client.notifications();
    let filter = if out.gift_wrapped {
        // NIP-59 back-dates wraps by up to 2 days.
        Filter::new()
            .kind(Kind::from(KIND_GIFT_WRAP))
            .pubkey(me)
            .since(Timestamp::now() - Duration::from_secs(3 * 86400))
    } else {
        Filter::new()
            .kind(Kind::from(KIND_REPLY))
            .author(*provider)
            .event(out.request_id)
            .since(Timestamp::now() - Duration::from_secs(600))
    };
    client.subscribe(filter, None).await.map_err(|e| anyhow!("subscribing for the reply: {e}"))?;

    let sent = client.send_event(&out.event).await.map_err(|e| anyhow!("publishing the request: {e}"))?;
    if sent.success.is_empty() {
        let why: Vec<String> = sent.failed.iter().map(|(u, w)| format!("{u}: {w}")).collect();
        return Err(Fail::Unreachable(format!("no relay accepted the request ({})", why.join("; "))).into());
    }
    let rid = out.request_id.to_hex();
    if !quiet {
        eprintln!(
            "request {rid} sent to {} relay(s); waiting up to {}s for the provider's reply…",
            sent.success.len(),
            timeout.as_secs()
        );
    }

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let npub = provider.to_bech32().unwrap_or_else(|_| provider.to_hex());
                return Err(Fail::Timeout(format!(
                    "no reply from {npub} to request {rid} within {}s", timeout.as_secs()
                )).into());
            }
            _ = tick.tick() => if !quiet {
                eprintln!("… still waiting ({}s)", started.elapsed().as_secs());
            },
            n = notifications.recv() => match n {
                Ok(RelayPoolNotification::Event { event, .. }) => {
                    if let Some(reply) = open_reply(keys, provider, &out.request_id, &event).await {
                        return Ok(reply);
                    }
                }
                Ok(RelayPoolNotification::Shutdown) => return Err(anyhow!("relay pool shut down")),
                Ok(_) => {}
                // Overflow: only our own few events flow here; keep listening.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(anyhow!("relay pool closed")),
            }
        }
    }
}

/// Messages providers send about leases after their reply (expiry notices, early ends), from the last
/// `since` on, printed by `on_message` as they arrive, until `until` (None: forever).
pub async fn watch(
    client: &Client,
    keys: &Keys,
    providers: &[PublicKey],
    since: Duration,
    until: Option<Duration>,
    mut on_message: impl FnMut(&PublicKey, &Reply),
) -> Result<()> {
    let me = keys.public_key();
    let mut notifications = client.notifications();
    let direct = Filter::new()
        .kind(Kind::from(KIND_REPLY))
        .authors(providers.iter().copied())
        .pubkey(me)
        .since(Timestamp::now() - since);
    // NIP-59 back-dates wraps by up to 2 days.
    let wrapped = Filter::new()
        .kind(Kind::from(KIND_GIFT_WRAP))
        .pubkey(me)
        .since(Timestamp::now() - since - Duration::from_secs(2 * 86400));
    for f in [direct, wrapped] {
        client.subscribe(f, None).await.map_err(|e| anyhow!("subscribing: {e}"))?;
    }
    let deadline = until.map(|u| tokio::time::Instant::now() + u);
    let mut seen = std::collections::HashSet::new();
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, notifications.recv()).await.ok(),
                None => Some(notifications.recv().await),
            }
        };
        let Some(n) = next.await else { return Ok(()) };
        match n {
            Ok(RelayPoolNotification::Event { event, .. }) => {
                if !seen.insert(event.id) {
                    continue;
                }
                for provider in providers {
                    if let Some(reply) = open_message(keys, provider, &event).await {
                        if matches!(reply, Reply::Notice { .. } | Reply::Error { .. }) {
                            on_message(provider, &reply);
                        }
                    }
                }
            }
            Ok(RelayPoolNotification::Shutdown) => return Ok(()),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Any kind-1001 message from `provider` to us in `event` (NIP-44, or a gift wrap whose seal it signed).
async fn open_message(keys: &Keys, provider: &PublicKey, event: &Event) -> Option<Reply> {
    match event.kind.as_u16() {
        KIND_REPLY if event.pubkey == *provider && event.verify().is_ok() => {
            let plain = nip44::decrypt(keys.secret_key(), provider, &event.content).ok()?;
            serde_json::from_str(&plain).ok()
        }
        KIND_GIFT_WRAP => {
            let gift = UnwrappedGift::from_gift_wrap(keys, event).await.ok()?;
            (gift.sender == *provider && gift.rumor.kind.as_u16() == KIND_REPLY)
                .then(|| serde_json::from_str(&gift.rumor.content).ok())?
        }
        _ => None,
    }
}

/// The reply to `request_id` from `provider` inside `event`, if it is one. Later messages tagged with the
/// same request (expiry notices, an early end) are not the reply.
async fn open_reply(keys: &Keys, provider: &PublicKey, request_id: &EventId, event: &Event) -> Option<Reply> {
    let reply = open_reply_any(keys, provider, request_id, event).await?;
    match &reply {
        Reply::Notice { .. } => None,
        Reply::Error { code, .. } if *code == crate::protocol::ErrorCode::LeaseEnded => None,
        _ => Some(reply),
    }
}

async fn open_reply_any(keys: &Keys, provider: &PublicKey, request_id: &EventId, event: &Event) -> Option<Reply> {
    let answers = |tags: &nostr_sdk::prelude::Tags| {
        tags.iter().any(|t| {
            let s = t.as_slice();
            s.first().is_some_and(|k| k == "e")
                && s.get(1).is_some_and(|v| v.eq_ignore_ascii_case(&request_id.to_hex()))
        })
    };
    match event.kind.as_u16() {
        KIND_REPLY => {
            if event.pubkey != *provider || !answers(&event.tags) || event.verify().is_err() {
                return None;
            }
            let plain = nip44::decrypt(keys.secret_key(), provider, &event.content).ok()?;
            serde_json::from_str(&plain).ok()
        }
        KIND_GIFT_WRAP => {
            // from_gift_wrap verifies the seal and that its signer is the rumor's author.
            let gift = UnwrappedGift::from_gift_wrap(keys, event).await.ok()?;
            if gift.sender != *provider || gift.rumor.kind.as_u16() != KIND_REPLY || !answers(&gift.rumor.tags) {
                return None;
            }
            serde_json::from_str(&gift.rumor.content).ok()
        }
        _ => None,
    }
}
