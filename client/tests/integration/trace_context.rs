//! The W3C trace context a call carries: the library sends the current
//! OpenTelemetry context (or the one given in the options), the CLI the one
//! named by `TRACEPARENT`/`TRACESTATE`; the server keeps it with the watch
//! and stamps it on every event. (This server exports no spans, so the watch
//! keeps the caller's context as it came.)

use std::time::Duration;

use crate::cli::*;
#[cfg(feature = "otel")]
use opentelemetry::{
    Context,
    context::FutureExt,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use streamwatch_client::{Client, ConnectOptions, Error, WatchRequest};
use streamwatch_testkit::*;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[cfg(feature = "otel")]
#[tokio::test]
async fn the_current_opentelemetry_context_travels_with_each_call() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let caller = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "opaque")]).unwrap(),
    );
    let cx = Context::new().with_remote_span_context(caller);
    let watch = client
        .start_watch(WatchRequest::new("lake").quiet_period(Duration::from_secs(3600)))
        .with_context(cx)
        .await
        .unwrap()
        .watch
        .unwrap();
    assert_eq!(watch.traceparent, TRACEPARENT);
    assert_eq!(watch.tracestate, "vendor=opaque");

    // Every event of the watch carries it, whoever streams them.
    let mut events = client.events(&watch.watch_id, 0).await.unwrap();
    let started = events.message().await.unwrap().unwrap();
    assert_eq!(started.traceparent, TRACEPARENT);
    assert_eq!(started.tracestate, "vendor=opaque");

    // Outside that context, a call carries none.
    let plain = client
        .start_watch(WatchRequest::new("lake").quiet_period(Duration::from_secs(3600)))
        .await
        .unwrap()
        .watch
        .unwrap();
    assert_eq!(plain.traceparent, "");
}

#[tokio::test]
async fn the_cli_continues_the_trace_in_its_environment() {
    let server = TestServer::start().await;
    let run = server
        .cli()
        .env("TRACEPARENT", TRACEPARENT)
        .run(&["start", "lake", "--quiet-period", "1h", "-o", "json"])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.json_lines()[0]["watch_id"].as_str().unwrap().to_owned();
    let mut client = server.client().await;
    let watch = client.get_watch(&id).await.unwrap();
    assert_eq!(watch.traceparent, TRACEPARENT);

    let run = server
        .cli()
        .env("TRACEPARENT", "not-a-traceparent")
        .run(&["start", "lake", "--quiet-period", "1h"])
        .await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("traceparent"), "{run:?}");
}

#[tokio::test]
async fn a_malformed_trace_context_is_refused_before_connecting() {
    for (parent, state, named) in [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "",
            "traceparent",
        ),
        (
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "",
            "traceparent",
        ),
        (TRACEPARENT, "bad\nstate", "tracestate"),
    ] {
        let error = Client::connect_lazy(
            "http://127.0.0.1:1",
            ConnectOptions::new().trace_context(parent, state),
        )
        .err()
        .expect("refused");
        assert!(
            matches!(error, Error::InvalidTraceContext(n) if n == named),
            "{error}"
        );
    }
}
