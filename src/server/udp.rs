//! The UDP worker loop: one thread per socket, receive, answer, send; never dies on one error.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::Shared;
use super::answer::{Outcome, Transport, answer};
use super::rrl::{self, Verdict};
use crate::metrics::QueryCounters;

/// Largest datagram we read; anything longer is cut by the kernel and will fail to parse.
const RECV_BUFFER: usize = 65_535;

pub(super) fn worker(socket: UdpSocket, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(4096);
    let mut rng = SmallRng::from_os_rng();
    let max_payload = shared.limits.udp_payload;
    let mut counters = QueryCounters::new(shared.metrics.clone(), Transport::Udp);
    let sample = shared.query_log_sample;
    let mut seen: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                // Idle: publish what was counted.
                counters.flush();
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here (ECONNREFUSED); keep serving.
                tracing::debug!("udp receive error: {e}");
                continue;
            }
        };
        let snapshot = shared.snapshot.load();
        let outcome = answer(
            &snapshot,
            &buffer[..len],
            &mut out,
            Transport::Udp,
            max_payload,
            &mut rng,
        );
        match outcome {
            Outcome::Responded {
                rcode,
                qtype,
                truncated,
                pick,
            } => {
                if sample > 0 {
                    seen = seen.wrapping_add(1);
                    if seen % sample == 0 {
                        log_query(&buffer[..len], peer, rcode, truncated);
                    }
                }
                if let Some(pick) = pick {
                    snapshot.count_pick(pick);
                }
                counters.answered(qtype, rcode, truncated);
                if let Some(limiter) = &shared.rrl {
                    match limiter.check(peer.ip(), rrl::classify(&out)) {
                        Verdict::Send => {}
                        Verdict::Slip => {
                            shared.metrics.rrl_slipped.inc();
                            rrl::slip(&mut out);
                        }
                        Verdict::Drop => {
                            shared.metrics.rrl_dropped.inc();
                            continue;
                        }
                    }
                }
                if let Err(e) = socket.send_to(&out, peer) {
                    tracing::debug!("udp send to {peer} failed: {e}");
                }
            }
            Outcome::Dropped => counters.dropped(),
        }
    }
}

/// One line of the sampled query log.
fn log_query(query: &[u8], peer: std::net::SocketAddr, rcode: u16, truncated: bool) {
    if let Some((name, qtype, _)) = super::answer::question_text(query) {
        tracing::info!(target: "query", client = %peer, qname = %name, qtype = %crate::zone::rtype::mnemonic(qtype), rcode, truncated);
    }
}
