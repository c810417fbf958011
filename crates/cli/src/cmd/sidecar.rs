//! `tether sidecar`: the bus sidecar, configured by the environment (the container contract).
//! Its body is `tether_bus::sidecar::command`, which the sidecar-only `tether-sidecar` runs too.

use crate::output;

pub fn run() -> u8 {
    let finished = tether_bus::sidecar::command::main("tether sidecar", output::color());
    eprint!("{}", finished.stderr);
    finished.code
}
