//! Issue 13's size target: the static musl build of tether-init (scripts/static-init), named by
//! `TETHER_INIT_STATIC_BIN`, is under 1,500,000 bytes (scripts/test sets it). Without it, or
//! with a build on glibc (scripts/static-init found no musl target; glibc alone weighs 0.7 MB
//! more), the test is reported as ignored, with the reason; under CI=true it runs anyway and
//! fails, so a CI run cannot pass without having checked the limit (.ci/run installs the musl
//! target), unless .ci/run could not install the target and says so in `TETHER_INIT_NO_MUSL`.
#![allow(clippy::print_stderr, reason = "the reason a test is ignored")]

use std::path::PathBuf;

/// Under 1.5 MB, as issue 13 asks, in bytes.
const LIMIT: u64 = 1_500_000;

fn main() -> std::process::ExitCode {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let bin = std::env::var_os("TETHER_INIT_STATIC_BIN").map(PathBuf::from);
    let skip = match &bin {
        None => Some(
            "no static tether-init: TETHER_INIT_STATIC_BIN=\"$(scripts/static-init)\"".to_owned(),
        ),
        Some(p) if p.as_os_str().is_empty() => {
            Some("TETHER_INIT_STATIC_BIN is empty: scripts/static-init printed no path".to_owned())
        }
        Some(p) if !p.to_string_lossy().contains("-musl/") => Some(format!(
            "{} is not a musl build (rustup target add x86_64-unknown-linux-musl); the limit is for musl",
            p.display()
        )),
        _ => None,
    };
    let name = "the_static_musl_tether_init_is_under_1_5_mb";
    // .ci/run on a machine that could not fetch the musl target: said there, and here.
    let no_musl = std::env::var("TETHER_INIT_NO_MUSL")
        .ok()
        .filter(|w| !w.is_empty());
    let ci = ci && !(no_musl.is_some() && bin.as_ref().is_some_and(|p| !p.as_os_str().is_empty()));
    let skip = match (skip, &no_musl) {
        (Some(why), Some(no)) => Some(format!("{why}; {no}")),
        (skip, _) => skip,
    };
    match &skip {
        Some(why) if ci => eprintln!("{name} fails under CI=true: {why}"),
        Some(why) => eprintln!("ignored {name}: {why}"),
        None => {}
    }
    let why = skip.clone();
    let trial = libtest_mimic::Trial::test(name, move || {
        // Under CI=true a reason to skip is a failure.
        if let Some(why) = why {
            return Err(why.into());
        }
        let bin = bin.ok_or("no static tether-init: TETHER_INIT_STATIC_BIN is not set")?;
        let size = std::fs::metadata(&bin)
            .map_err(|e| format!("{}: {e}", bin.display()))?
            .len();
        eprintln!("{}: {size} bytes (limit {LIMIT})", bin.display());
        if size >= LIMIT {
            return Err(format!(
                "{} is {size} bytes, {} over the {LIMIT} of issue 13 (cargo bloat --crates shows where)",
                bin.display(),
                size - LIMIT + 1
            )
            .into());
        }
        Ok(())
    })
    .with_ignored_flag(skip.is_some());
    let mut args = libtest_mimic::Arguments::from_args();
    if ci {
        args.include_ignored = true;
    }
    libtest_mimic::run(&args, vec![trial]).exit_code()
}
