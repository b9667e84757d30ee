//! What exporting traces costs: GetWatch throughput of two servers in this
//! process, side by side in one run, one exporting every span over OTLP/gRPC
//! (to an OTLP receiver in this process) and one exporting nothing.
//!
//! ```sh
//! cargo bench -p streamwatch-server --bench tracing_cost
//! ```
//!
//! Each server runs on its own tokio runtime whose threads carry their own
//! `tracing` subscriber (the one `streamwatch-server` installs, with and
//! without the exporter); the exporter's gRPC channel and the receiver run on
//! runtimes of their own, the clients on another: all share the machine's
//! CPUs, so the exporter's whole cost shows in the server's throughput. Rounds alternate
//! between the two servers so that noise from the rest of the machine falls
//! on both; the report gives the median requests/s of each and their ratio.
//! `STREAMWATCH_BENCH_QUICK=1` (or `--quick`) runs one short round per server
//! (CI checks the harness still runs).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use streamwatch_client::{Client, ConnectOptions, proto as v1};
use streamwatch_server::telemetry;
use streamwatch_testkit::{DataDir, TestServer};
use tokio::{net::TcpListener, runtime::Runtime};
use tokio_stream::wrappers::TcpListenerStream;

/// Counts the spans exported to it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A runtime whose threads log (and export) through `dispatch`.
fn runtime(name: &str, threads: usize, dispatch: Option<tracing::Dispatch>) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .on_thread_start(move || {
            if let Some(dispatch) = &dispatch {
                // The default for the thread's whole life: the guard is never dropped.
                std::mem::forget(tracing::dispatcher::set_default(dispatch));
            }
        })
        .build()
        .expect("a runtime")
}

struct Server {
    runtime: Runtime,
    endpoint: String,
    server: TestServer,
}

/// A server on its own runtime; its exporter's gRPC channel lives on `exports`
/// (a runtime's threads take their subscriber when they start, before the
/// exporter could be built on them).
fn start_server(
    name: &str,
    otlp: Option<String>,
    exports: &Runtime,
) -> anyhow::Result<(Server, telemetry::Telemetry)> {
    let (subscriber, telemetry) =
        exports.block_on(async { telemetry::subscriber(telemetry::LogFormat::Text, otlp) })?;
    let dispatch = tracing::Dispatch::new(subscriber);
    let runtime = runtime(name, 2, Some(dispatch));
    // Started on the server's runtime: it serves there.
    let server = runtime.block_on(TestServer::start_in(DataDir::new(), false));
    Ok((
        Server {
            runtime,
            endpoint: server.endpoint(),
            server,
        },
        telemetry,
    ))
}

/// GetWatch calls per second of `clients` concurrent callers over `run`.
async fn throughput(clients: &[(Client, String)], run: Duration) -> f64 {
    let deadline = Instant::now() + run;
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (client, id) in clients {
        let (mut client, id, calls) = (client.clone(), id.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                client.get_watch(&id).await.expect("GetWatch");
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await.expect("client task");
    }
    calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn connect(endpoint: &str, clients: usize) -> anyhow::Result<Vec<(Client, String)>> {
    // Each caller continues its own trace, as an instrumented caller would.
    let mut out = Vec::new();
    for i in 0..clients {
        let parent = format!("00-{:032x}-{:016x}-01", 0xabc0_0000 + i, 0x1000 + i);
        let mut client = Client::connect_with(
            endpoint.to_owned(),
            ConnectOptions::new().trace_context(parent, ""),
        )
        .await?;
        let watch = client
            .start_watch(v1::StartWatchRequest {
                bucket: "data-lake".into(),
                prefix: format!("bench-{i}/"),
                ..Default::default()
            })
            .await?
            .watch
            .expect("a watch");
        out.push((client, watch.watch_id));
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("STREAMWATCH_BENCH_QUICK").is_some_and(|v| v != "0")
        || std::env::args().any(|a| a == "--quick");
    let (rounds, run, clients) = if quick {
        (1, Duration::from_millis(300), 4)
    } else {
        (5, Duration::from_secs(3), 16)
    };

    let callers = runtime("bench-clients", 2, None);
    let receiving = runtime("bench-receiver", 1, None);
    let receiver = Receiver::default();
    let otlp = receiving.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        anyhow::Ok(format!("http://{addr}"))
    })?;

    let exports = runtime("bench-exports", 1, None);
    let (exporting, exporter) = start_server("exporter-on", Some(otlp), &exports)?;
    assert!(exporter.exporting());
    let (plain, no_exporter) = start_server("exporter-off", None, &exports)?;
    assert!(!no_exporter.exporting());

    let (on, off) = callers.block_on(async {
        let on_clients = connect(&exporting.endpoint, clients).await?;
        let off_clients = connect(&plain.endpoint, clients).await?;
        // Warm both up (connections, caches) before measuring.
        throughput(&on_clients, run / 3).await;
        throughput(&off_clients, run / 3).await;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so drift in the machine's load falls on both.
            if round % 2 == 0 {
                off.push(throughput(&off_clients, run).await);
                on.push(throughput(&on_clients, run).await);
            } else {
                on.push(throughput(&on_clients, run).await);
                off.push(throughput(&off_clients, run).await);
            }
        }
        anyhow::Ok((on, off))
    })?;

    // Export what is left, then count what arrived.
    exporter.flush();
    let exported = receiver.spans.load(Ordering::Relaxed);
    let (on_median, off_median) = (median(on.clone()), median(off.clone()));
    println!(
        "GetWatch, {clients} concurrent clients, {rounds} rounds of {run:?} each, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "exporter off: median {off_median:>8.0} requests/s  (rounds: {})",
        show(&off)
    );
    println!(
        "exporter on:  median {on_median:>8.0} requests/s  (rounds: {})",
        show(&on)
    );
    println!(
        "on / off: {:.3}  ({:+.1}% throughput with the exporter on)",
        on_median / off_median,
        (on_median / off_median - 1.0) * 100.0
    );
    println!("spans received by the OTLP receiver: {exported}");

    for (
        Server {
            runtime, server, ..
        },
        telemetry,
    ) in [(exporting, exporter), (plain, no_exporter)]
    {
        runtime.block_on(server.stop());
        telemetry.shutdown();
    }
    Ok(())
}
