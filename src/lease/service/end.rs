//! Ending a lease early, by the provider, when its pod can never run again (phase Failed: evicted, its node
//! lost): its onion service stops forwarding at once (the pod's IP may soon be someone else's), its
//! objects go, and the unused whole minutes go back to the owner at the rate and mint paid. A money path of
//! its own, journaled like the others: decided (amount and pod version) before the delete, refunded once.

use super::*;

/// The journal id of a lease's early end: one per lease, whoever notices first.
pub(super) fn end_id(lease_id: &str) -> String {
    format!("end:{lease_id}")
}

impl LeaseService {
    /// Start (once per lease) the early end of a lease whose pod failed.
    pub(super) async fn end_failed_lease(&self, lease: &ClusterLease) -> Option<Reply> {
        let requester = lease.requester.clone()?;
        let route = ReplyRoute {
            // The reply refers to the request that bought the lease.
            request_id: lease.request_id.clone().unwrap_or_else(|| end_id(&lease.lease_id)),
            requester,
            via: lease.reply_via.unwrap_or(ReplyVia::Nip44),
        };
        let ask = Ask::End { lease_id: lease.lease_id.clone(), reason: lease.failed.clone().unwrap_or_default() };
        let rec = SagaRecord { request_id: end_id(&lease.lease_id), ..new_record(route, ask) };
        self.start(rec).await
    }

    /// Step Received of an early end: decide the refund from the pod as it is now.
    pub(super) async fn decide_end(&self, rec: &mut SagaRecord, lease_id: &str, reason: &str) -> Flow {
        let lease = match self.lease_by_id(lease_id).await {
            Ok(Some(l)) if l.failed.is_some() && !l.terminating => l,
            Ok(_) => {
                info!(lease_id, "lease gone or running again; no early end");
                rec.step = Step::Done;
                return Flow::Next;
            }
            Err(e) if e.is_transient() => return Flow::Park,
            Err(e) => {
                warn!(lease_id, error = %e, "cannot read the failed lease; no early end");
                rec.step = Step::Done;
                return Flow::Next;
            }
        };
        let (unused_minutes, amount) = self.plan_end(rec, &lease);
        rec.failure = Some((
            ErrorCode::LeaseEnded,
            format!(
                "the lease's pod failed ({reason}) and cannot run again: the lease is ended and its \
                 {unused_minutes} unused minutes ({amount} sat) are refunded"
            ),
        ));
        info!(lease_id, unused_minutes, amount, "ending a failed lease early");
        rec.step = Step::Ending;
        Flow::Next
    }

    /// Step Received of a release: the owner's live lease, and what its unused whole minutes are worth.
    pub(super) async fn decide_release(&self, rec: &mut SagaRecord, name: &str) -> Flow {
        let lease = match self.find_owned_lease(rec, name).await {
            Ok(l) => l,
            Err(flow) => return flow,
        };
        if lease.terminating || lease.expires_at.is_none_or(|e| e <= now_secs()) {
            return self.refuse(rec, ErrorCode::LeaseExpired, "the lease has already ended");
        }
        let (unused_minutes, amount) = self.plan_end(rec, &lease);
        info!(lease_id = %lease.lease_id, unused_minutes, amount, "lease released by its owner");
        rec.step = Step::Ending;
        Flow::Next
    }

    /// Record what ending `lease` now returns: its unused whole minutes at the rate paid, from the mint
    /// paid, and the pod version this was judged on.
    fn plan_end(&self, rec: &mut SagaRecord, lease: &ClusterLease) -> (u64, u64) {
        let now = now_secs();
        let unused_minutes = lease.expires_at.unwrap_or(now).saturating_sub(now) / 60;
        let rate = self.rate_paid(lease);
        let amount = unused_minutes.saturating_mul(rate) / 60;
        rec.lease_id = Some(lease.lease_id.clone());
        rec.expires_at = lease.expires_at;
        rec.amount = Some(amount);
        rec.unused_minutes = Some(unused_minutes);
        rec.mint_url = lease.mint_url.clone();
        rec.pod_version = lease.version.clone();
        (unused_minutes, amount)
    }

    /// Step Ending: delete the lease under the version the refund was computed from, then refund.
    pub(super) async fn step_ending(&self, rec: &mut SagaRecord) -> Flow {
        let lease_id = rec.lease_id.clone().unwrap_or_default();
        // One end per lease: of the releases, the early end and expiry that race, the first to claim it
        // deletes and refunds; the others owe nothing (without this each refunded: lessons row 32).
        match self.ports.journal.claim_end(&lease_id, &rec.request_id, now_secs()) {
            Ok(None) => {}
            Ok(Some(holder)) => {
                info!(lease_id, holder = %holder, "lease already ended by another request; no refund");
                rec.amount = None;
                rec.failure = None;
                if matches!(rec.ask, Ask::Release(_)) {
                    return self.refuse(rec, ErrorCode::LeaseExpired, "the lease has already ended");
                }
                rec.step = Step::Done;
                return Flow::Next;
            }
            Err(e) => {
                warn!(lease_id, error = %e, "cannot claim the lease's end; parked");
                return Flow::Park;
            }
        }
        self.stop_onion(&lease_id).await;
        match self.retry(|| self.ports.cluster.delete_lease(&lease_id, rec.pod_version.as_deref())).await {
            Ok(()) => {
                rec.step = Step::Refunding;
                Flow::Next
            }
            Err(e) if e.is_transient() => match self.lease_by_id(&lease_id).await {
                // Deleted after all (the answer was lost): refund what was decided.
                Ok(None) => {
                    rec.step = Step::Refunding;
                    Flow::Next
                }
                // A top-up since the decision: decide again from the pod as it is now (and claim again:
                // the lease may live on).
                Ok(Some(l)) if l.version != rec.pod_version => {
                    if let Err(e) = self.ports.journal.release_end(&lease_id, &rec.request_id) {
                        warn!(lease_id, error = %e, "cannot release the lease's end claim; parked");
                        return Flow::Park;
                    }
                    rec.step = Step::Received;
                    Flow::Next
                }
                _ => Flow::Park,
            },
            Err(e) => {
                warn!(lease_id, error = %e, "cannot delete the failed lease; operator attention needed");
                Flow::Park
            }
        }
    }
}
