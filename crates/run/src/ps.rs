//! `tether ps` and `tether down`: what tether runs for a project, and taking it away.

use serde::Serialize;
use tether_engine::{Engine, Result};
use tether_plan::{
    LABEL_LIFECYCLE, LABEL_PROJECT, LABEL_SESSION, LABEL_SIDECAR, Role, network_name,
};
use tether_spec::model::Lifecycle;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub sidecar: String,
    pub lifecycle: String,
    pub session: Option<String>,
    pub container: String,
    pub state: String,
    /// The engine's health status, when the container has a healthcheck.
    pub health: Option<String>,
    /// Whether its readiness check passes now (running containers with a known sidecar).
    pub ready: Option<bool>,
    pub created: String,
    /// Seconds since it was created.
    pub age_seconds: Option<u64>,
    /// Container port → host port on 127.0.0.1.
    pub published: std::collections::BTreeMap<u16, u16>,
}

/// This project's sidecar containers, sorted by name. With the plan, each running one is
/// checked once for readiness.
pub async fn list<E: Engine>(
    engine: &E,
    project: &str,
    plan: Option<&tether_plan::Plan>,
) -> Result<Vec<Row>> {
    let found = engine.list(&[(LABEL_PROJECT, project)]).await?;
    let mut readiness = Vec::new();
    for c in &found {
        let planned = plan.and_then(|p| {
            p.sidecars
                .iter()
                .find(|s| Some(&s.sidecar) == c.labels.get(LABEL_SIDECAR))
        });
        let ready = match planned {
            Some(s) if c.running() => {
                let pattern = s
                    .readiness
                    .pattern
                    .as_deref()
                    .and_then(|p| regex_lite::Regex::new(p).ok());
                crate::launch::probe_once(engine, s, c, pattern.as_ref())
                    .await
                    .ok()
                    .map(|p| p == crate::launch::Probe::Ready)
            }
            Some(_) => Some(false),
            None => None,
        };
        readiness.push(ready);
    }
    Ok(found
        .into_iter()
        .zip(readiness)
        .filter(|(c, _)| c.labels.contains_key(LABEL_SIDECAR))
        .map(|(c, ready)| Row {
            sidecar: c.labels.get(LABEL_SIDECAR).cloned().unwrap_or_default(),
            lifecycle: c.labels.get(LABEL_LIFECYCLE).cloned().unwrap_or_default(),
            session: c.labels.get(LABEL_SESSION).cloned(),
            container: c.name,
            state: c.state,
            health: c.health,
            ready,
            age_seconds: humantime::parse_rfc3339_weak(&c.created)
                .ok()
                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs()),
            created: c.created,
            published: c.published,
        })
        .collect())
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let head = [
        "SIDECAR",
        "LIFECYCLE",
        "STATE",
        "READY",
        "HEALTH",
        "AGE",
        "PORTS",
        "CONTAINER",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.sidecar.clone(),
                match &r.session {
                    Some(s) => format!("{} {s}", r.lifecycle),
                    None => r.lifecycle.clone(),
                },
                r.state.clone(),
                match r.ready {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                r.health.clone().unwrap_or_else(|| "-".into()),
                r.age_seconds.map(age).unwrap_or_else(|| "-".into()),
                if r.published.is_empty() {
                    "-".into()
                } else {
                    r.published
                        .iter()
                        .map(|(c, h)| format!("127.0.0.1:{h}->{c}"))
                        .collect::<Vec<_>>()
                        .join(",")
                },
                r.container.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: &[String]| {
        let mut l = cols
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    out.push_str(&line(&head.map(str::to_owned)));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// `45s`, `12m`, `3h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Removes the project's session containers (`sessions_only`), or all its containers; with
/// `network`, its network too. Returns the names removed.
pub async fn down<E: Engine>(
    engine: &E,
    project: &str,
    sessions_only: bool,
    network: bool,
) -> Result<Vec<String>> {
    // Sidecars only: a workload that a `tether run` is running right now is not ours to remove.
    let mut labels = vec![
        (LABEL_PROJECT, project),
        (tether_plan::LABEL_ROLE, Role::Sidecar.as_str()),
    ];
    if sessions_only {
        labels.push((LABEL_LIFECYCLE, Lifecycle::Session.as_str()));
    }
    let found = engine.list(&labels).await?;
    let mut removed = Vec::new();
    for c in found {
        engine.remove(&c.id).await?;
        removed.push(c.name);
    }
    // Their secrets' files on this host go with them.
    crate::launch::forget_secrets(&removed);
    // Readiness probe helpers a killed run left behind.
    for c in engine
        .list(&[
            (LABEL_PROJECT, project),
            (tether_plan::LABEL_ROLE, Role::Probe.as_str()),
        ])
        .await?
    {
        if crate::launch::is_leftover_probe(&c) {
            engine.remove(&c.id).await?;
        }
    }
    if network {
        let name = network_name(project);
        engine.remove_network(&name).await?;
        removed.push(format!("network {name}"));
    }
    Ok(removed)
}

/// The container `tether logs SIDECAR` shows: the running one if any, else the newest.
pub fn for_logs(rows: Vec<Row>, sidecar: &str) -> Option<Row> {
    let mut mine: Vec<Row> = rows.into_iter().filter(|r| r.sidecar == sidecar).collect();
    mine.sort_by(|a, b| {
        (a.state == "running", &a.created).cmp(&(b.state == "running", &b.created))
    });
    mine.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_says_dash_for_nothing() {
        let rows = vec![Row {
            sidecar: "db".into(),
            lifecycle: "shared".into(),
            session: None,
            container: "tether-demo-db".into(),
            state: "running".into(),
            health: None,
            ready: Some(true),
            created: String::new(),
            age_seconds: Some(150),
            published: [(5432, 32768)].into(),
        }];
        assert_eq!(
            table(&rows),
            "SIDECAR  LIFECYCLE  STATE    READY  HEALTH  AGE  PORTS                  CONTAINER\n\
             db       shared     running  yes    -       2m   127.0.0.1:32768->5432  tether-demo-db\n"
        );
        assert_eq!(
            [age(59), age(3599), age(7200), age(200_000)],
            ["59s", "59m", "2h", "2d"]
        );
    }

    #[test]
    fn logs_show_the_running_container_else_the_newest() {
        let row = |sidecar: &str, container: &str, state: &str, created: &str| Row {
            sidecar: sidecar.into(),
            lifecycle: "session".into(),
            session: None,
            container: container.into(),
            state: state.into(),
            health: None,
            ready: None,
            created: created.into(),
            age_seconds: None,
            published: Default::default(),
        };
        let rows = || {
            vec![
                row("db", "old", "exited", "2026-01-01T00:00:00Z"),
                row("db", "up", "running", "2026-01-02T00:00:00Z"),
                row("db", "new", "exited", "2026-01-03T00:00:00Z"),
                row("cache", "other", "running", "2026-01-04T00:00:00Z"),
            ]
        };
        let pick = |rows: Vec<Row>, s| for_logs(rows, s).map(|r| r.container);
        assert_eq!(pick(rows(), "db").as_deref(), Some("up"));
        let stopped: Vec<Row> = rows().into_iter().filter(|r| r.container != "up").collect();
        assert_eq!(pick(stopped, "db").as_deref(), Some("new"));
        assert_eq!(pick(rows(), "queue"), None);
    }
}
