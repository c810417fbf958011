//! One attempt of a tcp, http or exec check, and the small HTTP/1.1 client behind http checks
//! and notify URLs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tether_spec::model::Check;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::proc::{self, Reaper, Spec};

/// What an exec check runs with: the daemon's own env, directory and user.
pub struct ExecContext {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub ids: Option<proc::Ids>,
}

/// One attempt; `Err` says why it failed, in words for the event log.
pub async fn attempt(
    check: &Check,
    reaper: &Arc<Reaper>,
    ctx: &ExecContext,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, attempt_inner(check, reaper, ctx)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", crate::show(limit))),
    }
}

async fn attempt_inner(
    check: &Check,
    reaper: &Arc<Reaper>,
    ctx: &ExecContext,
) -> Result<(), String> {
    match check {
        Check::Tcp { host, port } => {
            let addr = resolve(host, *port).await?;
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("{host}:{port}: {}", plain(&e)))
        }
        Check::Http { url } => {
            let status = request(url, "GET", None).await?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("{url} answered {status}"))
            }
        }
        Check::Exec { command } => exec(command, reaper, ctx).await,
        Check::Log { .. } | Check::Notify | Check::None => Ok(()),
    }
}

/// Runs a check command to its end; its last output explains a failure.
async fn exec(command: &[String], reaper: &Arc<Reaper>, ctx: &ExecContext) -> Result<(), String> {
    let spawned = reaper
        .spawn(Spec {
            argv: command,
            env: ctx.env.clone(),
            workdir: ctx.workdir.as_deref(),
            ids: ctx.ids,
            capture: true,
            stdin_pipe: false,
            keep_fd: None,
            foreground: false,
        })
        .map_err(|e| format!("cannot run `{}`: {}", command[0], plain(&e)))?;
    let pid = spawned.pid;
    // Kill the check's group if this attempt is abandoned (timeout or the daemon went away).
    let guard = KillOnDrop(pid);
    /// Reads to the end (a check that prints a lot must not block on a full pipe), keeping
    /// the last 4 KiB to explain a failure.
    async fn drain(fd: Option<std::os::fd::OwnedFd>) -> Vec<u8> {
        let mut tail = Vec::new();
        if let Some(mut p) =
            fd.and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
        {
            let mut buf = [0u8; 8192];
            while let Ok(n) = p.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
        }
        tail
    }
    let (mut text, err) = tokio::join!(drain(spawned.stdout), drain(spawned.stderr));
    text.extend_from_slice(&err);
    let exit = spawned
        .exit
        .await
        .map_err(|_| "the check vanished".to_owned())?;
    std::mem::forget(guard);
    if exit == proc::Exit::Code(0) {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&text);
    let last = said.trim().lines().last().unwrap_or("").trim();
    let mut why = format!("`{}` {}", command.join(" "), exit.describe());
    if !last.is_empty() {
        why.push_str(": ");
        why.push_str(&last.chars().take(200).collect::<String>());
    }
    Err(why)
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        proc::kill_group(self.0, 9);
    }
}

/// Addresses are dialled as written; `localhost` is loopback; other names go to the resolver.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if bare.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {}", plain(&e)))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// `http://host[:port][/path]` split into what a request needs.
pub struct Url<'a> {
    pub host: &'a str,
    pub port: u16,
    pub authority: &'a str,
    pub path: &'a str,
}

pub fn parse_url(url: &str) -> Result<Url<'_>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port `{p}`"))?,
        ),
        _ => (authority, 80),
    };
    Ok(Url {
        host,
        port,
        authority,
        path,
    })
}

/// Sends one request and returns the status code.
pub async fn request(url: &str, method: &str, body: Option<Vec<u8>>) -> Result<u16, String> {
    let u = parse_url(url)?;
    let addr = resolve(u.host, u.port).await?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{}: {}", u.authority, plain(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(u.path)
        .header("host", u.authority)
        .header("user-agent", concat!("tether/", env!("CARGO_PKG_VERSION")));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("{url}: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = res.status().as_u16();
    // Drain a little of the body so the server sees a polite client, then hang up.
    let _ = tokio::time::timeout(Duration::from_millis(200), res.into_body().collect()).await;
    conn.abort();
    Ok(status)
}

/// An I/O error without the "(os error N)" tail.
pub fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let u = parse_url("http://127.0.0.1:8080/ready?x=1").unwrap();
        assert_eq!(
            (u.host, u.port, u.authority, u.path),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/ready?x=1")
        );
        let u = parse_url("http://example.test").unwrap();
        assert_eq!((u.host, u.port, u.path), ("example.test", 80, "/"));
        let u = parse_url("http://[::1]:9/x").unwrap();
        assert_eq!((u.host, u.port), ("[::1]", 9));
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://x:99999/").is_err());
    }
}
