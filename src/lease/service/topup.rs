//! A top-up after its redeem, applied exactly once; and returning what bought no time (the excess).

use super::*;

impl LeaseService {
    /// Apply a redeemed top-up exactly once. The new expiry and the top-up's record are written together,
    /// conditional on the pod's resourceVersion: a resume after a crash finds the record and replies with
    /// it, and a concurrent top-up makes this write fail and be recomputed from the fresh pod.
    pub(super) async fn extend(&self, rec: &mut SagaRecord, amount: u64) -> Flow {
        let lease_id = rec.lease_id.clone().unwrap_or_default();
        let topup_id = topup_record_id(&rec.request_id);
        for _ in 0..self.settings.retry_attempts.max(1) {
            let lease = match self.lease_by_id(&lease_id).await {
                Ok(Some(l)) => l,
                Ok(None) => return self.fail_after_redeem(rec, ErrorCode::LeaseExpired, TOPUP_TOO_LATE),
                Err(e) if e.is_transient() => return Flow::Park,
                Err(e) => return self.fail_after_redeem(rec, ErrorCode::ProvisioningFailed, e.message),
            };
            if let Some(done) = lease.topups.iter().find(|t| t.id == topup_id) {
                info!(lease_id, expires_at = done.expires_at, "top-up already applied (resumed)");
                let rate = self.tier(lease.tier.as_deref()).map(|t| t.sats_per_hour).unwrap_or(1);
                if done.added_secs < seconds_for(amount, rate) {
                    rec.excess = Some(amount.saturating_sub(price_of(done.added_secs, rate))).filter(|e| *e > 0);
                }
                return self.extended(rec, lease_id, amount, done.added_secs, done.expires_at);
            }
            let now = now_secs();
            if lease.terminating || lease.expires_at.is_none_or(|e| e <= now) {
                // Expired (or deleted) between the check and the payment: give the money back.
                return self.fail_after_redeem(rec, ErrorCode::LeaseExpired, TOPUP_TOO_LATE);
            }
            let rate = self.tier(lease.tier.as_deref()).map(|t| t.sats_per_hour).unwrap_or(1);
            let current = lease.expires_at.unwrap_or(now).max(now);
            let new_expiry = (current + seconds_for(amount, rate)).min(now + self.settings.max_duration_secs);
            if new_expiry <= current {
                return self.fail_after_redeem(
                    rec,
                    ErrorCode::AmountTooLarge,
                    "the lease is already at its maximum length",
                );
            }
            let added_secs = new_expiry - current;
            // Capped at the longest lease: what bought no time goes back with the reply.
            let change = if added_secs < seconds_for(amount, rate) {
                amount.saturating_sub(price_of(added_secs, rate))
            } else {
                0
            };
            let mut topups = lease.topups;
            topups.push(AppliedTopUp { id: topup_id.clone(), added_secs, expires_at: new_expiry });
            let excess = topups.len().saturating_sub(MAX_TOPUP_RECORDS);
            topups.drain(..excess);
            let update = ExpiryUpdate { expires_at: new_expiry, topups, if_version: lease.version };
            match self.ports.cluster.set_expiry(&lease_id, &update).await {
                Ok(()) => {
                    info!(lease_id, new_expiry, added_secs, change, "lease extended");
                    rec.excess = Some(change).filter(|e| *e > 0);
                    return self.extended(rec, lease_id, amount, added_secs, new_expiry);
                }
                // A conflict (someone changed the pod) or a timeout that may have applied: re-read.
                Err(e) if e.is_transient() => {
                    debug!(lease_id, error = %e, "top-up write not applied; re-reading the lease");
                    tokio::time::sleep(self.settings.retry_delay).await;
                }
                Err(e) => return self.fail_after_redeem(rec, ErrorCode::ProvisioningFailed, e.message),
            }
        }
        Flow::Park
    }

    pub(super) fn extended(
        &self,
        rec: &mut SagaRecord,
        lease_id: String,
        amount: u64,
        added: u64,
        expires_at: u64,
    ) -> Flow {
        rec.expires_at = Some(expires_at);
        let reply = Reply::Extended {
            request_id: rec.request_id.clone(),
            lease_id,
            amount_sats: amount,
            added_seconds: added,
            expires_at,
            refund_token: None,
        };
        self.deliver(rec, reply)
    }

    /// The lease (or extension) is had: return any excess first, then reply.
    pub(super) fn deliver(&self, rec: &mut SagaRecord, reply: Reply) -> Flow {
        let flow = self.finish_with(rec, reply);
        if rec.excess.is_some_and(|e| e > 0) {
            rec.step = Step::ReturningExcess;
        }
        flow
    }

    // Step: mint the excess into a token (once per request, like a refund) and attach it to the reply.
    pub(super) async fn step_returning_excess(&self, rec: &mut SagaRecord) -> Flow {
        let (Some(excess), Some(mint)) = (rec.excess.filter(|e| *e > 0), rec.mint_url.clone()) else {
            rec.step = Step::Replying;
            return Flow::Next;
        };
        let refund_id = format!("{}:excess", rec.request_id);
        match self.retry(|| self.ports.payment.refund(&mint, excess, &refund_id)).await {
            Ok(token) => {
                info!(excess, "excess over the longest lease returned");
                self.metrics.sats_refunded.fetch_add(excess, Ordering::Relaxed);
                if let Some(Reply::Ok { refund_token, .. } | Reply::Extended { refund_token, .. }) = &mut rec.reply {
                    *refund_token = Some(token);
                }
                rec.step = Step::Replying;
                Flow::Next
            }
            Err(e) if e.is_transient() => Flow::Park,
            Err(e) => {
                // The lease itself is delivered; the operator owes the excess (logged with the request id).
                warn!(error = %e, excess, "returning the excess failed; operator attention needed");
                rec.step = Step::Replying;
                Flow::Next
            }
        }
    }
}
