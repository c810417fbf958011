//! Why [`run`](crate::run) gave up.

use std::fmt;
use std::time::Duration;

use crate::options::show_duration;

/// Any error a plugin's callbacks may return from `on_start`: `?` converts most error types and
/// strings into it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`run`](crate::run) or [`run_with`](crate::run_with) returned an error. Its `Display` is
/// one line that names the sidecar's address and the cause, fit to print after `error: `.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable or option holds a value the SDK cannot use.
    Config {
        /// The variable (`SIDECAR_ADDR`, `SIDECAR_CONNECT_TIMEOUT`).
        variable: String,
        /// Its value.
        value: String,
        /// What is wrong with it and what is allowed.
        problem: String,
    },
    /// The sidecar could not be reached within the connect timeout: at start, or again after
    /// the connection was lost.
    Connect {
        /// The sidecar's address.
        addr: String,
        /// The connect timeout that ran out.
        timeout: Duration,
        /// The last attempt's failure.
        cause: String,
        /// True when a session had been up and the connection was lost.
        reconnecting: bool,
    },
    /// The sidecar ended the session at Hello: another protocol major (`FAILED_PRECONDITION`), a
    /// subscription outside the grants (`PERMISSION_DENIED`), a bad pattern (`INVALID_ARGUMENT`),
    /// another plugin's live session (`ALREADY_EXISTS`), ...
    Refused {
        /// The sidecar's address.
        addr: String,
        /// The gRPC status code's name, `PERMISSION_DENIED`.
        code: String,
        /// The sidecar's message.
        message: String,
    },
    /// The sidecar broke the protocol (a first message other than Welcome, another major in
    /// Welcome).
    Protocol {
        /// The sidecar's address.
        addr: String,
        /// What it did.
        problem: String,
    },
    /// The plugin's `on_start` returned an error (or panicked).
    Start {
        /// The sidecar's address.
        addr: String,
        /// The error `on_start` returned.
        source: BoxError,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config {
                variable,
                value,
                problem,
            } => write!(f, "{variable} `{value}` {problem}"),
            Error::Connect {
                addr,
                timeout,
                cause,
                reconnecting: false,
            } => write!(
                f,
                "cannot reach the sidecar at {addr} within {}: {cause}",
                show_duration(*timeout)
            ),
            Error::Connect {
                addr,
                timeout,
                cause,
                reconnecting: true,
            } => write!(
                f,
                "lost the sidecar at {addr} and could not reach it again within {}: {cause}",
                show_duration(*timeout)
            ),
            Error::Refused {
                addr,
                code,
                message,
            } => write!(
                f,
                "the sidecar at {addr} refused the session: {}",
                code_and_message(code, message)
            ),
            Error::Protocol { addr, problem } => {
                write!(f, "the sidecar at {addr} broke the protocol: {problem}")
            }
            Error::Start { addr, source } => {
                write!(
                    f,
                    "the plugin's on_start failed (sidecar at {addr}): {source}"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Start { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// `PERMISSION_DENIED: message`, or the code alone when the message is empty.
pub(crate) fn code_and_message(code: &str, message: &str) -> String {
    if message.is_empty() {
        code.to_string()
    } else {
        format!("{code}: {message}")
    }
}

/// The canonical name of a gRPC status code, as the protocol's messages spell it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its sources, `a: b: c`, without repeating a source that says what its parent
/// said.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !s.is_empty() && !last.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        last = s;
        source = e.source();
    }
    text
}
