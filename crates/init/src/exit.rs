//! The exit codes of `tether init`, the README's table: decided here once for both binaries
//! that run it (`tether init` and the init-only `tether-init`); `tether`'s other codes are the
//! cli's (`crates/cli/src/exit.rs`, which takes these from here).

use crate::core::{Outcome, StartError};
use crate::{Failure, FailureKind};

pub const OK: u8 = 0;
/// A declaration or usage error; nothing was started.
pub const INVALID: u8 = 1;
/// tether itself could not work.
pub const INTERNAL: u8 = 2;
/// A fatal step failed or timed out; no daemon was started.
pub const STEP_FAILED: u8 = 122;
/// A daemon gave up after `max_restarts`.
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

/// How the bundle or the command ended.
pub fn of_outcome(outcome: &Outcome) -> u8 {
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

/// Why it could not begin.
pub fn of_failure(f: &Failure) -> u8 {
    match f.kind {
        FailureKind::Invalid => INVALID,
        FailureKind::Internal => INTERNAL,
        FailureKind::CannotExecute => CANNOT_EXECUTE,
        FailureKind::NotFound => NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Exit;

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
        let codes: Vec<u8> = outcomes.iter().map(of_outcome).collect();
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
            of_failure(&Failure {
                kind,
                message: String::new(),
            })
        })
        .collect();
        assert_eq!(codes, [1, 2, 126, 127]);
    }
}
