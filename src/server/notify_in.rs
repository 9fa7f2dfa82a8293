//! NOTIFY received for a secondary zone (RFC 1996 §3.7): from one of its primaries it is
//! answered at once and the zone's check brought forward; from anyone else it is refused. A
//! signed NOTIFY is checked (RFC 8945) and answered signed.

use std::net::IpAddr;

use tokio::sync::mpsc;

use super::answer::Outcome;
use crate::snapshot::Snapshot;
use crate::tsig::{self, Signer, Verified};
use crate::wire::{self, AA, Rcode, parse_question, rtype};

/// True for a message with opcode NOTIFY that is not a response.
pub fn is_notify(message: &[u8]) -> bool {
    message.len() >= 12
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
        wire::error_reply(query, out, question, rcode, 0, None);
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
