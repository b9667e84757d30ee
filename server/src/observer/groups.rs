//! Watch groups in the observer: which timed groups contain each member,
//! what each group last knew of its members, and reading them off the loop
//! when a group is armed. The group decision itself is the policy's
//! ([`policy::evaluate_group`]); this module never writes.

use super::*;

impl Observer {
    /// Drops the index entries of a group no longer timed.
    pub(super) fn unindex(&mut self, key: &WatchKey, group: &Watch) {
        for member in group.member_keys() {
            if let Some(groups) = self.groups_of.get_mut(&member) {
                groups.remove(key);
                if groups.is_empty() {
                    self.groups_of.remove(&member);
                }
            }
        }
        self.regroup.remove(key);
    }

    /// Tells the groups containing `member` what it is now; those whose view
    /// changed are decided again (see [`Self::evaluate_groups`]).
    pub(super) fn member_changed(&mut self, member: &Watch) {
        let Some(groups) = self.groups_of.get(&member.key()) else {
            return;
        };
        let now_is = Member::of(member);
        for group in groups {
            let Some(entry) = self.watches.get_mut(group) else {
                continue;
            };
            let changed = entry
                .aside()
                .members
                .get(&now_is.id)
                .is_none_or(|known| known.last_seq < now_is.last_seq);
            if changed {
                entry
                    .aside()
                    .members
                    .insert(now_is.id.clone(), now_is.clone());
                self.regroup.insert(group.clone());
            }
        }
    }

    /// Decides the groups whose members changed, until none did (a group
    /// may be a member of another).
    pub(super) fn evaluate_groups(&mut self) {
        while !self.regroup.is_empty() {
            let keys: Vec<WatchKey> = std::mem::take(&mut self.regroup).into_iter().collect();
            for batch in keys.chunks(MAX_BATCH) {
                self.evaluate_all(batch.to_vec());
            }
        }
    }

    /// Reads the members of group `key` off the loop; they come back as a command.
    pub(super) fn read_members(&mut self, key: &WatchKey) {
        let Some(entry) = self.watches.get_mut(key) else {
            return;
        };
        if entry.aside().reading_members {
            return;
        }
        entry.aside().reading_members = true;
        let keys = entry.watch.member_keys();
        let (store, tx, group) = (self.store.clone(), self.tx.clone(), key.clone());
        tokio::spawn(async move {
            let result = store.watches(&keys).await;
            let _ = tx.send(Command::Members { group, result }).await;
        });
    }

    /// Takes in a group's members as read from the store, and decides the
    /// group once every member is known.
    pub(super) fn members_read(&mut self, group: WatchKey, result: Result<Vec<Watch>, StoreError>) {
        let Some(entry) = self.watches.get_mut(&group) else {
            return;
        };
        entry.aside().reading_members = false;
        let watches = match result {
            Ok(watches) => watches,
            Err(e) => {
                tracing::warn!(tenant = %group.tenant, watch_id = %group.id, error = %e,
                    "cannot read the members of a watch group; retrying");
                let at = self.clock.now().plus(RETRY_AFTER);
                self.schedule(&group, at);
                return;
            }
        };
        for watch in &watches {
            let member = Member::of(watch);
            let newer = entry
                .aside()
                .members
                .get(&member.id)
                .is_none_or(|known| known.last_seq <= member.last_seq);
            if newer {
                entry.aside().members.insert(member.id.clone(), member);
            }
        }
        let known = &entry.aside.get_or_insert_default().members;
        let missing = entry
            .watch
            .source
            .members()
            .iter()
            .any(|id| !known.contains_key(id));
        if missing {
            // Members are never deleted: damage, or a store that lags. Look again shortly.
            tracing::error!(tenant = %group.tenant, watch_id = %group.id,
                "a member of a watch group is missing from the store; retrying");
            let at = self.clock.now().plus(RETRY_AFTER);
            self.schedule(&group, at);
            return;
        }
        self.evaluate(&group);
    }
}
