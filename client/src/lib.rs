//! Rust client for streamwatch: connects (optionally with a bearer token) and
//! calls the watch and ingest RPCs. [`Client::follow`] streams a watch's
//! events and resumes after a dropped connection from the last `seq` seen,
//! so a caller never misses or repeats an event.

use std::time::Duration;

use streamwatch::v1::{
    self, ingest_service_client::IngestServiceClient, watch_service_client::WatchServiceClient,
};
use tonic::{
    Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

pub use streamwatch::{DEFAULT_ENDPOINT, v1 as proto};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("the token is not valid ASCII metadata")]
    InvalidToken,
    #[error(transparent)]
    Status(#[from] Status),
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert(streamwatch::AUTHORIZATION_HEADER, token.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
pub struct Client {
    watches: WatchServiceClient<Svc>,
    ingest: IngestServiceClient<Svc>,
}

impl Client {
    /// Connects to `endpoint` (for example `http://127.0.0.1:50051`).
    pub async fn connect(endpoint: impl Into<String>, token: Option<&str>) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|source| Error::Connect {
                endpoint: endpoint.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|source| Error::Connect { endpoint, source })?;
        Self::from_channel(channel, token)
    }

    pub fn from_channel(channel: Channel, token: Option<&str>) -> Result<Self, Error> {
        let bearer = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::InvalidToken)?,
            ),
            None => None,
        };
        let bearer = Bearer(bearer);
        Ok(Self {
            watches: WatchServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            ingest: IngestServiceClient::with_interceptor(channel, bearer),
        })
    }

    pub async fn start_watch(
        &mut self,
        request: v1::StartWatchRequest,
    ) -> Result<v1::StartWatchResponse, Status> {
        Ok(self.watches.start_watch(request).await?.into_inner())
    }

    pub async fn get_watch(&mut self, watch_id: &str) -> Result<v1::Watch, Status> {
        let response = self
            .watches
            .get_watch(v1::GetWatchRequest {
                watch_id: watch_id.to_owned(),
            })
            .await?;
        response
            .into_inner()
            .watch
            .ok_or_else(|| Status::internal("GetWatch answered without a watch"))
    }

    pub async fn list_watches(
        &mut self,
        request: v1::ListWatchesRequest,
    ) -> Result<v1::ListWatchesResponse, Status> {
        Ok(self.watches.list_watches(request).await?.into_inner())
    }

    pub async fn cancel_watch(
        &mut self,
        watch_id: &str,
        reason: &str,
    ) -> Result<v1::Watch, Status> {
        let request = v1::CancelWatchRequest {
            watch_id: watch_id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self.watches.cancel_watch(request).await?;
        response
            .into_inner()
            .watch
            .ok_or_else(|| Status::internal("CancelWatch answered without a watch"))
    }

    /// One StreamWatchEvents call: events with `seq > after_seq`, then live.
    pub async fn events(
        &mut self,
        watch_id: &str,
        after_seq: u64,
    ) -> Result<tonic::Streaming<v1::WatchEvent>, Status> {
        let request = v1::StreamWatchEventsRequest {
            watch_id: watch_id.to_owned(),
            after_seq,
        };
        Ok(self
            .watches
            .stream_watch_events(request)
            .await?
            .into_inner())
    }

    pub async fn ingest_s3_events(
        &mut self,
        documents: Vec<String>,
    ) -> Result<v1::IngestS3EventsResponse, Status> {
        Ok(self
            .ingest
            .ingest_s3_events(v1::IngestS3EventsRequest { documents })
            .await?
            .into_inner())
    }

    /// Follows a watch's events from `after_seq` until its stream ends,
    /// calling `on_event` for each. A stream that breaks with UNAVAILABLE
    /// (server restart, dropped connection) is reopened after `retry` from the
    /// last `seq` seen. Returns the last `seq` delivered.
    pub async fn follow(
        &mut self,
        watch_id: &str,
        mut after_seq: u64,
        retry: Duration,
        mut on_event: impl FnMut(&v1::WatchEvent),
    ) -> Result<u64, Status> {
        loop {
            let mut stream = match self.events(watch_id, after_seq).await {
                Ok(stream) => stream,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(retry).await;
                    continue;
                }
                Err(status) => return Err(status),
            };
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        if event.seq > after_seq {
                            after_seq = event.seq;
                            on_event(&event);
                        }
                    }
                    Ok(None) => return Ok(after_seq),
                    Err(status) if status.code() == tonic::Code::Unavailable => break,
                    Err(status) => return Err(status),
                }
            }
            tokio::time::sleep(retry).await;
        }
    }
}
