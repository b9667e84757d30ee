//! The client: one connection to the server and a method per RPC, each
//! bounded by the request timeout, plus the helpers built on them (listing
//! every page, waiting for a watch to finish). Converts nothing beyond the
//! typed requests; answers are the protobuf messages.

use std::{future::Future, time::Duration};

use futures::StreamExt;
use streamwatch::v1::{
    self, ingest_service_client::IngestServiceClient, watch_service_client::WatchServiceClient,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    ConnectOptions, Error, ListFilter,
    connect::CallMetadata,
    events::{Backoff, EventStream, is_terminal},
};

type Svc = InterceptedService<Channel, CallMetadata>;

/// A connection to a streamwatch server. Cheap to clone: clones share the
/// connection.
#[derive(Clone)]
pub struct Client {
    watches: WatchServiceClient<Svc>,
    ingest: IngestServiceClient<Svc>,
    request_timeout: Option<Duration>,
    pub(crate) backoff: Backoff,
}

impl Client {
    /// Connects to `endpoint` (for example `http://127.0.0.1:50051`) with the
    /// default options: no token, the default timeouts.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(endpoint, ConnectOptions::default()).await
    }

    /// Connects to `endpoint` with `options` (token, TLS, timeouts, backoff).
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let channel = options
            .endpoint(&endpoint)?
            .connect()
            .await
            .map_err(|source| Error::Connect { endpoint, source })?;
        Self::from_channel(channel, options)
    }

    /// A client on a configured endpoint that connects on its first call.
    pub fn connect_lazy(endpoint: &str, options: ConnectOptions) -> Result<Self, Error> {
        let channel = options.endpoint(endpoint)?.connect_lazy();
        Self::from_channel(channel, options)
    }

    /// A client on a channel opened elsewhere (for example with `tonic::transport::Endpoint`).
    pub fn from_channel(channel: Channel, options: ConnectOptions) -> Result<Self, Error> {
        let metadata = options.metadata()?;
        Ok(Self {
            watches: WatchServiceClient::with_interceptor(channel.clone(), metadata.clone()),
            ingest: IngestServiceClient::with_interceptor(channel, metadata),
            request_timeout: options.request_timeout,
            backoff: options.backoff,
        })
    }

    /// Starts a watch: a [`crate::WatchRequest`], or a protobuf request.
    pub async fn start_watch(
        &mut self,
        request: impl Into<v1::StartWatchRequest>,
    ) -> Result<v1::StartWatchResponse, Error> {
        let call = self.watches.start_watch(request.into());
        bounded("StartWatch", self.request_timeout, call).await
    }

    pub async fn get_watch(&mut self, watch_id: &str) -> Result<v1::Watch, Error> {
        let call = self.watches.get_watch(v1::GetWatchRequest {
            watch_id: watch_id.to_owned(),
        });
        bounded("GetWatch", self.request_timeout, call)
            .await?
            .watch
            .ok_or(Error::MissingWatch { rpc: "GetWatch" })
    }

    /// One page of watches, as the protobuf request asks.
    pub async fn list_watches(
        &mut self,
        request: v1::ListWatchesRequest,
    ) -> Result<v1::ListWatchesResponse, Error> {
        let call = self.watches.list_watches(request);
        bounded("ListWatches", self.request_timeout, call).await
    }

    /// Every watch matching `filter`, newest first, following the pages.
    pub async fn list_all_watches(&mut self, filter: &ListFilter) -> Result<Vec<v1::Watch>, Error> {
        let mut watches = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self.list_watches(filter.page(page_token)).await?;
            watches.extend(page.watches);
            if page.next_page_token.is_empty() {
                return Ok(watches);
            }
            page_token = page.next_page_token;
        }
    }

    /// One page of the watch's manifest (the objects it counted, by key),
    /// as the protobuf request asks.
    pub async fn list_watch_objects(
        &mut self,
        request: v1::ListWatchObjectsRequest,
    ) -> Result<v1::ListWatchObjectsResponse, Error> {
        let call = self.watches.list_watch_objects(request);
        bounded("ListWatchObjects", self.request_timeout, call).await
    }

    /// What completion policies would have decided on a watch's objects, or
    /// on the objects given (see ReplayWatch).
    pub async fn replay_watch(
        &mut self,
        request: v1::ReplayWatchRequest,
    ) -> Result<v1::ReplayWatchResponse, Error> {
        let call = self.watches.replay_watch(request);
        bounded("ReplayWatch", self.request_timeout, call).await
    }

    /// Every object of the watch's manifest (of `generation`, or of all
    /// when 0), in key order, following the pages and calling `on_page`
    /// with each; nothing is kept in between.
    pub async fn for_each_watch_object<E: From<Error>>(
        &mut self,
        watch_id: &str,
        generation: u32,
        mut on_page: impl FnMut(Vec<v1::WatchObject>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut page_token = String::new();
        loop {
            let page = self
                .list_watch_objects(v1::ListWatchObjectsRequest {
                    watch_id: watch_id.to_owned(),
                    generation,
                    page_size: 0,
                    page_token,
                })
                .await?;
            on_page(page.objects)?;
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = page.next_page_token;
        }
    }

    /// Ends an ACTIVE watch with a CANCELLED event carrying `reason`.
    pub async fn cancel_watch(&mut self, watch_id: &str, reason: &str) -> Result<v1::Watch, Error> {
        let call = self.watches.cancel_watch(v1::CancelWatchRequest {
            watch_id: watch_id.to_owned(),
            reason: reason.to_owned(),
        });
        bounded("CancelWatch", self.request_timeout, call)
            .await?
            .watch
            .ok_or(Error::MissingWatch { rpc: "CancelWatch" })
    }

    /// One StreamWatchEvents call: the events with `seq > after_seq`, then
    /// live ones, until the server ends the stream or the connection drops.
    /// [`Client::subscribe`] resumes across drops.
    pub async fn events(
        &mut self,
        watch_id: &str,
        after_seq: u64,
    ) -> Result<tonic::Streaming<v1::WatchEvent>, Error> {
        let call = self
            .watches
            .stream_watch_events(v1::StreamWatchEventsRequest {
                watch_id: watch_id.to_owned(),
                after_seq,
            });
        bounded("StreamWatchEvents", self.request_timeout, call).await
    }

    /// The watch's events after `after_seq` until its stream ends, resuming
    /// from the last `seq` seen whenever the connection drops or the server
    /// restarts: every event once, in order, without gaps.
    pub fn subscribe(&self, watch_id: &str, after_seq: u64) -> EventStream {
        EventStream::new(self.clone(), watch_id.to_owned(), after_seq)
    }

    /// Records notification documents (S3 `Records`, SNS-wrapped or
    /// EventBridge, one document per string) into every watch that wants them.
    pub async fn ingest_s3_events(
        &mut self,
        documents: Vec<String>,
    ) -> Result<v1::IngestS3EventsResponse, Error> {
        let call = self
            .ingest
            .ingest_s3_events(v1::IngestS3EventsRequest { documents });
        bounded("IngestS3Events", self.request_timeout, call).await
    }

    /// Follows the watch until its first terminal event (COMPLETED,
    /// TIMED_OUT, CANCELLED) or the end of its stream, through dropped
    /// connections and restarts, and returns the watch as it is then.
    pub async fn wait_for_completion(&mut self, watch_id: &str) -> Result<v1::Watch, Error> {
        self.wait_for_completion_with(watch_id, |_| {}).await
    }

    /// [`Client::wait_for_completion`], calling `on_event` with each event.
    pub async fn wait_for_completion_with(
        &mut self,
        watch_id: &str,
        mut on_event: impl FnMut(&v1::WatchEvent),
    ) -> Result<v1::Watch, Error> {
        let mut events = self.subscribe(watch_id, 0);
        while let Some(event) = events.next().await {
            let event = event?;
            on_event(&event);
            if is_terminal(&event) {
                break;
            }
        }
        self.get_watch_retrying(watch_id).await
    }

    /// GetWatch, retried with the backoff while the server is unreachable.
    async fn get_watch_retrying(&mut self, watch_id: &str) -> Result<v1::Watch, Error> {
        let mut retry = self.backoff.start();
        loop {
            match self.get_watch(watch_id).await {
                Err(error) if error.is_retryable() => retry.wait(watch_id, error).await?,
                other => return other,
            }
        }
    }
}

/// Runs one call within `timeout` and unwraps its response.
async fn bounded<T>(
    rpc: &'static str,
    timeout: Option<Duration>,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Error> {
    let response = match timeout {
        Some(after) => tokio::time::timeout(after, call)
            .await
            .map_err(|_| Error::Timeout { rpc, after })?,
        None => call.await,
    };
    Ok(response?.into_inner())
}
