//! The progress of `tether run` and `tether up`: a live line per sidecar on a terminal, plain
//! lines otherwise, or one JSON object per change for scripts. Always on stderr: stdout is the
//! workload's.

use std::io::{IsTerminal, Write};

use tether_run::launch::Status;
use tether_run::run::{Failure, Report};

pub enum Progress {
    Plain,
    Live(std::sync::Mutex<Vec<(String, String)>>),
    Json,
}

/// One line of progress, on stderr.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "tether: {line}");
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        if json {
            Progress::Json
        } else if std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
        {
            Progress::Live(std::sync::Mutex::new(Vec::new()))
        } else {
            Progress::Plain
        }
    }
}

impl Report for Progress {
    fn status(&self, sidecar: &str, status: &Status) {
        match self {
            // Off a terminal, a pull is one line, not one per percent.
            Progress::Plain => {
                if !matches!(
                    status,
                    Status::Pulling {
                        percent: Some(_),
                        ..
                    }
                ) {
                    say(&describe(sidecar, status));
                }
            }
            Progress::Json => {
                let _ = writeln!(std::io::stderr(), "{}", json(sidecar, status));
            }
            Progress::Live(lines) => {
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                let out = redraw(&mut lines, sidecar, describe(sidecar, status));
                let _ = std::io::stderr().write_all(out.as_bytes());
            }
        }
    }
}

/// The block of live lines drawn again with one changed: back to the top of the block, then
/// every line, each cleared first and cut to one screen line (or moving up would miss).
fn redraw(lines: &mut Vec<(String, String)>, sidecar: &str, text: String) -> String {
    let drawn = lines.len();
    match lines.iter_mut().find(|(s, _)| s == sidecar) {
        Some(l) => l.1 = text,
        None => lines.push((sidecar.to_owned(), text)),
    }
    let mut out = String::new();
    if drawn > 0 {
        out.push_str(&format!("\x1b[{drawn}A"));
    }
    for (_, l) in lines.iter() {
        out.push_str("\r\x1b[2Ktether: ");
        if l.chars().count() > 90 {
            out.extend(l.chars().take(89));
            out.push('\u{2026}');
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

/// One `--json` progress object.
fn json(sidecar: &str, status: &Status) -> serde_json::Value {
    let (state, detail) = match status {
        Status::Reused => ("reused", serde_json::Value::Null),
        Status::Started => ("started", serde_json::Value::Null),
        Status::Pulling { image, percent } => (
            "pulling",
            serde_json::json!({"image": image, "percent": percent}),
        ),
        Status::Created { why } => ("created", serde_json::json!(why)),
        Status::Waiting { summary } => ("waiting", serde_json::json!(summary)),
        Status::Ready { took } => ("ready", serde_json::json!(took.as_millis() as u64)),
        Status::Failed { why } => ("failed", serde_json::json!(why)),
    };
    serde_json::json!({"sidecar": sidecar, "status": state, "detail": detail})
}

pub fn describe(sidecar: &str, status: &Status) -> String {
    match status {
        Status::Reused => format!("{sidecar}: reused (running, same configuration)"),
        Status::Started => format!("{sidecar}: started (stopped, same configuration)"),
        Status::Pulling {
            image,
            percent: None,
        } => format!("{sidecar}: pulling {image}"),
        Status::Pulling {
            image,
            percent: Some(p),
        } => format!("{sidecar}: pulling {image} ({p}%)"),
        Status::Created { why: None } => format!("{sidecar}: created"),
        Status::Created { why: Some(w) } => format!("{sidecar}: recreated ({w})"),
        Status::Waiting { summary } => format!("{sidecar}: waiting for readiness ({summary})"),
        Status::Ready { took } => format!("{sidecar}: ready in {:.1}s", took.as_secs_f64()),
        Status::Failed { why } => format!("{sidecar}: failed: {why}"),
    }
}

/// Says why a run, an `up` or a workload's exec failed, in the one error format.
pub fn failure(f: &Failure) {
    match f {
        Failure::Invalid { message, hint } | Failure::Engine { message, hint } => {
            crate::output::error_hint(message, hint.as_deref());
        }
        Failure::Sidecar {
            sidecar,
            message,
            logs,
        } => {
            let mut details = Vec::new();
            if !logs.is_empty() {
                details.push(format!("its last {} lines:", logs.len()));
                details.extend(logs.iter().map(|l| format!("| {l}")));
            }
            crate::output::error_details(format!("sidecar {sidecar}: {message}"), None, &details);
        }
        Failure::CannotRun {
            program, reason, ..
        } => crate::output::error(format!("cannot run `{program}`: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses_read_as_lines_and_json() {
        let ready = Status::Ready {
            took: Duration::from_millis(1234),
        };
        assert_eq!(describe("db", &ready), "db: ready in 1.2s");
        assert_eq!(
            json("db", &ready).to_string(),
            r#"{"sidecar":"db","status":"ready","detail":1234}"#
        );
        let pulling = Status::Pulling {
            image: "redis:7".into(),
            percent: Some(40),
        };
        assert_eq!(describe("db", &pulling), "db: pulling redis:7 (40%)");
    }

    #[test]
    fn live_lines_are_redrawn_in_place() {
        let mut lines = Vec::new();
        assert_eq!(
            redraw(&mut lines, "a", "a: created".into()),
            "\r\x1b[2Ktether: a: created\n"
        );
        assert_eq!(
            redraw(&mut lines, "b", "b: created".into()),
            "\x1b[1A\r\x1b[2Ktether: a: created\n\r\x1b[2Ktether: b: created\n"
        );
        let long = "x".repeat(100);
        let out = redraw(&mut lines, "a", long);
        let first = out.lines().next().unwrap().to_owned();
        assert_eq!(
            first,
            format!("\x1b[2A\r\x1b[2Ktether: {}\u{2026}", "x".repeat(89))
        );
    }
}
