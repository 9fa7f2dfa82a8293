//! NOTIFY out (RFC 1996): telling each configured secondary of a new serial, until it listens.
//!
//! After a serial change each target is sent a NOTIFY, retried with backoff until it
//! acknowledges, or a newer serial supersedes this one.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

use super::notifier::SecondarySerials;
use crate::peers::NotifyTarget;
use crate::sync::lock;
use crate::tsig::{Signer, TsigKey};
use crate::wire::{self, AA, HEADER_LEN, OPCODE_NOTIFY, OPCODE_SHIFT, QR, Rcode, be16, rtype};
use crate::zone::name::Name;
use crate::zone::serial::serial_gt;

/// First wait between tries; each later wait doubles, up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// A secondary that is down for hours is still told within a minute of coming back.
const MAX_WAIT: Duration = Duration::from_secs(60);
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// After an acknowledged NOTIFY, the secondary's SOA is asked this often until it serves the
/// announced serial (RFC 1996 §3.11: it transfers soon after), for at most `FOLLOW_FOR`.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
const FOLLOW_FOR: Duration = Duration::from_secs(300);

/// Sends NOTIFY for `zone` at `serial` to every target, in the background. `generation` is
/// bumped by the caller for each newer serial; older tasks then stop retrying.
///
/// There is no last try. RFC 1996 §3.6 leaves the number of retransmissions to the operator
/// (suggesting 5, 60 s apart); we go on because a secondary that is not told keeps an old
/// shared-name pick until its SOA refresh, which can be hours. Only a NOERROR answer counts
/// as acknowledged: REFUSED or NOTAUTH usually means the secondary does not (yet) accept us
/// as its primary, and it should hear from us once it does. Tasks do not pile up: a
/// superseded one ends at its next wake-up, at most `MAX_WAIT` later, without sending.
/// What NOTIFY tasks report to: the serials secondaries answer, and the counts.
#[derive(Debug, Clone)]
pub struct Tracking {
    pub served: SecondarySerials,
    /// `consortium_dns_notifies_total`, when the server counts.
    pub counts: Option<prometheus::IntCounterVec>,
}

pub fn spawn(
    zone: Name,
    serial: u32,
    soa: Box<[u8]>,
    targets: Vec<NotifyTarget>,
    keys: Vec<TsigKey>,
    generation: Arc<AtomicU64>,
    tracking: Tracking,
) {
    let Tracking { served, counts } = tracking;
    let mine = generation.load(Ordering::Relaxed);
    for target in targets {
        let key = target
            .key
            .as_ref()
            .and_then(|name| keys.iter().find(|k| k.name.key() == name.key()).cloned());
        let (zone, soa, generation, served) = (zone.clone(), soa.clone(), generation.clone(), served.clone());
        let counts = counts.clone();
        tokio::spawn(async move {
            let (zone_label, secondary_label) = (zone.to_string(), target.address.to_string());
            let count = |outcome: &str| {
                if let Some(counts) = &counts {
                    counts
                        .with_label_values(&[zone_label.as_str(), secondary_label.as_str(), outcome])
                        .inc();
                }
            };
            let mut wait = FIRST_WAIT;
            for attempt in 1u64.. {
                if generation.load(Ordering::Relaxed) != mine {
                    return; // superseded by a newer serial
                }
                count("sent");
                let outcome = notify_once(&zone, &soa, &target, key.as_ref()).await;
                count(if outcome.is_ok() { "acknowledged" } else { "failed" });
                match outcome {
                    Ok(()) => {
                        tracing::info!(zone = %zone, serial, secondary = %target.address, attempt, "NOTIFY acknowledged");
                        follow(&zone, serial, &target, &generation, mine, &served).await;
                        return;
                    }
                    // Warn once per serial and secondary: a secondary that is down would
                    // otherwise fill the log with a line a minute until it is back.
                    Err(reason) if attempt == 1 => {
                        tracing::warn!(zone = %zone, serial, secondary = %target.address, "NOTIFY not acknowledged ({reason}); retrying with backoff until it is or a newer serial replaces it");
                    }
                    Err(reason) => {
                        tracing::debug!(zone = %zone, serial, secondary = %target.address, attempt, "NOTIFY not acknowledged: {reason}");
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
        });
    }
}

/// Asks the secondary's SOA until it serves `serial` (or a newer serial is announced, or
/// `FOLLOW_FOR` passes), recording each answer in `served`.
async fn follow(
    zone: &Name,
    serial: u32,
    target: &NotifyTarget,
    generation: &AtomicU64,
    mine: u64,
    served: &SecondarySerials,
) {
    let address = target.address;
    let until = tokio::time::Instant::now() + FOLLOW_FOR;
    while tokio::time::Instant::now() < until && generation.load(Ordering::Relaxed) == mine {
        if let Ok(seen) = soa_serial_of(zone, target).await {
            lock(served).insert((zone.key(), address), seen);
            if !serial_gt(serial, seen) {
                tracing::info!(zone = %zone, serial = seen, secondary = %address, "secondary serves the announced serial");
                return;
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// The serial in the secondary's answer to an SOA query for `zone`.
async fn soa_serial_of(zone: &Name, target: &NotifyTarget) -> Result<u32, String> {
    let id: u16 = rand::rngs::SmallRng::from_os_rng().random();
    let mut query = Vec::with_capacity(HEADER_LEN + zone.wire().len() + 4);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    query.extend_from_slice(zone.wire());
    query.extend_from_slice(&rtype::SOA.to_be_bytes());
    query.extend_from_slice(&rtype::CLASS_IN.to_be_bytes());
    let reply = exchange(&query, target).await?;
    if be16(&reply, 6) == 0 {
        return Err("no answer record".into());
    }
    // The first answer record: the question is echoed, then the SOA.
    let answer_at = wire::parse_question(&reply).ok_or("malformed reply")?.end;
    let record = wire::read_record(&reply, answer_at).ok_or("malformed reply")?;
    if record.rtype != rtype::SOA {
        return Err("no SOA in the answer".into());
    }
    let (_, after_mname) = wire::read_name(&reply, record.rdata).ok_or("malformed SOA")?;
    let (_, after_rname) = wire::read_name(&reply, after_mname).ok_or("malformed SOA")?;
    reply
        .get(after_rname..after_rname + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "malformed SOA".into())
}

/// Sends `query` to the target over UDP (from its `source`, if set) and returns the first
/// reply from there with its ID, within `REPLY_TIMEOUT`.
async fn exchange(query: &[u8], target: &NotifyTarget) -> Result<Vec<u8>, String> {
    let address = target.address;
    let socket = bind_for(target).await?;
    socket
        .send_to(query, address)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer))
            .await
            .map_err(|_| "no reply".to_string())?
            .map_err(|e| format!("receive: {e}"))?;
        if from == address && n >= HEADER_LEN && buffer[..2] == query[..2] {
            return Ok(buffer[..n].to_vec());
        }
    }
}

async fn bind_for(target: &NotifyTarget) -> Result<UdpSocket, String> {
    let local: SocketAddr = match (target.source, target.address) {
        (Some(source), _) => (source, 0).into(),
        (None, SocketAddr::V4(_)) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        (None, SocketAddr::V6(_)) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot send from {}: {e}", local.ip()))
}

/// Builds the NOTIFY message: opcode 4, AA, the zone's SOA question, the SOA as a hint.
pub fn message(id: u16, zone: &Name, soa: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(64 + soa.len());
    message.extend_from_slice(&id.to_be_bytes());
    // RFC 1996 §3.7: opcode NOTIFY, AA set, the zone's SOA as the question.
    message.extend_from_slice(&((OPCODE_NOTIFY << OPCODE_SHIFT) | AA).to_be_bytes());
    message.extend_from_slice(&[0, 1, 0, u8::from(!soa.is_empty()), 0, 0, 0, 0]);
    message.extend_from_slice(zone.wire());
    message.extend_from_slice(&rtype::SOA.to_be_bytes());
    message.extend_from_slice(&rtype::CLASS_IN.to_be_bytes());
    message.extend_from_slice(soa);
    message
}

async fn notify_once(
    zone: &Name,
    soa: &[u8],
    target: &NotifyTarget,
    key: Option<&TsigKey>,
) -> Result<(), String> {
    let id: u16 = rand::rngs::SmallRng::from_os_rng().random();
    let mut query = message(id, zone, soa);
    if let Some(key) = key {
        Signer::new(key, Vec::new()).sign(&mut query, 0, &[]);
    }
    let reply = exchange(&query, target).await?;
    let flags = be16(&reply, 2);
    let is_notify_response = flags & QR != 0 && wire::opcode(flags) == OPCODE_NOTIFY;
    let rcode = Rcode::from_flags(flags);
    if is_notify_response && rcode == Rcode::NOERROR {
        Ok(())
    } else {
        Err(format!("reply rcode {rcode}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_message_layout() {
        let zone = Name::parse("consortium.example.", None).expect("name");
        let message = message(0x1234, &zone, &[]);
        assert_eq!(&message[..4], &[0x12, 0x34, 0x24, 0x00]);
        assert_eq!(&message[4..6], &[0, 1]);
        assert_eq!(&message[6..8], &[0, 0]);
        assert_eq!(&message[message.len() - 4..], &[0, 6, 0, 1]);
    }
}
