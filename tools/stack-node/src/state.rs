//! Per-pod state on disk: `<state-dir>/pods/<namespace>_<name>_<uid>/` holds
//! the pod's ed25519 host key (`ssh_host_ed25519_key`, `.pub`) and the home
//! directory its SSH sessions run in. Namespace and pod names are DNS labels /
//! subdomains, so `_` cannot occur in them and the key is unambiguous.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

pub fn pod_dir(state_dir: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    let safe = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
    };
    state_dir.join("pods").join(format!("{}_{}_{}", safe(ns), safe(name), safe(uid)))
}

/// Load the pod's host key, generating and persisting it on first use.
pub fn load_or_create_host_key(dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = dir.join("ssh_host_ed25519_key");
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            return PrivateKey::from_openssh(pem.as_bytes())
                .with_context(|| format!("parsing host key {}", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key.to_openssh(LineEnding::LF).context("encoding host key")?;
    // Write-then-rename so a crash never leaves a truncated key behind.
    let tmp = dir.join("ssh_host_ed25519_key.tmp");
    write_private(&tmp, pem.as_bytes())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Ok(public) = key.public_key().to_openssh() {
        let _ = std::fs::write(dir.join("ssh_host_ed25519_key.pub"), format!("{public}\n"));
    }
    Ok(key)
}

pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data).with_context(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_persists() {
        let tmp = std::env::temp_dir().join(format!("stack-node-test-{}", std::process::id()));
        let dir = pod_dir(&tmp, "ns", "pod-1", "1234-abcd");
        assert!(dir.ends_with("pods/ns_pod-1_1234-abcd"));
        let k1 = load_or_create_host_key(&dir).unwrap();
        let k2 = load_or_create_host_key(&dir).unwrap();
        assert_eq!(fingerprint(&k1), fingerprint(&k2));
        assert!(dir.join("ssh_host_ed25519_key.pub").exists());
        let other = load_or_create_host_key(&pod_dir(&tmp, "ns", "pod-1", "other-uid")).unwrap();
        assert_ne!(fingerprint(&k1), fingerprint(&other));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
