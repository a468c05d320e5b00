//! `paygress-cli keepalive`: top a lease up from the CLI's wallet shortly before each expiry, until a budget
//! or a time runs out. Its state lives in the CLI's home (`keepalive/<lease>.json`), so a restarted
//! `keepalive <lease>` goes on where it stopped, with what is left of the budget.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use nostr_sdk::prelude::Keys;
use serde::{Deserialize, Serialize};

use super::home::Home;
use super::{IoArgs, PayArgs};

/// What a keepalive is told, and what it has spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub lease_id: String,
    /// Sats of each top-up, from the wallet at `mint`.
    pub amount: u64,
    pub mint: String,
    /// Sats it may still spend (None: no bound but `until`).
    pub budget_left: Option<u64>,
    /// Stop extending past this time (unix seconds).
    pub until: Option<u64>,
    /// Top up this many seconds before the expiry.
    pub lead: u64,
}

impl Plan {
    /// Why the keepalive stops now, if it does.
    pub fn done(&self, now: u64, expires_at: u64) -> Option<String> {
        if expires_at <= now {
            return Some("the lease has ended".into());
        }
        if self.budget_left.is_some_and(|b| b < self.amount) {
            return Some(format!(
                "the budget is spent ({} sat left, a top-up is {} sat)",
                self.budget_left.unwrap_or(0),
                self.amount
            ));
        }
        if self.until.is_some_and(|u| expires_at >= u) {
            return Some("the lease already lasts past --until".into());
        }
        None
    }
}

fn path(home: &Home, lease_id: &str) -> PathBuf {
    home.dir().join("keepalive").join(format!("{lease_id}.json"))
}

pub fn load(home: &Home, lease_id: &str) -> Result<Option<Plan>> {
    match std::fs::read_to_string(path(home, lease_id)) {
        Ok(s) => Ok(Some(serde_json::from_str(&s).context("keepalive state")?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn save(home: &Home, plan: &Plan) -> Result<()> {
    let p = path(home, &plan.lease_id);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(plan)?)?;
    std::fs::rename(tmp, p)?;
    Ok(())
}

pub fn forget(home: &Home, lease_id: &str) {
    let _ = std::fs::remove_file(path(home, lease_id));
}

/// Run the keepalive until it is done. Each top-up goes through the CLI's own `topup`.
pub async fn run(home: &Home, keys: &Keys, relays: &[String], mut plan: Plan, io: &IoArgs) -> Result<ExitCode> {
    save(home, &plan)?;
    loop {
        let rec = home.find_lease(&plan.lease_id)?;
        let now = crate::lease::service::now_secs();
        if let Some(why) = plan.done(now, rec.expires_at) {
            println!("keepalive of lease {} ends: {why}", plan.lease_id);
            forget(home, &plan.lease_id);
            return Ok(ExitCode::SUCCESS);
        }
        let due = rec.expires_at.saturating_sub(plan.lead);
        if due > now {
            tokio::time::sleep(Duration::from_secs(due - now)).await;
            continue;
        }
        let pay = PayArgs { token: None, amount: Some(plan.amount), mint: Some(plan.mint.clone()) };
        match super::topup(home, keys, relays, rec, &pay, io).await {
            Ok(_) => {
                plan.budget_left = plan.budget_left.map(|b| b.saturating_sub(plan.amount));
                save(home, &plan)?;
                if let Some(b) = plan.budget_left {
                    println!("keepalive: {b} sat of budget left");
                }
            }
            Err(e) => {
                eprintln!("keepalive: top-up failed ({e}); trying again in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_stops_when_budget_time_or_lease_runs_out() {
        let p =
            Plan { lease_id: "l".into(), amount: 20, mint: "m".into(), budget_left: Some(40), until: None, lead: 60 };
        assert_eq!(p.done(100, 200), None);
        assert!(p.done(200, 200).is_some(), "ended");
        assert!(Plan { budget_left: Some(19), ..p.clone() }.done(100, 200).is_some(), "budget");
        assert!(Plan { until: Some(150), ..p.clone() }.done(100, 200).is_some(), "until");
        assert_eq!(Plan { budget_left: None, until: Some(500), ..p }.done(100, 200), None);
    }
}
