//! EDNS(0) (RFC 6891): the request's OPT record, and the reply's, with its Extended DNS Error.
//!
//! An Extended DNS Error (RFC 8914) is an EDNS option, so it is only ever sent to a client
//! whose request carried an OPT record.

use super::{Rcode, be16, read_record, rtype};

/// An OPT record with no options: root owner, TYPE, CLASS, TTL, RDLENGTH (RFC 6891 §6.1.2).
pub const OPT_LEN: usize = 11;
/// The EDNS option code of an Extended DNS Error (RFC 8914 §2).
pub const EDE_OPTION: u16 = 15;
/// Octets an EDE option without EXTRA-TEXT adds: OPTION-CODE, OPTION-LENGTH, INFO-CODE.
const EDE_LEN: usize = 6;

/// EDNS(0) as sent by the client (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size (the OPT record's CLASS).
    pub udp_size: u16,
    pub version: u8,
    /// The DO bit (RFC 3225 §3).
    pub dnssec_ok: bool,
}

/// What the additional section of a request holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Additional {
    pub edns: Option<Edns>,
    /// A TSIG record (RFC 8945): the request is signed, and so must its answer be.
    pub signed: bool,
}

/// Walks `count` records of the additional section from `pos`: at most one OPT, owned by
/// the root, with well-formed options (RFC 6891 §6.1.1); notes a TSIG (the caller checks
/// it). Other records are only bounds-checked. An error (answer FORMERR) carries the OPT
/// read so far, a duplicate's first or one with malformed options, because a FORMERR about
/// the OPT still carries an OPT (RFC 6891 §7).
pub fn parse_additional(message: &[u8], mut pos: usize, count: u16) -> Result<Additional, Option<Edns>> {
    let mut edns = None;
    let mut signed = false;
    for _ in 0..count {
        let record = read_record(message, pos).ok_or(edns)?;
        pos = record.end;
        if record.rtype == rtype::OPT {
            if edns.is_some() || !record.owner_is_root() {
                return Err(edns);
            }
            edns = Some(Edns {
                udp_size: record.class,
                version: (record.ttl >> 16) as u8,
                dnssec_ok: record.ttl & 0x8000 != 0,
            });
            let rdata = message.get(record.rdata..record.end).ok_or(edns)?;
            let mut o = 0;
            while o < rdata.len() {
                let option_len = usize::from(be16(rdata, o + 2));
                if o + 4 + option_len > rdata.len() {
                    return Err(edns);
                }
                o += 4 + option_len;
            }
        }
        signed |= record.rtype == rtype::TSIG;
    }
    Ok(Additional { edns, signed })
}

/// An Extended DNS Error INFO-CODE (RFC 8914 §4), sent without EXTRA-TEXT, as NSD does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ede(u16);

impl Ede {
    /// 14 Not Ready (RFC 8914 §4.15): a secondary zone not yet transferred, or expired.
    pub const NOT_READY: Ede = Ede(14);
    /// 18 Prohibited (RFC 8914 §4.19): the requester is not allowed this, e.g. a zone
    /// transfer that allow-transfer does not grant.
    pub const PROHIBITED: Ede = Ede(18);
    /// 20 Not Authoritative (RFC 8914 §4.21): the name is in no zone served here.
    pub const NOT_AUTHORITATIVE: Ede = Ede(20);
    /// 21 Not Supported (RFC 8914 §4.22): a class, name or operation not offered here.
    pub const NOT_SUPPORTED: Ede = Ede(21);

    pub const fn info_code(self) -> u16 {
        self.0
    }
}

/// The OPT record of a reply (RFC 6891 §6.1.2): our payload size, the DO bit copied (RFC
/// 3225 §3), and an Extended DNS Error when there is one to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReply {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    pub ede: Option<Ede>,
}

impl OptReply {
    /// Octets the record takes in the message (what a size limit must keep free for it).
    #[inline]
    pub const fn record_len(&self) -> usize {
        OPT_LEN + if self.ede.is_some() { EDE_LEN } else { 0 }
    }
}

/// Appends the OPT record for `opt`, with the upper bits of `rcode` and version 0 (the only
/// one we implement, also in a BADVERS answer, RFC 6891 §6.1.3). The caller counts it in
/// ARCOUNT.
pub fn put_opt(out: &mut Vec<u8>, opt: &OptReply, rcode: Rcode) {
    // Written from one stack copy: every answer to an EDNS query carries this record, and
    // one append is cheaper than one per field.
    let [size_high, size_low] = opt.udp_size.to_be_bytes();
    let flags = if opt.dnssec_ok { 0x80 } else { 0 };
    let mut record = [
        0,
        0,
        41,
        size_high,
        size_low,
        rcode.extended_bits(),
        0,
        flags,
        0,
        0,
        0,
    ];
    match opt.ede {
        None => out.extend_from_slice(&record),
        Some(ede) => {
            record[10] = EDE_LEN as u8;
            out.extend_from_slice(&record);
            let [option_high, option_low] = EDE_OPTION.to_be_bytes();
            let [code_high, code_low] = ede.info_code().to_be_bytes();
            out.extend_from_slice(&[option_high, option_low, 0, 2, code_high, code_low]);
        }
    }
}

/// Appends an OPT record carrying one Extended DNS Error with EXTRA-TEXT (RFC 8914 §2), for
/// answers whose reason a person reads (an UPDATE refused by policy). At most 255 octets of
/// text are sent. The caller counts the record in ARCOUNT.
pub fn put_opt_with_text(out: &mut Vec<u8>, rcode: Rcode, info_code: u16, text: &str) {
    let text = &text.as_bytes()[..text.len().min(255)];
    let option_len = 2 + text.len();
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&1232u16.to_be_bytes());
    out.extend_from_slice(&[rcode.extended_bits(), 0, 0, 0]);
    out.extend_from_slice(&((4 + option_len) as u16).to_be_bytes());
    out.extend_from_slice(&EDE_OPTION.to_be_bytes());
    out.extend_from_slice(&(option_len as u16).to_be_bytes());
    out.extend_from_slice(&info_code.to_be_bytes());
    out.extend_from_slice(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(payload: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut record = vec![0, 0, 41];
        record.extend_from_slice(&payload.to_be_bytes());
        record.extend_from_slice(&ttl.to_be_bytes());
        record.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        record.extend_from_slice(rdata);
        record
    }

    #[test]
    fn one_opt_is_read_two_are_an_error() {
        let one = opt(1232, 0x0000_8000, &[0, 10, 0, 2, 1, 2]);
        let parsed = parse_additional(&one, 0, 1).expect("well formed");
        assert_eq!(
            parsed.edns,
            Some(Edns {
                udp_size: 1232,
                version: 0,
                dnssec_ok: true
            })
        );
        let mut two = one.clone();
        two.extend_from_slice(&opt(512, 0, &[]));
        assert_eq!(
            parse_additional(&two, 0, 2),
            Err(parsed.edns),
            "the first is kept"
        );
        let cut_option = opt(1232, 0, &[0, 10, 0, 9, 1]);
        assert!(parse_additional(&cut_option, 0, 1).is_err());
        assert_eq!(parse_additional(&one, 0, 2), Err(parsed.edns), "a missing record");
    }

    #[test]
    fn reply_opt_with_and_without_ede() {
        let mut out = Vec::new();
        let plain = OptReply {
            udp_size: 1232,
            dnssec_ok: true,
            ede: None,
        };
        put_opt(&mut out, &plain, Rcode::BADVERS);
        assert_eq!(out, [0, 0, 41, 0x04, 0xd0, 1, 0, 0x80, 0, 0, 0]);
        assert_eq!(out.len(), plain.record_len());
        out.clear();
        let with_ede = OptReply {
            ede: Some(Ede::NOT_AUTHORITATIVE),
            ..plain
        };
        put_opt(&mut out, &with_ede, Rcode::REFUSED);
        assert_eq!(out.len(), with_ede.record_len());
        assert_eq!(&out[9..], &[0, 6, 0, 15, 0, 2, 0, 20]);
        // It reads back as one well-formed OPT.
        assert!(parse_additional(&out, 0, 1).is_ok_and(|a| a.edns.is_some()));
    }
}
