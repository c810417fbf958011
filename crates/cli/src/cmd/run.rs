//! `tether run`, `tether up` and the hidden `tether __foreground`.

use tether_plan::PullPolicy;

use crate::args::FileArg;
use crate::exit;
use crate::load::{engine, on_engine, planned, runtime};
use crate::progress::{self, Progress};

pub fn run(
    file: &FileArg,
    session: Option<String>,
    json: bool,
    pull: PullPolicy,
    argv: Vec<String>,
) -> u8 {
    let (loaded, mut p) = match planned(file, session, argv) {
        Ok(x) => x,
        Err(code) => return code,
    };
    p.pull = pull;
    one_replica_here(&loaded.declaration);
    let ended = runtime().block_on(async {
        if p.sidecars.is_empty() {
            return Ok(tether_run::run::passthrough(&p).await);
        }
        let e = engine().await?;
        let progress = Progress::new(json);
        Ok(tether_run::run::run(&e, &loaded.declaration, &p, &progress).await)
    });
    match ended {
        Ok(ended) => {
            if let Err(f) = &ended {
                progress::failure(f);
            }
            exit::of_run(&ended)
        }
        Err(code) => code,
    }
}

pub fn up(file: &FileArg, names: Vec<String>, print_env: bool, json: bool, pull: PullPolicy) -> u8 {
    // A host-process plan: ports published on 127.0.0.1, addresses for this host.
    let (loaded, mut p) = match planned(file, Some("up".into()), vec!["true".into()]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    p.pull = pull;
    one_replica_here(&loaded.declaration);
    on_engine(|e| async move {
        let progress = Progress::new(json);
        let up = tether_run::run::up(
            &e,
            &loaded.declaration,
            &mut p,
            &names,
            print_env,
            &progress,
        )
        .await;
        // The live display is done before anything else is printed.
        drop(progress);
        match up {
            Ok(env) => {
                if print_env {
                    print!("{}", tether_run::run::exports(&env));
                }
                exit::OK
            }
            Err(f) => {
                progress::failure(&f);
                exit::of_failure(&f)
            }
        }
    })
}

/// `replicas` is a cluster's count: on this machine a shared sidecar is one container, reused
/// across runs. Says so for each sidecar that asks for more.
fn one_replica_here(decl: &tether_spec::model::Declaration) {
    for s in decl.enabled_sidecars().filter(|s| s.replicas > 1) {
        eprintln!(
            "tether: {}: runs as one container here; its `replicas: {}` is for `tether render`",
            s.name, s.replicas
        );
    }
}

/// `tether __foreground -- ARGV`: returns only when ARGV could not be run.
pub fn foreground(argv: &[String]) -> u8 {
    let f = tether_run::run::foreground_exec(argv);
    progress::failure(&f);
    exit::of_failure(&f)
}
