//! Zone transfers out: AXFR (RFC 5936) and IXFR (RFC 1995) over TCP, and what they carry.
//!
//! Transfers are allowed by network and TSIG key, and served from a bounded history of recent
//! versions. A secondary cannot pick per query, so a transfer carries each pool's name as one
//! CNAME to the pool's heaviest eligible member at the time the version was made (the "transfer
//! pick"). When health moves that choice, the control plane bumps the serial (rate-limited per zone by
//! `transfer-pick-refresh`) and NOTIFYs, so a secondary lands on a healthy node within about
//! that bound plus its own transfer delay.

pub mod history;
pub mod notifier;
pub mod notify;

use std::net::IpAddr;

use crate::snapshot::{Snapshot, ZoneVersion};
use crate::tsig::{self, Signer, Verified};
use crate::wire::{
    self, AA, CLASSIC_UDP_LIMIT, ECHOED_FLAGS, Ede, HEADER_LEN, OPCODE_MASK, OptReply, QR, Question, Rcode,
    be16, rtype,
};
use crate::zone::serial::serial_gt;

pub use history::HISTORY_LEN;

/// Target size of one transfer message (well below the 65,535 TCP maximum).
const MESSAGE_TARGET: usize = 16_000;

/// True when `query` asks for AXFR or IXFR (then `respond` handles it, over TCP only).
pub fn is_transfer(query: &[u8]) -> bool {
    transfer_question(query).is_some_and(|q| q.qtype == rtype::AXFR || q.qtype == rtype::IXFR)
}

/// The question of a request with the header of a query: QR clear, opcode QUERY, one
/// question (RFC 5936 §2.2: an AXFR query is an ordinary QUERY).
fn transfer_question(query: &[u8]) -> Option<Question> {
    let flags = be16(query, 2);
    if query.len() < HEADER_LEN || flags & (QR | OPCODE_MASK) != 0 || be16(query, 4) != 1 {
        return None;
    }
    wire::parse_question(query)
}

/// What the request's additional section says about EDNS: `Ok(None)` without OPT, `Err`
/// with the OPT read so far when the section is malformed (answer FORMERR, RFC 6891 §7).
fn request_edns(query: &[u8], question: &Question) -> Result<Option<wire::Edns>, Option<wire::Edns>> {
    // An IXFR request has the client's SOA in its authority section (RFC 1995 §3).
    let before = usize::from(be16(query, 6)) + usize::from(be16(query, 8));
    let additional_start = wire::skip_records(query, question.end, before).ok_or(None)?;
    wire::parse_additional(query, additional_start, be16(query, 10)).map(|a| a.edns)
}

/// A refusal or error answer to a transfer request: header, question, and an OPT when the
/// request had one (RFC 6891 §6.1.1), carrying `ede`. No AA: nothing authoritative is said.
fn error_message(
    query: &[u8],
    question: Option<&Question>,
    edns: Option<wire::Edns>,
    rcode: Rcode,
    ede: Option<Ede>,
) -> Vec<u8> {
    let opt = edns.map(|e| OptReply {
        // As the request path's error answers: the size every client accepts.
        udp_size: CLASSIC_UDP_LIMIT as u16,
        dnssec_ok: e.dnssec_ok,
        ede,
        client_subnet: None,
    });
    let mut message = Vec::with_capacity(64);
    wire::error_reply(query, &mut message, question, rcode, ECHOED_FLAGS, opt.as_ref());
    message
}

/// Whether this verified request MAC is new: each signed transfer request is answered once
/// (`tsig::ReplayGuard`). Process-wide, as the transfers are: snapshots are immutable.
fn first_use(request_mac: &[u8]) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<tsig::ReplayGuard>> = std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    crate::sync::lock(seen).first_use(request_mac, wire::unix_now())
}

/// Builds the response messages to a transfer request from `client`.
pub fn respond(snapshot: &Snapshot, query: &[u8], client: IpAddr) -> Vec<Vec<u8>> {
    let Some(question) = transfer_question(query) else {
        return vec![error_message(query, None, None, Rcode::FORMERR, None)];
    };
    let edns = match request_edns(query, &question) {
        Ok(edns) => edns,
        Err(seen) => return vec![error_message(query, Some(&question), seen, Rcode::FORMERR, None)],
    };
    if edns.is_some_and(|e| e.version > 0) {
        // RFC 6891 §6.1.3: a version we do not implement.
        return vec![error_message(query, Some(&question), edns, Rcode::BADVERS, None)];
    }
    let refused = |rcode: Rcode, ede: Option<Ede>| error_message(query, Some(&question), edns, rcode, ede);
    let signed = match tsig::find(query, question.end) {
        Err(tsig::Malformed) => return vec![refused(Rcode::FORMERR, None)],
        Ok(None) => None,
        Ok(Some(record)) => match tsig::verify(query, record, &snapshot.tsig_keys, wire::unix_now()) {
            Verified::Valid { key, request_mac, .. } if !first_use(&request_mac) => {
                // A captured request sent again: as stale as one outside the time window.
                let mut message = refused(Rcode::NOTAUTH, None);
                if let Ok(Some(record)) = tsig::find(query, question.end) {
                    tsig::append_rejection(&mut message, tsig::BADTIME, Some(key), &record);
                }
                tracing::info!(%client, "transfer refused: a replayed TSIG request");
                return vec![message];
            }
            Verified::Valid { key, request_mac, .. } => Some((key, request_mac)),
            Verified::Rejected { error, key, record } => {
                // RFC 8945 §5.2: NOTAUTH with the TSIG error; signed only when the key and MAC
                // were good (BADTIME, BADTRUNC).
                let mut message = refused(Rcode::NOTAUTH, None);
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

    if question.qclass != rtype::CLASS_IN {
        // Zones are served in class IN only; as NSD, Not Supported (RFC 8914 §4.22).
        return finish(vec![refused(Rcode::REFUSED, Some(Ede::NOT_SUPPORTED))]);
    }
    let key: Vec<u8> = question.qname(query).to_ascii_lowercase();
    let Some(zone) = snapshot.zones().iter().find(|z| *z.origin.key() == *key) else {
        // RFC 5936 §2.2.1: not authoritative for that zone. NSD adds no EDE here either.
        return finish(vec![refused(Rcode::NOTAUTH, None)]);
    };
    let key_name = signed.as_ref().map(|(key, _)| key.name.wire());
    let allowed = zone
        .transfer
        .allow
        .iter()
        .any(|acl| acl.contains(client) && acl.key.as_ref().is_none_or(|k| Some(k.wire()) == key_name));
    if !allowed {
        tracing::info!(%client, zone = %zone.origin, "transfer refused by allow-transfer");
        // REFUSED, and Prohibited (RFC 8914 §4.19) says why, as NSD answers.
        return finish(vec![refused(Rcode::REFUSED, Some(Ede::PROHIBITED))]);
    }
    let Some(current) = zone.transfer.current.as_ref() else {
        return finish(vec![refused(Rcode::SERVFAIL, None)]);
    };
    let mut records: Vec<&[u8]> = Vec::new();
    if question.qtype == rtype::IXFR {
        let client_serial = ixfr_serial(query, question.end);
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
            // RFC 1995 §3: an IXFR request carries the client's SOA.
            None => return finish(vec![refused(Rcode::FORMERR, None)]),
        }
    } else {
        full_zone(current, &mut records);
    }
    tracing::info!(%client, zone = %zone.origin, serial = current.serial, kind = %rtype::mnemonic(question.qtype), records = records.len(), "transfer");
    finish(pack(query, &question, &records))
}

fn full_zone<'v>(version: &'v ZoneVersion, records: &mut Vec<&'v [u8]>) {
    records.push(&version.soa);
    records.extend(version.records.iter().map(|r| &r[..]));
    records.push(&version.soa);
}

/// The client's serial from the SOA in an IXFR query's authority section (RFC 1995 §3).
fn ixfr_serial(query: &[u8], question_end: usize) -> Option<u32> {
    if be16(query, 8) == 0 {
        return None;
    }
    // Owner: the zone name, usually compressed to the question.
    let soa = wire::read_record(query, question_end)?;
    if soa.rtype != rtype::SOA {
        return None;
    }
    wire::soa_serial(query.get(soa.rdata..soa.end)?)
}

/// Splits `records` into messages of about `MESSAGE_TARGET` bytes; the question goes in the
/// first (RFC 5936 §2.2).
fn pack(query: &[u8], question: &Question, records: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current = start_message(query, Some(question));
    let mut count: u16 = 0;
    for record in records {
        if count > 0 && current.len() + record.len() > MESSAGE_TARGET {
            current[6..8].copy_from_slice(&count.to_be_bytes());
            messages.push(current);
            current = start_message(query, None);
            count = 0;
        }
        current.extend_from_slice(record);
        count += 1;
    }
    current[6..8].copy_from_slice(&count.to_be_bytes());
    messages.push(current);
    messages
}

/// The header of one transfer message (RFC 5936 §2.2.1): the request's ID and opcode, RD and
/// CD echoed, QR and AA set, NOERROR; the question in the first message only.
fn start_message(query: &[u8], question: Option<&Question>) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&be16(query, 0).to_be_bytes());
    let flags = QR | AA | (be16(query, 2) & (OPCODE_MASK | ECHOED_FLAGS));
    message.extend_from_slice(&flags.to_be_bytes());
    message.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
    message.extend_from_slice(&[0; 6]);
    if let Some(question) = question {
        message.extend_from_slice(question.bytes(query));
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

    fn snapshot() -> Snapshot {
        crate::snapshot::tiny_for_tests()
    }

    fn request(name: &[u8], qclass: u16, edns: bool) -> Vec<u8> {
        // ID 0x0102, RD and CD set (echoed), one question, OPT when `edns`.
        let mut q = vec![1, 2, 0x01, 0x10, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        q.extend_from_slice(name);
        q.extend_from_slice(&rtype::AXFR.to_be_bytes());
        q.extend_from_slice(&qclass.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn refusals_echo_opt_with_the_extended_error_nsd_sends() {
        let snapshot = snapshot();
        let client: IpAddr = "192.0.2.9".parse().expect("ip");
        // (zone, class, rcode, EDE): no allow-transfer for example. (so refused), a zone we do
        // not serve, a class we do not serve.
        let cases: [(&[u8], u16, Rcode, Option<u16>); 3] = [
            (b"\x07example\x00", rtype::CLASS_IN, Rcode::REFUSED, Some(18)),
            (b"\x05other\x00", rtype::CLASS_IN, Rcode::NOTAUTH, None),
            (b"\x07example\x00", rtype::CLASS_CH, Rcode::REFUSED, Some(21)),
        ];
        for (name, qclass, rcode, ede) in cases {
            let query = request(name, qclass, true);
            let messages = respond(&snapshot, &query, client);
            assert_eq!(messages.len(), 1);
            let m = &messages[0];
            assert_eq!(be16(m, 0), 0x0102);
            assert_eq!(
                be16(m, 2),
                QR | wire::RD | wire::CD | rcode.get(),
                "{name:?}: no AA"
            );
            assert_eq!(&m[4..12], &[0, 1, 0, 0, 0, 0, 0, 1], "{name:?}");
            let opt = &m[query.len() - 11..];
            assert_eq!(
                &opt[..9],
                &[0, 0, 41, 2, 0, 0, 0, 0x80, 0],
                "{name:?}: OPT, DO copied"
            );
            match ede {
                Some(code) => assert_eq!(&opt[9..], &[0, 6, 0, 15, 0, 2, 0, code as u8], "{name:?}"),
                None => assert_eq!(&opt[9..], &[0, 0], "{name:?}"),
            }
            let plain = request(name, qclass, false);
            let messages = respond(&snapshot, &plain, client);
            assert_eq!(messages[0].len(), plain.len(), "{name:?}: no OPT without one");
            assert_eq!(be16(&messages[0], 10), 0);
        }
    }
}
