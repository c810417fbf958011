//! Every exit code tether returns, decided here and nowhere else (the README's tables).

use tether_init::{FailureKind, Outcome, StartError};
use tether_run::run::{Ended, Failure};

pub const OK: u8 = 0;
/// A declaration or usage error; nothing was started.
pub const INVALID: u8 = 1;
/// tether itself, or the engine, could not work.
pub const INTERNAL: u8 = 2;
/// `tether wait`: something was not ready in time.
pub const NOT_READY: u8 = 3;
/// `tether run` and `up`: a sidecar could not be started or did not become ready.
pub const SIDECAR: u8 = 3;
/// `tether sidecar`: a fatal start-up step failed.
pub const STARTUP_FAILED: u8 = 3;
/// `tether sidecar`: the drain timeout passed; what was unacked was released.
pub const DRAIN_TIMEOUT: u8 = 4;
/// `tether ctl`: no tether init answers on the socket, or it ended before answering.
pub const CTL_UNREACHABLE: u8 = tether_init::control::code::UNREACHABLE;
/// `tether init`: a fatal step failed or timed out; no daemon was started.
pub const STEP_FAILED: u8 = 122;
/// `tether init`: a daemon gave up after `max_restarts`.
pub const GAVE_UP: u8 = 123;
/// A command exists but could not be executed (permissions, format), as in a shell.
pub const CANNOT_EXECUTE: u8 = 126;
/// A command was not found, as in a shell.
pub const NOT_FOUND: u8 = 127;
/// `128 + N`: ended by signal N, as in a shell.
pub fn signalled(n: i32) -> u8 {
    truncate(128 + n)
}

/// An exit code as the process can return it (the low byte, as the kernel keeps it).
pub fn truncate(code: i32) -> u8 {
    (code & 0xff) as u8
}

/// `tether run`: the workload's own code, else what stopped the run.
pub fn of_run(r: &Result<Ended, Failure>) -> u8 {
    match r {
        Ok(Ended::Workload(code)) => truncate(*code),
        Ok(Ended::Stopped(sig)) => signalled(*sig),
        Err(f) => of_failure(f),
    }
}

/// Why a run, an `up` or a workload's exec failed.
pub fn of_failure(f: &Failure) -> u8 {
    match f {
        Failure::Invalid { .. } => INVALID,
        Failure::Engine { .. } => INTERNAL,
        Failure::Sidecar { .. } => SIDECAR,
        Failure::CannotRun {
            not_found: true, ..
        } => NOT_FOUND,
        Failure::CannotRun { .. } => CANNOT_EXECUTE,
    }
}

/// `tether init`: how the bundle or the command ended.
pub fn of_init(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Clean => OK,
        // 128+N when killed by signal N; a failure is never 0.
        Outcome::Failed { exit, .. } => truncate(exit.code()).max(1),
        Outcome::StepFailed { .. } => STEP_FAILED,
        Outcome::GaveUp { .. } => GAVE_UP,
        Outcome::CannotStart { error, .. } => match error {
            StartError::NotFound => NOT_FOUND,
            StartError::CannotExecute => CANNOT_EXECUTE,
        },
        Outcome::Internal { .. } => INTERNAL,
        Outcome::Command(exit) => truncate(exit.code()),
    }
}

/// `tether bus serve`: why the bus could not start or stopped.
#[cfg(feature = "bus")]
pub fn of_bus(e: &tether_bus::ServeError) -> u8 {
    match e {
        tether_bus::ServeError::Bind { .. }
        | tether_bus::ServeError::BindHttp { .. }
        | tether_bus::ServeError::Store { .. }
        | tether_bus::ServeError::Sync { .. }
        | tether_bus::ServeError::Transport(_) => INTERNAL,
    }
}

/// `tether init`: why it could not begin.
pub fn of_init_failure(f: &tether_init::Failure) -> u8 {
    match f.kind {
        FailureKind::Invalid => INVALID,
        FailureKind::Internal => INTERNAL,
        FailureKind::CannotExecute => CANNOT_EXECUTE,
        FailureKind::NotFound => NOT_FOUND,
    }
}

/// `tether sidecar`: how it ended.
#[cfg(feature = "sidecar")]
pub fn of_sidecar(r: &Result<tether_bus::sidecar::Ended, tether_bus::sidecar::Fatal>) -> u8 {
    use tether_bus::sidecar::Ended;
    match r {
        Ok(Ended::Drained | Ended::Interrupted { .. }) => OK,
        Ok(Ended::DrainTimedOut { .. }) => DRAIN_TIMEOUT,
        Ok(Ended::Forced { signal, .. }) => signalled(*signal),
        Err(_) => STARTUP_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_init::Exit;

    #[test]
    fn runs_end_with_the_documented_codes() {
        let failure = |f: Failure| of_run(&Err(f));
        let cannot_run = |not_found| Failure::CannotRun {
            program: "x".into(),
            reason: "r".into(),
            not_found,
        };
        let codes = [
            of_run(&Ok(Ended::Workload(0))),
            of_run(&Ok(Ended::Workload(7))),
            of_run(&Ok(Ended::Workload(256 + 4))),
            of_run(&Ok(Ended::Stopped(2))),
            of_run(&Ok(Ended::Stopped(15))),
            failure(Failure::Invalid {
                message: "m".into(),
                hint: None,
            }),
            failure(Failure::Engine {
                message: "m".into(),
                hint: None,
            }),
            failure(Failure::Sidecar {
                sidecar: "s".into(),
                message: "m".into(),
                logs: vec![],
            }),
            failure(cannot_run(true)),
            failure(cannot_run(false)),
        ];
        assert_eq!(codes, [0, 7, 4, 130, 143, 1, 2, 3, 127, 126]);
    }

    #[test]
    fn outcomes_map_to_the_readme_table() {
        let failed = |exit| Outcome::Failed {
            name: "db".into(),
            exit,
        };
        let outcomes = [
            Outcome::Clean,
            failed(Exit::Code(5)),
            failed(Exit::Signal(9)),
            failed(Exit::Code(0)),
            Outcome::StepFailed {
                step: "config".into(),
            },
            Outcome::GaveUp {
                daemon: "db".into(),
            },
            Outcome::CannotStart {
                name: "db".into(),
                error: StartError::CannotExecute,
            },
            Outcome::CannotStart {
                name: "db".into(),
                error: StartError::NotFound,
            },
            Outcome::Internal {
                why: "cannot read signals".into(),
            },
            Outcome::Command(Exit::Code(0)),
            Outcome::Command(Exit::Code(3)),
            Outcome::Command(Exit::Signal(15)),
        ];
        let codes: Vec<u8> = outcomes.iter().map(of_init).collect();
        assert_eq!(codes, [0, 5, 137, 1, 122, 123, 126, 127, 2, 0, 3, 143]);
    }

    #[test]
    fn failures_map_to_the_readme_table() {
        let codes: Vec<u8> = [
            FailureKind::Invalid,
            FailureKind::Internal,
            FailureKind::CannotExecute,
            FailureKind::NotFound,
        ]
        .into_iter()
        .map(|kind| {
            of_init_failure(&tether_init::Failure {
                kind,
                message: String::new(),
            })
        })
        .collect();
        assert_eq!(codes, [1, 2, 126, 127]);
    }
}
