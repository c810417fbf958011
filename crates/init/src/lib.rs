//! `tether init`: a PID-1 supervisor for a bundle of daemons, and a tini-style single-child
//! mode. It reaps every child (as PID 1 or as a child subreaper), forwards signals to process
//! groups, runs steps, starts daemons as their dependencies allow, restarts them by policy and
//! stops them in reverse dependency order. Everything is event-driven: signals arrive through
//! a signalfd, exits through `waitpid` on SIGCHLD.

mod health;
mod logs;
mod notify;
mod probe;
mod proc;
mod supervisor;

use std::time::Duration;

use tether_spec::model::Init;

pub use probe::request as http_request;
pub use supervisor::{Selection, select};

/// Exit codes of `tether init` (see the README).
pub mod exit {
    pub const OK: i32 = 0;
    /// A declaration or usage error: nothing was started.
    pub const INVALID: i32 = 1;
    /// tether itself could not work (signals, runtime, health port taken).
    pub const INTERNAL: i32 = 2;
    /// A fatal step failed or timed out; no daemon was started.
    pub const STEP_FAILED: i32 = 122;
    /// A daemon failed more than `max_restarts` times in a row.
    pub const GAVE_UP: i32 = 123;
    /// A command exists but could not be executed (permissions, format), as in a shell.
    pub const CANNOT_EXECUTE: i32 = 126;
    /// A command was not found, as in a shell.
    pub const NOT_FOUND: i32 = 127;
}

/// A duration as people write it: `250ms`, `1.5s`, `2m`.
pub(crate) fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.1}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches(".0"))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Why `tether init` could not run, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    fn new(message: impl Into<String>, code: i32) -> Failure {
        Failure {
            message: message.into(),
            code,
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
    let fail = |what: &str, e: std::io::Error| Failure::new(format!("{what}: {e}"), exit::INTERNAL);
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

/// Runs a bundle to its end and returns the exit code. Errors before anything started are
/// returned as text.
pub fn run_bundle(init: Init, selection: Selection) -> Result<i32, Failure> {
    let (rt, signals) = runtime()?;
    let code = rt.block_on(async move {
        let (out, writers) = logs::output();
        let code = match supervisor::Supervisor::new(init, selection, signals, out.clone()) {
            Ok(sup) => Ok(sup.run().await),
            Err(e) => Err(Failure::new(e, exit::INVALID)),
        };
        // A reader that stopped reading must not keep tether from exiting.
        let flushed = tokio::time::timeout(Duration::from_secs(2), out.flush())
            .await
            .is_ok();
        (code, writers, flushed)
    });
    let (code, writers, flushed) = code;
    // Dropping the runtime drops the last handles to the writer threads, which then finish;
    // nothing (a name lookup in a probe, say) holds the exit up for long.
    rt.shutdown_timeout(Duration::from_millis(500));
    if flushed {
        for w in writers {
            let _ = w.join();
        }
    }
    code
}

/// tini-style: runs one command with the terminal, forwards signals to it, reaps orphans, and
/// returns its exit code (128 + N when killed by signal N).
pub fn run_single(argv: &[String]) -> Result<i32, Failure> {
    let (rt, signals) = runtime()?;
    rt.block_on(async move {
        let reaper = std::sync::Arc::new(proc::Reaper::default());
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
        });
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let code = proc::spawn_error_code(&e);
                let message = format!("cannot run `{}`: {}", argv[0], probe::plain(&e));
                return Err(Failure::new(message, code));
            }
        };
        let pid = spawned.pid;
        let mut exit_rx = spawned.exit;
        loop {
            tokio::select! {
                e = &mut exit_rx => return Ok(e.map(|e| e.code()).unwrap_or(exit::INTERNAL)),
                Some(sig) = signals.recv() => match sig {
                    Ok(s) => proc::signal_pid(pid, s),
                    Err(e) => return Err(Failure::new(format!("cannot read signals: {e}"), exit::INTERNAL)),
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_briefly() {
        let shown: Vec<String> = [0, 250, 1000, 1500, 59_999, 61_000]
            .iter()
            .map(|ms| show(Duration::from_millis(*ms)))
            .collect();
        assert_eq!(shown, ["0ms", "250ms", "1s", "1.5s", "60s", "1m1s"]);
    }
}
