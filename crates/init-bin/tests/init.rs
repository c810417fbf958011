//! Every `tether init` test (crates/cli/tests/init.rs), run against the init-only binary
//! `tether-init`: built here, the tests' support module finds `CARGO_BIN_EXE_tether-init` and
//! runs it where the cli's build runs `tether init`.

#[path = "../../cli/tests/init.rs"]
mod init;
