//! Work over all leases and sagas: resuming parked sagas, pruning the journal, and the reconciler that
//! ends leases on time and restores onion services from what the cluster holds.

use super::*;

impl LeaseService {
    /// Forget finished sagas after [`JOURNAL_RETENTION_SECS`] (requests older than the acceptance window
    /// are refused before the journal is asked, so their ids are not needed to de-duplicate), and clear
    /// the secrets kept for in-band retries after [`INBAND_SECRETS_SECS`].
    pub fn prune_journal(&self) {
        let now = now_secs();
        match self.ports.journal.prune(
            now.saturating_sub(JOURNAL_RETENTION_SECS),
            now.saturating_sub(INBAND_SECRETS_SECS),
            PRUNE_BATCH,
        ) {
            Ok(p) if p.deleted + p.redacted > 0 => info!(deleted = p.deleted, redacted = p.redacted, "journal pruned"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "journal pruning failed"),
        }
    }

    /// Resume every unfinished saga (at start, and periodically for parked ones).
    pub async fn resume_unfinished(self: &Arc<Self>) {
        let records = match self.ports.journal.unfinished() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read journal to resume sagas");
                return;
            }
        };
        for rec in records {
            if self.driving.lock().map(|d| d.contains(&rec.request_id)).unwrap_or(true) {
                continue;
            }
            let permit = match &self.workers {
                Some(w) => match w.clone().acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => return, // closed: shutting down
                },
                None => None,
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.drive(rec).await;
                drop(permit);
            });
        }
    }

    /// One pass of the reconciler: end expired leases, remove orphans, bring back onion services of live
    /// leases (after a restart). Reads only what the cluster holds.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), PortError> {
        let leases = self.ports.cluster.list_leases().await?;
        let now = now_secs();
        let busy: HashSet<String> = self.provisioning.lock().map(|p| p.clone()).unwrap_or_default();
        let mut live = 0u64;
        let mut restore = Vec::new();
        let mut failed = Vec::new();
        let mut notices = Vec::new();
        // Expiries first, all of them: restoring onion services below can take a while (each launch waits
        // for its descriptor) and must never hold up ending a lease.
        for lease in &leases {
            if busy.contains(&lease.lease_id) {
                continue;
            }
            let expired = match lease.expires_at {
                Some(e) => e <= now,
                None => true, // no valid lease annotation: not ours to keep running
            };
            if lease.failed.is_some() && !lease.terminating && !expired {
                // Forward nothing more to an IP that may soon be another pod's, then end it with a refund.
                self.stop_onion(&lease.lease_id).await;
                failed.push(lease.clone());
                continue;
            }
            if expired || lease.terminating {
                if !lease.terminating {
                    // A release or early end that claimed the lease first deletes it (and refunds what
                    // it decided); expiry must not end it a second time under it.
                    match self.ports.journal.claim_end(&lease.lease_id, EXPIRY_HOLDER, now) {
                        Ok(None) => {}
                        Ok(Some(_)) => continue,
                        Err(e) => {
                            warn!(lease_id = %lease.lease_id, error = %e, "cannot claim the expired lease's end");
                            continue;
                        }
                    }
                    info!(lease_id = %lease.lease_id, "lease ended; deleting its objects");
                }
                self.stop_onion(&lease.lease_id).await;
                if let Err(e) = self.ports.cluster.delete_lease(&lease.lease_id, lease.version.as_deref()).await {
                    warn!(lease_id = %lease.lease_id, error = %e, "could not delete expired lease");
                    // Perhaps moved on by a top-up that read it before it expired: the next pass decides anew.
                    if !lease.terminating {
                        let _ = self.ports.journal.release_end(&lease.lease_id, EXPIRY_HOLDER);
                    }
                }
                continue;
            }
            live += 1;
            if let Some(notice) = self.notice_due(lease, now) {
                notices.push(notice);
            }
            // Only what this process does not already serve: a pass must not read every lease's key (one API
            // call each) every few seconds when nothing changed.
            if let Some(endpoint) = lease.ssh_endpoint.filter(|e| !self.ports.onion.serves(&lease.lease_id, *e)) {
                restore.push((lease.lease_id.clone(), endpoint));
            }
        }
        for notice in notices {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.start(notice).await;
            });
        }
        for lease in failed {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.end_failed_lease(&lease).await;
            });
        }
        // Onion services of leases that are gone from the cluster (deleted by hand, or ended by someone else).
        let present: HashSet<&str> = leases.iter().map(|l| l.lease_id.as_str()).collect();
        let vanished: Vec<String> = self
            .onions
            .lock()
            .map(|o| o.iter().filter(|id| !present.contains(id.as_str()) && !busy.contains(*id)).cloned().collect())
            .unwrap_or_default();
        for lease_id in vanished {
            info!(lease_id = %lease_id, "lease no longer in the cluster; stopping its onion service");
            self.stop_onion(&lease_id).await;
        }
        // In the background, one pass at a time: a launch can wait for its descriptor up to the publish
        // timeout, and the next passes must still end leases on time meanwhile.
        if self.ports.onion.enabled() && !restore.is_empty() && !self.restoring.swap(true, Ordering::AcqRel) {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let svc = &this;
                // Idempotent: a running service returns its address at once. A few at a time, so one slow
                // publication does not delay the others by its whole timeout.
                use futures::StreamExt as _;
                futures::stream::iter(restore)
                    .for_each_concurrent(RESTORE_CONCURRENCY, |(lease_id, endpoint)| async move {
                        if let Err(e) = svc.launch_onion(&lease_id, endpoint, false).await {
                            svc.metrics.onion_failed.fetch_add(1, Ordering::Relaxed);
                            warn!(lease_id = %lease_id, error = %e, "onion service not restored");
                        }
                    })
                    .await;
                svc.restoring.store(false, Ordering::Release);
            });
        }
        self.metrics.live_leases.store(live, Ordering::Relaxed);
        self.metrics.onion_running.store(self.ports.onion.running() as u64, Ordering::Relaxed);
        self.metrics.onion_relaunches.store(self.ports.onion.relaunches(), Ordering::Relaxed);
        // Orphans are rare and have a grace period of minutes: three more full lists every pass would cost
        // more than they find.
        let sweep_due = self.last_orphan_sweep.lock().map_or(true, |mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= ORPHAN_SWEEP_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        });
        if !sweep_due {
            return Ok(());
        }
        for orphan in self.ports.cluster.list_orphans().await? {
            if busy.contains(&orphan.lease_id) {
                continue;
            }
            info!(kind = %orphan.kind, name = %orphan.name, "deleting orphan");
            self.stop_onion(&orphan.lease_id).await;
            if let Err(e) = self.ports.cluster.delete_orphan(&orphan).await {
                warn!(name = %orphan.name, error = %e, "could not delete orphan");
            }
        }
        Ok(())
    }
}
