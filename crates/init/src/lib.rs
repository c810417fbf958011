//! `tether init`: a PID-1 supervisor for a bundle of daemons, and a tini-style single-child
//! mode. It reaps every child (as PID 1 or as a child subreaper), forwards signals to process
//! groups, runs steps, starts daemons as their dependencies allow, restarts them by policy and
//! stops them in reverse dependency order. Everything is event-driven: signals arrive through
//! a signalfd, exits through `waitpid` on SIGCHLD.
//!
//! Every decision is the pure core's (`core.rs`, `steps.rs`: event in, actions out);
//! `supervisor.rs` is the event loop that feeds it and carries the actions out. The library
//! prints nothing of its own accord: it writes to the streams it is given and returns an
//! [`Outcome`] or a [`Failure`]. [`command`] is `tether init` as a command (arguments checked,
//! declaration opened, exit code decided by [`exit`]), shared by `tether init` and the
//! init-only binary `tether-init`, which only parse arguments and hand over their output.

pub mod command;
pub mod control;
mod core;
pub mod exit;
mod health;
mod logs;
mod notify;
mod probe;
mod proc;
mod steps;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tether_spec::model::Init;

pub use crate::control::default_socket;
pub use crate::core::{CodeOf, Exit, Outcome, Selection, StartError, select, selected_names};
pub use crate::logs::Streams;
pub use crate::supervisor::ControlSetup;

/// Why `tether init` could not run.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The declaration cannot run as written (a user that does not exist); nothing started.
    Invalid,
    /// tether itself could not work (signals, runtime).
    Internal,
    /// The command exists but could not be executed.
    CannotExecute,
    /// The command was not found.
    NotFound,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Blocks signals at once, before the declaration is read: as PID 1, an unblocked SIGTERM in
/// that window would be discarded. The runtime reads them later.
pub fn block_signals_early() {
    let _ = proc::block_signals();
}

/// Sets up PID-1 duties (blocked signals, subreaper) and a single-threaded runtime.
fn runtime() -> Result<(tokio::runtime::Runtime, proc::Signals), Failure> {
    let fail =
        |what: &str, e: std::io::Error| Failure::new(FailureKind::Internal, format!("{what}: {e}"));
    let set = proc::block_signals().map_err(|e| fail("cannot block signals", e))?;
    proc::become_subreaper();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail("cannot start", e))?;
    let signals = rt
        .block_on(async { proc::Signals::new(&set) })
        .map_err(|e| fail("cannot read signals", e))?;
    Ok((rt, signals))
}

/// Runs a bundle to its end, writing to `streams`. `code_of` gives the exit code of an outcome
/// (for the last event line and to pick the failure that decides). Errors before anything
/// started are a [`Failure`].
pub fn run_bundle(
    init: Init,
    selection: Selection,
    streams: Streams,
    code_of: CodeOf,
    control: ControlSetup,
) -> Result<Outcome, Failure> {
    let (rt, signals) = runtime()?;
    let (outcome, writers, flushed) = rt.block_on(async move {
        let (out, writers) = logs::output(streams);
        let reaper = Arc::new(proc::Reaper::default());
        let signals = proc::dispatch(signals, reaper.clone());
        let sup = supervisor::Supervisor::new(
            init,
            selection,
            code_of,
            signals,
            reaper,
            out.clone(),
            control,
        );
        let outcome = match sup {
            Ok(sup) => Ok(sup.run().await),
            Err(e) => Err(Failure::new(FailureKind::Invalid, e)),
        };
        // A reader that stopped reading must not keep tether from exiting.
        let flushed = tokio::time::timeout(Duration::from_secs(2), out.flush())
            .await
            .is_ok();
        (outcome, writers, flushed)
    });
    // Dropping the runtime drops the last handles to the writer threads, which then finish;
    // nothing (a name lookup in a probe, say) holds the exit up for long.
    rt.shutdown_timeout(Duration::from_millis(500));
    if flushed {
        for w in writers {
            let _ = w.join();
        }
    }
    outcome
}

/// How `tether init -- CMD` runs its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Single {
    /// The command in a new session (the default). `false` keeps tether's session: the
    /// command's own process group becomes the terminal's foreground group, as with tini.
    pub new_session: bool,
    /// Once the command exited, how long the rest of its process group has between SIGTERM and
    /// SIGKILL.
    pub grace: Duration,
}

impl Default for Single {
    fn default() -> Self {
        Self {
            new_session: true,
            grace: Duration::from_secs(2),
        }
    }
}

/// tini-style: runs one command with the terminal, passes every signal to its whole process
/// group, reaps orphans, and returns how it ended once nothing of its group is left. The
/// command inherits stdin, stdout and stderr; tether writes nothing.
pub fn run_single(argv: &[String], single: Single) -> Result<Outcome, Failure> {
    let (rt, signals) = runtime()?;
    rt.block_on(async move {
        let reaper = Arc::new(proc::Reaper::default());
        let mut signals = proc::dispatch(signals, reaper.clone());
        let spawned = reaper.spawn(proc::Spec {
            argv,
            env: Vec::new(),
            workdir: None,
            ids: None,
            capture: false,
            stdin_pipe: false,
            keep_fd: None,
            foreground: true,
            new_session: single.new_session,
        });
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let kind = match proc::start_error(&e) {
                    StartError::NotFound => FailureKind::NotFound,
                    StartError::CannotExecute => FailureKind::CannotExecute,
                };
                let message = format!("cannot run `{}`: {}", argv[0], tether_probe::plain(&e));
                return Err(Failure::new(kind, message));
            }
        };
        // The command starts where tether was started; tether itself moves to `/`, so that it
        // holds no mount busy for as long as it runs.
        let _ = std::env::set_current_dir("/");
        // The command leads its own group (and session, by default): the group's id is its pid.
        let group = spawned.pid;
        let mut exit_rx = spawned.exit;
        loop {
            tokio::select! {
                e = &mut exit_rx => {
                    let exit = e.map_err(|_| {
                        Failure::new(FailureKind::Internal, "the command's exit was lost")
                    })?;
                    proc::end_group(group, single.grace).await;
                    return Ok(Outcome::Command(exit));
                }
                Some(sig) = signals.recv() => match sig {
                    Ok(s) => proc::pass_on(group, s, single.new_session),
                    Err(e) => return Err(Failure::new(FailureKind::Internal, format!("cannot read signals: {e}"))),
                },
            }
        }
    })
}
