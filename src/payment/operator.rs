//! The operator's day two with the wallet: the backup (the seed's mnemonic), a restore onto an empty volume
//! (the seed written back, then the ecash found again at each mint, NUT-09/NUT-13), and cashing out earnings
//! to Lightning (a NUT-05 melt).

use std::collections::HashMap;
use std::path::Path;

use cdk::nuts::{MeltQuoteState, PaymentMethod};

use super::{at_mint, seed, CashuPayment, PaymentError, MINT_TIMEOUT};
use crate::config::{normalize_mint_url, Failpoint};

pub use seed::Restore;

/// A NUT-13 restore scans every keyset in batches until a gap: several exchanges, so a longer bound.
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// An invoice paid from the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    pub mint: String,
    /// The invoice's amount.
    pub amount: u64,
    /// Lightning fee the mint charged (the unused part of its fee reserve comes back as change).
    pub fee: u64,
    /// The payment's preimage, when the mint returns one.
    pub preimage: Option<String>,
}

impl CashuPayment {
    /// Abort at `at` when it is the configured kill point (cash-out crash tests, docs/crash-safety.md).
    pub fn with_failpoint(mut self, failpoint: Option<Failpoint>) -> Self {
        self.failpoint = failpoint;
        self
    }

    fn failpoint(&self, at: Failpoint) {
        if self.failpoint == Some(at) {
            tracing::error!(failpoint = at.name(), "PAYGRESS_FAILPOINT reached: aborting");
            std::process::abort();
        }
    }

    /// The mnemonic of the wallet in `wallet_dir`: with the provider's Nostr key, all a restore needs. Reads
    /// the seed file only, so it works while the provider runs. A bearer secret: print it, never log it.
    pub fn backup_phrase(wallet_dir: &Path) -> Result<String, PaymentError> {
        seed::phrase(wallet_dir)
    }

    /// Write a backed-up mnemonic into `wallet_dir` before the wallet is opened (`CashuPayment::new`).
    /// Refused over any existing wallet of another seed; [`Restore::Same`] when it is already this one.
    pub fn restore_seed(wallet_dir: &Path, phrase: &str) -> Result<Restore, PaymentError> {
        seed::restore(wallet_dir, phrase)
    }

    /// A restored seed whose ecash was not yet found at every mint ([`restore_from_mints`](Self::restore_from_mints)
    /// has not finished since [`restore_seed`](Self::restore_seed) wrote it).
    pub fn restore_pending(&self) -> bool {
        self.wallet_dir.join(seed::RESTORE_MARKER).exists()
    }

    /// Find the seed's ecash again at every whitelisted mint (NUT-13 restore: the mint re-signs the
    /// deterministic outputs it has seen; NUT-07 drops the spent ones). Run on a restored wallet before any
    /// redeem: it must not overlap sagas in flight. Returns the balance per mint afterwards.
    pub async fn restore_from_mints(&self) -> Result<Vec<(String, u64)>, PaymentError> {
        for mint in &self.mints {
            let wallet = self.open_wallet(mint).await?;
            let lock = self.lock(mint).await;
            let _guard = lock.lock().await;
            let restored = at_mint(mint, "restore", RESTORE_TIMEOUT, wallet.restore()).await?;
            tracing::info!(
                mint = %mint,
                unspent = u64::from(restored.unspent),
                spent = u64::from(restored.spent),
                pending = u64::from(restored.pending),
                "wallet restored from its seed"
            );
        }
        let marker = self.wallet_dir.join(seed::RESTORE_MARKER);
        if let Err(e) = std::fs::remove_file(&marker) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(PaymentError::Setup { reason: format!("cannot remove {}: {e}", marker.display()) });
            }
        }
        self.balances().await
    }

    /// The balance per mint once every interrupted operation at the whitelisted mints is finished (cdk's sagas,
    /// also run when a mint's wallet is first opened): a cash-out or refund a crash cut short holds its proofs
    /// reserved until then, so the bare database would show too little. What the operator is shown.
    pub async fn settled_balances(&self) -> Result<Vec<(String, u64)>, PaymentError> {
        for mint in &self.mints {
            if let Err(e) = self.recover_at(mint).await {
                tracing::warn!(mint = %mint, error = %e, "could not finish interrupted wallet operations");
            }
        }
        self.balances().await
    }

    /// Pay a BOLT11 invoice with the ecash held at `mint` (None: the mint with the largest balance). The mint
    /// pays it over Lightning (NUT-05 melt quote, then melt); fails before any ecash moves when the balance
    /// cannot cover the amount and the mint's fee reserve.
    pub async fn pay_invoice(&self, invoice: &str, mint: Option<&str>) -> Result<Paid, PaymentError> {
        let mint = match mint {
            Some(m) => normalize_mint_url(m).ok_or_else(|| PaymentError::MintNotAllowed { mint: m.to_string() })?,
            None => self.richest_mint().await?,
        };
        let wallet = self.spending_wallet(&mint).await?;
        let lock = self.lock(&mint).await;
        let _guard = lock.lock().await;
        let quote =
            at_mint(&mint, "melt quote", MINT_TIMEOUT, wallet.melt_quote(PaymentMethod::BOLT11, invoice, None, None))
                .await?;
        let needed = u64::from(quote.amount) + u64::from(quote.fee_reserve);
        let available = self.balance_at(&mint).await?;
        if available < needed {
            return Err(PaymentError::InsufficientFunds { mint, available, requested: needed });
        }
        let prepared = wallet
            .prepare_melt(&quote.id, HashMap::new())
            .await
            .map_err(|e| PaymentError::from_cdk(&mint, "melt", e))?;
        self.failpoint(Failpoint::BeforeMelt);
        // No timeout around the payment itself: cdk's saga settles an interrupted melt, and dropping it
        // half-way would leave the outcome to the next start's recovery.
        let confirmed = prepared.confirm().await;
        if let Ok(done) = &confirmed {
            if done.state() == MeltQuoteState::Paid {
                self.failpoint(Failpoint::AfterMelt);
                tracing::info!(mint = %mint, amount = u64::from(done.amount()), fee = u64::from(done.fee_paid()), "invoice paid");
                return Ok(Paid {
                    mint,
                    amount: u64::from(done.amount()),
                    fee: u64::from(done.fee_paid()),
                    preimage: done.payment_proof().map(str::to_string),
                });
            }
        }
        // cdk 0.18.3 melts asynchronously and, against Nutshell 0.20, can read the quote as unpaid while the
        // mint is still paying: it then gives the proofs back as unspent though the mint spends them. So the
        // mint decides: its proof states (NUT-07) and the change it signed (NUT-09) put the wallet right, and
        // its quote state says whether the invoice was paid.
        let reason = match &confirmed {
            Ok(done) => format!("the payment ended {:?}", done.state()),
            Err(e) => e.to_string(),
        };
        tracing::warn!(mint = %mint, %reason, "melt not confirmed by cdk; asking the mint");
        self.sync_with_mint(&wallet, &mint).await?;
        let state = wallet
            .check_melt_quote_status(&quote.id)
            .await
            .map_err(|e| PaymentError::from_cdk(&mint, "melt status", e))?
            .state;
        if state != MeltQuoteState::Paid {
            return Err(PaymentError::MintRefused { mint, action: "melt", reason });
        }
        self.failpoint(Failpoint::AfterMelt);
        let after = self.balance_at(&mint).await?;
        let amount = u64::from(quote.amount);
        let fee = available.saturating_sub(after).saturating_sub(amount);
        tracing::info!(mint = %mint, amount, fee, "invoice paid (confirmed by the mint)");
        Ok(Paid { mint, amount, fee, preimage: None })
    }

    /// Make the wallet's view of `mint` the mint's: proofs it spent are marked spent (NUT-07), and outputs it
    /// signed that the wallet lost (a melt's change) are restored from the seed (NUT-09/13).
    async fn sync_with_mint(&self, wallet: &cdk::wallet::Wallet, mint: &str) -> Result<(), PaymentError> {
        let unspent = wallet.get_unspent_proofs().await.map_err(|e| PaymentError::from_cdk(mint, "list proofs", e))?;
        if !unspent.is_empty() {
            wallet.check_proofs_spent(unspent).await.map_err(|e| PaymentError::from_cdk(mint, "check proofs", e))?;
        }
        at_mint(mint, "restore", RESTORE_TIMEOUT, wallet.restore()).await?;
        Ok(())
    }
}
