//! The items replicas coordinate through (see [`crate::cluster`]), in the
//! same table as the watches:
//!
//! | item | `pk` | `sk` | notes |
//! |---|---|---|---|
//! | shard count | `CLUSTER` | `META` | `shards`: every replica of the table must agree |
//! | shard lease | `CLUSTER` | `LEASE#{shard:05}` | `owner` (empty when free), `version` (the fencing token: bumped on every change of owner), `taken_at`; written only when it changes hands |
//! | replica | `CLUSTER` | `REPLICA#{id}` | `heartbeat` (moves on every beat: it keeps the replica's leases), `settled` (how far its queue consumers have recorded), `visibility_ms` (its queues' longest visibility timeout), `routes` (the route version it has loaded), TTL a day after its last beat |
//! | route version | `CLUSTER` | `ROUTES` | `version`: bumped after each new route item is written |
//! | route | `R#{minute}` | `{created_ms:013}#W#{tenant}#{watch_id}` | `tenant`, `watch_id`, `bucket`, `prefix`; written with the watch, TTL [`ROUTE_ITEM_LIFETIME`] |
//!
//! Leases and replicas share one partition, so one strongly consistent
//! Query reads the whole cluster. A lease is not renewed: it stays its
//! owner's while the owner's replica item keeps moving, so a heartbeat is one
//! write whatever the leases held. Route items are partitioned by the minute
//! the watch was created, so a refresh reads the last few seconds of new
//! watches from one or two partitions, and only when the route version moved.

use std::{sync::atomic::Ordering, time::Duration};

use aws_sdk_dynamodb::{
    error::SdkError,
    types::{ConditionCheck, ReturnValue, TransactWriteItem},
};

use async_trait::async_trait;

use super::{DynamoStore, Item, Result, StoreError, aws, built, get_n, get_s, item_watch, n, s};
use crate::{
    clock::Timestamp,
    store::{ClusterTable, ClusterView, Fence, LeaseItem, ReplicaItem, RouteEntry},
    watch::{TenantId, Watch, WatchId, WatchKey},
};

const CLUSTER_PK: &str = "CLUSTER";
/// How long a route item is kept: far longer than any refresh looks back.
pub const ROUTE_ITEM_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a replica item outlives its last heartbeat.
const REPLICA_ITEM_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub fn route_pk(created_ms: i64) -> String {
    format!("R#{}", created_ms.div_euclid(60_000))
}

fn lease_sk(shard: u32) -> String {
    format!("LEASE#{shard:05}")
}

fn conditional_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    e: &SdkError<E, R>,
) -> bool {
    matches!(e, SdkError::ServiceError(service)
        if service.err().code() == Some("ConditionalCheckFailedException"))
}

fn item_lease(item: &Item) -> Result<LeaseItem> {
    let sk = get_s(item, "sk")?;
    let shard = sk
        .strip_prefix("LEASE#")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| super::corrupt("lease sk"))?;
    Ok(LeaseItem {
        shard,
        owner: get_s(item, "owner")?.to_owned(),
        version: get_n(item, "version")?,
    })
}

fn optional_n(item: &Item, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn item_replica(id: &str, item: &Item) -> Result<ReplicaItem> {
    Ok(ReplicaItem {
        id: id.to_owned(),
        heartbeat: get_n(item, "heartbeat")?,
        settled: Timestamp::from_millis(get_n(item, "settled")?),
        visibility: Duration::from_millis(optional_n(item, "visibility_ms")),
        routes: optional_n(item, "routes"),
    })
}

impl DynamoStore {
    fn count_lease_request(&self, written: bool) {
        self.stats.lease_requests.fetch_add(1, Ordering::Relaxed);
        self.count(1, 1, u64::from(written), u64::from(!written));
    }

    fn count_route_request(&self, written: bool) {
        self.stats.route_requests.fetch_add(1, Ordering::Relaxed);
        self.count(1, 1, u64::from(written), u64::from(!written));
    }

    /// Changes `lease` (as last read) by `update` (`:me` is `owner`), if
    /// its owner and version are still as read; the lease after the change.
    async fn change_lease(
        &self,
        lease: &LeaseItem,
        update: &str,
        owner: &str,
        now: Timestamp,
    ) -> Result<Option<LeaseItem>> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s(lease_sk(lease.shard)))
            .condition_expression("#owner = :seen AND version = :version")
            .update_expression(update)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":seen", s(&lease.owner))
            .expression_attribute_values(":version", n(lease.version))
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":now", n(now.as_millis()));
        if update.contains(":one") {
            request = request.expression_attribute_values(":one", n(1));
        }
        let out = request.return_values(ReturnValue::AllNew).send().await;
        self.count_lease_request(true);
        match out {
            Ok(out) => {
                Ok(Some(item_lease(out.attributes.as_ref().ok_or_else(
                    || super::corrupt("lease update returned nothing"),
                )?)?))
            }
            Err(e) if conditional_failed(&e) => Ok(None),
            Err(e) => Err(aws(e)),
        }
    }

    /// The transaction item that makes a write require `fence`.
    pub(super) fn lease_check(&self, fence: &Fence) -> Result<TransactWriteItem> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s(lease_sk(fence.shard)))
            .condition_expression("#owner = :me AND version = :version")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":me", s(&fence.owner))
            .expression_attribute_values(":version", n(fence.version))
            .build()
            .map_err(built)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// Whether `fence` still holds (strongly consistent).
    pub(super) async fn lease_holds(&self, fence: &Fence) -> Result<bool> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s(lease_sk(fence.shard)))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        self.count_lease_request(false);
        Ok(match out.item {
            Some(item) => {
                let lease = item_lease(&item)?;
                lease.owner == fence.owner && lease.version == fence.version
            }
            None => false,
        })
    }
}

#[async_trait]
impl ClusterTable for DynamoStore {
    fn shards(&self) -> u32 {
        self.shards
    }

    /// Records the shard count in the table, or checks it against the one
    /// recorded: replicas that split watches differently would lose some.
    async fn ensure_shards(&self) -> Result<()> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(CLUSTER_PK))
            .item("sk", s("META"))
            .item("shards", n(self.shards))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        self.count_lease_request(true);
        match put {
            Ok(_) => Ok(()),
            Err(e) if conditional_failed(&e) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(CLUSTER_PK))
                    .key("sk", s("META"))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(aws)?;
                self.count_lease_request(false);
                let recorded: u32 = out
                    .item
                    .as_ref()
                    .map(|item| get_n(item, "shards"))
                    .transpose()?
                    .unwrap_or(self.shards);
                if recorded != self.shards {
                    return Err(StoreError::Corrupt(format!(
                        "the table {} is split into {recorded} shards, not {}: \
                         every replica must run with --shards {recorded}",
                        self.table, self.shards
                    )));
                }
                Ok(())
            }
            Err(e) => Err(aws(e)),
        }
    }

    /// Every lease and replica item (one strongly consistent Query).
    async fn cluster_view(&self) -> Result<ClusterView> {
        let mut view = ClusterView::default();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(CLUSTER_PK))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(aws)?;
            self.count_lease_request(false);
            for item in out.items.unwrap_or_default() {
                let sk = get_s(&item, "sk")?;
                if sk.starts_with("LEASE#") {
                    view.leases.push(item_lease(&item)?);
                } else if let Some(id) = sk.strip_prefix("REPLICA#") {
                    view.replicas.push(item_replica(id, &item)?);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(view),
            }
        }
    }

    /// Creates `shard`'s lease, free, unless it exists.
    async fn create_lease(&self, shard: u32) -> Result<()> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(CLUSTER_PK))
            .item("sk", s(lease_sk(shard)))
            .item("owner", s(""))
            .item("version", n(0))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        self.count_lease_request(true);
        match put {
            Ok(_) => Ok(()),
            Err(e) if conditional_failed(&e) => Ok(()),
            Err(e) => Err(aws(e)),
        }
    }

    /// Takes `seen` (free, expired or stolen) for `me`, if its owner and
    /// version are still as read (two takers cannot both win); the new
    /// version fences off the old owner. `None` when someone else moved first.
    async fn take_lease(
        &self,
        seen: &LeaseItem,
        me: &str,
        now: Timestamp,
    ) -> Result<Option<LeaseItem>> {
        self.change_lease(
            seen,
            "SET #owner = :me, version = version + :one, taken_at = :now",
            me,
            now,
        )
        .await
    }

    /// Gives up a lease held by `lease.owner`, so another replica takes it at once.
    async fn release_lease(&self, lease: &LeaseItem, now: Timestamp) -> Result<()> {
        self.change_lease(lease, "SET #owner = :me, taken_at = :now", "", now)
            .await
            .map(|_| ())
    }

    /// Writes `replica`'s heartbeat and how far its queues have settled
    /// (its `routes` are written by [`Self::ack_routes`] alone).
    async fn beat(&self, replica: &ReplicaItem, now: Timestamp) -> Result<()> {
        let expires = now.plus(REPLICA_ITEM_LIFETIME).as_millis() / 1000;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s(format!("REPLICA#{}", replica.id)))
            .update_expression(
                "SET heartbeat = :heartbeat, settled = :settled, visibility_ms = :visibility, \
                 beat_at = :now, #ttl = :expires",
            )
            .expression_attribute_names("#ttl", super::TTL_ATTRIBUTE)
            .expression_attribute_values(":heartbeat", n(replica.heartbeat))
            .expression_attribute_values(":settled", n(replica.settled.as_millis()))
            .expression_attribute_values(":visibility", n(replica.visibility.as_millis()))
            .expression_attribute_values(":now", n(now.as_millis()))
            .expression_attribute_values(":expires", n(expires))
            .send()
            .await
            .map_err(aws)?;
        self.count_lease_request(true);
        Ok(())
    }

    /// Bumps the route version after a route item was written; the version
    /// after the bump (a replica that loaded it routes to that watch).
    async fn bump_routes(&self) -> Result<u64> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s("ROUTES"))
            .update_expression("ADD version :one")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        self.count_route_request(true);
        let out = out.map_err(aws)?;
        let attributes = out
            .attributes
            .as_ref()
            .ok_or_else(|| super::corrupt("route version update returned nothing"))?;
        get_n(attributes, "version")
    }

    /// The route version (strongly consistent: a version read after a bump
    /// returned is at least that bump's).
    async fn routes_version(&self) -> Result<u64> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s("ROUTES"))
            .consistent_read(true)
            .send()
            .await;
        self.count_route_request(false);
        Ok(out
            .map_err(aws)?
            .item
            .as_ref()
            .map_or(0, |item| optional_n(item, "version")))
    }

    /// Records in `replica`'s item that it has loaded the route items of
    /// `version` (nothing when the item is gone: it left).
    async fn ack_routes(&self, replica: &str, version: u64) -> Result<()> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s(format!("REPLICA#{replica}")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET #routes = :version")
            .expression_attribute_names("#routes", "routes")
            .expression_attribute_values(":version", n(version))
            .send()
            .await;
        self.count_route_request(true);
        match out {
            Ok(_) => Ok(()),
            Err(e) if conditional_failed(&e) => Ok(()),
            Err(e) => Err(aws(e)),
        }
    }

    /// Every replica item (one strongly consistent Query), for the route
    /// versions they acknowledged.
    async fn replicas(&self) -> Result<Vec<ReplicaItem>> {
        let items = self
            .query_counted(
                None,
                "pk = :pk AND begins_with(sk, :replica)",
                vec![(":pk", s(CLUSTER_PK)), (":replica", s("REPLICA#"))],
                Some(&self.stats.route_requests),
            )
            .await?;
        let mut replicas = Vec::new();
        for item in &items {
            if let Some(id) = get_s(item, "sk")?.strip_prefix("REPLICA#") {
                replicas.push(item_replica(id, item)?);
            }
        }
        Ok(replicas)
    }

    /// Removes `replica`'s heartbeat item: the others stop counting it as
    /// live at once (it released its leases and its queues are drained).
    async fn leave(&self, replica: &str) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(CLUSTER_PK))
            .key("sk", s(format!("REPLICA#{replica}")))
            .send()
            .await
            .map_err(aws)?;
        self.count_lease_request(true);
        Ok(())
    }

    /// The watches created from `since` on (by their creator's clock), read
    /// strongly consistent from their route items.
    async fn routes_since(&self, since: Timestamp, until: Timestamp) -> Result<Vec<RouteEntry>> {
        let (first, last) = (
            since.as_millis().div_euclid(60_000),
            until.as_millis().div_euclid(60_000),
        );
        let mut out = Vec::new();
        for minute in first..=last.max(first) {
            let items = self
                .query_counted(
                    None,
                    "pk = :pk AND sk >= :since",
                    vec![
                        (":pk", s(format!("R#{minute}"))),
                        (":since", s(format!("{:013}", since.as_millis().max(0)))),
                    ],
                    Some(&self.stats.route_requests),
                )
                .await?;
            for item in &items {
                let tenant: TenantId = super::stored(get_s(item, "tenant")?)?;
                let id: WatchId = super::stored(get_s(item, "watch_id")?)?;
                out.push(RouteEntry {
                    key: WatchKey { tenant, id },
                    source: super::item_source(item)?,
                    marker: item.get("marker").and_then(|v| v.as_s().ok()).cloned(),
                    created_at: Timestamp::from_millis(get_n(item, "created_at")?),
                });
            }
        }
        Ok(out)
    }

    /// The live watches of one shard (from the eventually consistent `live` index).
    async fn live_in_shard(&self, shard: u32) -> Result<Vec<Watch>> {
        let items = self
            .query_all(
                Some(super::LIVE_INDEX),
                "live_shard = :shard",
                vec![(":shard", s(format!("LIVE#{shard}")))],
            )
            .await?;
        items.iter().map(item_watch).collect()
    }
}
