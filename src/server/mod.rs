//! DNS listeners: binding UDP and TCP sockets, running the worker loops, and stopping them.
//!
//! The listeners read the current Snapshot through `Shared` once per query and hand bytes to
//! `answer::answer`. They own sockets and connection limits, never zone data.

pub mod answer;
pub mod notify_in;
pub mod rrl;
mod tcp;
mod udp;

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

use crate::config::{Limits, RestartSettings, RrlRates};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{Published, Snapshot};
use crate::wire::{Rcode, Transport, rtype};

/// What the request path shares with the control plane.
#[derive(Debug)]
pub struct Shared {
    /// The published Snapshot; `load()` once per query (once per batch on UDP).
    pub snapshot: Published,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Count queries and picks in the metrics (`[server] query-metrics`; on by default).
    pub count_queries: bool,
    /// The sampled query log.
    pub query_log: QueryLog,
    /// UDP response rate limiting; its rates (and on/off) follow reloads.
    pub rrl: rrl::Limiter,
    /// Where RFC 2136 UPDATE messages go: the control plane, once it serves them. Unset,
    /// UPDATE gets NOTIMP like any opcode not implemented.
    pub updates: OnceLock<mpsc::Sender<UpdateRequest>>,
    /// Where NOTIFYs from a secondary zone's primaries go (the zone's key): the control plane
    /// checks that zone at once. Unset when no zone is a secondary.
    pub notifies: OnceLock<mpsc::Sender<Box<[u8]>>>,
    /// Zone transfers built or being written at once, at most (`MAX_CONCURRENT_TRANSFERS`).
    pub transfer_slots: Arc<tokio::sync::Semaphore>,
}

/// Zone transfers in memory at once, at most; more wait their turn.
pub const MAX_CONCURRENT_TRANSFERS: usize = 8;

/// An RFC 2136 UPDATE handed by a listener to the control plane, which owns the dynamic data
/// and answers once the change is published (so an acknowledged value is served).
pub struct UpdateRequest {
    pub message: Vec<u8>,
    pub client: SocketAddr,
    pub transport: Transport,
    /// Sends the answer (an empty one sends nothing).
    pub reply: Box<dyn FnOnce(Vec<u8>) + Send>,
}

impl std::fmt::Debug for UpdateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateRequest")
            .field("client", &self.client)
            .field("transport", &self.transport)
            .field("len", &self.message.len())
            .finish()
    }
}

/// Updates waiting for the control plane at most; more are dropped (UDP clients retry).
pub const UPDATE_QUEUE: usize = 256;

impl Shared {
    /// The shared state of a server with `settings`, serving `snapshot` until the control
    /// plane publishes another.
    pub fn new(
        snapshot: Snapshot,
        settings: &RestartSettings,
        rrl_rates: RrlRates,
        metrics: Metrics,
    ) -> Shared {
        Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            limits: settings.limits.clone(),
            metrics,
            count_queries: settings.query_metrics,
            query_log: QueryLog::every(settings.query_log_sample),
            rrl: rrl::Limiter::new(rrl_rates, settings.rrl_table_size),
            updates: OnceLock::new(),
            notifies: OnceLock::new(),
            transfer_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_TRANSFERS)),
        }
    }

    /// Hands an UPDATE to the control plane. False when nobody serves updates (answer it as
    /// an opcode not implemented); a full queue drops it, counted.
    pub fn submit_update(&self, request: UpdateRequest) -> bool {
        let Some(updates) = self.updates.get() else {
            return false;
        };
        if updates.try_send(request).is_err() {
            self.metrics
                .updates
                .with_label_values(&["-", "-", "dropped"])
                .inc();
        }
        true
    }
}

/// Logs one query in `every` (0 = off), over UDP and TCP alike, at info level under the target
/// `query`.
#[derive(Debug, Default)]
pub struct QueryLog {
    every: u32,
    seen: AtomicU32,
}

impl QueryLog {
    pub fn every(every: u32) -> QueryLog {
        QueryLog {
            every,
            seen: AtomicU32::new(0),
        }
    }

    /// Called once per answered query; costs one branch when the log is off.
    #[inline]
    fn observe(&self, query: &[u8], peer: SocketAddr, transport: Transport, rcode: Rcode, truncated: bool) {
        if self.every == 0 {
            return;
        }
        // The first query is logged, then every `every`-th: a quiet server still shows one.
        if self.seen.fetch_add(1, Ordering::Relaxed) % self.every == 0 {
            if let Some((name, qtype, _)) = answer::question_text(query) {
                // The rcode as its number: the log's readers parse it so.
                tracing::info!(target: "query", client = %peer, transport = transport.label(), qname = %name, qtype = %rtype::mnemonic(qtype), rcode = rcode.get(), truncated);
            }
        }
    }
}

/// Sockets bound before the server starts, so the caller knows the addresses (port 0 works)
/// and systemd readiness can wait for them.
#[derive(Debug)]
pub struct Listeners {
    /// Per listen address: one SO_REUSEPORT UDP socket per worker.
    udp: Vec<Vec<UdpSocket>>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address. With port 0, UDP picks a port and TCP takes the same.
    pub fn bind(addrs: &[SocketAddr], udp_workers: usize) -> io::Result<Listeners> {
        let workers = if udp_workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            udp_workers
        };
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &addr in addrs {
            // "Address already in use" alone does not say which of several addresses.
            let (sockets, listener) =
                bind_pair(addr, workers).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
            udp.push(sockets);
            tcp.push(listener);
        }
        Ok(Listeners { udp, tcp })
    }

    /// The bound addresses (UDP and TCP share each one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.iter().filter_map(|l| l.local_addr().ok()).collect()
    }
}

fn bind_pair(addr: SocketAddr, workers: usize) -> io::Result<(Vec<UdpSocket>, TcpListener)> {
    // With port 0 the UDP port chosen may be taken for TCP; try a few times.
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let first = udp_socket(addr)?;
        let bound = first.local_addr()?;
        match tcp_listener(bound) {
            Ok(listener) => {
                let mut sockets = vec![first];
                for _ in 1..workers {
                    sockets.push(udp_socket(bound)?);
                }
                return Ok((sockets, listener));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("could not bind")))
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // One socket per worker on the same port; the kernel spreads datagrams among them.
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    // Workers wake up this often to notice shutdown.
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The running listeners.
#[derive(Debug)]
pub struct Running {
    udp_threads: Vec<JoinHandle<()>>,
    tcp_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts UDP worker threads and the TCP accept loops (on the current tokio runtime); they
/// run until `shutdown` is triggered.
pub fn start(listeners: Listeners, shared: Arc<Shared>, shutdown: &Shutdown) -> io::Result<Running> {
    let mut udp_threads = Vec::new();
    for (address_index, sockets) in listeners.udp.into_iter().enumerate() {
        for (worker, socket) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let stop = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("udp-{address_index}-{worker}"))
                .spawn(move || run_udp_worker(&socket, &shared, &stop))?;
            udp_threads.push(thread);
        }
    }
    let mut tcp_tasks = Vec::new();
    for listener in listeners.tcp {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tcp_tasks.push(tokio::spawn(tcp::accept_loop(
            listener,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    Ok(Running {
        udp_threads,
        tcp_tasks,
    })
}

/// Runs one UDP worker until shutdown. A panic (a bug, never expected) is counted and logged
/// and the worker starts again on the same socket, so one bad packet cannot silently take a
/// socket out of the SO_REUSEPORT group.
fn run_udp_worker(socket: &UdpSocket, shared: &Arc<Shared>, stop: &Shutdown) {
    while !stop.is_triggered() {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| udp::worker(socket, shared, stop)));
        if run.is_ok() {
            return;
        }
        shared.metrics.panics.with_label_values(&["udp"]).inc();
        tracing::error!("UDP worker panicked; restarting it (this is a bug: please report it)");
    }
}

impl Running {
    /// Waits, once the shutdown signal is given, for TCP connections to finish the query in
    /// hand within `grace`, and joins the UDP workers.
    pub async fn shutdown(self, grace: Duration) {
        let tasks = futures_join(self.tcp_tasks);
        if tokio::time::timeout(grace, tasks).await.is_err() {
            tracing::warn!("TCP connections still open after the {grace:?} grace period; closing them");
        }
        let threads = self.udp_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}
