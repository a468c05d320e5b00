//! Expiry notices: shortly before a lease ends (`PAYGRESS_EXPIRY_NOTICES`, default 10 and 1 minutes), its
//! owner gets an encrypted message the way replies go: time left, the price of an hour, and the exact top-up
//! command. Each is a journal record keyed by lease, threshold and expiry, so it goes out once, also across
//! restarts; a top-up moves the expiry past the threshold and nothing is sent for it. A lease that never had
//! more time than a threshold (bought shorter) gets no notice for it.

use super::*;

/// The journal id of one notice.
pub(super) fn notice_id(lease_id: &str, threshold: u64, expires_at: u64) -> String {
    format!("notice:{lease_id}:{threshold}:{expires_at}")
}

impl LeaseService {
    /// The notice a live lease is due now, if any: for the tightest threshold it has crossed (after a
    /// restart that skipped one, only the most urgent goes out). None for leases reached in-band (HTTP).
    pub(super) fn notice_due(&self, lease: &ClusterLease, now: u64) -> Option<SagaRecord> {
        let expires_at = lease.expires_at?;
        let left = expires_at.checked_sub(now).filter(|l| *l > 0)?;
        let threshold = *self.settings.notice_thresholds.iter().find(|t| left <= **t)?;
        // A lease bought (or extended) for less than the threshold was never "more than t away": telling
        // its owner at once that it ends soon would only repeat the reply.
        if lease.created_at.is_some_and(|c| expires_at.saturating_sub(c) <= threshold) {
            return None;
        }
        let requester = lease.requester.clone()?;
        let via = lease.reply_via.unwrap_or(ReplyVia::Nip44);
        if via == ReplyVia::InBand {
            return None;
        }
        let id = notice_id(&lease.lease_id, threshold, expires_at);
        // Most passes find it sent already: decide that without building anything.
        if self.ports.journal.get(&id).ok().flatten().is_some() {
            return None;
        }
        let rate = self.rate_paid(lease);
        let mint = lease.mint_url.clone().unwrap_or_default();
        let request_id = lease.request_id.clone().unwrap_or_else(|| id.clone());
        let reply = Reply::Notice {
            request_id: request_id.clone(),
            lease_id: lease.lease_id.clone(),
            expires_at,
            seconds_left: left,
            sats_per_hour: rate,
            topup_command: format!("paygress-cli topup {} --amount {rate} --mint {mint}", lease.lease_id),
        };
        let route = ReplyRoute { request_id, requester, via };
        let mut rec =
            SagaRecord { request_id: id, ..new_record(route, Ask::Notice { lease_id: lease.lease_id.clone() }) };
        rec.lease_id = Some(lease.lease_id.clone());
        rec.expires_at = Some(expires_at);
        rec.reply = Some(reply);
        rec.step = Step::Replying;
        Some(rec)
    }
}
