//! What tether says on stderr: the one error-line format, warnings, and whether to colour.
//!
//! An error is `error: MESSAGE`, then `  = hint: HINT` when there is one, then any detail lines
//! indented by two spaces; the declaration's diagnostics (rendered by tether-spec) follow the
//! same shape with a source snippet between.

use std::io::IsTerminal;

/// The lines of one error, as they are printed.
pub fn error_lines(message: &str, hint: Option<&str>, details: &[String]) -> String {
    let mut out = format!("error: {message}\n");
    if let Some(h) = hint {
        out.push_str(&format!("  = hint: {h}\n"));
    }
    for d in details {
        out.push_str(&format!("  {d}\n"));
    }
    out
}

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
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_line_then_its_hint_then_details() {
        assert_eq!(error_lines("it broke", None, &[]), "error: it broke\n");
        assert_eq!(
            error_lines(
                "sidecar db: exited",
                Some("look at its logs"),
                &["its last 1 lines:".into(), "| boom".into()]
            ),
            "error: sidecar db: exited\n  = hint: look at its logs\n  its last 1 lines:\n  | boom\n"
        );
    }
}
