//! `tether bus publish` and `tether bus tail`: the Bus API from a shell, registered as an
//! instance (`tether_bus::client`).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use tether_bus::client::{
    Action, Client, ClientError, Code, Delivery, Options, PublishRequest, Subscription, grant,
    status_line,
};

use crate::args::{BusClientArgs, PublishArgs, TailArgs};
use crate::{exit, output};

/// The options `flags` name, as `instance` unless --instance says; the token read from its
/// file (never from argv).
fn options(flags: &BusClientArgs, instance: String) -> Result<Options, String> {
    let token = match &flags.token_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--token-file {}: {e}", file.display()))?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(format!("--token-file {} is empty", file.display()));
            }
            Some(token)
        }
        None => None,
    };
    Ok(Options {
        url: flags.bus.clone(),
        instance: flags.instance.clone().unwrap_or(instance),
        pool: flags.pool.clone(),
        token,
        ca_file: flags.ca_file.clone(),
        tls_server_name: flags.tls_server_name.clone(),
        timeout: flags.timeout,
    })
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            output::error(format!("cannot start the runtime: {e}"));
            None
        }
    }
}

fn client_error(e: &ClientError) -> u8 {
    output::error_hint(&e.message, e.hint);
    if e.usage {
        exit::INVALID
    } else {
        exit::INTERNAL
    }
}

/// Text as one line for a terminal: backslashes, line breaks, tabs and other control
/// characters escaped (an escape sequence in a message must not drive the terminal).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

pub fn publish(flags: PublishArgs) -> u8 {
    if let Err(e) = tether_bus::topic::validate_topic(&flags.topic) {
        output::error(format!("the topic: {e}"));
        return exit::INVALID;
    }
    let mut headers = BTreeMap::new();
    for h in &flags.headers {
        match h.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                headers.insert(name.to_owned(), value.to_owned());
            }
            _ => {
                output::error_hint(
                    format!("--header `{h}` is not NAME=VALUE"),
                    Some("--header content-type=application/json"),
                );
                return exit::INVALID;
            }
        }
    }
    // An instance of its own: publishes share nothing, and a tail's session stays its own.
    let instance = format!("tether-cli-publish-{}", std::process::id());
    let options = match options(&flags.client, instance) {
        Ok(o) => o,
        Err(e) => {
            output::error(e);
            return exit::INVALID;
        }
    };
    let data = match flags.data.as_deref() {
        Some(d) if d != "-" => d.as_bytes().to_vec(),
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            output::error_hint(
                "no DATA, and stdin is a terminal",
                Some(
                    "give the message as an argument or pipe it in (`-` reads the terminal until Ctrl-D)",
                ),
            );
            return exit::INVALID;
        }
        _ => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                output::error(format!("cannot read the message from stdin: {e}"));
                return exit::INVALID;
            }
            buf
        }
    };
    let Some(rt) = runtime() else {
        return exit::INTERNAL;
    };
    rt.block_on(async move {
        let mut client =
            match Client::connect(&options, vec![grant(Action::Publish, &flags.topic)]).await {
                Ok(c) => c,
                Err(e) => return client_error(&e),
            };
        let request = PublishRequest {
            topic: flags.topic.clone(),
            data,
            headers: headers.into_iter().collect(),
            idempotency_key: flags.key.clone().unwrap_or_default(),
        };
        let result = client.publish(request).await;
        let url = client.url().to_owned();
        client.close().await;
        match result {
            Ok(sequence) => {
                let line = if flags.json {
                    serde_json::json!({ "topic": flags.topic, "sequence": sequence }).to_string()
                } else {
                    format!("published on {}: sequence {sequence}", flags.topic)
                };
                println!("{line}");
                exit::OK
            }
            Err(s) => {
                output::error(format!(
                    "the Bus API at {url} refused the publish on `{}`: {}",
                    flags.topic,
                    status_line(&s)
                ));
                exit::INTERNAL
            }
        }
    })
}

/// One delivery as `tail` prints it.
fn line(d: &Delivery, json: bool) -> String {
    let headers: BTreeMap<&str, &str> = d
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let text = std::str::from_utf8(&d.data);
    if json {
        let mut o = serde_json::json!({
            "topic": d.topic,
            "sequence": d.sequence,
            "redelivered": d.redelivered,
            "subscription": d.subscription,
            "headers": headers,
        });
        match text {
            Ok(t) => o["data"] = t.into(),
            Err(_) => {
                o["data_hex"] = d
                    .data
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into();
            }
        }
        return o.to_string();
    }
    let mut out = format!("{} #{}", d.topic, d.sequence);
    if d.redelivered > 0 {
        out.push_str(&format!(" (delivered {} times before)", d.redelivered));
    }
    for (k, v) in &headers {
        out.push_str(&format!(" {}={}", escape(k), escape(v)));
    }
    out.push_str(": ");
    match text {
        // One line per message.
        Ok(t) => out.push_str(&escape(t)),
        Err(_) => out.push_str(&format!("({} bytes, not UTF-8)", d.data.len())),
    }
    out
}

/// Ends a tail: its streams closed first (nothing more is handed to its session), then what it
/// received and did not ack (--no-ack, or not printed yet) given back, and the instance
/// deregistered.
async fn end(readers: Vec<tokio::task::JoinHandle<()>>, client: Client) {
    for r in readers {
        r.abort();
        let _ = r.await;
    }
    client.close().await;
}

/// A `--no-ack` tail's subscription: an ack deadline of an hour, and deliveries enough that the
/// messages it holds never become dead letters on its account.
const NO_ACK_DEADLINE_MS: u32 = 3_600_000;
const NO_ACK_MAX_DELIVER: u32 = 1_000_000;

pub fn tail(flags: TailArgs) -> u8 {
    for p in &flags.patterns {
        if let Err(e) = tether_bus::topic::validate_pattern(p) {
            output::error(format!("the pattern `{p}`: {e}"));
            return exit::INVALID;
        }
    }
    if flags.count == Some(0) {
        return exit::OK;
    }
    let options = match options(&flags.client, "tether-cli-tail".to_owned()) {
        Ok(o) => o,
        Err(e) => {
            output::error(e);
            return exit::INVALID;
        }
    };
    let instance = options.instance.clone();
    let Some(rt) = runtime() else {
        return exit::INTERNAL;
    };
    rt.block_on(async move {
        let grants = flags
            .patterns
            .iter()
            .map(|p| grant(Action::Subscribe, p))
            .collect();
        let mut client = match Client::connect(&options, grants).await {
            Ok(c) => c,
            Err(e) => return client_error(&e),
        };
        let url = client.url().to_owned();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Delivery, String>>(64);
        let mut readers = Vec::new();
        for pattern in &flags.patterns {
            // Looking without taking holds each message until the tail ends: long enough not
            // to be handed it again meanwhile, nor to count it towards a dead letter.
            let (ack_deadline_ms, max_deliver) = if flags.no_ack {
                (NO_ACK_DEADLINE_MS, NO_ACK_MAX_DELIVER)
            } else {
                (0, 0)
            };
            let sub = Subscription {
                topic: pattern.clone(),
                group: String::new(),
                ack_deadline_ms,
                max_deliver,
            };
            let mut stream = match client.subscribe(sub).await {
                Ok(s) => s,
                Err(s) => {
                    end(readers, client).await;
                    output::error(format!(
                        "the Bus API at {url} refused the subscription to `{pattern}`: {}",
                        status_line(&s)
                    ));
                    return exit::INTERNAL;
                }
            };
            let tx = tx.clone();
            let pattern = pattern.clone();
            readers.push(tokio::spawn(async move {
                loop {
                    let next = match stream.message().await {
                        Ok(Some(d)) => Ok(d),
                        Ok(None) => Err(format!("the bus ended the subscription to `{pattern}`")),
                        Err(s) => Err(format!(
                            "the subscription to `{pattern}` broke: {}",
                            status_line(&s)
                        )),
                    };
                    let end = next.is_err();
                    if tx.send(next).await.is_err() || end {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        let signals = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        );
        let (Ok(mut term), Ok(mut int)) = signals else {
            end(readers, client).await;
            output::error("cannot handle signals");
            return exit::INTERNAL;
        };
        let mut printed = 0u64;
        let mut stdout = std::io::stdout().lock();
        let code = loop {
            let next = tokio::select! {
                d = rx.recv() => d,
                _ = term.recv() => break exit::OK,
                _ = int.recv() => break exit::OK,
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    output::error(e);
                    break exit::INTERNAL;
                }
                None => break exit::OK,
            };
            // A reader gone (`| head`) ends the tail; what was not printed is not acked.
            if writeln!(stdout, "{}", line(&d, flags.json))
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break exit::OK;
            }
            if !flags.no_ack
                && let Err(s) = client.ack(vec![d.delivery_id.clone()]).await
            {
                if s.code() == Code::Unauthenticated {
                    output::error_hint(
                        format!(
                            "cannot ack {} #{}: the bus no longer knows this tail's session (another client registered as instance `{instance}` since)",
                            d.topic, d.sequence
                        ),
                        Some("give each tail that runs at the same time an --instance of its own"),
                    );
                } else {
                    output::error(format!(
                        "cannot ack {} #{} (delivered again after its ack deadline): {}",
                        d.topic,
                        d.sequence,
                        status_line(&s)
                    ));
                }
                break exit::INTERNAL;
            }
            printed += 1;
            if flags.count.is_some_and(|n| printed >= n) {
                break exit::OK;
            }
        };
        drop(rx);
        end(readers, client).await;
        code
    })
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn a_line_of_tail_drives_no_terminal() {
        assert_eq!(
            escape("a\tb\u{1b}[31mred\\ \r\nnext é"),
            "a\\tb\\u{1b}[31mred\\\\ \\r\\nnext é"
        );
    }
}
