//! NOTIFY received for a secondary zone (RFC 1996 §3.7): from one of its primaries it is
//! answered at once and the zone's check brought forward; from anyone else it is refused. A
//! signed NOTIFY is checked (RFC 8945) and answered signed.

use std::net::IpAddr;

use tokio::sync::mpsc;

use super::answer::Outcome;
use crate::snapshot::Snapshot;
use crate::tsig::{self, Signer, Verified};
use crate::wire::{self, AA, Rcode, parse_question, rtype};

/// True for a NOTIFY (not a response) to a server with secondary zones; without any, NOTIFY
/// is an opcode the request path does not implement (NOTIMP).
pub fn is_notify_for_us(snapshot: &Snapshot, message: &[u8]) -> bool {
    !snapshot.primaries.is_empty()
        && message.len() >= 12
        && wire::opcode(wire::be16(message, 2)) == wire::OPCODE_NOTIFY
        && wire::be16(message, 2) & wire::QR == 0
}

/// Answers a NOTIFY into `out`; a valid one from a primary is handed to `notifies`.
pub fn respond(
    snapshot: &Snapshot,
    query: &[u8],
    out: &mut Vec<u8>,
    client: IpAddr,
    notifies: Option<&mpsc::Sender<Box<[u8]>>>,
) -> Outcome {
    let question = (wire::be16(query, 4) == 1)
        .then(|| parse_question(query))
        .flatten();
    let reply = |out: &mut Vec<u8>, rcode: Rcode, question: Option<&wire::Question>| {
        // RFC 1996 §3.5: the header is QUERY's; RD is echoed as to a query.
        wire::error_reply(query, out, question, rcode, wire::RD, None);
        if rcode == Rcode::NOERROR {
            // RFC 1996 §4.7: the answer carries AA, as any authoritative answer.
            out[2] |= (AA >> 8) as u8;
        }
        Outcome::Responded {
            rcode,
            qtype: question.map_or(0, |q| q.qtype),
            truncated: false,
            pick: None,
        }
    };
    let Some(question) = question else {
        return reply(out, Rcode::FORMERR, None);
    };
    let mut key = question.qname(query).to_vec();
    key.make_ascii_lowercase();
    let from_primary = question.qtype == rtype::SOA
        && snapshot
            .primaries
            .iter()
            .any(|(zone, addresses)| **zone == *key && addresses.contains(&client));
    let signer = match tsig::find(query, question.end) {
        Err(tsig::Malformed) => return reply(out, Rcode::FORMERR, Some(&question)),
        Ok(None) => None,
        Ok(Some(record)) => match tsig::verify(query, record, &snapshot.tsig_keys, wire::unix_now()) {
            Verified::Valid { key, request_mac, .. } => Some(Signer::new(key, request_mac)),
            Verified::Rejected { error, key, record } => {
                let outcome = reply(out, Rcode::NOTAUTH, Some(&question));
                tsig::append_rejection(out, error, key, &record);
                return outcome;
            }
        },
    };
    let rcode = if from_primary {
        Rcode::NOERROR
    } else {
        Rcode::REFUSED
    };
    let outcome = reply(out, rcode, Some(&question));
    if let Some(mut signer) = signer {
        signer.sign(out, 0, &[]);
    }
    if from_primary {
        if let Some(notifies) = notifies {
            // A full queue means a check is already coming.
            let _ = notifies.try_send(key.into_boxed_slice());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::BuildOptions;

    fn notify(qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x21, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(b"\x07example\x00");
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m
    }

    #[test]
    fn only_a_primary_gets_noerror_and_the_zone_is_handed_on() {
        let primary: IpAddr = "192.0.2.1".parse().expect("ip");
        let options = BuildOptions {
            primaries: vec![(b"\x07example\x00".to_vec().into_boxed_slice(), vec![primary])],
            ..BuildOptions::default()
        };
        let snapshot = Snapshot::build(Vec::new(), &options);
        let (sender, mut receiver) = mpsc::channel(4);
        let mut out = Vec::new();
        let query = notify(rtype::SOA);
        assert!(is_notify_for_us(&snapshot, &query));
        respond(&snapshot, &query, &mut out, primary, Some(&sender));
        assert_eq!(&out[..2], &[0x12, 0x34], "ID echoed");
        assert_eq!(
            wire::be16(&out, 2),
            wire::QR | (4 << 11) | AA | wire::RD,
            "NOERROR, AA, RD echoed"
        );
        assert_eq!(receiver.try_recv().ok().as_deref(), Some(&b"\x07example\x00"[..]));
        for (query, from) in [
            (notify(rtype::SOA), "192.0.2.9".parse().expect("ip")),
            (notify(rtype::A), primary),
        ] {
            respond(&snapshot, &query, &mut out, from, Some(&sender));
            assert_eq!(Rcode::from_flags(wire::be16(&out, 2)), Rcode::REFUSED);
            assert!(receiver.try_recv().is_err(), "nothing handed on");
        }
        for cut in 0..query.len() {
            respond(&snapshot, &query[..cut.max(12)], &mut out, primary, Some(&sender));
        }
        let nobody = Snapshot::build(Vec::new(), &BuildOptions::default());
        assert!(
            !is_notify_for_us(&nobody, &query),
            "without secondary zones NOTIFY is NOTIMP"
        );
    }
}
