//! The UDP worker loop: one thread per socket, receiving, answering and sending in batches.
//!
//! A worker never dies on one error. Batching with recvmmsg/sendmmsg (through nix's safe
//! wrappers) turns two system calls per query into two per batch when the server is busy; an
//! idle server still answers each query as soon as it arrives (MSG_WAITFORONE returns after the
//! first datagram).

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::answer::{Outcome, answer_from};
use super::rrl::{self, Verdict};
use super::{Shared, UpdateRequest, notify_in};
use crate::metrics::QueryCounters;
use crate::shutdown::Shutdown;
use crate::wire::{self, Transport};

/// Datagrams per system call.
const BATCH: usize = 32;

pub(super) fn worker(socket: &UdpSocket, shared: &Shared, stop: &Shutdown) {
    let fd = socket.as_raw_fd();
    // Everything the loop needs is allocated here, once: a batch allocates nothing. One octet
    // more than the largest query accepted, so that a longer datagram shows as too long
    // instead of being cut to a plausible length by the kernel.
    let max_message = shared.limits.max_message_size;
    let mut buffers: [Vec<u8>; BATCH] = std::array::from_fn(|_| vec![0u8; max_message + 1]);
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1_500)).collect();
    let mut received: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut to_send = Outgoing::default();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut rng = SmallRng::from_os_rng();
    let max_payload = shared.limits.udp_payload;
    let mut counters = QueryCounters::new(shared.metrics.clone(), Transport::Udp);
    let count = shared.count_queries;
    // UPDATE answers are sent later, from the control plane, on this same socket.
    let reply_socket = socket.try_clone().ok().map(std::sync::Arc::new);
    while !stop.is_triggered() {
        received.clear();
        {
            let mut slices = buffers.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            match recvmmsg(
                fd,
                &mut recv_headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    for message in results {
                        received.push((message.bytes, message.address.and_then(|a| to_std(&a))));
                    }
                }
                Err(e) => {
                    let kind = std::io::Error::from(e).kind();
                    if matches!(
                        kind,
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) {
                        // Idle (the socket's read timeout): publish what was counted, check stop.
                        counters.flush();
                    } else {
                        // ICMP errors from earlier sends surface here (ECONNREFUSED); keep serving.
                        tracing::debug!("udp receive error: {e}");
                    }
                    continue;
                }
            }
        }
        let snapshot = shared.snapshot.load();
        // Read once per batch: a reload may change them between batches.
        let rrl_rates = shared.rrl.rates();
        to_send.clear();
        for (index, &(len, peer)) in received.iter().enumerate() {
            let Some(peer) = peer else { continue };
            if len > max_message {
                // Over `limits.max-message-size`: not a query we read (RFC 1035 leaves
                // oversized input to the server's judgement; silence costs nothing).
                counters.dropped();
                continue;
            }
            let query = &buffers[index][..len];
            if wire::is_update(query) && submit_update(shared, &reply_socket, query, peer) {
                continue;
            }
            let out = &mut outs[index];
            let outcome = if notify_in::is_notify_for_us(&snapshot, query) {
                notify_in::respond(&snapshot, query, out, peer.ip(), shared.notifies.get())
            } else {
                answer_from(
                    &snapshot,
                    query,
                    out,
                    Transport::Udp,
                    max_payload,
                    peer.ip(),
                    &mut rng,
                )
            };
            let Outcome::Responded {
                rcode,
                qtype,
                truncated,
                pick,
            } = outcome
            else {
                counters.dropped();
                continue;
            };
            if count {
                if let Some(pick) = pick {
                    snapshot.count_pick(pick);
                }
                counters.answered(qtype, rcode, truncated);
            }
            shared
                .query_log
                .observe(query, peer, Transport::Udp, rcode, truncated);
            if rrl_rates.enabled {
                match shared.rrl.check(&rrl_rates, peer.ip(), rrl::classify(out)) {
                    Verdict::Send => {}
                    Verdict::Slip => {
                        shared.metrics.rrl_slipped.inc();
                        rrl::slip(out);
                    }
                    Verdict::Drop => {
                        shared.metrics.rrl_dropped.inc();
                        continue;
                    }
                }
            }
            to_send.push(index, peer);
        }
        drop(snapshot);
        drop(rrl_rates);
        send_batch(socket, fd, &mut send_headers, &outs, &to_send);
    }
    counters.flush();
}

/// Hands an UPDATE to the control plane, to be answered on `socket` when done. False when it
/// is answered here (no update service, or no socket to answer on later).
fn submit_update(
    shared: &Shared,
    socket: &Option<std::sync::Arc<UdpSocket>>,
    query: &[u8],
    peer: SocketAddr,
) -> bool {
    let Some(socket) = socket.clone() else {
        return false;
    };
    shared.submit_update(UpdateRequest {
        message: query.to_vec(),
        client: peer,
        transport: Transport::Udp,
        reply: Box::new(move |answer: Vec<u8>| {
            if !answer.is_empty() {
                let _ = socket.send_to(&answer, peer);
            }
        }),
    })
}

/// The answers of one batch to send: which buffer, to whom (in sendmmsg's form).
#[derive(Default)]
struct Outgoing {
    indexes: Vec<usize>,
    addresses: Vec<Option<SockaddrStorage>>,
}

impl Outgoing {
    fn clear(&mut self) {
        self.indexes.clear();
        self.addresses.clear();
    }

    fn push(&mut self, index: usize, peer: SocketAddr) {
        self.indexes.push(index);
        self.addresses.push(Some(SockaddrStorage::from(peer)));
    }
}

/// Sends the answers in one sendmmsg; whatever it could not send goes out one by one (an
/// error for one destination must not cost the others their answers).
fn send_batch(
    socket: &UdpSocket,
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    outs: &[Vec<u8>],
    to_send: &Outgoing,
) {
    let count = to_send.indexes.len().min(BATCH);
    if count == 0 {
        return;
    }
    let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|k| {
        let out = to_send.indexes.get(k).and_then(|&i| outs.get(i));
        [IoSlice::new(out.map_or(&[][..], |o| &o[..]))]
    });
    let addresses = &to_send.addresses[..count];
    let sent = match sendmmsg(
        fd,
        headers,
        slices[..count].iter(),
        addresses,
        [],
        MsgFlags::empty(),
    ) {
        Ok(results) => results.count(),
        Err(e) => {
            tracing::debug!("udp sendmmsg failed: {e}");
            0
        }
    };
    for (&index, address) in to_send.indexes.iter().zip(addresses).skip(sent) {
        if let (Some(peer), Some(out)) = (address.as_ref().and_then(to_std), outs.get(index)) {
            if let Err(e) = socket.send_to(out, peer) {
                tracing::debug!("udp send to {peer} failed: {e}");
            }
        }
    }
}

fn to_std(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}
