// An independent check of a DNS response against the query it answers (RFC 1035 §4.1).
//
// Written apart from `server::answer` so that the two do not share a mistake; it uses only
// `std`. The fuzz targets call it, and `tests/it/hostile.rs` includes this same file
// (`#[path]`) for its stable smoke fuzz. Plain `//` comments: an included file may not carry
// inner doc attributes.

use std::fmt::Write as _;

/// Header flag bits (RFC 1035 §4.1.1).
pub const QR: u16 = 0x8000;
pub const OPCODE: u16 = 0x7800;
pub const TC: u16 = 0x0200;
pub const RD: u16 = 0x0100;
/// RR types this check looks into.
const NS: u16 = 2;
const CNAME: u16 = 5;
const SOA: u16 = 6;
const PTR: u16 = 12;
const MX: u16 = 15;
const OPT: u16 = 41;
const RRSIG: u16 = 46;
const NSEC: u16 = 47;
const ANY: u16 = 255;
/// Smallest UDP payload every client accepts (RFC 1035 §2.3.4).
pub const CLASSIC_UDP: usize = 512;

/// How the response travels, deciding its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP, with the server's own payload ceiling (`limits.udp-payload`).
    Udp {
        server_max: u16,
    },
    Tcp,
}

/// A message walked record by record.
#[derive(Debug, Clone, Default)]
pub struct Walked {
    pub id: u16,
    pub flags: u16,
    /// QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT.
    pub counts: [u16; 4],
    /// Byte range of the first question (name, type, class).
    pub question: Option<(usize, usize)>,
    /// The OPT record's CLASS (the advertised UDP payload), when there is one.
    pub opt_payload: Option<u16>,
    /// The OPT record's TTL (extended rcode, version, flags).
    pub opt_ttl: Option<u32>,
    /// (type, class) of each answer, authority and additional record, in order.
    pub records: Vec<(u16, u16)>,
}

impl Walked {
    pub fn rcode(&self) -> u16 {
        let extended = self.opt_ttl.map_or(0, |ttl| (ttl >> 24) as u16);
        (extended << 4) | (self.flags & 0x0f)
    }
}

fn be16(bytes: &[u8], at: usize) -> Result<u16, String> {
    match bytes.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(format!(
            "16-bit field at {at} runs past the end ({})",
            bytes.len()
        )),
    }
}

/// Reads a (possibly compressed) name at `pos`; returns the offset just after it where it is
/// written. Pointers must point strictly backwards (so no loop can form, RFC 1035 §4.1.4), at
/// most 127 of them, the expanded name at most 255 octets, labels at most 63.
pub fn read_name(message: &[u8], pos: usize) -> Result<usize, String> {
    let mut cursor = pos;
    let mut end = None;
    let mut expanded = 0usize;
    let mut hops = 0;
    loop {
        let len = *message
            .get(cursor)
            .ok_or_else(|| format!("name at {pos} runs past the end"))?;
        match len {
            0 => {
                expanded += 1;
                if expanded > 255 {
                    return Err(format!("name at {pos} longer than 255 octets"));
                }
                return Ok(end.unwrap_or(cursor + 1));
            }
            1..=63 => {
                expanded += usize::from(len) + 1;
                if expanded > 255 {
                    return Err(format!("name at {pos} longer than 255 octets"));
                }
                if cursor + 1 + usize::from(len) > message.len() {
                    return Err(format!("label at {cursor} runs past the end"));
                }
                cursor += usize::from(len) + 1;
            }
            0xC0..=0xFF => {
                let target = usize::from(be16(message, cursor)? & 0x3fff);
                if target >= cursor {
                    return Err(format!(
                        "compression pointer at {cursor} points forward to {target}"
                    ));
                }
                if end.is_none() {
                    end = Some(cursor + 2);
                }
                hops += 1;
                if hops > 127 {
                    return Err(format!("name at {pos} follows more than 127 pointers"));
                }
                cursor = target;
            }
            _ => return Err(format!("label type {len:#04x} at {cursor}")),
        }
    }
}

/// Walks a whole message strictly: every count honoured, every name and RDATA in bounds,
/// names inside NS/CNAME/PTR/MX/SOA RDATA well formed and filling the RDATA exactly, at most
/// one OPT, owned by the root and in the additional section, and no bytes left over.
pub fn walk(message: &[u8]) -> Result<Walked, String> {
    if message.len() < 12 {
        return Err(format!("{} bytes: shorter than a header", message.len()));
    }
    let mut walked = Walked {
        id: be16(message, 0)?,
        flags: be16(message, 2)?,
        ..Walked::default()
    };
    for (i, count) in walked.counts.iter_mut().enumerate() {
        *count = be16(message, 4 + 2 * i)?;
    }
    let mut pos = 12;
    for i in 0..walked.counts[0] {
        let start = pos;
        pos = read_name(message, pos)?;
        if message.len() < pos + 4 {
            return Err(format!("question {i} cut before its type and class"));
        }
        pos += 4;
        if i == 0 {
            walked.question = Some((start, pos));
        }
    }
    let sections = [
        (walked.counts[1], "answer"),
        (walked.counts[2], "authority"),
        (walked.counts[3], "additional"),
    ];
    for (count, section) in sections {
        for i in 0..count {
            let owner = pos;
            pos = read_name(message, pos)?;
            let rtype = be16(message, pos)?;
            let class = be16(message, pos + 2)?;
            let ttl = be16(message, pos + 4).and_then(|high| {
                be16(message, pos + 6).map(|low| (u32::from(high) << 16) | u32::from(low))
            })?;
            let rdlen = usize::from(be16(message, pos + 8)?);
            pos += 10;
            let rdata_end = pos + rdlen;
            if rdata_end > message.len() {
                return Err(format!("{section} record {i}: RDATA runs past the end"));
            }
            match rtype {
                OPT => {
                    if section != "additional" {
                        return Err(format!("OPT in the {section} section"));
                    }
                    if message[owner] != 0 {
                        return Err("OPT not owned by the root".into());
                    }
                    if walked.opt_payload.is_some() {
                        return Err("two OPT records".into());
                    }
                    walked.opt_payload = Some(class);
                    walked.opt_ttl = Some(ttl);
                    let mut o = pos;
                    while o < rdata_end {
                        let option_len = usize::from(be16(message, o + 2)?);
                        o += 4 + option_len;
                    }
                    if o != rdata_end {
                        return Err("OPT options overrun the RDATA".into());
                    }
                }
                NS | CNAME | PTR => {
                    let end = read_name(message, pos)?;
                    if end != rdata_end {
                        return Err(format!("{section} record {i}: name does not fill RDATA"));
                    }
                }
                MX => {
                    let end = read_name(message, pos + 2)?;
                    if end != rdata_end {
                        return Err(format!("{section} record {i}: MX does not fill RDATA"));
                    }
                }
                SOA => {
                    let mname_end = read_name(message, pos)?;
                    let rname_end = read_name(message, mname_end)?;
                    if rname_end + 20 != rdata_end {
                        return Err(format!("{section} record {i}: SOA does not fill RDATA"));
                    }
                }
                _ => {}
            }
            pos = rdata_end;
            walked.records.push((rtype, class));
        }
    }
    if pos != message.len() {
        return Err(format!(
            "{} bytes left after the last record",
            message.len() - pos
        ));
    }
    Ok(walked)
}

/// The query's single question, when it is one the server must echo: QDCOUNT 1 and an
/// uncompressed name of valid labels, at most 255 octets, followed by type and class.
pub fn well_formed_question(query: &[u8]) -> Option<(usize, usize)> {
    if query.len() < 12 || be16(query, 4).ok()? != 1 {
        return None;
    }
    let mut pos = 12;
    loop {
        let len = usize::from(*query.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        pos += len + 1;
    }
    if pos - 12 > 255 || query.len() < pos + 4 {
        return None;
    }
    Some((12, pos + 4))
}

/// The UDP payload a query advertises in its OPT record, when the query walks cleanly.
pub fn advertised_payload(query: &[u8]) -> Option<u16> {
    walk(query).ok()?.opt_payload
}

/// Checks `response` as the answer to `query`: well formed, same ID, QR set, opcode and RD
/// echoed (every flag clear in NOTIMP to another opcode), the question echoed byte for byte
/// when the query had a proper one, no question otherwise, and within the size limit of the
/// transport.
pub fn response(query: &[u8], response: &[u8], transport: Transport) -> Result<(), String> {
    let walked = walk(response).map_err(|e| format!("response does not parse: {e}"))?;
    let query_id = be16(query, 0)?;
    let query_flags = be16(query, 2)?;
    if walked.id != query_id {
        return Err(format!("ID {:#06x} answered as {:#06x}", query_id, walked.id));
    }
    if walked.flags & QR == 0 {
        return Err("QR clear in a response".into());
    }
    if walked.flags & OPCODE != query_flags & OPCODE {
        return Err("opcode not echoed".into());
    }
    // RFC 2136 §3.8: an UPDATE's answer copies ID and opcode; the other header bits are Z
    // under UPDATE, and this server does not echo the sections (their counts are zero; an
    // OPT with an extended error and a TSIG may follow). Without an update service (the
    // request path alone) UPDATE gets the NOTIMP answer checked below.
    if query_flags & OPCODE == 5 << 11 && walked.flags & 0x000f != 4 {
        if walked.flags & 0x07f0 != 0 {
            return Err(format!(
                "flags {:#06x} set in an UPDATE answer",
                walked.flags & 0x07f0
            ));
        }
        if walked.counts[..3] != [0, 0, 0] {
            return Err(format!("UPDATE answer with section counts {:?}", walked.counts));
        }
        return Ok(());
    }
    // The NOTIMP answer to an opcode other than QUERY echoes ID and opcode only: the flags
    // mean something else, or nothing, under other opcodes. Every other answer echoes RD.
    let notimp_to_other_opcode = query_flags & OPCODE != 0 && walked.flags & 0x000f == 4;
    if notimp_to_other_opcode {
        if walked.flags & 0x07f0 != 0 {
            return Err(format!(
                "flags {:#06x} set in a NOTIMP answer",
                walked.flags & 0x07f0
            ));
        }
    } else if walked.flags & RD != query_flags & RD {
        return Err("RD not echoed".into());
    }
    if walked.counts[0] > 1 {
        return Err(format!("{} questions in the response", walked.counts[0]));
    }
    match (well_formed_question(query), walked.question) {
        (Some((qs, qe)), Some((rs, re))) => {
            if query[qs..qe] != response[rs..re] {
                return Err("question not echoed byte for byte".into());
            }
        }
        (Some(_), None) => return Err("a proper question was not echoed".into()),
        (None, Some((rs, re))) => {
            // Only the query's own question may come back.
            if query.get(12..12 + (re - rs)) != Some(&response[rs..re]) {
                return Err("response carries a question the query did not ask".into());
            }
        }
        (None, None) => {}
    }
    // RFC 6891 §7: no OPT in the response to a query without one.
    let query_without_opt = walk(query).is_ok_and(|q| q.opt_payload.is_none());
    if walked.opt_payload.is_some() && query_without_opt {
        return Err("OPT in the response to a query without one".into());
    }
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp { server_max } => match walked.opt_payload {
            None => CLASSIC_UDP,
            Some(_) => {
                let asked = advertised_payload(query).unwrap_or(server_max);
                usize::from(asked.min(server_max)).max(CLASSIC_UDP)
            }
        },
    };
    if response.len() > limit {
        return Err(format!("{} bytes over a limit of {limit}", response.len()));
    }
    // RFC 4035 §3.1: RRSIG and NSEC records only to a query with DO set, unless asked for.
    // (A query the checker cannot walk whole, e.g. with trailing octets, is not judged here:
    // the request path reads only what it needs.)
    let dnssec_ok = walk(query).map_or(true, |q| q.opt_ttl.is_some_and(|ttl| ttl & 0x8000 != 0));
    let asked = well_formed_question(query).and_then(|(_, end)| be16(query, end - 4).ok());
    let dnssec_records = walked.records.iter().any(|&(t, _)| t == RRSIG || t == NSEC);
    if dnssec_records && !dnssec_ok && !matches!(asked, Some(RRSIG | NSEC | ANY)) {
        return Err("RRSIG or NSEC in the answer to a query without DO".into());
    }
    Ok(())
}

/// Hex of a packet, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
