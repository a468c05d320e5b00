//! arti's client configuration: the operator's network fragment with our storage and keystore on top, and
//! the purge of onion-service state a previous process left.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arti_client::config::{ConfigurationSource, ConfigurationSources};
use arti_client::TorClientConfig;
use tor_config::load::ConfigResolveOptions;
use tor_config::sources::MustRead;
use tracing::{debug, warn};

use super::*;

/// Build the client configuration the way arti builds its own: the network fragment first, then our
/// settings as a later source (later sources win), resolved by `tor_config`. Unknown keys in the fragment
/// are an error: a misspelt key would otherwise silently leave us on the public network.
pub fn client_config(tor_dir: &Path, network_config: Option<&Path>) -> Result<TorClientConfig, OnionError> {
    let setup = |message: String| OnionError::Setup { action: "config", message };
    let mut sources = ConfigurationSources::new_empty();
    if let Some(path) = network_config {
        // Read here rather than by arti, whose permission check refuses a mounted ConfigMap (a world-writable
        // volume root, symlinked files) and would make the provider crash-loop. The fragment holds no secret;
        // what it may set is checked below (unrecognized keys are refused).
        let text = std::fs::read_to_string(path)
            .map_err(|e| OnionError::NetworkConfig { path: path.to_path_buf(), message: e.to_string() })?;
        sources.push_source(ConfigurationSource::from_verbatim(text), MustRead::MustRead);
    }
    let mut ours = storage_overrides(&tor_dir.join("state"), &tor_dir.join("cache")).map_err(setup)?;
    let mut permissions = String::new();
    if let Some(gid) = trusted_group(tor_dir) {
        // A volume mounted with fsGroup is group-writable by that group, which is ours (Kubernetes adds it
        // to the pod's groups); arti's default trusts only a group named like the user and would refuse.
        permissions.push_str(&format!("trust_group = {gid}\n"));
    }
    if let Some(root) = open_volume_root(tor_dir) {
        // k3s's local-path and minikube's hostpath provisioners give a volume root owned by root with mode 0777
        // and apply no fsGroup: arti would refuse every path under it, and the provider cannot change it.
        // arti then checks only what the provider makes inside it (its own directories, 0700).
        warn!(volume = %root.display(), "the state volume's root is world-writable and not ours (a hostPath \
              provisioner's volume): only the provider's own directories in it are permission-checked");
        let root = root.to_str().ok_or_else(|| setup(format!("path {} is not UTF-8", root.display())))?;
        permissions.push_str(&format!("ignore_prefix = {}\n", toml_string(root)));
    }
    if !permissions.is_empty() {
        ours.push_str(&format!("\n[storage.permissions]\n{permissions}"));
    }
    sources.push_source(ConfigurationSource::from_verbatim(ours), MustRead::MustRead);

    let fragment_err = |message: String| match network_config {
        Some(path) => OnionError::NetworkConfig { path: path.to_path_buf(), message },
        None => OnionError::Setup { action: "config", message },
    };
    let tree = sources.load().map_err(|e| fragment_err(e.to_string()))?;
    let resolved = tor_config::resolve_return_results::<TorClientConfig>(&tree, &ConfigResolveOptions::default())
        .map_err(|e| fragment_err(e.to_string()))?;
    if !resolved.unrecognized.is_empty() {
        let keys: Vec<String> = resolved.unrecognized.iter().map(|k| k.to_string()).collect();
        return Err(fragment_err(format!("unrecognized keys: {}", keys.join(", "))));
    }
    for k in &resolved.deprecated {
        warn!(key = %k, "deprecated key in the tor network config");
    }
    Ok(resolved.value)
}

/// The group of the nearest existing ancestor of `dir` (the state volume), if this process is a member of
/// it and it is not root's: arti may then trust that group's write access.
fn trusted_group(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let existing = dir.ancestors().find(|p| p.exists())?;
    let gid = std::fs::metadata(existing).ok()?.gid();
    (gid != 0 && process_groups().contains(&gid)).then_some(gid)
}

/// The state volume's root (`tor_dir`'s parent) when it is world-writable without the sticky bit and owned by
/// someone else: what a hostPath provisioner hands out. (One of ours is made private instead.)
fn open_volume_root(tor_dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tor_dir.parent()?;
    let meta = std::fs::metadata(root).ok()?;
    let mode = meta.mode();
    if mode & 0o002 == 0 || mode & 0o1000 != 0 {
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if meta.uid() == unsafe { libc::geteuid() } {
        let private = std::fs::Permissions::from_mode(mode & 0o7750);
        match std::fs::set_permissions(root, private) {
            Ok(()) => warn!(dir = %root.display(), "the state dir was world-writable; made it private"),
            Err(e) => {
                warn!(dir = %root.display(), error = %e, "the state dir is world-writable and could not be fixed")
            }
        }
        return None;
    }
    Some(root.to_path_buf())
}

/// This process's effective and supplementary group ids (from /proc/self/status).
fn process_groups() -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return Vec::new() };
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Gid:") {
            // real, effective, saved, filesystem: the effective one decides.
            groups.extend(rest.split_whitespace().nth(1).and_then(|g| g.parse::<u32>().ok()));
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups.extend(rest.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    groups
}

/// Our layer of arti configuration: storage under the provider's volume, literal paths (no `${…}`
/// expansion), and an ephemeral primary keystore so keys only ever come from lease logic.
fn storage_overrides(state: &Path, cache: &Path) -> Result<String, String> {
    let lit = |p: &Path| -> Result<String, String> {
        p.to_str().map(toml_string).ok_or_else(|| format!("path {} is not UTF-8", p.display()))
    };
    Ok(format!(
        "[storage]\nstate_dir = {{ literal = {} }}\ncache_dir = {{ literal = {} }}\n\n\
         [storage.keystore]\nenabled = true\n\n[storage.keystore.primary]\nkind = \"ephemeral\"\n",
        lit(state)?,
        lit(cache)?
    ))
}

/// A TOML basic string.
pub(super) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Remove the on-disk state of our onion services left by an earlier process. It refers to intro-point
/// keys of the previous process's ephemeral keystore; without this purge arti reports "bug: HS service …
/// missing previous key … Regenerating" for each one, and the directories of ended leases pile up.
/// Best effort: a failure only costs that noise.
pub(super) fn purge_service_state(state_dir: &Path, config: &TorClientConfig) {
    use tor_persist::slug::SlugRef;
    use tor_persist::state_dir::{
        InstancePurgeHandler, InstancePurgeInfo, InstanceStateHandle, Liveness, StateDirectory,
    };

    struct PurgeOurs(usize);
    impl InstancePurgeHandler for PurgeOurs {
        fn kind(&self) -> &'static str {
            "hss"
        }
        fn name_filter(&mut self, id: &SlugRef) -> tor_persist::state_dir::Result<Liveness> {
            Ok(if id.as_str().starts_with(NICK_PREFIX) { Liveness::PossiblyUnused } else { Liveness::Live })
        }
        fn age_filter(&mut self, _id: &SlugRef, _age: Duration) -> tor_persist::state_dir::Result<Liveness> {
            Ok(Liveness::PossiblyUnused)
        }
        fn dispose(
            &mut self,
            _info: &InstancePurgeInfo,
            handle: InstanceStateHandle,
        ) -> tor_persist::state_dir::Result<()> {
            self.0 += 1;
            handle.purge()
        }
    }

    if !state_dir.join("hss").exists() {
        return;
    }
    let dir = match StateDirectory::new(state_dir, config.fs_mistrust()) {
        Ok(dir) => dir,
        Err(e) => {
            warn!(error = %e, "could not open the tor state directory to purge old onion service state");
            return;
        }
    };
    let mut handler = PurgeOurs(0);
    match dir.purge_instances(std::time::SystemTime::now(), &mut handler) {
        Ok(()) => debug!(purged = handler.0, "onion service state of the previous run purged"),
        Err(e) => warn!(error = %e, "could not purge onion service state of the previous run"),
    }
}
