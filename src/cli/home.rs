//! The CLI's data directory: its Nostr key, its wallet, the leases it bought and the pinned host keys.
//!
//! Everything secret (key, seed, lease records with passwords, pending tokens) is written 0600 through a
//! temp file and a rename, so a crash never leaves a half-written or world-readable file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nostr_sdk::prelude::{Keys, ToBech32};
use serde::{Deserialize, Serialize};

use crate::protocol::LeaseAccess;

/// What the CLI remembers about one lease, in `<home>/leases/<lease id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub lease_id: String,
    /// Provider's Nostr public key (hex).
    pub provider: String,
    /// Relays the lease was bought through; later commands use them unless told otherwise.
    pub relays: Vec<String>,
    pub request_id: String,
    pub amount_sats: u64,
    pub duration_seconds: u64,
    /// Latest known expiry (unix s), updated by top-ups and status queries.
    pub expires_at: u64,
    pub access: LeaseAccess,
    /// Private key matching the public key sent with the request, when it was a `.pub` file next to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_identity: Option<PathBuf>,
}

pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    /// `explicit` (--home) > $PAYGRESS_CLI_HOME > $XDG_CONFIG_HOME/paygress-cli > ~/.config/paygress-cli.
    pub fn resolve(explicit: Option<&Path>) -> Result<Home> {
        let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
        let dir = match explicit {
            Some(d) => d.to_path_buf(),
            None => match nonempty("PAYGRESS_CLI_HOME") {
                Some(d) => d,
                None => match nonempty("XDG_CONFIG_HOME") {
                    Some(x) => x.join("paygress-cli"),
                    None => nonempty("HOME")
                        .ok_or_else(|| anyhow!("no data dir: set PAYGRESS_CLI_HOME or HOME"))?
                        .join(".config/paygress-cli"),
                },
            },
        };
        let home = Home { dir };
        home.mkdir(&home.dir)?;
        Ok(home)
    }

    pub fn mkdir(&self, dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
    }

    /// The CLI's home directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("nostr.nsec")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    pub fn wallet_dir(&self) -> PathBuf {
        self.dir.join("wallet")
    }

    pub fn tor_dir(&self) -> PathBuf {
        self.dir.join("tor")
    }

    fn leases_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// `--key` (an nsec/hex key or a file holding one), else the data dir's key, generated on first use.
    pub fn keys(&self, given: Option<&str>) -> Result<Keys> {
        if let Some(g) = given {
            if let Ok(k) = Keys::parse(g.trim()) {
                return Ok(k);
            }
            let text =
                fs::read_to_string(g).map_err(|e| anyhow!("--key is neither a key nor a readable file ({e})"))?;
            // Never echo the content: it is a secret.
            return Keys::parse(text.trim()).map_err(|_| anyhow!("{g} does not hold an nsec or hex secret key"));
        }
        let path = self.key_file();
        if path.exists() {
            let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            return Keys::parse(text.trim()).map_err(|_| anyhow!("{} does not hold a valid key", path.display()));
        }
        let keys = Keys::generate();
        let nsec = keys.secret_key().to_bech32().map_err(|e| anyhow!("encoding key: {e}"))?;
        write_private(&path, format!("{nsec}\n").as_bytes(), false)?;
        Ok(keys)
    }

    pub fn save_lease(&self, rec: &LeaseRecord) -> Result<()> {
        self.mkdir(&self.leases_dir())?;
        let path = self.leases_dir().join(format!("{}.json", safe_name(&rec.lease_id)));
        write_private(&path, serde_json::to_string_pretty(rec)?.as_bytes(), true)
    }

    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let dir = self.leases_dir();
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(out) };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                out.push(
                    serde_json::from_str(&text).with_context(|| format!("{} is not a lease record", p.display()))?,
                );
            }
        }
        out.sort_by_key(|r: &LeaseRecord| r.expires_at);
        Ok(out)
    }

    /// A lease by id, pod name or unique id prefix.
    pub fn find_lease(&self, q: &str) -> Result<LeaseRecord> {
        let all = self.leases()?;
        if let Some(r) = all.iter().find(|r| r.lease_id == q || r.access.pod_name == q) {
            return Ok(r.clone());
        }
        let matches: Vec<&LeaseRecord> = all.iter().filter(|r| r.lease_id.starts_with(q)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no lease {q:?} in {} (see `paygress-cli leases`)", self.leases_dir().display()),
            _ => bail!("lease {q:?} is ambiguous: {} leases start with it", matches.len()),
        }
    }

    /// Pin `host` (e.g. `[x.onion]:2222`) to `key` (`ssh-ed25519 AAAA…`) in our known_hosts, replacing any
    /// earlier line for that host.
    pub fn pin_host_key(&self, host: &str, key: &str) -> Result<()> {
        let mut parts = key.split_whitespace();
        let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
            bail!("host key from the provider is not an OpenSSH public key line");
        };
        let path = self.known_hosts();
        let old = fs::read_to_string(&path).unwrap_or_default();
        let mut text: String =
            old.lines().filter(|l| l.split_whitespace().next() != Some(host)).map(|l| format!("{l}\n")).collect();
        text.push_str(&format!("{host} {kind} {b64}\n"));
        write_private(&path, text.as_bytes(), true)
    }

    /// A token we paid with but got no answer for: kept so the money is not lost (`wallet receive` it back).
    pub fn keep_pending_token(&self, request_id: &str, token: &str) -> Result<PathBuf> {
        let dir = self.dir.join("pending");
        self.mkdir(&dir)?;
        let path = dir.join(format!("{}.token", safe_name(request_id)));
        write_private(&path, format!("{token}\n").as_bytes(), true)?;
        Ok(path)
    }
}

fn safe_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Write `data` to `path` with mode 0600 via a temp file; `replace` allows overwriting.
pub fn write_private(path: &Path, data: &[u8], replace: bool) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        if replace {
            fs::rename(&tmp, path)
        } else {
            // Never clobber an existing key: a concurrent first run keeps the one that won.
            let r = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            r
        }
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))?;
    if fs::metadata(path).map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(false) {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_0600_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(&d.path().join("h"))).unwrap();
        let a = home.keys(None).unwrap();
        let mode = fs::metadata(home.key_file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(fs::read_to_string(home.key_file()).unwrap().starts_with("nsec1"));
        assert_eq!(home.keys(None).unwrap().public_key(), a.public_key());
        // --key as a file and as a literal.
        let nsec = a.secret_key().to_bech32().unwrap();
        assert_eq!(home.keys(Some(&nsec)).unwrap().public_key(), a.public_key());
        let f = d.path().join("k");
        fs::write(&f, format!("{nsec}\n")).unwrap();
        assert_eq!(home.keys(Some(f.to_str().unwrap())).unwrap().public_key(), a.public_key());
        assert!(home.keys(Some("nsec1garbage-not-a-file")).is_err());
    }

    #[test]
    fn pinning_replaces_the_line_of_that_host_only() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(d.path())).unwrap();
        home.pin_host_key("[a.onion]:2222", "ssh-ed25519 AAAAone comment").unwrap();
        home.pin_host_key("[b.onion]:2222", "ssh-ed25519 AAAAtwo").unwrap();
        home.pin_host_key("[a.onion]:2222", "ssh-ed25519 AAAAthree").unwrap();
        let text = fs::read_to_string(home.known_hosts()).unwrap();
        assert_eq!(text, "[b.onion]:2222 ssh-ed25519 AAAAtwo\n[a.onion]:2222 ssh-ed25519 AAAAthree\n");
        assert!(home.pin_host_key("[c.onion]:2222", "garbage").is_err());
    }
}
