//! `tether check`, `tether config` and `tether schema`: the declaration itself.

use crate::args::FileArg;
use crate::load::load;
use crate::{exit, output};

pub fn check(file: &FileArg, json: bool) -> u8 {
    match load(file, json) {
        Ok(l) => {
            let d = &l.declaration;
            if json {
                println!("[]");
            } else {
                let steps = d.init.as_ref().map_or(0, |i| i.steps.len());
                let daemons = d.init.as_ref().map_or(0, |i| i.daemons.len());
                eprintln!(
                    "{}: valid (project {}, {} sidecar{}, {} step{}, {} daemon{})",
                    d.file,
                    d.project,
                    d.sidecars.len(),
                    plural(d.sidecars.len()),
                    steps,
                    plural(steps),
                    daemons,
                    plural(daemons)
                );
            }
            exit::OK
        }
        Err(code) => code,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn config(file: &FileArg, json: bool) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let value = match serde_json::to_value(&loaded.declaration) {
        Ok(v) => v,
        Err(e) => {
            output::error(format!("cannot serialise the declaration: {e}"));
            return exit::INTERNAL;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", tether_spec::emit::to_yaml(&value));
    }
    exit::OK
}

pub fn schema() -> u8 {
    print!("{}", tether_spec::SCHEMA);
    exit::OK
}
