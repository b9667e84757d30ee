//! Logs and traces. Owns the `tracing` subscriber (text or JSON lines to
//! stderr, filtered by `RUST_LOG`, default `info`), the OpenTelemetry trace
//! exporter (OTLP over gRPC, configured by the standard `OTEL_*` variables;
//! none when no endpoint is set), and W3C trace context at the edge:
//! [`RpcLayer`] makes every RPC a server span parented on the caller's
//! `traceparent` and counts it in [`Metrics`] (and, as the one layer that
//! sees every response, answers a request that does not decode with
//! INVALID_ARGUMENT).
//!
//! It must never log request metadata values (bearer tokens travel there) and
//! never block the request path on export: finished spans go to a bounded
//! batch queue drained off the request path (a full queue drops spans).

use std::{
    io::IsTerminal,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Instrument, Level, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::{metrics::Metrics, watch::TraceContext};

/// The service name traces carry when `OTEL_SERVICE_NAME` is not set.
pub const SERVICE_NAME: &str = "streamwatch-server";

/// Where spans go: the OTLP/gRPC endpoint from the environment, if any.
///
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`)
/// turns the exporter on; `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn it off again.
pub fn otlp_endpoint_from_env() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The installed exporter; flush it before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now. Blocks: call it off the async runtime
    /// (`spawn_blocking`), whose threads the exporter needs.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "cannot export the last spans");
        }
    }

    /// Exports what is left and stops the exporter (blocking, as [`Self::flush`]).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "cannot export the last spans");
        }
    }
}

/// Why telemetry cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP span exporter for `endpoint` cannot be built (a malformed endpoint).
    #[error("cannot set up the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Installs the subscriber with the exporter the environment asks for.
/// Must run inside the tokio runtime (the gRPC exporter lives on it).
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    init_with(format, otlp_endpoint_from_env())
}

/// Installs the subscriber, exporting spans to `otlp_endpoint` when given.
/// A second call in one process (tests start many servers) keeps the first
/// subscriber and exports nothing.
pub fn init_with(
    format: LogFormat,
    otlp_endpoint: Option<String>,
) -> Result<Telemetry, TelemetryError> {
    let (subscriber, telemetry) = subscriber(format, otlp_endpoint)?;
    if subscriber.try_init().is_err() {
        telemetry.shutdown();
        return Ok(Telemetry { provider: None });
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if telemetry.exporting() {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(telemetry)
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The subscriber [`init_with`] installs, not installed (for a thread-local
/// default, as the tracing cost benchmark sets one per runtime).
pub fn subscriber(
    format: LogFormat,
    otlp_endpoint: Option<String>,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, Telemetry), TelemetryError> {
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours for a terminal only, not for files and log collectors.
    let ansi = std::io::stderr().is_terminal();
    let fmt_layer = if format == LogFormat::Json {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(logs)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(logs)
            .boxed()
    };
    let (otel_layer, provider) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let mut resource = Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name(SERVICE_NAME);
            }
            // The batch processor runs on its own thread with a bounded queue
            // (OTEL_BSP_* variables): the request path only enqueues.
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SERVICE_NAME))
                // Our spans only: not the transport's, whatever RUST_LOG says.
                .with_filter(Targets::new().with_target("streamwatch_server", Level::INFO));
            (Some(layer), Some(provider))
        }
    };
    let subscriber = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer);
    Ok((subscriber, Telemetry { provider }))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.traceparent),
            "tracestate" => Some(&self.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl TraceContext {
    /// The span context this names, when it is a valid W3C `traceparent`.
    pub fn span_context(&self) -> Option<SpanContext> {
        let cx = TraceContextPropagator::new().extract(self);
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.clone())
    }

    fn of(sc: &SpanContext) -> Self {
        let mut out = TraceContext::default();
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        out
    }
}

/// The caller's trace context as it arrived (valid W3C headers only), in the
/// request's extensions.
#[derive(Clone, Debug, Default)]
pub struct IncomingTrace(pub TraceContext);

/// The trace context the current call runs under: its server span when spans
/// are exported, else what the caller sent.
pub fn current_trace(incoming: Option<&IncomingTrace>) -> TraceContext {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        return TraceContext::of(sc);
    }
    incoming.map(|i| i.0.clone()).unwrap_or_default()
}

// Numeric span fields are i64: the OpenTelemetry bridge exports u64 as text.

/// Records the tenant on the current RPC span.
pub fn record_tenant(tenant: &str) {
    tracing::Span::current().record("tenant", tenant);
}

/// Records the watch id on the current RPC span.
pub fn record_watch(id: &str) {
    tracing::Span::current().record("watch_id", id);
}

/// Links the current span to the StartWatch call of a watch.
pub fn link_to(span: &tracing::Span, trace: &TraceContext) {
    if let Some(sc) = trace.span_context() {
        span.add_link(sc);
    }
}

/// Ends `span`, keeping its OpenTelemetry context: work run under that
/// context ([`opentelemetry::trace::FutureExt::with_context`], outside any
/// `tracing` span) makes spans that are children of `span`, which has already
/// ended and is exported before anyone hears of that work's outcome.
pub fn ended(span: tracing::Span) -> opentelemetry::Context {
    span.context()
}

/// The tower layer in front of every gRPC service: one server span per call
/// (child of the caller's `traceparent`), its status code, and the RPC metrics.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The gRPC status code of a response: in its headers for an error (a
/// trailers-only response); a response that starts with data is OK so far.
fn status_code(headers: &http::HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A request whose protobuf does not decode (bad wire format, a string that
/// is not UTF-8) is the caller's fault: INVALID_ARGUMENT, not the INTERNAL
/// tonic answers with, so clients do not take it for a server failure.
fn blame_undecodable_requests(headers: &mut http::HeaderMap) {
    // grpc-message is percent-encoded; tonic's text for prost's errors.
    const UNDECODABLE: &[u8] = b"failed%20to%20decode%20Protobuf%20message";
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let undecodable = headers
        .get("grpc-message")
        .is_some_and(|m| m.as_bytes().starts_with(UNDECODABLE));
    if internal && undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/').to_owned();
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            tenant = Empty,
            watch_id = Empty,
        );
        let propagator = TraceContextPropagator::new();
        let parent = propagator.extract(&Headers(request.headers()));
        if parent.span().span_context().is_valid() {
            let mut incoming = TraceContext::default();
            propagator.inject_context(&parent, &mut incoming);
            request.extensions_mut().insert(IncomingTrace(incoming));
            // Fails only when no OpenTelemetry layer is installed: nothing to parent then.
            let _ = span.set_parent(parent);
        }
        let started = Instant::now();
        // The ready service answers this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let future = {
            let _entered = span.enter();
            inner.call(request)
        };
        Box::pin(
            async move {
                let mut result = future.await;
                if let Ok(response) = &mut result {
                    blame_undecodable_requests(response.headers_mut());
                }
                let code = match &result {
                    Ok(response) => status_code(response.headers()),
                    // The transport failed the call: UNKNOWN.
                    Err(_) => 2,
                };
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    span.record("otel.status_code", "ERROR");
                }
                metrics.rpc_finished(&path, code, started.elapsed());
                result
            }
            .instrument(span),
        )
    }
}
