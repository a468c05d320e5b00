//! The end of a saga: refunds, the final reply, and answers about a lease to its owner.

use super::*;

impl LeaseService {
    // Step: return the money that bought nothing.
    pub(super) async fn step_refunding(&self, rec: &mut SagaRecord) -> Flow {
        let (code, message) = rec.failure.clone().unwrap_or((ErrorCode::Internal, "failed".into()));
        let amount = rec.amount.unwrap_or(0);
        let Some(mint) = rec.mint_url.clone().filter(|m| !m.is_empty() && amount > 0) else {
            if matches!(rec.ask, Ask::Release(_)) {
                let reply = self.released(rec, None);
                return self.finish_with(rec, reply);
            }
            return self.refuse(rec, code, message);
        };
        match self.retry(|| self.ports.payment.refund(&mint, amount, &rec.request_id)).await {
            Ok(token) if matches!(rec.ask, Ask::Release(_)) => {
                info!(amount, "release refunded");
                self.metrics.sats_refunded.fetch_add(amount, Ordering::Relaxed);
                let reply = self.released(rec, Some(token));
                self.finish_with(rec, reply)
            }
            Ok(token) => {
                info!(amount, "refund token minted");
                self.metrics.sats_refunded.fetch_add(amount, Ordering::Relaxed);
                let reply = Reply::Error {
                    request_id: rec.request_id.clone(),
                    code,
                    message: format!("{message}; the payment is refunded (minus mint fees) in refund_token"),
                    refund_token: Some(token),
                };
                self.finish_with(rec, reply)
            }
            Err(e) if e.is_transient() => Flow::Park,
            Err(e) => {
                warn!(error = %e, amount, "refund failed; operator attention needed");
                self.refuse(
                    rec,
                    code,
                    format!(
                        "{message}; the refund of {amount} sat failed ({}); contact the provider with request id {}",
                        e.message, rec.request_id
                    ),
                )
            }
        }
    }

    /// The answer to a release, with its refund (none when nothing was left to refund).
    fn released(&self, rec: &SagaRecord, refund_token: Option<String>) -> Reply {
        let amount = rec.amount.unwrap_or(0);
        Reply::Released {
            request_id: rec.request_id.clone(),
            lease_id: rec.lease_id.clone().unwrap_or_default(),
            unused_minutes: rec.unused_minutes.unwrap_or(0),
            amount_sats: if refund_token.is_some() { amount } else { 0 },
            refund_token,
        }
    }

    // Step: deliver the final reply.
    pub(super) async fn step_replying(&self, rec: &mut SagaRecord) -> Flow {
        let Some(reply) = rec.reply.clone() else {
            rec.step = Step::Done;
            return Flow::Next;
        };
        match self.retry(|| self.ports.replies.send(&rec.route, &reply)).await {
            Ok(()) => {
                let outcome = match &reply {
                    Reply::Ok { .. } => "ok",
                    Reply::Extended { .. } => "extended",
                    Reply::Status { .. } => "status",
                    Reply::Released { .. } => "released",
                    Reply::Notice { .. } => "notice",
                    Reply::Error { code, .. } => code.as_str(),
                };
                self.metrics.outcome(outcome);
                let waited = if rec.received_at_ms > 0 {
                    now_millis().saturating_sub(rec.received_at_ms) as f64 / 1000.0
                } else {
                    now_secs().saturating_sub(rec.received_at) as f64
                };
                self.metrics.observe_reply_latency(waited);
                info!(outcome, "reply sent");
                rec.step = Step::Done;
                Flow::Next
            }
            Err(e) => {
                warn!(error = %e, "reply not delivered; will retry");
                Flow::Park
            }
        }
    }

    pub(super) async fn answer_status(&self, rec: &mut SagaRecord, req: &StatusRequest) -> Flow {
        if let Some(ended) = self.early_end_of(rec, &req.lease) {
            return self.finish_with(rec, ended);
        }
        match self.find_owned_lease(rec, &req.lease).await {
            Err(flow) => flow,
            Ok(lease) => {
                let now = now_secs();
                let expires_at = lease.expires_at.unwrap_or(0);
                let active = expires_at > now && !lease.terminating;
                let reply = Reply::Status {
                    request_id: rec.request_id.clone(),
                    lease: LeaseStatus {
                        lease_id: lease.lease_id,
                        pod_name: lease.pod_name,
                        state: if active { "active" } else { "expired" }.into(),
                        expires_at,
                        seconds_remaining: expires_at.saturating_sub(now),
                    },
                };
                self.finish_with(rec, reply)
            }
        }
    }

    /// An HTTP lease the provider ended early: the refund token of its end, for its owner. Over Nostr
    /// that token went out in a reply; in-band (HTTP) there was nobody to answer, so the owner's next
    /// status request gets it (kept in the journal for that: see `SagaRecord::keeps_secrets_for_owner`).
    fn early_end_of(&self, rec: &SagaRecord, name: &str) -> Option<Reply> {
        if rec.route.via != ReplyVia::InBand {
            return None;
        }
        let id = super::intake::lease_ref(name).ok()?;
        let end = self.ports.journal.get(&super::end::end_id(id)).ok()??;
        if end.step != Step::Done || end.route.requester != rec.route.requester {
            return None;
        }
        match end.reply? {
            Reply::Error { code, message, refund_token: Some(t), .. } => {
                Some(Reply::Error { request_id: rec.request_id.clone(), code, message, refund_token: Some(t) })
            }
            _ => None,
        }
    }

    /// The requester's live lease named by id or pod name. Strangers learn nothing: they get the same
    /// answer as for a lease that does not exist.
    pub(super) async fn find_owned_lease(&self, rec: &mut SagaRecord, name: &str) -> Result<ClusterLease, Flow> {
        let id = name.strip_prefix("ssh-pod-").unwrap_or(name);
        match self.lease_by_id(id).await {
            Err(e) if e.is_transient() => Err(Flow::Park),
            Err(e) => Err(self.refuse(rec, ErrorCode::Unavailable, e.message)),
            Ok(Some(l)) if l.requester.as_deref() == Some(rec.route.requester.as_str()) => {
                if matches!(rec.ask, Ask::TopUp(_)) && (l.terminating || l.expires_at.is_none_or(|e| e <= now_secs())) {
                    return Err(self.refuse(rec, ErrorCode::LeaseExpired, "the lease has expired; start a new one"));
                }
                Ok(l)
            }
            Ok(Some(_)) => {
                info!(lease_id = id, "request from someone who does not own the lease refused");
                Err(self.refuse(rec, ErrorCode::LeaseNotFound, "no such lease of yours"))
            }
            Ok(None) => Err(self.refuse(rec, ErrorCode::LeaseNotFound, "no such lease of yours")),
        }
    }

    /// The tier (at its current rate, which a top-up pays) of a live lease of `requester`; None when there
    /// is no such lease of theirs. Free and unjournaled: it only prices a payment request.
    pub async fn tier_of_lease(&self, name: &str, requester: &str) -> Result<Option<Tier>, PortError> {
        let id = name.strip_prefix("ssh-pod-").unwrap_or(name);
        let lease = self.lease_by_id(id).await?;
        let live = |l: &ClusterLease| !l.terminating && l.expires_at.is_some_and(|e| e > now_secs());
        Ok(lease
            .filter(|l| l.requester.as_deref() == Some(requester) && live(l))
            .and_then(|l| self.tier(l.tier.as_deref()).cloned()))
    }

    pub(super) async fn lease_by_id(&self, id: &str) -> Result<Option<ClusterLease>, PortError> {
        self.retry(|| self.ports.cluster.get_lease(id)).await
    }
}
