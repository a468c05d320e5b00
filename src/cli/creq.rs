//! Paying from the offer's NUT-18 payment request (`request --minutes N`): the price per hour, unit, accepted
//! mints and P2PK lock come from the `creqA…` the provider published, not from the CLI's own reading of the
//! offer. The token is locked as asked, with a refund to the CLI's key after a locktime, so a payment the
//! provider refuses unredeemed comes back (`paygress-cli wallet receive`) instead of being stranded.

use anyhow::{anyhow, bail, Result};
use cdk::nuts::SecretKey;
use nostr_sdk::prelude::Keys;

use super::wallet::CliWallet;
use crate::lease::service::price_of;
use crate::protocol::creq::Creq;
use crate::protocol::Offer;

/// After this long a locked payment the provider did not redeem can be taken back by the CLI's key.
pub const REFUND_AFTER_SECS: u64 = 3600;

/// What a lease of `minutes` of `tier` costs by the offer's payment request, and the request itself.
pub struct Priced {
    pub creq: Creq,
    pub amount: u64,
    pub secs: u64,
}

/// Price `minutes` of `tier` (the default tier when `None`) from the offer's payment request.
pub fn price(offer: &Offer, tier: Option<&str>, minutes: u64) -> Result<Priced> {
    if offer.payment_request.is_empty() {
        bail!("the provider's offer carries no payment request; pay with --amount N --mint URL or --token");
    }
    let creq = Creq::decode(&offer.payment_request).map_err(|e| anyhow!("the offer's {e}"))?;
    if creq.unit != "sat" {
        bail!("the offer's payment request is in {}, the CLI pays in sat", creq.unit);
    }
    // The request prices an hour of the default tier; another tier's rate is in the offer.
    let rate = match tier.filter(|t| *t != offer.default_tier) {
        None => creq.amount,
        Some(t) => offer
            .tiers
            .iter()
            .find(|x| x.name == t)
            .map(|x| x.sats_per_hour)
            .ok_or_else(|| anyhow!("the provider offers no tier {t:?}"))?,
    };
    let secs = minutes.saturating_mul(60).max(offer.min_duration_seconds);
    if secs > offer.max_duration_seconds {
        bail!("{minutes} min is above the provider's maximum of {} s", offer.max_duration_seconds);
    }
    Ok(Priced { amount: price_of(secs, rate), secs, creq })
}

/// The key a locked payment refunds to: the CLI's Nostr key (secp256k1).
pub fn refund_key(keys: &Keys) -> Result<SecretKey> {
    SecretKey::from_slice(&keys.secret_key().secret_bytes())
        .map_err(|_| anyhow!("the CLI's key is not a secp256k1 key"))
}

/// A token paying `p` from the wallet: the first accepted mint holding enough, locked as the request asks.
pub async fn pay(wallet: &CliWallet, p: &Priced, keys: &Keys, now: u64) -> Result<(String, String)> {
    let balances = wallet.balances().await?;
    let held = |m: &str| {
        balances
            .iter()
            .filter(|(b, _)| crate::config::normalize_mint_url(b).as_deref() == Some(m))
            .map(|(_, s)| *s)
            .sum::<u64>()
    };
    // A little above the amount: sending a locked token swaps, and the swap has its own fee.
    let mint = p.creq.mints.iter().find(|m| held(m) > p.amount).or_else(|| p.creq.mints.first());
    let Some(mint) = mint else { bail!("the offer's payment request names no mint") };
    let token = match &p.creq.p2pk {
        Some(lock) => wallet.send_locked(mint, p.amount, lock, &refund_key(keys)?, now + REFUND_AFTER_SECS).await?,
        None => wallet.send(mint, p.amount).await?,
    };
    Ok((token, mint.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::creq::for_offer;
    use crate::protocol::Tier;

    fn offer() -> Offer {
        let tiers = vec![Tier::new("basic", "500m", "1Gi", 100), Tier::new("big", "2", "4Gi", 600)];
        let p2pk = SecretKey::from_slice(&[7u8; 32]).unwrap().public_key().to_hex();
        let pk = Keys::generate().public_key().to_hex();
        let relays = vec!["ws://127.0.0.1:27777".to_string()];
        let mints = vec!["http://127.0.0.1:23338".to_string()];
        let payment_request = for_offer(&tiers[0], &mints, &p2pk, Some((&pk, &relays)));
        serde_json::from_value(serde_json::json!({
            "provider_pubkey": "00", "tiers": tiers, "default_tier": "basic", "accepted_mints": mints,
            "unit": "sat", "min_duration_seconds": 60, "max_duration_seconds": 86400, "onion_access": false,
            "p2pk_pubkey": p2pk, "default_image": "i", "allowed_images": [], "ssh_port": 2222,
            "request_kind": 1000, "reply_kind": 1001, "topup_kind": 1002, "status_kind": 1003,
            "payment_request": payment_request,
        }))
        .unwrap()
    }

    #[test]
    fn prices_from_the_request_and_the_tier() {
        let o = offer();
        let p = price(&o, None, 30).unwrap();
        assert_eq!((p.amount, p.secs), (50, 1800));
        assert_eq!(p.creq.p2pk.as_deref(), Some(o.p2pk_pubkey.as_str()));
        assert_eq!(price(&o, Some("big"), 30).unwrap().amount, 300);
        assert!(price(&o, Some("none"), 30).is_err());
        assert!(price(&o, None, 100_000).is_err());
        // Below the minimum the minimum is bought.
        assert_eq!(price(&o, None, 0).unwrap().secs, 60);
        let mut bare = o.clone();
        bare.payment_request.clear();
        assert!(price(&bare, None, 30).is_err());
    }
}
