//! The gRPC surface: the two tonic services ([`WatchApi`], [`IngestApi`]).
//! Each call takes its tenant from the auth layer, converts the request to
//! domain values (`from_proto`: INVALID_ARGUMENT naming the field), calls
//! [`Service`], and converts the result back (`to_proto`). No decisions are
//! made here, and no raw protobuf value reaches the domain.

mod from_proto;
mod to_proto;

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use streamwatch::v1::{
    self, ingest_service_server::IngestService, watch_service_server::WatchService,
};
use tonic::{Request, Response, Status};

pub use self::{
    from_proto::{MAX_NOTIFY_TARGETS, MAX_TARGET_BYTES, policy_from_proto, start_from_proto},
    to_proto::{
        delivery_to_proto, event_to_proto, objects_page_token, policy_to_proto, watch_to_proto,
    },
};
use self::{
    from_proto::{objects_after, replay_source, watch_id},
    to_proto::{object_to_proto, proto_timestamp, signed_duration},
};
use crate::{
    auth::Credential,
    clock::Timestamp,
    error::Error,
    service::{ListObjects, ListWatches, Service},
    telemetry::{self, IncomingTrace},
    watch::{self, MAX_REASON_BYTES, TenantId, WatchId, WatchState},
};

#[derive(Clone)]
pub struct WatchApi {
    service: Arc<Service>,
}

#[derive(Clone)]
pub struct IngestApi {
    service: Arc<Service>,
}

impl WatchApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

impl IngestApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

fn tenant<T>(request: &Request<T>) -> Result<TenantId, Status> {
    // The auth layer always sets it; its absence is a wiring bug, not the caller's.
    let tenant = request
        .extensions()
        .get::<TenantId>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no tenant"))?;
    telemetry::record_tenant(tenant.as_str());
    Ok(tenant)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send + 'static>>;

/// `events` until they end or `revoked` resolves; then one UNAUTHENTICATED
/// and the end.
fn until_revoked<S>(
    events: S,
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> impl Stream<Item = Result<v1::WatchEvent, Status>> + Send + 'static
where
    S: Stream<Item = Result<v1::WatchEvent, Status>> + Send + Unpin + 'static,
{
    futures::stream::unfold(Some((events, revoked)), |state| async move {
        let (mut events, mut revoked) = state?;
        tokio::select! {
            biased;
            () = &mut revoked => Some((
                Err(Status::unauthenticated("the credential of this stream was revoked")),
                None,
            )),
            item = events.next() => item.map(|item| (item, Some((events, revoked)))),
        }
    })
}

#[tonic::async_trait]
impl WatchService for WatchApi {
    async fn start_watch(
        &self,
        request: Request<v1::StartWatchRequest>,
    ) -> Result<Response<v1::StartWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let trace = telemetry::current_trace(request.extensions().get::<IncomingTrace>());
        let start = start_from_proto(request.get_ref(), trace)?;
        let (watch, created) = self.service.start_watch(&tenant, start).await?;
        telemetry::record_watch(watch.id.as_str());
        Ok(Response::new(v1::StartWatchResponse {
            watch: Some(watch_to_proto(&watch)),
            created,
        }))
    }

    async fn get_watch(
        &self,
        request: Request<v1::GetWatchRequest>,
    ) -> Result<Response<v1::GetWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let id = watch_id(&request.get_ref().watch_id)?;
        let watch = self.service.get_watch(&tenant, &id).await?;
        let deliveries = self.service.deliveries(&watch).await?;
        let mut watch = watch_to_proto(&watch);
        watch.deliveries = deliveries.iter().map(delivery_to_proto).collect();
        Ok(Response::new(v1::GetWatchResponse { watch: Some(watch) }))
    }

    async fn list_watches(
        &self,
        request: Request<v1::ListWatchesRequest>,
    ) -> Result<Response<v1::ListWatchesResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let state = match v1::WatchState::try_from(r.state) {
            Ok(v1::WatchState::Unspecified) => None,
            Ok(v1::WatchState::Active) => Some(WatchState::Active),
            Ok(v1::WatchState::Completed) => Some(WatchState::Completed),
            Ok(v1::WatchState::TimedOut) => Some(WatchState::TimedOut),
            Ok(v1::WatchState::Cancelled) => Some(WatchState::Cancelled),
            Ok(v1::WatchState::Failed) => Some(WatchState::Failed),
            Err(_) => {
                return Err(Error::invalid("state", format!("unknown value {}", r.state)).into());
            }
        };
        let labels: watch::Labels = r.labels.clone().into_iter().collect();
        watch::validate_labels("labels", &labels)?;
        let page_token = match r.page_token.as_str() {
            "" => None,
            token => Some(WatchId::parse("page_token", token)?),
        };
        let list = ListWatches {
            state,
            labels,
            page_size: r.page_size as usize,
            page_token,
        };
        let (watches, next) = self.service.list_watches(&tenant, list).await?;
        Ok(Response::new(v1::ListWatchesResponse {
            watches: watches.iter().map(watch_to_proto).collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel_watch(
        &self,
        request: Request<v1::CancelWatchRequest>,
    ) -> Result<Response<v1::CancelWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = watch_id(&r.watch_id)?;
        if r.reason.len() > MAX_REASON_BYTES {
            return Err(Error::invalid(
                "reason",
                format!("must be at most {MAX_REASON_BYTES} bytes"),
            )
            .into());
        }
        let watch = self
            .service
            .cancel_watch(&tenant, &id, r.reason.clone())
            .await?;
        Ok(Response::new(v1::CancelWatchResponse {
            watch: Some(watch_to_proto(&watch)),
        }))
    }

    async fn list_watch_objects(
        &self,
        request: Request<v1::ListWatchObjectsRequest>,
    ) -> Result<Response<v1::ListWatchObjectsResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = watch_id(&r.watch_id)?;
        let list = ListObjects {
            generation: r.generation,
            page_size: r.page_size as usize,
            after: objects_after(&r.page_token)?,
        };
        let (objects, next) = self.service.list_objects(&tenant, &id, list).await?;
        Ok(Response::new(v1::ListWatchObjectsResponse {
            objects: objects.iter().map(object_to_proto).collect(),
            next_page_token: next.as_deref().map(objects_page_token).unwrap_or_default(),
        }))
    }

    async fn replay_watch(
        &self,
        request: Request<v1::ReplayWatchRequest>,
    ) -> Result<Response<v1::ReplayWatchResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let source = replay_source(r)?;
        if r.policies.len() > crate::service::MAX_REPLAY_POLICIES {
            return Err(Error::invalid(
                "policies",
                format!(
                    "has {} policies; at most {}",
                    r.policies.len(),
                    crate::service::MAX_REPLAY_POLICIES
                ),
            )
            .into());
        }
        let mut extra = Vec::with_capacity(r.policies.len());
        for (i, p) in r.policies.iter().enumerate() {
            let field = format!("policies[{i}]");
            let mut policy = policy_from_proto(Some(p))
                .and_then(|p| p.validate().map(|()| p))
                .map_err(|e| match e {
                    Error::InvalidArgument {
                        field: inner,
                        message,
                    } => Error::invalid(
                        &format!("{field}.{}", inner.trim_start_matches("policy.")),
                        message,
                    ),
                    other => other,
                })?;
            policy.notify = Default::default();
            policy.late_window = Some(crate::replay::LATE_WINDOW);
            extra.push((field, policy));
        }
        let (history, replayed) = self.service.replay(&tenant, source, extra).await?;
        let last = history.last_created();
        let after_last =
            |t: Timestamp| signed_duration(t.as_millis() - last.map_or(0, Timestamp::as_millis));
        Ok(Response::new(v1::ReplayWatchResponse {
            objects: history.objects(),
            started: Some(proto_timestamp(history.start)),
            last_created: last.map(proto_timestamp),
            outcomes: replayed
                .iter()
                .map(|r| v1::ReplayOutcome {
                    name: r.name.clone(),
                    policy: Some(policy_to_proto(&r.policy)),
                    completed: r.outcome.final_completion.is_some(),
                    early: r.outcome.early(&history),
                    first_completion: r.outcome.first_completion.map(after_last),
                    first_completion_objects: r.outcome.first_completion_objects,
                    reopens: r.outcome.reopens,
                    delay: r.outcome.final_completion.map(after_last),
                    listings: r.outcome.listings,
                    list_requests: r.outcome.list_requests,
                })
                .collect(),
        }))
    }

    type StreamWatchEventsStream = EventStream;

    async fn stream_watch_events(
        &self,
        request: Request<v1::StreamWatchEventsRequest>,
    ) -> Result<Response<Self::StreamWatchEventsStream>, Status> {
        let tenant = tenant(&request)?;
        let r = request.get_ref();
        let id = watch_id(&r.watch_id)?;
        let credential = request
            .extensions()
            .get::<Credential>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no credential"))?;
        let (watch, events) = self.service.subscribe(&tenant, &id, r.after_seq).await?;
        let trace = watch.trace;
        let events = events.map(move |item| {
            item.map(|e| event_to_proto(&e, &trace))
                .map_err(Status::from)
        });
        let revoked = Box::pin(self.service.tenants().revoked(credential, tenant));
        Ok(Response::new(Box::pin(until_revoked(events, revoked))))
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest_s3_events(
        &self,
        request: Request<v1::IngestS3EventsRequest>,
    ) -> Result<Response<v1::IngestS3EventsResponse>, Status> {
        let tenant = tenant(&request)?;
        let report = self
            .service
            .ingest(&tenant, &request.get_ref().documents)
            .await?;
        Ok(Response::new(v1::IngestS3EventsResponse {
            records: report.records,
            matched: report.matched,
            counted: report.counted,
            duplicates: report.duplicates,
            ignored: report.ignored,
            rejected: report
                .rejected
                .into_iter()
                .map(|(index, reason)| v1::RejectedDocument { index, reason })
                .collect(),
        }))
    }
}
