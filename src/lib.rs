//! The streamwatch gRPC contract, shared by the server and every client:
//! generated protobuf types, the descriptor set for reflection, the defaults
//! both sides agree on, and a `connect` helper. Nothing heavy lives here, so a
//! client links cheaply.

/// Generated protobuf and gRPC code for `streamwatch.v1`.
pub mod proto {
    // Generated code: its shapes follow the .proto, not our lint settings.
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("streamwatch.v1");
    }
}

pub use proto::v1;

impl v1::WatchEvent {
    /// The event's kind in snake case (`started`, `progress`, ..., `unknown`
    /// for a kind this version does not know).
    pub fn kind_name(&self) -> &'static str {
        use v1::watch_event::Kind;
        match &self.kind {
            Some(Kind::Started(_)) => "started",
            Some(Kind::Progress(_)) => "progress",
            Some(Kind::QuietTick(_)) => "quiet_tick",
            Some(Kind::Completed(_)) => "completed",
            Some(Kind::TimedOut(_)) => "timed_out",
            Some(Kind::Cancelled(_)) => "cancelled",
            Some(Kind::Reopened(_)) => "reopened",
            Some(Kind::DeliveryFailed(_)) => "delivery_failed",
            None => "unknown",
        }
    }
}

/// The encoded `FileDescriptorSet` of `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("streamwatch_descriptor");

/// The address the server listens on when none is given: loopback only.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:50051";
/// The endpoint clients use when none is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";
/// The metadata key carrying the caller's token, as `Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";
