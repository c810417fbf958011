//! The `tether` binary: arguments in, output out. Decisions live in the library crates.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tether_spec::{LoadError, Loaded};

mod wait;

/// Exit codes, decided in one place (see README).
mod exit {
    pub const OK: u8 = 0;
    /// A declaration or usage error.
    pub const INVALID: u8 = 1;
    /// An internal or engine error.
    pub const INTERNAL: u8 = 2;
    /// `tether wait`: something was not ready in time.
    pub const NOT_READY: u8 = 3;
}

/// A duration as the declaration writes them: `500ms`, `30s`, `2m`.
fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (use 500ms, 30s or 2m)"))
}

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Declare sidecars once; run them beside a workload, under one PID 1, or on a cluster",
    after_help = "Examples:\n  tether check                      validate ./tether.yaml (or the nearest one above)\n  tether config --json              the resolved declaration, defaults filled in\n  tether plan -- docker run --rm app:dev pytest\n                                    what `tether run` would start, and the rewritten command\n  tether schema > tether.schema.json\n                                    a JSON Schema for editors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct FileArg {
    /// The declaration file [default: tether.yaml in this folder or the nearest parent]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
}

/// When to pull the sidecars' images, as with `docker run --pull`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Pull {
    /// Only images this engine does not have
    Missing,
    /// On every run, so that a moved tag is followed
    Always,
    /// Never: a missing image is an error
    Never,
}

impl From<Pull> for tether_plan::PullPolicy {
    fn from(p: Pull) -> Self {
        match p {
            Pull::Missing => Self::Missing,
            Pull::Always => Self::Always,
            Pull::Never => Self::Never,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RenderTarget {
    /// A Compose file (docker compose, docker-compose)
    Compose,
    /// Kubernetes manifests (Deployments, Services, a Secret)
    Kubernetes,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the declaration and report every problem with its file, line and column
    #[command(
        after_help = "Examples:\n  tether check\n  tether check -f deploy/tether.yaml\n  tether check --json | jq '.[].message'\n\nExit status: 0 when valid, 1 with every problem listed."
    )]
    Check {
        #[command(flatten)]
        file: FileArg,
        /// Print problems as a JSON array on stdout
        #[arg(long)]
        json: bool,
    },
    /// Print the resolved declaration: defaults filled in, each sidecar with the file it came from
    #[command(
        after_help = "Examples:\n  tether config\n  tether config --json | jq '.sidecars | keys'"
    )]
    Config {
        #[command(flatten)]
        file: FileArg,
        /// Print JSON instead of YAML
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of tether.yaml, for editors
    #[command(
        after_help = "Examples:\n  tether schema > .vscode/tether.schema.json\n\nIn VS Code with the YAML extension, add to tether.yaml:\n  # yaml-language-server: $schema=.vscode/tether.schema.json"
    )]
    Schema,
    /// Show what `tether run` would start and the rewritten workload command, touching no engine
    #[command(
        after_help = "Examples:\n  tether plan -- docker run --rm -it app:dev pytest -x\n  tether plan --session ci42 --json -- ./run-tests.sh\n\nWith no command after --, the declaration's `workload` (image and command) is used."
    )]
    Plan {
        #[command(flatten)]
        file: FileArg,
        /// The session id used in session sidecar names [default: a new random id]
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Print the plan as JSON
        #[arg(long)]
        json: bool,
        /// The workload: `docker run … IMAGE …`, or any command to run on this host
        #[arg(last = true, value_name = "WORKLOAD")]
        argv: Vec<String>,
    },
    /// Start the sidecars, wait until they are ready, run the workload in the foreground
    #[command(
        after_help = "Examples:\n  tether run -- docker run --rm -it app:dev pytest -x\n  tether run -- ./run-tests.sh          a host process: sidecar ports published on 127.0.0.1\n  tether run                            the declaration's workload.image and command\n\nShared sidecars stay up for the next run; session sidecars are removed when the run ends.\nExit status: the workload's; 130 after Ctrl-C, 143 after SIGTERM; 1 invalid declaration;\n2 engine unreachable or refusing; 3 a sidecar failed to start or become ready."
    )]
    Run {
        #[command(flatten)]
        file: FileArg,
        /// The session id used in session sidecar names [default: a new random id]
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Report progress as JSON lines on stderr
        #[arg(long)]
        json: bool,
        /// When to pull the sidecars' images
        #[arg(long, value_enum, default_value_t = Pull::Missing)]
        pull: Pull,
        /// The workload: `docker run … IMAGE …`, or any command to run on this host
        #[arg(last = true, value_name = "WORKLOAD")]
        argv: Vec<String>,
    },
    /// Write the declaration as a Compose file or Kubernetes manifests
    #[command(
        after_help = "Examples:\n  tether render compose > docker-compose.yml\n  tether render compose -o deploy/docker-compose.yml\n  tether render kubernetes -o deploy/k8s.yaml\n\nThe output names its source and says, in comments, what the target cannot check.\nWhat a target cannot express at all is an error naming the field, unless --allow-lossy."
    )]
    Render {
        /// What to write
        #[arg(value_enum)]
        target: RenderTarget,
        #[command(flatten)]
        file: FileArg,
        /// Write here instead of stdout
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// Render even what cannot be kept faithfully, with a warning for each loss
        #[arg(long)]
        allow_lossy: bool,
        /// Kubernetes: write the secrets' values (read on this host) into the Secret
        #[arg(long)]
        include_secret_values: bool,
        /// Kubernetes: an image whose entrypoint is tether; the workload's Pod waits with
        /// `tether wait` until each shared sidecar answers
        #[arg(long, value_name = "IMAGE")]
        wait_image: Option<String>,
    },
    /// Start sidecars and wait until they are ready, with no workload
    #[command(
        after_help = "Examples:\n  tether up                    every sidecar\n  tether up db cache\n  eval \"$(tether up --env)\"     then run tests on this host against them\n\nPorts are published on 127.0.0.1. Sidecars started here stay until `tether down`."
    )]
    Up {
        #[command(flatten)]
        file: FileArg,
        /// Only these sidecars [default: all]
        #[arg(value_name = "SIDECAR")]
        names: Vec<String>,
        /// Print `export NAME=VALUE` lines for the sidecars' addresses on this host
        #[arg(long)]
        env: bool,
        /// Report progress as JSON lines on stderr
        #[arg(long)]
        json: bool,
        /// When to pull the sidecars' images
        #[arg(long, value_enum, default_value_t = Pull::Missing)]
        pull: Pull,
    },
    /// Print a sidecar's output
    #[command(
        after_help = "Examples:\n  tether logs db\n  tether logs db -f --tail 20\n\nHere -f follows, as with docker logs; name the declaration with --file."
    )]
    Logs {
        /// The declaration file [default: tether.yaml in this folder or the nearest parent]
        #[arg(long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// The sidecar
        sidecar: String,
        /// Keep printing new output until the container stops
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// List this project's sidecar containers
    #[command(
        after_help = "Examples:\n  tether ps\n  tether ps --json | jq '.[] | select(.state != \"running\")'"
    )]
    Ps {
        #[command(flatten)]
        file: FileArg,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Remove this project's sidecar containers
    #[command(
        after_help = "Examples:\n  tether down              shared and session sidecars\n  tether down --sessions   only session sidecars (left by runs that were killed)\n  tether down --all        everything, the project network too"
    )]
    Down {
        #[command(flatten)]
        file: FileArg,
        /// Only session sidecars
        #[arg(long, conflicts_with = "all")]
        sessions: bool,
        /// Also the project network
        #[arg(long)]
        all: bool,
    },
    /// Hand the terminal to this process's group, then run ARGV (how `tether run` starts a
    /// workload on a terminal)
    #[command(name = "__foreground", hide = true)]
    Foreground {
        #[arg(last = true, value_name = "ARGV")]
        argv: Vec<String>,
    },
    /// Wait until addresses answer (for scripts, and Kubernetes init containers)
    #[command(
        after_help = "Examples:\n  tether wait db:5432\n  tether wait --timeout 2m tcp://db:5432 http://api:8080/healthz\n\nAll are waited for at once. HOST:PORT or tcp://HOST:PORT: a TCP connection is accepted;\nhttp://HOST:PORT/PATH: GET answers 200 to 399.\n\nExit status: 0 when all are ready; 3 when some were not by the timeout (named on stderr);\n1 a target cannot be read."
    )]
    Wait {
        /// How long to wait in all
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
        timeout: std::time::Duration,
        /// How long between tries
        #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration)]
        interval: std::time::Duration,
        /// Say nothing of what became ready
        #[arg(long, short)]
        quiet: bool,
        /// What to wait for
        #[arg(value_name = "TARGET", required = true)]
        targets: Vec<String>,
    },
    /// Supervise the bundle's steps and daemons as PID 1, or run one command tini-style
    #[command(
        after_help = "Examples:\n  tether init                               the `init` section of ./tether.yaml\n  tether init -f bundle.yaml --only proxy   proxy and what it depends on\n  tether init -- /app/server --port 80      one command: signals forwarded, zombies reaped\n\nSignals: SIGTERM or SIGINT stops the daemons in reverse dependency order (a second one\nkills them at once); every other signal is forwarded to each daemon's process group.\n\nExit status: 0 after a requested shutdown in which every daemon stopped cleanly; a failed\ndaemon's code (128+N when killed by signal N); 122 a fatal step failed; 123 a daemon gave\nup after max_restarts; 126 a command could not be executed; 127 a command was not found;\n1 the declaration is invalid; 2 tether itself failed. With `-- CMD`, the command's code."
    )]
    Init {
        #[command(flatten)]
        file: FileArg,
        /// Run only these daemons, and what they depend on [default: the bundle's `select_env`
        /// variable, TETHER_DAEMONS unless declared]
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        only: Vec<String>,
        /// One command to run with no declaration, as tini would
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Init { .. }) {
        tether_init::block_signals_early();
    }
    // Diagnostics for tether's developers: TETHER_LOG=debug (or any tracing filter).
    if let Ok(filter) = std::env::var("TETHER_LOG") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
    let code = match cli.command {
        Command::Check { file, json } => check(&file, json),
        Command::Config { file, json } => config(&file, json),
        Command::Schema => {
            print!("{}", tether_spec::SCHEMA);
            exit::OK
        }
        Command::Plan {
            file,
            session,
            json,
            argv,
        } => plan(&file, session, json, argv),
        Command::Run {
            file,
            session,
            json,
            pull,
            argv,
        } => return ExitCode::from(run(&file, session, json, pull.into(), argv)),
        Command::Ps { file, json } => ps(&file, json),
        Command::Render {
            target,
            file,
            output,
            allow_lossy,
            include_secret_values,
            wait_image,
        } => render(
            target,
            &file,
            output,
            allow_lossy,
            include_secret_values,
            wait_image.as_deref(),
        ),
        Command::Up {
            file,
            names,
            env,
            json,
            pull,
        } => return ExitCode::from(up(&file, names, env, json, pull.into())),
        Command::Logs {
            file,
            sidecar,
            follow,
            tail,
        } => logs(&FileArg { file }, &sidecar, follow, tail),
        Command::Down {
            file,
            sessions,
            all,
        } => down(&file, sessions, all),
        Command::Init {
            file,
            only,
            command,
        } => return ExitCode::from(init(&file, only, command)),
        Command::Wait {
            timeout,
            interval,
            quiet,
            targets,
        } => wait(&targets, timeout, interval, quiet),
        Command::Foreground { argv } => {
            return ExitCode::from((tether_run::run::foreground_exec(&argv) & 0xff) as u8);
        }
    };
    ExitCode::from(code)
}

fn wait(
    targets: &[String],
    timeout: std::time::Duration,
    interval: std::time::Duration,
    quiet: bool,
) -> u8 {
    let parsed: Result<Vec<wait::Target>, String> =
        targets.iter().map(|t| wait::Target::parse(t)).collect();
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let missing = runtime().block_on(wait::wait(&parsed, timeout, interval, quiet));
    if missing.is_empty() {
        return exit::OK;
    }
    eprintln!(
        "error: not ready after {}: {}",
        humantime::format_duration(timeout),
        missing.join(", ")
    );
    exit::NOT_READY
}

fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Loads the declaration, or prints why not and returns the exit code.
fn load(file: &FileArg, json: bool) -> Result<Loaded, u8> {
    let path = match &file.file {
        Some(p) => p.clone(),
        None => {
            let cwd = std::env::current_dir().map_err(|e| {
                eprintln!("error: cannot read the current folder: {e}");
                exit::INTERNAL
            })?;
            match tether_spec::find(&cwd) {
                Ok(p) => relative_to(&p, &cwd),
                Err(e) => {
                    eprintln!("error: {e}");
                    eprintln!(
                        "  = hint: create {}, or name one with -f FILE",
                        tether_spec::FILE_NAME
                    );
                    return Err(exit::INVALID);
                }
            }
        }
    };
    match tether_spec::load(&path) {
        Ok(l) => Ok(l),
        Err(LoadError::Invalid {
            sources,
            diagnostics,
        }) => {
            if json {
                let list: Vec<_> = diagnostics.iter().map(|d| sources.to_json(d)).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                eprint!("{}", sources.render_all(&diagnostics, color()));
            }
            Err(exit::INVALID)
        }
        Err(e @ (LoadError::Io { .. } | LoadError::NotFound { .. })) => {
            eprintln!("error: {e}");
            Err(exit::INVALID)
        }
    }
}

/// `p` relative to `base` when it is inside it, for shorter messages.
fn relative_to(p: &Path, base: &Path) -> PathBuf {
    p.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

fn check(file: &FileArg, json: bool) -> u8 {
    match load(file, json) {
        Ok(l) => {
            let d = &l.declaration;
            if json {
                println!("[]");
            } else {
                let steps = d.init.as_ref().map_or(0, |i| i.steps.len());
                let daemons = d.init.as_ref().map_or(0, |i| i.daemons.len());
                eprintln!(
                    "{}: valid (project {}, {} sidecar{}, {} step{}, {} daemon{})",
                    d.file,
                    d.project,
                    d.sidecars.len(),
                    plural(d.sidecars.len()),
                    steps,
                    plural(steps),
                    daemons,
                    plural(daemons)
                );
            }
            exit::OK
        }
        Err(code) => code,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn config(file: &FileArg, json: bool) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let value = match serde_json::to_value(&loaded.declaration) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: cannot serialise the declaration: {e}");
            return exit::INTERNAL;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", tether_spec::emit::to_yaml(&value));
    }
    exit::OK
}

/// The workload command: what follows `--`, else the declaration's `workload`.
fn workload_argv(
    decl: &tether_spec::model::Declaration,
    argv: Vec<String>,
) -> Result<Vec<String>, u8> {
    if !argv.is_empty() {
        return Ok(argv);
    }
    match decl
        .workload
        .as_ref()
        .and_then(|w| w.image.clone().map(|i| (i, w)))
    {
        Some((image, w)) => {
            let mut argv = vec!["docker".into(), "run".into(), "--rm".into(), image];
            argv.extend(w.command.clone().unwrap_or_default());
            Ok(argv)
        }
        None => {
            eprintln!(
                "error: no workload: give its command after `--`, or declare `workload.image`"
            );
            eprintln!("  = hint: tether run -- docker run --rm IMAGE [ARGS]");
            Err(exit::INVALID)
        }
    }
}

/// The declaration and its plan, or the exit code after saying why not.
fn planned(
    file: &FileArg,
    session: Option<String>,
    argv: Vec<String>,
) -> Result<(Loaded, tether_plan::Plan), u8> {
    let loaded = load(file, false)?;
    let argv = workload_argv(&loaded.declaration, argv)?;
    let session = session.unwrap_or_else(new_session_id);
    if let Err(e) = tether_spec::values::check_dns_label(&session) {
        eprintln!("error: --session: {e}");
        return Err(exit::INVALID);
    }
    match tether_plan::plan(&loaded.declaration, &session, &argv) {
        Ok(p) => Ok((loaded, p)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::INVALID)
        }
    }
}

fn plan(file: &FileArg, session: Option<String>, json: bool, argv: Vec<String>) -> u8 {
    let (_, p) = match planned(file, session, argv) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
    } else {
        print!("{}", p.render_text());
    }
    exit::OK
}

fn render(
    target: RenderTarget,
    file: &FileArg,
    output: Option<PathBuf>,
    allow_lossy: bool,
    include_secret_values: bool,
    wait_image: Option<&str>,
) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let decl = &loaded.declaration;
    let base = match &output {
        Some(o) => o
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    let base = base.canonicalize().unwrap_or(base);
    let read_secret = |from: &tether_spec::model::SecretSource| match from {
        tether_spec::model::SecretSource::Env(var) => {
            std::env::var(var).map_err(|_| format!("the variable {var} is not set on this host"))
        }
        tether_spec::model::SecretSource::File(path) => {
            let p = Path::new(&decl.root).join(path);
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {path}: {}", e.kind()))
        }
    };
    let text = match target {
        RenderTarget::Compose => tether_render::compose::render(decl, &base),
        RenderTarget::Kubernetes => {
            let declaration_text = std::fs::read_to_string(&decl.file).ok();
            let options = tether_render::kubernetes::Options {
                allow_lossy,
                secret_value: include_secret_values.then_some(&read_secret as _),
                declaration_text: declaration_text.as_deref(),
                wait_image,
            };
            tether_render::kubernetes::render(decl, &options).map(|r| {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                r.text
            })
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", decl.file);
            return exit::INVALID;
        }
    };
    match output {
        Some(path) => match path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                // Secret values, when asked for, make the file for its owner's eyes only.
                let mode = if include_secret_values { 0o600 } else { 0o644 };
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
            }) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                exit::OK
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                exit::INTERNAL
            }
        },
        None => {
            print!("{text}");
            exit::OK
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// Connects to the engine, or says why not.
async fn engine() -> Result<tether_engine::docker::DockerEngine, u8> {
    tether_engine::docker::DockerEngine::connect()
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("  = hint: {hint}");
            }
            exit::INTERNAL
        })
}

fn run(
    file: &FileArg,
    session: Option<String>,
    json: bool,
    pull: tether_plan::PullPolicy,
    argv: Vec<String>,
) -> u8 {
    let (loaded, mut p) = match planned(file, session, argv) {
        Ok(x) => x,
        Err(code) => return code,
    };
    p.pull = pull;
    let code = runtime().block_on(async {
        if p.sidecars.is_empty() {
            return tether_run::run::passthrough(&p).await;
        }
        match engine().await {
            Ok(e) => {
                let progress = tether_run::run::Progress::new(json);
                tether_run::run::run(&e, &loaded.declaration, &p, &progress).await
            }
            Err(code) => i32::from(code),
        }
    });
    (code & 0xff) as u8
}

fn up(
    file: &FileArg,
    names: Vec<String>,
    print_env: bool,
    json: bool,
    pull: tether_plan::PullPolicy,
) -> u8 {
    // A host-process plan: ports published on 127.0.0.1, addresses for this host.
    let (loaded, mut p) = match planned(file, Some("up".into()), vec!["true".into()]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    p.pull = pull;
    let code = runtime().block_on(async {
        match engine().await {
            Ok(e) => {
                let progress = tether_run::run::Progress::new(json);
                tether_run::run::up(
                    &e,
                    &loaded.declaration,
                    &mut p,
                    &names,
                    print_env,
                    &progress,
                )
                .await
            }
            Err(code) => i32::from(code),
        }
    });
    (code & 0xff) as u8
}

fn logs(file: &FileArg, sidecar: &str, follow: bool, tail: Option<usize>) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let decl = &loaded.declaration;
    if !decl.sidecars.contains_key(sidecar) {
        let known: Vec<&str> = decl.sidecars.keys().map(String::as_str).collect();
        eprintln!(
            "error: no sidecar named `{sidecar}` (declared: {})",
            known.join(", ")
        );
        return exit::INVALID;
    }
    let project = decl.project.clone();
    runtime().block_on(async {
        let e = match engine().await {
            Ok(e) => e,
            Err(code) => return code,
        };
        let rows = match tether_run::ps::list(&e, &project, None).await {
            Ok(r) => r,
            Err(err) => {
                eprintln!("error: {err}");
                return exit::INTERNAL;
            }
        };
        // The running one if any, else the newest.
        let mut mine: Vec<_> = rows.into_iter().filter(|r| r.sidecar == sidecar).collect();
        mine.sort_by(|a, b| {
            (a.state == "running", &a.created).cmp(&(b.state == "running", &b.created))
        });
        let Some(row) = mine.pop() else {
            eprintln!("error: sidecar {sidecar} has no container; `tether up {sidecar}` starts it");
            return exit::INVALID;
        };
        match e.print_logs(&row.container, follow, tail).await {
            Ok(()) => exit::OK,
            Err(err) => {
                eprintln!("error: {err}");
                exit::INTERNAL
            }
        }
    })
}

fn ps(file: &FileArg, json: bool) -> u8 {
    let (loaded, p) = match planned(file, Some("ps".into()), vec!["true".into()]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let project = loaded.declaration.project.clone();
    runtime().block_on(async {
        let e = match engine().await {
            Ok(e) => e,
            Err(code) => return code,
        };
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
                eprintln!("error: {err}");
                exit::INTERNAL
            }
        }
    })
}

fn down(file: &FileArg, sessions: bool, all: bool) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let project = loaded.declaration.project.clone();
    runtime().block_on(async {
        let e = match engine().await {
            Ok(e) => e,
            Err(code) => return code,
        };
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
                eprintln!("error: {err}");
                exit::INTERNAL
            }
        }
    })
}

/// Eight hex digits from the clock and the process id: unique enough to tell sessions apart.
fn new_session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("s{:08x}", h.finish() as u32)
}

fn init(file: &FileArg, only: Vec<String>, command: Vec<String>) -> u8 {
    let code = if !command.is_empty() {
        if file.file.is_some() || !only.is_empty() {
            eprintln!(
                "error: `tether init -- COMMAND` runs one command; -f and --only do not apply"
            );
            return exit::INVALID;
        }
        tether_init::run_single(&command)
    } else {
        let loaded = match load(file, false) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let decl = loaded.declaration;
        let Some(init) = decl.init else {
            eprintln!("error: {}: there is no `init` section to run", decl.file);
            eprintln!(
                "  = hint: declare `init.daemons`, or run one command with `tether init -- COMMAND`"
            );
            return exit::INVALID;
        };
        let (names, from) = if only.is_empty() {
            let names = std::env::var(&init.select_env).unwrap_or_default();
            let names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (names, format!("${}", init.select_env))
        } else {
            (only, "--only".to_owned())
        };
        let selection = match tether_init::select(&init, &names) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {from}: {e}");
                return exit::INVALID;
            }
        };
        tether_init::run_bundle(init, selection)
    };
    match code {
        Ok(code) => (code & 0xff) as u8,
        Err(f) => {
            eprintln!("tether init: error: {}", f.message);
            (f.code & 0xff) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
