//! DNS over TCP (RFC 7766): connections, their framing, timeouts and caps.
//!
//! Messages are length-prefixed and queries may be pipelined; there is an idle timeout between
//! messages and a read timeout within one, and caps on connections in total and per client
//! address. Each connection has a reader (this task) and a writer task joined by a bounded
//! channel. Ordinary queries are answered in order, those that arrived together written
//! together (up to `tcp-max-in-flight`). A zone transfer is built on a blocking thread while
//! the reader goes on answering the queries behind it, so their answers may overtake it (RFC
//! 7766 §7): a large AXFR does not hold up a resolver's queries on the same connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use super::answer::{Outcome, answer_from};
use super::{Shared, UpdateRequest};
use crate::metrics::QueryCounters;
use crate::shutdown::Shutdown;
use crate::sync::lock;
use crate::wire::{self, Rcode, Transport, rtype};

/// A connection quiet this long publishes what it has counted.
const QUIET_FLUSH: Duration = Duration::from_millis(50);
/// How long a TCP client waits for the control plane to apply its UPDATE (a rebuild of a
/// large zone takes a second or two).
const UPDATE_WAIT: Duration = Duration::from_secs(30);

/// A write that makes no progress for this long (the client does not read its answers)
/// closes the connection; a slow reader that keeps taking bytes is never cut.
const WRITE_STALL: Duration = Duration::from_secs(5);
/// How long a connection over the cap waits for the idlest one to make room.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Connections open per client address, for the per-client cap.
type PerClient = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// What the accept loop knows of each open connection: when it went idle, and how to ask it
/// to close. RFC 7766 §6.2.3: under pressure a server may close idle connections, so when
/// the cap is reached the idlest makes room for the newcomer; holding the cap with slow
/// periodic queries no longer locks everyone else out.
#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Arc<Activity>>,
}

/// One connection's activity, shared between it and the accept loop.
struct Activity {
    /// Milliseconds since `base` when the connection last went idle between messages;
    /// `BUSY` while a message is read or answered.
    idle_since_ms: std::sync::atomic::AtomicU64,
    base: tokio::time::Instant,
    evict: tokio::sync::Notify,
}

const BUSY: u64 = u64::MAX;

impl Activity {
    fn set_idle(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.idle_since_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_busy(&self) {
        self.idle_since_ms
            .store(BUSY, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Asks the connection idle the longest to close; false when none is idle.
fn evict_idlest(registry: &Mutex<Registry>) -> bool {
    let registry = lock(registry);
    let idlest = registry
        .open
        .values()
        .map(|a| (a.idle_since_ms.load(std::sync::atomic::Ordering::Relaxed), a))
        .filter(|(since, _)| *since != BUSY)
        .min_by_key(|(since, _)| *since);
    match idlest {
        Some((_, activity)) => {
            // Marked busy so the next eviction picks another one.
            activity.set_busy();
            activity.evict.notify_one();
            true
        }
        None => false,
    }
}

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Shutdown) {
    let limit = Arc::new(Semaphore::new(shared.limits.tcp_max_connections));
    let per_client: PerClient = Arc::default();
    let registry: Arc<Mutex<Registry>> = Arc::default();
    let base = tokio::time::Instant::now();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.triggered() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: keep the loop alive, pause briefly.
                tracing::warn!("tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Over the total cap: the idlest connection makes room (RFC 7766 §6.2.3); with
            // none idle, the newcomer is closed at once rather than queued (§6.2.2).
            Err(_) if evict_idlest(&registry) => {
                match tokio::time::timeout(EVICTION_WAIT, limit.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        drop(stream);
                        continue;
                    }
                }
            }
            Err(_) => {
                drop(stream);
                continue;
            }
        };
        if !claim_client_slot(
            &per_client,
            peer.ip(),
            shared.limits.tcp_max_connections_per_client,
        ) {
            drop(stream);
            continue;
        }
        // The slot, the permit and the gauge are released by `Open`'s drop, so a connection
        // that panics gives them back too.
        let open = Open::new(&shared, &per_client, peer.ip(), permit);
        let activity = Arc::new(Activity {
            idle_since_ms: std::sync::atomic::AtomicU64::new(BUSY),
            base,
            evict: tokio::sync::Notify::new(),
        });
        let registered = Registered::new(&registry, activity.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            serve_connection(stream, peer, &open.shared, stop, &activity).await;
            drop(registered);
            drop(open);
        });
        reap(&mut connections, &shared);
    }
    // Stop accepting: close the listening socket so new connections are refused at once
    // instead of waiting unanswered in the backlog; connections see `stop` and finish the
    // query in hand.
    drop(listener);
    while let Some(finished) = connections.join_next().await {
        count_panic(finished, &shared);
    }
}

/// Collects finished connections so the set does not grow.
fn reap(connections: &mut tokio::task::JoinSet<()>, shared: &Shared) {
    while let Some(finished) = connections.try_join_next() {
        count_panic(finished, shared);
    }
}

fn count_panic(finished: Result<(), tokio::task::JoinError>, shared: &Shared) {
    if let Err(e) = finished {
        if e.is_panic() {
            shared.metrics.panics.with_label_values(&["tcp"]).inc();
            tracing::error!("a TCP connection panicked; it was closed (this is a bug: please report it)");
        }
    }
}

/// A connection's entry in the registry, removed when it closes (or panics).
struct Registered {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Registered {
    fn new(registry: &Arc<Mutex<Registry>>, activity: Arc<Activity>) -> Registered {
        let mut r = lock(registry);
        let id = r.next;
        r.next += 1;
        r.open.insert(id, activity);
        Registered {
            registry: registry.clone(),
            id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry).open.remove(&self.id);
    }
}

/// What an open connection holds: its place under the caps and in the gauge.
struct Open {
    shared: Arc<Shared>,
    per_client: PerClient,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Open {
    fn new(
        shared: &Arc<Shared>,
        per_client: &PerClient,
        ip: IpAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Open {
        shared.metrics.tcp_connections_open.inc();
        Open {
            shared: shared.clone(),
            per_client: per_client.clone(),
            ip,
            _permit: permit,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared.metrics.tcp_connections_open.dec();
        release_client_slot(&self.per_client, self.ip);
    }
}

fn claim_client_slot(per_client: &PerClient, ip: IpAddr, cap: usize) -> bool {
    let mut map = lock(per_client);
    let count = map.entry(ip).or_insert(0);
    if *count >= cap {
        return false;
    }
    *count += 1;
    true
}

fn release_client_slot(per_client: &PerClient, ip: IpAddr) {
    let mut map = lock(per_client);
    if let Some(count) = map.get_mut(&ip) {
        *count -= 1;
        if *count == 0 {
            map.remove(&ip);
        }
    }
}

/// True when `buffered` starts with a whole length-prefixed message.
fn whole_message_buffered(buffered: &[u8]) -> bool {
    match buffered {
        [high, low, rest @ ..] => rest.len() >= usize::from(u16::from_be_bytes([*high, *low])),
        _ => false,
    }
}

/// Appends one message with its two-octet length prefix (RFC 1035 §4.2.2).
fn push_frame(frames: &mut Vec<u8>, message: &[u8]) {
    frames.extend_from_slice(&(message.len() as u16).to_be_bytes());
    frames.extend_from_slice(message);
}

/// Writes each chunk of answers as it comes, until the reader and every transfer are done
/// or the client stops reading. The timeout is on progress, not on the whole chunk: a
/// secondary reading a large AXFR slowly finishes it, while a client that reads nothing is
/// closed after `stall`. Progress is what the client takes from the kernel's send queue:
/// `write` readiness alone is too coarse (the kernel wakes a writer only once a large part of
/// a full send buffer has drained, which at 300 KB/s takes longer than any sensible stall).
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut chunks: mpsc::Receiver<Chunk>,
    stall: Duration,
    peer: SocketAddr,
) {
    // Bytes handed to the kernel on this connection, and of them the client had taken
    // (acknowledged) at the last stall check.
    let mut sent_total: u64 = 0;
    let mut taken: u64 = 0;
    while let Some(Chunk { bytes: chunk, .. }) = chunks.recv().await {
        let mut written = 0;
        while written < chunk.len() {
            match tokio::time::timeout(stall, writer.write(&chunk[written..])).await {
                Ok(Ok(0)) => return,
                Ok(Ok(n)) => {
                    written += n;
                    sent_total += n as u64;
                }
                Ok(Err(e)) => {
                    tracing::debug!("tcp write to {peer} failed: {e}");
                    return;
                }
                Err(_) => {
                    // Sent minus still queued: what the client has taken so far.
                    let taken_now = unsent_bytes(&writer).map(|queued| sent_total.saturating_sub(queued));
                    if let Some(now) = taken_now.filter(|now| *now > taken) {
                        // The client is reading, slowly: keep going.
                        taken = now;
                        continue;
                    }
                    tracing::debug!("tcp write to {peer} made no progress for {stall:?}: closed");
                    return;
                }
            }
        }
    }
}

/// Bytes written to the socket that the client has not acknowledged yet (SIOCOUTQ, which
/// Linux numbers as TIOCOUTQ), or None where the kernel does not say.
#[allow(unsafe_code)]
fn unsent_bytes(writer: &OwnedWriteHalf) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let fd = writer.as_ref().as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at a live c_int; the
    // descriptor is the connection's own socket, open for as long as `writer` lives.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    stop: Shutdown,
    activity: &Activity,
) {
    let (reader, writer) = stream.into_split();
    let (chunks, to_write) = mpsc::channel(shared.limits.tcp_max_in_flight.max(1));
    let stall = shared.limits.tcp_idle_timeout.min(WRITE_STALL);
    let writing = tokio::spawn(write_loop(writer, to_write, stall, peer));
    read_loop(BufReader::new(reader), peer, shared, stop, chunks, activity).await;
    // The answers owed (and a transfer under way) are still written; the writer ends when the
    // last sender is gone.
    let _ = writing.await;
}

/// Reads messages and answers them; returns when the client is done, idle too long, sends
/// something we do not answer, or the server stops (after the message in hand).
async fn read_loop(
    reader: BufReader<OwnedReadHalf>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    stop: Shutdown,
    chunks: mpsc::Sender<Chunk>,
    activity: &Activity,
) {
    let mut connection = Connection {
        reader,
        peer,
        shared,
        stop,
        chunks,
        activity,
        rng: SmallRng::from_os_rng(),
        query: vec![0u8; 512],
        out: Vec::with_capacity(4096),
        counters: QueryCounters::new(shared.metrics.clone(), Transport::Tcp),
        transfer: None,
    };
    let max_in_flight = shared.limits.tcp_max_in_flight.max(1);
    while connection.wait_for_message().await {
        // A message has started: it must be whole within the read timeout (RFC 7766 §6.2.3),
        // so a client sending a byte at a time cannot hold the connection.
        let deadline = tokio::time::Instant::now() + shared.limits.tcp_read_timeout;
        let mut frames = Vec::new();
        let mut open = true;
        for _ in 0..max_in_flight {
            open = connection.read_message(deadline).await
                && if crate::transfer::is_transfer(&connection.query) {
                    connection.start_transfer(&mut frames).await
                } else if wire::is_update(&connection.query) {
                    connection.update(&mut frames).await
                } else {
                    connection.answer_query(&mut frames)
                };
            if !open || !whole_message_buffered(connection.reader.buffer()) {
                break;
            }
        }
        // The answers owed are written, also when the connection closes after them.
        if (!frames.is_empty() && connection.chunks.send(frames.into()).await.is_err()) || !open {
            break;
        }
    }
    connection.finish().await;
}

/// One connection's reading side and what it reuses from query to query.
struct Connection<'s> {
    reader: BufReader<OwnedReadHalf>,
    peer: SocketAddr,
    shared: &'s Arc<Shared>,
    stop: Shutdown,
    /// To the writer task.
    chunks: mpsc::Sender<Chunk>,
    /// Idle or busy, for the accept loop's eviction of the idlest connection.
    activity: &'s Activity,
    rng: SmallRng,
    query: Vec<u8>,
    out: Vec<u8>,
    counters: QueryCounters,
    /// At most one transfer per connection is built at a time.
    transfer: Option<tokio::task::JoinHandle<()>>,
}

impl Connection<'_> {
    /// Between messages: waits up to the idle timeout for the next one to start. False when
    /// the client closed or stayed idle, the server stops, or the writer has given up. Bytes
    /// already here win over a shutdown seen at the same moment: that message has started.
    async fn wait_for_message(&mut self) -> bool {
        if self.stop.is_triggered() {
            return false;
        }
        // A connection with a transfer under way is never the idlest, whatever its reader
        // does. (Answers already queued are still written when an idle one is closed.)
        if self.transfer.as_ref().is_none_or(|t| t.is_finished()) {
            self.activity.set_idle();
        }
        let idle_until = tokio::time::Instant::now() + self.shared.limits.tcp_idle_timeout;
        loop {
            // Counts are published by the batch (as on UDP), and once the connection has been
            // quiet for a moment, so a scrape soon sees every query answered. One timer serves
            // both deadlines: a second one per wait costs measurably under load.
            let wake_at = if self.counters.has_pending() {
                (tokio::time::Instant::now() + QUIET_FLUSH).min(idle_until)
            } else {
                idle_until
            };
            tokio::select! {
                biased;
                buffered = tokio::time::timeout_at(wake_at, self.reader.fill_buf()) => match buffered {
                    Ok(Ok(bytes)) if !bytes.is_empty() => {
                        self.activity.set_busy();
                        return true;
                    }
                    Ok(_) => return false,
                    Err(_) if wake_at >= idle_until => return false,
                    Err(_) => self.counters.flush(),
                },
                _ = self.stop.triggered() => return false,
                _ = self.chunks.closed() => return false,
                // Closed to make room for a new connection (the cap is reached).
                _ = self.activity.evict.notified() => return false,
            }
        }
    }

    /// Reads one length-prefixed message into `query` by `deadline`; false when it does not
    /// arrive whole in time or is over `max-message-size`.
    async fn read_message(&mut self, deadline: tokio::time::Instant) -> bool {
        let limit = self.shared.limits.max_message_size;
        let (reader, query) = (&mut self.reader, &mut self.query);
        let read = async {
            let len = usize::from(reader.read_u16().await?);
            if len > limit {
                return Err(std::io::Error::other("message over max-message-size"));
            }
            query.resize(len, 0);
            reader.read_exact(query).await?;
            Ok::<(), std::io::Error>(())
        };
        matches!(tokio::time::timeout_at(deadline, read).await, Ok(Ok(())))
    }

    /// Hands the transfer request in `query` to a blocking thread, after sending the answers
    /// before it: the transfer follows when built, whole (its messages are never interleaved
    /// with other answers). False when the writer has gone.
    async fn start_transfer(&mut self, frames: &mut Vec<u8>) -> bool {
        if !frames.is_empty() && self.chunks.send(std::mem::take(frames).into()).await.is_err() {
            return false;
        }
        if let Some(previous) = self.transfer.take() {
            let _ = previous.await;
        }
        self.transfer = Some(spawn_transfer(
            self.shared,
            self.query.clone(),
            self.peer,
            self.chunks.clone(),
        ));
        // Counted when built, by kind and outcome (`consortium_dns_transfers_total`), not as
        // ordinary queries.
        true
    }

    /// Hands the UPDATE in `query` to the control plane and waits for its answer (the answers
    /// stay in order). Without an update service it is answered like any other opcode.
    async fn update(&mut self, frames: &mut Vec<u8>) -> bool {
        let (sender, answer) = tokio::sync::oneshot::channel();
        let request = UpdateRequest {
            message: self.query.clone(),
            client: self.peer,
            transport: Transport::Tcp,
            reply: Box::new(move |answer: Vec<u8>| {
                let _ = sender.send(answer);
            }),
        };
        if !self.shared.submit_update(request) {
            return self.answer_query(frames);
        }
        match tokio::time::timeout(UPDATE_WAIT, answer).await {
            Ok(Ok(answer)) if !answer.is_empty() => {
                push_frame(frames, &answer);
                true
            }
            // Dropped (queue full), refused silence, or the control plane is stuck: close.
            _ => false,
        }
    }

    /// Answers the query in `query` into `frames`. False when it is not a query we answer:
    /// RFC 7766 lets us close, after the answers owed.
    fn answer_query(&mut self, frames: &mut Vec<u8>) -> bool {
        let shared = self.shared;
        let outcome = {
            let snapshot = shared.snapshot.load();
            let outcome = if super::notify_in::is_notify_for_us(&snapshot, &self.query) {
                super::notify_in::respond(
                    &snapshot,
                    &self.query,
                    &mut self.out,
                    self.peer.ip(),
                    shared.notifies.get(),
                )
            } else {
                answer_from(
                    &snapshot,
                    &self.query,
                    &mut self.out,
                    Transport::Tcp,
                    shared.limits.udp_payload,
                    self.peer.ip(),
                    &mut self.rng,
                )
            };
            if let (true, Outcome::Responded { pick: Some(pick), .. }) = (shared.count_queries, &outcome) {
                snapshot.count_pick(*pick);
            }
            outcome
        };
        let Outcome::Responded {
            rcode,
            qtype,
            truncated,
            ..
        } = outcome
        else {
            self.counters.dropped();
            return false;
        };
        if shared.count_queries {
            self.counters.answered(qtype, rcode, truncated);
        }
        shared
            .query_log
            .observe(&self.query, self.peer, Transport::Tcp, rcode, truncated);
        push_frame(frames, &self.out);
        true
    }

    /// Waits for a transfer under way (its answer is owed) and publishes the counts.
    async fn finish(mut self) {
        self.counters.flush();
        if let Some(transfer) = self.transfer {
            let _ = transfer.await;
        }
    }
}

/// Builds an AXFR/IXFR answer (possibly many messages, each length-prefixed, RFC 5936 §4.2) on
/// a blocking thread, from the Snapshot current now, and queues it whole for the writer.
fn spawn_transfer(
    shared: &Arc<Shared>,
    query: Vec<u8>,
    peer: SocketAddr,
    chunks: mpsc::Sender<Chunk>,
) -> tokio::task::JoinHandle<()> {
    let shared = shared.clone();
    tokio::spawn(async move {
        // At most `super::MAX_CONCURRENT_TRANSFERS` are built and held in memory at once, each until
        // its last byte is written: 300 clients asking for a large zone and never reading
        // cannot hold 300 copies of it.
        let Ok(slot) = shared.transfer_slots.clone().acquire_owned().await else {
            return;
        };
        let snapshot = shared.snapshot.load_full();
        let request = query.clone();
        let counted = shared.clone();
        let built = tokio::task::spawn_blocking(move || {
            let messages = crate::transfer::respond(&snapshot, &request, peer.ip());
            let kind = match wire::parse_question(&request).map(|q| q.qtype) {
                Some(rtype::IXFR) => "ixfr",
                _ => "axfr",
            };
            let outcome = messages
                .first()
                .filter(|m| m.len() >= 4)
                .map_or(Rcode::SERVFAIL, |m| Rcode::from_flags(wire::be16(m, 2)));
            counted
                .metrics
                .transfers
                .with_label_values(&[kind, outcome.label()])
                .inc();
            let mut frames = Vec::with_capacity(messages.iter().map(|m| m.len() + 2).sum());
            for message in &messages {
                push_frame(&mut frames, message);
            }
            frames
        })
        .await;
        let frames = match built {
            Ok(frames) => frames,
            Err(e) => {
                // A bug, never expected: counted, logged, and answered SERVFAIL (RFC 1035
                // §4.1.1) rather than left without a word.
                if e.is_panic() {
                    shared.metrics.panics.with_label_values(&["transfer"]).inc();
                    tracing::error!(client = %peer, "building a zone transfer panicked; answered SERVFAIL (this is a bug: please report it)");
                }
                let mut reply = Vec::new();
                let question = wire::parse_question(&query);
                wire::error_reply(
                    &query,
                    &mut reply,
                    question.as_ref(),
                    Rcode::SERVFAIL,
                    wire::ECHOED_FLAGS,
                    None,
                );
                let mut frames = Vec::new();
                push_frame(&mut frames, &reply);
                frames
            }
        };
        let _ = chunks
            .send(Chunk {
                bytes: frames,
                _slot: Some(slot),
            })
            .await;
    })
}

/// Bytes for the writer, with the transfer slot they hold until written.
pub(super) struct Chunk {
    bytes: Vec<u8>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl From<Vec<u8>> for Chunk {
    fn from(bytes: Vec<u8>) -> Chunk {
        Chunk { bytes, _slot: None }
    }
}
