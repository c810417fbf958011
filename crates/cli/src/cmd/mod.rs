//! One module per command: each reads its arguments, calls the library crates, prints, and
//! returns the exit code.

#[cfg(feature = "bus")]
pub mod bus;
#[cfg(feature = "bus")]
pub mod bus_client;
pub mod check;
pub mod ctl;
pub mod init;
pub mod plan;
pub mod render;
pub mod run;
#[cfg(feature = "sidecar")]
pub mod sidecar;
pub mod sidecars;
pub mod wait;
