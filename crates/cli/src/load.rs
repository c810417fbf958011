//! Finding and loading the declaration, and planning a run from it, for every command.

use tether_spec::{LoadError, Loaded, Refused};

use crate::args::FileArg;
use crate::{exit, output};

/// Loads the declaration, or prints why not and returns the exit code.
pub fn load(file: &FileArg, json: bool) -> Result<Loaded, u8> {
    tether_spec::open(file.file.as_deref()).map_err(|refused| {
        match &refused {
            Refused::Load(LoadError::Invalid {
                sources,
                diagnostics,
            }) if json => {
                let list: Vec<_> = diagnostics.iter().map(|d| sources.to_json(d)).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            }
            _ => eprint!("{}", refused.render(output::color())),
        }
        if refused.is_internal() {
            exit::INTERNAL
        } else {
            exit::INVALID
        }
    })
}

/// The declaration and its plan, or the exit code after saying why not. The workload is what
/// follows `--`, else the declaration's `workload`.
pub fn planned(
    file: &FileArg,
    session: Option<String>,
    argv: Vec<String>,
) -> Result<(Loaded, tether_plan::Plan), u8> {
    let loaded = load(file, false)?;
    let argv = if argv.is_empty() {
        tether_plan::declared_workload(&loaded.declaration).ok_or_else(|| {
            output::error_hint(
                "no workload: give its command after `--`, or declare `workload.image`",
                Some("tether run -- docker run --rm IMAGE [ARGS]"),
            );
            exit::INVALID
        })?
    } else {
        argv
    };
    let session = session.unwrap_or_else(tether_run::session::new_id);
    if let Err(e) = tether_spec::values::check_dns_label(&session) {
        output::error(format!("--session: {e}"));
        return Err(exit::INVALID);
    }
    match tether_plan::plan(&loaded.declaration, &session, &argv) {
        Ok(p) => Ok((loaded, p)),
        Err(e) => {
            output::error(e);
            Err(exit::INVALID)
        }
    }
}

/// A single-threaded runtime for the commands that talk to an engine or wait.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// Connects to the engine, or says why not.
pub async fn engine() -> Result<tether_engine::docker::DockerEngine, u8> {
    // A setting that is not a duration is the user's to fix, before any engine is reached.
    let setting = std::env::var(tether_engine::TIMEOUT_VARIABLE).ok();
    if let Err(e) = tether_engine::docker::Limits::from_setting(setting.as_deref()) {
        output::error_hint(e, Some("give a duration: 90s, 5m"));
        return Err(exit::INVALID);
    }
    tether_engine::docker::DockerEngine::connect()
        .await
        .map_err(|e| {
            output::error_hint(&e, e.hint().as_deref());
            exit::INTERNAL
        })
}

/// Connects to the engine on a runtime and runs `f` with it; says why not and returns the code
/// when the engine cannot be reached.
pub fn on_engine<F, Fut>(f: F) -> u8
where
    F: FnOnce(tether_engine::docker::DockerEngine) -> Fut,
    Fut: std::future::Future<Output = u8>,
{
    runtime().block_on(async {
        match engine().await {
            Ok(e) => f(e).await,
            Err(code) => code,
        }
    })
}
