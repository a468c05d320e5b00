//! Replies a person reads: a NUT-18 payment comes from a Cashu wallet as a NIP-17 chat message (kind 14),
//! and the payer's client shows chat messages, not kind-1001 rumors. So such a payer is answered in the
//! same kind, in words (how to log in, what is left, any refund), with the reply's JSON after them for
//! software.

use crate::protocol::{LeaseAccess, Reply};

/// The reply as a chat message: a few lines for a person, then the JSON.
pub fn chat_text(reply: &Reply, json: &str) -> String {
    let words = match reply {
        Reply::Ok { amount_sats, duration_seconds, access, refund_token, .. } => {
            let mut s = format!(
                "Your SSH pod is ready: {} sat bought {} minutes.\n{}",
                amount_sats,
                duration_seconds / 60,
                login(access)
            );
            if let Some(t) = refund_token {
                s.push_str(&format!("\nOverpaid; your change: {t}"));
            }
            s
        }
        Reply::Extended { lease_id, added_seconds, expires_at, refund_token, .. } => {
            let mut s =
                format!("Lease {lease_id} extended by {} minutes, to {expires_at} (unix time).", added_seconds / 60);
            if let Some(t) = refund_token {
                s.push_str(&format!("\nYour change: {t}"));
            }
            s
        }
        Reply::Status { lease, .. } => {
            format!("Lease {} is {}: {} s left.", lease.lease_id, lease.state, lease.seconds_remaining)
        }
        Reply::Notice { lease_id, seconds_left, topup_command, .. } => {
            format!("Lease {lease_id} ends in {} minutes. To extend it by an hour: {topup_command}", seconds_left / 60)
        }
        Reply::Released { lease_id, amount_sats, refund_token, .. } => match refund_token {
            Some(t) => format!("Lease {lease_id} released; {amount_sats} sat of unused time back: {t}"),
            None => format!("Lease {lease_id} released; nothing was left to refund."),
        },
        Reply::Error { message, refund_token, .. } => match refund_token {
            Some(t) => format!("Your payment could not buy a pod: {message}\nYour money back: {t}"),
            None => format!("Your payment could not buy a pod: {message}"),
        },
    };
    format!("{words}\n\n{json}")
}

fn login(a: &LeaseAccess) -> String {
    let how = a.tor_ssh_command.as_deref().unwrap_or(a.ssh_command.as_str());
    let mut s = format!("Log in: {how}");
    if let Some(pw) = &a.ssh_password {
        s.push_str(&format!("\nPassword: {pw}"));
    }
    s.push_str(&format!(
        "\nHost key: {}\nUser {} on port {}; ends at {} (unix time); lease {}.",
        a.host_key_fingerprint, a.ssh_username, a.ssh_port, a.expires_at, a.lease_id
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn a_lease_reads_as_a_login_and_a_refusal_as_its_reason() {
        let access = LeaseAccess {
            lease_id: "ab".repeat(16),
            pod_name: "ssh-pod-x".into(),
            namespace: "user-workloads".into(),
            ssh_username: "user".into(),
            ssh_password: Some("pw-123".into()),
            ssh_port: 2222,
            host_key_fingerprint: "SHA256:abc".into(),
            host_public_key: None,
            tier: "basic".into(),
            expires_at: 1_700_000_000,
            onion_address: Some("x.onion".into()),
            port_forward_command: "kubectl …".into(),
            ssh_command: "ssh -p 2222 user@127.0.0.1".into(),
            tor_ssh_command: Some("torsocks ssh -p 2222 user@x.onion".into()),
        };
        let ok = Reply::Ok {
            request_id: "r".into(),
            amount_sats: 100,
            duration_seconds: 3600,
            access: Box::new(access),
            refund_token: None,
        };
        let text = chat_text(&ok, "{}");
        assert!(text.contains("torsocks ssh -p 2222 user@x.onion") && text.contains("Password: pw-123"), "{text}");
        assert!(text.contains("60 minutes") && text.ends_with("\n\n{}"), "{text}");
        let refused = Reply::Error {
            request_id: "r".into(),
            code: ErrorCode::NoCapacity,
            message: "no room".into(),
            refund_token: Some("cashuBxyz".into()),
        };
        let text = chat_text(&refused, "{}");
        assert!(text.contains("no room") && text.contains("cashuBxyz"), "{text}");
    }
}
