//! `tether bus serve`: the Bus API server, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tether_bus::store::Retention;

use crate::args::BusCommand;
use crate::{exit, output};

pub fn run(command: BusCommand) -> u8 {
    match command {
        BusCommand::Serve {
            listen,
            data,
            policy,
            max_age,
            max_bytes,
        } => serve(&listen, data, policy, max_age, max_bytes),
    }
}

fn serve(
    listen: &str,
    data: PathBuf,
    policy: Option<PathBuf>,
    max_age: Duration,
    max_bytes: u64,
) -> u8 {
    // Everything is checked before anything starts.
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            output::error_hint(
                format!("--listen `{listen}` is not an address"),
                Some("an IP address and a port: 127.0.0.1:8443, 0.0.0.0:8443, [::1]:8443"),
            );
            return exit::INVALID;
        }
    };
    if max_age.is_zero() || max_bytes == 0 {
        output::error("--max-age and --max-bytes must be more than zero");
        return exit::INVALID;
    }
    let policy = match &policy {
        None => None,
        Some(path) => match tether_bus::policy::load(path) {
            Ok(p) => Some(p),
            Err(e) => {
                eprint!("{}", e.render(output::color()));
                return exit::INVALID;
            }
        },
    };
    let open = policy.is_none();
    let mut options = tether_bus::Options::new(addr, data.clone());
    options.policy = policy;
    options.retention = Retention { max_age, max_bytes };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::error(format!("cannot start the runtime: {e}"));
            return exit::INTERNAL;
        }
    };
    runtime.block_on(async move {
        let bound = match tether_bus::bind(options).await {
            Ok(b) => b,
            Err(e) => {
                output::error_hint(&e, hint(&e));
                return exit::of_bus(&e);
            }
        };
        let (mut term, mut int) = match (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                output::error(format!("cannot handle signals: {e}"));
                return exit::INTERNAL;
            }
        };
        eprintln!(
            "tether bus: listening on {} (tether.bus.v{}), data in {}",
            bound.local_addr(),
            tether_bus_proto_major(),
            data.display()
        );
        if open {
            output::warning(
                "no --policy: every grant an instance requests is given (for development only)",
            );
        }
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        match bound.run(stop).await {
            Ok(()) => {
                eprintln!("tether bus: stopped");
                exit::OK
            }
            Err(e) => {
                output::error(&e);
                exit::of_bus(&e)
            }
        }
    })
}

fn tether_bus_proto_major() -> u32 {
    tether_bus::server::PROTOCOL_MAJOR
}

fn hint(e: &tether_bus::ServeError) -> Option<&'static str> {
    match e {
        tether_bus::ServeError::Bind { .. } => {
            Some("another process may hold the port: choose another with --listen")
        }
        tether_bus::ServeError::Store { .. } => Some(
            "another `tether bus serve` may be using this data folder: choose another with --data",
        ),
        tether_bus::ServeError::Sync { .. } | tether_bus::ServeError::Transport(_) => None,
    }
}
