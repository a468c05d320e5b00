//! `paygress-cli ssh LEASE`: the system OpenSSH client through our own arti (`connect` as ProxyCommand),
//! with the host key from the provider's reply pinned, so even the first connection is verified.

use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::home::{Home, LeaseRecord};

/// Single-quote for the shell that runs ProxyCommand.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The ssh command line (program and arguments) for a lease; pins the host key as a side effect.
pub fn command(home: &Home, rec: &LeaseRecord, sshpass: bool, extra: &[String]) -> Result<(Command, Option<String>)> {
    let a = &rec.access;
    let onion = a.onion_address.as_deref().ok_or_else(|| {
        anyhow!(
            "lease {} has no onion address (the provider runs without Tor); use: {} then {}",
            rec.lease_id,
            a.port_forward_command,
            a.ssh_command
        )
    })?;
    let key = a.host_public_key.as_deref().ok_or_else(|| anyhow!("the provider sent no host key to pin"))?;
    let host = format!("[{onion}]:{}", a.ssh_port);
    home.pin_host_key(&host, key)?;
    let key_type = key.split_whitespace().next().unwrap_or("ssh-ed25519");

    let exe = std::env::current_exe().context("locating paygress-cli itself")?;
    let exe = exe.to_str().ok_or_else(|| anyhow!("path of paygress-cli is not UTF-8"))?;
    let dir = home.dir.to_str().ok_or_else(|| anyhow!("data dir path is not UTF-8"))?;
    let proxy = format!("{} --home {} connect %h %p", sh_quote(exe), sh_quote(dir));
    let known = home.known_hosts();

    let password = a.ssh_password.clone();
    let mut cmd = if sshpass {
        if password.is_none() {
            bail!("--sshpass: lease {} has no password (it was bought with an ssh key)", rec.lease_id);
        }
        let mut c = Command::new("sshpass");
        // -e: the password travels in the environment, not on a command line others can read.
        c.arg("-e").arg("ssh");
        c
    } else {
        Command::new("ssh")
    };
    if let (true, Some(pw)) = (sshpass, &password) {
        cmd.env("SSHPASS", pw);
    }
    cmd.args(["-p", &a.ssh_port.to_string()])
        .args(["-o", &format!("ProxyCommand={proxy}")])
        .args(["-o", &format!("UserKnownHostsFile={}", known.display())])
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "CheckHostIP=no"])
        .args(["-o", "UpdateHostKeys=no"])
        .args(["-o", &format!("HostKeyAlgorithms={key_type}")]);
    if let Some(id) = &rec.ssh_identity {
        cmd.args(["-i", &id.display().to_string()]);
    } else if password.is_some() {
        cmd.args(["-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no"]);
    }
    cmd.arg(format!("{}@{onion}", a.ssh_username));
    cmd.args(extra);
    Ok((cmd, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
