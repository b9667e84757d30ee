//! The bare tonic server the RPC benchmark compares with: the same generated
//! `WatchService`, answering GetWatch with a fixed response (the bytes of a
//! real GetWatch answer) and nothing else: no auth, no store, no routing.
//! Like the real server it reports the address it bound (`--address-file`)
//! and answers health checks, so the test kit starts both the same way.

use std::{net::SocketAddr, path::PathBuf, pin::Pin};

use clap::Args;
use prost::Message;
use streamwatch::v1::{
    self as v1,
    watch_service_server::{WatchService, WatchServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Clone, Debug, Args)]
pub struct EchoArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write `grpc=ADDRESS` to this file once serving
    #[arg(long, value_name = "FILE")]
    address_file: Option<PathBuf>,
    /// The GetWatchResponse to answer with, protobuf bytes in hex
    #[arg(long)]
    response: String,
}

struct Echo {
    response: v1::GetWatchResponse,
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl WatchService for Echo {
    async fn get_watch(
        &self,
        _request: Request<v1::GetWatchRequest>,
    ) -> Result<Response<v1::GetWatchResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }

    async fn start_watch(
        &self,
        _request: Request<v1::StartWatchRequest>,
    ) -> Result<Response<v1::StartWatchResponse>, Status> {
        Err(Status::unimplemented("echo answers GetWatch only"))
    }

    async fn list_watches(
        &self,
        _request: Request<v1::ListWatchesRequest>,
    ) -> Result<Response<v1::ListWatchesResponse>, Status> {
        Err(Status::unimplemented("echo answers GetWatch only"))
    }

    async fn cancel_watch(
        &self,
        _request: Request<v1::CancelWatchRequest>,
    ) -> Result<Response<v1::CancelWatchResponse>, Status> {
        Err(Status::unimplemented("echo answers GetWatch only"))
    }

    async fn list_watch_objects(
        &self,
        _request: Request<v1::ListWatchObjectsRequest>,
    ) -> Result<Response<v1::ListWatchObjectsResponse>, Status> {
        Err(Status::unimplemented("echo answers GetWatch only"))
    }

    async fn replay_watch(
        &self,
        _request: Request<v1::ReplayWatchRequest>,
    ) -> Result<Response<v1::ReplayWatchResponse>, Status> {
        Err(Status::unimplemented("echo answers GetWatch only"))
    }

    type StreamWatchEventsStream = EventStream;

    async fn stream_watch_events(
        &self,
        _request: Request<v1::StreamWatchEventsRequest>,
    ) -> Result<Response<Self::StreamWatchEventsStream>, Status> {
        Err(Status::unimplemented("echo answers GetWatch only"))
    }
}

pub async fn serve(args: EchoArgs) -> anyhow::Result<()> {
    let response = v1::GetWatchResponse::decode(hex::decode(&args.response)?.as_slice())?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let (_health, health_service) = tonic_health::server::health_reporter();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(WatchServiceServer::new(Echo { response }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    if let Some(path) = &args.address_file {
        // Whole or not at all: a reader never sees half of it.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, format!("grpc={addr}\n"))?;
        std::fs::rename(&partial, path)?;
    }
    server.await?;
    Ok(())
}
