//! The swap at the mint, exactly once: offline checks and the token claim, the redeem, and settling an
//! ambiguous outcome from the mint's proof state and the wallet.

use super::*;

impl LeaseService {
    pub(super) fn check_token_then_redeem(&self, rec: &mut SagaRecord) -> Flow {
        let info = match self.offline_token_check(&rec.ask) {
            Ok(i) => i,
            Err((code, message)) => return self.refuse(rec, code, message),
        };
        match self.ports.journal.claim_token(&info.digest, &rec.request_id) {
            Ok(None) => {}
            Ok(Some(_other)) => {
                return self.refuse(rec, ErrorCode::TokenSpent, "this token was already used by another request");
            }
            Err(e) => {
                warn!(error = %e, "journal: cannot claim token");
                return Flow::Park;
            }
        }
        rec.mint_url = Some(info.mint_url);
        rec.token_digest = Some(info.digest);
        rec.step = Step::Redeeming;
        Flow::Next
    }

    pub(super) fn refuse_port(&self, rec: &mut SagaRecord, e: PortError, fallback: ErrorCode) -> Flow {
        let code = match e.kind {
            FailureKind::Rejected(c) => c,
            FailureKind::Transient => ErrorCode::MintUnavailable,
            FailureKind::Permanent => fallback,
        };
        self.refuse(rec, code, e.message)
    }

    // Step: swap at the mint, exactly once. `resumed`: an earlier attempt of this saga may have reached the mint.
    pub(super) async fn step_redeeming(&self, rec: &mut SagaRecord, resumed: bool) -> Flow {
        let token = rec.ask.token().to_string();
        if token.is_empty() {
            // Cannot happen by construction (the token is cleared only after leaving this step).
            return self.refuse(rec, ErrorCode::Internal, "token lost before redeem");
        }
        let mut attempt = 0;
        // Whether a swap of ours may have happened already. If not, the mint's answer is the whole truth
        // ("spent" then means someone else spent it: the journal's claim rules out our other requests).
        let mut maybe_ours = resumed;
        loop {
            attempt += 1;
            match self.ports.payment.redeem(&token).await {
                Ok(amount) => {
                    info!(amount, "token redeemed");
                    return self.redeemed(rec, amount);
                }
                Err(e) if e.is_transient() && attempt < self.settings.retry_attempts => {
                    maybe_ours = true;
                    warn!(attempt, error = %e, "redeem failed transiently; retrying");
                    tokio::time::sleep(self.settings.retry_delay).await;
                }
                Err(e) if !maybe_ours && !e.is_transient() => {
                    info!(error = %e, "token refused by the mint");
                    return self.refuse_port(rec, e, ErrorCode::InvalidToken);
                }
                // A swap of ours may have happened (or the mint never answered): whatever this answer says,
                // only the mint's proof state and our wallet settle the outcome.
                Err(e) => return self.settle_redeem(rec, &token, e).await,
            }
        }
    }

    /// The outcome of a redeem that may or may not have swapped the token, from the mint's proof state
    /// (NUT-07) and our wallet's records; never guessed from an error.
    pub(super) async fn settle_redeem(&self, rec: &mut SagaRecord, token: &str, e: PortError) -> Flow {
        match self.ports.payment.token_state(token).await {
            Ok(crate::lease::ports::TokenState::Unspent) => {
                // Provably nothing was taken: the token may pay again, in this request's retry or another.
                if let Some(digest) = rec.token_digest.clone() {
                    if let Err(je) = self.ports.journal.release_token(&digest, &rec.request_id) {
                        warn!(error = %je, "journal: cannot release the token claim");
                    }
                }
                if e.is_transient() {
                    self.refuse(
                        rec,
                        ErrorCode::MintUnavailable,
                        format!("the mint did not answer; nothing was taken: {e}"),
                    )
                } else {
                    info!(error = %e, "token refused by the mint");
                    self.refuse_port(rec, e, ErrorCode::InvalidToken)
                }
            }
            Ok(crate::lease::ports::TokenState::Spent) => match self.ports.payment.received_amount(token).await {
                Ok(Some(amount)) => {
                    info!(amount, "the swap had happened; continuing");
                    self.redeemed(rec, amount)
                }
                Ok(None) => {
                    info!("token spent, not by us");
                    self.refuse(rec, ErrorCode::TokenSpent, "the token was already spent at the mint")
                }
                Err(_) => Flow::Park,
            },
            // Pending (a swap in flight) or no answer: decide later, from a resume.
            Ok(crate::lease::ports::TokenState::Pending) | Err(_) => {
                warn!(error = %e, "redeem outcome unknown; parked until the mint tells");
                Flow::Park
            }
        }
    }

    pub(super) fn redeemed(&self, rec: &mut SagaRecord, amount: u64) -> Flow {
        self.metrics.sats_received.fetch_add(amount, Ordering::Relaxed);
        rec.amount = Some(amount);
        rec.ask = rec.ask.without_token();
        rec.step = Step::Redeemed;
        Flow::Next
    }
}
