//! The sidecar as a command: the environment checked, a runtime, SIGTERM and SIGINT handled,
//! the end put in words and turned into the exit code. One body for both binaries that run it,
//! `tether sidecar` and the sidecar-only `tether-sidecar`, which print what it says.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tether_spec::diag::error_lines;

use super::{Ended, Fatal};

/// The exit codes of the sidecar, the README's table.
pub mod exit {
    use super::{Ended, Fatal};

    pub const OK: u8 = 0;
    /// The environment is not usable; nothing was started.
    pub const INVALID: u8 = 1;
    /// The sidecar itself could not work (no runtime, no signal handlers).
    pub const INTERNAL: u8 = 2;
    /// A fatal start-up step failed.
    pub const STARTUP_FAILED: u8 = 3;
    /// The drain timeout passed; what was unacked was released.
    pub const DRAIN_TIMEOUT: u8 = 4;

    /// How a sidecar's run ends: 128 + N after a second signal N during the drain, as in a
    /// shell.
    pub fn of(r: &Result<Ended, Fatal>) -> u8 {
        match r {
            Ok(Ended::Drained | Ended::Interrupted { .. }) => OK,
            Ok(Ended::DrainTimedOut { .. }) => DRAIN_TIMEOUT,
            Ok(Ended::Forced { signal, .. }) => ((128 + signal) & 0xff) as u8,
            Err(_) => STARTUP_FAILED,
        }
    }
}

/// How the command ended: its exit code, and what to print on stderr.
pub struct Finished {
    pub code: u8,
    pub stderr: String,
}

fn error(message: impl std::fmt::Display, hint: Option<&str>) -> String {
    error_lines(&message.to_string(), hint, &[])
}

/// Runs the sidecar configured by the environment until it ends; `program` names it in what
/// it says (`tether sidecar`), `color` says whether stderr shows colours. Its start-up steps
/// and what it does go to `tracing`.
pub fn main(program: &str, color: bool) -> Finished {
    let finished = |code, stderr| Finished { code, stderr };
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    // Everything is checked before anything starts; every problem at once.
    let config = match super::config::from_env(&vars, &cwd) {
        Ok(c) => c,
        Err(e) => {
            let mut out = String::new();
            for env in &e.env {
                out += &error(env.headline(), Some(&format!("allowed: {}", env.allowed)));
            }
            if let Some(file) = &e.file {
                out += &file.render(color);
            } else {
                out += &error("the environment is not usable; nothing was started", None);
            }
            return finished(exit::INVALID, out);
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
            let out = error(format!("cannot start the runtime: {e}"), None);
            return finished(exit::INTERNAL, out);
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
        Ok(super::run(config, rx).await)
    });
    // The runtime's background tasks (listeners, streams) end with it, not one by one.
    runtime.shutdown_background();
    let result = match result {
        Ok(r) => r,
        Err(e) => return finished(exit::INTERNAL, error(e, None)),
    };
    let mut out = String::new();
    match &result {
        Ok(Ended::Drained) => {
            let _ = writeln!(out, "{program}: drained and deregistered");
        }
        Ok(Ended::Interrupted { during }) => {
            let _ = writeln!(out, "{program}: stopped during start-up {}", during.label());
        }
        Ok(Ended::DrainTimedOut {
            in_flight, outbox, ..
        }) => out += &error(
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
        Ok(Ended::Forced { signal, in_flight }) => out += &error(
            format!(
                "a second signal ({signal}) during the drain: stopped at once; {in_flight} deliveries in flight are delivered again after their ack deadline"
            ),
            None,
        ),
        Err(fatal) => out += &error(fatal, None),
    }
    finished(exit::of(&result), out)
}
