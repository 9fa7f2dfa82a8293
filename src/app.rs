//! Wiring: bind the sockets, start the listeners, the health checks, the admin HTTP endpoint
//! and the reload triggers, all under one shutdown signal; then wait.
//!
//! `main` and the integration tests both start the server through `start`, so tests run the
//! same code as production on port 0. What a reload does lives in `control`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{Control, watch::FileWatcher};
pub use crate::control::{Overrides, ReloadReport};
use crate::diag::Diagnostic;
use crate::health::HealthManager;
use crate::metrics::Metrics;
use crate::server::{self, Listeners, Running, Shared};
use crate::shutdown::Shutdown;
use crate::snapshot::{BuildOptions, Snapshot};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Load(Vec<Diagnostic>),
    #[error("cannot bind DNS listeners: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot bind the HTTP endpoint: {0}")]
    BindHttp(#[source] std::io::Error),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Bound DNS addresses, UDP and TCP on each.
    pub dns_addrs: Vec<SocketAddr>,
    /// Bound admin HTTP address, if enabled.
    pub http_addr: Option<SocketAddr>,
    pub control: Arc<Control>,
    /// Same as `control.shared`.
    pub shared: Arc<Shared>,
    /// The config as started (overrides applied).
    pub config: Config,
    shutdown: StopOnDrop,
    running: Running,
    background: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<FileWatcher>,
}

/// Loads everything and starts serving on the current tokio runtime.
pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
    start_with(config, Overrides::default()).await
}

/// As `start`, with command-line overrides that also hold across reloads.
pub async fn start_with(mut config: Config, overrides: Overrides) -> Result<ServerHandle, StartError> {
    overrides.apply(&mut config);
    let shutdown = Shutdown::new();
    let control = control_plane(&config, overrides);
    control.start().await.map_err(StartError::Load)?;
    crate::memory::release_freed_memory();
    let listeners =
        Listeners::bind(&config.restart.listen, config.restart.udp_workers).map_err(StartError::Bind)?;
    let dns_addrs = listeners.local_addrs();
    let http_listener = match config.restart.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::BindHttp(std::io::Error::new(e.kind(), format!("{addr}: {e}"))))?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    // After binding, so that a secondary's first query after the NOTIFY finds the port open.
    control.announce_all();
    let mut background = Vec::new();
    if let Some(updates) = control.accept_updates() {
        background.push(tokio::spawn(until(
            shutdown.clone(),
            control.clone().serve_updates(updates),
        )));
    }
    let notifies = control.accept_notifies();
    if control.config().live.zones.iter().any(|z| z.is_secondary()) {
        background.push(tokio::spawn(until(
            shutdown.clone(),
            control.clone().run_secondaries(notifies),
        )));
    }
    let running = server::start(listeners, control.shared.clone(), &shutdown).map_err(StartError::Bind)?;
    for addr in &dns_addrs {
        tracing::info!(%addr, "serving DNS over UDP and TCP");
    }

    if let Some(listener) = http_listener {
        if let Some(addr) = http_addr {
            tracing::info!(%addr, "serving metrics and admin over HTTP");
        }
        background.push(tokio::spawn(until(
            shutdown.clone(),
            crate::http::serve(listener, control.clone()),
        )));
    }
    let (watcher, reloads) = watch_files(&config, &control);
    background.push(tokio::spawn(until(
        shutdown.clone(),
        reload_on_request(control.clone(), reloads),
    )));
    background.push(tokio::spawn(until(
        shutdown.clone(),
        every_second(Arc::downgrade(&control)),
    )));
    control.set_ready(true);
    Ok(ServerHandle {
        dns_addrs,
        http_addr,
        shared: control.shared.clone(),
        control,
        config,
        shutdown: StopOnDrop(shutdown),
        running,
        background,
        _watcher: watcher,
    })
}

/// The shared state, health checker and control plane, before any data is loaded: the
/// snapshot starts empty and `Control::start` publishes the first real one.
fn control_plane(config: &Config, overrides: Overrides) -> Arc<Control> {
    let empty = Snapshot::build(Vec::new(), &BuildOptions::default());
    let shared = Arc::new(Shared::new(
        empty,
        &config.restart,
        config.live.rrl.clone(),
        Metrics::new(),
    ));
    let health = HealthManager::start(shared.snapshot.clone());
    Arc::new(Control::new(shared, health, config.clone(), overrides))
}

/// Runs `task` until it ends or the server shuts down.
async fn until(shutdown: Shutdown, task: impl Future<Output = ()>) {
    tokio::select! {
        _ = shutdown.triggered() => {}
        _ = task => {}
    }
}

/// Starts the file watcher; its debounced change notices arrive on the returned channel.
fn watch_files(config: &Config, control: &Control) -> (Option<FileWatcher>, mpsc::Receiver<()>) {
    let (requests, incoming) = mpsc::channel::<()>(1);
    let watched = crate::control::watch::files_to_watch(config, &control.shared.snapshot.load());
    match FileWatcher::start(watched, requests) {
        Ok(watcher) => {
            control.attach_watcher(watcher.handle());
            (Some(watcher), incoming)
        }
        Err(e) => {
            tracing::warn!("cannot watch zone files ({e}); reload with SIGHUP or POST /reload");
            (None, incoming)
        }
    }
}

/// File changes become reloads, one at a time, in order.
async fn reload_on_request(control: Arc<Control>, mut incoming: mpsc::Receiver<()>) {
    while incoming.recv().await.is_some() {
        if control.files_unchanged().await {
            tracing::debug!(
                "file event, but every file the served data was read from is unchanged: no reload"
            );
            continue;
        }
        control.reload("file change").await;
    }
}

/// Every second: secondaries cannot pick, so check whether their copy of each shared name
/// should move to another member; and remove the challenge values whose lifetime is over.
async fn every_second(control: std::sync::Weak<Control>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else {
            return;
        };
        control.refresh_transfer_picks().await;
        control.expire_challenges().await;
        control.resign_due().await;
    }
}

/// Triggers the shutdown signal when dropped: a `ServerHandle` dropped without `shutdown`
/// still stops its listeners and tasks.
#[derive(Debug)]
struct StopOnDrop(Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

impl ServerHandle {
    /// Stops everything; open TCP queries get `grace` to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.control.set_ready(false);
        self.shutdown.0.trigger();
        for task in self.background {
            let _ = task.await;
        }
        self.control.health.stop();
        self.running.shutdown(grace).await;
    }
}
