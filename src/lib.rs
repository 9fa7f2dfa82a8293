//! consortium-dns: an authoritative DNS server for a consortium's zone, with one CNAME per
//! member node and shared names answered by a health-weighted random pick.

pub mod app;
pub mod config;
pub mod duration;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod pick;
pub mod reload;
pub mod sd_notify;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod transfer;
pub mod wire;
pub mod zone;
