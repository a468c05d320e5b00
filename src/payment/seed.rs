//! The wallet seed: a BIP-39 mnemonic in `<wallet_dir>/seed`, created once (mode 0600) and reused forever.
//! Losing it with the database would lose earned ecash (lesson 7), so we never overwrite it and refuse to
//! invent a new one next to an existing wallet database.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;

use super::error::PaymentError;

pub(crate) const SEED_FILE: &str = "seed";
pub(crate) const DB_FILE: &str = "wallet.redb";
/// Present from the moment a restored seed is written until its ecash was found at every mint: a restore
/// interrupted by a crash is taken up again at the next start.
pub(crate) const RESTORE_MARKER: &str = "restore-pending";

fn setup(reason: impl Into<String>) -> PaymentError {
    PaymentError::Setup { reason: reason.into() }
}

/// Create the wallet dir (0700) if needed and return the 64-byte BIP-39 seed, creating the mnemonic once.
pub(crate) fn load_or_create(wallet_dir: &Path) -> Result<[u8; 64], PaymentError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(wallet_dir)
        .map_err(|e| setup(format!("cannot create wallet dir {}: {e}", wallet_dir.display())))?;
    let path = wallet_dir.join(SEED_FILE);
    if !path.exists() {
        if wallet_dir.join(DB_FILE).exists() {
            // A database without its seed: a fresh seed would silently fork the wallet's NUT-13 counters.
            return Err(setup(format!(
                "{} exists but {} is missing; restore the seed file from backup",
                wallet_dir.join(DB_FILE).display(),
                path.display()
            )));
        }
        create(wallet_dir, &path)?;
    }
    read(&path)
}

fn create(dir: &Path, path: &Path) -> Result<(), PaymentError> {
    let mut entropy = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut entropy);
    let mnemonic = bip39::Mnemonic::from_entropy(&entropy).map_err(|e| setup(format!("mnemonic: {e}")))?;
    write_new(dir, path, &mnemonic)?;
    tracing::info!(path = %path.display(), "created new wallet seed; back it up");
    Ok(())
}

/// The mnemonic of the wallet in `wallet_dir`, for a backup (the file only: works while a provider holds the
/// database). Never log it.
pub(crate) fn phrase(wallet_dir: &Path) -> Result<String, PaymentError> {
    let path = wallet_dir.join(SEED_FILE);
    let text = fs::read_to_string(&path).map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
    let mnemonic = bip39::Mnemonic::parse_normalized(text.trim())
        .map_err(|_| setup(format!("{} does not hold a valid BIP-39 mnemonic", path.display())))?;
    Ok(mnemonic.to_string())
}

/// What a restore with `phrase` would do to `wallet_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// The directory held no wallet: the seed was written, its ecash is still to be found at the mints.
    Written,
    /// The directory already holds this very seed: nothing to do.
    Same,
}

/// Put `phrase` (a backed-up mnemonic) in an empty wallet dir. Refused when the dir holds a wallet of another
/// seed, or a database without one: a restore must never replace a wallet that may hold money.
pub(crate) fn restore(wallet_dir: &Path, phrase: &str) -> Result<Restore, PaymentError> {
    // Never echo the phrase in an error.
    let mnemonic = bip39::Mnemonic::parse_normalized(phrase.trim())
        .map_err(|_| setup("the backup's seed is not a valid BIP-39 mnemonic"))?;
    let path = wallet_dir.join(SEED_FILE);
    if path.exists() {
        return match phrase_matches(&path, &mnemonic) {
            true => Ok(Restore::Same),
            false => Err(setup(format!(
                "{} holds another wallet's seed: restore onto an empty volume, never over a wallet",
                path.display()
            ))),
        };
    }
    if wallet_dir.join(DB_FILE).exists() {
        return Err(setup(format!(
            "{} exists without a seed: restore onto an empty volume, never over a wallet",
            wallet_dir.join(DB_FILE).display()
        )));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(wallet_dir)
        .map_err(|e| setup(format!("cannot create wallet dir {}: {e}", wallet_dir.display())))?;
    fs::write(wallet_dir.join(RESTORE_MARKER), b"")
        .map_err(|e| setup(format!("cannot write {}: {e}", wallet_dir.join(RESTORE_MARKER).display())))?;
    write_new(wallet_dir, &path, &mnemonic)?;
    // A concurrent creator may have won the race with a seed of its own.
    if !phrase_matches(&path, &mnemonic) {
        return Err(setup(format!("{} was created by another process meanwhile", path.display())));
    }
    tracing::info!(path = %path.display(), "wallet seed restored from a backup");
    Ok(Restore::Written)
}

fn phrase_matches(path: &Path, mnemonic: &bip39::Mnemonic) -> bool {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| bip39::Mnemonic::parse_normalized(t.trim()).ok())
        .is_some_and(|m| m.to_entropy() == mnemonic.to_entropy())
}

fn write_new(dir: &Path, path: &Path, mnemonic: &bip39::Mnemonic) -> Result<(), PaymentError> {
    // Write a temp file and hard-link it into place: the seed appears complete or not at all, and a
    // concurrent creator can never overwrite one that exists.
    let tmp = dir.join(format!(".seed.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{mnemonic}\n").as_bytes())?;
        f.sync_all()
    };
    let res = write().and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match res {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(format!("cannot write {}: {e}", path.display()))),
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read(path: &Path) -> Result<[u8; 64], PaymentError> {
    let meta = fs::metadata(path).map_err(|e| setup(format!("cannot stat {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "wallet seed was readable by others; restricting to 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| setup(format!("cannot chmod {}: {e}", path.display())))?;
    }
    let text = fs::read_to_string(path).map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
    // Never echo the file's content in the error.
    let mnemonic = bip39::Mnemonic::parse_normalized(text.trim())
        .map_err(|_| setup(format!("{} does not hold a valid BIP-39 mnemonic", path.display())))?;
    Ok(mnemonic.to_seed_normalized(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wdir = dir.path().join("w");
        let a = load_or_create(&wdir).expect("create");
        let mode = fs::metadata(wdir.join(SEED_FILE)).expect("seed").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(&wdir).expect("reuse");
        assert_eq!(a, b);
        let words = fs::read_to_string(wdir.join(SEED_FILE)).expect("read");
        assert_eq!(words.split_whitespace().count(), 12);
    }

    #[test]
    fn database_without_seed_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(DB_FILE), b"x").expect("db");
        let err = load_or_create(dir.path()).expect_err("must refuse");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!dir.path().join(SEED_FILE).exists());
    }

    #[test]
    fn a_backup_restores_into_an_empty_dir_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let seed_a = load_or_create(&a).expect("create");
        let backup = phrase(&a).expect("phrase");
        assert_eq!(restore(&b, &backup).expect("restore"), Restore::Written);
        assert_eq!(load_or_create(&b).expect("reuse"), seed_a, "the restored wallet has the same seed");
        assert_eq!(restore(&b, &backup).expect("again"), Restore::Same);
        // Over another wallet, or over a database without its seed: refused, and nothing is written.
        let c = dir.path().join("c");
        load_or_create(&c).expect("another wallet");
        let before = fs::read_to_string(c.join(SEED_FILE)).expect("seed");
        assert!(restore(&c, &backup).is_err());
        assert_eq!(fs::read_to_string(c.join(SEED_FILE)).expect("seed"), before);
        let d = dir.path().join("d");
        fs::create_dir_all(&d).expect("dir");
        fs::write(d.join(DB_FILE), b"x").expect("db");
        assert!(restore(&d, &backup).is_err());
        assert!(!d.join(SEED_FILE).exists());
        let err = restore(&dir.path().join("e"), "hunter2 not words").expect_err("garbage");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn garbage_seed_is_refused_without_echo() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(SEED_FILE), b"hunter2 secret words").expect("seed");
        let err = load_or_create(dir.path()).expect_err("must refuse");
        assert!(!err.to_string().contains("hunter2"));
    }
}
