//! The exit codes of `tether init` (README, "Exit codes of tether init"): the library says how
//! a run ended, this says which number that is.

use tether_init::{Failure, FailureKind, Outcome, StartError};

use crate::exit;

/// A fatal step failed or timed out; no daemon was started.
const STEP_FAILED: u8 = 122;
/// A daemon gave up after `max_restarts`.
const GAVE_UP: u8 = 123;
/// A command exists but could not be executed (permissions, format), as in a shell.
const CANNOT_EXECUTE: u8 = 126;
/// A command was not found, as in a shell.
const NOT_FOUND: u8 = 127;

/// The exit code of a run that ended.
pub fn code(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Clean => exit::OK,
        // 128+N when killed by signal N; a failure is never 0.
        Outcome::Failed { exit, .. } => (exit.code() & 0xff).max(1) as u8,
        Outcome::StepFailed { .. } => STEP_FAILED,
        Outcome::GaveUp { .. } => GAVE_UP,
        Outcome::CannotStart { error, .. } => match error {
            StartError::NotFound => NOT_FOUND,
            StartError::CannotExecute => CANNOT_EXECUTE,
        },
        Outcome::Internal { .. } => exit::INTERNAL,
        Outcome::Command(exit) => (exit.code() & 0xff) as u8,
    }
}

/// The exit code of a run that could not begin.
pub fn failure(f: &Failure) -> u8 {
    match f.kind {
        FailureKind::Invalid => exit::INVALID,
        FailureKind::Internal => exit::INTERNAL,
        FailureKind::CannotExecute => CANNOT_EXECUTE,
        FailureKind::NotFound => NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_init::Exit;

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
        let codes: Vec<u8> = outcomes.iter().map(code).collect();
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
            failure(&Failure {
                kind,
                message: String::new(),
            })
        })
        .collect();
        assert_eq!(codes, [1, 2, 126, 127]);
    }
}
