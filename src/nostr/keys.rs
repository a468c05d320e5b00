//! The provider's Nostr identity. The secret never reaches a log line or an error message.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nostr_sdk::prelude::Keys;

use super::NostrError;
use crate::config::KeySource;

/// Load (or, for [`KeySource::Generated`], create on first start) the provider's keys.
pub fn load_keys(source: &KeySource) -> Result<Keys, NostrError> {
    match source {
        KeySource::Inline(s) => parse_secret(s, "NOSTR_PRIVATE_KEY"),
        KeySource::File(path) => read_key_file(path),
        KeySource::Generated(path) => {
            if path.exists() {
                return read_key_file(path);
            }
            let keys = Keys::generate();
            match write_new_key_file(path, &keys) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), pubkey = %keys.public_key(), "generated a new Nostr key");
                    Ok(keys)
                }
                // Another process created it between our check and our write: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path),
                Err(source) => Err(NostrError::KeyFile { path: path.display().to_string(), action: "write", source }),
            }
        }
    }
}

fn read_key_file(path: &Path) -> Result<Keys, NostrError> {
    let text = fs::read_to_string(path).map_err(|source| NostrError::KeyFile {
        path: path.display().to_string(),
        action: "read",
        source,
    })?;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "Nostr key file is readable by group or others; chmod 600 it");
        }
    }
    parse_secret(&text, &path.display().to_string())
}

/// Keep `keys` at `path` (0600) where the provider would have generated its own, for a restore. An existing
/// file is never replaced: `AlreadyExists`.
pub fn save_key(path: &Path, keys: &Keys) -> Result<(), NostrError> {
    write_new_key_file(path, keys).map_err(|source| NostrError::KeyFile {
        path: path.display().to_string(),
        action: "write",
        source,
    })
}

/// A secret key given as nsec… or hex (`origin` names where it came from in the error, which never holds it).
pub fn parse_secret(text: &str, origin: &str) -> Result<Keys, NostrError> {
    // nostr's parse error names only the failure kind, never the input; keep it that way.
    Keys::parse(text.trim()).map_err(|e| NostrError::InvalidKey { origin: origin.to_string(), reason: e.to_string() })
}

fn write_new_key_file(path: &Path, keys: &Keys) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    // Write to a temp file created 0600 and rename, so a crash never leaves a half-written key that the
    // next start would refuse (or, worse, a world-readable one).
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{}\n", keys.secret_key().to_secret_hex()).as_bytes())?;
    f.sync_all()?;
    drop(f);
    // hard_link fails with AlreadyExists if a concurrent starter won the race; then theirs is kept.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e";

    #[test]
    fn inline_hex_and_nsec_give_the_same_key() {
        use nostr_sdk::prelude::ToBech32;
        let a = load_keys(&KeySource::Inline(HEX.into())).unwrap();
        let nsec = a.secret_key().to_bech32().unwrap();
        let b = load_keys(&KeySource::Inline(format!(" {nsec}\n"))).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn bad_inline_key_error_does_not_echo_it() {
        let secretish = "nsec1notavalidkeybutsecretlooking";
        let e = load_keys(&KeySource::Inline(secretish.into())).unwrap_err();
        assert!(!e.to_string().contains(secretish), "{e}");
        assert!(!format!("{e:?}").contains(secretish));
    }

    #[test]
    fn file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        fs::write(&p, format!("  {HEX}\n\n")).unwrap();
        let k = load_keys(&KeySource::File(p)).unwrap();
        assert_eq!(k.secret_key().to_secret_hex(), HEX);
        let missing = load_keys(&KeySource::File(dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }

    #[test]
    fn generated_key_is_created_0600_in_new_dirs_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state/sub/nostr.key");
        let a = load_keys(&KeySource::Generated(p.clone())).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_keys(&KeySource::Generated(p.clone())).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(!p.with_extension("tmp").exists());
    }
}
