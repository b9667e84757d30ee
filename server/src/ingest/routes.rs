//! The routing table: which watches want which bucket's keys (by prefix,
//! then each watch's key filter and marker key), and which watches have a
//! batch routed but not yet recorded (in flight), so the observer never
//! calls a watch quiet while activity for it is on its way, and when the
//! oldest batch still being routed or recorded was received (the other
//! replicas of a cluster hold completions for it). In a cluster the
//! table is fed from other replicas too, and routing waits until it is fresh
//! (see [`crate::cluster`]).
//!
//! It holds no state that outlives the process and does no I/O: the
//! observer and the cluster's route refresh keep it current.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
};

use crate::{
    clock::Timestamp,
    error::Error,
    watch::{Bucket, KeyFilter, KeyMatcher, Prefix, Source, WatchKey},
};

#[derive(Clone, Debug)]
/// The watches of one bucket, indexed by prefix. A key matches exactly the
/// prefixes that are its leading bytes, so a lookup tries one hash probe per
/// prefix length in use instead of comparing the key with every watch; then
/// each watch's key filter, if it has one, sees the key below the prefix.
#[derive(Default)]
pub(super) struct BucketRoutes {
    by_prefix: HashMap<Prefix, Watchers>,
    /// How many distinct prefixes of each length (in bytes) are routed.
    lengths: BTreeMap<usize, usize>,
}

/// What one watch takes below its prefix: every key (`None`, the common
/// case: one pointer per route), or what a filter and a marker key say.
#[derive(Clone, Debug)]
struct Route(Option<Box<Takes>>);

#[derive(Clone, Debug)]
struct Takes {
    filter: Option<Arc<KeyMatcher>>,
    /// The marker key below the prefix (`policy.marker`): routed whatever the filter says.
    marker: Option<Box<str>>,
}

impl Route {
    /// Whether the watch takes the key `below` its prefix, and whether that
    /// key is its marker.
    fn takes(&self, below: &str) -> Option<bool> {
        let Some(takes) = &self.0 else {
            return Some(false);
        };
        if takes.marker.as_deref() == Some(below) {
            return Some(true);
        }
        takes
            .filter
            .as_ref()
            .is_none_or(|f| f.matches(below))
            .then_some(false)
    }
}

/// The watches of one prefix: nearly always one, kept in place (a map per
/// prefix would cost a million watches on distinct prefixes a few hundred
/// megabytes); a map once a second watch shares the prefix, ordered so the
/// watches of a notification are recorded in the same order every run.
#[derive(Clone, Debug)]
enum Watchers {
    One(WatchKey, Route),
    Many(BTreeMap<WatchKey, Route>),
}

impl Watchers {
    fn insert(&mut self, key: WatchKey, route: Route) {
        match self {
            Self::One(only, existing) if *only == key => *existing = route,
            Self::One(only, existing) => {
                let first = (only.clone(), existing.clone());
                *self = Self::Many(BTreeMap::from([first, (key, route)]));
            }
            Self::Many(map) => {
                map.insert(key, route);
            }
        }
    }

    /// Removes `key`; whether no watch is left.
    fn remove(&mut self, key: &WatchKey) -> bool {
        match self {
            Self::One(only, _) => only == key,
            Self::Many(map) => {
                map.remove(key);
                map.is_empty()
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&WatchKey, &Route)> {
        let (one, many) = match self {
            Self::One(key, route) => (Some((key, route)), None),
            Self::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl BucketRoutes {
    fn add(&mut self, prefix: &Prefix, key: &WatchKey, route: Route) {
        match self.by_prefix.get_mut(prefix.as_str()) {
            Some(watchers) => watchers.insert(key.clone(), route),
            None => {
                *self.lengths.entry(prefix.as_str().len()).or_default() += 1;
                self.by_prefix
                    .insert(prefix.clone(), Watchers::One(key.clone(), route));
            }
        }
    }

    fn remove(&mut self, prefix: &Prefix, key: &WatchKey) {
        let Some(watchers) = self.by_prefix.get_mut(prefix.as_str()) else {
            return;
        };
        if watchers.remove(key) {
            self.by_prefix.remove(prefix.as_str());
            let len = prefix.as_str().len();
            if let Some(n) = self.lengths.get_mut(&len) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&len);
                }
            }
        }
    }

    /// The watches whose prefix `key` starts with and whose filter takes it,
    /// each with whether `key` is its marker.
    pub(super) fn matching<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = (&'a WatchKey, bool)> + 'a {
        self.lengths
            .keys()
            .take_while(move |&&len| len <= key.len())
            .filter_map(move |&len| Some((key.get(..len)?, &key[len..])))
            .filter_map(|(prefix, below)| Some((self.by_prefix.get(prefix)?, below)))
            .flat_map(|(watches, below)| {
                watches
                    .iter()
                    .filter_map(move |(key, route)| Some((key, route.takes(below)?)))
            })
    }

    fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// How long a notification waits for stale routes to be refreshed before
/// ingest gives up with UNAVAILABLE (the queue redelivers it).
const FRESH_ROUTES_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which watches want which bucket, and which have activity on its way.
#[derive(Default)]
pub struct Routes {
    pub(super) by_bucket: RwLock<HashMap<Bucket, BucketRoutes>>,
    in_flight: Mutex<HashMap<WatchKey, usize>>,
    /// When each batch being routed or recorded was received, with how many
    /// batches were received then: a cluster's other replicas wait for what
    /// this replica received (see [`Routes::oldest_receiving`]).
    receiving: Mutex<BTreeMap<Timestamp, usize>>,
    /// In a cluster: when the last route refresh started, and how old it may
    /// be when a notification is routed (see [`crate::cluster`]).
    freshness: Option<(
        tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        std::time::Duration,
    )>,
    /// In a cluster: until when this replica is in touch with the table.
    in_touch: Option<tokio::sync::watch::Receiver<Option<tokio::time::Instant>>>,
}

impl Routes {
    /// A table that other replicas add to: routing waits until it was
    /// refreshed within `staleness`.
    pub fn refreshed(
        fresh: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        staleness: std::time::Duration,
        in_touch: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    ) -> Self {
        Self {
            freshness: Some((fresh, staleness)),
            in_touch: Some(in_touch),
            ..Self::default()
        }
    }

    /// Returns once the table holds every watch started more than its
    /// staleness ago (at once outside a cluster).
    pub(super) async fn wait_fresh(&self) -> Result<(), Error> {
        let Some((fresh, staleness)) = &self.freshness else {
            return Ok(());
        };
        if let Some(in_touch) = &self.in_touch
            && in_touch
                .borrow()
                .is_none_or(|until| until <= tokio::time::Instant::now())
        {
            // The others may have counted this replica out: another replica
            // takes the notification, at once rather than after a wait.
            return Err(out_of_touch());
        }
        let mut fresh = fresh.clone();
        let is_fresh =
            |at: &Option<tokio::time::Instant>| at.is_some_and(|at| at.elapsed() <= *staleness);
        if is_fresh(&fresh.borrow_and_update()) {
            return Ok(());
        }
        match tokio::time::timeout(FRESH_ROUTES_WAIT, fresh.wait_for(is_fresh)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable {
                message: "the routing table could not be refreshed from the store; retry".into(),
                retry_after: Some(crate::store::BUSY_RETRY),
            }),
        }
    }

    /// Runs `work` (an `IngestS3Events` call's recording) unless this replica
    /// loses touch with the cluster's table first: the others may then count
    /// it out and decide without it, so the caller hears UNAVAILABLE and
    /// sends the notification to another replica (at once outside a
    /// cluster). Queue consumers do not use this: a message they took and
    /// gave back would hide from the others' confirming receives.
    pub(super) async fn within_touch<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(in_touch) = &self.in_touch else {
            return work.await;
        };
        let mut in_touch = in_touch.clone();
        tokio::pin!(work);
        let mut open = true;
        loop {
            let Some(until) = *in_touch.borrow_and_update() else {
                return Err(out_of_touch());
            };
            if until <= tokio::time::Instant::now() {
                return Err(out_of_touch());
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(until) => {}
                changed = in_touch.changed(), if open => open = changed.is_ok(),
                done = &mut work => return done,
            }
        }
    }

    /// Routes the keys of `bucket` under `prefix` that `filter` takes to
    /// `key`, and the marker key below the prefix, if any, as its marker.
    pub fn add(
        &self,
        bucket: &Bucket,
        key: &WatchKey,
        prefix: &Prefix,
        filter: &KeyFilter,
        marker: Option<&str>,
    ) {
        let filter = filter.matcher().map(Arc::new);
        let route = Route((filter.is_some() || marker.is_some()).then(|| {
            Box::new(Takes {
                filter,
                marker: marker.map(Into::into),
            })
        }));
        let mut map = self.by_bucket.write().unwrap_or_else(|p| p.into_inner());
        map.entry(bucket.clone())
            .or_default()
            .add(prefix, key, route);
    }

    /// Routes what `source` counts to `key`, and its marker key below the
    /// prefix, if any, as its marker (a group counts nothing).
    pub fn add_source(&self, source: &Source, key: &WatchKey, marker: Option<&str>) {
        if let Some(o) = source.as_objects() {
            self.add(&o.bucket, key, &o.prefix, &o.filter, marker);
        }
    }

    /// Undoes [`Self::add_source`].
    pub fn remove_source(&self, source: &Source, key: &WatchKey) {
        if let Some(o) = source.as_objects() {
            self.remove(&o.bucket, key, &o.prefix);
        }
    }

    pub fn remove(&self, bucket: &Bucket, key: &WatchKey, prefix: &Prefix) {
        let mut map = self.by_bucket.write().unwrap_or_else(|p| p.into_inner());
        if let Some(routes) = map.get_mut(bucket) {
            routes.remove(prefix, key);
            if routes.is_empty() {
                map.remove(bucket);
            }
        }
    }

    /// Whether a routed batch for `key` is not yet recorded.
    pub fn in_flight(&self, key: &WatchKey) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|n| *n > 0)
    }

    /// The earliest instant at which a batch still being routed or
    /// recorded was received (none when nothing is).
    pub fn oldest_receiving(&self) -> Option<Timestamp> {
        self.receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .next()
            .copied()
    }

    /// Marks a batch received at `at` as on its way until the guard drops.
    pub(super) fn receive(self: &Arc<Self>, at: Timestamp) -> Receiving {
        *self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(at)
            .or_default() += 1;
        Receiving {
            routes: self.clone(),
            at,
        }
    }

    pub(super) fn begin(self: &Arc<Self>, keys: Vec<WatchKey>) -> InFlight {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            *map.entry(k.clone()).or_default() += 1;
        }
        InFlight {
            routes: self.clone(),
            keys,
        }
    }
}

/// Marks watches as having a batch on its way until dropped.
pub(super) struct InFlight {
    routes: Arc<Routes>,
    keys: Vec<WatchKey>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self
            .routes
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }
}

fn out_of_touch() -> Error {
    Error::Unavailable {
        message: "this replica has lost touch with the cluster's table; retry".into(),
        retry_after: Some(crate::store::BUSY_RETRY),
    }
}

/// A batch received and not yet recorded (or refused), until dropped.
pub(super) struct Receiving {
    routes: Arc<Routes>,
    at: Timestamp,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let mut map = self
            .routes
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.at) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::watch::TenantId;

    fn watch_key() -> WatchKey {
        WatchKey {
            tenant: TenantId::parse("tenant", "t").unwrap(),
            id: crate::watch::WatchId::generate(),
        }
    }

    fn routed(routes: &Routes, bucket: &str, key: &str) -> HashSet<WatchKey> {
        let map = routes.by_bucket.read().unwrap();
        map.get(bucket)
            .map(|r| r.matching(key).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_key_reaches_every_watch_whose_prefix_it_starts_with() {
        let routes = Routes::default();
        let lake = Bucket::parse("bucket", "lake").unwrap();
        let prefix = |p: &str| Prefix::parse("prefix", p).unwrap();
        let (all, day, day1, day10, other) = (
            watch_key(),
            watch_key(),
            watch_key(),
            watch_key(),
            watch_key(),
        );
        routes.add(&lake, &all, &prefix(""), &KeyFilter::default(), None);
        routes.add(&lake, &day, &prefix("day="), &KeyFilter::default(), None);
        routes.add(&lake, &day1, &prefix("day=1/"), &KeyFilter::default(), None);
        routes.add(
            &lake,
            &day10,
            &prefix("day=10/"),
            &KeyFilter::default(),
            None,
        );
        routes.add(
            &Bucket::parse("bucket", "other").unwrap(),
            &other,
            &prefix(""),
            &KeyFilter::default(),
            None,
        );
        // Adding a route twice keeps one.
        routes.add(&lake, &day1, &prefix("day=1/"), &KeyFilter::default(), None);

        assert_eq!(
            routed(&routes, "lake", "day=1/a"),
            HashSet::from([all.clone(), day.clone(), day1.clone()])
        );
        assert_eq!(
            routed(&routes, "lake", "day=10/a"),
            HashSet::from([all.clone(), day.clone(), day10.clone()])
        );
        assert_eq!(routed(&routes, "lake", "d"), HashSet::from([all.clone()]));
        // A prefix length that falls inside a multi-byte character is skipped, not a panic.
        assert_eq!(routed(&routes, "lake", "dä"), HashSet::from([all.clone()]));
        assert_eq!(routed(&routes, "nobody", "day=1/a"), HashSet::new());

        routes.remove(&lake, &day1, &prefix("day=1/"));
        routes.remove(&lake, &all, &prefix(""));
        assert_eq!(
            routed(&routes, "lake", "day=1/a"),
            HashSet::from([day.clone()])
        );
        routes.remove(&lake, &day, &prefix("day="));
        routes.remove(&lake, &day10, &prefix("day=10/"));
        assert!(
            !routes.by_bucket.read().unwrap().contains_key("lake"),
            "a bucket without watches is dropped"
        );
    }

    #[test]
    fn watches_sharing_a_prefix_are_routed_until_each_is_removed() {
        let routes = Routes::default();
        let lake = Bucket::parse("bucket", "lake").unwrap();
        let prefix = Prefix::parse("prefix", "day=1/").unwrap();
        let (a, b, c) = (watch_key(), watch_key(), watch_key());
        let add = |key: &WatchKey| routes.add(&lake, key, &prefix, &KeyFilter::default(), None);
        add(&a);
        // A second route of the same watch replaces the first.
        add(&a);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([a.clone()])
        );
        add(&b);
        add(&c);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([a.clone(), b.clone(), c.clone()])
        );
        routes.remove(&lake, &b, &prefix);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([a.clone(), c.clone()])
        );
        routes.remove(&lake, &a, &prefix);
        routes.remove(&lake, &a, &prefix);
        assert_eq!(
            routed(&routes, "lake", "day=1/x"),
            HashSet::from([c.clone()])
        );
        routes.remove(&lake, &c, &prefix);
        assert!(!routes.by_bucket.read().unwrap().contains_key("lake"));
    }

    #[test]
    fn a_watch_takes_only_the_keys_its_filter_takes_below_its_prefix() {
        let routes = Routes::default();
        let lake = Bucket::parse("bucket", "lake").unwrap();
        let prefix = Prefix::parse("prefix", "out/").unwrap();
        let filter = KeyFilter::parse(
            vec!["**/*.parquet".into(), "*.csv".into()],
            vec!["_temporary/**".into(), "**/_SUCCESS".into()],
        )
        .unwrap();
        let (filtered, all) = (watch_key(), watch_key());
        routes.add(&lake, &filtered, &prefix, &filter, None);
        routes.add(&lake, &all, &prefix, &KeyFilter::default(), None);
        let takes = |key: &str| routed(&routes, "lake", key).contains(&filtered);
        assert!(takes("out/day=1/part 0.parquet"), "** crosses /");
        assert!(takes("out/a.parquet"), "**/ also matches no directory");
        assert!(takes("out/top.csv"));
        assert!(!takes("out/day=1/deep.csv"), "* does not cross /");
        assert!(!takes("out/_temporary/0/part.parquet"), "excluded");
        assert!(!takes("out/day=1/_SUCCESS"));
        assert!(!takes("out/day=1/part.json"), "not included");
        assert!(
            !takes("out.parquet") && !takes("other/a.parquet"),
            "outside the prefix"
        );
        assert!(takes("out/ü +%/x.parquet"), "any characters");
        assert!(
            routed(&routes, "lake", "out/_temporary/x.json").contains(&all),
            "another watch of the prefix is unaffected"
        );
    }

    #[test]
    fn bad_key_patterns_are_named_with_their_index() {
        let err = |include: &[&str], exclude: &[&str]| {
            KeyFilter::parse(
                include.iter().map(|s| s.to_string()).collect(),
                exclude.iter().map(|s| s.to_string()).collect(),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err(&["*.json", "*.csv", "a[b"], &[]).contains("include[2]"));
        assert!(err(&[], &["{a,b"]).contains("exclude[0]"));
        assert!(err(&[""], &[]).contains("include[0]"));
        let long = "x".repeat(crate::watch::MAX_KEY_PATTERN_BYTES + 1);
        assert!(err(&[], &["ok", &long]).contains("exclude[1]"));
        let many = vec!["*"; crate::watch::MAX_KEY_PATTERNS + 1];
        assert!(err(&many, &[]).contains("invalid include: has 33 patterns"));
    }
}
