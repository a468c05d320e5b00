//! NUT-18 payment requests (`creqA…`): what the offer carries (amount per hour, unit, accepted mints, a P2PK
//! lock to the provider's key, the Nostr transport) and what a NUT-24 `402` states in `X-Cashu` (amount, unit,
//! mints; no lock, no transport: the payment comes back in-band). Encoding and decoding are cdk's; this module
//! only maps them to the few fields Paygress uses and refuses what it cannot honour. Shared by the provider and
//! `paygress-cli`. docs/protocol.md describes the fields.

use std::str::FromStr;

use cdk::mint_url::MintUrl;
use cdk::nuts::{
    CurrencyUnit, Kind, Nut10SecretRequest, PaymentRequest, PaymentRequestPayload, PublicKey, Token, Transport,
    TransportType,
};
use cdk::Amount;
use nostr_sdk::nips::nip19::{FromBech32, Nip19Profile, ToBech32};
use nostr_sdk::{PublicKey as NostrKey, RelayUrl};

use super::ErrorCode;

/// The Nostr transport tag of NIP-17 direct messages (NUT-18: `["n", "17"]`).
pub const NIP17_TAG: [&str; 2] = ["n", "17"];

/// The `i` of the offer's payment request: a NUT-18 payload quoting it (over the Nostr transport) buys a
/// lease of the default tier.
pub const OFFER_PAYMENT_ID: &str = "paygress-lease";

#[derive(Debug, thiserror::Error)]
pub enum CreqError {
    #[error("not a NUT-18 payment request (creqA…/creqB…)")]
    Malformed,
    #[error("payment request: {0}")]
    Unsupported(String),
    #[error("cannot encode the payment request: {0}")]
    Encode(String),
}

impl CreqError {
    /// Every failure is the caller's input (or configuration) being unusable.
    pub fn kind(&self) -> ErrorCode {
        match self {
            CreqError::Malformed | CreqError::Unsupported(_) => ErrorCode::InvalidRequest,
            CreqError::Encode(_) => ErrorCode::Internal,
        }
    }
}

/// Where a NUT-18 payload may be sent over Nostr: a key and its relays (an `nprofile`), NIP-17.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NostrTarget {
    /// Hex public key.
    pub pubkey: String,
    pub relays: Vec<String>,
}

/// The fields of a payment request that Paygress writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Creq {
    pub id: Option<String>,
    /// In `unit`, net of the payer's mint fees (NUT-18).
    pub amount: u64,
    pub unit: String,
    /// Normalised mint URLs; the list is strict.
    pub mints: Vec<String>,
    pub description: Option<String>,
    /// NUT-11: proofs are to be locked to this compressed key (hex, 33 bytes).
    pub p2pk: Option<String>,
    pub nostr: Option<NostrTarget>,
}

impl Creq {
    /// `creqA` + base64url(CBOR), by cdk.
    pub fn encode(&self) -> Result<String, CreqError> {
        let unit = CurrencyUnit::from_str(&self.unit).map_err(|_| CreqError::Encode(format!("unit {}", self.unit)))?;
        let mints = self
            .mints
            .iter()
            .map(|m| MintUrl::from_str(m).map_err(|_| CreqError::Encode(format!("mint URL {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let nut10 = match &self.p2pk {
            Some(k) => {
                PublicKey::from_hex(k).map_err(|_| CreqError::Encode("P2PK key is not a secp256k1 key".into()))?;
                Some(Nut10SecretRequest::new::<_, Vec<Vec<String>>>(Kind::P2PK, k.clone(), None))
            }
            None => None,
        };
        let transports = match &self.nostr {
            Some(t) => {
                let pk = NostrKey::from_hex(&t.pubkey).map_err(|_| CreqError::Encode("Nostr key".into()))?;
                let relays = t.relays.iter().filter_map(|r| RelayUrl::parse(r).ok());
                let nprofile =
                    Nip19Profile::new(pk, relays).to_bech32().map_err(|e| CreqError::Encode(e.to_string()))?;
                let tags = vec![NIP17_TAG.iter().map(|s| s.to_string()).collect()];
                vec![Transport { _type: TransportType::Nostr, target: nprofile, tags }]
            }
            None => Vec::new(),
        };
        let pr = PaymentRequest {
            payment_id: self.id.clone(),
            amount: Some(Amount::from(self.amount)),
            unit: Some(unit),
            single_use: None,
            mints,
            mint_preferred: None,
            supported_methods: Vec::new(),
            description: self.description.clone(),
            transports,
            nut10,
        };
        Ok(pr.to_string())
    }

    /// Decode a `creqA…` (or NUT-26 `creqB…`) request that Paygress can pay: an amount and unit, a strict
    /// mint list, at most a single-key P2PK lock. A Nostr transport is kept only when it speaks NIP-17.
    pub fn decode(s: &str) -> Result<Creq, CreqError> {
        let pr = PaymentRequest::from_str(s.trim()).map_err(|_| CreqError::Malformed)?;
        let amount = pr.amount.map(u64::from).ok_or_else(|| CreqError::Unsupported("no amount".into()))?;
        let unit = pr.unit.map(|u| u.to_string()).ok_or_else(|| CreqError::Unsupported("no unit".into()))?;
        if pr.mint_preferred == Some(true) {
            return Err(CreqError::Unsupported("a preferred (not strict) mint list".into()));
        }
        let mints = pr
            .mints
            .iter()
            .map(|m| {
                crate::config::normalize_mint_url(&m.to_string())
                    .ok_or_else(|| CreqError::Unsupported(format!("mint URL {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let p2pk = match pr.nut10 {
            None => None,
            Some(n) if n.kind == Kind::P2PK && n.tags.as_ref().is_none_or(|t| t.is_empty()) => {
                PublicKey::from_hex(&n.data)
                    .map_err(|_| CreqError::Unsupported("the P2PK lock is not a secp256k1 key".into()))?;
                Some(n.data)
            }
            Some(_) => return Err(CreqError::Unsupported("a lock other than plain P2PK to one key".into())),
        };
        let nostr = pr.transports.iter().find_map(|t| {
            let nip17 = t.tags.iter().any(|g| g.len() >= 2 && g[0] == NIP17_TAG[0] && g[1] == NIP17_TAG[1]);
            if t._type != TransportType::Nostr || !nip17 {
                return None;
            }
            let profile = Nip19Profile::from_bech32(&t.target)
                .ok()
                .or_else(|| NostrKey::from_bech32(&t.target).ok().map(|pk| Nip19Profile::new(pk, [])))?;
            let relays = profile.relays.iter().map(|r| r.to_string()).collect();
            Some(NostrTarget { pubkey: profile.public_key.to_hex(), relays })
        });
        Ok(Creq { id: pr.payment_id, amount, unit, mints, description: pr.description, p2pk, nostr })
    }
}

/// The offer's payment request: an hour of `tier`, from `mints`, locked to `p2pk`, and payable over Nostr
/// (NIP-17 to `nostr`'s key at its relays) when the provider listens there. Empty if it cannot be encoded
/// (a configuration the provider validated cannot cause that).
pub fn for_offer(tier: &super::Tier, mints: &[String], p2pk: &str, nostr: Option<(&str, &[String])>) -> String {
    let creq = Creq {
        id: Some(OFFER_PAYMENT_ID.into()),
        amount: tier.sats_per_hour,
        unit: "sat".into(),
        mints: mints.to_vec(),
        description: Some(format!("Paygress SSH pod, tier {}: {} sat per hour", tier.name, tier.sats_per_hour)),
        p2pk: Some(p2pk.to_string()),
        nostr: nostr.map(|(pk, relays)| NostrTarget { pubkey: pk.to_string(), relays: relays.to_vec() }),
    };
    creq.encode().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the offer carries no payment request");
        String::new()
    })
}

/// A NUT-18 payload (`{id, memo, mint, unit, proofs}`) as the `cashuB` token of the same proofs, and the
/// payload's `id`. `None` when the JSON is not such a payload. The memo is not kept: it is the payer's text.
pub fn payload_token(json: &str) -> Option<(String, Option<String>)> {
    let p: PaymentRequestPayload = serde_json::from_str(json).ok()?;
    if p.proofs.is_empty() {
        return None;
    }
    Some((Token::new(p.mint, p.proofs, None, p.unit).to_string(), p.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        cdk::nuts::SecretKey::from_slice(&[7u8; 32]).unwrap().public_key().to_hex()
    }

    fn offer_like() -> Creq {
        Creq {
            id: Some(OFFER_PAYMENT_ID.into()),
            amount: 100,
            unit: "sat".into(),
            mints: vec!["http://127.0.0.1:23338".into(), "https://mint.x".into()],
            description: Some("an hour of tier basic".into()),
            p2pk: Some(key()),
            nostr: Some(NostrTarget {
                pubkey: nostr_sdk::Keys::generate().public_key().to_hex(),
                relays: vec!["ws://127.0.0.1:27777".into()],
            }),
        }
    }

    #[test]
    fn round_trip_through_cdk_encoding() {
        let c = offer_like();
        let s = c.encode().unwrap();
        assert!(s.starts_with("creqA"), "{s}");
        let d = Creq::decode(&s).unwrap();
        assert_eq!(d.amount, 100);
        assert_eq!(d.unit, "sat");
        assert_eq!(d.mints, c.mints);
        assert_eq!(d.p2pk, c.p2pk);
        let t = d.nostr.clone().unwrap();
        assert_eq!(t.pubkey, c.nostr.as_ref().unwrap().pubkey);
        assert_eq!(t.relays.len(), 1);
        assert!(t.relays[0].starts_with("ws://127.0.0.1:27777"));
        assert_eq!(d.id.as_deref(), Some(OFFER_PAYMENT_ID));
        // The raw request says what NUT-18 readers expect: nostr transport, an nprofile target, ["n","17"].
        let pr = PaymentRequest::from_str(&s).unwrap();
        assert_eq!(pr.transports[0]._type, TransportType::Nostr);
        assert!(pr.transports[0].target.starts_with("nprofile1"));
        assert_eq!(pr.transports[0].tags, vec![vec!["n".to_string(), "17".to_string()]]);
        assert_eq!(pr.nut10.unwrap().kind, Kind::P2PK);
    }

    #[test]
    fn in_band_request_has_no_transport_and_no_lock() {
        let c = Creq { amount: 17, unit: "sat".into(), mints: vec!["https://mint.x".into()], ..Default::default() };
        let pr = PaymentRequest::from_str(&c.encode().unwrap()).unwrap();
        assert!(pr.transports.is_empty() && pr.nut10.is_none());
        assert_eq!(pr.amount, Some(Amount::from(17)));
    }

    #[test]
    fn refuses_what_it_cannot_pay() {
        assert!(matches!(Creq::decode("cashuBxyz"), Err(CreqError::Malformed)));
        assert!(matches!(Creq::decode("creqA!!!"), Err(CreqError::Malformed)));
        let no_amount = PaymentRequest {
            payment_id: None,
            amount: None,
            unit: Some(CurrencyUnit::Sat),
            single_use: None,
            mints: vec![],
            mint_preferred: None,
            supported_methods: vec![],
            description: None,
            transports: vec![],
            nut10: None,
        };
        assert!(matches!(Creq::decode(&no_amount.to_string()), Err(CreqError::Unsupported(_))));
        let mut htlc = no_amount.clone();
        htlc.amount = Some(Amount::from(5));
        htlc.nut10 = Some(Nut10SecretRequest::new::<_, Vec<Vec<String>>>(Kind::HTLC, "00".repeat(32), None));
        assert!(matches!(Creq::decode(&htlc.to_string()), Err(CreqError::Unsupported(_))));
        let mut multi = htlc.clone();
        multi.nut10 = Some(Nut10SecretRequest::new(Kind::P2PK, key(), Some(vec![vec!["n_sigs".into(), "2".into()]])));
        assert!(matches!(Creq::decode(&multi.to_string()), Err(CreqError::Unsupported(_))));
        assert_eq!(CreqError::Malformed.kind(), ErrorCode::InvalidRequest);
    }

    #[test]
    fn decodes_the_nut18_spec_example() {
        // NUT-18's example request: 10 sat at nofees.testnut.cashu.space, a Nostr transport with ["n","17"].
        let s = "creqApWF0gaNhdGVub3N0cmFheKlucHJvZmlsZTFxeTI4d3VtbjhnaGo3dW45ZDNzaGp0bnl2OWtoMnVld2Q5aHN6OW1od2RlbjV0ZTB3ZmprY2N0ZTljdXJ4dmVuOWVlaHFjdHJ2NWhzenJ0aHdkZW41dGUwZGVoaHh0bnZkYWtxcWd5ZGFxeTdjdXJrNDM5eWtwdGt5c3Y3dWRoZGh1NjhzdWNtMjk1YWtxZWZkZWhrZjBkNDk1Y3d1bmw1YWeBgmFuYjE3YWloYjdhOTAxNzZhYQphdWNzYXRhbYF4Imh0dHBzOi8vbm9mZWVzLnRlc3RudXQuY2FzaHUuc3BhY2U=";
        let d = Creq::decode(s).unwrap();
        assert_eq!(d.amount, 10);
        assert_eq!(d.unit, "sat");
        assert_eq!(d.id.as_deref(), Some("b7a90176"));
        assert_eq!(d.mints, vec!["https://nofees.testnut.cashu.space".to_string()]);
        assert!(d.nostr.is_some());
    }

    #[test]
    fn payloads_become_tokens_of_the_same_proofs() {
        let proof = serde_json::json!({"amount": 4, "id": "009a1f293253e41e",
            "secret": "407915bc212be61a77e3e6d2aeb4c727980bda51cd06a6afc29e2861768a7837",
            "C": "02bc9097997d81afb2cc7346b5e4345a9346bd2a506eb7958598a72f0cf85163ea"});
        let json = serde_json::json!({"id": OFFER_PAYMENT_ID, "memo": "hi", "mint": "https://mint.x",
            "unit": "sat", "proofs": [proof]})
        .to_string();
        let (token, id) = payload_token(&json).unwrap();
        assert!(token.starts_with("cashuB"));
        assert_eq!(id.as_deref(), Some(OFFER_PAYMENT_ID));
        let t = Token::from_str(&token).unwrap();
        assert_eq!(u64::from(t.value().unwrap()), 4);
        assert!(payload_token(r#"{"cashu_token":"cashuBx"}"#).is_none());
        assert!(payload_token(r#"{"mint":"https://mint.x","unit":"sat","proofs":[]}"#).is_none());
    }
}
