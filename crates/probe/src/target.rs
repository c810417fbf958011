//! `tether wait`'s targets: addresses to wait for, read from the command line.

use std::time::Duration;

use crate::Deadline;

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

    pub fn name(&self) -> &str {
        match self {
            Target::Tcp(a) | Target::Http(a) => a,
        }
    }

    async fn attempt(&self) -> crate::Attempt<(), ()> {
        let result = match self {
            Target::Tcp(addr) => match addr.rsplit_once(':') {
                Some((host, port)) => crate::tcp(host, port.parse().unwrap_or(0)).await,
                None => Err(format!("{addr}: no port")),
            },
            Target::Http(url) => crate::http(url).await,
        };
        match result {
            Ok(()) => crate::Attempt::Ready(()),
            Err(why) => crate::Attempt::NotYet(why),
        }
    }
}

/// Waits for every target at once, each until it is ready or the deadline comes; `ready` is
/// told of each as it becomes ready. Returns the names of those that were not.
pub async fn wait_all(
    targets: &[Target],
    deadline: Deadline,
    ready: &(dyn Fn(&Target) + Sync),
) -> Vec<String> {
    let results = futures_util::future::join_all(targets.iter().map(|t| async move {
        match crate::poll(deadline, Duration::from_secs(5), || t.attempt()).await {
            Ok(()) => {
                ready(t);
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
