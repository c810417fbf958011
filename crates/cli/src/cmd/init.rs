//! `tether init`: a bundle of daemons under one PID 1, or one command tini-style. The command is
//! `tether_init::command`, shared with the init-only binary `tether-init`.

use std::os::fd::AsFd;

use crate::args::FileArg;

pub fn init(
    file: FileArg,
    only: Vec<String>,
    no_setsid: bool,
    grace: Option<std::time::Duration>,
    command: Vec<String>,
) -> u8 {
    let args = tether_init::command::Args {
        file: file.file,
        only,
        no_setsid,
        grace,
        command,
    };
    tether_init::command::run(args, std::io::stdout().as_fd(), std::io::stderr().as_fd())
}
