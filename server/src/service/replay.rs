//! ReplayWatch: plays a watch's objects (or objects given) through the
//! standard candidate policies, the watch's own and those asked for, with
//! [`crate::replay`], one replay at a time off the async threads.
//!
//! It reads only the caller's watch, writes nothing, and must never hold a
//! runtime thread while it plays.

use super::{MAX_OBJECTS_PAGE_SIZE, Service};
use crate::{
    clock::Timestamp,
    error::Error,
    replay,
    store::ObjectsQuery,
    watch::{Policy, TenantId, WatchId},
};

/// Objects one ReplayWatch plays at most (each policy evaluates the
/// history's every arrival: 100,000 objects take a second or two of CPU).
pub const MAX_REPLAY_OBJECTS: usize = 100_000;
/// Policies a ReplayWatch may add to the standard candidates.
pub const MAX_REPLAY_POLICIES: usize = 10;

/// A validated ReplayWatch: a watch of the caller's, or objects given.
#[derive(Clone, Debug)]
pub enum ReplaySource {
    Watch(WatchId),
    /// `(created, arrived)` of each object.
    Objects(Vec<(Timestamp, Timestamp)>),
}

/// One policy's outcome on a replayed history.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub name: String,
    pub policy: Policy,
    pub outcome: replay::Outcome,
}
/// The history of `objects` (`(created, arrived)`), watched from `start`.
fn history_of(start: Timestamp, objects: Vec<(Timestamp, Timestamp)>) -> replay::History {
    let (created, arrivals) = objects
        .into_iter()
        .enumerate()
        .map(|(i, (created, arrived))| {
            let arrival = replay::Arrival {
                at: arrived.max(start),
                object: i as u32,
            };
            (created, arrival)
        })
        .unzip();
    replay::History::new(start, created, arrivals)
}
impl Service {
    /// What the standard candidates, the watch's own policy and `extra`
    /// would have decided on a watch's objects (or on objects given).
    pub async fn replay(
        &self,
        tenant: &TenantId,
        source: ReplaySource,
        extra: Vec<(String, Policy)>,
    ) -> Result<(replay::History, Vec<Replayed>), Error> {
        let _running =
            self.replays
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::ResourceExhausted {
                    message: "a replay is running on this server; retry in a few seconds".into(),
                    retry_after: Some(std::time::Duration::from_secs(2)),
                })?;
        let (history, own) = match source {
            ReplaySource::Objects(objects) => {
                let start = objects
                    .iter()
                    .map(|(c, _)| *c)
                    .min()
                    .unwrap_or(Timestamp::from_millis(0));
                (history_of(start, objects), None)
            }
            ReplaySource::Watch(id) => {
                let watch = self.get_watch(tenant, &id).await?;
                if watch.source.as_objects().is_none() {
                    return Err(Error::invalid(
                        "watch_id",
                        "a watch group has no objects of its own",
                    ));
                }
                let mut objects = Vec::new();
                let mut after = None;
                loop {
                    let query = ObjectsQuery {
                        generation: None,
                        after,
                        limit: MAX_OBJECTS_PAGE_SIZE,
                    };
                    let page = self.store.list_objects(tenant, &id, &query).await?;
                    after = page.last().map(|o| o.key.clone());
                    for o in &page {
                        let arrived = o.recorded_at.or(o.event_time);
                        let created = o.event_time.or(o.recorded_at);
                        if let (Some(created), Some(arrived)) = (created, arrived) {
                            objects.push((created, arrived));
                        }
                    }
                    if objects.len() > MAX_REPLAY_OBJECTS {
                        return Err(Error::invalid(
                            "watch_id",
                            format!(
                                "the watch has more than {MAX_REPLAY_OBJECTS} objects; replay a sample of them with `objects`"
                            ),
                        ));
                    }
                    if page.len() < MAX_OBJECTS_PAGE_SIZE {
                        break;
                    }
                }
                let own = Policy {
                    late_window: Some(replay::LATE_WINDOW),
                    notify: Default::default(),
                    ..watch.policy.clone()
                };
                (history_of(watch.created_at, objects), Some(own))
            }
        };
        let mut policies = replay::candidates(history.objects());
        if let Some(own) = own {
            policies.insert(0, ("this watch's policy".to_owned(), own));
        }
        policies.extend(extra);
        let replayed = tokio::task::spawn_blocking(move || {
            let out = policies
                .into_iter()
                .map(|(name, policy)| Replayed {
                    outcome: replay::replay(&policy, &history),
                    name,
                    policy,
                })
                .collect();
            (history, out)
        })
        .await
        .map_err(|_| Error::unavailable("the replay was stopped; retry"))?;
        Ok(replayed)
    }
}
