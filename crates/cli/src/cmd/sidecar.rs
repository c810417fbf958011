//! `tether sidecar`: the bus sidecar, configured by the environment (the container contract).

use std::collections::BTreeMap;

use tether_bus::sidecar::{self, Ended};

use crate::{exit, output};

pub fn run() -> u8 {
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    // Everything is checked before anything starts; every problem at once.
    let config = match sidecar::config::from_env(&vars, &cwd) {
        Ok(c) => c,
        Err(e) => {
            for env in &e.env {
                output::error_hint(env.headline(), Some(&format!("allowed: {}", env.allowed)));
            }
            if let Some(file) = &e.file {
                eprint!("{}", file.render(output::color()));
            } else {
                output::error("the environment is not usable; nothing was started");
            }
            return exit::INVALID;
        }
    };
    // One thread: the sidecar relays messages between two sockets, and one thread does that
    // with less memory (one malloc arena, no work stealing) and no wake-ups across threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::error(format!("cannot start the runtime: {e}"));
            return exit::INTERNAL;
        }
    };
    let drain_timeout = config.settings.drain_timeout;
    let result = runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for (kind, number) in [(SignalKind::terminate(), 15), (SignalKind::interrupt(), 2)] {
            let mut s = match signal(kind) {
                Ok(s) => s,
                Err(e) => return Err(format!("cannot handle signals: {e}")),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(number).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(sidecar::run(config, rx).await)
    });
    // The runtime's background tasks (listeners, streams) end with it, not one by one.
    runtime.shutdown_background();
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            output::error(e);
            return exit::INTERNAL;
        }
    };
    match &result {
        Ok(Ended::Drained) => eprintln!("tether sidecar: drained and deregistered"),
        Ok(Ended::Interrupted { during }) => {
            eprintln!("tether sidecar: stopped during start-up {}", during.label());
        }
        Ok(Ended::DrainTimedOut {
            in_flight, outbox, ..
        }) => output::error_hint(
            format!(
                "the drain timeout ({}s) passed with {in_flight} deliver{} in flight: released to the bus, which delivers {} again",
                drain_timeout.as_secs(),
                if *in_flight == 1 { "y" } else { "ies" },
                if *in_flight == 1 { "it" } else { "them" },
            ),
            (*outbox > 0)
                .then(|| format!("{outbox} publishes wait in the outbox; a sidecar started again with the same data_dir forwards them"))
                .as_deref(),
        ),
        Ok(Ended::Forced { signal, in_flight }) => output::error(format!(
            "a second signal ({signal}) during the drain: stopped at once; {in_flight} deliveries in flight are delivered again after their ack deadline"
        )),
        Err(fatal) => output::error(fatal),
    }
    exit::of_sidecar(&result)
}
