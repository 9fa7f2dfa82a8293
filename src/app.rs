//! Wiring: load the config and zones, bind, start the listeners; the handle stops them.
//!
//! `main` and the integration tests both start the server through `start`, so tests run the
//! same code as production on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::server::{self, Listeners, Running, Shared};
use crate::snapshot::Snapshot;
use crate::zone::Diagnostic;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Load(Vec<Diagnostic>),
    #[error("cannot bind DNS listeners: {0}")]
    Bind(#[source] std::io::Error),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Bound DNS addresses, UDP and TCP on each.
    pub dns_addrs: Vec<SocketAddr>,
    pub shared: Arc<Shared>,
    pub config: Config,
    running: Running,
}

/// Loads everything and starts serving on the current tokio runtime.
pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
    let snapshot = Snapshot::load(&config).map_err(StartError::Load)?;
    let listeners = Listeners::bind(&config.listen, config.udp_workers).map_err(StartError::Bind)?;
    let dns_addrs = listeners.local_addrs();
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        limits: config.limits.clone(),
    });
    let running = server::start(listeners, shared.clone()).map_err(StartError::Bind)?;
    for addr in &dns_addrs {
        tracing::info!(%addr, "serving DNS over UDP and TCP");
    }
    Ok(ServerHandle {
        dns_addrs,
        shared,
        config,
        running,
    })
}

impl ServerHandle {
    /// Stops the listeners, giving open TCP queries `grace` to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.running.shutdown(grace).await;
    }
}
