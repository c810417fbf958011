//! `tether-sidecar`: `tether sidecar` alone. The command is `tether_bus::sidecar::command`, the
//! same one `tether sidecar` runs, configured by the environment as the container contract
//! says; this binary adds only its help and version and the log on stderr.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "the binary is where tether speaks to its user"
)]

use std::io::IsTerminal;
use std::process::ExitCode;

const HELP: &str = "\
The plugin bus sidecar (`tether sidecar` alone): a plugin reaches the bus through it on
SIDECAR_ADDR (default 127.0.0.1:9191)

Usage: tether-sidecar

Configured by the environment: INSTANCE_ID and POOL_TYPE (required), IMAGE, REQUESTED_GRANTS,
TAGS, SIDECAR_CONFIG, SIDECAR_BUS_API_URL, SIDECAR_ADDR, SIDECAR_HEALTH_ADDR; see `tether
sidecar` in tether's README. TETHER_LOG sets the log filter (default tether_bus=info).

Options:
  -h, --help     Print help
  -V, --version  Print version
";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("tether-sidecar {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!(
                "error: unexpected argument `{other}`: tether-sidecar is configured by the environment\n  = hint: tether-sidecar --help\n"
            );
            return ExitCode::from(tether_bus::sidecar::command::exit::INVALID);
        }
    }
    let stderr = std::io::stderr();
    // The sidecar is a daemon: its start-up steps and what it does are its log.
    let filter = std::env::var("TETHER_LOG").unwrap_or_else(|_| "tether_bus=info".to_owned());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(stderr.is_terminal())
        .with_target(std::env::var_os("TETHER_LOG").is_some())
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    let color = tether_spec::diag::color(&stderr);
    let finished = tether_bus::sidecar::command::main("tether-sidecar", color);
    eprint!("{}", finished.stderr);
    ExitCode::from(finished.code)
}
