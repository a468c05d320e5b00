//! store adapter: the saga journal in redb (`<state_dir>/journal.redb`).
//!
//! Tables: `sagas` (request id → JSON of `SagaRecord`) and `tokens` (token digest → request id). redb
//! serialises write transactions and commits durably (fsync) by default, so `insert_new` and `claim_token`,
//! each a read-check-write inside one write transaction, are atomic across threads. Calls block for the
//! length of one fsync; callers on an async runtime may wrap them in `spawn_blocking`.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::lease::journal::{Journal, Pruned, SagaRecord, Step};
use crate::lease::ports::{FailureKind, PortError, PortResult};

const SAGAS: TableDefinition<&str, &str> = TableDefinition::new("sagas");
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// Lease id → "<unix secs> <holder>": who ends the lease (see `Journal::claim_end`).
const ENDS: TableDefinition<&str, &str> = TableDefinition::new("lease_ends");
/// Request ids of the sagas not yet Done: resuming reads these few, not every finished record (the
/// resume pass runs every 30 s; the journal keeps a week of finished sagas).
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open_sagas");
/// Markers of one-time migrations (name → "").
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const OPEN_INDEX_BUILT: &str = "open_sagas_index";

pub const JOURNAL_FILE: &str = "journal.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("journal {path}: cannot open: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("journal: {action} failed: {reason}")]
    Db { action: &'static str, reason: String },
    #[error("journal: record {request_id} is unreadable: {reason}")]
    Corrupt { request_id: String, reason: String },
}

impl StoreError {
    pub fn kind(&self) -> FailureKind {
        // A local database that fails will not heal by retrying the same request.
        FailureKind::Permanent
    }
}

impl From<StoreError> for PortError {
    fn from(e: StoreError) -> PortError {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

/// Whether pruning deletes a finished record: past the retention, or a refusal that moved no money past
/// the hour kept for replays (see `Journal::prune`).
fn deletable(r: &SagaRecord, delete_before: u64, redact_before: u64) -> bool {
    r.received_at < delete_before || (r.received_at < redact_before && r.moved_no_money())
}

/// The holder in an end claim's value ("<secs> <holder>").
fn end_holder(value: &str) -> &str {
    value.split_once(' ').map_or(value, |(_, h)| h)
}

fn end_time(value: &str) -> u64 {
    value.split_once(' ').and_then(|(t, _)| t.parse().ok()).unwrap_or(0)
}

fn db_err(action: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Db { action, reason: e.to_string() }
}

/// Shorthand: any redb error type into `StoreError::Db`.
fn de<E: Into<redb::Error>>(action: &'static str) -> impl Fn(E) -> StoreError {
    move |e| db_err(action)(e.into())
}

pub struct RedbJournal {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJournal").field("path", &self.path).finish()
    }
}

impl RedbJournal {
    /// Open or create `<state_dir>/journal.redb` (and the dir).
    pub fn open(state_dir: &Path) -> Result<RedbJournal, StoreError> {
        let path = state_dir.join(JOURNAL_FILE);
        let open_err = |reason: String| StoreError::Open { path: path.clone(), reason };
        std::fs::create_dir_all(state_dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| open_err(e.to_string()))?;
        // Create both tables up front so read transactions never meet a missing table.
        let tx = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            tx.open_table(SAGAS).map_err(|e| open_err(e.to_string()))?;
            tx.open_table(TOKENS).map_err(|e| open_err(e.to_string()))?;
            tx.open_table(ENDS).map_err(|e| open_err(e.to_string()))?;
            tx.open_table(OPEN).map_err(|e| open_err(e.to_string()))?;
            let mut meta = tx.open_table(META).map_err(|e| open_err(e.to_string()))?;
            // A journal of an older version has no index yet: build it once from every record.
            if meta.get(OPEN_INDEX_BUILT).map_err(|e| open_err(e.to_string()))?.is_none() {
                let sagas = tx.open_table(SAGAS).map_err(|e| open_err(e.to_string()))?;
                let mut open = tx.open_table(OPEN).map_err(|e| open_err(e.to_string()))?;
                for entry in sagas.iter().map_err(|e| open_err(e.to_string()))? {
                    let (k, v) = entry.map_err(|e| open_err(e.to_string()))?;
                    let done = serde_json::from_str::<SagaRecord>(v.value()).is_ok_and(|r| r.step == Step::Done);
                    if !done {
                        open.insert(k.value(), ()).map_err(|e| open_err(e.to_string()))?;
                    }
                }
                meta.insert(OPEN_INDEX_BUILT, "").map_err(|e| open_err(e.to_string()))?;
            }
        }
        tx.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(RedbJournal { db, path })
    }

    fn encode(record: &SagaRecord) -> Result<String, StoreError> {
        serde_json::to_string(record)
            .map_err(|e| StoreError::Corrupt { request_id: record.request_id.clone(), reason: e.to_string() })
    }

    fn write(&self, record: &SagaRecord, only_if_new: bool) -> Result<bool, StoreError> {
        let json = Self::encode(record)?;
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        let inserted = {
            let mut t = tx.open_table(SAGAS).map_err(de("open sagas"))?;
            if only_if_new && t.get(record.request_id.as_str()).map_err(de("read saga"))?.is_some() {
                false
            } else {
                t.insert(record.request_id.as_str(), json.as_str()).map_err(de("write saga"))?;
                true
            }
        };
        if inserted {
            {
                let mut open = tx.open_table(OPEN).map_err(de("open index"))?;
                if record.step == Step::Done {
                    open.remove(record.request_id.as_str()).map_err(de("index saga"))?;
                } else {
                    open.insert(record.request_id.as_str(), ()).map_err(de("index saga"))?;
                }
            }
            tx.commit().map_err(de("commit saga"))?;
        } else {
            tx.abort().map_err(de("abort"))?;
        }
        Ok(inserted)
    }

    fn read(&self, request_id: &str) -> Result<Option<SagaRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(de("begin read"))?;
        let t = tx.open_table(SAGAS).map_err(de("open sagas"))?;
        let Some(v) = t.get(request_id).map_err(de("read saga"))? else {
            return Ok(None);
        };
        serde_json::from_str(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt { request_id: request_id.to_string(), reason: e.to_string() })
    }

    fn list_unfinished(&self) -> Result<Vec<SagaRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(de("begin read"))?;
        let t = tx.open_table(SAGAS).map_err(de("open sagas"))?;
        let open = tx.open_table(OPEN).map_err(de("open index"))?;
        let mut out = Vec::new();
        for entry in open.iter().map_err(de("scan index"))? {
            let (k, _) = entry.map_err(de("scan index"))?;
            let Some(v) = t.get(k.value()).map_err(de("read saga"))? else { continue };
            match serde_json::from_str::<SagaRecord>(v.value()) {
                Ok(r) if r.step != Step::Done => out.push(r),
                Ok(_) => {}
                // One unreadable record must not stop every other saga from resuming.
                Err(e) => {
                    tracing::error!(request_id = k.value(), error = %e, "skipping unreadable saga record")
                }
            }
        }
        Ok(out)
    }

    fn claim(&self, digest: &str, request_id: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        let holder = {
            let mut t = tx.open_table(TOKENS).map_err(de("open tokens"))?;
            let existing = t.get(digest).map_err(de("read token"))?.map(|v| v.value().to_string());
            match existing {
                Some(h) => Some(h),
                None => {
                    t.insert(digest, request_id).map_err(de("write token"))?;
                    None
                }
            }
        };
        match &holder {
            None => tx.commit().map_err(de("commit token"))?,
            Some(_) => tx.abort().map_err(de("abort"))?,
        }
        // The same request claiming again (a resumed saga) is not a conflict.
        Ok(holder.filter(|h| h != request_id))
    }

    fn claim_lease_end(&self, lease_id: &str, holder: &str, now: u64) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        let existing = {
            let mut t = tx.open_table(ENDS).map_err(de("open lease ends"))?;
            let existing = t.get(lease_id).map_err(de("read lease end"))?.map(|v| end_holder(v.value()).to_string());
            if existing.is_none() {
                t.insert(lease_id, format!("{now} {holder}").as_str()).map_err(de("write lease end"))?;
            }
            existing
        };
        match &existing {
            None => tx.commit().map_err(de("commit lease end"))?,
            Some(_) => tx.abort().map_err(de("abort"))?,
        }
        Ok(existing.filter(|h| h != holder))
    }

    fn release_lease_end(&self, lease_id: &str, holder: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        {
            let mut t = tx.open_table(ENDS).map_err(de("open lease ends"))?;
            let current = t.get(lease_id).map_err(de("read lease end"))?.map(|v| end_holder(v.value()).to_string());
            if current.as_deref() == Some(holder) {
                t.remove(lease_id).map_err(de("release lease end"))?;
            }
        }
        tx.commit().map_err(de("commit lease end"))
    }

    /// Remove end claims made before `before`, at most `max`: the lease ended long ago.
    fn prune_ends(&self, before: u64, max: usize) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        {
            let tx = self.db.begin_read().map_err(de("begin read"))?;
            let t = tx.open_table(ENDS).map_err(de("open lease ends"))?;
            for entry in t.iter().map_err(de("scan lease ends"))? {
                if old.len() >= max {
                    break;
                }
                let (k, v) = entry.map_err(de("scan lease ends"))?;
                if end_time(v.value()) < before {
                    old.push(k.value().to_string());
                }
            }
        }
        if old.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        {
            let mut t = tx.open_table(ENDS).map_err(de("open lease ends"))?;
            for id in &old {
                t.remove(id.as_str()).map_err(de("delete lease end"))?;
            }
        }
        tx.commit().map_err(de("commit prune"))?;
        Ok(old.len())
    }

    fn prune_finished(&self, delete_before: u64, redact_before: u64, max: usize) -> Result<Pruned, StoreError> {
        // Decide under a read transaction, then apply in one write (a record that changed meanwhile is
        // re-read and re-checked there, so a resumed saga is never pruned).
        let mut delete = Vec::new();
        let mut redact = Vec::new();
        {
            let tx = self.db.begin_read().map_err(de("begin read"))?;
            let t = tx.open_table(SAGAS).map_err(de("open sagas"))?;
            for entry in t.iter().map_err(de("scan sagas"))? {
                if delete.len() + redact.len() >= max {
                    break;
                }
                let (k, v) = entry.map_err(de("scan sagas"))?;
                let Ok(r) = serde_json::from_str::<SagaRecord>(v.value()) else { continue };
                if r.step != Step::Done {
                    continue;
                }
                if deletable(&r, delete_before, redact_before) {
                    delete.push(k.value().to_string());
                } else if r.received_at < redact_before && r.has_secrets() && !r.keeps_secrets_for_owner() {
                    redact.push(k.value().to_string());
                }
            }
        }
        let mut done = Pruned::default();
        if delete.is_empty() && redact.is_empty() {
            return Ok(done);
        }
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        {
            let mut sagas = tx.open_table(SAGAS).map_err(de("open sagas"))?;
            let mut tokens = tx.open_table(TOKENS).map_err(de("open tokens"))?;
            for id in delete.iter().chain(redact.iter()) {
                let current = sagas.get(id.as_str()).map_err(de("read saga"))?.map(|v| v.value().to_string());
                let Some(r) = current.and_then(|j| serde_json::from_str::<SagaRecord>(&j).ok()) else { continue };
                if r.step != Step::Done {
                    continue;
                }
                if deletable(&r, delete_before, redact_before) {
                    sagas.remove(id.as_str()).map_err(de("delete saga"))?;
                    if let Some(d) = &r.token_digest {
                        let holder = tokens.get(d.as_str()).map_err(de("read token"))?.map(|v| v.value().to_string());
                        if holder.as_deref() == Some(id.as_str()) {
                            tokens.remove(d.as_str()).map_err(de("delete token"))?;
                        }
                    }
                    done.deleted += 1;
                } else {
                    let json = Self::encode(&r.without_secrets())?;
                    sagas.insert(id.as_str(), json.as_str()).map_err(de("write saga"))?;
                    done.redacted += 1;
                }
            }
        }
        tx.commit().map_err(de("commit prune"))?;
        Ok(done)
    }

    fn release(&self, digest: &str, request_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(de("begin write"))?;
        {
            let mut t = tx.open_table(TOKENS).map_err(de("open tokens"))?;
            let holder = t.get(digest).map_err(de("read token"))?.map(|v| v.value().to_string());
            if holder.as_deref() == Some(request_id) {
                t.remove(digest).map_err(de("release token"))?;
            }
        }
        tx.commit().map_err(de("commit token"))
    }
}

impl Journal for RedbJournal {
    fn insert_new(&self, record: &SagaRecord) -> PortResult<bool> {
        Ok(self.write(record, true)?)
    }

    fn put(&self, record: &SagaRecord) -> PortResult<()> {
        self.write(record, false)?;
        Ok(())
    }

    fn get(&self, request_id: &str) -> PortResult<Option<SagaRecord>> {
        Ok(self.read(request_id)?)
    }

    fn unfinished(&self) -> PortResult<Vec<SagaRecord>> {
        Ok(self.list_unfinished()?)
    }

    fn claim_token(&self, digest: &str, request_id: &str) -> PortResult<Option<String>> {
        Ok(self.claim(digest, request_id)?)
    }

    fn release_token(&self, digest: &str, request_id: &str) -> PortResult<()> {
        Ok(self.release(digest, request_id)?)
    }

    fn claim_end(&self, lease_id: &str, holder: &str, now: u64) -> PortResult<Option<String>> {
        Ok(self.claim_lease_end(lease_id, holder, now)?)
    }

    fn release_end(&self, lease_id: &str, holder: &str) -> PortResult<()> {
        Ok(self.release_lease_end(lease_id, holder)?)
    }

    fn prune(&self, delete_before: u64, redact_before: u64, max: usize) -> PortResult<Pruned> {
        let mut pruned = self.prune_finished(delete_before, redact_before, max)?;
        pruned.deleted += self.prune_ends(delete_before, max.saturating_sub(pruned.deleted + pruned.redacted))?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lease::journal::Ask;
    use crate::lease::ports::{ReplyRoute, ReplyVia};
    use crate::protocol::TopUpRequest;

    fn record(id: &str, step: Step) -> SagaRecord {
        let ask = TopUpRequest { cashu_token: "cashuBxyz".into(), lease: "l1".into() };
        let route = ReplyRoute { request_id: id.to_string(), requester: "ab".repeat(32), via: ReplyVia::Nip44 };
        SagaRecord {
            step,
            mint_url: Some("http://127.0.0.1:3338".into()),
            token_digest: Some("d1".into()),
            amount: Some(100),
            ..SagaRecord::new(route, Ask::TopUp(ask), 1_700_000_000)
        }
    }

    #[test]
    fn insert_twice_second_is_false_and_put_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RedbJournal::open(dir.path()).expect("open");
        assert!(j.insert_new(&record("r1", Step::Received)).expect("insert"));
        assert!(!j.insert_new(&record("r1", Step::Redeeming)).expect("insert again"));
        assert_eq!(j.get("r1").expect("get").expect("some").step, Step::Received);
        j.put(&record("r1", Step::Redeemed)).expect("put");
        assert_eq!(j.get("r1").expect("get").expect("some").step, Step::Redeemed);
        assert!(j.get("nope").expect("get").is_none());
    }

    #[test]
    fn token_claimed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RedbJournal::open(dir.path()).expect("open");
        assert_eq!(j.claim_token("dig", "r1").expect("claim"), None);
        assert_eq!(j.claim_token("dig", "r2").expect("claim"), Some("r1".to_string()));
        assert_eq!(j.claim_token("dig", "r1").expect("reclaim"), None);
        assert_eq!(j.claim_token("other", "r2").expect("claim"), None);
    }

    #[test]
    fn only_the_holder_releases_a_claim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RedbJournal::open(dir.path()).expect("open");
        assert_eq!(j.claim_token("dig", "r1").expect("claim"), None);
        j.release_token("dig", "r2").expect("release by another");
        assert_eq!(j.claim_token("dig", "r2").expect("claim"), Some("r1".to_string()));
        j.release_token("dig", "r1").expect("release");
        assert_eq!(j.claim_token("dig", "r2").expect("claim after release"), None);
    }

    #[test]
    fn pruning_deletes_old_finished_records_and_clears_secrets_of_younger_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RedbJournal::open(dir.path()).expect("open");
        let at = |id: &str, step: Step, t: u64| {
            let mut r = record(id, step);
            r.received_at = t;
            r.ssh_password = Some("pw-secret".into());
            r
        };
        j.put(&at("old-done", Step::Done, 100)).expect("put");
        j.claim_token("d1", "old-done").expect("claim");
        j.put(&at("old-open", Step::Redeeming, 100)).expect("put");
        j.put(&at("mid-done", Step::Done, 500)).expect("put");
        j.put(&at("new-done", Step::Done, 900)).expect("put");
        // Refusals found before any redeem: kept only as long as replays need them.
        let refused = |id: &str, t: u64| SagaRecord { amount: None, ..at(id, Step::Done, t) };
        j.put(&refused("mid-refused", 500)).expect("put");
        j.put(&refused("new-refused", 900)).expect("put");
        let p = j.prune(200, 600, 100).expect("prune");
        assert_eq!(p, Pruned { deleted: 2, redacted: 1 });
        assert!(j.get("mid-refused").expect("get").is_none());
        assert!(j.get("new-refused").expect("get").is_some());
        assert!(j.get("old-done").expect("get").is_none());
        assert_eq!(j.claim_token("d1", "someone").expect("claim"), None, "its claim went with it");
        assert!(j.get("old-open").expect("get").is_some(), "unfinished sagas are never pruned");
        let mid = j.get("mid-done").expect("get").expect("some");
        assert!(!mid.has_secrets() && mid.ssh_password.is_none() && mid.ask.token().is_empty());
        assert!(j.get("new-done").expect("get").expect("some").has_secrets());
    }

    #[test]
    fn a_lease_ends_for_one_holder_and_old_end_claims_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RedbJournal::open(dir.path()).expect("open");
        assert_eq!(j.claim_end("l1", "rel-1", 100).expect("claim"), None);
        assert_eq!(j.claim_end("l1", "rel-1", 150).expect("again"), None, "the holder may claim again");
        assert_eq!(j.claim_end("l1", "rel-2", 150).expect("claim"), Some("rel-1".into()));
        assert_eq!(j.claim_end("l1", "expiry", 150).expect("claim"), Some("rel-1".into()));
        j.release_end("l1", "rel-2").expect("not the holder's: kept");
        assert_eq!(j.claim_end("l1", "rel-2", 150).expect("claim"), Some("rel-1".into()));
        assert_eq!(j.claim_end("l2", "expiry", 300).expect("claim"), None);
        assert_eq!(j.prune(200, 0, 100).expect("prune").deleted, 1);
        assert_eq!(j.claim_end("l1", "rel-3", 400).expect("after prune"), None);
        assert_eq!(j.claim_end("l2", "rel-3", 400).expect("kept"), Some("expiry".into()));
        j.release_end("l2", "expiry").expect("release");
        assert_eq!(j.claim_end("l2", "rel-3", 400).expect("released"), None);
    }

    #[test]
    fn unfinished_sagas_come_from_the_index_and_an_older_journal_is_indexed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let j = RedbJournal::open(dir.path()).expect("open");
            j.put(&record("a", Step::Redeeming)).expect("put");
            j.put(&record("b", Step::Done)).expect("put");
            j.put(&record("c", Step::Received)).expect("put");
            j.put(&record("c", Step::Done)).expect("finish c");
            // As a journal of the previous version: no index, no marker.
            let tx = j.db.begin_write().expect("write");
            tx.delete_table(OPEN).expect("drop index");
            tx.open_table(META).expect("meta").remove(OPEN_INDEX_BUILT).expect("unmark");
            tx.commit().expect("commit");
        }
        let j = RedbJournal::open(dir.path()).expect("reopen");
        let ids =
            |j: &RedbJournal| j.unfinished().expect("unfinished").into_iter().map(|r| r.request_id).collect::<Vec<_>>();
        assert_eq!(ids(&j), ["a"]);
        j.put(&record("d", Step::Redeeming)).expect("put");
        j.put(&record("a", Step::Done)).expect("finish a");
        assert_eq!(ids(&j), ["d"]);
        let tx = j.db.begin_read().expect("read");
        let indexed = redb::ReadableTableMetadata::len(&tx.open_table(OPEN).expect("index")).expect("len");
        assert_eq!(indexed, 1, "finished sagas leave the index");
    }

    #[test]
    fn concurrent_claims_have_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Arc::new(RedbJournal::open(dir.path()).expect("open"));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let j = j.clone();
                std::thread::spawn(move || {
                    let won_insert = j.insert_new(&record("same", Step::Received)).expect("insert");
                    let holder = j.claim_token("dig", &format!("r{i}")).expect("claim");
                    (won_insert, holder.is_none())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        assert_eq!(results.iter().filter(|r| r.0).count(), 1);
        assert_eq!(results.iter().filter(|r| r.1).count(), 1);
    }

    #[test]
    fn unfinished_lists_non_done_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let j = RedbJournal::open(dir.path()).expect("open");
            j.put(&record("a", Step::Redeeming)).expect("put");
            j.put(&record("b", Step::Done)).expect("put");
            j.put(&record("c", Step::Replying)).expect("put");
            j.claim_token("dig", "a").expect("claim");
        }
        let j = RedbJournal::open(dir.path()).expect("reopen");
        let mut ids: Vec<_> = j.unfinished().expect("unfinished").into_iter().map(|r| r.request_id).collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(j.get("b").expect("get").expect("some").step, Step::Done);
        assert_eq!(j.claim_token("dig", "z").expect("claim"), Some("a".to_string()));
        assert_eq!(j.get("a").expect("get"), Some(record("a", Step::Redeeming)));
    }
}
