//! Payment adapter: Cashu ecash through cdk, one wallet per whitelisted mint, persisted in
//! `<wallet_dir>/wallet.redb` with the seed in `<wallet_dir>/seed`.
//!
//! Money paths and what survives a crash:
//! - `redeem` swaps the token at its mint (NUT-03). cdk writes a saga record (with the blinded outputs and
//!   the NUT-13 counter range) and marks the inputs pending BEFORE it posts the swap. If we die after the
//!   post, the lease journal is at `Redeeming`: `token_state` tells whether the mint spent the proofs.
//!   `Unspent` means the swap never happened and `redeem` may simply run again. `Spent` means the mint
//!   signed our outputs; the signatures are recovered from the mint (NUT-09 restore of the recorded blinded
//!   messages) by cdk's `recover_incomplete_sagas`, which we run when a mint's wallet is first opened, so
//!   the ecash lands in the wallet without the token. If the saga record itself was lost, a full NUT-13
//!   `restore` from the seed finds the outputs, since the counters were persisted before the swap.
//! - `refund`/`send` mint a token from our proofs. A crash after the mint signed but before the token was
//!   handed over leaves the proofs "pending spent" in cdk (visible via `Wallet::get_pending_sends`, and
//!   reclaimable with `revoke_send` while nobody redeemed the token). A refund names its request in the
//!   metadata of cdk's outgoing transaction, whose send saga keeps the token: a refund resumed after such
//!   a crash hands out that same token instead of paying twice.

mod error;
mod operator;
mod seed;
mod token;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cdk::cdk_database::WalletDatabase;
use cdk::mint_url::MintUrl;
use cdk::nuts::{CheckStateRequest, CurrencyUnit, PublicKey, SecretKey, State, Token};
use cdk::wallet::types::{KeysetLoadPolicy, OperationData, TransactionDirection, TransactionStatus};
use cdk::wallet::{ReceiveOptions, SendOptions, Wallet, WalletBuilder};
use cdk::Amount;
use cdk_redb::WalletRedbDatabase;
use tokio::sync::Mutex;

pub use error::PaymentError;
pub use operator::{Paid, Restore};

use crate::config::normalize_mint_url;
use crate::lease::ports::{PaymentPort, PortResult, TokenInfo, TokenState};

/// Bound on one exchange with a mint; past it the outcome is treated as unknown (Transient).
const MINT_TIMEOUT: Duration = Duration::from_secs(30);

/// `call` at `mint`, bounded by `limit`: past it the outcome is unknown (`MintUnavailable`, Transient); cdk's
/// own errors are classified by [`PaymentError::from_cdk`] under the same `action`.
async fn at_mint<T>(
    mint: &str,
    action: &'static str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, cdk::Error>>,
) -> Result<T, PaymentError> {
    timed(mint, action, limit, call).await?.map_err(|e| PaymentError::from_cdk(mint, action, e))
}

/// As [`at_mint`], for a call whose error the caller reads itself.
async fn timed<F: std::future::Future>(
    mint: &str,
    action: &'static str,
    limit: Duration,
    call: F,
) -> Result<F::Output, PaymentError> {
    tokio::time::timeout(limit, call).await.map_err(|_| PaymentError::MintUnavailable {
        mint: mint.to_string(),
        action,
        reason: "timed out".into(),
    })
}

/// Metadata key on cdk's outgoing transaction naming the request a refund belongs to.
const REFUND_METADATA_KEY: &str = "paygress-refund";

/// A token made from our wallet, with what it is worth.
#[derive(Clone, PartialEq, Eq)]
pub struct SentToken {
    /// Encoded `cashuB…` token. A bearer instrument: never log it.
    pub token: String,
    pub mint_url: String,
    /// Face value of the token.
    pub amount: u64,
    /// What was asked for; more than `amount` when the wallet could not cover it.
    pub requested: u64,
}

impl std::fmt::Debug for SentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentToken")
            .field("token", &"<redacted>")
            .field("mint_url", &self.mint_url)
            .field("amount", &self.amount)
            .field("requested", &self.requested)
            .finish()
    }
}

pub struct CashuPayment {
    wallet_dir: PathBuf,
    /// Normalised mint URLs, compared exactly.
    mints: Vec<String>,
    unit: CurrencyUnit,
    p2pk_key: SecretKey,
    p2pk_pubkey: PublicKey,
    seed: [u8; 64],
    db: Arc<WalletRedbDatabase>,
    /// Per-mint wallets (normalised URL), built on first use. Not cdk's `WalletRepository`: its wallets
    /// share a rate limiter whose background writer keeps the database open after drop.
    wallets: Mutex<BTreeMap<String, Wallet>>,
    /// One money-moving operation per mint at a time: cdk's sagas are safe, but serialising avoids
    /// spurious `ConcurrentUpdate` conflicts on the keyset counters of one wallet.
    locks: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
    /// Crash-recovery testing of the cash-out (`PAYGRESS_FAILPOINT` before_melt/after_melt).
    failpoint: Option<crate::config::Failpoint>,
}

impl std::fmt::Debug for CashuPayment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CashuPayment")
            .field("wallet_dir", &self.wallet_dir)
            .field("mints", &self.mints)
            .field("unit", &self.unit)
            .finish_non_exhaustive()
    }
}

impl CashuPayment {
    /// Open (or create) the wallet in `wallet_dir`. `mints` should already be normalised (they are again);
    /// `p2pk_secret` is the provider's secp256k1 key, whose public key is advertised for NUT-11 locks.
    /// No network I/O: mint wallets are created on first use.
    pub fn new(
        wallet_dir: &Path,
        mints: &[String],
        p2pk_secret: &[u8; 32],
        unit: &str,
    ) -> Result<CashuPayment, PaymentError> {
        let unit = CurrencyUnit::from_str(unit)
            .map_err(|_| PaymentError::Setup { reason: format!("unknown currency unit {unit}") })?;
        let mut normalised = Vec::new();
        for m in mints {
            let n = normalize_mint_url(m).ok_or_else(|| PaymentError::Setup { reason: format!("bad mint URL {m}") })?;
            if !normalised.contains(&n) {
                normalised.push(n);
            }
        }
        let p2pk_key = SecretKey::from_slice(p2pk_secret)
            .map_err(|_| PaymentError::Setup { reason: "P2PK secret key is not a valid secp256k1 key".into() })?;
        let seed = seed::load_or_create(wallet_dir)?;
        let db = WalletRedbDatabase::new(&wallet_dir.join(seed::DB_FILE))
            .map_err(|e| PaymentError::Storage { action: "open wallet database", reason: e.to_string() })?;
        Ok(CashuPayment {
            wallet_dir: wallet_dir.to_path_buf(),
            mints: normalised,
            unit,
            p2pk_pubkey: p2pk_key.public_key(),
            p2pk_key,
            seed,
            db: Arc::new(db),
            wallets: Mutex::new(BTreeMap::new()),
            locks: Mutex::new(BTreeMap::new()),
            failpoint: None,
        })
    }

    /// Compressed public key (`02…`/`03…`, 66 hex chars) that requesters lock tokens to.
    pub fn p2pk_pubkey_hex(&self) -> String {
        self.p2pk_pubkey.to_hex()
    }

    pub fn mints(&self) -> &[String] {
        &self.mints
    }

    /// A cdk wallet over our database; no network I/O. Rate limiting is off: we talk to a few known mints,
    /// and cdk's limiter persists its budget from a background task.
    fn build_wallet(&self, url: MintUrl) -> Result<Wallet, PaymentError> {
        let mint = url.to_string();
        WalletBuilder::new()
            .mint_url(url)
            .unit(self.unit.clone())
            .localstore(self.db.clone())
            .seed(self.seed)
            .without_rate_limiting()
            .build()
            .map_err(|e| PaymentError::from_cdk(&mint, "open wallet", e))
    }

    /// The wallet of a whitelisted mint (normalised URL), created on first use. A new wallet first finishes
    /// any swap or send a crash interrupted (needs the mint; failures are logged and retried next start).
    async fn wallet(&self, mint: &str) -> Result<Wallet, PaymentError> {
        if !self.mints.iter().any(|m| m == mint) {
            return Err(PaymentError::MintNotAllowed { mint: mint.to_string() });
        }
        self.open_wallet(mint).await
    }

    /// For spending our own ecash: a whitelisted mint, or one the wallet still holds ecash at (a refund
    /// resumed after the whitelist changed must still be paid where the money is).
    async fn spending_wallet(&self, mint: &str) -> Result<Wallet, PaymentError> {
        if self.mints.iter().any(|m| m == mint) {
            return self.open_wallet(mint).await;
        }
        if self.balance_at(mint).await? == 0 {
            return Err(PaymentError::MintNotAllowed { mint: mint.to_string() });
        }
        self.open_wallet(mint).await
    }

    async fn open_wallet(&self, mint: &str) -> Result<Wallet, PaymentError> {
        let url = MintUrl::from_str(mint).map_err(|_| PaymentError::MintNotAllowed { mint: mint.to_string() })?;
        // The map stays locked while a fresh wallet recovers, so no operation can start on it meanwhile:
        // cdk's recovery would take an in-flight saga of ours for an interrupted one.
        let mut wallets = self.wallets.lock().await;
        if let Some(w) = wallets.get(mint) {
            return Ok(w.clone());
        }
        let wallet = self.build_wallet(url)?;
        match tokio::time::timeout(MINT_TIMEOUT, wallet.recover_incomplete_sagas()).await {
            Ok(Ok(report)) => tracing::debug!(mint, ?report, "wallet opened, interrupted operations checked"),
            Ok(Err(e)) => {
                tracing::warn!(mint, error = %e, "could not recover interrupted wallet operations")
            }
            Err(_) => tracing::warn!(mint, "timed out recovering interrupted wallet operations"),
        }
        wallets.insert(mint.to_string(), wallet.clone());
        Ok(wallet)
    }

    /// Finish swaps and sends a crash or timeout interrupted, at every whitelisted mint (cdk sagas; NUT-09
    /// restore of recorded outputs). Wallets run this when first opened; call it again after a `redeem`
    /// ended Transient and `token_state` says Spent, so the swapped ecash lands in the balance.
    pub async fn recover(&self) -> Result<(), PaymentError> {
        for mint in &self.mints {
            self.recover_at(mint).await?;
        }
        Ok(())
    }

    /// `recover` at one mint: settling a token of this mint must not wait on (or fail with) another.
    pub async fn recover_at(&self, mint: &str) -> Result<(), PaymentError> {
        let wallet = self.open_wallet(mint).await?;
        let lock = self.lock(mint).await;
        let _guard = lock.lock().await;
        at_mint(mint, "recover", MINT_TIMEOUT, wallet.recover_incomplete_sagas()).await?;
        Ok(())
    }

    async fn lock(&self, mint: &str) -> Arc<Mutex<()>> {
        self.locks.lock().await.entry(mint.to_string()).or_default().clone()
    }

    fn check(&self, raw: &str) -> Result<token::Checked, PaymentError> {
        token::check(raw, &self.mints, &self.unit, &self.p2pk_pubkey)
    }

    /// Vet a token's proofs against its mint's keys (cached by cdk; fetched when unknown or stale) before
    /// anything about it is stored: see `token::vet_proofs`.
    pub async fn vet(&self, raw: &str) -> Result<(), PaymentError> {
        let checked = self.check(raw)?;
        let mint = checked.info.mint_url.clone();
        let wallet = self.wallet(&mint).await?;
        let keysets =
            at_mint(&mint, "keysets", MINT_TIMEOUT, wallet.keysets(KeysetLoadPolicy::CacheThenNetwork)).await?;
        token::vet_proofs(&checked.token, &keysets)
    }

    /// Redeem with the full error type (the port maps it to `PortError`).
    pub async fn receive(&self, raw: &str) -> Result<u64, PaymentError> {
        let checked = self.check(raw)?;
        let mint = checked.info.mint_url.clone();
        let wallet = self.wallet(&mint).await?;
        // cdk compares mints by its own normalisation; hand it the token under the wallet's URL so a
        // spelling that is equal for us (e.g. an explicit :443) is not refused as IncorrectMint.
        let mut tok = checked.token;
        match &mut tok {
            Token::TokenV3(t) => t.token.iter_mut().for_each(|e| e.mint = wallet.mint_url.clone()),
            Token::TokenV4(t) => t.mint_url = wallet.mint_url.clone(),
        }
        let opts = ReceiveOptions { p2pk_signing_keys: vec![self.p2pk_key.clone()], ..Default::default() };
        let lock = self.lock(&mint).await;
        let _guard = lock.lock().await;
        let received = at_mint(&mint, "redeem", MINT_TIMEOUT, wallet.receive(&tok.to_string(), opts)).await?;
        let received = u64::from(received);
        tracing::info!(mint = %mint, face = checked.info.amount, received, "token redeemed");
        Ok(received)
    }

    /// NUT-07 state of the token's proofs at its (whitelisted) mint. The wallet's own database is not
    /// touched: these proofs are not ours until redeemed.
    pub async fn check_state(&self, raw: &str) -> Result<TokenState, PaymentError> {
        // Only the mint matters here: a token we would refuse (another lock, unit) may still be asked about.
        let (tok, mint) = token::check_mint(raw, &self.mints)?;
        let ys = tok
            .token_secrets()
            .into_iter()
            .map(|s| cdk::dhke::hash_to_curve(s.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| PaymentError::InvalidToken { reason: "proof secret maps to no curve point".into() })?;
        let wallet = self.wallet(&mint).await?;
        let connector = wallet.mint_connector();
        let check = connector.post_check_state(CheckStateRequest { ys: ys.clone() });
        let resp = at_mint(&mint, "check state", MINT_TIMEOUT, check).await?;
        let states: BTreeMap<PublicKey, State> = resp.states.iter().map(|s| (s.y, s.state)).collect();
        let mut all_spent = true;
        for y in &ys {
            match states.get(y) {
                None => {
                    return Err(PaymentError::MintUnavailable {
                        mint,
                        action: "check state",
                        reason: "mint did not report every proof".into(),
                    })
                }
                Some(State::Spent) => {}
                Some(State::Unspent) => all_spent = false,
                // Something is in flight at the mint: the outcome is not settled yet.
                Some(_) => return Ok(TokenState::Pending),
            }
        }
        // Our swap spends all proofs at once. Partly spent means someone else spent some: our swap did
        // not happen (and a new one would fail as spent), so that is not `Spent`.
        Ok(if all_spent { TokenState::Spent } else { TokenState::Unspent })
    }

    /// Whether this wallet completed a swap of exactly this token's proofs, and for how much (after fees).
    /// Resolves a `redeem` that ended Transient or was cut by a crash: call [`recover`](Self::recover) first;
    /// then `Some(n)` means the ecash is ours, while `None` with `token_state == Spent` means someone else
    /// redeemed the token. Reads the wallet database only.
    pub async fn received_amount(&self, raw: &str) -> Result<Option<u64>, PaymentError> {
        let (tok, mint) = token::check_mint(raw, &self.mints)?;
        let mut ys = tok
            .token_secrets()
            .into_iter()
            .map(|s| cdk::dhke::hash_to_curve(s.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| PaymentError::InvalidToken { reason: "proof secret maps to no curve point".into() })?;
        ys.sort();
        let wallet = self.open_wallet(&mint).await?;
        let txs = wallet
            .list_transactions(Some(cdk::wallet::types::TransactionDirection::Incoming))
            .await
            .map_err(|e| PaymentError::from_cdk(&mint, "list transactions", e))?;
        Ok(txs.into_iter().find_map(|t| {
            let mut t_ys = t.ys.clone();
            t_ys.sort();
            (t_ys == ys && t.status == cdk::wallet::types::TransactionStatus::Completed).then(|| u64::from(t.amount))
        }))
    }

    /// Make a token of `amount` from the wallet at `mint` (normalised URL; None = the mint with the largest
    /// balance). The token's face value is `amount`; mint fees of the swap are paid by us, the receiver pays
    /// their own redemption fee. When the wallet cannot cover `amount`, it sends the most it can after fees
    /// and reports that through `SentToken::amount < requested` (a partial refund beats none).
    pub async fn send(&self, mint: Option<&str>, amount: u64) -> Result<String, PaymentError> {
        Ok(self.send_up_to(mint, amount).await?.token)
    }

    /// As [`send`](Self::send), returning the amount actually sent.
    pub async fn send_up_to(&self, mint: Option<&str>, amount: u64) -> Result<SentToken, PaymentError> {
        self.send_inner(mint, amount, None).await
    }

    /// A refund of `amount` at `mint` for the request `refund_id`, minted at most once: if an earlier call
    /// for the same id created a token (and crashed before handing it over), that token is returned.
    pub async fn refund_once(&self, mint: &str, amount: u64, refund_id: &str) -> Result<SentToken, PaymentError> {
        self.send_inner(Some(mint), amount, Some(refund_id)).await
    }

    /// The token an earlier refund with this id created, if its send is still open (nobody has redeemed
    /// it). `Err` if it was created and already redeemed, or its state is unclear: it may have reached
    /// someone, so it is not minted again. `None` when there was none, or cdk rolled it back.
    async fn earlier_refund(
        &self,
        wallet: &Wallet,
        mint: &str,
        refund_id: &str,
    ) -> Result<Option<SentToken>, PaymentError> {
        let storage = |e| PaymentError::Storage { action: "refund lookup", reason: format!("{e}") };
        let earlier = wallet
            .list_transactions(Some(TransactionDirection::Outgoing))
            .await
            .map_err(storage)?
            .into_iter()
            .filter(|t| t.metadata.get(REFUND_METADATA_KEY).is_some_and(|id| id == refund_id));
        for tx in earlier {
            // Failed: cdk rolled the send back (or it was revoked) and the proofs are ours again.
            if tx.status == TransactionStatus::Failed {
                continue;
            }
            if let Some(saga_id) = tx.saga_id {
                let saga = self.db.get_saga(&saga_id).await.map_err(|e| storage(e.into()))?;
                if let Some(OperationData::Send(data)) = saga.map(|s| s.data) {
                    if let Some(token) = data.token {
                        let amount = u64::from(tx.amount);
                        tracing::info!(mint = %mint, amount, "refund token of an interrupted run reused");
                        return Ok(Some(SentToken { token, mint_url: mint.to_string(), amount, requested: amount }));
                    }
                }
            }
            // Completed (redeemed by its holder) or in a state we cannot read: never pay it a second time.
            return Err(PaymentError::MintRefused {
                mint: mint.to_string(),
                action: "refund",
                reason: format!("a refund of {} sat for this request was already issued ({})", tx.amount, tx.status),
            });
        }
        Ok(None)
    }

    async fn send_inner(
        &self,
        mint: Option<&str>,
        amount: u64,
        refund_id: Option<&str>,
    ) -> Result<SentToken, PaymentError> {
        let mint = match mint {
            Some(m) => normalize_mint_url(m).ok_or_else(|| PaymentError::MintNotAllowed { mint: m.to_string() })?,
            None => self.richest_mint().await?,
        };
        if amount == 0 {
            return Err(PaymentError::InsufficientFunds { mint, available: 0, requested: 0 });
        }
        let wallet = self.spending_wallet(&mint).await?;
        let lock = self.lock(&mint).await;
        let _guard = lock.lock().await;
        let mut options = SendOptions::default();
        if let Some(id) = refund_id {
            if let Some(sent) = self.earlier_refund(&wallet, &mint, id).await? {
                return Ok(sent);
            }
            options.metadata.insert(REFUND_METADATA_KEY.to_string(), id.to_string());
        }
        let available = u64::from(wallet.total_balance().await.map_err(|e| PaymentError::from_cdk(&mint, "send", e))?);
        let mut try_amount = amount.min(available);
        // A few attempts at most: after a shortfall, aim below the balance by the fee of spending every
        // proof (an upper bound of the swap fee), once, twice, three times.
        for attempt in 1..=4u64 {
            if try_amount == 0 {
                break;
            }
            let prepared =
                timed(&mint, "send", MINT_TIMEOUT, wallet.prepare_send(Amount::from(try_amount), options.clone()))
                    .await?;
            match prepared {
                Ok(p) => {
                    let token = at_mint(&mint, "send", MINT_TIMEOUT, p.confirm(None)).await?;
                    if try_amount < amount {
                        tracing::warn!(mint = %mint, requested = amount, sent = try_amount, "wallet short: sent less than requested");
                    } else {
                        tracing::info!(mint = %mint, amount = try_amount, "token sent");
                    }
                    return Ok(SentToken {
                        token: token.to_string(),
                        mint_url: mint,
                        amount: try_amount,
                        requested: amount,
                    });
                }
                Err(cdk::Error::InsufficientFunds) => {
                    let proofs =
                        wallet.get_unspent_proofs().await.map_err(|e| PaymentError::from_cdk(&mint, "send", e))?;
                    let fee = wallet
                        .get_proofs_fee(&proofs)
                        .await
                        .map(|f| u64::from(f.total))
                        .map_err(|e| PaymentError::from_cdk(&mint, "send", e))?;
                    try_amount = available.saturating_sub(fee.max(1) * attempt).min(try_amount - 1);
                }
                Err(e) => return Err(PaymentError::from_cdk(&mint, "send", e)),
            }
        }
        Err(PaymentError::InsufficientFunds { mint, available, requested: amount })
    }

    async fn richest_mint(&self) -> Result<String, PaymentError> {
        let balances = self.balances().await?;
        balances.into_iter().max_by_key(|(_, b)| *b).map(|(m, _)| m).ok_or_else(|| PaymentError::InsufficientFunds {
            mint: "(any)".into(),
            available: 0,
            requested: 0,
        })
    }

    /// Spendable sats per mint: every whitelisted mint, plus any other mint the database holds ecash of
    /// (from an earlier whitelist). Reads the database only; no network I/O.
    pub async fn balances(&self) -> Result<Vec<(String, u64)>, PaymentError> {
        let storage = |e: cdk::cdk_database::Error| PaymentError::Storage { action: "balance", reason: e.to_string() };
        let mut out: BTreeMap<String, u64> = self.mints.iter().map(|m| (m.clone(), 0)).collect();
        let mut urls: Vec<MintUrl> = self.db.get_mints().await.map_err(storage)?.into_keys().collect();
        for m in &self.mints {
            let url = MintUrl::from_str(m).map_err(|_| PaymentError::MintNotAllowed { mint: m.clone() })?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        for url in urls {
            let b = self
                .db
                .get_balance(Some(url.clone()), Some(self.unit.clone()), Some(vec![State::Unspent]))
                .await
                .map_err(storage)?;
            let key = normalize_mint_url(&url.to_string()).unwrap_or_else(|| url.to_string());
            *out.entry(key).or_default() += b;
        }
        Ok(out.into_iter().collect())
    }

    /// Spendable sats at one mint (normalised URL), from the database.
    async fn balance_at(&self, mint: &str) -> Result<u64, PaymentError> {
        Ok(self.balances().await?.into_iter().find(|(m, _)| m == mint).map_or(0, |(_, b)| b))
    }

    pub async fn total_balance(&self) -> Result<u64, PaymentError> {
        Ok(self.balances().await?.iter().map(|(_, b)| b).sum())
    }
}

#[async_trait]
impl PaymentPort for CashuPayment {
    fn inspect(&self, token: &str) -> PortResult<TokenInfo> {
        Ok(self.check(token)?.info)
    }

    async fn vet(&self, token: &str) -> PortResult<()> {
        Ok(CashuPayment::vet(self, token).await?)
    }

    async fn redeem(&self, token: &str) -> PortResult<u64> {
        Ok(self.receive(token).await?)
    }

    async fn token_state(&self, token: &str) -> PortResult<TokenState> {
        Ok(self.check_state(token).await?)
    }

    async fn received_amount(&self, token: &str) -> PortResult<Option<u64>> {
        // The port promises an answer after interrupted swaps are recovered. Recovery otherwise runs only when
        // a wallet is first opened, so a redeem that timed out in this process (swap done at the mint, proofs
        // not yet stored) would read as "spent by someone else" and the requester would get nothing.
        // Only the token's mint: one mint down must not leave unclear redeems at the others parked.
        let (_, mint) = token::check_mint(token, &self.mints).map_err(crate::lease::ports::PortError::from)?;
        self.recover_at(&mint).await?;
        Ok(CashuPayment::received_amount(self, token).await?)
    }

    /// Partial refunds (wallet short) return the smaller token; the shortfall is logged. See `send_up_to`.
    async fn refund(&self, mint_url: &str, amount: u64, refund_id: &str) -> PortResult<String> {
        Ok(self.refund_once(mint_url, amount, refund_id).await?.token)
    }

    async fn balance(&self) -> PortResult<u64> {
        Ok(self.total_balance().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ports::FailureKind;
    use crate::protocol::ErrorCode;

    fn payment(dir: &Path) -> CashuPayment {
        CashuPayment::new(dir, &["https://mint.x/".to_string()], &[7u8; 32], "sat").expect("open")
    }

    #[test]
    fn pubkey_is_compressed_hex() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = payment(dir.path());
        let hex = p.p2pk_pubkey_hex();
        assert_eq!(hex.len(), 66);
        assert!(hex.starts_with("02") || hex.starts_with("03"));
        assert_eq!(p.mints(), ["https://mint.x".to_string()]);
    }

    #[tokio::test]
    async fn non_whitelisted_mint_is_refused_without_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = payment(dir.path());
        // The NUT-00 vector names https://8333.space:3338; a network attempt would be Transient instead.
        let t = "cashuBpGFtd2h0dHBzOi8vODMzMy5zcGFjZTozMzM4YXVjc2F0YWRqVGhhbmsgeW91LmF0gaJhaUgAmh8pMlPkHmFwgqRhYQJhc3hANDA3OTE1YmMyMTJiZTYxYTc3ZTNlNmQyYWViNGM3Mjc5ODBiZGE1MWNkMDZhNmFmYzI5ZTI4NjE3NjhhNzgzN2FjWCECvJCXmX2Br7LMc0a15DRak0a9KlBut5WFmKcvDPhRY-phZPakYWEIYXN4QGZlMTUxMDkzMTRlNjFkNzc1NmIwZjhlZTBmMjNhNjI0YWNhYTNmNGUwNDJmNjE0MzNjNzI4YzcwNTdiOTMxYmVhY1ghAp6OUFC4kKfWwJaNsWvB1dX6BA6h3ihPbsadYSmfZxBZYWT2";
        let e = p.redeem(t).await.expect_err("refused");
        assert_eq!(e.kind, FailureKind::Rejected(ErrorCode::MintNotAllowed));
        let e = p.token_state(t).await.expect_err("refused");
        assert_eq!(e.kind, FailureKind::Rejected(ErrorCode::MintNotAllowed));
        let e = p.refund("https://8333.space:3338", 5, "r1").await.expect_err("refused");
        assert_eq!(e.kind, FailureKind::Rejected(ErrorCode::MintNotAllowed));
    }

    #[tokio::test]
    async fn empty_wallet_balance_is_zero_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = payment(dir.path());
            assert_eq!(p.balance().await.expect("balance"), 0);
            assert_eq!(p.balances().await.expect("balances"), vec![("https://mint.x".to_string(), 0)]);
        }
        let p = payment(dir.path());
        assert_eq!(p.balance().await.expect("balance"), 0);
    }
}
