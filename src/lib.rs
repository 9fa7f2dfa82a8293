//! consortium-dns: an authoritative DNS server for a consortium's zone, with one CNAME per
//! member node and shared names answered by a health-weighted random pick.
//!
//! ARCHITECTURE.md at the repository root maps the modules and which may use which.

/// The version and the commit built from, as `--version` and the start-up line show them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CONSORTIUM_DNS_COMMIT"),
    ")"
);

pub mod app;
pub mod config;
pub mod control;
pub mod diag;
pub mod dnssec;
pub mod duration;
pub mod file_set;
pub mod geo;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod peers;
pub mod pick;
pub mod sd_notify;
pub mod secondary;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod sync;
pub mod transfer;
pub mod tsig;
pub mod update;
pub mod wire;
pub mod zone;
