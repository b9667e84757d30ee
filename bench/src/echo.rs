//! The bare tonic server the RPC benchmark compares with: the same generated
//! `WatchService`, answering GetWatch with a fixed response (the bytes of a
//! real GetWatch answer) and nothing else: no auth, no store, no routing.

use std::{net::SocketAddr, pin::Pin};

use clap::Args;
use prost::Message;
use streamwatch::v1::{
    self as v1,
    watch_service_server::{WatchService, WatchServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Clone, Debug, Args)]
pub struct EchoArgs {
    #[arg(long)]
    listen: SocketAddr,
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
    tonic::transport::Server::builder()
        .add_service(WatchServiceServer::new(Echo { response }))
        .serve(args.listen)
        .await?;
    Ok(())
}
