//! tether-init's own command line, as a user meets it: help, version, a bad option.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-init"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_go_to_stdout_with_code_0() {
    let (code, out, err) = run(&["--help"]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert!(
        out.contains("Usage: tether-init [OPTIONS] [-- <COMMAND>...]"),
        "{out}"
    );
    for option in [
        "-f, --file <FILE>",
        "--only <NAMES>",
        "--no-setsid",
        "--grace <DURATION>",
    ] {
        assert!(out.contains(option), "{option} missing from\n{out}");
    }
    assert_eq!(run(&["-h"]).1, out);
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out, format!("tether-init {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_option_starts_nothing_and_exits_2() {
    let (code, out, err) = run(&["--only", "a", "sleep", "1"]);
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err,
        "error: unexpected argument 'sleep' found\n\nUsage: tether-init [OPTIONS] [-- <COMMAND>...]\n\nFor more information, try '--help'.\n"
    );
}
