//! The DNS wire format: header bits, rcodes, questions, names, SOA fields, EDNS, error replies.
//!
//! Shared by every module that reads or writes messages, and a leaf: it imports nothing from
//! the rest of the crate, so the request path, transfers, NOTIFY, TSIG, metrics and the zone
//! loader can all use it. Every reader here is bounds-checked and returns `None` (or 0 for the
//! fixed-width integer readers) on short or malformed input; nothing panics on bytes from the
//! network.
//!
//! `Rcode` is a newtype over the 12-bit extended response code rather than an enum: a
//! response code read back from the wire may be any value, the request path passes it around
//! in a register exactly as the bare `u16` it replaces, and its associated constants still
//! work as `match` patterns.

mod edns;
pub mod rtype;

pub use edns::{
    Additional, ClientSubnet, ECS_OPTION, EDE_OPTION, Ede, Edns, OPT_LEN, OptReply, parse_additional,
    put_opt, put_opt_with_text,
};

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Octets of the message header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;

/// Header flag bits in the 16-bit word at offset 2 (RFC 1035 §4.1.1; AD and CD: RFC 4035
/// §3.2, RFC 6840 §5.7).
pub const QR: u16 = 0x8000;
pub const AA: u16 = 0x0400;
pub const TC: u16 = 0x0200;
pub const RD: u16 = 0x0100;
pub const RA: u16 = 0x0080;
pub const AD: u16 = 0x0020;
pub const CD: u16 = 0x0010;
/// The OPCODE field: `(flags & OPCODE_MASK) >> OPCODE_SHIFT`.
pub const OPCODE_MASK: u16 = 0x7800;
pub const OPCODE_SHIFT: u16 = 11;
/// The low four bits of the response code (the rest is in the OPT record, RFC 6891 §6.1.3).
pub const RCODE_MASK: u16 = 0x000f;

/// Opcodes (RFC 1035 §4.1.1, RFC 1996 §3, RFC 2136 §1.3).
pub const OPCODE_QUERY: u16 = 0;
pub const OPCODE_NOTIFY: u16 = 4;
pub const OPCODE_UPDATE: u16 = 5;

/// Flags an error reply copies from the request besides ID and opcode: RD (RFC 1035 §4.1.1)
/// and CD (RFC 4035 §3.2.2), so the client can match it to what it asked.
pub const ECHOED_FLAGS: u16 = RD | CD;

/// The longest name in wire form (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Smallest UDP payload every client accepts (RFC 1035 §2.3.4); what we advertise in the OPT
/// of an error answer, and the limit without EDNS.
pub const CLASSIC_UDP_LIMIT: usize = 512;

/// Reads a big-endian u16 at `at`; 0 when the message is too short.
#[inline]
pub fn be16(bytes: &[u8], at: usize) -> u16 {
    match bytes.get(at..at.wrapping_add(2)) {
        Some(&[high, low]) => u16::from_be_bytes([high, low]),
        _ => 0,
    }
}

/// Reads a big-endian u32 at `at`; 0 when the message is too short.
#[inline]
pub fn be32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at.wrapping_add(4)) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// True when `message` is an RFC 2136 UPDATE request (not a response).
pub fn is_update(message: &[u8]) -> bool {
    message.len() >= HEADER_LEN && be16(message, 2) & QR == 0 && opcode(be16(message, 2)) == OPCODE_UPDATE
}

/// The opcode of a message's header flags.
#[inline]
pub fn opcode(flags: u16) -> u16 {
    (flags & OPCODE_MASK) >> OPCODE_SHIFT
}

/// A response code, the 12-bit extended value (RFC 6891 §6.1.3: 4 bits in the header, 8 in
/// the OPT record).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Rcode(u16);

impl Rcode {
    pub const NOERROR: Rcode = Rcode(0);
    pub const FORMERR: Rcode = Rcode(1);
    pub const SERVFAIL: Rcode = Rcode(2);
    pub const NXDOMAIN: Rcode = Rcode(3);
    pub const NOTIMP: Rcode = Rcode(4);
    pub const REFUSED: Rcode = Rcode(5);
    /// RFC 2136 §2.2: a name that should not exist does, an RRset that should not exist
    /// does, one that should exist does not.
    pub const YXDOMAIN: Rcode = Rcode(6);
    pub const YXRRSET: Rcode = Rcode(7);
    pub const NXRRSET: Rcode = Rcode(8);
    pub const NOTAUTH: Rcode = Rcode(9);
    /// RFC 2136 §2.2: a name of the update is outside the zone it names.
    pub const NOTZONE: Rcode = Rcode(10);
    /// Needs the OPT record (extended rcode 1, header 0).
    pub const BADVERS: Rcode = Rcode(16);

    /// The codes with a metrics label of their own, in the order of their metric slots.
    pub const LABELLED: [Rcode; 8] = [
        Rcode::NOERROR,
        Rcode::FORMERR,
        Rcode::SERVFAIL,
        Rcode::NXDOMAIN,
        Rcode::NOTIMP,
        Rcode::REFUSED,
        Rcode::NOTAUTH,
        Rcode::BADVERS,
    ];

    /// Any value; only its low 12 bits can be sent.
    #[inline]
    pub const fn new(value: u16) -> Rcode {
        Rcode(value & 0x0fff)
    }

    /// The header's four rcode bits (without the OPT record's extension).
    #[inline]
    pub const fn from_flags(flags: u16) -> Rcode {
        Rcode(flags & RCODE_MASK)
    }

    #[inline]
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The four bits that go in the header.
    #[inline]
    pub const fn header_bits(self) -> u16 {
        self.0 & RCODE_MASK
    }

    /// The eight bits that go in the OPT record's TTL (RFC 6891 §6.1.3).
    #[inline]
    pub const fn extended_bits(self) -> u8 {
        (self.0 >> 4) as u8
    }

    /// The Prometheus label: the mnemonic for the codes in `LABELLED`, "other" for the rest.
    pub const fn label(self) -> &'static str {
        match self {
            Rcode::NOERROR => "NOERROR",
            Rcode::FORMERR => "FORMERR",
            Rcode::SERVFAIL => "SERVFAIL",
            Rcode::NXDOMAIN => "NXDOMAIN",
            Rcode::NOTIMP => "NOTIMP",
            Rcode::REFUSED => "REFUSED",
            Rcode::NOTAUTH => "NOTAUTH",
            Rcode::BADVERS => "BADVERS",
            _ => "other",
        }
    }
}

/// The mnemonic where it has one, the number otherwise.
impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.label() {
            "other" => write!(f, "{}", self.0),
            label => f.write_str(label),
        }
    }
}

/// Compares with a code read from the wire as a number (checkers and tests do).
impl PartialEq<u16> for Rcode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Rcode> for u16 {
    fn eq(&self, other: &Rcode) -> bool {
        *self == other.0
    }
}

/// How a message arrived or leaves; decides the size limit and truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The label in metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The question of a message (the first, at offset 12), by position: the name is read from
/// the message with `qname`, as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// Octets of QNAME, root label included.
    pub qname_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset just past QCLASS.
    pub end: usize,
}

impl Question {
    /// QNAME in wire form.
    #[inline]
    pub fn qname<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        message
            .get(HEADER_LEN..HEADER_LEN + self.qname_len)
            .unwrap_or_default()
    }

    /// The whole question (QNAME, QTYPE, QCLASS), for echoing byte for byte.
    #[inline]
    pub fn bytes<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        message.get(HEADER_LEN..self.end).unwrap_or_default()
    }
}

/// Parses the question at offset 12. The header is not looked at (callers check QDCOUNT and
/// the opcode). Compression is not accepted in a question name, as nothing earlier in the
/// message could be pointed at (RFC 1035 §4.1.4); neither are the label types 0x40 and 0x80
/// (RFC 6891 §5). The name is at most 255 octets (RFC 1035 §2.3.4).
#[inline]
pub fn parse_question(message: &[u8]) -> Option<Question> {
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*message.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        pos += len + 1;
        if pos - HEADER_LEN > MAX_NAME_LEN {
            return None;
        }
    }
    let qname_len = pos - HEADER_LEN;
    if qname_len > MAX_NAME_LEN || message.len() < pos + 4 {
        return None;
    }
    Some(Question {
        qname_len,
        qtype: be16(message, pos),
        qclass: be16(message, pos + 2),
        end: pos + 4,
    })
}

/// Offset just past the name starting at `start`, which may end in a compression pointer
/// (RFC 1035 §4.1.4). The pointer is not followed, only checked to point before `start`, so
/// no loop can form; the labels before it are at most 255 octets.
#[inline]
pub fn skip_name(message: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    loop {
        let len = *message.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => {
                pos += usize::from(len) + 1;
                if pos - start >= MAX_NAME_LEN {
                    return None;
                }
            }
            0xC0..=0xFF => {
                let low = *message.get(pos + 1)?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                return (target < start).then_some(pos + 2);
            }
            // 0x40 and 0x80: extended and reserved label types (RFC 6891 §5).
            _ => return None,
        }
    }
}

/// Reads a possibly compressed name at `start`: the name uncompressed and lowercased, and
/// the offset just past it in place. Each pointer must point before the label that holds it,
/// so following them ends; the name is at most 255 octets.
pub fn read_name(message: &[u8], start: usize) -> Option<(Vec<u8>, usize)> {
    read_name_cased(message, start, true)
}

/// As `read_name`, keeping the case of the labels as sent (for data a secondary stores).
pub fn read_name_as_sent(message: &[u8], start: usize) -> Option<(Vec<u8>, usize)> {
    read_name_cased(message, start, false)
}

fn read_name_cased(message: &[u8], start: usize, lowercase: bool) -> Option<(Vec<u8>, usize)> {
    let mut name = Vec::new();
    let mut end = None;
    let mut pos = start;
    let mut limit = start;
    loop {
        let len = *message.get(pos)?;
        match len {
            0 => {
                name.push(0);
                return Some((name, end.unwrap_or(pos + 1)));
            }
            1..=63 => {
                let label = message.get(pos + 1..pos + 1 + usize::from(len))?;
                name.push(len);
                if lowercase {
                    name.extend(label.iter().map(u8::to_ascii_lowercase));
                } else {
                    name.extend_from_slice(label);
                }
                if name.len() >= MAX_NAME_LEN {
                    return None;
                }
                pos += usize::from(len) + 1;
            }
            0xC0..=0xFF => {
                let target = usize::from(u16::from_be_bytes([len & 0x3f, *message.get(pos + 1)?]));
                if target >= limit {
                    return None;
                }
                end.get_or_insert(pos + 2);
                limit = target;
                pos = target;
            }
            _ => return None,
        }
    }
}

/// One resource record's position in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAt {
    /// Where the owner name starts.
    pub start: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Where the RDATA starts.
    pub rdata: usize,
    /// Offset just past the record.
    pub end: usize,
}

impl RecordAt {
    /// True when the owner is the root name (one octet), as an OPT record's must be.
    pub fn owner_is_root(&self) -> bool {
        self.rdata - 10 - self.start == 1
    }
}

/// Reads the record at `start` (owner, type, class, TTL, RDLENGTH), checking that its RDATA
/// is within the message.
#[inline]
pub fn read_record(message: &[u8], start: usize) -> Option<RecordAt> {
    let after = skip_name(message, start)?;
    let fixed = message.get(after..after + 10)?;
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let rdata = after + 10;
    if message.len() < rdata + rdlen {
        return None;
    }
    Some(RecordAt {
        start,
        rtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        class: u16::from_be_bytes([fixed[2], fixed[3]]),
        ttl: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        rdata,
        end: rdata + rdlen,
    })
}

/// Offset just past `count` records starting at `pos`.
pub fn skip_records(message: &[u8], mut pos: usize, count: usize) -> Option<usize> {
    for _ in 0..count {
        pos = read_record(message, pos)?.end;
    }
    Some(pos)
}

/// Where SERIAL starts in SOA RDATA: MNAME and RNAME come first, then five 32-bit fields
/// SERIAL REFRESH RETRY EXPIRE MINIMUM (RFC 1035 §3.3.13), so it is 20 octets from the end.
/// `None` when the RDATA is shorter than those fields.
#[inline]
pub fn soa_serial_offset(rdata: &[u8]) -> Option<usize> {
    rdata.len().checked_sub(20)
}

/// SERIAL of SOA RDATA (names uncompressed, as stored and as the zone files give them).
#[inline]
pub fn soa_serial(rdata: &[u8]) -> Option<u32> {
    soa_serial_offset(rdata).map(|at| be32(rdata, at))
}

/// MINIMUM of SOA RDATA, the negative-caching TTL bound (RFC 2308 §4).
#[inline]
pub fn soa_minimum(rdata: &[u8]) -> Option<u32> {
    soa_serial_offset(rdata).map(|_| be32(rdata, rdata.len() - 4))
}

/// Replaces SERIAL in SOA RDATA; false (nothing changed) when the RDATA is too short.
pub fn set_soa_serial(rdata: &mut [u8], serial: u32) -> bool {
    match soa_serial_offset(rdata) {
        Some(at) => {
            rdata[at..at + 4].copy_from_slice(&serial.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Compares two uncompressed wire names in DNSSEC canonical order (RFC 4034 §6.1): label by
/// label from the rightmost, each label as lowercased octets, a shorter label (or name) first.
pub fn canonical_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut x, mut y) = ([0u8; CANONICAL_KEY_MAX], [0u8; CANONICAL_KEY_MAX]);
    let (x_len, y_len) = (canonical_key(a, &mut x), canonical_key(b, &mut y));
    x[..x_len].cmp(&y[..y_len])
}

/// Octets `canonical_key` may write for a name of at most 255 octets: every octet escaped
/// (twice its length) and a terminator per label.
pub const CANONICAL_KEY_MAX: usize = 2 * MAX_NAME_LEN + 128;

/// Writes into `out` a key whose byte order is the canonical order of wire names (RFC 4034
/// §6.1), so that a sorted table of keys is searched with plain slice comparisons: the labels
/// from the rightmost, each lowercased, octets 0 and 1 escaped as `1, b`, each label ended by
/// a 0 (which sorts a label before every longer one it begins). Returns the length.
pub fn canonical_key(name: &[u8], out: &mut [u8; CANONICAL_KEY_MAX]) -> usize {
    let (starts, count) = label_starts(name);
    let mut len = 0;
    for &at in starts[..count].iter().rev() {
        for &b in label(name, at) {
            let b = b.to_ascii_lowercase();
            if b <= 1 {
                out[len] = 1;
                len += 1;
            }
            out[len] = b;
            len += 1;
        }
        out[len] = 0;
        len += 1;
    }
    len
}

/// The label that starts at `at` of a wire name, without its length octet.
fn label(name: &[u8], at: u8) -> &[u8] {
    let at = usize::from(at);
    let len = usize::from(name.get(at).copied().unwrap_or(0));
    name.get(at + 1..at + 1 + len).unwrap_or_default()
}

/// Offsets of a wire name's labels (root excluded), at most 128 of them (255 octets).
fn label_starts(name: &[u8]) -> ([u8; 128], usize) {
    let mut starts = [0u8; 128];
    let (mut pos, mut n) = (0usize, 0usize);
    while let Some(&len) = name.get(pos) {
        if len == 0 || n == starts.len() || pos > 255 {
            break;
        }
        starts[n] = pos as u8;
        n += 1;
        pos += usize::from(len) + 1;
    }
    (starts, n)
}

/// Octets of an NSEC3 hash with algorithm 1, SHA-1 (RFC 5155 §11).
pub const NSEC3_HASH_LEN: usize = 20;

/// The NSEC3 hash (RFC 5155 §5) of a lowercased wire name with the RFC 9276 parameters: no
/// additional iterations and an empty salt, so one SHA-1 over the name. No allocation: the
/// request path hashes the names it must prove absent.
pub fn nsec3_hash(key: &[u8]) -> [u8; NSEC3_HASH_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut out = [0u8; NSEC3_HASH_LEN];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The base32hex form (RFC 4648 §7, lowercase, no padding) of an NSEC3 hash: the first
/// label of its NSEC3 owner name (RFC 5155 §3).
pub fn base32hex(hash: &[u8; NSEC3_HASH_LEN]) -> [u8; 32] {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = [0u8; 32];
    for (group, chars) in hash.chunks(5).zip(out.chunks_mut(8)) {
        let bits = group.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        for (i, c) in chars.iter_mut().enumerate() {
            *c = DIGITS[((bits >> (35 - 5 * i)) & 31) as usize];
        }
    }
    out
}

/// The NSEC3 hash a base32hex label stands for (either case), or None if it is not one.
pub fn base32hex_decode(label: &[u8]) -> Option<[u8; NSEC3_HASH_LEN]> {
    if label.len() != 32 {
        return None;
    }
    let mut out = [0u8; NSEC3_HASH_LEN];
    for (chars, group) in label.chunks(8).zip(out.chunks_mut(5)) {
        let mut bits = 0u64;
        for &c in chars {
            let digit = match c.to_ascii_lowercase() {
                d @ b'0'..=b'9' => d - b'0',
                l @ b'a'..=b'v' => l - b'a' + 10,
                _ => return None,
            };
            bits = (bits << 5) | u64::from(digit);
        }
        for (i, b) in group.iter_mut().enumerate() {
            *b = (bits >> (32 - 8 * i)) as u8;
        }
    }
    Some(out)
}

/// Seconds since the Unix epoch (0 if the clock is before it): TSIG times (RFC 8945 §4.3.3)
/// and timestamps.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes into `out` (cleared first) an error reply to `query`: header, the question when
/// given (echoed byte for byte), and an OPT record when given (RFC 6891 §6.1.1: a request
/// with OPT gets one back, errors included). The header carries the request's ID and opcode,
/// QR, the request flags selected by `echoed` (`ECHOED_FLAGS`, or 0 to clear them all), and
/// the low bits of `rcode`; no AA, no records.
pub fn error_reply(
    query: &[u8],
    out: &mut Vec<u8>,
    question: Option<&Question>,
    rcode: Rcode,
    echoed: u16,
    opt: Option<&OptReply>,
) {
    out.clear();
    out.extend_from_slice(&be16(query, 0).to_be_bytes());
    let flags = QR | (be16(query, 2) & (OPCODE_MASK | echoed)) | rcode.header_bits();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(opt.is_some()).to_be_bytes());
    if let Some(question) = question {
        out.extend_from_slice(question.bytes(query));
    }
    if let Some(opt) = opt {
        put_opt(out, opt, rcode);
    }
}

#[cfg(test)]
mod tests {
    /// Labels of 63, 63, 63 and `last` octets: `last + 193` octets with the root label.
    fn long_name(last: u8) -> Vec<u8> {
        let mut name = Vec::new();
        for len in [63, 63, 63, last] {
            name.push(len);
            name.extend(std::iter::repeat_n(b'a', usize::from(len)));
        }
        name.push(0);
        name
    }

    #[test]
    fn names_are_at_most_255_octets_root_label_included() {
        // Found by the request fuzzer: a TSIG key name of 256 octets was read, and echoed in
        // the BADKEY answer, which no client could then parse (RFC 1035 §3.1).
        let longest = long_name(61);
        assert_eq!(longest.len(), 255);
        assert_eq!(read_name(&longest, 0), Some((longest.clone(), 255)));
        assert_eq!(skip_name(&longest, 0), Some(255));
        let too_long = long_name(62);
        assert_eq!(too_long.len(), 256);
        assert_eq!(read_name(&too_long, 0), None);
        assert_eq!(skip_name(&too_long, 0), None);
        // The same 256 octets reached through a pointer.
        let mut compressed = too_long[..64].to_vec();
        compressed.extend_from_slice(&too_long[64..]);
        let pointer_at = compressed.len();
        compressed.extend_from_slice(&too_long[..64]);
        compressed.extend_from_slice(&[0xc0, 64]);
        assert_eq!(read_name(&compressed, pointer_at), None);
    }

    #[test]
    fn nsec3_owner_labels_match_an_independent_sha1_and_base32hex() {
        use super::{base32hex, base32hex_decode, nsec3_hash};
        assert_eq!(base32hex_decode(b"3msev9usmd4br9s97v51r2tdvmr9iqo!"), None);
        // Computed with Python's hashlib and base64.b32hexencode.
        for (name, label) in [
            (&b"\x07example\x00"[..], "3msev9usmd4br9s97v51r2tdvmr9iqo1"),
            (&b"\x01a\x07example\x00"[..], "6cd522290vma0nr8lqu1ivtcofj94rga"),
        ] {
            assert_eq!(std::str::from_utf8(&base32hex(&nsec3_hash(name))), Ok(label));
            assert_eq!(base32hex_decode(label.as_bytes()), Some(nsec3_hash(name)));
        }
    }

    #[test]
    fn canonical_order_is_rfc_4034s() {
        use super::{CANONICAL_KEY_MAX, canonical_cmp, canonical_key};
        // RFC 4034 §6.1's example, in order.
        let names: [&[u8]; 8] = [
            b"\x07example\x00",
            b"\x01a\x07example\x00",
            b"\x08yljkjljk\x01a\x07example\x00",
            b"\x01Z\x01a\x07example\x00",
            b"\x04zABC\x01a\x07EXAMPLE\x00",
            b"\x01z\x07example\x00",
            b"\x01\x01\x01z\x07example\x00",
            b"\x01*\x01z\x07example\x00",
        ];
        for pair in names.windows(2) {
            assert!(canonical_cmp(pair[0], pair[1]).is_lt(), "{pair:?}");
            assert!(canonical_cmp(pair[1], pair[0]).is_gt());
        }
        assert!(canonical_cmp(b"\x01A\x00", b"\x01a\x00").is_eq());
        // The byte keys sort the same way, escaped octets included.
        let key = |name: &[u8]| {
            let mut out = [0u8; CANONICAL_KEY_MAX];
            let len = canonical_key(name, &mut out);
            out[..len].to_vec()
        };
        for pair in names.windows(2) {
            assert!(key(pair[0]) < key(pair[1]), "{pair:?}");
        }
        assert!(key(b"\x01\x00\x00") < key(b"\x01\x01\x00"));
        assert!(key(b"\x01\x01\x00") < key(b"\x01\x02\x00"));
        assert!(key(b"\x01a\x00") < key(b"\x02a\x00\x00"));
    }

    use super::*;

    fn query(name: &[u8]) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x30, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        q
    }

    #[test]
    fn integer_readers_are_bounds_checked() {
        let bytes = [1, 2, 3, 4, 5];
        assert_eq!(be16(&bytes, 3), 0x0405);
        assert_eq!(be16(&bytes, 4), 0);
        assert_eq!(be16(&bytes, usize::MAX), 0);
        assert_eq!(be32(&bytes, 1), 0x0203_0405);
        assert_eq!(be32(&bytes, 2), 0);
        assert_eq!(be32(&bytes, usize::MAX - 1), 0);
    }

    #[test]
    fn rcode_parts_and_labels() {
        assert_eq!(Rcode::BADVERS.header_bits(), 0);
        assert_eq!(Rcode::BADVERS.extended_bits(), 1);
        assert_eq!(Rcode::REFUSED.label(), "REFUSED");
        assert_eq!(Rcode::new(23).label(), "other");
        assert_eq!(Rcode::new(23).to_string(), "23");
        assert_eq!(Rcode::from_flags(0x8183), Rcode::NXDOMAIN);
        assert_eq!(5u16, Rcode::REFUSED);
        assert_eq!(Rcode::REFUSED, 5u16);
        for (slot, rcode) in Rcode::LABELLED.iter().enumerate() {
            assert_ne!(rcode.label(), "other", "slot {slot}");
        }
    }

    #[test]
    fn questions() {
        let q = query(b"\x03www\x07example\x00");
        let question = parse_question(&q).expect("parses");
        assert_eq!(question.qname(&q), b"\x03www\x07example\x00");
        assert_eq!((question.qtype, question.qclass, question.end), (1, 1, q.len()));
        assert_eq!(parse_question(&q[..q.len() - 1]), None, "QCLASS cut");
        assert_eq!(parse_question(&query(b"\xc0\x0c")), None, "compressed");
        assert_eq!(parse_question(&query(b"\x40\x00")), None, "extended label type");
        let name = |labels: [u8; 4]| {
            let mut wire = Vec::new();
            for len in labels {
                wire.push(len);
                wire.extend(std::iter::repeat_n(b'a', usize::from(len)));
            }
            wire.push(0);
            wire
        };
        assert_eq!(
            parse_question(&query(&name([63, 63, 63, 63]))),
            None,
            "257 octets"
        );
        assert_eq!(
            parse_question(&query(&name([63, 63, 63, 62]))),
            None,
            "256 octets"
        );
        let longest = query(&name([63, 63, 63, 61]));
        assert_eq!(parse_question(&longest).map(|q| q.qname_len), Some(255));
    }

    #[test]
    fn names_are_skipped_and_read() {
        // "example." at 12, "www" + pointer to 12 at 21.
        let mut m = vec![0; 12];
        m.extend_from_slice(b"\x07example\x00\x03WWW\xc0\x0c");
        assert_eq!(skip_name(&m, 12), Some(21));
        assert_eq!(skip_name(&m, 21), Some(27));
        assert_eq!(read_name(&m, 21), Some((b"\x03www\x07example\x00".to_vec(), 27)));
        // A pointer to itself or forwards, or cut in half.
        let mut looped = m.clone();
        looped.extend_from_slice(&[0xc0, 27]);
        assert_eq!(skip_name(&looped, 27), None);
        assert_eq!(read_name(&looped, 27), None);
        assert_eq!(skip_name(&m[..26], 21), None);
        assert_eq!(skip_name(&m, 40), None);
    }

    #[test]
    fn soa_fields() {
        let mut rdata = b"\x02ns\x00\x02hm\x00".to_vec();
        for field in [20_260_101_u32, 3600, 600, 86400, 300] {
            rdata.extend_from_slice(&field.to_be_bytes());
        }
        assert_eq!(soa_serial(&rdata), Some(20_260_101));
        assert_eq!(soa_minimum(&rdata), Some(300));
        assert!(set_soa_serial(&mut rdata, 7));
        assert_eq!(soa_serial(&rdata), Some(7));
        assert_eq!(soa_serial(&rdata[..19]), None);
        assert_eq!(soa_minimum(&rdata[..19]), None);
        assert!(!set_soa_serial(&mut rdata[..3], 1));
    }

    #[test]
    fn error_replies_echo_id_opcode_and_chosen_flags() {
        let mut q = query(b"\x07example\x00");
        q[2] = 0x29; // opcode 5, RD
        q[3] = 0x30; // AD, CD
        let question = parse_question(&q).expect("parses");
        let mut out = Vec::new();
        error_reply(&q, &mut out, Some(&question), Rcode::REFUSED, ECHOED_FLAGS, None);
        assert_eq!(&out[..12], &[0xab, 0xcd, 0xa9, 0x15, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[12..], question.bytes(&q));
        error_reply(&q, &mut out, None, Rcode::NOTIMP, 0, None);
        assert_eq!(out, [0xab, 0xcd, 0xa8, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Too short to have an ID: zeros, no panic.
        error_reply(&q[..1], &mut out, None, Rcode::FORMERR, ECHOED_FLAGS, None);
        assert_eq!(out.len(), HEADER_LEN);
    }
}
