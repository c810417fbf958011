//! `tether wait`: waits until addresses answer, for scripts and for Kubernetes init containers
//! (the workload's Pod waits for shared sidecars with it). No tool in any image is needed
//! beyond tether itself.

#![allow(clippy::print_stderr)]

use std::time::Duration;

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

    async fn attempt(&self) -> tether_probe::Attempt<(), ()> {
        let result = match self {
            Target::Tcp(addr) => match addr.rsplit_once(':') {
                Some((host, port)) => tether_probe::tcp(host, port.parse().unwrap_or(0)).await,
                None => Err(format!("{addr}: no port")),
            },
            Target::Http(url) => tether_probe::http(url).await,
        };
        match result {
            Ok(()) => tether_probe::Attempt::Ready(()),
            Err(why) => tether_probe::Attempt::NotYet(why),
        }
    }
}

/// Waits for every target at once; returns those not ready when `timeout` passed.
pub async fn wait(
    targets: &[Target],
    timeout: Duration,
    interval: Duration,
    quiet: bool,
) -> Vec<String> {
    let deadline = tether_probe::Deadline::new(timeout, interval);
    let results = futures_util::future::join_all(targets.iter().map(|t| async move {
        let ready = tether_probe::poll(deadline, Duration::from_secs(5), || t.attempt()).await;
        match ready {
            Ok(()) => {
                if !quiet {
                    eprintln!(
                        "tether: {} is ready ({:.1}s)",
                        t.name(),
                        deadline.elapsed().as_secs_f64()
                    );
                }
                None
            }
            Err(_) => Some(t.name().to_owned()),
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
