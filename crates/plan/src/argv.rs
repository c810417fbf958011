//! Reading and rewriting a workload's `docker run …` command line.
//!
//! Only the engine's own options (before the image) are read; the image and everything after it
//! belong to the workload and are passed through untouched, even when they look like options.

use std::fmt;

/// What the command after `--` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadArgv {
    /// `docker run …`, `docker container run …`, `podman run …`.
    Container {
        /// Index of the `run` word.
        run: usize,
        /// Index of the image.
        image: usize,
        /// The `--network`/`--net` value given by the user, if any.
        network: Option<String>,
        /// Where tether's options go: before a `--` that ends the options, else at the image.
        insert: usize,
    },
    /// Anything else: a process on the host.
    HostProcess,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgvError {
    Empty,
    /// `docker run` with options but no image.
    NoImage,
    /// An option that takes a value came last.
    MissingValue(String),
}

impl fmt::Display for ArgvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "no workload command was given after `--`"),
            Self::NoImage => write!(f, "the workload's `run` command names no image"),
            Self::MissingValue(o) => write!(f, "the workload's option `{o}` needs a value"),
        }
    }
}

impl std::error::Error for ArgvError {}

/// Long options of `docker run`/`podman run` that take no value.
const BOOL_LONG: &[&str] = &[
    "--detach",
    "--disable-content-trust",
    "--env-host",
    "--help",
    "--http-proxy",
    "--init",
    "--interactive",
    "--no-healthcheck",
    "--no-hostname",
    "--no-hosts",
    "--oom-kill-disable",
    "--passwd",
    "--privileged",
    "--publish-all",
    "--quiet",
    "--read-only",
    "--read-only-tmpfs",
    "--replace",
    "--rm",
    "--rmi",
    "--rootfs",
    "--sig-proxy",
    "--tls-verify",
    "--tty",
    "--unsetenv-all",
    "--use-api-socket",
];
/// Short options of `docker run` that take no value.
const BOOL_SHORT: &[char] = &['d', 'i', 't', 'P', 'q'];

/// Global options of the docker/podman CLI (before `run`) that take no value.
const GLOBAL_BOOL: &[&str] = &["-D", "--debug", "--tls", "--tlsverify", "--remote", "-r"];

fn is_engine(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    matches!(base, "docker" | "podman")
}

/// Finds the `run` word and the image in a container engine's command line.
pub fn classify(argv: &[String]) -> Result<WorkloadArgv, ArgvError> {
    let Some(program) = argv.first() else {
        return Err(ArgvError::Empty);
    };
    if !is_engine(program) {
        return Ok(WorkloadArgv::HostProcess);
    }
    // Global options, then `run` or `container run`.
    let mut i = 1;
    while i < argv.len() && argv[i].starts_with('-') {
        let a = &argv[i];
        if !a.contains('=') && !GLOBAL_BOOL.contains(&a.as_str()) {
            i += 1;
        }
        i += 1;
    }
    let run = match (
        argv.get(i).map(String::as_str),
        argv.get(i + 1).map(String::as_str),
    ) {
        (Some("run"), _) => i,
        (Some("container"), Some("run")) => i + 1,
        _ => return Ok(WorkloadArgv::HostProcess),
    };
    let mut network = None;
    let mut dashdash = None;
    let mut i = run + 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" {
            dashdash = Some(i);
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let value = if BOOL_LONG.contains(&a.split('=').next().unwrap_or(a)) {
                None
            } else if let Some(v) = inline {
                Some(v.to_owned())
            } else {
                i += 1;
                Some(
                    argv.get(i)
                        .ok_or_else(|| ArgvError::MissingValue(a.to_owned()))?
                        .clone(),
                )
            };
            if matches!(name, "network" | "net") {
                network = value;
            }
        } else {
            // A cluster of short options: all take no value except possibly the last.
            let letters: Vec<char> = a[1..].chars().collect();
            for (j, c) in letters.iter().enumerate() {
                if BOOL_SHORT.contains(c) {
                    continue;
                }
                if j + 1 == letters.len() {
                    i += 1;
                    if i >= argv.len() {
                        return Err(ArgvError::MissingValue(a.to_owned()));
                    }
                }
                break;
            }
        }
        i += 1;
    }
    if i >= argv.len() {
        return Err(ArgvError::NoImage);
    }
    Ok(WorkloadArgv::Container {
        run,
        image: i,
        network,
        insert: dashdash.unwrap_or(i),
    })
}

/// What tether adds to a workload container's command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    /// `--network VALUE`: the project network, or `container:NAME`; added only when the
    /// command line names no network of its own.
    pub network: Option<String>,
    pub labels: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    /// `-e NAME` without a value: the engine's CLI passes on its own environment's value.
    pub pass_env: Vec<String>,
    /// `-v` specifications.
    pub volumes: Vec<String>,
}

impl Injection {
    pub fn is_empty(&self) -> bool {
        self.network.is_none()
            && self.labels.is_empty()
            && self.env.is_empty()
            && self.pass_env.is_empty()
            && self.volumes.is_empty()
    }
}

/// Inserts the injection before the image. With nothing to inject, or a host process, the argv
/// comes back unchanged.
pub fn inject(argv: &[String], injection: &Injection) -> Result<Vec<String>, ArgvError> {
    let kind = classify(argv)?;
    let WorkloadArgv::Container {
        insert, network, ..
    } = kind
    else {
        return Ok(argv.to_vec());
    };
    if injection.is_empty() {
        return Ok(argv.to_vec());
    }
    let mut add: Vec<String> = Vec::new();
    if let (Some(needed), None) = (&injection.network, network) {
        add.push("--network".into());
        add.push(needed.clone());
    }
    for (k, v) in &injection.labels {
        add.push("--label".into());
        add.push(format!("{k}={v}"));
    }
    for (k, v) in &injection.env {
        add.push("-e".into());
        add.push(format!("{k}={v}"));
    }
    for k in &injection.pass_env {
        add.push("-e".into());
        add.push(k.clone());
    }
    for v in &injection.volumes {
        add.push("-v".into());
        add.push(v.clone());
    }
    let mut out = Vec::with_capacity(argv.len() + add.len());
    out.extend_from_slice(&argv[..insert]);
    out.extend(add);
    out.extend_from_slice(&argv[insert..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn image_of(s: &str) -> Option<String> {
        let argv = v(s);
        match classify(&argv).unwrap() {
            WorkloadArgv::Container { image, .. } => Some(argv[image].clone()),
            WorkloadArgv::HostProcess => None,
        }
    }

    #[test]
    fn finds_the_image_past_every_kind_of_option() {
        assert_eq!(
            image_of("docker run alpine echo hi").as_deref(),
            Some("alpine")
        );
        assert_eq!(
            image_of("docker run --rm -it alpine sh").as_deref(),
            Some("alpine")
        );
        assert_eq!(
            image_of("docker run -e A=1 -v x:/y --name w img").as_deref(),
            Some("img")
        );
        assert_eq!(
            image_of("docker run -itd -p 80:80 img").as_deref(),
            Some("img")
        );
        assert_eq!(
            image_of("docker run -itp 80:80 img").as_deref(),
            Some("img")
        );
        assert_eq!(
            image_of("docker run --rm=false --env=A=1 img x").as_deref(),
            Some("img")
        );
        assert_eq!(
            image_of("/usr/bin/docker -H unix:///x.sock container run img").as_deref(),
            Some("img")
        );
        assert_eq!(
            image_of("podman --remote run --replace img").as_deref(),
            Some("img")
        );
        assert_eq!(image_of("docker run -- img --rm").as_deref(), Some("img"));
        assert_eq!(image_of("pytest -x tests"), None);
        assert_eq!(image_of("docker ps"), None);
    }

    #[test]
    fn reads_the_network_only_before_the_image() {
        let argv = v("docker run --net=host img --network other");
        assert_eq!(
            classify(&argv).unwrap(),
            WorkloadArgv::Container {
                run: 1,
                image: 3,
                network: Some("host".into()),
                insert: 3,
            }
        );
    }

    #[test]
    fn malformed_run_lines() {
        assert_eq!(classify(&v("docker run --rm")), Err(ArgvError::NoImage));
        assert_eq!(
            classify(&v("docker run --name")),
            Err(ArgvError::MissingValue("--name".into()))
        );
        assert_eq!(classify(&[]), Err(ArgvError::Empty));
    }

    #[test]
    fn options_go_before_a_double_dash() {
        let inj = Injection {
            network: Some("n".into()),
            ..Injection::default()
        };
        assert_eq!(
            inject(&v("docker run --rm -- app:dev pytest"), &inj).unwrap(),
            v("docker run --rm --network n -- app:dev pytest")
        );
        assert_eq!(
            image_of("podman run --rmi --passwd app:dev pytest").as_deref(),
            Some("app:dev")
        );
    }

    #[test]
    fn nothing_to_inject_is_identity() {
        let argv = v("docker run --rm img --network x");
        assert_eq!(inject(&argv, &Injection::default()).unwrap(), argv);
    }

    #[test]
    fn a_network_of_the_users_own_is_kept() {
        let inj = Injection {
            network: Some("tether-demo".into()),
            pass_env: vec!["A".into()],
            ..Injection::default()
        };
        assert_eq!(
            inject(&v("docker run --net=mine img"), &inj).unwrap(),
            v("docker run --net=mine -e A img")
        );
    }
}
