//! How renters find the provider with standard Nostr events, beside its kind-38400 offer: a profile
//! (NIP-01 kind 0), the relays it reads and writes (NIP-65 kind 10002), the relays its gift wraps are to
//! be sent to (NIP-17 kind 10050: NIP-17 clients send only there), and a NIP-89 handler announcement
//! (kind 31990) naming the kinds it serves. All replaceable: re-published, they replace the last ones.

use nostr_sdk::prelude::{Event, EventBuilder, Keys, Kind, Tag, TagKind, Timestamp};

use super::{NostrError, NostrFrontend};
use crate::config::Profile;
use crate::protocol::{KIND_OFFER, KIND_RELEASE, KIND_REQUEST, KIND_STATUS, KIND_TOPUP};

/// The NIP-89 handler's `d` tag.
pub const HANDLER_D_TAG: &str = "paygress";
/// NIP-89 handler information.
pub const KIND_HANDLER: u16 = 31_990;
/// The kinds a renter sends to this provider, and its offer's.
pub const HANDLED_KINDS: [u16; 5] = [KIND_REQUEST, KIND_TOPUP, KIND_STATUS, KIND_RELEASE, KIND_OFFER];

/// The profile's JSON (kind 0 content, and the handler's).
pub fn profile_json(p: &Profile) -> String {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), p.name.clone().into());
    m.insert("display_name".into(), p.name.clone().into());
    m.insert("about".into(), p.about.clone().into());
    if let Some(w) = &p.website {
        m.insert("website".into(), w.clone().into());
    }
    if let Some(n) = &p.nip05 {
        m.insert("nip05".into(), n.clone().into());
    }
    serde_json::Value::Object(m).to_string()
}

/// The four discovery events, signed, dated `at`.
pub fn discovery_events(
    keys: &Keys,
    profile: &Profile,
    relays: &[String],
    at: Timestamp,
) -> Result<Vec<Event>, NostrError> {
    let build = |what: &'static str, b: EventBuilder| {
        b.custom_created_at(at).sign_with_keys(keys).map_err(|e| NostrError::Build {
            what,
            request_id: "-".into(),
            reason: e.to_string(),
        })
    };
    let tag = |name: &str, value: &str| Tag::custom(TagKind::Custom(name.to_string().into()), [value.to_string()]);
    let meta = profile_json(profile);
    let handler_tags = std::iter::once(Tag::identifier(HANDLER_D_TAG))
        .chain(HANDLED_KINDS.iter().map(|k| tag("k", &k.to_string())))
        .chain(profile.website.iter().map(|w| tag("web", w)));
    Ok(vec![
        build("profile", EventBuilder::new(Kind::Metadata, meta.clone()))?,
        build("relay list", EventBuilder::new(Kind::RelayList, "").tags(relays.iter().map(|r| tag("r", r))))?,
        build("inbox relays", EventBuilder::new(Kind::InboxRelays, "").tags(relays.iter().map(|r| tag("relay", r))))?,
        build("handler", EventBuilder::new(Kind::from(KIND_HANDLER), meta).tags(handler_tags))?,
    ])
}

impl NostrFrontend {
    /// Publish (or refresh) the discovery events; how many relay acceptances they had in all.
    pub async fn publish_discovery(&self) -> Result<usize, NostrError> {
        let events =
            discovery_events(&self.inner.keys, &self.inner.opts.profile, &self.inner.opts.relays, Timestamp::now())?;
        let mut accepted = 0;
        for (what, event) in ["profile", "relay list", "inbox relays", "handler"].into_iter().zip(&events) {
            accepted += self.publish_event(what, event).await?;
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_events_say_who_where_and_what() {
        let keys = Keys::generate();
        let profile = Profile {
            name: "Pods by Ann".into(),
            about: "SSH pods".into(),
            website: Some("https://pods.example".into()),
            nip05: None,
        };
        let relays = vec!["wss://r1.example".to_string(), "wss://r2.example".to_string()];
        let ev = discovery_events(&keys, &profile, &relays, Timestamp::from(1_700_000_000)).unwrap();
        let kinds: Vec<u16> = ev.iter().map(|e| e.kind.as_u16()).collect();
        assert_eq!(kinds, [0, 10002, 10050, 31990]);
        assert!(ev.iter().all(|e| e.verify().is_ok() && e.pubkey == keys.public_key()));
        let meta: serde_json::Value = serde_json::from_str(&ev[0].content).unwrap();
        assert_eq!(
            (meta["name"].as_str(), meta["website"].as_str()),
            (Some("Pods by Ann"), Some("https://pods.example"))
        );
        assert!(meta.get("nip05").is_none());
        let tags = |e: &Event| e.tags.iter().map(|t| t.as_slice().to_vec()).collect::<Vec<_>>();
        assert_eq!(tags(&ev[1]), [vec!["r", "wss://r1.example"], vec!["r", "wss://r2.example"]]);
        assert_eq!(tags(&ev[2]), [vec!["relay", "wss://r1.example"], vec!["relay", "wss://r2.example"]]);
        let handler = tags(&ev[3]);
        assert_eq!(handler[0], ["d", HANDLER_D_TAG]);
        for k in ["1000", "1002", "1003", "1004", "38400"] {
            assert!(handler.contains(&vec!["k".to_string(), k.to_string()]), "{k}: {handler:?}");
        }
        assert!(handler.contains(&vec!["web".to_string(), "https://pods.example".to_string()]));
    }
}
