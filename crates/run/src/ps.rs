//! `tether ps` and `tether down`: what tether runs for a project, and taking it away.

use serde::Serialize;
use tether_plan::{LABEL_LIFECYCLE, LABEL_PROJECT, LABEL_SESSION, LABEL_SIDECAR, network_name};

use crate::engine::{Engine, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub sidecar: String,
    pub lifecycle: String,
    pub session: Option<String>,
    pub container: String,
    pub state: String,
    /// The engine's health status, when the container has a healthcheck.
    pub health: Option<String>,
    pub created: String,
    /// Container port → host port, for host-process runs.
    pub published: Vec<(u16, u16)>,
}

/// This project's sidecar containers, sorted by name.
pub async fn list<E: Engine>(engine: &E, project: &str) -> Result<Vec<Row>> {
    let found = engine.list(&[(LABEL_PROJECT, project)]).await?;
    Ok(found
        .into_iter()
        .filter(|c| c.labels.contains_key(LABEL_SIDECAR))
        .map(|c| Row {
            sidecar: c.labels.get(LABEL_SIDECAR).cloned().unwrap_or_default(),
            lifecycle: c.labels.get(LABEL_LIFECYCLE).cloned().unwrap_or_default(),
            session: c.labels.get(LABEL_SESSION).cloned(),
            container: c.name,
            state: c.state,
            health: c.health,
            created: c.created,
            published: c.published.into_iter().collect(),
        })
        .collect())
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let head = [
        "SIDECAR",
        "LIFECYCLE",
        "STATE",
        "HEALTH",
        "CONTAINER",
        "CREATED",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.sidecar.clone(),
                match &r.session {
                    Some(s) => format!("{} {s}", r.lifecycle),
                    None => r.lifecycle.clone(),
                },
                r.state.clone(),
                r.health.clone().unwrap_or_else(|| "-".into()),
                r.container.clone(),
                r.created.clone(),
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

/// Removes the project's session containers (`sessions_only`), or all its containers; with
/// `network`, its network too. Returns the names removed.
pub async fn down<E: Engine>(
    engine: &E,
    project: &str,
    sessions_only: bool,
    network: bool,
) -> Result<Vec<String>> {
    let mut labels = vec![(LABEL_PROJECT, project)];
    if sessions_only {
        labels.push((LABEL_LIFECYCLE, "session"));
    }
    let found = engine.list(&labels).await?;
    let mut removed = Vec::new();
    for c in found {
        engine.remove(&c.id).await?;
        removed.push(c.name);
    }
    if network {
        let name = network_name(project);
        engine.remove_network(&name).await?;
        removed.push(format!("network {name}"));
    }
    Ok(removed)
}
