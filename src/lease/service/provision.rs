//! A create after its redeem: pricing into a lease, the cluster objects, SSH and the onion service.

use super::*;

impl LeaseService {
    // Step: price the money into a lease (create) or an extension (top-up).
    pub(super) async fn step_redeemed(&self, rec: &mut SagaRecord) -> Flow {
        let amount = rec.amount.unwrap_or(0);
        match rec.ask.clone() {
            Ask::Create(req) => {
                let Some(tier) = self.tier(req.tier.as_deref()).cloned() else {
                    return self.fail_after_redeem(rec, ErrorCode::UnknownTier, "tier disappeared from the offer");
                };
                let secs = seconds_for(amount, tier.sats_per_hour);
                if secs < self.settings.min_duration_secs {
                    return self.fail_after_redeem(
                        rec,
                        ErrorCode::AmountTooSmall,
                        format!(
                            "after mint fees {amount} sat buys {secs} s, below the minimum of {} s",
                            self.settings.min_duration_secs
                        ),
                    );
                }
                if secs > self.settings.max_duration_secs {
                    // Beyond the longest lease the money buys nothing: it goes back with the lease.
                    let charged = price_of(self.settings.max_duration_secs, tier.sats_per_hour);
                    rec.excess = Some(amount.saturating_sub(charged)).filter(|e| *e > 0);
                }
                let secs = secs.min(self.settings.max_duration_secs);
                let lease_id = lease_id_for(&self.settings.lease_id_key, &rec.request_id);
                tracing::Span::current().record("lease_id", lease_id.as_str());
                rec.lease_id = Some(lease_id);
                rec.expires_at = Some(now_secs() + secs);
                if req.ssh_public_key.is_none() && rec.ssh_password.is_none() {
                    rec.ssh_password = Some(generate_password());
                }
                rec.step = Step::Provisioning;
                Flow::Next
            }
            Ask::TopUp(_) => self.extend(rec, amount).await,
            Ask::Status(_) | Ask::End { .. } | Ask::Release(_) | Ask::Notice { .. } | Ask::Invalid => {
                self.refuse(rec, ErrorCode::Internal, "nothing to redeem for")
            }
        }
    }

    // Step: create the objects, wait for SSH, publish the onion service. Idempotent, so a resume re-runs it.
    pub(super) async fn step_provisioning(&self, rec: &mut SagaRecord) -> Flow {
        let (Ask::Create(req), Some(lease_id), Some(expires_at)) =
            (rec.ask.clone(), rec.lease_id.clone(), rec.expires_at)
        else {
            return self.fail_after_redeem(rec, ErrorCode::Internal, "provisioning record incomplete");
        };
        if expires_at <= now_secs() {
            // The whole lease elapsed while we were down: nothing to deliver, so return the money.
            let _ = self.ports.cluster.delete_created(&lease_id, &rec.request_id).await;
            return self.fail_after_redeem(
                rec,
                ErrorCode::ProvisioningFailed,
                "the lease could not be started before it would have expired",
            );
        }
        if let Ok(mut p) = self.provisioning.lock() {
            p.insert(lease_id.clone());
        }
        let result = self.provision(rec, &req, &lease_id, expires_at).await;
        if let Ok(mut p) = self.provisioning.lock() {
            p.remove(&lease_id);
        }
        match result {
            Ok(access) => {
                let reply = Reply::Ok {
                    request_id: rec.request_id.clone(),
                    amount_sats: rec.amount.unwrap_or(0),
                    duration_seconds: expires_at.saturating_sub(now_secs()),
                    access: Box::new(access.clone()),
                    refund_token: None,
                };
                rec.access = Some(access);
                self.deliver(rec, reply)
            }
            Err(e) => {
                warn!(error = %e, "provisioning failed; removing what was made and refunding");
                self.stop_onion(&lease_id).await;
                let request_id = rec.request_id.clone();
                if let Err(del) = self.retry(|| self.ports.cluster.delete_created(&lease_id, &request_id)).await {
                    warn!(error = %del, "cleanup after failed provisioning incomplete; the reconciler will retry");
                }
                self.fail_after_redeem(
                    rec,
                    ErrorCode::ProvisioningFailed,
                    format!("the pod could not be started: {}", e.message),
                )
            }
        }
    }

    pub(super) async fn provision(
        &self,
        rec: &SagaRecord,
        req: &LeaseRequest,
        lease_id: &str,
        expires_at: u64,
    ) -> Result<LeaseAccess, PortError> {
        let tier = self.tier(req.tier.as_deref()).cloned().ok_or_else(|| PortError::permanent("unknown tier"))?;
        let ssh_username = req.ssh_username.clone().unwrap_or_else(|| "user".into());
        let plan = PodPlan {
            lease_id: lease_id.to_string(),
            pod_name: pod_name(lease_id),
            service_name: service_name(lease_id),
            namespace: self.settings.namespace.clone(),
            image: req.pod_image.clone().unwrap_or_else(|| self.settings.default_image.clone()),
            image_pull_policy: self.settings.image_pull_policy.clone(),
            ssh_username: ssh_username.clone(),
            ssh_password: rec.ssh_password.clone(),
            ssh_public_key: req.ssh_public_key.clone(),
            tier: tier.clone(),
            ssh_port: self.settings.ssh_port,
            expires_at,
            requester: rec.route.requester.clone(),
            request_id: rec.request_id.clone(),
            provider: self.settings.provider_id.clone(),
            mint_url: rec.mint_url.clone().unwrap_or_default(),
            rate_sats_per_hour: tier.sats_per_hour,
            reply_via: rec.route.via,
        };
        let deadline = Instant::now() + self.settings.ready_timeout;
        self.retry(|| self.ports.cluster.ensure_lease_objects(&plan)).await?;
        info!(pod = %plan.pod_name, "pod and service created");
        self.failpoint(Failpoint::AfterPodCreate);
        let endpoint =
            self.ports.cluster.wait_running(lease_id, deadline.saturating_duration_since(Instant::now())).await?;
        let host_key = self.wait_for_ssh(endpoint, deadline).await?;
        info!(%endpoint, fingerprint = %host_key.fingerprint, "ssh answers");
        let onion_address = if self.ports.onion.enabled() {
            match self.launch_onion(lease_id, endpoint, true).await {
                Ok(a) => Some(a),
                Err(e) => {
                    // Counted like a failed restore: paygress_onion_services{status="failed"}.
                    self.metrics.onion_failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        } else {
            None
        };
        self.failpoint(Failpoint::AfterReady);
        let port = self.settings.ssh_port;
        Ok(LeaseAccess {
            lease_id: lease_id.to_string(),
            pod_name: plan.pod_name.clone(),
            namespace: plan.namespace.clone(),
            ssh_username: ssh_username.clone(),
            ssh_password: rec.ssh_password.clone(),
            ssh_port: port,
            host_key_fingerprint: host_key.fingerprint,
            host_public_key: Some(host_key.public_key),
            tier: tier.name,
            expires_at,
            port_forward_command: format!(
                "kubectl -n {} port-forward svc/{} {port}:{port}",
                plan.namespace, plan.service_name
            ),
            ssh_command: format!("ssh -p {port} {ssh_username}@127.0.0.1"),
            tor_ssh_command: onion_address.as_ref().map(|a| format!("torsocks ssh -p {port} {ssh_username}@{a}")),
            onion_address,
        })
    }

    pub(super) async fn wait_for_ssh(
        &self,
        endpoint: SocketAddr,
        deadline: Instant,
    ) -> Result<crate::lease::ports::HostKey, PortError> {
        loop {
            match self.ports.probe.probe(endpoint).await {
                Ok(k) => return Ok(k),
                Err(e) if Instant::now() >= deadline => {
                    return Err(PortError::permanent(format!("ssh did not answer before the timeout: {e}")))
                }
                Err(_) => tokio::time::sleep(crate::lease::ports::default_probe_interval()).await,
            }
        }
    }

    pub(super) async fn stop_onion(&self, lease_id: &str) {
        self.ports.onion.stop(lease_id).await;
        if let Ok(mut o) = self.onions.lock() {
            o.remove(lease_id);
        }
    }

    /// Publish the lease's onion service from the key in its Secret. A lease without one takes a published
    /// service from the pool when it is a `new_lease` and the pool has one, else gets a fresh key. A restore
    /// (not a `new_lease`) publishes behind new leases (`OnionPort::restore`).
    pub(super) async fn launch_onion(
        &self,
        lease_id: &str,
        endpoint: SocketAddr,
        new_lease: bool,
    ) -> Result<String, PortError> {
        let key = match self.retry(|| self.ports.cluster.load_onion_key(lease_id)).await? {
            Some(k) => k,
            None => {
                let pooled = if new_lease { self.launch_from_pool(lease_id, endpoint).await } else { None };
                if let Some(pooled) = pooled {
                    let address = pooled?;
                    if let Ok(mut o) = self.onions.lock() {
                        o.insert(lease_id.to_string());
                    }
                    return Ok(address);
                }
                let k = self.ports.onion.generate_key()?;
                self.retry(|| self.ports.cluster.store_onion_key(lease_id, &k)).await?;
                k
            }
        };
        let address = if new_lease {
            self.ports.onion.launch(lease_id, &key, endpoint).await?
        } else {
            self.ports.onion.restore(lease_id, &key, endpoint).await?
        };
        if let Ok(mut o) = self.onions.lock() {
            o.insert(lease_id.to_string());
        }
        Ok(address)
    }
}
