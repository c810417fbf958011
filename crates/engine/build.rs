//! Builds the in-namespace readiness probe (probe/probe.c): a static program of a few KiB with
//! no libc, copied into a helper container when the engine's container addresses cannot be
//! dialled from this host. Where it cannot be built (another architecture, no C compiler), an
//! empty file stands in and tether says so when it would need the probe.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=probe/probe.c");
    println!("cargo::rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("probe");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let supported = os == "linux" && matches!(arch.as_str(), "x86_64" | "aarch64");
    let built = supported
        && host.split('-').next() == target.split('-').next()
        && Command::new(&cc)
            .args([
                "-Os",
                "-static",
                "-nostdlib",
                "-ffreestanding",
                "-fno-builtin",
                "-fno-stack-protector",
                "-fno-pie",
                "-no-pie",
                "-fno-asynchronous-unwind-tables",
                "-Wl,--build-id=none",
                "-s",
                "-Wall",
                "-Werror",
                "-o",
            ])
            .arg(&out)
            .arg("probe/probe.c")
            .status()
            .is_ok_and(|s| s.success());
    if !built {
        println!(
            "cargo::warning=the readiness probe was not built for {target}; tcp and http readiness will dial container addresses only"
        );
        std::fs::write(&out, b"").expect("write the empty probe");
    }
}
