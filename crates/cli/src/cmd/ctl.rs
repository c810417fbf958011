//! `tether ctl`: one request to a running `tether init` over its control socket, its answer
//! printed. The protocol and the waiting are `tether_init::control`'s.

use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::args::CtlCommand;
use crate::{exit, output};

pub fn ctl(socket: Option<PathBuf>, json_out: bool, command: CtlCommand) -> u8 {
    let socket = socket.unwrap_or_else(tether_init::default_socket);
    let wait = |no_wait: bool| !no_wait;
    let request = match &command {
        CtlCommand::Status => json!({"op": "status"}),
        CtlCommand::Start { names, no_wait } => {
            json!({"op": "start", "daemons": names, "wait": wait(*no_wait)})
        }
        CtlCommand::Stop { names, no_wait } => {
            json!({"op": "stop", "daemons": names, "wait": wait(*no_wait)})
        }
        CtlCommand::Restart { names, no_wait } => {
            json!({"op": "restart", "daemons": names, "wait": wait(*no_wait)})
        }
        CtlCommand::Signal { name, signal } => {
            json!({"op": "signal", "daemon": name, "signal": signal})
        }
        CtlCommand::Logs { name, follow, tail } => {
            json!({"op": "logs", "daemon": name, "follow": follow, "tail": tail})
        }
        CtlCommand::Reload { no_wait } => json!({"op": "reload", "wait": wait(*no_wait)}),
        CtlCommand::Shutdown => json!({"op": "shutdown"}),
    };
    let logs = matches!(command, CtlCommand::Logs { .. });
    let mut stdout = std::io::stdout().lock();
    let answer = tether_init::control::request(&socket, &request, |line| {
        if json_out {
            // Log lines as they come; the rest is in the last answer.
            if logs {
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
            return;
        }
        if let Some(text) = line.get("line").and_then(Value::as_str) {
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
        } else if let Some(n) = line.get("missed").and_then(Value::as_u64) {
            output::warning(format!(
                "{n} line{} went by faster than they could be read",
                if n == 1 { "" } else { "s" }
            ));
        } else if let Some(changes) = line.get("changes").and_then(Value::as_array) {
            for c in changes {
                let _ = writeln!(stdout, "{}", change_line(c));
            }
            for n in line
                .get("notes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                output::warning(n.as_str().unwrap_or_default());
            }
            let _ = stdout.flush();
        }
    });
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            output::error_hint(&e.message, e.hint.as_deref());
            return exit::CTL_UNREACHABLE;
        }
    };
    let code = answer
        .get("code")
        .and_then(Value::as_u64)
        .map_or(exit::INTERNAL, |c| c as u8);
    if json_out {
        if !logs || code != exit::OK {
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
        }
        return code;
    }
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        drop(stdout);
        // A reload's diagnostics, rendered as `tether check` does, end with their own summary.
        match answer.get("detail").and_then(Value::as_str) {
            Some(detail) => eprint!("{detail}"),
            None => output::error(error),
        }
        return code;
    }
    match command {
        CtlCommand::Status => {
            let _ = write!(stdout, "{}", status_table(&answer));
        }
        CtlCommand::Shutdown => {
            let _ = writeln!(stdout, "tether init stopped every daemon");
        }
        _ => {
            for d in answer
                .get("daemons")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let _ = writeln!(stdout, "{}", state_line(d));
            }
        }
    }
    code
}

/// `stopping api (it depends on db)`.
fn change_line(c: &Value) -> String {
    let name = c["daemon"].as_str().unwrap_or_default();
    let why = c["why"]
        .as_str()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    match c["what"].as_str().unwrap_or_default() {
        "start" => format!("starting {name}{why}"),
        "stop" => format!("stopping {name}{why}"),
        "restart" => format!("restarting {name}{why}"),
        "add" => format!("adding {name}{why}"),
        "remove" => format!("removing {name}{why}"),
        "signal" => format!("{name}: sent {}", c["why"].as_str().unwrap_or("the signal")),
        "unchanged" => format!("unchanged {name}{why}"),
        "running" => match c["why"].as_str() {
            Some("running") | None => format!("{name} is already running"),
            Some(state) => format!("{name} is already {state}"),
        },
        "stopped" => format!("{name} is already stopped{why}"),
        other => format!("{other} {name}{why}"),
    }
}

/// `api: running (pid 12, ready)`.
fn state_line(d: &Value) -> String {
    let name = d["name"].as_str().unwrap_or_default();
    let state = d["state"].as_str().unwrap_or_default();
    let mut detail = Vec::new();
    if let Some(pid) = d["pid"].as_i64() {
        detail.push(format!("pid {pid}"));
    }
    if d["pid"].is_null()
        && let Some(e) = d["last_exit"].as_str()
    {
        detail.push(e.to_owned());
    }
    if d["ready"] == true {
        detail.push("ready".into());
    }
    if detail.is_empty() {
        format!("{name}: {state}")
    } else {
        format!("{name}: {state} ({})", detail.join(", "))
    }
}

fn status_table(answer: &Value) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "STATE".into(),
        "PID".into(),
        "UPTIME".into(),
        "RESTARTS".into(),
        "READY".into(),
        "LAST EXIT".into(),
    ]];
    for d in answer["daemons"].as_array().into_iter().flatten() {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        rows.push([
            d["name"].as_str().unwrap_or_default().to_owned(),
            d["state"].as_str().unwrap_or_default().to_owned(),
            or_dash(d["pid"].as_i64().map(|p| p.to_string())),
            or_dash(
                d["uptime_ms"]
                    .as_u64()
                    .map(|ms| tether_probe::show(std::time::Duration::from_millis(ms))),
            ),
            d["restarts"].as_u64().unwrap_or(0).to_string(),
            or_dash(
                d["ready"]
                    .as_bool()
                    .map(|r| if r { "yes" } else { "no" }.into()),
            ),
            or_dash(d["last_exit"].as_str().map(str::to_owned)),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (k, (c, w)) in r.iter().zip(widths).enumerate() {
            if k + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let phase = answer["phase"].as_str().unwrap_or_default();
    if phase != "running" {
        out.push_str(&format!("(tether init is {phase})\n"));
    }
    out
}
