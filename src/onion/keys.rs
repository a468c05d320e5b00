//! Identity keys, addresses and nicknames.

use safelog::DisplayRedacted as _;
use sha2::{Digest, Sha256};
use tor_hscrypto::pk::{HsIdKey, HsIdKeypair};
use tor_hsservice::HsNickname;
use tor_llcrypto::pk::ed25519;

use super::*;

/// A fresh identity key as 64 secret bytes (see [`KEY_LEN`]).
pub fn generate_key_bytes() -> Result<Vec<u8>, OnionError> {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|e| OnionError::KeyGen { message: e.to_string() })?;
    let keypair = ed25519::Keypair::from_bytes(&seed);
    seed.fill(0);
    Ok(ed25519::ExpandedKeypair::from(&keypair).to_secret_key_bytes().to_vec())
}

/// Restore an identity keypair from its 64 stored bytes. The message never contains key material.
pub fn keypair_from_bytes(key: &[u8]) -> Result<HsIdKeypair, String> {
    let bytes: [u8; KEY_LEN] = key.try_into().map_err(|_| format!("expected {KEY_LEN} bytes, got {}", key.len()))?;
    let expanded = ed25519::ExpandedKeypair::from_secret_key_bytes(bytes).ok_or("not a valid ed25519 secret key")?;
    Ok(HsIdKeypair::from(expanded))
}

/// `<56 base32 chars>.onion` of a keypair.
pub fn onion_address(keypair: &HsIdKeypair) -> String {
    HsIdKey::from(keypair).id().display_unredacted().to_string()
}

/// An onion address as logs show it: enough to tell services apart, not enough to reach one (anyone who
/// reads the logs must not be able to knock on every tenant's door).
pub fn redact(address: &str) -> String {
    let head: String = address.chars().take(6).collect();
    format!("{head}…")
}

/// The onion address a stored key publishes, without launching anything.
pub fn address_for_key(key: &[u8]) -> Result<String, String> {
    keypair_from_bytes(key).map(|k| onion_address(&k))
}

/// arti nickname of a lease's service: `pg-<lease id>` when the id is already a short lowercase slug,
/// otherwise a sanitised prefix plus a hash of the full id, so distinct ids never share a nickname.
pub fn nickname_for(lease_id: &str) -> Result<HsNickname, String> {
    let plain = !lease_id.is_empty()
        && lease_id.len() <= NICK_MAX_ID
        && lease_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let name = if plain {
        format!("{NICK_PREFIX}{lease_id}")
    } else {
        let prefix: String = lease_id
            .chars()
            .take(24)
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        let digest = hex::encode(&Sha256::digest(lease_id.as_bytes())[..8]);
        format!("{NICK_PREFIX}{prefix}-{digest}")
    };
    // Only slug characters are produced, so this fails only if arti narrows its nickname rules.
    HsNickname::new(name.clone()).map_err(|e| format!("nickname {name:?}: {e}"))
}
