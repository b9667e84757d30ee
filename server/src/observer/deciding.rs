//! Deciding, in the observer's loop: asks the policy about due watches,
//! turns a decision that changes a lifecycle into a transition for the
//! writer (with its evaluation span), and carries out what the store
//! answered (or a cancellation). Never awaits: writes go to `writer`.

use super::*;

impl Observer {
    /// Asks the policy about one watch and carries out its decision.
    pub(super) fn evaluate(&mut self, key: &WatchKey) {
        self.evaluate_all(vec![key.clone()]);
    }

    /// Asks the policy about each of `keys` and carries out the decisions;
    /// the lifecycle changes go to the store together, off the loop (see
    /// [`Writer::write`]), and come back as [`Command::Written`].
    pub(super) fn evaluate_all(&mut self, keys: Vec<WatchKey>) {
        let decided: Vec<Transition> = keys.iter().filter_map(|k| self.decide(k)).collect();
        if decided.is_empty() {
            return;
        }
        for t in &decided {
            if let Some(entry) = self.watches.get_mut(&t.key) {
                entry.writing += 1;
            }
        }
        let (writer, tx) = (self.writer.clone(), self.tx.clone());
        tokio::spawn(async move {
            let written = writer.write(decided).await;
            let _ = tx.send(Command::Written(written)).await;
        });
    }

    /// Carries out transitions the store has answered; decides again the
    /// watches that changed under their writes or fell due meanwhile.
    pub(super) fn written(&mut self, written: Vec<(Transition, Outcome)>) {
        let mut again = Vec::new();
        for (t, outcome) in written {
            let key = t.key.clone();
            let due = self.watches.get_mut(&key).is_some_and(|entry| {
                entry.writing = entry.writing.saturating_sub(1);
                std::mem::take(&mut entry.again)
            });
            let changed = match outcome {
                Outcome::Written(result) => self.finish(t, *result).is_some(),
                Outcome::Unchanged => {
                    self.settle(&key, None, &t.decision);
                    false
                }
                Outcome::Retry => {
                    self.schedule(&key, t.now.plus(RETRY_AFTER));
                    false
                }
            };
            let Some(entry) = self.watches.get_mut(&key) else {
                continue;
            };
            if !changed {
                entry.conflicts = 0;
                if due {
                    again.push(key);
                }
                continue;
            }
            entry.conflicts += 1;
            if entry.conflicts < MAX_CONFLICTS {
                again.push(key);
                continue;
            }
            entry.conflicts = 0;
            tracing::warn!(watch = ?key, "watch kept changing during evaluation; retrying shortly");
            let at = self.clock.now().plus(RETRY_AFTER);
            self.schedule(&key, at);
        }
        for batch in again.chunks(MAX_BATCH) {
            self.evaluate_all(batch.to_vec());
        }
    }

    /// The policy's decision for `key`; carried out at once when it changes
    /// no lifecycle, else returned to be written.
    pub(super) fn decide(&mut self, key: &WatchKey) -> Option<Transition> {
        let entry = self.watches.get_mut(key)?;
        if entry.writing > 0 {
            // Decided again when the write comes back.
            entry.again = true;
            return None;
        }
        let checked = entry.aside.as_mut().and_then(|a| a.manifest_checked.take());
        let entry = self.watches.get(key)?;
        let fence = match &self.cluster {
            None => None,
            Some(c) => match c.ownership.fence(&key.id) {
                Some(fence) => Some(fence),
                None => {
                    // The shard's lease went elsewhere since this watch was armed.
                    self.drop_timing(key);
                    return None;
                }
            },
        };
        if self.routes.in_flight(key) {
            // The batch on its way reports back when recorded; decide then.
            return None;
        }
        let now = self.clock.now();
        if entry.watch.is_group() {
            let members = entry.aside.as_ref().map(|a| &a.members);
            let known = entry
                .watch
                .source
                .members()
                .iter()
                .all(|id| members.is_some_and(|m| m.contains_key(id)));
            let (true, Some(members)) = (known, members) else {
                // Decided when the members are read.
                self.read_members(key);
                return None;
            };
            let decision = policy::evaluate_group(&entry.watch, members, now);
            return self.transition(key, decision, false, now, fence);
        }
        // Taken only now that the watch is decided on: a probe not recorded
        // could be asked for again.
        let probed = self
            .watches
            .get_mut(key)
            .and_then(|e| e.aside.as_mut()?.probed.take());
        let entry = self.watches.get(key)?;
        let settled = *self.settled.borrow();
        // A manifest check's result, and a probe listing, are decided on and
        // written with the decision.
        let recorded = (checked.is_some() || probed.is_some()).then(|| {
            let mut watch = entry.watch.clone();
            let progress = &mut watch.lifecycle.polling;
            if let Some(c) = checked {
                progress.manifest = Some(Box::new(c.check));
            }
            if let Some((_, at)) = probed {
                progress.probes = progress.probes.saturating_add(1);
                progress.probed_at = Some(at);
            }
            watch
        });
        let evaluated = recorded.as_ref().unwrap_or(&entry.watch);
        let mut decision = policy::evaluate(evaluated, now, settled);
        if decision.check_manifest {
            self.start_manifest_check(key);
            return None;
        }
        if decision.probe {
            self.start_reconcile(key, true);
            return None;
        }
        if decision.lifecycle.is_none() && recorded.is_some() {
            decision.lifecycle = Some(evaluated.lifecycle.clone());
        }
        let completes = decision
            .events
            .iter()
            .any(|e| matches!(e, EventKind::Completed { .. }));
        // A probe confirms a completion decided on the level it left.
        let activity = entry.watch.counters.activity();
        let confirmed = entry.aside.as_ref().and_then(|a| a.reconciled_at) == Some(activity)
            || probed.is_some_and(|(level, _)| level == activity);
        if completes && entry.watch.policy.reconcile && !confirmed {
            self.start_reconcile(key, false);
            return None;
        }
        self.transition(key, decision, completes, now, fence)
    }

    /// A decision that changes the watch's lifecycle, as a transition to
    /// write; one that changes none is carried out here.
    pub(super) fn transition(
        &mut self,
        key: &WatchKey,
        mut decision: policy::Decision,
        completes: bool,
        now: Timestamp,
        fence: Option<Fence>,
    ) -> Option<Transition> {
        let entry = self.watches.get(key)?;
        match decision.lifecycle.take() {
            None => {
                self.settle(key, None, &decision);
                None
            }
            Some(lifecycle) => Some(Transition {
                key: key.clone(),
                guard: Guard::exact(&entry.watch),
                decided: telemetry::ended(evaluation_span(&entry.watch, &lifecycle, completes)),
                lifecycle,
                decision,
                now,
                fence,
                was: entry.watch.lifecycle.clone(),
                late_window_end: entry.watch.late_window_end(),
            }),
        }
    }

    /// Carries out a written (or failed) transition; returns the key when
    /// the watch changed under it and must be decided again.
    pub(super) fn finish(
        &mut self,
        t: Transition,
        result: Result<Option<Applied>, StoreError>,
    ) -> Option<WatchKey> {
        let (tenant, id) = (&t.key.tenant, &t.key.id);
        match result {
            Ok(Some(Applied::Done { watch, events })) => {
                self.transitioned(&watch, &events);
                self.member_changed(&watch);
                self.settle(&t.key, Some(watch), &t.decision);
                None
            }
            Ok(Some(Applied::Conflict(current))) => {
                self.insert(current);
                Some(t.key)
            }
            Ok(None) => {
                self.forget(&t.key);
                None
            }
            Err(StoreError::Fenced { shard }) => {
                self.metrics.fenced_write();
                if let (Some(c), Some(fence)) = (&self.cluster, &t.fence)
                    && !c.ownership.lose(shard, fence.version)
                    && c.ownership
                        .fence(id)
                        .is_some_and(|now| now.version != fence.version)
                {
                    // Written under a lease this replica lost and has taken
                    // again since (a write slower than the takeover): its
                    // watches are observed under the new lease. Decide again.
                    tracing::warn!(tenant = %tenant, watch_id = %id, shard, version = fence.version,
                        "transition refused under an older lease of this shard; deciding again");
                    return Some(t.key);
                }
                tracing::warn!(tenant = %tenant, watch_id = %id, shard,
                    "transition refused: another replica took this shard's lease; no longer observing it");
                self.disown(shard);
                None
            }
            Err(e) => {
                tracing::error!(tenant = %tenant, watch_id = %id, error = %e, "cannot record a watch transition; retrying");
                self.schedule(&t.key, t.now.plus(RETRY_AFTER));
                None
            }
        }
    }

    /// Keeps `watch` as the decision left it (`None`: the watch as kept) and sets its next wake-up.
    /// A watch no longer timed here (forgotten while its write was on its
    /// way) is left alone; activity recorded while the write was on its way
    /// is not replaced by the state the write returned.
    pub(super) fn settle(
        &mut self,
        key: &WatchKey,
        watch: Option<Watch>,
        decision: &policy::Decision,
    ) {
        let Some(entry) = self.watches.get_mut(key) else {
            return;
        };
        if let Some(watch) = watch {
            entry.update(watch);
        }
        let active = entry.watch.state() == WatchState::Active;
        let live = active || decision.wake_at.is_some();
        // An active watch's next wake-up is a quiet deadline or a polling
        // sample (or its timeout, which waits for nothing: confirming then costs one short receive).
        let wanted = decision
            .held_until_settled
            .or(decision.wake_at.filter(|_| active));
        self.want(key, wanted);
        if decision.held_until_settled.is_some() {
            self.held.insert(key.clone());
        } else {
            self.held.remove(key);
        }
        match decision.wake_at {
            Some(at) => self.schedule(key, at),
            None if live => self.unschedule(key),
            None => self.forget(key),
        }
    }

    /// Logs and counts each state transition among `events` just recorded for `watch`.
    pub(super) fn transitioned(&self, watch: &Watch, events: &[WatchEvent]) {
        for e in events {
            let (EventKind::Completed {
                object_count,
                reason,
                ..
            }
            | EventKind::TimedOut {
                object_count,
                reason,
            }
            | EventKind::Reopened {
                object_count,
                reason,
            }) = &e.kind
            else {
                if let EventKind::Cancelled { reason } = &e.kind {
                    tracing::info!(tenant = %watch.tenant, watch_id = %watch.id, seq = e.seq,
                        generation = e.generation, event = e.kind.name(), %reason, "watch state changed");
                    self.metrics.transition(e.kind.name());
                }
                continue;
            };
            tracing::info!(tenant = %watch.tenant, watch_id = %watch.id, seq = e.seq,
                generation = e.generation, event = e.kind.name(), object_count, %reason,
                "watch state changed");
            self.metrics.transition(e.kind.name());
            if let EventKind::Completed { .. } = e.kind {
                let since = watch
                    .counters
                    .last_activity_at
                    .unwrap_or(watch.lifecycle.generation_started_at);
                self.metrics.completed_after(since.until(e.time));
            }
        }
    }

    /// Cancels `key` off the loop; the outcome comes back as [`Command::Cancelled`].
    pub(super) fn cancel(
        &mut self,
        key: WatchKey,
        reason: String,
        reply: oneshot::Sender<Result<Watch, Error>>,
    ) {
        let current = self.watches.get_mut(&key).map(|entry| {
            entry.writing += 1;
            entry.watch.clone()
        });
        let (writer, tx) = (self.writer.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = writer.cancel(&key, current, reason).await;
            let _ = tx.send(Command::Cancelled { key, result, reply }).await;
        });
    }

    /// Carries out a cancellation the store has answered.
    pub(super) fn cancelled(
        &mut self,
        key: &WatchKey,
        result: Result<Box<(Watch, Vec<WatchEvent>)>, Error>,
    ) -> Result<Watch, Error> {
        let due = self.watches.get_mut(key).is_some_and(|entry| {
            entry.writing = entry.writing.saturating_sub(1);
            std::mem::take(&mut entry.again)
        });
        let (watch, events) = match result {
            Ok(cancelled) => *cancelled,
            Err(e) => {
                if due {
                    self.evaluate(key);
                }
                return Err(e);
            }
        };
        self.transitioned(&watch, &events);
        self.member_changed(&watch);
        match self.watches.get_mut(key) {
            Some(entry) => entry.update(watch.clone()),
            None => self.retire(key),
        }
        self.forget(key);
        Ok(watch)
    }
}

/// The span of an evaluation that changes `watch`'s state to `next`: a root
/// span linked to the watch's StartWatch call; when the watch completes, the
/// completion decision is a child span carrying what it was decided on.
fn evaluation_span(watch: &Watch, next: &Lifecycle, completes: bool) -> tracing::Span {
    let span = tracing::info_span!(parent: None, "observer.evaluate",
        tenant = %watch.tenant, watch_id = %watch.id,
        from = watch.state().as_str(), to = next.state.as_str(), generation = i64::from(next.generation));
    telemetry::link_to(&span, &watch.trace);
    if !completes {
        return span;
    }
    let policy = match watch.policy.rule {
        Rule::Polling { .. } => "polling",
        Rule::QuietPeriod { .. } => "quiet_period",
        Rule::ExpectedCount { .. } => "expected_count",
        Rule::Adaptive { .. } => "adaptive",
        Rule::Marker { .. } => "marker",
    };
    let last_activity = watch
        .counters
        .last_activity_at
        .map(|t| t.to_string())
        .unwrap_or_default();
    let completion = tracing::info_span!(parent: &span, "watch.completion",
        tenant = %watch.tenant, watch_id = %watch.id, policy,
        object_count = watch.counters.object_count as i64, last_activity = %last_activity,
        reason = %next.reason, generation = i64::from(next.generation));
    telemetry::link_to(&completion, &watch.trace);
    completion
}
