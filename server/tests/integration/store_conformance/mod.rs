//! One conformance suite for every `Store` backend: the same behaviour on
//! the embedded SQLite file, on DynamoDB (against the AWS emulator the
//! test run starts; `AWS_ENDPOINT_URL` points at it) and on the in-memory
//! store that stands in for DynamoDB in one process.
//!
//! Each test is a function of a store, in the file of what it covers
//! (`watches`, `recording`, `manifest`, `outbox`); `conformance!` runs each
//! on every backend. `dynamodb` holds what only the DynamoDB store has.

mod dynamodb;
mod manifest;
mod outbox;
mod recording;
mod watches;

use self::{manifest::*, outbox::*, recording::*, watches::*};

use std::{sync::Arc, time::Duration};

use streamwatch_server::{
    clock::Timestamp,
    store::{
        Activity, ActivityKind, Applied, Change, Created, DeliveryState, Guard, ListQuery,
        ManifestEntry, NewWatch, ObjectsQuery, Recorded, Store, dynamodb::DynamoStore,
        memory::MemoryStore, sqlite::SqliteStore,
    },
    watch::{
        Bucket, EventKind, KeyFilter, Lifecycle, Notify, NotifyTarget, Policy, Prefix, Rule,
        Source, TenantId, TraceContext, WatchId, WatchState,
    },
};

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn tenant(name: &str) -> TenantId {
    TenantId::parse("tenant", name).unwrap()
}

fn new_watch(tenant_name: &str, token: Option<&str>) -> NewWatch {
    NewWatch {
        tenant: tenant(tenant_name),
        id: WatchId::generate(),
        source: Source::objects(
            Bucket::parse("bucket", "data-lake").unwrap(),
            Prefix::parse("prefix", "day=1/").unwrap(),
            Default::default(),
        ),
        policy: Policy::default(),
        labels: [("team".to_owned(), "etl".to_owned())].into(),
        client_token: token.map(str::to_owned),
        created_at: NOW,
        trace: Default::default(),
    }
}

fn activity(w: &NewWatch, kind: ActivityKind, key: &str, sequencer: &str) -> Activity {
    Activity {
        tenant: w.tenant.clone(),
        watch_id: w.id.clone(),
        kind,
        key: key.to_owned(),
        sequencer: sequencer.to_owned(),
        size: 0,
        event_time: None,
    }
}

async fn create(store: &dyn Store, new: NewWatch) -> streamwatch_server::watch::Watch {
    match store.create_watch(new).await.unwrap() {
        Created::New { watch, events } => {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].seq, 1);
            assert!(matches!(events[0].kind, EventKind::Started { .. }));
            watch
        }
        Created::Existing(w) => panic!("unexpected existing watch {}", w.id),
    }
}

fn rand_suffix() -> String {
    WatchId::generate().as_str().replace('-', "")[20..].to_owned()
}

async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("conformance.db")).unwrap();
    (Arc::new(store), dir)
}

async fn dynamodb() -> (Arc<dyn Store>, ()) {
    let (_, _, store) = dynamodb_table().await;
    (Arc::new(store), ())
}

/// A store on a new table of the emulator, its client and the table's name.
async fn dynamodb_table() -> (aws_sdk_dynamodb::Client, String, DynamoStore) {
    streamwatch_testkit::aws::expect_emulator();
    let client = streamwatch_testkit::aws::dynamodb().await;
    let table = format!("conformance-{}", rand_suffix());
    let store = DynamoStore::new(client.clone(), table.clone(), Duration::from_secs(3600));
    store
        .create_table()
        .await
        .expect("create the table in the emulator");
    (client, table, store)
}

async fn memory() -> (Arc<dyn Store>, ()) {
    (Arc::new(MemoryStore::new(64)), ())
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let (store, _guard) = super::sqlite().await;
                    super::$test(store).await;
                }
            )*
        }
        mod on_memory {
            $(
                #[tokio::test]
                async fn $test() {
                    let (store, _guard) = super::memory().await;
                    super::$test(store).await;
                }
            )*
        }
        mod on_dynamodb {
            $(
                #[tokio::test]
                async fn $test() {
                    streamwatch_testkit::require_emulator!();
                    let (store, _guard) = super::dynamodb().await;
                    super::$test(store).await;
                }
            )*
        }
    };
}

conformance!(
    creates_reads_and_isolates_tenants,
    a_change_without_events_survives_a_concurrent_recording,
    client_tokens_are_idempotent_per_tenant,
    records_each_key_exactly_once,
    counts_do_not_depend_on_arrival_order,
    a_key_overwritten_many_times_in_one_batch_counts_each_event,
    keeps_the_start_trace_context,
    large_batches_span_transactions_and_stay_exact,
    concurrent_recorders_never_double_count,
    concurrent_shuffled_recorders_count_each_event_once,
    finished_watches_take_no_activity,
    a_watch_a_day_past_its_timeout_takes_no_activity,
    lifecycle_changes_are_guarded,
    events_page_in_order,
    lists_filter_and_page_newest_first,
    live_watches_are_found_for_recovery,
    terminal_events_write_outbox_entries_with_the_event,
    due_deliveries_are_claimed_once_per_lease,
    attempts_are_fenced_by_the_lease_and_failures_logged,
    keeps_key_filters_and_sums_object_bytes_once_per_key,
    manifests_page_in_key_order_with_what_was_told,
    keeps_a_watch_groups_members,
    counts_markers_apart_from_objects_once_per_marker,
    late_objects_belong_to_the_generation_their_reopening_starts,
    reads_many_watches_each_once,
);
