//! `tether plan`: what `tether run` would start, touching no engine.

use crate::args::FileArg;
use crate::exit;
use crate::load::planned;

pub fn plan(file: &FileArg, session: Option<String>, json: bool, argv: Vec<String>) -> u8 {
    let (_, p) = match planned(file, session, argv) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
    } else {
        print!("{}", p.render_text());
    }
    exit::OK
}
