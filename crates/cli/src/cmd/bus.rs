//! `tether bus serve`: the Bus API server, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tether_bus::store::{Retention, SyncMode};

use crate::args::{BusCommand, duration};
use crate::{exit, output};

pub fn run(command: BusCommand) -> u8 {
    match command {
        BusCommand::Serve {
            listen,
            data,
            policy,
            max_age,
            max_bytes,
            sync,
            http,
            tls_cert,
            tls_key,
        } => serve(Flags {
            listen,
            data,
            policy,
            max_age,
            max_bytes,
            sync,
            http,
            tls_cert,
            tls_key,
        }),
    }
}

struct Flags {
    listen: Option<String>,
    data: PathBuf,
    policy: Option<PathBuf>,
    max_age: Duration,
    max_bytes: u64,
    sync: String,
    http: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// An address flag, or `None` after saying what is wrong with it.
fn address(flag: &str, value: &str) -> Option<SocketAddr> {
    let parsed = value.parse().ok();
    if parsed.is_none() {
        output::error_hint(
            format!("{flag} `{value}` is not an address"),
            Some("an IP address and a port: 127.0.0.1:8443, 0.0.0.0:8443, [::1]:8443"),
        );
    }
    parsed
}

/// `--sync`: `always` or a duration of more than zero.
fn sync_mode(s: &str) -> Result<SyncMode, String> {
    if s == "always" {
        return Ok(SyncMode::Always);
    }
    match duration(s) {
        Ok(d) if d.is_zero() => Err(format!("--sync `{s}` is zero")),
        Ok(d) => Ok(SyncMode::Every(d)),
        Err(e) => Err(format!("--sync {e}")),
    }
}

fn serve(flags: Flags) -> u8 {
    let Flags {
        listen,
        data,
        policy,
        max_age,
        max_bytes,
        sync,
        http,
        tls_cert,
        tls_key,
    } = flags;
    // Everything is checked before anything starts.
    let addr = match &listen {
        None => tether_bus::server::default_listen(),
        Some(listen) => match address("--listen", listen) {
            Some(a) => a,
            None => return exit::INVALID,
        },
    };
    let http = match http.as_deref() {
        None => None,
        Some(h) => match address("--http", h) {
            Some(a) => Some(a),
            None => return exit::INVALID,
        },
    };
    let sync = match sync_mode(&sync) {
        Ok(s) => s,
        Err(e) => {
            output::error_hint(
                e,
                Some("`always` (fsync before every answer) or how often to fsync: 100ms, 1s"),
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
    let tls = match (&tls_cert, &tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => match tether_bus::tls::server(cert, key) {
            Ok(t) => Some(t),
            Err(e) => {
                output::error_hint(
                    &e,
                    Some("--tls-cert: the certificate chain, --tls-key: its private key, both PEM"),
                );
                return exit::INVALID;
            }
        },
        _ => {
            output::error("--tls-cert and --tls-key go together: give both, or neither");
            return exit::INVALID;
        }
    };
    let tls_on = tls.is_some();
    let open = policy.is_none();
    let mut options = tether_bus::Options::new(addr, data.clone());
    options.policy = policy;
    options.retention = Retention { max_age, max_bytes };
    options.sync = sync;
    options.http = http;
    options.tls = tls;
    let drain = options.drain;

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
            "tether bus: listening on {} (tether.bus.v{}{}), data in {}",
            bound.local_addr(),
            tether_bus_proto_major(),
            if tls_on { ", TLS" } else { "" },
            data.display()
        );
        if let Some(h) = bound.http_addr() {
            eprintln!("tether bus: /healthz, /readyz and /metrics on http://{h}");
        }
        if let SyncMode::Every(every) = sync {
            output::warning(format!(
                "--sync {}: writes are answered before they reach the disk; a crash of tether or \
                 of this machine loses the publishes and acks of about the last {0}",
                humantime::format_duration(every)
            ));
        }
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
            Ok(stopped) => {
                if stopped.cut_off {
                    output::warning(format!(
                        "clients still connected {} after the stop signal were cut off",
                        humantime::format_duration(drain)
                    ));
                }
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
        tether_bus::ServeError::BindHttp { .. } => {
            Some("another process may hold the port: choose another with --http")
        }
        tether_bus::ServeError::Store { .. } => Some(
            "another `tether bus serve` may be using this data folder: choose another with --data",
        ),
        tether_bus::ServeError::Sync { .. } | tether_bus::ServeError::Transport(_) => None,
    }
}
