//! What tether says on stderr: the one error-line format, warnings, and whether to colour.
//!
//! An error is `error: MESSAGE`, then `  = hint: HINT` when there is one, then any detail lines
//! indented by two spaces; the declaration's diagnostics (rendered by tether-spec) follow the
//! same shape with a source snippet between.

pub use tether_spec::diag::error_lines;

/// Prints one error on stderr.
pub fn error(message: impl std::fmt::Display) {
    eprint!("{}", error_lines(&message.to_string(), None, &[]));
}

/// Prints one error with its hint on stderr.
pub fn error_hint(message: impl std::fmt::Display, hint: Option<&str>) {
    eprint!("{}", error_lines(&message.to_string(), hint, &[]));
}

/// Prints one error with its hint and detail lines on stderr.
pub fn error_details(message: impl std::fmt::Display, hint: Option<&str>, details: &[String]) {
    eprint!("{}", error_lines(&message.to_string(), hint, details));
}

pub fn warning(message: impl std::fmt::Display) {
    eprintln!("warning: {message}");
}

/// Whether stderr shows colours: a terminal, and no `NO_COLOR`.
pub fn color() -> bool {
    tether_spec::diag::color(&std::io::stderr())
}
