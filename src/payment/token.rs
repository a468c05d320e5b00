//! Offline token checks: decoding (cashuA v3, cashuB v4), mint whitelist, unit, NUT-11 locks and the
//! encoding-independent digest. Nothing here touches the network.

use std::str::FromStr;

use cdk::nuts::{CurrencyUnit, KeySet, KeySetInfo, Kind, PublicKey, SpendingConditions, Token};
use sha2::{Digest, Sha256};

use super::error::PaymentError;
use crate::config::normalize_mint_url;
use crate::lease::ports::TokenInfo;

/// A token that passed every offline check.
pub(crate) struct Checked {
    pub token: Token,
    pub info: TokenInfo,
}

/// Strip what wallets and URIs wrap around a token: whitespace and a `cashu:` scheme.
pub(crate) fn strip(raw: &str) -> &str {
    let t = raw.trim();
    let t = match t.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("cashu:") => &t[6..],
        _ => t,
    };
    t.trim_start_matches('/').trim()
}

/// Decode without judging. Parse errors get a fixed message: decoder errors can quote the input, which
/// holds proof secrets.
pub(crate) fn decode(raw: &str) -> Result<Token, PaymentError> {
    let s = strip(raw);
    if !(s.starts_with("cashuA") || s.starts_with("cashuB")) {
        return Err(PaymentError::InvalidToken { reason: "not a cashuA or cashuB token".into() });
    }
    Token::from_str(s).map_err(|_| PaymentError::InvalidToken { reason: "malformed token encoding".into() })
}

/// The token's single mint, normalised like the whitelist. V3 tokens may name several mints; those are refused.
pub(crate) fn token_mint(token: &Token) -> Result<String, PaymentError> {
    if let Token::TokenV3(v3) = token {
        if v3.is_multi_mint() {
            return Err(PaymentError::InvalidToken { reason: "token spans several mints".into() });
        }
    }
    let mint =
        token.mint_url().map_err(|_| PaymentError::InvalidToken { reason: "token names no mint".into() })?.to_string();
    normalize_mint_url(&mint).ok_or(PaymentError::MintNotAllowed { mint })
}

/// Decode and check the mint against the whitelist: enough to ask that mint about the token.
pub(crate) fn check_mint(raw: &str, whitelist: &[String]) -> Result<(Token, String), PaymentError> {
    let token = decode(raw)?;
    let mint_url = token_mint(&token)?;
    // Exact equality of normalised URLs: a prefix test would admit https://mint.x.evil.io (lesson 3).
    if !whitelist.contains(&mint_url) {
        return Err(PaymentError::MintNotAllowed { mint: mint_url });
    }
    Ok((token, mint_url))
}

/// Every offline check of `PaymentPort::inspect`, in the order that answers the most useful error first.
pub(crate) fn check(
    raw: &str,
    whitelist: &[String],
    unit: &CurrencyUnit,
    our_key: &PublicKey,
) -> Result<Checked, PaymentError> {
    let (token, mint_url) = check_mint(raw, whitelist)?;
    // V3 tokens without a unit are sat by convention (NUT-00).
    let token_unit = token.unit().unwrap_or_default();
    if token_unit != *unit {
        return Err(PaymentError::UnitNotSupported { unit: token_unit.to_string(), expected: unit.to_string() });
    }
    let amount =
        u64::from(token.value().map_err(|_| PaymentError::InvalidToken { reason: "token amount overflows".into() })?);
    if amount == 0 {
        return Err(PaymentError::InvalidToken { reason: "token holds no proofs".into() });
    }
    let p2pk_locked = check_locks(&token, our_key)?;
    let digest = digest(&token);
    Ok(Checked { info: TokenInfo { mint_url, unit: token_unit.to_string(), amount, p2pk_locked, digest }, token })
}

/// NUT-10/11: true if some proof is P2PK-locked (to us). A lock we cannot open alone — another key, several
/// signatures required, an HTLC, or a malformed NUT-10 secret — makes the token unusable for us.
fn check_locks(token: &Token, our_key: &PublicKey) -> Result<bool, PaymentError> {
    let ours = our_key.x_only_public_key();
    let mut locked = false;
    for secret in token.token_secrets() {
        // Plain secrets are hex strings; NUT-10 secrets are JSON arrays.
        if secret.as_bytes().first() != Some(&b'[') {
            continue;
        }
        let cond = SpendingConditions::try_from(secret)
            .map_err(|_| PaymentError::InvalidToken { reason: "unreadable spending condition".into() })?;
        if cond.kind() != Kind::P2PK {
            return Err(PaymentError::InvalidToken { reason: "HTLC-locked tokens are not accepted".into() });
        }
        if cond.num_sigs().unwrap_or(1) > 1 {
            return Err(PaymentError::InvalidToken { reason: "token needs several signatures".into() });
        }
        // Schnorr signatures verify against the x-only key, so either parity of our key opens the lock.
        let to_us = cond.pubkeys().unwrap_or_default().iter().any(|k| k.x_only_public_key() == ours);
        if !to_us {
            return Err(PaymentError::InvalidToken { reason: "token is locked to another key".into() });
        }
        locked = true;
    }
    Ok(locked)
}

/// Proofs one token may carry: an honest wallet needs about log2(amount) (a day of a lease is under 20);
/// each costs a hash-to-curve and a DLEQ check here and an input at the mint.
pub(crate) const MAX_PROOFS: usize = 64;

/// What can be told of forged proofs with the mint's public keys alone, before anything is stored: every
/// proof names a keyset of this mint (in our unit), has an amount that keyset signs (a power of two), and,
/// where it carries a NUT-12 DLEQ proof, that proof verifies against the mint's key for the amount.
pub(crate) fn vet_proofs(token: &Token, keysets: &[KeySet]) -> Result<(), PaymentError> {
    let forged = |reason: &str| PaymentError::InvalidToken { reason: reason.to_string() };
    let infos: Vec<KeySetInfo> = keysets
        .iter()
        .map(|k| KeySetInfo {
            id: k.id,
            unit: k.unit.clone(),
            active: k.active.unwrap_or(false),
            input_fee_ppk: k.input_fee_ppk,
            final_expiry: k.final_expiry,
        })
        .collect();
    let proofs = token.proofs(&infos).map_err(|_| forged("a proof names no keyset of this mint"))?;
    if proofs.len() > MAX_PROOFS {
        return Err(forged(&format!("more than {MAX_PROOFS} proofs")));
    }
    for proof in &proofs {
        let keyset = keysets.iter().find(|k| k.id == proof.keyset_id).ok_or_else(|| forged("unknown keyset"))?;
        if !u64::from(proof.amount).is_power_of_two() {
            return Err(forged("a proof's amount is not a power of two"));
        }
        let key = keyset.keys.amount_key(proof.amount).ok_or_else(|| forged("a proof's amount has no mint key"))?;
        if proof.dleq.is_some() && proof.verify_dleq(key).is_err() {
            return Err(forged("a proof's DLEQ proof does not verify: not signed by this mint"));
        }
    }
    Ok(())
}

/// sha256 over the proof secrets, sorted, each length-prefixed: the same proofs give the same digest in v3
/// and v4 encoding, whatever the proof order.
pub(crate) fn digest(token: &Token) -> String {
    let mut secrets: Vec<Vec<u8>> = token.token_secrets().into_iter().map(|s| s.to_bytes()).collect();
    secrets.sort();
    let mut h = Sha256::new();
    for s in &secrets {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use cdk::mint_url::MintUrl;
    use cdk::nuts::{Conditions, Id, Proof, SecretKey};
    use cdk::secret::Secret;
    use cdk::Amount;

    use super::*;
    use crate::lease::ports::{FailureKind, PortError};
    use crate::protocol::ErrorCode;

    // NUT-00 test vectors: the same two proofs (2 + 8 sat at https://8333.space:3338) as v3 and as v4.
    const V3: &str = "cashuAeyJ0b2tlbiI6W3sibWludCI6Imh0dHBzOi8vODMzMy5zcGFjZTozMzM4IiwicHJvb2ZzIjpbeyJhbW91bnQiOjIsImlkIjoiMDA5YTFmMjkzMjUzZTQxZSIsInNlY3JldCI6IjQwNzkxNWJjMjEyYmU2MWE3N2UzZTZkMmFlYjRjNzI3OTgwYmRhNTFjZDA2YTZhZmMyOWUyODYxNzY4YTc4MzciLCJDIjoiMDJiYzkwOTc5OTdkODFhZmIyY2M3MzQ2YjVlNDM0NWE5MzQ2YmQyYTUwNmViNzk1ODU5OGE3MmYwY2Y4NTE2M2VhIn0seyJhbW91bnQiOjgsImlkIjoiMDA5YTFmMjkzMjUzZTQxZSIsInNlY3JldCI6ImZlMTUxMDkzMTRlNjFkNzc1NmIwZjhlZTBmMjNhNjI0YWNhYTNmNGUwNDJmNjE0MzNjNzI4YzcwNTdiOTMxYmUiLCJDIjoiMDI5ZThlNTA1MGI4OTBhN2Q2YzA5NjhkYjE2YmMxZDVkNWZhMDQwZWExZGUyODRmNmVjNjlkNjEyOTlmNjcxMDU5In1dfV0sInVuaXQiOiJzYXQiLCJtZW1vIjoiVGhhbmsgeW91LiJ9";
    const V4: &str = "cashuBpGFtd2h0dHBzOi8vODMzMy5zcGFjZTozMzM4YXVjc2F0YWRqVGhhbmsgeW91LmF0gaJhaUgAmh8pMlPkHmFwgqRhYQJhc3hANDA3OTE1YmMyMTJiZTYxYTc3ZTNlNmQyYWViNGM3Mjc5ODBiZGE1MWNkMDZhNmFmYzI5ZTI4NjE3NjhhNzgzN2FjWCECvJCXmX2Br7LMc0a15DRak0a9KlBut5WFmKcvDPhRY-phZPakYWEIYXN4QGZlMTUxMDkzMTRlNjFkNzc1NmIwZjhlZTBmMjNhNjI0YWNhYTNmNGUwNDJmNjE0MzNjNzI4YzcwNTdiOTMxYmVhY1ghAp6OUFC4kKfWwJaNsWvB1dX6BA6h3ihPbsadYSmfZxBZYWT2";
    // NUT-00 v4 vector: 1 sat at http://localhost:3338, memo "Thank you".
    const V4_LOCALHOST: &str = "cashuBpGF0gaJhaUgArSaMTR9YJmFwgaNhYQFhc3hAOWE2ZGJiODQ3YmQyMzJiYTc2ZGIwZGYxOTcyMTZiMjlkM2I4Y2MxNDU1M2NkMjc4MjdmYzFjYzk0MmZlZGI0ZWFjWCEDhhhUP_trhpXfStS6vN6So0qWvc2X3O4NfM-Y1HISZ5JhZGlUaGFuayB5b3VhbXVodHRwOi8vbG9jYWxob3N0OjMzMzhhdWNzYXQ=";

    fn key() -> SecretKey {
        SecretKey::from_slice(&[7u8; 32]).expect("valid key")
    }

    fn wl(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| normalize_mint_url(s).expect("url")).collect()
    }

    fn run(raw: &str, whitelist: &[&str]) -> Result<TokenInfo, PaymentError> {
        check(raw, &wl(whitelist), &CurrencyUnit::Sat, &key().public_key()).map(|c| c.info)
    }

    fn code(r: Result<TokenInfo, PaymentError>) -> FailureKind {
        PortError::from(r.expect_err("must be refused")).kind
    }

    /// A token at `mint` with proofs whose secrets are given.
    fn token_with(mint: &str, unit: CurrencyUnit, secrets: Vec<Secret>) -> String {
        let c = SecretKey::from_slice(&[9u8; 32]).expect("key").public_key();
        let id = Id::from_str("009a1f293253e41e").expect("id");
        let proofs = secrets.into_iter().map(|s| Proof::new(Amount::from(4), id, s, c)).collect();
        Token::new(MintUrl::from_str(mint).expect("mint"), proofs, None, unit).to_string()
    }

    fn p2pk_secret(to: PublicKey, conditions: Option<Conditions>) -> Secret {
        Secret::try_from(SpendingConditions::new_p2pk(to, conditions)).expect("p2pk secret")
    }

    #[test]
    fn parses_nut00_v3_and_v4_vectors_with_the_same_digest() {
        let a = run(V3, &["https://8333.space:3338"]).expect("v3");
        let b = run(V4, &["https://8333.space:3338/"]).expect("v4");
        assert_eq!(a.amount, 10);
        assert_eq!(b.amount, 10);
        assert_eq!(a.unit, "sat");
        assert_eq!(a.mint_url, "https://8333.space:3338");
        assert!(!a.p2pk_locked);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.digest.len(), 64);
        let c = run(V4_LOCALHOST, &["http://localhost:3338"]).expect("v4 localhost");
        assert_eq!(c.amount, 1);
        assert_ne!(c.digest, a.digest);
    }

    #[test]
    fn strips_whitespace_and_scheme() {
        let wrapped = format!("  cashu:{V4}\n");
        assert!(run(&wrapped, &["https://8333.space:3338"]).is_ok());
        let upper = format!("CASHU:{V3}");
        assert!(run(&upper, &["https://8333.space:3338"]).is_ok());
    }

    #[test]
    fn garbage_is_invalid_token() {
        for raw in ["", "hello", "cashuB", "cashuA!!!", "cashuBbm90IGNib3I", &V4[..40]] {
            assert_eq!(code(run(raw, &["https://8333.space:3338"])), FailureKind::Rejected(ErrorCode::InvalidToken));
        }
    }

    #[test]
    fn mint_whitelist_is_exact_after_normalisation() {
        let t = token_with("https://mint.x.evil.io", CurrencyUnit::Sat, vec![Secret::generate()]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::MintNotAllowed));
        let t = token_with("https://mint.x/extra", CurrencyUnit::Sat, vec![Secret::generate()]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::MintNotAllowed));
        let t = token_with("https://mint.x", CurrencyUnit::Sat, vec![Secret::generate()]);
        assert_eq!(code(run(&t, &["https://mint.x.evil.io"])), FailureKind::Rejected(ErrorCode::MintNotAllowed));
        // Case, default port and trailing slash do not matter.
        let t = token_with("HTTPS://Mint.X:443/", CurrencyUnit::Sat, vec![Secret::generate()]);
        let info = run(&t, &["https://mint.x"]).expect("same mint");
        assert_eq!(info.mint_url, "https://mint.x");
        assert_eq!(info.amount, 4);
    }

    #[test]
    fn wrong_unit_is_refused() {
        let t = token_with("https://mint.x", CurrencyUnit::Usd, vec![Secret::generate()]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::UnitNotSupported));
        let t = token_with("https://mint.x", CurrencyUnit::Msat, vec![Secret::generate()]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::UnitNotSupported));
    }

    #[test]
    fn p2pk_to_us_is_accepted_to_others_refused() {
        let ours = key().public_key();
        let t = token_with("https://mint.x", CurrencyUnit::Sat, vec![p2pk_secret(ours, None), Secret::generate()]);
        let info = run(&t, &["https://mint.x"]).expect("locked to us");
        assert!(info.p2pk_locked);
        assert_eq!(info.amount, 8);

        let other = SecretKey::generate().public_key();
        let t = token_with("https://mint.x", CurrencyUnit::Sat, vec![p2pk_secret(other, None)]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::InvalidToken));

        // One proof to us, one to someone else: unusable as a whole.
        let t =
            token_with("https://mint.x", CurrencyUnit::Sat, vec![p2pk_secret(ours, None), p2pk_secret(other, None)]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::InvalidToken));

        // 2-of-2 with us and another: we cannot sign alone.
        let cond = Conditions { pubkeys: Some(vec![other]), num_sigs: Some(2), ..Default::default() };
        let t = token_with("https://mint.x", CurrencyUnit::Sat, vec![p2pk_secret(ours, Some(cond))]);
        assert_eq!(code(run(&t, &["https://mint.x"])), FailureKind::Rejected(ErrorCode::InvalidToken));

        // Our key with the other parity prefix (as derived from an x-only Nostr key) still counts as ours.
        let mut flipped = ours.to_bytes();
        flipped[0] = if flipped[0] == 2 { 3 } else { 2 };
        let flipped = PublicKey::from_slice(&flipped).expect("flipped");
        let t = token_with("https://mint.x", CurrencyUnit::Sat, vec![p2pk_secret(flipped, None)]);
        assert!(run(&t, &["https://mint.x"]).expect("x-only match").p2pk_locked);
    }

    #[test]
    fn digest_ignores_proof_order() {
        let (s1, s2) = (Secret::generate(), Secret::generate());
        let a =
            run(&token_with("https://mint.x", CurrencyUnit::Sat, vec![s1.clone(), s2.clone()]), &["https://mint.x"]);
        let b = run(&token_with("https://mint.x", CurrencyUnit::Sat, vec![s2, s1]), &["https://mint.x"]);
        assert_eq!(a.expect("a").digest, b.expect("b").digest);
    }
}
