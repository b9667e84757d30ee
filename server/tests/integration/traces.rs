//! Traces end to end: the real OTLP exporter sends the server's spans to an
//! OTLP receiver (the `opentelemetry-proto` TraceService) running in this
//! test; calls made under a caller's `traceparent` come out as server spans
//! of that trace, the completion links to the StartWatch span, and every
//! event carries the watch's trace context.
//!
//! One test per file: the exporter hangs off the process-wide subscriber.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use streamwatch_client::{Client, ConnectOptions, proto as v1};
use streamwatch_testkit::{ACME_TOKEN, TestServer, begin, created, read_until, start_request};
use tokio_stream::wrappers::TcpListenerStream;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const LIMIT: Duration = Duration::from_secs(10);

/// Every span exported to it, with its service name.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a).to_owned())
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(a: &KeyValue) -> &str {
    match a.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s,
        _ => "",
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("span {} has no string {key}: {other:?}", span.name),
    }
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("span {} has no integer {key}: {other:?}", span.name),
    }
}

fn one<'a>(spans: &'a [(String, Span)], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "spans named {name}: {found:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_callers_trace_and_completion_links_to_start() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let telemetry = streamwatch_server::telemetry::init_with(
        streamwatch_server::telemetry::LogFormat::Text,
        Some(format!("http://{otlp}")),
    )
    .expect("exporter");
    assert!(telemetry.exporting());

    let server = TestServer::start_with_tenants().await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let mut client = Client::connect_with(
        server.endpoint(),
        ConnectOptions::new()
            .token(ACME_TOKEN)
            .trace_context(&caller, "vendor=opaque"),
    )
    .await
    .unwrap();
    let policy = v1::Policy {
        rule: Some(v1::policy::Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: 1,
            quiet_window: None,
        })),
        ..Default::default()
    };
    let watch = begin(&mut client, start_request("acme-lake", "run/", policy)).await;
    let mut stream = client.events(&watch.watch_id, 0).await.unwrap();
    client
        .ingest_s3_events(vec![created("acme-lake", &["run/1"])])
        .await
        .unwrap();
    let events = read_until(&mut stream, LIMIT, |e| e.kind_name() == "completed").await;
    let bad = client.get_watch("not-a-watch-id").await;
    assert!(bad.is_err());

    // The export runs on the runtime's threads; flushing blocks one.
    let telemetry = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    })
    .await
    .unwrap();
    let spans = receiver.spans.lock().unwrap().clone();
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "streamwatch-server"),
        "service name"
    );

    // StartWatch: a server span, child of the caller's span, in its trace.
    let start = one(&spans, "streamwatch.v1.WatchService/StartWatch");
    assert_eq!(start.kind, SpanKind::Server as i32);
    assert_eq!(hex::encode(&start.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&start.parent_span_id), CALLER_SPAN);
    assert_eq!(str_attr(start, "tenant"), "acme");
    assert_eq!(str_attr(start, "watch_id"), watch.watch_id);
    assert_eq!(int_attr(start, "rpc.grpc.status_code"), 0);
    let start_span = hex::encode(&start.span_id);

    // The watch remembers the StartWatch span; every event carries it.
    let remembered = format!("00-{TRACE_ID}-{start_span}-01");
    assert_eq!(watch.traceparent, remembered);
    assert_eq!(watch.tracestate, "vendor=opaque");
    assert_eq!(
        events.iter().map(|e| e.kind_name()).collect::<Vec<_>>(),
        ["started", "progress", "completed"]
    );
    for e in &events {
        assert_eq!(e.traceparent, remembered, "event {}", e.seq);
        assert_eq!(e.tracestate, "vendor=opaque", "event {}", e.seq);
    }

    // Ingest: the RPC span, its batch span under it, the store write under that.
    let ingest = one(&spans, "streamwatch.v1.IngestService/IngestS3Events");
    assert_eq!(hex::encode(&ingest.parent_span_id), CALLER_SPAN);
    assert_eq!(str_attr(ingest, "tenant"), "acme");
    let batch = one(&spans, "ingest.batch");
    assert_eq!(batch.parent_span_id, ingest.span_id);
    assert_eq!(
        (
            int_attr(batch, "records"),
            int_attr(batch, "matched"),
            int_attr(batch, "counted"),
            int_attr(batch, "duplicates")
        ),
        (1, 1, 1, 0)
    );
    let record = one(&spans, "store.record");
    assert_eq!(record.parent_span_id, batch.span_id);
    assert_eq!(int_attr(record, "activities"), 1);

    // The completion decision links to StartWatch and says what it was decided on.
    let completion = one(&spans, "watch.completion");
    assert_eq!(completion.links.len(), 1, "{completion:#?}");
    assert_eq!(hex::encode(&completion.links[0].trace_id), TRACE_ID);
    assert_eq!(hex::encode(&completion.links[0].span_id), start_span);
    assert_eq!(str_attr(completion, "watch_id"), watch.watch_id);
    assert_eq!(str_attr(completion, "tenant"), "acme");
    assert_eq!(str_attr(completion, "policy"), "expected_count");
    assert_eq!(int_attr(completion, "object_count"), 1);
    assert!(!str_attr(completion, "last_activity").is_empty());
    assert!(!str_attr(completion, "reason").is_empty());
    // Its evaluation is the parent, linked the same way; its store write the child.
    let evaluation = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.span_id == completion.parent_span_id)
        .expect("the evaluation span");
    assert_eq!(evaluation.name, "observer.evaluate");
    assert_eq!(str_attr(evaluation, "to"), "COMPLETED");
    assert_eq!(hex::encode(&evaluation.links[0].span_id), start_span);
    assert!(
        spans
            .iter()
            .any(|(_, s)| s.name == "store.apply" && s.parent_span_id == completion.span_id),
        "the completing write is under the decision"
    );

    // A refused call: its code, and an error status.
    let get = one(&spans, "streamwatch.v1.WatchService/GetWatch");
    assert_eq!(int_attr(get, "rpc.grpc.status_code"), 3);
    assert_eq!(
        get.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    server.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();
}
