//! `tether ps`, `tether logs` and `tether down`: the project's sidecar containers.

use crate::args::FileArg;
use crate::load::{load, on_engine, planned};
use crate::{exit, output};

pub fn ps(file: &FileArg, json: bool) -> u8 {
    let (loaded, p) = match planned(file, Some("ps".into()), vec!["true".into()]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let project = loaded.declaration.project.clone();
    on_engine(|e| async move {
        match tether_run::ps::list(&e, &project, Some(&p)).await {
            Ok(rows) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows).unwrap_or_default()
                    );
                } else {
                    print!("{}", tether_run::ps::table(&rows));
                }
                exit::OK
            }
            Err(err) => {
                output::error(err);
                exit::INTERNAL
            }
        }
    })
}

pub fn logs(file: &FileArg, sidecar: &str, follow: bool, tail: Option<usize>) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let decl = &loaded.declaration;
    if !decl.sidecars.contains_key(sidecar) {
        let known: Vec<&str> = decl.sidecars.keys().map(String::as_str).collect();
        output::error(format!(
            "no sidecar named `{sidecar}` (declared: {})",
            known.join(", ")
        ));
        return exit::INVALID;
    }
    let project = decl.project.clone();
    on_engine(|e| async move {
        let rows = match tether_run::ps::list(&e, &project, None).await {
            Ok(r) => r,
            Err(err) => {
                output::error(err);
                return exit::INTERNAL;
            }
        };
        let Some(row) = tether_run::ps::for_logs(rows, sidecar) else {
            output::error(format!(
                "sidecar {sidecar} has no container; `tether up {sidecar}` starts it"
            ));
            return exit::INVALID;
        };
        // The container's stdout to ours, its stderr to ours, as they come.
        use futures_util::StreamExt;
        use std::io::Write;
        use tether_engine::{Chunk, Engine};
        let mut chunks = e.output(&row.container, follow, tail);
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(Chunk::Stdout(b)) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&b).and_then(|()| out.flush());
                }
                Ok(Chunk::Stderr(b)) => {
                    let _ = std::io::stderr().write_all(&b);
                }
                Err(err) => {
                    output::error(err);
                    return exit::INTERNAL;
                }
            }
        }
        exit::OK
    })
}

pub fn down(file: &FileArg, sessions: bool, all: bool) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let project = loaded.declaration.project.clone();
    on_engine(|e| async move {
        match tether_run::ps::down(&e, &project, sessions, all).await {
            Ok(removed) => {
                for name in &removed {
                    eprintln!("removed {name}");
                }
                if removed.is_empty() {
                    eprintln!("nothing to remove for project {project}");
                }
                exit::OK
            }
            Err(err) => {
                output::error(err);
                exit::INTERNAL
            }
        }
    })
}
