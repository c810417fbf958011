//! `tether-init`: `tether init` alone, small enough to put in every image. The command is
//! `tether_init::command`, the same one `tether init` runs; this binary parses its arguments by
//! hand (clap would be a third of its size) and hands over its output.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "the binary is where tether speaks to its user"
)]

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use tether_init::command::Args;

const USAGE: &str = "Usage: tether-init [OPTIONS] [-- <COMMAND>...]";

const HELP: &str = "\
Supervise the bundle's steps and daemons as PID 1, or run one command tini-style
(`tether init` alone)

Usage: tether-init [OPTIONS] [-- <COMMAND>...]

Arguments:
  [COMMAND]...  One command to run with no declaration, as tini would

Options:
  -f, --file <FILE>       The declaration file [default: tether.yaml in this folder or the nearest
                          parent]
      --only <NAMES>      Run only these daemons, and what they depend on [default: the bundle's
                          `select_env` variable, TETHER_DAEMONS unless declared]
      --no-setsid         With `-- COMMAND`: keep tether's session; the command's process group
                          becomes the terminal's foreground group (as with tini) instead of leading
                          a new session
      --grace <DURATION>  With `-- COMMAND`: once it exited, how long the rest of its process group
                          has between SIGTERM and SIGKILL
  -h, --help              Print help
  -V, --version           Print version

Examples:
  tether-init                               the `init` section of ./tether.yaml
  tether-init -f bundle.yaml --only proxy   proxy and what it depends on
  tether-init -- /app/server --port 80      one command: signals forwarded, zombies reaped

Signals: SIGTERM or SIGINT stops the daemons in reverse dependency order (a second one
kills them at once); every other signal is forwarded to each daemon's process group.

Exit status: 0 after a requested shutdown in which every daemon stopped cleanly; a failed
daemon's code (128+N when killed by signal N); 122 a fatal step failed; 123 a daemon gave
up after max_restarts; 126 a command could not be executed; 127 a command was not found;
1 the declaration is invalid; 2 tether itself failed, or a bad option. With `-- CMD`, the
command's code.";

fn main() -> ExitCode {
    let code = match parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(args)) => {
            tether_init::command::run(args, std::io::stdout().as_fd(), std::io::stderr().as_fd())
        }
        Ok(Parsed::Help) => {
            println!("{HELP}");
            tether_init::exit::OK
        }
        Ok(Parsed::Version) => {
            println!("tether-init {}", env!("CARGO_PKG_VERSION"));
            tether_init::exit::OK
        }
        Err(usage) => {
            eprint!("{usage}");
            USAGE_ERROR
        }
    };
    ExitCode::from(code)
}

/// A bad option: as with `tether init`'s parser, 2.
const USAGE_ERROR: u8 = 2;

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Args),
    Help,
    Version,
}

/// What was wrong with the command line, as it is printed.
#[derive(Debug, PartialEq, Eq)]
struct Usage(String);

impl Usage {
    fn new(message: &str, tip: Option<String>) -> Usage {
        let tip = tip.map(|t| format!("\n  tip: {t}\n")).unwrap_or_default();
        Usage(format!(
            "error: {message}\n{tip}\n{USAGE}\n\nFor more information, try '--help'.\n"
        ))
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `tether init`'s options: `-f/--file FILE`, `--only NAMES` (comma-separated, repeatable),
/// `--no-setsid`, `--grace DURATION`, `-- COMMAND…`, `-h/--help`, `-V/--version`. A value is
/// given as the next argument or after `=` (`-fFILE` too).
fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Parsed, Usage> {
    let mut args = Args::default();
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let Some(text) = arg.to_str() else {
            return Err(Usage::new(
                &format!("unexpected argument '{}' found", arg.to_string_lossy()),
                None,
            ));
        };
        if text == "--" {
            for rest in argv.by_ref() {
                args.command.push(utf8(rest)?);
            }
            break;
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
            _ if text.starts_with("-f") && text.len() > 2 => {
                ("-f", Some(OsString::from(&text[2..])))
            }
            _ => (text, None),
        };
        let mut value = |shown: &str| -> Result<OsString, Usage> {
            inline.clone().or_else(|| argv.next()).ok_or_else(|| {
                Usage(format!(
                    "error: a value is required for '{shown}' but none was supplied\n\nFor more information, try '--help'.\n"
                ))
            })
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-f" | "--file" => {
                let v = value("--file <FILE>")?;
                if args.file.replace(PathBuf::from(v)).is_some() {
                    return Err(once("--file <FILE>"));
                }
            }
            "--only" => {
                let v = utf8(value("--only <NAMES>")?)?;
                args.only.extend(v.split(',').map(str::to_owned));
            }
            "--grace" => {
                let v = utf8(value("--grace <DURATION>")?)?;
                let d = tether_init::command::duration(&v).map_err(|e| {
                    Usage(format!(
                        "error: invalid value '{v}' for '--grace <DURATION>': {e}\n\nFor more information, try '--help'.\n"
                    ))
                })?;
                if args.grace.replace(d).is_some() {
                    return Err(once("--grace <DURATION>"));
                }
            }
            "--no-setsid" if inline.is_none() => {
                if std::mem::replace(&mut args.no_setsid, true) {
                    return Err(once("--no-setsid"));
                }
            }
            _ if text.starts_with('-') && text.len() > 1 => {
                return Err(Usage::new(
                    &format!("unexpected argument '{text}' found"),
                    Some(format!("to pass '{text}' as a value, use '-- {text}'")),
                ));
            }
            _ => {
                return Err(Usage::new(
                    &format!("unexpected argument '{text}' found"),
                    None,
                ));
            }
        }
    }
    Ok(Parsed::Run(args))
}

fn once(shown: &str) -> Usage {
    Usage::new(
        &format!("the argument '{shown}' cannot be used multiple times"),
        None,
    )
}

fn utf8(arg: OsString) -> Result<String, Usage> {
    arg.into_string().map_err(|arg| {
        Usage::new(
            &format!("invalid UTF-8 was detected in '{}'", arg.to_string_lossy()),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parsed(argv: &[&str]) -> Result<Parsed, Usage> {
        parse(argv.iter().map(OsString::from))
    }

    fn run(argv: &[&str]) -> Args {
        match parsed(argv) {
            Ok(Parsed::Run(a)) => a,
            other => panic!("{argv:?}: {other:?}"),
        }
    }

    #[test]
    fn every_option_of_tether_init_is_read() {
        assert_eq!(run(&[]), Args::default());
        assert_eq!(
            run(&["-f", "b.yaml", "--only", "a,b", "--only=c"]),
            Args {
                file: Some("b.yaml".into()),
                only: vec!["a".into(), "b".into(), "c".into()],
                ..Args::default()
            }
        );
        assert_eq!(run(&["--file=x.yaml"]).file, Some("x.yaml".into()));
        assert_eq!(run(&["-fx.yaml"]).file, Some("x.yaml".into()));
        assert_eq!(
            run(&[
                "--no-setsid",
                "--grace",
                "500ms",
                "--",
                "sh",
                "-c",
                "--only x"
            ]),
            Args {
                no_setsid: true,
                grace: Some(Duration::from_millis(500)),
                command: vec!["sh".into(), "-c".into(), "--only x".into()],
                ..Args::default()
            }
        );
        assert_eq!(
            run(&["--grace=2s", "--"]).grace,
            Some(Duration::from_secs(2))
        );
        assert_eq!(parsed(&["-f", "x", "--help"]), Ok(Parsed::Help));
        assert_eq!(parsed(&["-V"]), Ok(Parsed::Version));
        assert_eq!(run(&["--", "--help"]).command, ["--help"]);
    }

    #[test]
    fn a_bad_command_line_says_what_and_how_to_get_help() {
        let error = |argv: &[&str]| parsed(argv).unwrap_err().0;
        assert_eq!(
            error(&["--bogus"]),
            "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: tether-init [OPTIONS] [-- <COMMAND>...]\n\nFor more information, try '--help'.\n"
        );
        assert_eq!(
            error(&["sleep", "1"]),
            "error: unexpected argument 'sleep' found\n\nUsage: tether-init [OPTIONS] [-- <COMMAND>...]\n\nFor more information, try '--help'.\n"
        );
        assert_eq!(
            error(&["--only"]),
            "error: a value is required for '--only <NAMES>' but none was supplied\n\nFor more information, try '--help'.\n"
        );
        assert!(
            error(&["-f", "a", "-f", "b"])
                .starts_with("error: the argument '--file <FILE>' cannot be used multiple times\n")
        );
        assert!(
            error(&["--grace", "5x"]).starts_with(
                "error: invalid value '5x' for '--grace <DURATION>': `5x`: unknown time unit"
            ),
            "{}",
            error(&["--grace", "5x"])
        );
        assert!(error(&["--no-setsid=yes"]).starts_with("error: unexpected argument"));
    }
}
