//! The CLI's own Cashu wallet (cdk + redb under `<home>/wallet`), so a user can pay without another
//! wallet: `wallet fund` mints through a Lightning invoice, `request --amount N --mint URL` sends from it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cdk::amount::SplitTarget;
use cdk::mint_url::MintUrl;
use cdk::nuts::{
    Conditions, CurrencyUnit, MintQuoteState, PaymentMethod, PublicKey, SecretKey, SpendingConditions, State,
};
use cdk::wallet::{ReceiveOptions, SendOptions, Wallet, WalletBuilder};
use cdk::Amount;
use cdk_redb::WalletRedbDatabase;
use rand::RngCore;

use super::home::write_private;
use crate::config::normalize_mint_url;

const MINT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct CliWallet {
    dir: PathBuf,
    seed: [u8; 64],
    db: Arc<WalletRedbDatabase>,
}

impl CliWallet {
    pub fn open(dir: &Path) -> Result<CliWallet> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let seed = load_or_create_seed(dir)?;
        let db = WalletRedbDatabase::new(&dir.join("wallet.redb"))
            .map_err(|e| anyhow!("cannot open wallet database in {}: {e}", dir.display()))?;
        Ok(CliWallet { dir: dir.to_path_buf(), seed, db: Arc::new(db) })
    }

    fn wallet(&self, mint: &str) -> Result<Wallet> {
        let norm = normalize_mint_url(mint).ok_or_else(|| anyhow!("bad mint URL {mint}"))?;
        let url = MintUrl::from_str(&norm).map_err(|e| anyhow!("bad mint URL {mint}: {e}"))?;
        WalletBuilder::new()
            .mint_url(url)
            .unit(CurrencyUnit::Sat)
            .localstore(self.db.clone())
            .seed(self.seed)
            .without_rate_limiting()
            .build()
            .map_err(|e| anyhow!("wallet for {mint}: {e}"))
    }

    /// Mint `amount` sats: ask for a Lightning invoice, print it (stderr), wait until it is paid, mint.
    pub async fn fund(&self, mint: &str, amount: u64, wait: Duration) -> Result<u64> {
        let w = self.wallet(mint)?;
        let quote =
            timed(w.mint_quote(PaymentMethod::BOLT11, Some(Amount::from(amount)), None, None), mint, "quote").await?;
        eprintln!("pay this Lightning invoice to mint {amount} sat at {mint}:\n{}", quote.request);
        let deadline = Instant::now() + wait;
        loop {
            let q = timed(w.check_mint_quote_status(&quote.id), mint, "check quote").await?;
            if matches!(q.state, MintQuoteState::Paid | MintQuoteState::Issued) {
                break;
            }
            if Instant::now() > deadline {
                bail!("invoice not paid within {}s (quote {} kept; fund again later)", wait.as_secs(), quote.id);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let proofs = timed(w.mint(&quote.id, SplitTarget::default(), None), mint, "mint").await?;
        let minted: u64 = proofs.iter().map(|p| u64::from(p.amount)).sum();
        Ok(minted)
    }

    /// A token of exactly `amount` sats from this wallet's ecash at `mint`.
    pub async fn send(&self, mint: &str, amount: u64) -> Result<String> {
        let w = self.wallet(mint)?;
        let have = u64::from(w.total_balance().await.map_err(|e| anyhow!("wallet balance: {e}"))?);
        if have < amount {
            bail!("wallet holds {have} sat at {mint}, {amount} needed (paygress-cli wallet fund --amount N --mint {mint})");
        }
        let prepared =
            timed(w.prepare_send(Amount::from(amount), SendOptions::default()), mint, "prepare send").await?;
        let token = timed(prepared.confirm(None), mint, "send").await?;
        Ok(token.to_string())
    }

    /// A token of `amount` sats net of the receiver's swap fee, its proofs P2PK-locked to `lock_to` (NUT-11,
    /// as a NUT-18 request asks), refundable to `refund` after `locktime`: a payment the provider refuses
    /// without redeeming comes back then (`receive_with`).
    pub async fn send_locked(
        &self,
        mint: &str,
        amount: u64,
        lock_to: &str,
        refund: &SecretKey,
        locktime: u64,
    ) -> Result<String> {
        let w = self.wallet(mint)?;
        let lock = PublicKey::from_hex(lock_to).map_err(|_| anyhow!("the P2PK lock is not a secp256k1 key"))?;
        let conditions =
            Conditions { locktime: Some(locktime), refund_keys: Some(vec![refund.public_key()]), ..Default::default() };
        let opts = SendOptions {
            conditions: Some(SpendingConditions::new_p2pk(lock, Some(conditions))),
            include_fee: true,
            ..Default::default()
        };
        let prepared = timed(w.prepare_send(Amount::from(amount), opts), mint, "prepare send").await.map_err(|e| {
            let have = e.to_string();
            anyhow!("{have} (fund the wallet: paygress-cli wallet fund --amount N --mint {mint})")
        })?;
        let token = timed(prepared.confirm(None), mint, "send").await?;
        Ok(token.to_string())
    }

    /// Swap a token into this wallet (a refund, or our own unspent token back).
    pub async fn receive(&self, token: &str) -> Result<u64> {
        self.receive_with(token, None).await
    }

    /// `receive`, signing for proofs locked to `key` (a locked payment whose locktime has passed).
    pub async fn receive_with(&self, token: &str, key: Option<&SecretKey>) -> Result<u64> {
        let t = cdk::nuts::Token::from_str(token.trim()).map_err(|_| anyhow!("not a Cashu token"))?;
        let mint = t.mint_url().map_err(|_| anyhow!("token names no mint"))?.to_string();
        let w = self.wallet(&mint)?;
        let opts = ReceiveOptions { p2pk_signing_keys: key.into_iter().cloned().collect(), ..Default::default() };
        let got = timed(w.receive(token.trim(), opts), &mint, "receive").await?;
        Ok(u64::from(got))
    }

    /// Spendable sats per mint the wallet knows.
    pub async fn balances(&self) -> Result<Vec<(String, u64)>> {
        use cdk::cdk_database::WalletDatabase;
        let mints = self.db.get_mints().await.map_err(|e| anyhow!("wallet database: {e}"))?;
        let mut out = Vec::new();
        for url in mints.into_keys() {
            let b = self
                .db
                .get_balance(Some(url.clone()), Some(CurrencyUnit::Sat), Some(vec![State::Unspent]))
                .await
                .map_err(|e| anyhow!("wallet database: {e}"))?;
            out.push((url.to_string(), b));
        }
        Ok(out)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, cdk::Error>>,
    mint: &str,
    action: &str,
) -> Result<T> {
    match tokio::time::timeout(MINT_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("mint {mint}: {action} failed: {e}")),
        Err(_) => Err(anyhow!("mint {mint}: {action} timed out after {}s", MINT_TIMEOUT.as_secs())),
    }
}

/// 64 random bytes, hex, in `<dir>/seed` (0600), created once.
fn load_or_create_seed(dir: &Path) -> Result<[u8; 64]> {
    let path = dir.join("seed");
    if !path.exists() {
        if dir.join("wallet.redb").exists() {
            bail!("{} is missing next to an existing wallet database; restore it from backup", path.display());
        }
        let mut seed = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        write_private(&path, format!("{}\n", hex::encode(seed)).as_bytes(), false).or_else(|e| {
            if path.exists() {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = hex::decode(text.trim()).map_err(|_| anyhow!("{} is not a hex seed", path.display()))?;
    bytes.try_into().map_err(|_| anyhow!("{} is not a 64-byte seed", path.display()))
}
