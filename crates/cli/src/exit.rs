//! Every exit code tether returns, decided here and nowhere else (the README's tables).

use tether_run::run::{Ended, Failure};

// `tether init`'s codes are decided in tether-init, for both binaries that run it.
pub use tether_init::exit::{
    CANNOT_EXECUTE, INTERNAL, INVALID, NOT_FOUND, OK, signalled, truncate,
};

/// `tether wait`: something was not ready in time.
pub const NOT_READY: u8 = 3;
/// `tether run` and `up`: a sidecar could not be started or did not become ready.
pub const SIDECAR: u8 = 3;
/// `tether ctl`: no tether init answers on the socket, or it ended before answering.
pub const CTL_UNREACHABLE: u8 = tether_init::control::code::UNREACHABLE;

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

/// `tether bus serve`: why the bus could not start or stopped.
#[cfg(feature = "bus")]
pub fn of_bus(e: &tether_bus::ServeError) -> u8 {
    match e {
        tether_bus::ServeError::Bind { .. }
        | tether_bus::ServeError::BindHttp { .. }
        | tether_bus::ServeError::Store { .. }
        | tether_bus::ServeError::Nats(_)
        | tether_bus::ServeError::Sync { .. }
        | tether_bus::ServeError::Transport(_) => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
