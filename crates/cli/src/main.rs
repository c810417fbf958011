//! The `tether` binary: arguments in, output out. Decisions live in the library crates; this
//! crate is the only one that prints, and it maps every outcome to an exit code in `exit`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "the binary is where tether speaks to its user"
)]

use std::process::ExitCode;

use clap::Parser;

mod args;
mod cmd;
mod exit;
mod load;
mod output;
mod progress;

use args::{Cli, Command, FileArg};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics for tether's developers: TETHER_LOG=debug (or any tracing filter).
    // `tether sidecar` is a daemon: its start-up steps and what it does are its log.
    #[cfg(feature = "sidecar")]
    let daemon_log = matches!(cli.command, Command::Sidecar).then_some("tether_bus=info");
    #[cfg(not(feature = "sidecar"))]
    let daemon_log: Option<&str> = None;
    if let Some(filter) = std::env::var("TETHER_LOG")
        .ok()
        .or(daemon_log.map(str::to_owned))
    {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(std::env::var_os("TETHER_LOG").is_some())
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
    ExitCode::from(dispatch(cli.command))
}

fn dispatch(command: Command) -> u8 {
    match command {
        Command::Check { file, json } => cmd::check::check(&file, json),
        Command::Config { file, json } => cmd::check::config(&file, json),
        Command::Schema => cmd::check::schema(),
        Command::Plan {
            file,
            session,
            json,
            argv,
        } => cmd::plan::plan(&file, session, json, argv),
        Command::Run {
            file,
            session,
            json,
            pull,
            argv,
        } => cmd::run::run(&file, session, json, pull.into(), argv),
        Command::Up {
            file,
            names,
            env,
            json,
            pull,
        } => cmd::run::up(&file, names, env, json, pull.into()),
        Command::Foreground { argv } => cmd::run::foreground(&argv),
        Command::Ps { file, json } => cmd::sidecars::ps(&file, json),
        Command::Logs {
            file,
            sidecar,
            follow,
            tail,
        } => cmd::sidecars::logs(&FileArg { file }, &sidecar, follow, tail),
        Command::Down {
            file,
            sessions,
            all,
        } => cmd::sidecars::down(&file, sessions, all),
        Command::Render {
            target,
            file,
            output,
            allow_lossy,
            include_secret_values,
            wait_image,
        } => cmd::render::render(
            target,
            &file,
            cmd::render::Options {
                output,
                allow_lossy,
                include_secret_values,
                wait_image: wait_image.as_deref(),
            },
        ),
        Command::Wait {
            timeout,
            interval,
            quiet,
            targets,
        } => cmd::wait::wait(&targets, timeout, interval, quiet),
        Command::Init {
            file,
            only,
            no_setsid,
            grace,
            command,
        } => cmd::init::init(file, only, no_setsid, grace, command),
        Command::Ctl {
            socket,
            json,
            command,
        } => cmd::ctl::ctl(socket, json, command),
        #[cfg(feature = "bus")]
        Command::Bus { command } => cmd::bus::run(command),
        #[cfg(feature = "sidecar")]
        Command::Sidecar => cmd::sidecar::run(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
