//! Turning one relay event into a [`Incoming`] for the lease logic, or into a reason to ignore it.
//!
//! Pure and synchronous (no I/O, no clock): everything the provider trusts about a request's origin is
//! decided here, so it is tested exhaustively next to the code. Security rules enforced here:
//! - the event's id and signature are verified again (the relay pool also does, on receipt);
//! - a gift wrap is accepted only when the seal is a valid kind-13 event signed by the rumor's author
//!   (lesson 14: otherwise anyone could speak, and top up or query, as anyone else);
//! - error messages never echo request content (tokens may be in it), see [`describe_json_error`].

use nostr_sdk::nips::nip44;
use nostr_sdk::prelude::{Event, JsonUtil, Keys, Kind, PublicKey, UnsignedEvent};
use serde::de::DeserializeOwned;

use crate::lease::ports::{ReplyRoute, ReplyVia};
use crate::lease::Incoming;
use crate::protocol::{
    ErrorCode, LeaseRequest, ReleaseRequest, StatusRequest, TopUpRequest, KIND_RELEASE, KIND_REQUEST, KIND_STATUS,
    KIND_TOPUP, MAX_CONTENT_BYTES,
};

/// NIP-59 gift wrap.
pub const KIND_GIFT_WRAP: u16 = 1059;
/// NIP-59 seal.
pub const KIND_SEAL: u16 = 13;
/// NIP-17 private direct message (the rumor of a chat gift wrap).
pub const KIND_PRIVATE_DM: u16 = 14;

/// Requests are accepted only while `created_at` (a gift wrap's rumor's: NIP-59 backdates the wrap and
/// seal by up to two days, never the rumor) is at most this old: a replay of an older request is ignored
/// without a reply, so de-duplication never needs ids older than this (the journal keeps finished
/// records longer). At least the relay subscriptions' lookback.
pub const MAX_REQUEST_AGE_SECS: u64 = 15 * 60;
/// ... and at most this far in the future (clock skew).
pub const MAX_REQUEST_SKEW_SECS: u64 = 5 * 60;

/// Whether a request's `created_at` falls in the acceptance window around `now`.
pub fn fresh(created_at: u64, now: u64) -> bool {
    created_at + MAX_REQUEST_AGE_SECS >= now && created_at <= now + MAX_REQUEST_SKEW_SECS
}

/// How a request reached us; logged (never the content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain JSON content: the token travelled in clear (seed compatibility); it must be redeemed at once.
    PlainJson,
    /// NIP-44 v2 content encrypted to us.
    Nip44,
    /// NIP-17/NIP-59 gift wrap.
    GiftWrap,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::PlainJson => "plain_json",
            Transport::Nip44 => "nip44",
            Transport::GiftWrap => "gift_wrap",
        }
    }
}

/// Why an event is not handed to the lease logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Id or signature does not verify.
    BadSignature,
    /// Not one of the kinds we serve.
    UnsupportedKind,
    /// Not addressed to us (no `p` tag with our key) and not a seed-style plain lease request.
    NotForUs,
    /// A gift wrap to us that we cannot open (not NIP-44 to our key, broken seal, bad rumor).
    UndecryptableGiftWrap,
    /// Seal signer differs from the rumor's author: an impersonation attempt (lesson 14).
    SealSignerMismatch,
    /// A gift wrap whose rumor is not a request (e.g. a NIP-17 chat message).
    UnsupportedRumorKind,
    /// Created outside the acceptance window (a replay of an old request, or a clock far off).
    Stale,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::BadSignature => "bad_signature",
            IgnoreReason::UnsupportedKind => "unsupported_kind",
            IgnoreReason::NotForUs => "not_for_us",
            IgnoreReason::UndecryptableGiftWrap => "undecryptable_gift_wrap",
            IgnoreReason::SealSignerMismatch => "seal_signer_mismatch",
            IgnoreReason::UnsupportedRumorKind => "unsupported_rumor_kind",
            IgnoreReason::Stale => "stale",
        }
    }

    /// Reasons that point to a broken or malicious peer, worth a warning; the rest are normal relay noise.
    pub fn is_suspicious(self) -> bool {
        matches!(
            self,
            IgnoreReason::BadSignature | IgnoreReason::UndecryptableGiftWrap | IgnoreReason::SealSignerMismatch
        )
    }
}

/// Result of decoding one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Deliver { incoming: Incoming, transport: Transport },
    Ignore(IgnoreReason),
}

/// Decode one event received from a relay (any kind we subscribe to), at time `now` (unix seconds).
pub fn decode_event(keys: &Keys, event: &Event, now: u64) -> Decoded {
    if event.verify().is_err() {
        return Decoded::Ignore(IgnoreReason::BadSignature);
    }
    let kind = event.kind.as_u16();
    if kind == KIND_GIFT_WRAP {
        return decode_gift_wrap(keys, event, now);
    }
    if !is_request_kind(kind) {
        return Decoded::Ignore(IgnoreReason::UnsupportedKind);
    }
    let to_us = has_p_tag(event.tags.iter().map(|t| t.as_slice()), &keys.public_key());
    let route = ReplyRoute { request_id: event.id.to_hex(), requester: event.pubkey.to_hex(), via: ReplyVia::Nip44 };
    if !fresh(event.created_at.as_secs(), now) {
        // Addressed to us, it reached us live (our subscriptions ask for no older events than the window
        // accepts): a clock that is off, which its sender can fix once told. Unaddressed, it may be anyone's.
        if to_us {
            return invalid(route, ErrorCode::InvalidRequest, clock_off(event.created_at.as_secs(), now));
        }
        return Decoded::Ignore(IgnoreReason::Stale);
    }

    if !to_us {
        // Seed compatibility: an unaddressed kind 1000 is ours only if it is a plain lease request.
        // Anything else under kind 1000 belongs to someone else's protocol: stay silent. One addressed
        // to another provider is theirs: redeeming its token would take money meant for them.
        let addressed_elsewhere = event.tags.iter().any(|t| t.as_slice().first().is_some_and(|k| k == "p"));
        if kind != KIND_REQUEST || addressed_elsewhere || event.content.len() > MAX_CONTENT_BYTES {
            return Decoded::Ignore(IgnoreReason::NotForUs);
        }
        return match serde_json::from_str::<LeaseRequest>(&event.content) {
            Ok(request) => {
                Decoded::Deliver { incoming: Incoming::Create { route, request }, transport: Transport::PlainJson }
            }
            Err(_) => Decoded::Ignore(IgnoreReason::NotForUs),
        };
    }

    if event.content.len() > MAX_CONTENT_BYTES {
        return invalid(
            route,
            ErrorCode::ContentTooLarge,
            format!("content is {} bytes; at most {MAX_CONTENT_BYTES} are accepted", event.content.len()),
        );
    }

    // Plain JSON first (seed clients); NIP-44 payloads are base64 and never start with `{`.
    let (plaintext, transport) = if event.content.trim_start().starts_with('{') {
        (event.content.clone(), Transport::PlainJson)
    } else {
        match nip44::decrypt(keys.secret_key(), &event.pubkey, &event.content) {
            Ok(p) => (p, Transport::Nip44),
            Err(_) => {
                return invalid(
                    route,
                    ErrorCode::InvalidRequest,
                    "content is neither JSON nor NIP-44 v2 encrypted to the provider's key".into(),
                )
            }
        }
    };
    request_from_json(kind, &plaintext, route, transport)
}

fn decode_gift_wrap(keys: &Keys, wrap: &Event, now: u64) -> Decoded {
    let our_pk = keys.public_key();
    if !has_p_tag(wrap.tags.iter().map(|t| t.as_slice()), &our_pk) {
        return Decoded::Ignore(IgnoreReason::NotForUs);
    }
    // NIP-44 caps plaintexts at 64 KiB, which bounds the work below; the request's own size limit is
    // applied to the rumor, the only part the requester controls.
    let Some((seal, rumor)) = open_gift_wrap(keys, wrap) else {
        return Decoded::Ignore(IgnoreReason::UndecryptableGiftWrap);
    };
    if seal.pubkey != rumor.pubkey {
        return Decoded::Ignore(IgnoreReason::SealSignerMismatch);
    }
    let mut kind = rumor.kind.as_u16();
    // NUT-18 over the offer's Nostr transport: a NIP-17 message whose content is a payment payload. It is
    // a lease request of the default tier (see `nut18_payload`); any other chat message stays ignored.
    let payload = (kind == KIND_PRIVATE_DM).then(|| nut18_payload(&rumor.content)).flatten();
    if payload.is_some() {
        kind = KIND_REQUEST;
    }
    if !is_request_kind(kind) {
        return Decoded::Ignore(IgnoreReason::UnsupportedRumorKind);
    }
    let rumor_at = rumor.created_at.as_secs();
    // A rumor from the future: a clock that is ahead, told below. One from the past may be a relay's replay
    // of an old wrap (their window is days wide): ignored.
    let ahead = rumor_at > now + MAX_REQUEST_SKEW_SECS;
    if !fresh(rumor_at, now) && !ahead {
        return Decoded::Ignore(IgnoreReason::Stale);
    }
    // The rumor's id is the request id (the reply's `e` tag): recompute it, never trust a claimed one,
    // or a sender could make its request collide with someone else's in the journal.
    let mut rumor = rumor;
    let claimed = rumor.id.take();
    let id = rumor.id();
    let route = ReplyRoute { request_id: id.to_hex(), requester: rumor.pubkey.to_hex(), via: ReplyVia::GiftWrap };
    if claimed.is_some_and(|c| c != id) {
        return invalid(route, ErrorCode::InvalidRequest, "rumor id does not match its content".into());
    }
    if ahead {
        return invalid(route, ErrorCode::InvalidRequest, clock_off(rumor_at, now));
    }
    if rumor.content.len() > MAX_CONTENT_BYTES {
        return invalid(
            route,
            ErrorCode::ContentTooLarge,
            format!("content is {} bytes; at most {MAX_CONTENT_BYTES} are accepted", rumor.content.len()),
        );
    }
    match payload {
        // The payer's wallet reads chat messages: answered in kind 14, in words.
        Some(request) => Decoded::Deliver {
            incoming: Incoming::Create { route: ReplyRoute { via: ReplyVia::Chat, ..route }, request },
            transport: Transport::GiftWrap,
        },
        None => request_from_json(kind, &rumor.content, route, Transport::GiftWrap),
    }
}

/// A NUT-18 payment payload (`{id, memo, mint, unit, proofs}`) paying the offer's payment request, as the lease
/// request it stands for: the default tier, user `user`, a generated password, as long as the amount buys.
/// Its reply goes back as a NIP-17 chat message in words (`ReplyVia::Chat`), which the payer's client
/// shows, with the login and password. A payload with another `id` is someone else's request and is
/// ignored, the proofs left alone.
fn nut18_payload(content: &str) -> Option<LeaseRequest> {
    if content.len() > MAX_CONTENT_BYTES {
        return None;
    }
    let (cashu_token, id) = crate::protocol::creq::payload_token(content)?;
    if id.as_deref().is_some_and(|i| i != crate::protocol::creq::OFFER_PAYMENT_ID) {
        return None;
    }
    Some(LeaseRequest { cashu_token, ssh_username: None, pod_image: None, ssh_public_key: None, tier: None })
}

/// Gift wrap → (verified seal, rumor). None when any layer fails.
fn open_gift_wrap(keys: &Keys, wrap: &Event) -> Option<(Event, UnsignedEvent)> {
    let seal_json = nip44::decrypt(keys.secret_key(), &wrap.pubkey, &wrap.content).ok()?;
    let seal = Event::from_json(seal_json).ok()?;
    if seal.kind.as_u16() != KIND_SEAL || seal.verify().is_err() {
        return None;
    }
    let rumor_json = nip44::decrypt(keys.secret_key(), &seal.pubkey, &seal.content).ok()?;
    let rumor = UnsignedEvent::from_json(rumor_json).ok()?;
    Some((seal, rumor))
}

fn request_from_json(kind: u16, json: &str, route: ReplyRoute, transport: Transport) -> Decoded {
    let incoming = match kind {
        KIND_REQUEST => parse::<LeaseRequest>(json, "lease request")
            .map(|request| Incoming::Create { route: route.clone(), request }),
        KIND_TOPUP => parse::<TopUpRequest>(json, "top-up request")
            .map(|request| Incoming::TopUp { route: route.clone(), request }),
        KIND_RELEASE => parse::<ReleaseRequest>(json, "release request")
            .map(|request| Incoming::Release { route: route.clone(), request }),
        KIND_STATUS => parse::<StatusRequest>(json, "status request")
            .map(|request| Incoming::Status { route: route.clone(), request }),
        // Callers only pass request kinds.
        _ => Err(format!("kind {kind} is not a request kind")),
    };
    match incoming {
        Ok(incoming) => Decoded::Deliver { incoming, transport },
        Err(message) => invalid(route, ErrorCode::InvalidRequest, message),
    }
}

fn parse<T: DeserializeOwned>(json: &str, what: &str) -> Result<T, String> {
    serde_json::from_str::<T>(json).map_err(|e| describe_json_error(what, &e))
}

/// A message safe to send back and to log: serde's own text can quote input values (a token pasted in
/// the wrong field), so only the category and position are kept, plus the name of a missing field.
pub fn describe_json_error(what: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let detail = match e.classify() {
        Category::Syntax | Category::Eof => "content is not valid JSON".to_string(),
        Category::Io => "content could not be read".to_string(),
        Category::Data => {
            let text = e.to_string();
            // "missing field `x`" names a field of our own schema: safe and useful.
            match text.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                Some(field) => format!("missing field `{field}`"),
                None => "a field has the wrong type or value".to_string(),
            }
        }
    };
    format!("not a valid {what}: {detail} (line {}, column {})", e.line(), e.column())
}

/// What a sender whose clock is off is told: by how much, and the window.
fn clock_off(created_at: u64, now: u64) -> String {
    let (by, way) = if created_at > now { (created_at - now, "ahead of") } else { (now - created_at, "behind") };
    let by = match by {
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    };
    format!(
        "your clock is off: the request is dated {by} {way} the provider's time ({now}, unix seconds); requests \
         are accepted from {} minutes before to {} minutes after it. Set your clock and send it again.",
        MAX_REQUEST_AGE_SECS / 60,
        MAX_REQUEST_SKEW_SECS / 60
    )
}

fn invalid(route: ReplyRoute, code: ErrorCode, message: String) -> Decoded {
    let transport = match route.via {
        ReplyVia::GiftWrap | ReplyVia::Chat => Transport::GiftWrap,
        _ => Transport::Nip44,
    };
    Decoded::Deliver { incoming: Incoming::Invalid { route, code, message }, transport }
}

fn is_request_kind(kind: u16) -> bool {
    matches!(kind, KIND_REQUEST | KIND_TOPUP | KIND_STATUS | KIND_RELEASE)
}

/// Whether any `p` tag names `pk` (raw comparison: tolerant of extra tag fields such as relay hints).
fn has_p_tag<'a>(mut tags: impl Iterator<Item = &'a [String]>, pk: &PublicKey) -> bool {
    let hex = pk.to_hex();
    tags.any(|t| t.first().is_some_and(|k| k == "p") && t.get(1).is_some_and(|v| v.eq_ignore_ascii_case(&hex)))
}

/// Kind for a protocol number.
pub fn kind(n: u16) -> Kind {
    Kind::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::{EventBuilder, Tag, Timestamp};

    fn provider() -> Keys {
        Keys::generate()
    }

    fn decode_now(keys: &Keys, event: &Event) -> Decoded {
        decode_event(keys, event, Timestamp::now().as_secs())
    }

    fn signed(keys: &Keys, kind_n: u16, content: &str, tags: Vec<Tag>) -> Event {
        EventBuilder::new(kind(kind_n), content).tags(tags).sign_with_keys(keys).unwrap()
    }

    fn deliver(d: Decoded) -> (Incoming, Transport) {
        match d {
            Decoded::Deliver { incoming, transport } => (incoming, transport),
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    const SEED: &str = r#"{"cashu_token":"cashuBx","ssh_username":"alice"}"#;

    #[test]
    fn seed_plain_json_without_p_tag_is_a_create() {
        let (us, alice) = (provider(), Keys::generate());
        let ev = signed(&alice, 1000, SEED, vec![]);
        let (inc, tr) = deliver(decode_now(&us, &ev));
        assert_eq!(tr, Transport::PlainJson);
        match inc {
            Incoming::Create { route, request } => {
                assert_eq!(route.request_id, ev.id.to_hex());
                assert_eq!(route.requester, alice.public_key().to_hex());
                assert_eq!(route.via, ReplyVia::Nip44);
                assert_eq!(request.cashu_token, "cashuBx");
                assert_eq!(request.ssh_username.as_deref(), Some("alice"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_json_with_p_tag_is_accepted_too() {
        let (us, alice) = (provider(), Keys::generate());
        let ev = signed(&alice, 1000, SEED, vec![Tag::public_key(us.public_key())]);
        let (inc, tr) = deliver(decode_now(&us, &ev));
        assert_eq!(tr, Transport::PlainJson);
        assert!(matches!(inc, Incoming::Create { .. }));
    }

    #[test]
    fn nip44_to_us_is_decrypted_for_each_kind() {
        let (us, alice) = (provider(), Keys::generate());
        let p = vec![Tag::public_key(us.public_key())];
        let enc = |s: &str| nip44::encrypt(alice.secret_key(), &us.public_key(), s, nip44::Version::V2).unwrap();

        let ev = signed(&alice, 1000, &enc(SEED), p.clone());
        let (inc, tr) = deliver(decode_now(&us, &ev));
        assert_eq!(tr, Transport::Nip44);
        let Incoming::Create { route, request } = inc else { panic!() };
        assert_eq!(route.request_id, ev.id.to_hex());
        assert_eq!(route.requester, alice.public_key().to_hex());
        assert_eq!(route.via, ReplyVia::Nip44);
        assert_eq!(request.cashu_token, "cashuBx");

        let ev = signed(&alice, 1002, &enc(r#"{"cashu_token":"t","lease_id":"L1"}"#), p.clone());
        let (inc, _) = deliver(decode_now(&us, &ev));
        let Incoming::TopUp { request, .. } = inc else { panic!("{inc:?}") };
        assert_eq!(request.lease, "L1");

        let ev = signed(&alice, 1003, &enc(r#"{"pod_name":"ssh-pod-1"}"#), p);
        let (inc, _) = deliver(decode_now(&us, &ev));
        let Incoming::Status { request, .. } = inc else { panic!("{inc:?}") };
        assert_eq!(request.lease, "ssh-pod-1");
    }

    #[test]
    fn nip44_to_someone_else_but_p_tagged_to_us_is_invalid() {
        let (us, alice, carol) = (provider(), Keys::generate(), Keys::generate());
        // Encrypted to carol, not to us: we cannot read it.
        let c = nip44::encrypt(alice.secret_key(), &carol.public_key(), SEED, nip44::Version::V2).unwrap();
        let ev = signed(&alice, 1000, &c, vec![Tag::public_key(us.public_key())]);
        let (inc, _) = deliver(decode_now(&us, &ev));
        let Incoming::Invalid { code, route, .. } = inc else { panic!("{inc:?}") };
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert_eq!(route.request_id, ev.id.to_hex());
    }

    async fn gift_wrap(sender: &Keys, to: &Keys, kind_n: u16, content: &str) -> (Event, String) {
        let mut rumor = EventBuilder::new(kind(kind_n), content).build(sender.public_key());
        let id = rumor.id().to_hex();
        let wrap = EventBuilder::gift_wrap(sender, &to.public_key(), rumor, []).await.unwrap();
        (wrap, id)
    }

    #[tokio::test]
    async fn gift_wrap_to_us_routes_via_gift_wrap_with_rumor_id() {
        let (us, alice) = (provider(), Keys::generate());
        let (wrap, rumor_id) = gift_wrap(&alice, &us, 1000, SEED).await;
        assert_ne!(wrap.pubkey, alice.public_key(), "wrap is signed by an ephemeral key");
        let (inc, tr) = deliver(decode_now(&us, &wrap));
        assert_eq!(tr, Transport::GiftWrap);
        let Incoming::Create { route, request } = inc else { panic!("{inc:?}") };
        assert_eq!(route.via, ReplyVia::GiftWrap);
        assert_eq!(route.requester, alice.public_key().to_hex());
        assert_eq!(route.request_id, rumor_id);
        assert_ne!(route.request_id, wrap.id.to_hex());
        assert_eq!(request.ssh_username.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn gift_wrap_with_garbage_rumor_is_invalid_to_its_author() {
        let (us, alice) = (provider(), Keys::generate());
        let (wrap, rumor_id) = gift_wrap(&alice, &us, 1002, r#"{"lease":"x"}"#).await;
        let (inc, _) = deliver(decode_now(&us, &wrap));
        let Incoming::Invalid { route, code, message } = inc else { panic!("{inc:?}") };
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert_eq!(route.via, ReplyVia::GiftWrap);
        assert_eq!(route.request_id, rumor_id);
        assert!(message.contains("missing field `cashu_token`"), "{message}");
    }

    #[tokio::test]
    async fn a_nut18_payload_over_nip17_is_a_lease_request_of_the_default_tier() {
        let (us, alice) = (provider(), Keys::generate());
        let proof = serde_json::json!({"amount": 4, "id": "009a1f293253e41e",
            "secret": "407915bc212be61a77e3e6d2aeb4c727980bda51cd06a6afc29e2861768a7837",
            "C": "02bc9097997d81afb2cc7346b5e4345a9346bd2a506eb7958598a72f0cf85163ea"});
        let payload = |id: &str| {
            serde_json::json!({"id": id, "memo": "m", "mint": "https://mint.x", "unit": "sat", "proofs": [proof]})
                .to_string()
        };
        let (wrap, rumor_id) = gift_wrap(&alice, &us, 14, &payload(crate::protocol::creq::OFFER_PAYMENT_ID)).await;
        let (inc, tr) = deliver(decode_now(&us, &wrap));
        assert_eq!(tr, Transport::GiftWrap);
        match inc {
            Incoming::Create { route, request } => {
                assert_eq!(route.request_id, rumor_id);
                assert_eq!(route.requester, alice.public_key().to_hex());
                assert_eq!(route.via, ReplyVia::Chat, "answered as the chat message its wallet shows");
                assert!(request.cashu_token.starts_with("cashuB"));
                assert!(request.tier.is_none() && request.ssh_username.is_none());
            }
            other => panic!("{other:?}"),
        }
        // Another request's payload is not ours to redeem.
        let (wrap, _) = gift_wrap(&alice, &us, 14, &payload("someone-elses-invoice")).await;
        assert_eq!(decode_now(&us, &wrap), Decoded::Ignore(IgnoreReason::UnsupportedRumorKind));
    }

    #[tokio::test]
    async fn gift_wrap_for_someone_else_or_a_chat_message_is_ignored() {
        let (us, alice, carol) = (provider(), Keys::generate(), Keys::generate());
        let (wrap, _) = gift_wrap(&alice, &carol, 1000, SEED).await;
        assert_eq!(decode_now(&us, &wrap), Decoded::Ignore(IgnoreReason::NotForUs));
        let (dm, _) = gift_wrap(&alice, &us, 14, "hello").await;
        assert_eq!(decode_now(&us, &dm), Decoded::Ignore(IgnoreReason::UnsupportedRumorKind));
    }

    /// Lesson 14: mallory seals a rumor that claims to be alice's.
    #[test]
    fn gift_wrap_whose_seal_signer_is_not_the_rumor_author_is_dropped() {
        let (us, alice, mallory) = (provider(), Keys::generate(), Keys::generate());
        let mut rumor =
            EventBuilder::new(kind(1002), r#"{"cashu_token":"t","lease":"alice-lease"}"#).build(alice.public_key());
        rumor.ensure_id();
        let sealed =
            nip44::encrypt(mallory.secret_key(), &us.public_key(), rumor.as_json(), nip44::Version::V2).unwrap();
        let seal = EventBuilder::new(kind(KIND_SEAL), sealed).sign_with_keys(&mallory).unwrap();
        let eph = Keys::generate();
        let wrapped = nip44::encrypt(eph.secret_key(), &us.public_key(), seal.as_json(), nip44::Version::V2).unwrap();
        let wrap = EventBuilder::new(kind(KIND_GIFT_WRAP), wrapped)
            .tag(Tag::public_key(us.public_key()))
            .sign_with_keys(&eph)
            .unwrap();
        assert_eq!(decode_now(&us, &wrap), Decoded::Ignore(IgnoreReason::SealSignerMismatch));
        assert!(IgnoreReason::SealSignerMismatch.is_suspicious());
    }

    #[test]
    fn gift_wrap_whose_seal_is_not_kind_13_or_forged_is_undecryptable() {
        let (us, alice) = (provider(), Keys::generate());
        let mut rumor = EventBuilder::new(kind(1000), SEED).build(alice.public_key());
        rumor.ensure_id();
        let sealed = nip44::encrypt(alice.secret_key(), &us.public_key(), rumor.as_json(), nip44::Version::V2).unwrap();
        let wrong_kind = EventBuilder::new(kind(1), sealed.clone()).sign_with_keys(&alice).unwrap();
        let mut forged: serde_json::Value =
            serde_json::from_str(&EventBuilder::new(kind(KIND_SEAL), sealed).sign_with_keys(&alice).unwrap().as_json())
                .unwrap();
        forged["created_at"] = serde_json::json!(1);
        for seal_json in [wrong_kind.as_json(), forged.to_string()] {
            let eph = Keys::generate();
            let wrapped = nip44::encrypt(eph.secret_key(), &us.public_key(), seal_json, nip44::Version::V2).unwrap();
            let wrap = EventBuilder::new(kind(KIND_GIFT_WRAP), wrapped)
                .tag(Tag::public_key(us.public_key()))
                .sign_with_keys(&eph)
                .unwrap();
            assert_eq!(decode_now(&us, &wrap), Decoded::Ignore(IgnoreReason::UndecryptableGiftWrap));
        }
    }

    #[test]
    fn rumor_with_a_claimed_id_that_does_not_match_is_invalid() {
        let (us, alice) = (provider(), Keys::generate());
        let rumor = EventBuilder::new(kind(1000), SEED).build(alice.public_key());
        let mut json: serde_json::Value = serde_json::from_str(&rumor.as_json()).unwrap();
        json["id"] = serde_json::json!("00".repeat(32));
        let sealed =
            nip44::encrypt(alice.secret_key(), &us.public_key(), json.to_string(), nip44::Version::V2).unwrap();
        let seal = EventBuilder::new(kind(KIND_SEAL), sealed)
            .custom_created_at(Timestamp::now())
            .sign_with_keys(&alice)
            .unwrap();
        let eph = Keys::generate();
        let wrapped = nip44::encrypt(eph.secret_key(), &us.public_key(), seal.as_json(), nip44::Version::V2).unwrap();
        let wrap = EventBuilder::new(kind(KIND_GIFT_WRAP), wrapped)
            .tag(Tag::public_key(us.public_key()))
            .sign_with_keys(&eph)
            .unwrap();
        let (inc, _) = deliver(decode_now(&us, &wrap));
        let Incoming::Invalid { route, code, .. } = inc else { panic!("{inc:?}") };
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert_ne!(route.request_id, "00".repeat(32));
    }

    #[test]
    fn kind_1000_garbage_without_p_tag_is_ignored_silently() {
        let (us, bob) = (provider(), Keys::generate());
        for content in ["hello world", "{not json", r#"{"other":"protocol"}"#, ""] {
            let ev = signed(&bob, 1000, content, vec![]);
            assert_eq!(decode_now(&us, &ev), Decoded::Ignore(IgnoreReason::NotForUs));
        }
    }

    #[test]
    fn plain_request_addressed_to_another_provider_is_not_ours() {
        let (us, other, alice) = (provider(), Keys::generate(), Keys::generate());
        let ev = signed(&alice, 1000, SEED, vec![Tag::public_key(other.public_key())]);
        assert_eq!(decode_now(&us, &ev), Decoded::Ignore(IgnoreReason::NotForUs));
    }

    #[test]
    fn unaddressed_topup_and_status_are_ignored() {
        let (us, bob) = (provider(), Keys::generate());
        for k in [1002, 1003] {
            let ev = signed(&bob, k, r#"{"cashu_token":"t","lease":"x"}"#, vec![]);
            assert_eq!(decode_now(&us, &ev), Decoded::Ignore(IgnoreReason::NotForUs));
        }
    }

    #[test]
    fn kind_1000_garbage_with_our_p_tag_is_invalid() {
        let (us, bob) = (provider(), Keys::generate());
        for content in ["hello world", "{not json", ""] {
            let ev = signed(&bob, 1000, content, vec![Tag::public_key(us.public_key())]);
            let (inc, _) = deliver(decode_now(&us, &ev));
            let Incoming::Invalid { code, route, .. } = inc else { panic!("{inc:?}") };
            assert_eq!(code, ErrorCode::InvalidRequest);
            assert_eq!(route.requester, bob.public_key().to_hex());
        }
    }

    #[test]
    fn oversize_content_is_too_large_only_when_addressed_to_us() {
        let (us, bob) = (provider(), Keys::generate());
        let big = format!(r#"{{"cashu_token":"{}"}}"#, "a".repeat(MAX_CONTENT_BYTES));
        let ev = signed(&bob, 1000, &big, vec![Tag::public_key(us.public_key())]);
        let (inc, _) = deliver(decode_now(&us, &ev));
        let Incoming::Invalid { code, .. } = inc else { panic!("{inc:?}") };
        assert_eq!(code, ErrorCode::ContentTooLarge);

        let ev = signed(&bob, 1000, &big, vec![]);
        assert_eq!(decode_now(&us, &ev), Decoded::Ignore(IgnoreReason::NotForUs));

        // Exactly at the limit is still read.
        let pad = MAX_CONTENT_BYTES - r#"{"cashu_token":""}"#.len();
        let edge = format!(r#"{{"cashu_token":"{}"}}"#, "a".repeat(pad));
        assert_eq!(edge.len(), MAX_CONTENT_BYTES);
        let ev = signed(&bob, 1000, &edge, vec![Tag::public_key(us.public_key())]);
        assert!(matches!(deliver(decode_now(&us, &ev)).0, Incoming::Create { .. }));
    }

    #[tokio::test]
    async fn oversize_gift_wrapped_rumor_is_too_large() {
        let (us, alice) = (provider(), Keys::generate());
        let big = format!(r#"{{"cashu_token":"{}"}}"#, "a".repeat(MAX_CONTENT_BYTES));
        let (wrap, id) = gift_wrap(&alice, &us, 1000, &big).await;
        let (inc, _) = deliver(decode_now(&us, &wrap));
        let Incoming::Invalid { code, route, .. } = inc else { panic!("{inc:?}") };
        assert_eq!(code, ErrorCode::ContentTooLarge);
        assert_eq!(route.request_id, id);
        assert_eq!(route.via, ReplyVia::GiftWrap);
    }

    #[test]
    fn wrong_json_shape_is_invalid_without_echoing_content() {
        let (us, bob) = (provider(), Keys::generate());
        let p = vec![Tag::public_key(us.public_key())];
        // A lease request sent as a status query; and a token where a string list would be.
        let cases = [
            (1003, SEED.to_string(), "missing field `lease`"),
            (1000, r#"{"cashu_token":["cashuBsecret"]}"#.to_string(), "wrong type"),
            (1000, r#"{"cashu_token":"cashuBsecret","ssh_username":7}"#.to_string(), "wrong type"),
            (1000, "[1,2]".to_string(), ""),
        ];
        for (k, content, expect) in cases {
            let ev = signed(&bob, k, &content, p.clone());
            let (inc, _) = deliver(decode_now(&us, &ev));
            let Incoming::Invalid { code, message, .. } = inc else { panic!("{inc:?}") };
            assert_eq!(code, ErrorCode::InvalidRequest, "{content}");
            assert!(message.contains(expect), "{message}");
            assert!(!message.contains("cashuB"), "{message}");
        }
    }

    #[test]
    fn tampered_event_is_ignored() {
        let (us, alice) = (provider(), Keys::generate());
        let ev = signed(&alice, 1000, SEED, vec![]);
        let mut json: serde_json::Value = serde_json::from_str(&ev.as_json()).unwrap();
        json["content"] = serde_json::json!(r#"{"cashu_token":"cashuBother"}"#);
        let forged = Event::from_json(json.to_string()).unwrap();
        assert_eq!(decode_now(&us, &forged), Decoded::Ignore(IgnoreReason::BadSignature));
    }

    #[test]
    fn other_kinds_are_ignored() {
        let (us, alice) = (provider(), Keys::generate());
        let ev = signed(&alice, 1, SEED, vec![Tag::public_key(us.public_key())]);
        assert_eq!(decode_now(&us, &ev), Decoded::Ignore(IgnoreReason::UnsupportedKind));
    }

    #[test]
    fn requests_outside_the_time_window_are_refused_with_the_clock_error() {
        let (us, alice) = (provider(), Keys::generate());
        let at = |t: u64| {
            EventBuilder::new(kind(1000), SEED)
                .tags([Tag::public_key(us.public_key())])
                .custom_created_at(Timestamp::from(t))
                .sign_with_keys(&alice)
                .unwrap()
        };
        let now = 1_900_000_000;
        assert!(matches!(
            decode_event(&us, &at(now - 60), now),
            Decoded::Deliver { incoming: Incoming::Create { .. }, .. }
        ));
        // Addressed to us and outside the window: the sender's clock is off, and is told so.
        let told = |d: Decoded| match d {
            Decoded::Deliver { incoming: Incoming::Invalid { code, message, .. }, .. } => (code, message),
            other => panic!("{other:?}"),
        };
        let (code, message) = told(decode_event(&us, &at(now - 2 * 3600 - 300), now));
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert!(message.contains("2 h 5 min behind"), "{message}");
        assert!(told(decode_event(&us, &at(now + 3600), now)).1.contains("1 h 0 min ahead of"));
        // Unaddressed (a seed client's plain request, or anyone's): ignored.
        let plain = EventBuilder::new(kind(1000), SEED).custom_created_at(Timestamp::from(now - 7200));
        assert_eq!(
            decode_event(&us, &plain.sign_with_keys(&alice).unwrap(), now),
            Decoded::Ignore(IgnoreReason::Stale)
        );
        assert!(fresh(now - MAX_REQUEST_AGE_SECS, now) && !fresh(now - MAX_REQUEST_AGE_SECS - 1, now));
    }

    #[tokio::test]
    async fn a_gift_wrap_is_judged_by_its_rumor_time_not_the_backdated_wrap() {
        let (us, alice) = (provider(), Keys::generate());
        // nostr-sdk backdates the wrap (and seal) randomly up to two days, as NIP-59 says.
        let (wrap, _) = gift_wrap(&alice, &us, 1000, SEED).await;
        let now = Timestamp::now().as_secs();
        assert!(matches!(decode_event(&us, &wrap, now), Decoded::Deliver { .. }));
        // The same wrap read a day later: its rumor is stale (a relay's replay), ignored.
        assert_eq!(decode_event(&us, &wrap, now + 86_400), Decoded::Ignore(IgnoreReason::Stale));
        // Read by a provider whose clock is an hour behind the sender's: the sender is told.
        match decode_event(&us, &wrap, now - 3600) {
            Decoded::Deliver { incoming: Incoming::Invalid { route, message, .. }, .. } => {
                assert_eq!(route.via, ReplyVia::GiftWrap);
                assert!(message.contains("ahead of"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
