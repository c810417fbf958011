//! The command line: every command, its arguments and its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A duration as the declaration writes them: `500ms`, `30s`, `2m` (one parser for every
/// command's durations and for `tether-init`'s `--grace`).
pub use tether_init::command::duration;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Declare sidecars once; run them beside a workload, under one PID 1, or on a cluster",
    after_help = "Examples:\n  tether check                      validate ./tether.yaml (or the nearest one above)\n  tether config --json              the resolved declaration, defaults filled in\n  tether plan -- docker run --rm app:dev pytest\n                                    what `tether run` would start, and the rewritten command\n  tether schema > tether.schema.json\n                                    a JSON Schema for editors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct FileArg {
    /// The declaration file [default: tether.yaml in this folder or the nearest parent]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// When to pull the sidecars' images, as with `docker run --pull`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Pull {
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
pub enum RenderTarget {
    /// A Compose file (docker compose, docker-compose)
    Compose,
    /// Kubernetes manifests (Deployments, Services, a Secret)
    Kubernetes,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; `bus serve`'s flags make it the largest"
)]
pub enum Command {
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
        /// With `-- COMMAND`: keep tether's session; the command's process group becomes the
        /// terminal's foreground group (as with tini) instead of leading a new session
        #[arg(long)]
        no_setsid: bool,
        /// With `-- COMMAND`: once it exited, how long the rest of its process group has
        /// between SIGTERM and SIGKILL
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        grace: Option<std::time::Duration>,
        /// One command to run with no declaration, as tini would
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Steer a running `tether init`: status, start, stop, restart, signal, logs, reload, shutdown
    #[command(
        after_help = "Examples:\n  tether ctl status                 each daemon's state, pid, uptime, restarts, last exit, readiness\n  tether ctl stop db                stops what depends on db first, then db (and says so)\n  tether ctl start api              starts what api depends on, then api; waits until it is ready\n  tether ctl restart api worker\n  tether ctl signal web HUP\n  tether ctl logs web --tail 20 -f  from the init's memory: the last 1000 lines (64 KiB) per daemon\n  tether ctl reload                 reads the declaration again and applies the difference\n  tether ctl shutdown               as SIGTERM: stops every daemon, then tether init exits\n\nThe socket is `init.control.socket` of the declaration tether init runs, by default\n$XDG_RUNTIME_DIR/tether/init.sock, else /run/tether/init.sock; name another with --socket.\nstart, stop, restart and reload wait until the daemons they touch are running, backing off\nor stopped. Daemons stopped on request do not end the bundle: it waits for a start, a\nreload, `shutdown` or SIGTERM.\n\nExit status: 0 done; 1 refused, nothing changed (an unknown daemon, an invalid declaration on\nreload, a daemon that is not running for signal); 2 no tether init answers on the socket, or\nit ended first; 3 done, but a daemon did not start or become ready."
    )]
    Ctl {
        /// The control socket [default: $XDG_RUNTIME_DIR/tether/init.sock, else
        /// /run/tether/init.sock]
        #[arg(long, value_name = "PATH", global = true)]
        socket: Option<PathBuf>,
        /// Print the answer as JSON (logs: one object per line)
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// The plugin bus: `tether bus serve` runs the Bus API server
    #[cfg(feature = "bus")]
    Bus {
        #[command(subcommand)]
        command: BusCommand,
    },
    /// The bus sidecar: a plugin's side of the plugin bus, configured by the environment
    #[cfg(feature = "sidecar")]
    #[command(
        after_help = "Environment (the container contract):\n  INSTANCE_ID          required: this instance's unique name (oms-1)\n  POOL_TYPE            required: the plugin's pool type (SignalPool)\n  IMAGE                the plugin's image, for the registry\n  REQUESTED_GRANTS     a JSON array of {\"topic\": PATTERN, \"action\": \"publish\"|\"subscribe\"}\n  TAGS                 a comma list of capability tags\n  SIDECAR_CONFIG       a YAML file: ack_deadline, max_deliver, drain_timeout, health_interval,\n                       health_timeout, health_failures, outbox_size, data_dir, connect_timeout,\n                       accept_timeout, max_in_flight, token_file, ca_file, tls_server_name\n  SIDECAR_BUS_API_URL  the Bus API [default: bus-api:8443]; https:// (or a ca_file) for TLS\n  SIDECAR_ADDR         where the plugin connects [default: 127.0.0.1:9191]\n  SIDECAR_HEALTH_ADDR  /healthz, /readyz and /metrics [default: 0.0.0.0:9192]\n\nStart-up runs eight steps, each logged: connect to the Bus API, register, recover grants,\nrecover local state (the outbox), start the health server, open the plugin listener, accept\nthe plugin, begin routing. Steps 1-3 and 7 are fatal; 4-6 are logged and start-up goes on.\n\nSignals: SIGTERM or SIGINT drains: no new deliveries, stop to the plugin, in-flight messages\nfinished and acked (up to drain_timeout, 20s), the rest released to the bus, deregistered.\nA second signal stops at once.\n\nExit status: 0 drained; 1 a bad environment variable or config file, nothing started; 3 a\nfatal start-up step failed; 4 the drain timeout passed (unacked deliveries were released);\n128+N a second signal N during the drain."
    )]
    Sidecar,
}

#[cfg(feature = "bus")]
#[derive(Subcommand)]
pub enum BusCommand {
    /// Serve the Bus API (tether.bus.v1 over gRPC) on a durable store, with grants enforced
    #[command(
        after_help = "Examples:\n  tether bus serve                                  127.0.0.1:8443 (on a host), data in .tether/bus, no policy\n  tether bus serve --listen 0.0.0.0:8443 --data /var/lib/tether/bus --policy bus-policy.yaml\n  tether bus serve --tls-cert bus.crt --tls-key bus.key --http 127.0.0.1:9090 --sync 100ms\n  tether bus serve --backend nats --nats-url nats://h1:4222,nats://h2:4222 --replicas 3\n\nWithout --policy every grant an instance requests is given: for development only. The policy\nfile names each pool type's and instance's grants ({topic, action: publish|subscribe}) and\noptionally a token_file; a bad one is reported with file, line and column, and nothing starts.\n\nThe default listen address is 0.0.0.0:8443 when tether runs as PID 1 or inside a container\n(/.dockerenv or /run/.containerenv exists), 127.0.0.1:8443 otherwise.\n\nSignals: SIGTERM or SIGINT stops accepting calls, ends the subscription streams, lets calls in\nflight finish (clients still connected after 10 s are cut off), makes every write durable,\nand exits 0.\n\nWith --backend nats, topics are subjects of the stream TETHER (tether.msg.>), --max-age and\n--max-bytes limit the whole stream. A server that cannot be reached is tried again for 15 s\n(it may be starting beside the bus); one that still cannot, or refuses the credentials, stops\nthe start-up with an error naming the servers.\n\nExit status: 0 after SIGTERM/SIGINT; 1 a bad flag, policy or TLS file, nothing started; 2 the\naddress, the data folder or NATS cannot be used, or the server failed."
    )]
    Serve(ServeArgs),
    /// Publish one message through the Bus API, registered as an instance the policy gives
    /// the grant to
    #[command(
        after_help = "Examples:\n  tether bus publish orders.eu 'buy 10'                      through 127.0.0.1:8443, as tether-cli\n  echo '{\"qty\":10}' | tether bus publish orders.eu --header content-type=application/json\n  tether bus publish --bus https://bus:8443 --ca-file ca.pem --pool Ops --token-file ops.token orders.eu x\n\nWithout DATA (or with -) the message is what stdin holds. A bus with a policy gives the\ngrant to publish on TOPIC only to an instance or pool it names (--instance, --pool), with\nits token when it has one (--token-file; never on the command line). Without --instance each\npublish registers as an instance of its own (tether-cli-publish-PID) and deregisters after.\n\nPrints the message's sequence in its topic (--json: {\"topic\", \"sequence\"}).\n\nExit status: 0 published; 1 a bad flag or topic; 2 the bus could not be reached, refused the\nregistration or the grant, or refused the publish."
    )]
    Publish(PublishArgs),
    /// Print what arrives on topic patterns, as a subscriber of its own (or a member of a
    /// queue group), until interrupted
    #[command(
        after_help = "Examples:\n  tether bus tail 'orders.>'                      every message on orders.>, acked as printed\n  tether bus tail 'orders.>' --count 1 --json     the next one as JSON, then exit\n  tether bus tail 'signals.*' --no-ack            look without taking: given back at the end\n\nEach pattern is the instance's (--instance, default tether-cli-tail) own durable consumer:\nthe first tail of a pattern prints what its topics still hold, a later one of the same\ninstance and pattern goes on where the last stopped. Other subscribers get every message as\nbefore. Two tails at once need an --instance each (a Register replaces the instance's session).\n--no-ack holds what it printed until it ends, at most as many as the bus hands one subscriber\nunacked (256 by default).\n\nEach message is one line: TOPIC #SEQUENCE, its headers, and its data as text (control\ncharacters escaped; --json: one object per line with topic, sequence, redelivered,\nsubscription, headers, and data, or data_hex when the data is not UTF-8).\n\nExit status: 0 interrupted (SIGINT or SIGTERM), --count reached or stdout closed; 1 a bad\nflag or pattern; 2 the bus could not be reached, refused the registration or the grant, ended\nthe subscription, or refused an ack."
    )]
    Tail(TailArgs),
}

/// How `tether bus publish` and `tail` reach the Bus API, and as whom.
#[cfg(feature = "bus")]
#[derive(clap::Args)]
pub struct BusClientArgs {
    /// The Bus API: HOST:PORT, http://HOST:PORT or https://HOST:PORT
    #[arg(long, value_name = "URL", default_value = "127.0.0.1:8443")]
    pub bus: String,
    /// The instance to register as [default: tether-cli-tail for `tail`; for `publish`,
    /// tether-cli-publish-PID, an instance of its own]
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Its pool type
    #[arg(long, value_name = "POOL", default_value = "TetherCli")]
    pub pool: String,
    /// A file holding the token the policy asks of the pool or the instance
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the bus's certificate: TLS
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The name the bus's certificate carries, when not the host of --bus
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// How long reaching the bus, registering and each call may take
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub timeout: std::time::Duration,
}

/// `tether bus publish`'s flags.
#[cfg(feature = "bus")]
#[derive(clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub client: BusClientArgs,
    /// The topic: dot-separated tokens, no wildcards (orders.eu)
    #[arg(value_name = "TOPIC")]
    pub topic: String,
    /// The message; stdin when missing or `-`
    #[arg(value_name = "DATA")]
    pub data: Option<String>,
    /// A header, NAME=VALUE (again for more)
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// An idempotency key: a publish repeated with the same key is stored once
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Print {"topic", "sequence"} as JSON
    #[arg(long)]
    pub json: bool,
}

/// `tether bus tail`'s flags.
#[cfg(feature = "bus")]
#[derive(clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub client: BusClientArgs,
    /// Topic patterns: `*` one token, `>` the rest (orders.*, signals.>)
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,
    /// Look without taking: the messages are not acked, and given back when the tail ends
    /// (the next tail of this instance prints them again)
    #[arg(long)]
    pub no_ack: bool,
    /// Exit after this many messages
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per message
    #[arg(long)]
    pub json: bool,
}

/// `tether bus serve`'s flags.
#[cfg(feature = "bus")]
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The address to serve gRPC on [default: 0.0.0.0:8443 as PID 1 or in a container,
    /// 127.0.0.1:8443 otherwise]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The folder of the store (created when missing)
    #[arg(long, value_name = "DIR", default_value = ".tether/bus")]
    pub data: PathBuf,
    /// The policy file: which grants each pool type and instance may have
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Retention per topic: messages older than this are dropped
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = duration)]
    pub max_age: std::time::Duration,
    /// Retention per topic: the oldest messages are dropped past this many bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_bytes: u64,
    /// When writes reach the disk. `always`: every publish, ack and nack is fsynced before
    /// it is answered (concurrent ones share one fsync). A duration such as `100ms` or `1s`:
    /// writes are answered before they are fsynced, and an fsync happens at least that
    /// often, as in NATS JetStream's default; a crash of tether (kill -9, out of memory) or
    /// of the machine then loses the publishes and acks answered in about the last DURATION
    /// (lost acks mean redeliveries). A clean stop (SIGTERM) loses nothing
    #[arg(long, value_name = "always|DURATION", default_value = "always")]
    pub sync: String,
    /// Serve /healthz, /readyz and /metrics (Prometheus) over plain HTTP on this address
    /// [default: off]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Where messages and the registry are kept: `embedded` (a redb file in --data) or
    /// `nats` (NATS JetStream at --nats-url; the Bus API then keeps no state of its own and
    /// several replicas can serve one bus)
    #[arg(long, value_name = "embedded|nats", default_value = "embedded")]
    pub backend: String,
    /// The NATS servers, comma-separated (nats://h1:4222,nats://h2:4222); with --backend nats
    #[arg(long, value_name = "URLS")]
    pub nats_url: Option<String>,
    /// How many copies of the stream and the registry the NATS cluster keeps
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub replicas: usize,
    /// A NATS credentials file (a user JWT and its NKey seed, as nsc writes it); or set
    /// NATS_USER and NATS_PASSWORD (or NATS_USER_FILE and NATS_PASSWORD_FILE, files that hold
    /// them) for a user and password
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A CA file (PEM) to check the NATS servers' certificates with; TLS is then required
    #[arg(long, value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Each daemon's state, pid, uptime, restarts, last exit and readiness
    Status,
    /// Start daemons, and what they depend on; wait until they run (and are ready)
    Start {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Return once the request is taken, without waiting
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop daemons, after what depends on them; wait until they are stopped
    Stop {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Return once the request is taken, without waiting
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop daemons (what depends on them first) and start them all again
    Restart {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Return once the request is taken, without waiting
        #[arg(long)]
        no_wait: bool,
    },
    /// Send a signal to a daemon (its process group, or its main process with
    /// `forward_signals: process`)
    Signal {
        #[arg(value_name = "NAME")]
        name: String,
        /// HUP, SIGUSR1, 10, …
        #[arg(value_name = "SIG")]
        signal: String,
    },
    /// A daemon's recent output, kept in the init's memory (its last 1000 lines, 64 KiB)
    Logs {
        #[arg(value_name = "NAME")]
        name: String,
        /// Keep printing new lines until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Read the declaration again: start what is new, stop what was removed, restart what
    /// changed (and what depends on it); an invalid file changes nothing
    Reload {
        /// Return once the request is taken, without waiting
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop the bundle, as SIGTERM does; return once every daemon stopped
    Shutdown,
}
