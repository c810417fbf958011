//! `tether init` as a command, the same in both binaries that run it (`tether init` and the
//! init-only `tether-init`): the arguments checked, the declaration opened and the daemons
//! selected, the bundle or the one command run, and the exit code decided. The binaries parse
//! the arguments and hand over their output; what goes wrong before anything runs is written to
//! the error stream in the one error format.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

use tether_spec::diag::error_lines;

use crate::exit;
use crate::logs::Streams;

/// `tether init`'s arguments, as parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `-f FILE`; else `tether.yaml` in the current folder or the nearest parent.
    pub file: Option<PathBuf>,
    /// `--only a,b`: these daemons and what they depend on.
    pub only: Vec<String>,
    /// `--no-setsid`, with `-- COMMAND` only.
    pub no_setsid: bool,
    /// `--grace DURATION`, with `-- COMMAND` only.
    pub grace: Option<Duration>,
    /// `-- COMMAND ARGS…`: one command, no declaration.
    pub command: Vec<String>,
}

/// A duration as the declaration writes them, for `--grace`: `500ms`, `30s`, `2m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (use 500ms, 30s or 2m)"))
}

/// Runs `tether init` to its end and returns the exit code. `stdout` and `stderr` are the
/// process's: daemons' lines and events go there, and so does any error before the start.
pub fn run(args: Args, stdout: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> u8 {
    // As PID 1, a SIGTERM that arrives unblocked while the declaration is read is lost.
    crate::block_signals_early();
    let mut err = Errors(stderr);
    let outcome = if !args.command.is_empty() {
        if args.file.is_some() || !args.only.is_empty() {
            err.say(
                "`tether init -- COMMAND` runs one command; -f and --only do not apply",
                None,
            );
            return exit::INVALID;
        }
        let defaults = crate::Single::default();
        let single = crate::Single {
            new_session: !args.no_setsid,
            grace: args.grace.unwrap_or(defaults.grace),
        };
        crate::run_single(&args.command, single)
    } else {
        if args.no_setsid || args.grace.is_some() {
            err.say(
                "--no-setsid and --grace apply to `tether init -- COMMAND`",
                Some(
                    "a bundle's daemons take `stop: {signal, grace}` and `forward_signals` in the declaration",
                ),
            );
            return exit::INVALID;
        }
        let loaded = match tether_spec::open(args.file.as_deref()) {
            Ok(l) => l,
            Err(refused) => {
                err.text(&refused.render(tether_spec::diag::color(&stderr)));
                return if refused.is_internal() {
                    exit::INTERNAL
                } else {
                    exit::INVALID
                };
            }
        };
        let decl = loaded.declaration;
        // The file is read again by `tether ctl reload`, from wherever tether then is.
        let path = PathBuf::from(&decl.file);
        let path = std::path::absolute(&path).unwrap_or(path);
        let Some(init) = decl.init else {
            err.say(
                &format!("{}: there is no `init` section to run", decl.file),
                Some("declare `init.daemons`, or run one command with `tether init -- COMMAND`"),
            );
            return exit::INVALID;
        };
        let (names, from) = if args.only.is_empty() {
            let value = std::env::var(&init.select_env).unwrap_or_default();
            (
                crate::selected_names(&value),
                format!("${}", init.select_env),
            )
        } else {
            (args.only, "--only".to_owned())
        };
        let selection = match crate::select(&init, &names) {
            Ok(s) => s,
            Err(e) => {
                err.say(&format!("{from}: {e}"), None);
                return exit::INVALID;
            }
        };
        // The supervisor writes through copies of the output.
        let streams = match (stdout.try_clone_to_owned(), stderr.try_clone_to_owned()) {
            (Ok(stdout), Ok(stderr)) => Streams { stdout, stderr },
            (Err(e), _) | (_, Err(e)) => {
                err.say(&format!("cannot use the output: {e}"), None);
                return exit::INTERNAL;
            }
        };
        let control = crate::ControlSetup {
            file: path,
            socket: init
                .control
                .as_ref()
                .map(|c| c.socket.clone().into())
                .unwrap_or_else(crate::default_socket),
            declared: init.control.is_some(),
        };
        crate::run_bundle(init, selection, streams, exit::of_outcome, control)
    };
    match outcome {
        Ok(outcome) => exit::of_outcome(&outcome),
        Err(f) => {
            err.say(&f.message, None);
            exit::of_failure(&f)
        }
    }
}

/// The error stream, written whole or not at all (a closed stderr is no reason to fail).
struct Errors<'a>(BorrowedFd<'a>);

impl Errors<'_> {
    fn say(&mut self, message: &str, hint: Option<&str>) {
        self.text(&error_lines(message, hint, &[]));
    }

    fn text(&mut self, text: &str) {
        let _ = self.write_all(text.as_bytes());
    }
}

impl Write for Errors<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(nix::unistd::write(self.0.as_fd(), buf)?)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
