//! The progress of `tether run` and `tether up`: a live line per sidecar on a terminal, plain
//! lines otherwise, or one JSON object per change for scripts. Always on stderr: stdout is the
//! workload's.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_run::launch::Status;
use tether_run::run::{Failure, Report};

pub enum Progress {
    Plain,
    /// The lines drawn, and a clock that draws them again every second while any waits, with
    /// how long it has waited: a slow engine shows time passing, not a frozen screen.
    Live {
        board: Arc<Mutex<Board>>,
        _ticker: Option<Ticker>,
    },
    Json,
}

/// The live lines: per sidecar, its text and, while it waits, since when.
#[derive(Default)]
pub struct Board {
    lines: Vec<(String, String, Option<Instant>)>,
    /// How many lines the screen shows now.
    drawn: usize,
}

/// Stops the clock when the progress display goes: under the board's lock, so that no redraw
/// lands after what is printed next.
pub struct Ticker(Arc<AtomicBool>, Arc<Mutex<Board>>);

impl Drop for Ticker {
    fn drop(&mut self) {
        let _board = self.1.lock().unwrap_or_else(|e| e.into_inner());
        self.0.store(true, Ordering::Relaxed);
    }
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
            let board = Arc::new(Mutex::new(Board::default()));
            let stop = Arc::new(AtomicBool::new(false));
            let (b, done) = (board.clone(), stop.clone());
            let ticker = std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_secs(1));
                        let mut board = b.lock().unwrap_or_else(|e| e.into_inner());
                        if !done.load(Ordering::Relaxed) && board.waiting() {
                            let out = board.draw(Instant::now());
                            let _ = std::io::stderr().write_all(out.as_bytes());
                        }
                    }
                })
                .ok()
                .map(|_| Ticker(stop, board.clone()));
            Progress::Live {
                board,
                _ticker: ticker,
            }
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
            Progress::Live { board, .. } => {
                let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                board.set(sidecar, describe(sidecar, status), waits(status), now);
                let out = board.draw(now);
                let _ = std::io::stderr().write_all(out.as_bytes());
            }
        }
    }
}

/// Whether a sidecar in this state is waiting on something (the clock shows for how long).
fn waits(status: &Status) -> bool {
    !matches!(
        status,
        Status::Reused | Status::Ready { .. } | Status::Failed { .. }
    )
}

impl Board {
    /// Sets a sidecar's line; a line that keeps waiting keeps its start.
    fn set(&mut self, sidecar: &str, text: String, waits: bool, now: Instant) {
        match self.lines.iter_mut().find(|(s, _, _)| s == sidecar) {
            Some(l) => {
                l.1 = text;
                l.2 = if waits { l.2.or(Some(now)) } else { None };
            }
            None => self
                .lines
                .push((sidecar.to_owned(), text, waits.then_some(now))),
        }
    }

    fn waiting(&self) -> bool {
        self.lines.iter().any(|l| l.2.is_some())
    }

    /// The block drawn again: back to the top of what was drawn (the block has as many lines
    /// as sidecars, the newest excepted), then every line, each cleared first and cut to one
    /// screen line (or moving up would miss); a wait of a second or more shows its length.
    fn draw(&mut self, now: Instant) -> String {
        let drawn = self.drawn;
        self.drawn = self.lines.len();
        let mut out = String::new();
        if drawn > 0 {
            out.push_str(&format!("\x1b[{drawn}A"));
        }
        for (_, l, since) in &self.lines {
            let waited = since.map(|t| now.duration_since(t).as_secs()).unwrap_or(0);
            let text = if waited > 0 {
                format!("{l} ({waited}s)")
            } else {
                l.clone()
            };
            out.push_str("\r\x1b[2Ktether: ");
            if text.chars().count() > 90 {
                out.extend(text.chars().take(89));
                out.push('\u{2026}');
            } else {
                out.push_str(&text);
            }
            out.push('\n');
        }
        out
    }
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
        Status::Removing => ("removing", serde_json::Value::Null),
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
        Status::Removing => {
            format!("{sidecar}: its old container is being removed; a new one follows")
        }
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
    fn live_lines_are_redrawn_in_place_with_how_long_each_waits() {
        let t0 = Instant::now();
        let mut board = Board::default();
        board.set("a", "a: created".into(), true, t0);
        assert_eq!(board.draw(t0), "\r\x1b[2Ktether: a: created\n");
        board.set("b", "b: created".into(), true, t0);
        assert_eq!(
            board.draw(t0 + Duration::from_millis(500)),
            "\x1b[1A\r\x1b[2Ktether: a: created\n\r\x1b[2Ktether: b: created\n"
        );
        // The clock: a waits on, b is ready.
        board.set(
            "b",
            "b: ready in 2.0s".into(),
            false,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(
            board.draw(t0 + Duration::from_secs(3)),
            "\x1b[2A\r\x1b[2Ktether: a: created (3s)\n\r\x1b[2Ktether: b: ready in 2.0s\n"
        );
        assert!(board.waiting());
        let long = "x".repeat(100);
        board.set("a", long, false, t0);
        assert!(!board.waiting());
        let first = board.draw(t0).lines().next().unwrap().to_owned();
        assert_eq!(
            first,
            format!("\x1b[2A\r\x1b[2Ktether: {}\u{2026}", "x".repeat(89))
        );
    }
}
