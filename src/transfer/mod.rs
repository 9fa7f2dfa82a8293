//! Zone transfers out: AXFR (RFC 5936) and IXFR (RFC 1995) over TCP, allowed by network and
//! TSIG key, from a bounded history of recent versions; and what a secondary gets for a
//! shared name.
//!
//! A secondary cannot pick per query, so a transfer carries each pool's name as one CNAME to
//! the pool's heaviest eligible member at the time the version was made (the "transfer
//! pick"). When health moves that choice, the control plane bumps the serial (rate-limited per zone by
//! `transfer-pick-refresh`) and NOTIFYs, so a secondary lands on a healthy node within about
//! that bound plus its own transfer delay.

pub mod history;
pub mod notifier;
pub mod notify;
pub mod tsig;

use std::net::IpAddr;

use crate::snapshot::{Snapshot, ZoneVersion};
use crate::zone::rtype;
use crate::zone::serial::serial_gt;
use tsig::{Signer, Verified};

pub use history::HISTORY_LEN;

/// Target size of one transfer message (well below the 65,535 TCP maximum).
const MESSAGE_TARGET: usize = 16_000;

fn be16(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// True when `query` asks for AXFR or IXFR (then `respond` handles it, over TCP only).
pub fn is_transfer(query: &[u8]) -> bool {
    question(query).is_some_and(|(_, qtype, _, _)| qtype == rtype::AXFR || qtype == rtype::IXFR)
}

/// (qname end, qtype, qclass, question end) of a well-formed single question.
fn question(query: &[u8]) -> Option<(usize, u16, u16, usize)> {
    if query.len() < 12 || be16(query, 4) != 1 || query[2] & 0xF8 != 0 {
        return None;
    }
    let mut pos = 12;
    loop {
        let len = usize::from(*query.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 || pos - 12 > 255 {
            return None;
        }
        pos += len + 1;
    }
    Some((pos, be16(query, pos), be16(query, pos + 2), pos + 4))
}

/// Builds the response messages to a transfer request from `client`.
pub fn respond(snapshot: &Snapshot, query: &[u8], client: IpAddr) -> Vec<Vec<u8>> {
    let Some((qname_end, qtype, qclass, question_end)) = question(query) else {
        return vec![header_only(query, 1)];
    };
    let signed = match tsig::find(query, question_end) {
        Err(tsig::Malformed) => return vec![header_only(query, 1)],
        Ok(None) => None,
        Ok(Some(record)) => match tsig::verify(query, record, &snapshot.tsig_keys, tsig::unix_now()) {
            Verified::Valid { key, request_mac, .. } => Some((key, request_mac)),
            Verified::Rejected { error, key, record } => {
                // RFC 8945 §5.2: NOTAUTH with the TSIG error; signed only when the key and MAC
                // were good (BADTIME, BADTRUNC).
                let mut message = header_only(query, 9);
                message.extend_from_slice(&query[12..question_end]);
                message[4..6].copy_from_slice(&1u16.to_be_bytes());
                tsig::append_rejection(&mut message, error, key, &record);
                tracing::info!(%client, error, "transfer refused: TSIG check failed");
                return vec![message];
            }
        },
    };
    let mut signer = signed.as_ref().map(|(key, mac)| Signer::new(key, mac.clone()));
    let mut finish = |mut messages: Vec<Vec<u8>>| {
        if let Some(signer) = signer.as_mut() {
            for message in &mut messages {
                signer.sign(message, 0, &[]);
            }
        }
        messages
    };

    let key: Vec<u8> = query[12..qname_end].to_ascii_lowercase();
    let zone = snapshot.zones().iter().find(|z| *z.origin.key() == *key);
    let refused = |rcode: u8| {
        let mut message = header_only(query, rcode);
        message.extend_from_slice(&query[12..question_end]);
        message[4..6].copy_from_slice(&1u16.to_be_bytes());
        message
    };
    let Some(zone) = zone.filter(|_| qclass == rtype::CLASS_IN) else {
        // RFC 5936 §2.2.1: not authoritative for that zone.
        return finish(vec![refused(9)]);
    };
    let key_name = signed.as_ref().map(|(key, _)| key.name.wire());
    let allowed = zone
        .transfer
        .allow
        .iter()
        .any(|acl| acl.contains(client) && acl.key.as_ref().is_none_or(|k| Some(k.wire()) == key_name));
    if !allowed {
        tracing::info!(%client, zone = %zone.origin, "transfer refused by allow-transfer");
        return finish(vec![refused(5)]);
    }
    let Some(current) = zone.transfer.current.as_ref() else {
        return finish(vec![refused(2)]);
    };
    let mut records: Vec<&[u8]> = Vec::new();
    if qtype == rtype::IXFR {
        let client_serial = ixfr_serial(query, question_end);
        match client_serial {
            Some(serial) if !serial_gt(current.serial, serial) => {
                // Up to date (or ahead): the current SOA alone (RFC 1995 §2).
                records.push(&current.soa);
            }
            Some(serial) => match zone.transfer.diffs.iter().position(|d| d.from_serial == serial) {
                Some(start) => {
                    records.push(&current.soa);
                    for diff in &zone.transfer.diffs[start..] {
                        records.push(&diff.from_soa);
                        records.extend(diff.removed.iter().map(|r| &r[..]));
                        records.push(&diff.to_soa);
                        records.extend(diff.added.iter().map(|r| &r[..]));
                    }
                    records.push(&current.soa);
                }
                // Too old for our history: the whole zone, AXFR-style (RFC 1995 §4).
                None => full_zone(current, &mut records),
            },
            None => return finish(vec![refused(1)]),
        }
    } else {
        full_zone(current, &mut records);
    }
    tracing::info!(%client, zone = %zone.origin, serial = current.serial, kind = %rtype::mnemonic(qtype), records = records.len(), "transfer");
    finish(pack(query, question_end, &records))
}

fn full_zone<'v>(version: &'v ZoneVersion, records: &mut Vec<&'v [u8]>) {
    records.push(&version.soa);
    records.extend(version.records.iter().map(|r| &r[..]));
    records.push(&version.soa);
}

/// The client's serial from the SOA in an IXFR query's authority section.
fn ixfr_serial(query: &[u8], question_end: usize) -> Option<u32> {
    if be16(query, 8) == 0 {
        return None;
    }
    // Owner: the zone name, usually compressed to the question.
    let mut pos = question_end;
    loop {
        let len = *query.get(pos)?;
        match len {
            0 => {
                pos += 1;
                break;
            }
            1..=63 => pos += usize::from(len) + 1,
            0xC0..=0xFF => {
                pos += 2;
                break;
            }
            _ => return None,
        }
    }
    if be16(query, pos) != rtype::SOA {
        return None;
    }
    let rdlen = usize::from(be16(query, pos + 8));
    let rdata = query.get(pos + 10..pos + 10 + rdlen)?;
    let at = rdata.len().checked_sub(20)?;
    Some(u32::from_be_bytes([
        rdata[at],
        rdata[at + 1],
        rdata[at + 2],
        rdata[at + 3],
    ]))
}

/// A header answering `query` with `rcode` and nothing else.
fn header_only(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut message = vec![0u8; 12];
    message[0] = query.first().copied().unwrap_or(0);
    message[1] = query.get(1).copied().unwrap_or(0);
    // QR, the opcode and RD copied (RFC 1035 §4.1.1), AA; CD copied as for queries.
    message[2] = 0x80 | (query.get(2).copied().unwrap_or(0) & 0x79) | 0x04;
    message[3] = (query.get(3).copied().unwrap_or(0) & 0x10) | (rcode & 0x0f);
    message
}

/// Splits `records` into messages of about `MESSAGE_TARGET` bytes; the question goes in the
/// first (RFC 5936 §2.2).
fn pack(query: &[u8], question_end: usize, records: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current = start_message(query, question_end, true);
    let mut count: u16 = 0;
    for record in records {
        if count > 0 && current.len() + record.len() > MESSAGE_TARGET {
            current[6..8].copy_from_slice(&count.to_be_bytes());
            messages.push(current);
            current = start_message(query, question_end, false);
            count = 0;
        }
        current.extend_from_slice(record);
        count += 1;
    }
    current[6..8].copy_from_slice(&count.to_be_bytes());
    messages.push(current);
    messages
}

fn start_message(query: &[u8], question_end: usize, with_question: bool) -> Vec<u8> {
    let mut message = header_only(query, 0);
    if with_question {
        message[4..6].copy_from_slice(&1u16.to_be_bytes());
        message.extend_from_slice(&query[12..question_end]);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_questions_are_recognised() {
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x00\x00\xfc\x00\x01");
        assert!(is_transfer(&q));
        q[12 + 9 + 1] = 1;
        assert!(!is_transfer(&q));
        assert!(!is_transfer(&q[..5]));
    }
}
