//! Delivers events to the declared `notify` target, one at a time and in order, without ever
//! holding up supervision.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tether_spec::model::Notify;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::logs::{self, Source, Stream};
use crate::proc::{Exit, Spec};
use crate::supervisor::Processes;

pub struct Notifier {
    tx: mpsc::UnboundedSender<Value>,
    task: JoinHandle<()>,
}

/// How long one delivery may take.
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);

impl Notifier {
    pub fn start(target: Notify, procs: Arc<dyn Processes>, source: Source) -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let task = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let mut body = event.to_string().into_bytes();
                body.push(b'\n');
                let done =
                    tokio::time::timeout(DELIVERY_LIMIT, deliver(&target, &procs, &source, body))
                        .await;
                let failure = match done {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e,
                    Err(_) => format!("no answer within {}", tether_probe::show(DELIVERY_LIMIT)),
                };
                let mut line = Vec::new();
                let _ = write!(line, "notify failed: {failure}");
                let mut out = Vec::new();
                source.format.line(
                    &mut out,
                    &source.prefix,
                    &source.name,
                    "stderr",
                    logs::Piece::Whole,
                    &line,
                );
                source.out.send(Stream::Stderr, out).await;
            }
        });
        Notifier { tx, task }
    }

    pub fn send(&self, event: Value) {
        let _ = self.tx.send(event);
    }

    /// Delivers what is queued, giving up after `limit`.
    pub async fn finish(self, limit: Duration) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn deliver(
    target: &Notify,
    procs: &Arc<dyn Processes>,
    source: &Source,
    body: Vec<u8>,
) -> Result<(), String> {
    match target {
        Notify::Url(url) => {
            let status = tether_probe::request(url, "POST", Some(body)).await?;
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("{url} answered {status}"))
            }
        }
        Notify::Command(argv) => {
            let spawned = procs
                .spawn(Spec {
                    argv,
                    env: Vec::new(),
                    workdir: None,
                    ids: None,
                    capture: true,
                    stdin_pipe: true,
                    keep_fd: None,
                    foreground: false,
                    new_session: false,
                })
                .map_err(|e| format!("cannot run `{}`: {}", argv[0], tether_probe::plain(&e)))?;
            let mut pumps = Vec::new();
            for (fd, stream) in [(spawned.stdout, "stdout"), (spawned.stderr, "stderr")] {
                if let Some(fd) = fd {
                    pumps.push(tokio::spawn(logs::pump(fd, source.clone(), stream, None)));
                }
            }
            if let Some(fd) = spawned.stdin
                && let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(fd)
            {
                // A command that does not read its stdin is not an error.
                let _ = pipe.write_all(&body).await;
            }
            let exit = spawned
                .exit
                .await
                .map_err(|_| "the command vanished".to_owned())?;
            for p in pumps {
                let _ = p.await;
            }
            match exit {
                Exit::Code(0) => Ok(()),
                other => Err(format!("`{}` {}", argv.join(" "), other.describe())),
            }
        }
    }
}
