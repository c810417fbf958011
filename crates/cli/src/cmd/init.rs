//! `tether init`: a bundle of daemons under one PID 1, or one command tini-style.

use crate::args::FileArg;
use crate::load::load;
use crate::{exit, output};

pub fn init(
    file: &FileArg,
    only: Vec<String>,
    no_setsid: bool,
    grace: Option<std::time::Duration>,
    command: Vec<String>,
) -> u8 {
    let outcome = if !command.is_empty() {
        if file.file.is_some() || !only.is_empty() {
            output::error("`tether init -- COMMAND` runs one command; -f and --only do not apply");
            return exit::INVALID;
        }
        let defaults = tether_init::Single::default();
        let single = tether_init::Single {
            new_session: !no_setsid,
            grace: grace.unwrap_or(defaults.grace),
        };
        tether_init::run_single(&command, single)
    } else {
        if no_setsid || grace.is_some() {
            output::error_hint(
                "--no-setsid and --grace apply to `tether init -- COMMAND`",
                Some(
                    "a bundle's daemons take `stop: {signal, grace}` and `forward_signals` in the declaration",
                ),
            );
            return exit::INVALID;
        }
        let loaded = match load(file, false) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let decl = loaded.declaration;
        // The file is read again by `tether ctl reload`, from wherever tether then is.
        let path = std::path::PathBuf::from(&decl.file);
        let path = std::path::absolute(&path).unwrap_or(path);
        let Some(init) = decl.init else {
            output::error_hint(
                format!("{}: there is no `init` section to run", decl.file),
                Some("declare `init.daemons`, or run one command with `tether init -- COMMAND`"),
            );
            return exit::INVALID;
        };
        let (names, from) = if only.is_empty() {
            let value = std::env::var(&init.select_env).unwrap_or_default();
            (
                tether_init::selected_names(&value),
                format!("${}", init.select_env),
            )
        } else {
            (only, "--only".to_owned())
        };
        let selection = match tether_init::select(&init, &names) {
            Ok(s) => s,
            Err(e) => {
                output::error(format!("{from}: {e}"));
                return exit::INVALID;
            }
        };
        // The library writes through copies of our stdout and stderr.
        use std::os::fd::AsFd;
        let streams = match (
            std::io::stdout().as_fd().try_clone_to_owned(),
            std::io::stderr().as_fd().try_clone_to_owned(),
        ) {
            (Ok(stdout), Ok(stderr)) => tether_init::Streams { stdout, stderr },
            (Err(e), _) | (_, Err(e)) => {
                output::error(format!("cannot use the output: {e}"));
                return exit::INTERNAL;
            }
        };
        let control = tether_init::ControlSetup {
            file: path,
            socket: init
                .control
                .as_ref()
                .map(|c| c.socket.clone().into())
                .unwrap_or_else(tether_init::default_socket),
            declared: init.control.is_some(),
        };
        tether_init::run_bundle(init, selection, streams, exit::of_init, control)
    };
    match outcome {
        Ok(outcome) => exit::of_init(&outcome),
        Err(f) => {
            output::error(&f.message);
            exit::of_init_failure(&f)
        }
    }
}
