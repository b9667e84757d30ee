//! Counting the calls open on each connection ([`CountCallsLayer`]): a call
//! is open from its request until its response body ends or is dropped, so
//! [`super::Connection`] knows when it has been idle. It only counts: it
//! must never hold up or change a call.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use super::connection::{ConnectionInfo, ConnectionState};

/// Counts the calls open on each connection (see [`Connection`](super::Connection)): a call is
/// open from its request until its response body ends or is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountCallsLayer;

impl<S> tower::Layer<S> for CountCallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountCalls { inner }
    }
}

/// The service [`CountCallsLayer`] wraps around the server's services.
#[derive(Clone, Debug)]
pub struct CountCalls<S> {
    inner: S,
}

/// One open call: counted from its creation to its drop.
pub(super) struct OpenCall(Arc<ConnectionState>);

impl OpenCall {
    pub(super) fn open(state: Arc<ConnectionState>) -> Self {
        state.calls.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        // Idle since now, written before the count drops: whoever sees no
        // call open also sees when the last one ended.
        self.0.mark_idle();
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CallBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| OpenCall::open(info.state.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CallBody { body, call }))
        })
    }
}

/// A response body that keeps its call open until it ends.
pub struct CallBody<B> {
    body: B,
    call: Option<OpenCall>,
}

impl<B> http_body::Body for CallBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.call = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
