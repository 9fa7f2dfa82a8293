//! The UDP worker loop: one thread per socket, receive, answer, send; never dies on one error.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::Shared;
use super::answer::{Outcome, Transport, answer};

/// Largest datagram we read; anything longer is cut by the kernel and will fail to parse.
const RECV_BUFFER: usize = 65_535;

pub(super) fn worker(socket: UdpSocket, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(4096);
    let mut rng = SmallRng::from_os_rng();
    let max_payload = shared.limits.udp_payload;
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
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
        if let Outcome::Responded { .. } = outcome {
            if let Err(e) = socket.send_to(&out, peer) {
                tracing::debug!("udp send to {peer} failed: {e}");
            }
        }
    }
}
