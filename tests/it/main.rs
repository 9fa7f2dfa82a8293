//! Integration tests: one binary, the real server in-process on 127.0.0.1 port 0.
#![allow(unreachable_pub)]

mod admin;
mod architecture;
mod common;
mod core;
mod differential;
mod dnssec;
mod geo;
mod guard;
mod health;
mod hostile;
mod incremental;
mod limits;
mod nsec3;
mod ops;
mod package;
mod pressure;
mod protocol;
mod reload;
mod transfer;
