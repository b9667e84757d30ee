//! What every test and benchmark of the workspace shares, so that each says
//! only what it proves:
//!
//! - [`server`]: the real server, in this process ([`TestServer`], on a
//!   loopback port the kernel picks, restartable on the same data file) or
//!   as the binary ([`ServerProcess`], which reports the addresses it bound
//!   through `--address-file`), each handed over once its health service
//!   answers; data directories, the test tenants and their tokens, a
//!   port that refuses connections.
//! - [`documents`]: notification documents as S3 delivers them (straight,
//!   wrapped by SNS, as EventBridge events, S3's test event).
//! - [`watches`]: requests, real clients' calls and what tests assert on events.
//! - [`wait`]: [`eventually`], a bounded wait for a state that only polling
//!   can see, and reading event streams to an event within a limit.
//! - [`aws`]: clients and resources on the AWS emulator, and
//!   [`require_emulator!`], which skips a test without one (fails it in CI).
//! - [`pki`] (feature `pki`): certificates made for a test.
//!
//! The kit never mocks the server or an AWS API, and never picks a port by
//! binding, dropping and reusing it. It is for other crates' integration
//! tests and benchmarks: a crate's unit tests link their own copy of the
//! crate, which the kit's types do not match.

pub mod aws;
pub mod documents;
#[cfg(feature = "pki")]
pub mod pki;
pub mod server;
pub mod wait;
pub mod watches;

pub use documents::*;
pub use server::*;
pub use wait::*;
pub use watches::*;
