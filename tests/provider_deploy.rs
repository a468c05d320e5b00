//! The provider as the manifest runs it: uid/gid 65532 and a state volume mounted with `fsGroup`, which
//! leaves it group-writable (2775). arti refuses group-writable state directories unless it trusts the
//! group; before the fix the provider exited at "start arti: … Incorrect permissions".

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;

const UID: &str = "65532";

#[test]
fn provider_as_non_root_on_an_fsgroup_volume_starts_tor() -> Result<()> {
    let root = tempfile::Builder::new().prefix("paygress-fsgroup-").tempdir_in("/tmp")?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    // The volume as kubelet leaves it for fsGroup 65532: owned by that group, group-writable, setgid.
    let vol = root.path().join("vol");
    std::fs::create_dir(&vol)?;
    run(Command::new("chown").args([&format!("{UID}:{UID}"), &vol.display().to_string()]))?;
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o2775))?;
    // What the pod can read: the binary and a self-contained kubeconfig (the stack's names files under /root).
    let bin = root.path().join("paygress");
    std::fs::copy(paygress_bin(), &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let kubeconfig = root.path().join("kubeconfig");
    std::fs::write(&kubeconfig, run(Command::new("kubectl").args(["config", "view", "--raw", "--flatten"]))?)?;
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644))?;
    let network = root.path().join("tor-network.toml");
    std::fs::copy(env("PAYGRESS_TOR_NETWORK_CONFIG"), &network)?;
    std::fs::set_permissions(&network, std::fs::Permissions::from_mode(0o644))?;
    let log = root.path().join("provider.log");
    let log_file = std::fs::File::create(&log)?;

    let mut child = Command::new("setpriv")
        .args(["--reuid", UID, "--regid", UID, "--groups", UID, "--"])
        .arg(&bin)
        .env_clear()
        .env("PATH", env("PATH"))
        .env("HOME", "/tmp")
        .env("RUST_LOG", "info")
        .env("KUBECONFIG", &kubeconfig)
        .env("NOSTR_RELAYS", env("NOSTR_RELAYS"))
        .env("WHITELISTED_MINTS", env("CASHU_MINT_URL"))
        .env("POD_NAMESPACE", "user-workloads")
        .env("ENABLE_TOR_SIDECAR", "true")
        .env("PAYGRESS_TOR_NETWORK_CONFIG", &network)
        .env("PAYGRESS_STATE_DIR", vol.join("paygress"))
        .env("PAYGRESS_HTTP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("spawn the provider under setpriv")?;
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let outcome = wait_until("arti to start or the provider to exit", Duration::from_secs(90), || {
        if text().contains("tor client created") {
            Some(Ok(()))
        } else if let Ok(Some(status)) = child.try_wait() {
            Some(Err(anyhow::anyhow!("provider exited ({status}):\n{}", text())))
        } else {
            None
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    outcome??;
    assert!(!text().contains("Incorrect permissions"), "{}", text());
    Ok(())
}
