//! A load plugin: one instance publishes a numbered stream of messages, another consumes it,
//! and each writes down what happened, one line per event, to a file a test reads
//! (crates/cli/tests/bus_nats_cluster.rs runs two of them in containers, built static by
//! `scripts/static-plugin stream`).
//!
//! ```text
//! stream publish COUNT IN_FLIGHT FILE   publishes messages 0..COUNT on `load.n`, IN_FLIGHT at
//!                                       once, each with the idempotency key `m-I`; FILE gets
//!                                       `I SEQUENCE` per accepted publish (0: in the sidecar's
//!                                       outbox) and `I ! ERROR` per refused one; exits 0 once
//!                                       every publish was answered
//! stream consume FILE                   subscribes to `load.*` (ack deadline 10 s, max deliver
//!                                       1,000,000: slow acks never become dead letters) and
//!                                       acks each delivery after FILE got `I SEQUENCE
//!                                       REDELIVERED`; runs until SIGTERM
//! ```
//!
//! Message `I`'s body is `m-I-` padded with dots to 128 bytes; a delivery whose body is not of
//! that form is written as `? SEQUENCE REDELIVERED`. The file is flushed every 100 ms and at
//! the end. The sidecar is `SIDECAR_ADDR` (default `127.0.0.1:9191`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_plugin::{BoxError, Bus, Message, Nack, Options, Plugin, Publish, Subscription};

const TOPIC: &str = "load.n";
const SIZE: usize = 128;

fn body(i: u64) -> Vec<u8> {
    let mut v = format!("m-{i}-").into_bytes();
    v.resize(SIZE, b'.');
    v
}

/// The number `body(i)` carries, if `data` is exactly that body.
fn number(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    let i = text.strip_prefix("m-")?.split('-').next()?.parse().ok()?;
    (data == body(i).as_slice()).then_some(i)
}

/// The record file: appended to by any task, flushed every 100 ms and when dropped.
#[derive(Clone)]
struct Record(Arc<Mutex<std::io::BufWriter<std::fs::File>>>);

impl Record {
    fn create(path: &str) -> std::io::Result<Record> {
        let file = std::fs::File::create(path)?;
        let record = Record(Arc::new(Mutex::new(std::io::BufWriter::new(file))));
        let flusher = record.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                flusher.flush();
            }
        });
        Ok(record)
    }

    fn line(&self, line: std::fmt::Arguments<'_>) {
        let mut w = self.0.lock().expect("record");
        w.write_fmt(line).expect("cannot write the record");
        w.write_all(b"\n").expect("cannot write the record");
    }

    fn flush(&self) {
        self.0
            .lock()
            .expect("record")
            .flush()
            .expect("cannot flush the record");
    }
}

struct Publisher {
    count: u64,
    in_flight: usize,
    record: Record,
    done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Plugin for Publisher {
    fn subscriptions(&self) -> Vec<Subscription> {
        Vec::new()
    }

    async fn on_start(&self, bus: &Bus) -> Result<(), BoxError> {
        // On a task of its own: on_start must return before health checks are answered.
        let (bus, record, count) = (bus.clone(), self.record.clone(), self.count);
        let permits = Arc::new(tokio::sync::Semaphore::new(self.in_flight));
        let done = self.done.lock().expect("done").take();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..count {
                let permit = permits.clone().acquire_owned().await.expect("permits");
                let (bus, record) = (bus.clone(), record.clone());
                tasks.spawn(async move {
                    let publish = Publish::new(TOPIC, body(i)).idempotency_key(format!("m-{i}"));
                    match bus.send(publish).await {
                        Ok(p) => record.line(format_args!("{i} {}", p.sequence)),
                        Err(e) => record.line(format_args!("{i} ! {e}")),
                    }
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            record.flush();
            tracing::info!("every one of {count} publishes was answered");
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
        Ok(())
    }

    async fn on_message(&self, _bus: &Bus, _msg: Message) -> Result<(), Nack> {
        Err(Nack::new("the publisher subscribes to nothing"))
    }
}

struct Consumer {
    record: Record,
}

impl Plugin for Consumer {
    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription::new("load.*")
                .ack_deadline(Duration::from_secs(10))
                .max_deliver(1_000_000),
        ]
    }

    async fn on_message(&self, _bus: &Bus, msg: Message) -> Result<(), Nack> {
        let (seq, again) = (msg.sequence, msg.redelivered);
        match number(&msg.data) {
            Some(i) => self.record.line(format_args!("{i} {seq} {again}")),
            None => self.record.line(format_args!("? {seq} {again}")),
        }
        Ok(())
    }

    async fn on_stop(&self) {
        self.record.flush();
    }
}

const USAGE: &str = "usage: stream publish COUNT IN_FLIGHT FILE | stream consume FILE";

async fn run(args: &[String]) -> Result<(), String> {
    let options = Options::from_env().map_err(|e| e.to_string())?;
    let record =
        |path: &str| Record::create(path).map_err(|e| format!("cannot create {path}: {e}"));
    match args {
        [mode, count, in_flight, path] if mode == "publish" => {
            let count = count
                .parse()
                .map_err(|_| format!("COUNT `{count}`: {USAGE}"))?;
            let in_flight = in_flight
                .parse()
                .map_err(|_| format!("IN_FLIGHT `{in_flight}`: {USAGE}"))?;
            let (done, finished) = tokio::sync::oneshot::channel();
            let record = record(path)?;
            let plugin = Publisher {
                count,
                in_flight,
                record: record.clone(),
                done: Mutex::new(Some(done)),
            };
            let options = options.stop_when(async {
                let _ = finished.await;
            });
            let result = tether_plugin::run_with(plugin, options).await;
            record.flush();
            result.map_err(|e| e.to_string())
        }
        [mode, path] if mode == "consume" => {
            let record = record(path)?;
            let result = tether_plugin::run_with(
                Consumer {
                    record: record.clone(),
                },
                options,
            )
            .await;
            record.flush();
            result.map_err(|e| e.to_string())
        }
        _ => Err(USAGE.to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    #[allow(
        clippy::disallowed_methods,
        reason = "an example program: it logs to its own stderr"
    )]
    let stderr = std::io::stderr;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "an example program: its error line")]
            {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_number() {
        assert_eq!(body(7).len(), SIZE);
        assert_eq!(number(&body(41)), Some(41));
        assert_eq!(number(b"m-41-"), None);
        let mut wrong = body(41);
        wrong[SIZE - 1] = b'x';
        assert_eq!(number(&wrong), None);
    }
}
