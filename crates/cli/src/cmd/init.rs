//! `tether init`: a bundle of daemons under one PID 1, or one command tini-style.

use crate::args::FileArg;
use crate::load::load;
use crate::{exit, output};

pub fn init(file: &FileArg, only: Vec<String>, command: Vec<String>) -> u8 {
    let code = if !command.is_empty() {
        if file.file.is_some() || !only.is_empty() {
            output::error("`tether init -- COMMAND` runs one command; -f and --only do not apply");
            return exit::INVALID;
        }
        tether_init::run_single(&command)
    } else {
        let loaded = match load(file, false) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let decl = loaded.declaration;
        let Some(init) = decl.init else {
            output::error_hint(
                format!("{}: there is no `init` section to run", decl.file),
                Some("declare `init.daemons`, or run one command with `tether init -- COMMAND`"),
            );
            return exit::INVALID;
        };
        let (names, from) = if only.is_empty() {
            let names = std::env::var(&init.select_env).unwrap_or_default();
            let names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (names, format!("${}", init.select_env))
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
        tether_init::run_bundle(init, selection)
    };
    match code {
        Ok(code) => exit::truncate(code),
        Err(f) => {
            output::error(f.message);
            exit::truncate(f.code)
        }
    }
}
