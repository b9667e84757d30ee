//! What the observer reads from S3, off its loop: the listing of a watch's
//! prefix (to confirm a completion, or a series' probe) and its marker's
//! manifest. Each runs in a task of its own and comes back as a command; the
//! loop decides again with the result. Never writes a transition.

use super::*;

impl Observer {
    /// Carries a finished manifest check into the watch's next decision.
    pub(super) fn manifest_checked(
        &mut self,
        key: WatchKey,
        result: Result<marker::Checked, marker::CheckError>,
    ) {
        let Some(entry) = self.watches.get_mut(&key) else {
            return;
        };
        entry.aside().checking_manifest = false;
        match result {
            Ok(checked) => {
                entry.aside().manifest_missing =
                    Some((checked.check.marker, checked.missing.clone()));
                entry.aside().manifest_checked = Some(checked);
                self.evaluate(&key);
            }
            Err(e) => {
                tracing::warn!(tenant = %key.tenant, watch_id = %key.id, error = %e,
                    "cannot check the marker's manifest; retrying");
                let at = self.clock.now().plus(RECONCILE_RETRY);
                self.schedule(&key, at);
            }
        }
    }

    /// Reads the watch's marker manifest (or looks up the files it still
    /// misses) off the loop; the result comes back as a command.
    pub(super) fn start_manifest_check(&mut self, key: &WatchKey) {
        let Some(entry) = self.watches.get_mut(key) else {
            return;
        };
        if entry.aside().checking_manifest {
            return;
        }
        let watch = entry.watch.clone();
        let Some(reconciler) = self.reconciler.clone() else {
            // StartWatch refuses verify_manifest without AWS access; a watch
            // from an earlier configuration waits, saying why.
            let check = watch::ManifestCheck {
                marker: watch.counters.marker_count,
                activity: watch.counters.activity(),
                problem: "this server has no AWS access to read the marker's manifest".into(),
                ..Default::default()
            };
            entry.aside().manifest_checked = Some(marker::Checked {
                check,
                missing: Vec::new(),
            });
            let now = self.clock.now();
            self.schedule(key, now);
            return;
        };
        entry.aside().checking_manifest = true;
        let known = entry
            .aside()
            .manifest_missing
            .clone()
            .filter(|(marker, _)| *marker == watch.counters.marker_count);
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = match known {
                Some((_, keys)) => {
                    let listed = watch
                        .lifecycle
                        .polling
                        .manifest
                        .as_ref()
                        .map_or(0, |c| c.listed);
                    marker::missing(&*store, &watch, keys)
                        .await
                        .map(|mut c| {
                            c.check.listed = listed;
                            c
                        })
                        .map_err(marker::CheckError::Store)
                }
                None => marker::check(&reconciler.s3, &*store, &watch).await,
            };
            let _ = tx
                .send(Command::ManifestChecked {
                    key: watch.key(),
                    result,
                })
                .await;
        });
    }

    /// Lists the watch's prefix off the loop, to confirm a completion or as
    /// a probe; the result comes back as a command.
    pub(super) fn start_reconcile(&mut self, key: &WatchKey, probe: bool) {
        let now = self.clock.now();
        let Some(entry) = self.watches.get_mut(key) else {
            return;
        };
        let Some(reconciler) = self.reconciler.clone() else {
            // StartWatch refuses reconcile without AWS access; a watch from an
            // earlier configuration completes as if it had none.
            let activity = entry.watch.counters.activity();
            if probe {
                entry.aside().probed = Some((activity, now));
                self.schedule(key, now);
            } else {
                entry.aside().reconciled_at = Some(activity);
            }
            return;
        };
        if entry.aside().reconciling {
            return;
        }
        entry.aside().reconciling = true;
        let (watch, store, tx) = (entry.watch.clone(), self.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            let activity = watch.counters.activity();
            let result = reconciler
                .reconcile(&*store, &watch, now)
                .await
                .map(|found| found.map(|(watch, _)| Box::new(watch)));
            let _ = tx
                .send(Command::Reconciled {
                    key: watch.key(),
                    activity,
                    probe: probe.then_some(now),
                    result,
                })
                .await;
        });
    }

    /// Takes in a finished listing of `key`'s prefix at activity level
    /// `activity` (a probe when `probe` says when it listed), and decides
    /// the watch again.
    pub(super) fn listed(
        &mut self,
        key: WatchKey,
        activity: u64,
        probe: Option<Timestamp>,
        result: Result<Option<Box<Watch>>, ReconcileError>,
    ) {
        let Some(entry) = self.watches.get_mut(&key) else {
            return;
        };
        entry.aside().reconciling = false;
        match result {
            Ok(Some(watch)) => {
                let level = watch.counters.activity();
                entry.update(*watch);
                entry.aside().probed = probe.map(|at| (level, at));
            }
            Ok(None) if probe.is_some() => {
                entry.aside().probed = probe.map(|at| (activity, at));
            }
            Ok(None) => entry.aside().reconciled_at = Some(activity),
            Err(e) => {
                tracing::warn!(tenant = %key.tenant, watch_id = %key.id, error = %e,
                    "cannot list the prefix to reconcile; retrying");
                let at = self.clock.now().plus(RECONCILE_RETRY);
                self.schedule(&key, at);
                return;
            }
        }
        self.evaluate(&key);
    }
}
