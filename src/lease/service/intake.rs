//! Before a saga: what is answered without a journal record, and the checks a request passes before it
//! is journaled (offline checks, room in the cluster, the requester's caps).

use super::*;

impl LeaseService {
    /// Handle one decoded request to its end. Returns the reply (HTTP answers with it), or None when the
    /// request duplicates one already handled or in flight, or its answer is withheld (rate limit).
    ///
    /// Only requests that can move money, and pass every offline check, are journaled: status requests,
    /// garbage and offline refusals are answered from memory, so a flood of them costs no disk.
    pub async fn handle(&self, incoming: Incoming) -> Option<Reply> {
        let started = Instant::now();
        let route = incoming.route().clone();
        let ask = match incoming {
            Incoming::Create { request, .. } => Ask::Create(request),
            Incoming::TopUp { request, .. } => Ask::TopUp(request),
            Incoming::Release { request, .. } => Ask::Release(request),
            Incoming::Status { request, .. } => return self.answer_status_unjournaled(route, request, started).await,
            Incoming::Invalid { code, message, .. } => {
                let reply = Reply::error(&route.request_id, code, message);
                return self.answer_unjournaled(&route, reply, started).await;
            }
        };
        // A replay of a journaled request is answered from its record, whatever the checks say now.
        match self.ports.journal.get(&route.request_id) {
            Ok(Some(existing)) => {
                info!(request_id = %route.request_id, "duplicate request ignored");
                return (existing.step == Step::Done).then_some(existing.reply).flatten();
            }
            Ok(None) => {}
            Err(e) => {
                warn!(request_id = %route.request_id, error = %e, "journal unavailable; request dropped unanswered");
                return None;
            }
        }
        if let Err((code, message)) = self.precheck(&ask) {
            return self.answer_unjournaled(&route, Reply::error(&route.request_id, code, message), started).await;
        }
        if let Err((code, message)) = self.check_before_journal(&route, &ask).await {
            return self.answer_unjournaled(&route, Reply::error(&route.request_id, code, message), started).await;
        }
        if self.admission.enter(&route.requester).is_none() {
            let reply = Reply::error(
                &route.request_id,
                ErrorCode::TooManyRequests,
                format!(
                    "at most {} paid requests of one key are handled at once",
                    admission::MAX_INFLIGHT_PER_REQUESTER
                ),
            );
            return self.answer_unjournaled(&route, reply, started).await;
        }
        let out = self.start(new_record(route.clone(), ask)).await;
        self.admission.leave(&route.requester);
        out
    }

    /// Whether a request the front end would hand to a paid worker is refused by offline checks alone
    /// (token encoding, whitelist, amounts, lease id form): then it costs no paid worker, only the budget
    /// of free requests, so junk never queues ahead of paid work.
    pub fn refused_offline(&self, incoming: &Incoming) -> bool {
        let ask = match incoming {
            Incoming::Create { request, .. } => Ask::Create(request.clone()),
            Incoming::TopUp { request, .. } => Ask::TopUp(request.clone()),
            Incoming::Release { request, .. } => Ask::Release(request.clone()),
            Incoming::Status { .. } | Incoming::Invalid { .. } => return true,
        };
        self.precheck(&ask).is_err()
    }

    /// Send a reply that has no journal record: once per request id, and error replies at a bounded rate
    /// per requester. Best effort (one attempt): nothing was taken, so nothing is owed.
    pub(super) async fn answer_unjournaled(
        &self,
        route: &crate::lease::ports::ReplyRoute,
        reply: Reply,
        started: Instant,
    ) -> Option<Reply> {
        // In-band (HTTP) answers cost nothing to send and the HTTP layer has its own limits.
        if route.via != ReplyVia::InBand && !self.admission.first_sighting(&route.request_id) {
            debug!(request_id = %route.request_id, "duplicate request ignored");
            return None;
        }
        self.send_unjournaled(route, reply, started).await
    }

    pub(super) async fn answer_status_unjournaled(
        &self,
        route: crate::lease::ports::ReplyRoute,
        req: StatusRequest,
        started: Instant,
    ) -> Option<Reply> {
        if route.via != ReplyVia::InBand && !self.admission.first_sighting(&route.request_id) {
            return None;
        }
        let mut rec = new_record(route.clone(), Ask::Status(req.clone()));
        if let Flow::Park = self.answer_status(&mut rec, &req).await {
            return None;
        }
        self.send_unjournaled(&route, rec.reply?, started).await
    }

    /// Send a reply that has no journal record; error replies at a bounded rate per requester. Best effort
    /// (one attempt): nothing was taken, so nothing is owed.
    async fn send_unjournaled(
        &self,
        route: &crate::lease::ports::ReplyRoute,
        reply: Reply,
        started: Instant,
    ) -> Option<Reply> {
        let mut outcome = match &reply {
            Reply::Error { code, .. } => code.as_str(),
            Reply::Status { .. } => "status",
            _ => "other",
        };
        let mut reply = reply;
        if route.via != ReplyVia::InBand && matches!(reply, Reply::Error { .. }) {
            match self.admission.error_reply(&route.requester, now_secs()) {
                admission::ErrorReply::Send => {}
                admission::ErrorReply::SlowDown { until } => {
                    outcome = "rate_limited";
                    reply = Reply::error(
                        &route.request_id,
                        ErrorCode::TooManyRequests,
                        format!(
                            "slow down: at most {} refusals a minute are answered per key; requests refused \
                             before {until} (unix time) go unanswered",
                            admission::ERROR_REPLIES_PER_WINDOW
                        ),
                    );
                }
                admission::ErrorReply::Withhold => {
                    self.metrics.outcome("rate_limited");
                    debug!(request_id = %route.request_id, "error reply withheld: requester over its rate");
                    return None;
                }
            }
        }
        match self.ports.replies.send(route, &reply).await {
            Ok(()) => {
                self.metrics.outcome(outcome);
                self.metrics.observe_reply_latency(started.elapsed().as_secs_f64());
            }
            Err(e) => debug!(request_id = %route.request_id, error = %e, "reply not delivered"),
        }
        Some(reply)
    }

    pub(super) async fn start(&self, rec: SagaRecord) -> Option<Reply> {
        match self.ports.journal.insert_new(&rec) {
            Ok(true) => self.drive(rec).await,
            Ok(false) => {
                // Replays and the same event from several relays land here: one saga per request id.
                info!(request_id = %rec.request_id, "duplicate request ignored");
                match self.ports.journal.get(&rec.request_id) {
                    Ok(Some(existing)) if existing.step == Step::Done => existing.reply,
                    _ => None,
                }
            }
            Err(e) => {
                warn!(request_id = %rec.request_id, error = %e, "journal unavailable; request dropped unanswered");
                None
            }
        }
    }

    /// Checks done before a request is journaled, offline; a request they refuse never reaches the journal.
    pub(super) fn precheck(&self, ask: &Ask) -> Result<(), (ErrorCode, String)> {
        match ask {
            Ask::Create(req) => self.validate_create(req)?,
            Ask::Release(req) => return lease_ref(&req.lease).map(|_| ()),
            Ask::TopUp(req) => {
                lease_ref(&req.lease)?;
            }
            _ => {}
        }
        self.offline_token_check(ask).map(|_| ())
    }

    /// Checks before a request is journaled that need a peer: a release or top-up names a live lease of
    /// its sender (one read of the cluster), and a token's proofs are the mint's (its public keys). What
    /// fails here costs the provider no disk.
    async fn check_before_journal(&self, route: &ReplyRoute, ask: &Ask) -> Result<(), (ErrorCode, String)> {
        let lease = match ask {
            Ask::Release(r) => Some(&r.lease),
            Ask::TopUp(r) => Some(&r.lease),
            _ => None,
        };
        if let Some(name) = lease {
            let id = lease_ref(name)?;
            match self.ports.cluster.get_lease(id).await {
                Ok(Some(l)) if l.requester.as_deref() == Some(route.requester.as_str()) => {
                    if l.terminating || l.expires_at.is_none_or(|e| e <= now_secs()) {
                        return Err((ErrorCode::LeaseExpired, "the lease has already ended".into()));
                    }
                }
                Ok(_) => return Err((ErrorCode::LeaseNotFound, "no such lease of yours".into())),
                Err(e) => return Err((ErrorCode::Unavailable, format!("cannot look up the lease now: {e}"))),
            }
        }
        if matches!(ask, Ask::Create(_) | Ask::TopUp(_)) {
            self.ports.payment.vet(ask.token()).await.map_err(token_refusal)?;
        }
        Ok(())
    }

    /// What can be told of a request's token without the mint: encoding, whitelist, and that its face
    /// value buys at least the minimum (and, for a create, not grossly more than the maximum).
    pub(super) fn offline_token_check(&self, ask: &Ask) -> Result<crate::lease::ports::TokenInfo, (ErrorCode, String)> {
        let info = self.ports.payment.inspect(ask.token()).map_err(token_refusal)?;
        let rate = match ask {
            Ask::Create(r) => self.tier(r.tier.as_deref()),
            _ => self.tier(None),
        }
        .map(|t| t.sats_per_hour)
        .unwrap_or(1);
        let min_price = price_of(self.settings.min_duration_secs, rate);
        if info.amount < min_price {
            return Err((
                ErrorCode::AmountTooSmall,
                format!(
                    "{} sat buys less than the minimum of {} s; at least {} sat needed",
                    info.amount, self.settings.min_duration_secs, min_price
                ),
            ));
        }
        if matches!(ask, Ask::Create(_)) {
            let max_price = price_of(self.settings.max_duration_secs, rate);
            // Input fees only lower the amount, so the face value bounds what could be received. What is
            // received beyond the maximum goes back with the lease (`excess`).
            if info.amount > max_price + max_price / 10 + 10 {
                return Err((
                    ErrorCode::AmountTooLarge,
                    format!(
                        "{} sat buys more than the maximum of {} s ({} sat)",
                        info.amount, self.settings.max_duration_secs, max_price
                    ),
                ));
            }
        }
        Ok(info)
    }

    pub(super) fn validate_create(&self, req: &LeaseRequest) -> Result<(), (ErrorCode, String)> {
        let user = req.ssh_username.as_deref().unwrap_or("user");
        if !valid_username(user) {
            return Err((
                ErrorCode::InvalidUsername,
                "ssh_username must be 1-32 chars of a-z, 0-9, '_' or '-', start with a letter or '_', and not be a system user".into(),
            ));
        }
        let image = req.pod_image.as_deref().unwrap_or(&self.settings.default_image);
        if crate::lease::image::admitted(image, &self.settings.allowed_images).is_none() {
            return Err((
                ErrorCode::ImageNotAllowed,
                format!("image not allowed; allowed: {}", self.settings.allowed_images.join(", ")),
            ));
        }
        if let Some(k) = &req.ssh_public_key {
            if !valid_public_key(k) {
                return Err((ErrorCode::InvalidPublicKey, "ssh_public_key must be one OpenSSH public key line".into()));
            }
        }
        if self.tier(req.tier.as_deref()).is_none() {
            let names: Vec<&str> = self.settings.tiers.iter().map(|t| t.name.as_str()).collect();
            return Err((ErrorCode::UnknownTier, format!("unknown tier; offered: {}", names.join(", "))));
        }
        if req.cashu_token.trim().is_empty() {
            return Err((ErrorCode::InvalidToken, "cashu_token is empty".into()));
        }
        Ok(())
    }

    /// Before any money moves: a lease the cluster has no room for, or one more than the requester may
    /// hold, is refused with nothing taken. Returns the flow when refused (or parked).
    pub(super) async fn check_room(&self, rec: &mut SagaRecord, req: &LeaseRequest) -> Option<Flow> {
        let held = match self.retry(|| self.ports.cluster.count_leases_of(&rec.route.requester)).await {
            Ok(n) => n,
            Err(e) if e.is_transient() => return Some(Flow::Park),
            Err(e) => return Some(self.refuse(rec, ErrorCode::Unavailable, e.message)),
        };
        if held >= self.settings.max_leases_per_requester {
            return Some(self.refuse(
                rec,
                ErrorCode::TooManyRequests,
                format!("one key may hold at most {} leases at once", self.settings.max_leases_per_requester),
            ));
        }
        let tier = self.tier(req.tier.as_deref())?.clone();
        match self.retry(|| self.ports.cluster.room_for(&tier)).await {
            Ok(Some(0)) => Some(self.refuse(
                rec,
                ErrorCode::NoCapacity,
                format!("no room for a lease of tier {} right now; nothing was taken", tier.name),
            )),
            Ok(_) => None,
            Err(e) if e.is_transient() => Some(Flow::Park),
            // Cannot read quotas (e.g. RBAC of an older manifest): the pod create itself will tell.
            Err(e) => {
                debug!(error = %e, "quota room unknown");
                None
            }
        }
    }
}

/// The lease id a release or top-up names (`<id>` or `ssh-pod-<id>`): 32 lowercase hex digits, as
/// `lease_id_for` makes them. Anything else names no lease, and is never stored.
pub(super) fn lease_ref(name: &str) -> Result<&str, (ErrorCode, String)> {
    let id = name.strip_prefix("ssh-pod-").unwrap_or(name);
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(id)
    } else {
        Err((ErrorCode::LeaseNotFound, "no such lease: a lease id is 32 hex digits".into()))
    }
}

/// A payment port's verdict on a token as the refusal the requester gets.
fn token_refusal(e: PortError) -> (ErrorCode, String) {
    let code = match e.kind {
        FailureKind::Rejected(c) => c,
        FailureKind::Transient => ErrorCode::MintUnavailable,
        FailureKind::Permanent => ErrorCode::InvalidToken,
    };
    (code, e.message)
}
