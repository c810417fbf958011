//! Where the sidecar is, how long to wait for it, and what stops the plugin.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::Error;

/// The environment variable that names the sidecar's address (`host:port`).
pub const ADDR_VAR: &str = "SIDECAR_ADDR";
/// The environment variable that bounds the wait for the sidecar (`500ms`, `30s`, `2m`, `1h` or
/// bare seconds).
pub const CONNECT_TIMEOUT_VAR: &str = "SIDECAR_CONNECT_TIMEOUT";
/// The sidecar's address when [`ADDR_VAR`] is unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9191";
/// The wait for the sidecar when [`CONNECT_TIMEOUT_VAR`] is unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

type StopFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How [`run_with`](crate::run_with) finds the sidecar and learns to stop.
///
/// ```
/// use std::time::Duration;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let options = tether_plugin::Options::new("127.0.0.1:9191")
///     .connect_timeout(Duration::from_secs(5))
///     .stop_when(async {
///         let _ = stopped.await;
///     });
/// # drop(stop);
/// ```
pub struct Options {
    pub(crate) addr: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) signals: bool,
    pub(crate) stop: Option<StopFuture>,
}

impl Options {
    /// The sidecar at `addr` (`host:port`, or a URI `http://host:port`), the default connect
    /// timeout (60 s), no signal handling and no stop trigger: the plugin then stops only when
    /// the sidecar sends Stop.
    pub fn new(addr: impl Into<String>) -> Options {
        Options {
            addr: addr.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            signals: false,
            stop: None,
        }
    }

    /// What [`run`](crate::run) uses: the address from `SIDECAR_ADDR` (default
    /// `127.0.0.1:9191`), the timeout from `SIDECAR_CONNECT_TIMEOUT` (default 60 s), and SIGTERM
    /// and SIGINT stop the plugin.
    pub fn from_env() -> Result<Options, Error> {
        Options::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Options::from_env`] over any lookup of variables (an empty value counts as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Options, Error> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let addr = get(ADDR_VAR).unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let mut options = Options::new(addr.trim()).signals(true);
        if let Some(value) = get(CONNECT_TIMEOUT_VAR) {
            let timeout = parse_duration(&value).map_err(|problem| Error::Config {
                variable: CONNECT_TIMEOUT_VAR.to_string(),
                value: value.clone(),
                problem,
            })?;
            options = options.connect_timeout(timeout);
        }
        options.endpoint()?;
        Ok(options)
    }

    /// How long to retry while the sidecar is not up yet, and again after a lost connection,
    /// before [`run_with`](crate::run_with) gives up.
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// Whether SIGTERM and SIGINT to this process stop the plugin (as the sidecar's Stop does).
    pub fn signals(mut self, on: bool) -> Options {
        self.signals = on;
        self
    }

    /// Stops the plugin (as the sidecar's Stop does) once `trigger` completes; beside the
    /// signals when [`Options::signals`] is on.
    pub fn stop_when(mut self, trigger: impl Future<Output = ()> + Send + 'static) -> Options {
        self.stop = Some(Box::pin(trigger));
        self
    }

    /// The sidecar's address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn endpoint(&self) -> Result<tonic::transport::Endpoint, Error> {
        let uri = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        };
        let bad = |problem: String| Error::Config {
            variable: ADDR_VAR.to_string(),
            value: self.addr.clone(),
            problem,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| bad(format!("is not an address ({e}); use host:port")))?;
        if endpoint.uri().port_u16().is_none() {
            return Err(bad("names no port; use host:port".to_string()));
        }
        Ok(endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true))
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("addr", &self.addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("signals", &self.signals)
            .field("stop", &self.stop.is_some())
            .finish()
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` or bare seconds; zero and malformed values are errors.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "use 500ms, 30s, 2m, 1h or bare seconds";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("is not a duration ({HINT})")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("is not a duration ({HINT})"))?;
    if number == 0 {
        return Err(format!("is zero; the wait must be positive ({HINT})"));
    }
    number
        .checked_mul(scale)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("is too long ({HINT})"))
}

/// `1.5s`, `60s`, `250ms`: for messages.
pub(crate) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_without_variables() {
        let o = Options::from_lookup(lookup(&[])).unwrap();
        assert_eq!(o.addr, "127.0.0.1:9191");
        assert_eq!(o.connect_timeout, Duration::from_secs(60));
        assert!(o.signals);
        let o =
            Options::from_lookup(lookup(&[(ADDR_VAR, " "), (CONNECT_TIMEOUT_VAR, "")])).unwrap();
        assert_eq!(o.addr, "127.0.0.1:9191");
    }

    #[test]
    fn variables_are_read() {
        let o = Options::from_lookup(lookup(&[
            (ADDR_VAR, "localhost:7000"),
            (CONNECT_TIMEOUT_VAR, "1500ms"),
        ]))
        .unwrap();
        assert_eq!(o.addr, "localhost:7000");
        assert_eq!(o.connect_timeout, Duration::from_millis(1500));
        assert_eq!(
            o.endpoint().unwrap().uri().to_string(),
            "http://localhost:7000/"
        );
    }

    #[test]
    fn bad_variables_are_named() {
        let e = Options::from_lookup(lookup(&[(CONNECT_TIMEOUT_VAR, "soon")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SIDECAR_CONNECT_TIMEOUT `soon` is not a duration (use 500ms, 30s, 2m, 1h or bare seconds)"
        );
        let e = Options::from_lookup(lookup(&[(CONNECT_TIMEOUT_VAR, "0s")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SIDECAR_CONNECT_TIMEOUT `0s` is zero; the wait must be positive (use 500ms, 30s, 2m, 1h or bare seconds)"
        );
        let e = Options::from_lookup(lookup(&[(ADDR_VAR, "localhost")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SIDECAR_ADDR `localhost` names no port; use host:port"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(show_duration(Duration::from_secs(60)), "60s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5s");
    }
}
