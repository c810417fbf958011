//! `tether wait`: waits until addresses answer, for scripts and for Kubernetes init containers
//! (the workload's Pod waits for shared sidecars with it). No tool in any image is needed
//! beyond tether itself.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

/// What is waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A TCP connection is accepted.
    Tcp(String),
    /// `GET` answers 200 to 399.
    Http(String),
}

impl Target {
    /// `tcp://HOST:PORT`, `HOST:PORT`, or `http://HOST:PORT/PATH`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if s.starts_with("http://") {
            return Ok(Target::Http(s.to_owned()));
        }
        let addr = s.strip_prefix("tcp://").unwrap_or(s);
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(Target::Tcp(addr.to_owned()))
            }
            _ => Err(format!(
                "`{s}` is not something to wait for (use HOST:PORT, tcp://HOST:PORT or http://HOST:PORT/PATH)"
            )),
        }
    }

    fn name(&self) -> &str {
        match self {
            Target::Tcp(a) | Target::Http(a) => a,
        }
    }

    async fn ready(&self) -> bool {
        let attempt = async {
            match self {
                Target::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str()).await.is_ok(),
                Target::Http(url) => tether_init::http_request(url, "GET", None)
                    .await
                    .is_ok_and(|status| (200..400).contains(&status)),
            }
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .unwrap_or(false)
    }
}

/// Waits for every target at once; returns those not ready when `timeout` passed.
pub async fn wait(
    targets: &[Target],
    timeout: Duration,
    interval: Duration,
    quiet: bool,
) -> Vec<String> {
    let began = Instant::now();
    let results = futures_util::future::join_all(targets.iter().map(|t| async move {
        loop {
            if t.ready().await {
                if !quiet {
                    eprintln!(
                        "tether: {} is ready ({:.1}s)",
                        t.name(),
                        began.elapsed().as_secs_f64()
                    );
                }
                return None;
            }
            if began.elapsed() + interval > timeout {
                return Some(t.name().to_owned());
            }
            tokio::time::sleep(interval).await;
        }
    }))
    .await;
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_as_tcp_or_http() {
        assert_eq!(Target::parse("db:5432"), Ok(Target::Tcp("db:5432".into())));
        assert_eq!(
            Target::parse("tcp://10.0.0.1:80"),
            Ok(Target::Tcp("10.0.0.1:80".into()))
        );
        assert_eq!(
            Target::parse("http://api:8080/healthz"),
            Ok(Target::Http("http://api:8080/healthz".into()))
        );
        assert!(Target::parse("db").is_err());
        assert!(Target::parse(":80").is_err());
        assert!(Target::parse("db:0").is_err());
    }
}
