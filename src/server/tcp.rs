//! TCP per RFC 7766: length-prefixed messages, pipelined queries answered in order (those that
//! arrived together written together, up to `tcp-max-in-flight`), an idle timeout, and caps on
//! connections in total and per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::Shared;
use super::answer::{Outcome, Transport, answer};
use crate::metrics::QueryCounters;

/// Connections open per client address, for the per-client cap.
type PerClient = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(shared.limits.tcp_max_connections));
    let per_client: PerClient = Arc::default();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: keep the loop alive, pause briefly.
                tracing::warn!("tcp accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Over the total cap: close at once rather than queue (RFC 7766 §6.2.2).
            drop(stream);
            continue;
        };
        if !claim_client_slot(
            &per_client,
            peer.ip(),
            shared.limits.tcp_max_connections_per_client,
        ) {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        let per_client = per_client.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            shared.metrics.tcp_connections_open.inc();
            serve_connection(stream, peer, &shared, stop).await;
            shared.metrics.tcp_connections_open.dec();
            release_client_slot(&per_client, peer.ip());
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    // Stop accepting: close the listening socket so new connections are refused at once
    // instead of waiting unanswered in the backlog; connections see `stop` and finish the
    // query in hand.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

fn claim_client_slot(per_client: &PerClient, ip: IpAddr, cap: usize) -> bool {
    let mut map = per_client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = map.entry(ip).or_insert(0);
    if *count >= cap {
        return false;
    }
    *count += 1;
    true
}

fn release_client_slot(per_client: &PerClient, ip: IpAddr) {
    let mut map = per_client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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

/// Writes the answers gathered so far; false when the connection is gone.
async fn write_answers<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    frames: &mut Vec<u8>,
    idle: std::time::Duration,
    peer: SocketAddr,
) -> bool {
    if frames.is_empty() {
        return true;
    }
    let written = tokio::time::timeout(idle, writer.write_all(frames)).await;
    frames.clear();
    match written {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!("tcp write to {peer} failed: {e}");
            false
        }
        Err(_) => false,
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) {
    let idle = shared.limits.tcp_idle_timeout;
    let max_in_flight = shared.limits.tcp_max_in_flight.max(1);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut rng = SmallRng::from_os_rng();
    let mut query = vec![0u8; 512];
    let mut out = Vec::with_capacity(4096);
    // Length-prefixed answers not yet written: pipelined queries that arrived together are
    // answered together, in order, with one write (at most `max_in_flight` of them).
    let mut frames = Vec::with_capacity(4096);
    let mut counters = QueryCounters::new(shared.metrics.clone(), Transport::Tcp);
    loop {
        if *stop.borrow() {
            return;
        }
        // The whole next message must arrive within the idle timeout: a client sending one
        // byte at a time cannot hold the connection (RFC 7766 §6.2.3).
        let deadline = tokio::time::Instant::now() + idle;
        // Between messages a shutdown closes the connection at once...
        // Bytes already here win over a shutdown seen at the same moment: that message has
        // started arriving.
        tokio::select! {
            biased;
            buffered = tokio::time::timeout_at(deadline, reader.fill_buf()) => match buffered {
                Ok(Ok(bytes)) if !bytes.is_empty() => {}
                _ => return,
            },
            _ = stop.changed() => return,
        }
        // ...but a message that has started arriving is in flight: read, answer, then close.
        for _ in 0..max_in_flight {
            let read = async {
                let len = usize::from(reader.read_u16().await?);
                query.resize(len, 0);
                reader.read_exact(&mut query).await?;
                Ok::<usize, std::io::Error>(len)
            };
            let len = match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(len)) => len,
                Ok(Err(_)) | Err(_) => {
                    write_answers(&mut writer, &mut frames, idle, peer).await;
                    return;
                }
            };
            if crate::transfer::is_transfer(&query[..len]) {
                // AXFR/IXFR: possibly many messages, each length-prefixed (RFC 5936 §4.2),
                // after the answers to the queries before it.
                let messages = crate::transfer::respond(&shared.snapshot.load(), &query[..len], peer.ip());
                for message in messages {
                    push_frame(&mut frames, &message);
                    if !write_answers(&mut writer, &mut frames, idle, peer).await {
                        return;
                    }
                }
                counters.answered(crate::zone::rtype::AXFR, 0, false);
                break;
            }
            let outcome = {
                let snapshot = shared.snapshot.load();
                let outcome = answer(
                    &snapshot,
                    &query[..len],
                    &mut out,
                    Transport::Tcp,
                    shared.limits.udp_payload,
                    &mut rng,
                );
                if let Outcome::Responded { pick: Some(pick), .. } = outcome {
                    snapshot.count_pick(pick);
                }
                outcome
            };
            match outcome {
                Outcome::Responded {
                    rcode,
                    qtype,
                    truncated,
                    ..
                } => counters.answered(qtype, rcode, truncated),
                Outcome::Dropped => {
                    // Not a query we answer; RFC 7766 lets us close, after the answers owed.
                    counters.dropped();
                    counters.flush();
                    write_answers(&mut writer, &mut frames, idle, peer).await;
                    return;
                }
            }
            push_frame(&mut frames, &out);
            if !whole_message_buffered(reader.buffer()) {
                break;
            }
        }
        // TCP is not the hot path: publish at once so a scrape sees these queries.
        counters.flush();
        if !write_answers(&mut writer, &mut frames, idle, peer).await {
            return;
        }
    }
}
