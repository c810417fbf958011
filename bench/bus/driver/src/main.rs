//! The driver of `bench/bus`: the same publish-and-consume through tether's plugin bus and
//! through NATS JetStream, measured the same way. `bench/bus/run` starts the servers and
//! sidecars, runs this once per system, and prints the table.
//!
//! ```text
//! tether-bench-bus tether PUBLISH_SIDECAR SUBSCRIBE_SIDECAR [OPTIONS]
//! tether-bench-bus nats NATS_URL [OPTIONS]
//!   OPTIONS: --rate 1000 --secs 25 --sat-secs 10 --inflight 256 --watch NAME=PID ...
//! tether-bench-bus fsync-floor DIR [COUNT]
//! ```
//!
//! Each prints one JSON object on stdout; progress goes to stderr.
//!
//! What is measured, for each system, with 1 KiB messages on one topic:
//! - **rate**: `--rate` messages a second for `--secs`, open loop (each publish is sent on
//!   schedule, whatever the earlier ones are doing); end-to-end latency = the time the
//!   subscriber's handler sees a message - the time its publish was called, both from one
//!   clock (the publisher and the subscriber live in this process; the send time travels in the
//!   message's first 8 bytes). Also the publish's own acknowledgement time.
//! - **saturation**: `--inflight` publishes in flight at once for `--sat-secs`, each awaiting
//!   its acknowledgement (durable) before its slot is reused; published/s (acknowledged) and
//!   delivered/s (first publish to last delivery).
//! - **memory**: for each `--watch NAME=PID`, VmRSS at the end of the rate phase (the steady
//!   state), and VmRSS and VmHWM (the peak) at the end; beside each VmRSS its RssAnon, the part
//!   that is not the binary's (shared) file pages.
//! - **CPU**: for each `--watch NAME=PID`, the CPU time (user + system) it used in the rate phase
//!   and in the saturation phase: unlike throughput on a shared machine, the CPU a message costs
//!   hardly depends on what else runs.
//!
//! tether: two plugins through the `tether-plugin` SDK, each on its own `tether sidecar`; the
//! subscriber acks each message by returning `Ok`. JetStream: two `async-nats` connections, a
//! JetStream publish that awaits the stream's ack (with a `Nats-Msg-Id`, as tether's SDK gives
//! every publish an idempotency key), and a durable pull consumer with explicit acks.

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

const SIZE: usize = 1024;
const TOPIC: &str = "bench.e2e";
const WARM: u8 = 0;
const RATE: u8 = 1;
const SAT: u8 = 2;

type BoxResult<T> = Result<T, String>;

struct Cfg {
    rate: u64,
    secs: u64,
    sat_secs: u64,
    inflight: usize,
    /// Processes whose resident memory is reported: (name, pid).
    watch: Vec<(String, u32)>,
}

/// A process's resident memory in KiB, from /proc: VmRSS, VmHWM (the peak), and RssAnon (the
/// part that is not file pages: the binary's own pages are shared by every process running it).
fn resident(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("RssAnon:"))
}

/// The CPU time a process has used so far (user + system), in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (in parentheses, which may hold spaces): utime is the 14th
    // field of the line, stime the 15th, in clock ticks (100 a second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

// ------------------------------------------------------------------------------------------
// What the subscriber saw
// ------------------------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    count: [u64; 3],
    /// End-to-end latencies (ns) of the rate and saturation phases.
    latency: [Vec<u64>; 3],
    /// The rate phase's (send time, latency) in ns, in arrival order: written to the file
    /// TETHER_BENCH_TIMELINE_FILE names, to see when slow deliveries happened.
    timeline: Vec<(u64, u64)>,
    redelivered: u64,
    /// When the last first-time delivery arrived (ns since the epoch).
    last: u64,
}

struct Recorder {
    epoch: Instant,
    seen: Mutex<Seen>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            epoch: Instant::now(),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn record(&self, data: &[u8], redelivered: bool) {
        let now = self.now();
        if data.len() < 17 {
            return;
        }
        let sent = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        let phase = usize::from(data[16].min(SAT));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if redelivered {
            seen.redelivered += 1;
            return;
        }
        seen.count[phase] += 1;
        seen.latency[phase].push(now.saturating_sub(sent));
        if phase == usize::from(RATE) {
            seen.timeline.push((sent, now.saturating_sub(sent)));
        }
        seen.last = now;
    }

    fn count(&self, phase: u8) -> u64 {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).count[usize::from(phase)]
    }

    /// Waits until `want` messages of `phase` arrived, or none for `quiet`; answers how many.
    async fn wait_for(&self, phase: u8, want: u64, quiet: Duration) -> u64 {
        let mut last = (self.count(phase), Instant::now());
        loop {
            let n = self.count(phase);
            if n >= want {
                return n;
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > quiet {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn payload(phase: u8, index: u64, sent: u64) -> Vec<u8> {
    let mut data = vec![0u8; SIZE];
    data[..8].copy_from_slice(&sent.to_le_bytes());
    data[8..16].copy_from_slice(&index.to_le_bytes());
    data[16] = phase;
    data
}

// ------------------------------------------------------------------------------------------
// The measurement, the same for every system
// ------------------------------------------------------------------------------------------

/// Percentile `p` (0..1) of sorted nanoseconds, in milliseconds; None when there are none.
fn pct(sorted: &[u64], p: f64) -> Option<f64> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    Some(sorted.get(rank - 1).copied()? as f64 / 1e6)
}

struct Outcome {
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    /// Publish to acknowledgement, ns.
    ack: Vec<u64>,
}

fn collect(done: Result<BoxResult<u64>, tokio::task::JoinError>, out: &mut Outcome) {
    match done {
        Ok(Ok(ack)) => {
            out.acked += 1;
            out.ack.push(ack);
        }
        Ok(Err(e)) => {
            out.errors += 1;
            out.first_error.get_or_insert(e);
        }
        Err(e) => {
            out.errors += 1;
            out.first_error.get_or_insert(e.to_string());
        }
    }
}

/// `rate` publishes a second for `dur`, each sent on schedule (open loop).
async fn paced<P, F>(
    rec: &Arc<Recorder>,
    publish: &P,
    phase: u8,
    rate: u64,
    dur: Duration,
) -> Outcome
where
    P: Fn(Vec<u8>) -> F,
    F: Future<Output = BoxResult<()>> + Send + 'static,
{
    let n = rate * dur.as_secs();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let mut out = Outcome {
        acked: 0,
        errors: 0,
        first_error: None,
        ack: Vec::with_capacity(n as usize),
    };
    for i in 0..n {
        tokio::time::sleep_until(start + period * i as u32).await;
        let sent = rec.now();
        let fut = publish(payload(phase, i, sent));
        let r = rec.clone();
        tasks.spawn(async move { fut.await.map(|()| r.now() - sent) });
        while let Some(done) = tasks.try_join_next() {
            collect(done, &mut out);
        }
    }
    while let Some(done) = tasks.join_next().await {
        collect(done, &mut out);
    }
    out
}

async fn measure<P, F>(rec: Arc<Recorder>, publish: P, cfg: &Cfg) -> BoxResult<Value>
where
    P: Fn(Vec<u8>) -> F,
    F: Future<Output = BoxResult<()>> + Send + 'static,
{
    // Warm-up: one message at a time until the subscriber sees one, then a second at the rate.
    let began = Instant::now();
    let mut i = 0;
    while rec.count(WARM) == 0 {
        if began.elapsed() > Duration::from_secs(60) {
            return Err("no message came through within 60 s".into());
        }
        publish(payload(WARM, i, rec.now())).await?;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warm = paced(&rec, &publish, WARM, cfg.rate, Duration::from_secs(1)).await;
    if let Some(e) = warm.first_error {
        return Err(format!("warm-up: {e}"));
    }
    rec.wait_for(WARM, i + warm.acked, Duration::from_secs(10))
        .await;
    eprintln!("  warm: {} messages through", rec.count(WARM));
    let cpu_start: Vec<f64> = cfg.watch.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();

    // Rate.
    let rate = paced(
        &rec,
        &publish,
        RATE,
        cfg.rate,
        Duration::from_secs(cfg.secs),
    )
    .await;
    let rate_got = rec
        .wait_for(RATE, rate.acked, Duration::from_secs(10))
        .await;
    eprintln!(
        "  rate: {} published, {} acknowledged, {rate_got} delivered",
        cfg.rate * cfg.secs,
        rate.acked
    );
    // Resident memory in the steady state at the rate, before saturation raises the peaks.
    let at_rate: Vec<(u64, u64, u64)> = cfg.watch.iter().map(|(_, pid)| resident(*pid)).collect();
    let cpu_rate: Vec<f64> = cfg.watch.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Saturation.
    let slots = Arc::new(Semaphore::new(cfg.inflight));
    let dur = Duration::from_secs(cfg.sat_secs);
    let start = rec.now();
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    let mut sat = Outcome {
        acked: 0,
        errors: 0,
        first_error: None,
        ack: Vec::new(),
    };
    let mut sent = 0u64;
    while t0.elapsed() < dur {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let at = rec.now();
        let fut = publish(payload(SAT, sent, at));
        sent += 1;
        let r = rec.clone();
        tasks.spawn(async move {
            let result = fut.await;
            drop(slot);
            result.map(|()| r.now() - at)
        });
        while let Some(done) = tasks.try_join_next() {
            collect(done, &mut sat);
        }
    }
    while let Some(done) = tasks.join_next().await {
        collect(done, &mut sat);
    }
    let published_end = rec.now();
    let sat_got = rec.wait_for(SAT, sat.acked, Duration::from_secs(15)).await;
    let cpu_end: Vec<f64> = cfg.watch.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    eprintln!(
        "  saturation: {sent} published, {} acknowledged, {sat_got} delivered",
        sat.acked
    );

    let memory: serde_json::Map<String, Value> = cfg
        .watch
        .iter()
        .zip(at_rate)
        .enumerate()
        .map(|(i, ((name, pid), (rate_rss, _, rate_anon)))| {
            let (rss, hwm, anon) = resident(*pid);
            let figures = json!({
                "rss_at_rate_kib": rate_rss, "anon_at_rate_kib": rate_anon,
                "rss_kib": rss, "anon_kib": anon, "hwm_kib": hwm,
                "cpu_rate_s": cpu_rate[i] - cpu_start[i], "cpu_sat_s": cpu_end[i] - cpu_rate[i],
            });
            (name.clone(), figures)
        })
        .collect();
    let mut seen = std::mem::take(&mut *rec.seen.lock().unwrap_or_else(|e| e.into_inner()));
    let mut rate_ack = rate.ack;
    rate_ack.sort_unstable();
    let mut sat_ack = sat.ack;
    sat_ack.sort_unstable();
    if let Some(path) = std::env::var("TETHER_BENCH_TIMELINE_FILE")
        .ok()
        .filter(|p| !p.is_empty())
    {
        let first = seen.timeline.iter().map(|t| t.0).min().unwrap_or(0);
        let text: String = seen
            .timeline
            .iter()
            .map(|(sent, took)| {
                format!(
                    "{:.3} {:.3}\n",
                    (sent - first) as f64 / 1e6,
                    *took as f64 / 1e6
                )
            })
            .collect();
        std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    let lat = &mut seen.latency;
    lat[1].sort_unstable();
    lat[2].sort_unstable();
    let per_s = |n: u64, from: u64, to: u64| n as f64 / ((to.max(from + 1) - from) as f64 / 1e9);
    Ok(json!({
        "rate": {
            "target_per_s": cfg.rate, "secs": cfg.secs, "sent": cfg.rate * cfg.secs,
            "acked": rate.acked, "errors": rate.errors, "first_error": rate.first_error,
            "received": seen.count[1],
            "p50_ms": pct(&lat[1], 0.50), "p99_ms": pct(&lat[1], 0.99),
            "p999_ms": pct(&lat[1], 0.999), "max_ms": pct(&lat[1], 1.0),
            "ack_p50_ms": pct(&rate_ack, 0.50), "ack_p99_ms": pct(&rate_ack, 0.99),
        },
        "saturation": {
            "inflight": cfg.inflight, "secs": cfg.sat_secs, "sent": sent,
            "acked": sat.acked, "errors": sat.errors, "first_error": sat.first_error,
            "received": seen.count[2],
            "published_per_s": per_s(sat.acked, start, published_end),
            "delivered_per_s": per_s(seen.count[2], start, seen.last),
            "p50_ms": pct(&lat[2], 0.50), "p99_ms": pct(&lat[2], 0.99),
            "ack_p50_ms": pct(&sat_ack, 0.50), "ack_p99_ms": pct(&sat_ack, 0.99),
        },
        "redelivered": seen.redelivered,
        "memory": memory,
    }))
}

// ------------------------------------------------------------------------------------------
// tether: plugin -> sidecar -> bus -> sidecar -> plugin
// ------------------------------------------------------------------------------------------

/// The publishing plugin: hands its `Bus` to the driver and subscribes to nothing.
struct Publisher(Mutex<Option<oneshot::Sender<tether_plugin::Bus>>>);

impl tether_plugin::Plugin for Publisher {
    fn subscriptions(&self) -> Vec<tether_plugin::Subscription> {
        Vec::new()
    }

    async fn on_start(&self, bus: &tether_plugin::Bus) -> Result<(), tether_plugin::BoxError> {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(bus.clone());
        }
        Ok(())
    }

    async fn on_message(
        &self,
        _: &tether_plugin::Bus,
        _: tether_plugin::Message,
    ) -> Result<(), tether_plugin::Nack> {
        Ok(())
    }
}

/// The subscribing plugin: records each arrival and acks it.
struct Subscriber(Arc<Recorder>);

impl tether_plugin::Plugin for Subscriber {
    fn subscriptions(&self) -> Vec<tether_plugin::Subscription> {
        vec![tether_plugin::Subscription::new(TOPIC)]
    }

    async fn on_message(
        &self,
        _: &tether_plugin::Bus,
        msg: tether_plugin::Message,
    ) -> Result<(), tether_plugin::Nack> {
        self.0.record(&msg.data, msg.redelivered > 0);
        Ok(())
    }
}

async fn tether(pub_addr: &str, sub_addr: &str, cfg: &Cfg) -> BoxResult<Value> {
    let rec = Arc::new(Recorder::new());
    let (stop, stopped) = watch::channel(false);
    let options = |addr: &str| {
        let mut stopped = stopped.clone();
        tether_plugin::Options::new(addr)
            .signals(false)
            .connect_timeout(Duration::from_secs(30))
            .stop_when(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
    };
    let subscriber = tokio::spawn(tether_plugin::run_with(
        Subscriber(rec.clone()),
        options(sub_addr),
    ));
    let (tx, rx) = oneshot::channel();
    let publisher = tokio::spawn(tether_plugin::run_with(
        Publisher(Mutex::new(Some(tx))),
        options(pub_addr),
    ));
    let bus = match rx.await {
        Ok(bus) => bus,
        Err(_) => {
            return Err(match publisher.await {
                Ok(Err(e)) => format!("the publishing plugin: {e}"),
                other => format!("the publishing plugin ended: {other:?}"),
            });
        }
    };
    let result = measure(
        rec,
        move |data| {
            let bus = bus.clone();
            async move {
                bus.publish(TOPIC, data)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        },
        cfg,
    )
    .await;
    let _ = stop.send(true);
    for (name, task) in [("publishing", publisher), ("subscribing", subscriber)] {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("  the {name} plugin ended with: {e}"),
            other => eprintln!("  the {name} plugin did not stop cleanly: {other:?}"),
        }
    }
    result
}

// ------------------------------------------------------------------------------------------
// NATS JetStream: the same through async-nats
// ------------------------------------------------------------------------------------------

async fn nats(url: &str, cfg: &Cfg) -> BoxResult<Value> {
    use async_nats::jetstream::{self, consumer, stream};
    let js = jetstream::new(
        async_nats::connect(url)
            .await
            .map_err(|x| format!("connect: {x}"))?,
    );
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|x| format!("create the stream: {x}"))?;
    let sub_js = jetstream::new(
        async_nats::connect(url)
            .await
            .map_err(|x| format!("connect: {x}"))?,
    );
    let durable: consumer::PullConsumer = sub_js
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
            "BENCH",
        )
        .await
        .map_err(|x| format!("create the consumer: {x}"))?;
    let mut messages = durable
        .messages()
        .await
        .map_err(|x| format!("consume: {x}"))?;
    let rec = Arc::new(Recorder::new());
    let seen = rec.clone();
    let consumer = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            match m {
                Ok(m) => {
                    let again = m.info().map(|i| i.delivered > 1).unwrap_or(false);
                    seen.record(&m.payload, again);
                    if let Err(x) = m.ack().await {
                        eprintln!("  cannot ack: {x}");
                    }
                }
                Err(x) => eprintln!("  the consumer: {x}"),
            }
        }
    });
    let ids = Arc::new(AtomicU64::new(0));
    let result = measure(
        rec,
        move |data| {
            let js = js.clone();
            let id = ids.fetch_add(1, Ordering::Relaxed);
            async move {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(bytes::Bytes::from(data))
                    .message_id(format!("bench-{id}"));
                js.send_publish(TOPIC, publish)
                    .await
                    .map_err(|x| format!("publish: {x}"))?
                    .await
                    .map(drop)
                    .map_err(|x| format!("publish ack: {x}"))
            }
        },
        cfg,
    )
    .await;
    consumer.abort();
    result
}

// ------------------------------------------------------------------------------------------
// The disk's floor
// ------------------------------------------------------------------------------------------

/// `count` appends of 1 KiB to a file in `dir`, each followed by fdatasync (a log's commit).
fn fsync_floor(dir: &str, count: usize) -> BoxResult<Value> {
    let path = std::path::Path::new(dir).join("fsync-floor");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let block = [0x5au8; SIZE];
    let mut took = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        file.write_all(&block)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        took.push(t.elapsed().as_nanos() as u64);
    }
    let _ = std::fs::remove_file(&path);
    took.sort_unstable();
    Ok(json!({
        "count": count,
        "p50_ms": pct(&took, 0.5), "p99_ms": pct(&took, 0.99), "p999_ms": pct(&took, 0.999),
        "max_ms": pct(&took, 1.0),
    }))
}

// ------------------------------------------------------------------------------------------

const USAGE: &str = "usage: tether-bench-bus tether PUBLISH_SIDECAR SUBSCRIBE_SIDECAR [OPTIONS]
       tether-bench-bus nats NATS_URL [OPTIONS]
       tether-bench-bus fsync-floor DIR [COUNT]
options: --rate 1000 --secs 25 --sat-secs 10 --inflight 256 --watch NAME=PID (repeatable:
         the resident memory of these processes at the rate and at the end)";

fn parse(args: &[String]) -> BoxResult<(Vec<String>, Cfg)> {
    let mut cfg = Cfg {
        rate: 1000,
        secs: 25,
        sat_secs: 10,
        inflight: 256,
        watch: Vec::new(),
    };
    let mut plain = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> BoxResult<u64> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{name} {v}: not a positive whole number"))
        };
        match a.as_str() {
            "--rate" => cfg.rate = value(a)?,
            "--secs" => cfg.secs = value(a)?,
            "--sat-secs" => cfg.sat_secs = value(a)?,
            "--inflight" => cfg.inflight = value(a)? as usize,
            "--watch" => {
                let v = it.next().ok_or("--watch needs NAME=PID")?;
                let watched = v
                    .split_once('=')
                    .and_then(|(name, pid)| Some((name.to_string(), pid.parse().ok()?)))
                    .ok_or(format!("--watch {v}: not NAME=PID"))?;
                cfg.watch.push(watched);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => plain.push(a.clone()),
        }
    }
    Ok((plain, cfg))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|(plain, cfg)| {
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))
        };
        match plain.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["tether", publish, subscribe] => runtime()?.block_on(tether(publish, subscribe, &cfg)),
            ["nats", url] => runtime()?.block_on(nats(url, &cfg)),
            ["fsync-floor", dir] => fsync_floor(dir, 5000),
            ["fsync-floor", dir, count] => fsync_floor(
                dir,
                count
                    .parse()
                    .map_err(|_| format!("COUNT {count}: not a number"))?,
            ),
            _ => Err(USAGE.to_string()),
        }
    });
    match result {
        Ok(json) => {
            println!("{json}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether-bench-bus: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
