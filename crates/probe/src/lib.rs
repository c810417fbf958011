//! tcp and http checks, and the one deadline/interval loop that every wait in tether uses:
//! `tether init` readiness, `tether run` readiness and `tether wait`.
//!
//! An http check passes on a status from 200 to 399 ([`status_ok`]); a loop makes its first
//! attempt at once, then one every interval, and gives up when the next attempt would start at
//! or after its deadline ([`Deadline::next`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

pub mod target;

/// Whether an http check passes with this status: 200 to 399.
pub fn status_ok(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Connects to `host:port` and hangs up; `Err` says why it failed. An address is dialled as
/// written; `localhost` is 127.0.0.1, then ::1; a name is resolved and each of its addresses
/// tried in turn (a server on one of them is enough).
pub async fn tcp(host: &str, port: u16) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let connected = if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        TcpStream::connect(SocketAddr::new(ip, port)).await
    } else if bare.eq_ignore_ascii_case("localhost") {
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        TcpStream::connect(&[v4, v6][..]).await
    } else {
        TcpStream::connect((bare, port)).await
    };
    connected
        .map(drop)
        .map_err(|e| format!("{host}:{port}: {}", plain(&e)))
}

/// `GET url`; passes on 200 to 399, else says what it answered.
pub async fn http(url: &str) -> Result<(), String> {
    let status = request(url, "GET", None).await?;
    if status_ok(status) {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

/// Addresses are dialled as written; `localhost` is loopback; other names go to the resolver.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
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
#[derive(Debug, PartialEq, Eq)]
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

/// The most a request's or an answer's head may take (request line or status line, headers).
pub const MAX_HEAD: usize = 64 * 1024;

/// Sends one HTTP/1.1 request and returns the status code (informational 1xx answers are
/// skipped). One request per connection: it says `connection: close`, reads the answer's head,
/// drains a little of the body so the server sees a polite client, and hangs up.
pub async fn request(url: &str, method: &str, body: Option<Vec<u8>>) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = parse_url(url)?;
    let addr = resolve(u.host, u.port).await?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{}: {}", u.authority, plain(&e)))?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nhost: {}\r\nuser-agent: tether/{}\r\nconnection: close\r\n",
        u.path,
        u.authority,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(b) = &body {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend(body.unwrap_or_default());
    let mut stream = tokio::io::BufReader::new(stream);
    let failed = |e: std::io::Error| format!("{url}: {}", plain(&e));
    stream.get_mut().write_all(&out).await.map_err(failed)?;
    let status = loop {
        let head = read_head(&mut stream)
            .await
            .map_err(failed)?
            .ok_or_else(|| format!("{url}: connection closed before message completed"))?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => unreachable!("read_head ends at the empty line"),
            Err(e) => return Err(format!("{url}: bad answer: {e}")),
        }
        let code = answer.code.unwrap_or_default();
        // 100 Continue and the like come before the answer; 101 is the answer.
        if !(100..200).contains(&code) || code == 101 {
            break code;
        }
    };
    let mut sink = [0u8; 8192];
    let drain = async {
        let mut left = MAX_HEAD;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
    Ok(status)
}

/// Reads one message head, through the empty line that ends it: `None` at a clean end of the
/// stream before any byte of it; an error (`InvalidData`) past [`MAX_HEAD`] bytes, or when the
/// stream ends inside it.
pub async fn read_head<R>(r: &mut R) -> std::io::Result<Option<Vec<u8>>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = (&mut *r)
            .take((MAX_HEAD + 1 - before) as u64)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            if head.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before message completed",
            ));
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "message head too large",
            ));
        }
        let line = &head[before..];
        // Empty lines before a request line are allowed (RFC 9112, 2.2).
        if line == b"\r\n" || line == b"\n" {
            if head[..before].iter().all(|b| b.is_ascii_whitespace()) {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

/// An I/O error without the "(os error N)" tail.
pub fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// A duration as people write it: `250ms`, `1.5s`, `2m`.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.1}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches(".0"))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The shortest time one attempt is given, however little is left before the deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// A deadline with an interval between attempts: the one loop of every wait in tether.
///
/// ```text
/// let d = Deadline::new(timeout, interval);
/// loop {
///     if attempt(d.attempt_limit(cap)).await { break Ok(()) }
///     if !d.next().await { break Err(...) }
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    began: Instant,
    at: Instant,
    interval: Duration,
}

impl Deadline {
    /// Starts now; gives up `timeout` from now.
    pub fn new(timeout: Duration, interval: Duration) -> Deadline {
        let began = Instant::now();
        Deadline {
            began,
            at: began + timeout,
            interval,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    /// Time left before the deadline (zero once it passed).
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The time one attempt may take: what is left, at most `cap`, never under 10 ms (a check
    /// that hangs is a check that has not passed, and it may not outlast the deadline).
    pub fn attempt_limit(&self, cap: Duration) -> Duration {
        self.left().min(cap).max(MIN_ATTEMPT)
    }

    /// The deadline as a tokio instant, for `timeout_at`.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Waits the interval before the next attempt; `false` (at once, without waiting) when that
    /// attempt would start at or after the deadline.
    pub async fn next(&self) -> bool {
        if Instant::now() + self.interval >= self.at {
            return false;
        }
        tokio::time::sleep(self.interval).await;
        true
    }
}

/// What one attempt of a [`poll`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt<T, E> {
    /// Done: the check passed.
    Ready(T),
    /// Not yet, and why (the last reason is kept for the timeout's message).
    NotYet(String),
    /// It will never pass: stop at once.
    Fatal(E),
}

/// Why a [`poll`] ended without success.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// The deadline came; the last attempt's reason (or that it ran out of time).
    TimedOut(String),
    /// An attempt said it will never pass.
    Fatal(E),
}

/// Attempts until one is ready, one is fatal, or the deadline comes. Each attempt is given
/// [`Deadline::attempt_limit`]`(cap)`; one that takes longer counts as not yet.
pub async fn poll<T, E, F, Fut>(
    deadline: Deadline,
    cap: Duration,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt<T, E>>,
{
    loop {
        let limit = deadline.attempt_limit(cap);
        let why = match tokio::time::timeout(limit, attempt()).await {
            Ok(Attempt::Ready(t)) => return Ok(t),
            Ok(Attempt::Fatal(e)) => return Err(GaveUp::Fatal(e)),
            Ok(Attempt::NotYet(why)) => why,
            Err(_) => format!("no answer within {}", show(limit)),
        };
        if !deadline.next().await {
            return Err(GaveUp::TimedOut(why));
        }
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

    #[test]
    fn statuses_from_200_to_399_pass() {
        let passing: Vec<u16> = [100, 199, 200, 204, 302, 399, 400, 404, 500]
            .into_iter()
            .filter(|s| status_ok(*s))
            .collect();
        assert_eq!(passing, [200, 204, 302, 399]);
    }

    #[test]
    fn durations_show_briefly() {
        let shown: Vec<String> = [0, 250, 1000, 1500, 59_999, 61_000]
            .iter()
            .map(|ms| show(Duration::from_millis(*ms)))
            .collect();
        assert_eq!(shown, ["0ms", "250ms", "1s", "1.5s", "60s", "1m1s"]);
    }

    /// Counts the attempts a loop makes before it gives up (in paused time: no clock is read).
    async fn attempts_until_timeout(timeout_ms: u64, interval_ms: u64) -> (u32, GaveUp<()>) {
        let d = Deadline::new(
            Duration::from_millis(timeout_ms),
            Duration::from_millis(interval_ms),
        );
        let mut n = 0;
        let end = poll(d, Duration::from_secs(5), || {
            n += 1;
            let k = n;
            async move { Attempt::<(), ()>::NotYet(format!("try {k}")) }
        })
        .await
        .unwrap_err();
        (n, end)
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_tries_at_once_then_every_interval_until_the_deadline() {
        // Attempts at 0, 100, …, 900 ms; the one at 1000 ms would start at the deadline.
        let (n, end) = attempts_until_timeout(1000, 100).await;
        assert_eq!((n, end), (10, GaveUp::TimedOut("try 10".into())));
        // An interval longer than the timeout still gets its first attempt.
        let (n, _) = attempts_until_timeout(100, 1000).await;
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_stops_at_ready_or_fatal() {
        let d = Deadline::new(Duration::from_secs(10), Duration::from_millis(100));
        let mut n = 0;
        let ready = poll(d, Duration::from_secs(5), || {
            n += 1;
            let k = n;
            async move {
                if k == 3 {
                    Attempt::<u32, String>::Ready(k)
                } else {
                    Attempt::NotYet("no".into())
                }
            }
        })
        .await;
        assert_eq!(ready, Ok(3));
        let fatal = poll(d, Duration::from_secs(5), || async {
            Attempt::<(), _>::Fatal("exited")
        })
        .await;
        assert_eq!(fatal, Err(GaveUp::Fatal("exited")));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_hangs_is_cut_at_its_limit() {
        let d = Deadline::new(Duration::from_millis(300), Duration::from_millis(100));
        let end = poll(d, Duration::from_millis(50), || async {
            std::future::pending::<Attempt<(), ()>>().await
        })
        .await;
        assert_eq!(end, Err(GaveUp::TimedOut("no answer within 50ms".into())));
        // Stopped at 200 ms (the next attempt would start at 300 ms): 100 ms were left.
        assert_eq!(d.left(), Duration::from_millis(100));
        let spent = Deadline::new(Duration::ZERO, Duration::from_millis(100));
        assert_eq!(spent.attempt_limit(Duration::from_secs(5)), MIN_ATTEMPT);
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_real_sockets() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["204 No Content", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/ready");
        assert_eq!(http(&url).await, Ok(()));
        assert_eq!(http(&url).await, Err(format!("{url} answered 503")));
        server.await.unwrap();
        // The listener is gone: nothing accepts on that port now.
        let refused = tcp("127.0.0.1", port).await.unwrap_err();
        assert_eq!(refused, format!("127.0.0.1:{port}: Connection refused"));
    }

    /// A server that reads one request, writes `answer` and ends its side, then hands over the
    /// request it read.
    async fn one_answer(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let head = read_head(&mut s).await.unwrap().unwrap();
            let head = String::from_utf8(head).unwrap();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.parse().unwrap());
            let mut body = vec![0; length];
            s.read_exact(&mut body).await.unwrap();
            s.get_mut().write_all(answer.as_bytes()).await.unwrap();
            s.get_mut().shutdown().await.unwrap();
            // The client hangs up once it has the answer.
            let mut rest = Vec::new();
            let _ = s.read_until(0, &mut rest).await;
            head + &String::from_utf8(body).unwrap()
        });
        (url, server)
    }

    #[tokio::test]
    async fn a_request_says_what_it_carries_and_skips_100_continue() {
        let (url, server) = one_answer(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!(request(&url, "POST", Some(b"{}".to_vec())).await, Ok(202));
        let authority = url.trim_start_matches("http://").trim_end_matches("/hook");
        assert_eq!(
            server.await.unwrap(),
            format!(
                "POST /hook HTTP/1.1\r\nhost: {authority}\r\nuser-agent: tether/{}\r\nconnection: close\r\n\
                 content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[tokio::test]
    async fn an_answer_cut_short_or_not_http_is_an_error_naming_the_url() {
        let (url, server) = one_answer("HTTP/1.1 200 OK\r\ncontent-le").await;
        assert_eq!(
            http(&url).await,
            Err(format!("{url}: connection closed before message completed"))
        );
        server.await.unwrap();
        let (url, server) = one_answer("SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        assert_eq!(
            http(&url).await,
            Err(format!("{url}: bad answer: invalid HTTP version"))
        );
        server.await.unwrap();
    }
}
