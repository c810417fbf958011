//! `tether wait`: waits until addresses answer, for scripts and for Kubernetes init containers
//! (the workload's Pod waits for shared sidecars with it). No tool in any image is needed
//! beyond tether itself.

use std::time::Duration;

use tether_probe::target::{Target, wait_all};

use crate::load::runtime;
use crate::{exit, output};

pub fn wait(targets: &[String], timeout: Duration, interval: Duration, quiet: bool) -> u8 {
    let parsed: Result<Vec<Target>, String> = targets.iter().map(|t| Target::parse(t)).collect();
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            output::error(e);
            return exit::INVALID;
        }
    };
    let deadline = tether_probe::Deadline::new(timeout, interval);
    let ready = |t: &Target| {
        if !quiet {
            eprintln!(
                "tether: {} is ready ({:.1}s)",
                t.name(),
                deadline.elapsed().as_secs_f64()
            );
        }
    };
    let missing = runtime().block_on(wait_all(&parsed, deadline, &ready));
    if missing.is_empty() {
        return exit::OK;
    }
    output::error(format!(
        "not ready after {}: {}",
        humantime::format_duration(timeout),
        missing.join(", ")
    ));
    exit::NOT_READY
}
