//! `tether bus serve`: the Bus API server, until SIGTERM or SIGINT (`publish` and `tail` are in
//! `bus_client`).

use std::net::SocketAddr;

use tether_bus::store::{Retention, SyncMode};

use crate::args::{BusCommand, ServeArgs, duration};
use crate::{exit, output};

pub fn run(command: BusCommand) -> u8 {
    match command {
        BusCommand::Serve(flags) => serve(flags),
        BusCommand::Publish(flags) => super::bus_client::publish(flags),
        BusCommand::Tail(flags) => super::bus_client::tail(flags),
    }
}

/// `--backend` and the NATS flags, checked together; the user and password come from
/// `NATS_USER` and `NATS_PASSWORD`, or the files `NATS_USER_FILE` and `NATS_PASSWORD_FILE` name
/// (never from argv, where `ps` would show them).
/// Each is the value and the variable it came from (`NATS_USER` or `NATS_USER_FILE`).
fn backend(
    flags: &ServeArgs,
    user: Option<(String, String)>,
    password: Option<(String, String)>,
) -> Result<tether_bus::Backend, (String, &'static str)> {
    let nats_flag = [
        (flags.nats_url.is_some(), "--nats-url"),
        (flags.nats_creds.is_some(), "--nats-creds"),
        (flags.nats_ca.is_some(), "--nats-ca"),
        (flags.replicas != 1, "--replicas"),
    ]
    .into_iter()
    .find_map(|(given, name)| given.then_some(name));
    match flags.backend.as_str() {
        "embedded" => match nats_flag {
            Some(name) => Err((
                format!("{name} is for --backend nats"),
                "add --backend nats, or leave the NATS flags out for the embedded store",
            )),
            None => Ok(tether_bus::Backend::Embedded),
        },
        "nats" => {
            let Some(urls) = &flags.nats_url else {
                return Err((
                    "--backend nats needs --nats-url".into(),
                    "the NATS servers, comma-separated: --nats-url nats://h1:4222,nats://h2:4222",
                ));
            };
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if urls.is_empty() {
                return Err((
                    "--nats-url names no server".into(),
                    "the NATS servers, comma-separated: --nats-url nats://h1:4222,nats://h2:4222",
                ));
            }
            if !(1..=5).contains(&flags.replicas) {
                return Err((
                    format!("--replicas {} is not 1 to 5", flags.replicas),
                    "JetStream keeps 1 to 5 copies of a stream",
                ));
            }
            let user = match (user, password) {
                (None, None) => None,
                (Some((u, user_var)), Some((p, password_var))) => {
                    Some(((u, p), format!("{user_var}, {password_var}")))
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err((
                        "NATS_USER and NATS_PASSWORD go together: set both, or neither".into(),
                        "or use a credentials file: --nats-creds FILE",
                    ));
                }
            };
            if user.is_some() && flags.nats_creds.is_some() {
                return Err((
                    "--nats-creds and NATS_USER/NATS_PASSWORD are two credentials: give one".into(),
                    "a credentials file (JWT and NKey) or a user and password, as the servers expect",
                ));
            }
            #[cfg(feature = "nats")]
            {
                let mut nats = tether_bus::nats::NatsOptions::new(urls);
                nats.replicas = flags.replicas;
                nats.creds = flags.nats_creds.clone();
                nats.ca = flags.nats_ca.clone();
                if let Some((user, from)) = user {
                    nats.user = Some(user);
                    nats.user_from = from;
                }
                Ok(tether_bus::Backend::Nats(Box::new(nats)))
            }
            #[cfg(not(feature = "nats"))]
            {
                let _ = (urls, user);
                Err((
                    "this tether was built without the NATS backend".into(),
                    "build it with the cargo feature `nats`",
                ))
            }
        }
        other => Err((
            format!("--backend `{other}` is not a backend"),
            "`embedded` (a redb file in --data) or `nats` (NATS JetStream)",
        )),
    }
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

/// `NAME`, or the contents of the file `NAME_FILE` names (a secret mounted as a file, so that
/// the value is in no container's environment); a trailing newline is not part of it. An error
/// names the variables and the file, never the value. Answers the value and the variable it
/// came from.
fn env_or_file(name: &str) -> Result<Option<(String, String)>, (String, &'static str)> {
    let file_var = format!("{name}_FILE");
    match (std::env::var(name).ok(), std::env::var_os(&file_var)) {
        (Some(_), Some(_)) => Err((
            format!("{name} and {file_var} are both set: give one"),
            "the value itself, or (better, for a secret) the file that holds it",
        )),
        (value, None) => Ok(value.map(|v| (v, name.to_owned()))),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_owned(),
                file_var,
            ))),
            Err(e) => Err((
                format!(
                    "{file_var}: cannot read {}: {}",
                    std::path::Path::new(&path).display(),
                    e.kind()
                ),
                "the file that holds the value, e.g. a secret under /run/secrets/",
            )),
        },
    }
}

fn serve(flags: ServeArgs) -> u8 {
    // Read only for NATS: the embedded store has no use for them.
    let credential = if flags.backend == "nats" {
        env_or_file("NATS_USER").and_then(|user| Ok((user, env_or_file("NATS_PASSWORD")?)))
    } else {
        Ok((None, None))
    };
    let credential = credential.and_then(|(user, password)| backend(&flags, user, password));
    let backend = match credential {
        Ok(b) => b,
        Err((e, hint)) => {
            output::error_hint(e, Some(hint));
            return exit::INVALID;
        }
    };
    let on_nats = !matches!(backend, tether_bus::Backend::Embedded);
    let ServeArgs {
        listen,
        data,
        policy,
        max_age,
        max_bytes,
        sync,
        http,
        tls_cert,
        tls_key,
        ..
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
    // The policy's warnings, printed once it listens: `tether bus serve` logs nothing unless
    // TETHER_LOG asks, so the `tracing` warning of `policy::load` alone would go unseen.
    let mut unguarded = Vec::new();
    let policy = match &policy {
        None => None,
        Some(path) => match tether_bus::policy::load(path) {
            Ok(p) => {
                let file = path.display().to_string();
                unguarded = p.unguarded.iter().map(|u| u.warning(&file)).collect();
                Some(p)
            }
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
    options.backend = backend;
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
        let store = if on_nats {
            "data in NATS JetStream".to_owned()
        } else {
            format!("data in {}", data.display())
        };
        eprintln!(
            "tether bus: listening on {} (tether.bus.v{}{}), {store}",
            bound.local_addr(),
            tether_bus_proto_major(),
            if tls_on { ", TLS" } else { "" },
        );
        if let Some(h) = bound.http_addr() {
            eprintln!("tether bus: /healthz, /readyz and /metrics on http://{h}");
        }
        if let (SyncMode::Every(every), false) = (sync, on_nats) {
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
        for w in &unguarded {
            output::warning(w);
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
        tether_bus::ServeError::Nats(_) => Some(
            "check --nats-url, the credentials (--nats-creds, or NATS_USER and NATS_PASSWORD), \
             --nats-ca, and that the servers run with JetStream (nats-server -js)",
        ),
        tether_bus::ServeError::Sync { .. } | tether_bus::ServeError::Transport(_) => None,
    }
}
