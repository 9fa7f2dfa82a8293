//! TSIG (RFC 8945) with HMAC-SHA256 and HMAC-SHA512: keys, verifying and signing.
//!
//! Requests are verified; responses signed (every message of a multi-message transfer, and
//! answers to signed ordinary queries), and so are our NOTIFYs. Key material is loaded from
//! files named in the config and never printed: `TsigKey`'s Debug shows the name and algorithm
//! only.

use std::path::Path;

use ring::hmac;

use crate::wire::{self, be16, read_name, rtype, unix_now};
use crate::zone::name::Name;

/// The widest time window a request is accepted in, whatever fudge it asks for (RFC 8945
/// §5.2.3 recommends 300 s).
pub const MAX_FUDGE: u16 = 300;

/// TSIG error codes (RFC 8945 §3, in the TSIG RR's Error field).
pub const BADSIG: u16 = 16;
pub const BADKEY: u16 = 17;
pub const BADTIME: u16 = 18;
pub const BADTRUNC: u16 = 22;

/// Allowed clock difference when the request does not say (RFC 8945 §10 recommends 300 s).
pub const DEFAULT_FUDGE: u16 = 300;

/// A supported MAC algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    HmacSha512,
}

impl Algorithm {
    pub fn parse(text: &str) -> Option<Algorithm> {
        match text.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(Algorithm::HmacSha256),
            "hmac-sha512" => Some(Algorithm::HmacSha512),
            _ => None,
        }
    }

    /// The algorithm's name in wire form (lowercase, RFC 8945 §6).
    pub fn wire_name(self) -> &'static [u8] {
        match self {
            Algorithm::HmacSha256 => b"\x0bhmac-sha256\x00",
            Algorithm::HmacSha512 => b"\x0bhmac-sha512\x00",
        }
    }

    /// Octets of a full MAC.
    fn mac_len(self) -> usize {
        match self {
            Algorithm::HmacSha256 => 32,
            Algorithm::HmacSha512 => 64,
        }
    }

    fn ring(self) -> hmac::Algorithm {
        match self {
            Algorithm::HmacSha256 => hmac::HMAC_SHA256,
            Algorithm::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

/// A shared secret.
#[derive(Clone)]
pub struct TsigKey {
    /// Lowercased wire name of the key.
    pub name: Name,
    pub algorithm: Algorithm,
    key: hmac::Key,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl TsigKey {
    pub fn new(name: &Name, algorithm: Algorithm, secret: &[u8]) -> TsigKey {
        TsigKey {
            name: Name::from_wire_unchecked(&name.key()),
            algorithm,
            key: hmac::Key::new(algorithm.ring(), secret),
        }
    }

    /// Reads the secret from a file: either the bare base64 secret, or BIND's `tsig-keygen`
    /// output (`secret "…";`). Errors never include the secret.
    /// Octets a TSIG RR signed with this key adds to a message (no Other Data): room an
    /// answer keeps free so that its signature fits the client's size limit.
    pub fn record_len(&self) -> usize {
        let rdata = self.algorithm.wire_name().len() + 16 + self.algorithm.mac_len();
        self.name.wire().len() + 10 + rdata
    }

    pub fn from_file(name: &Name, algorithm: Algorithm, path: &Path) -> Result<TsigKey, String> {
        // A key file is a line or a `tsig-keygen` stanza; 64 KiB bounds a wrong path.
        let bytes = crate::file_set::read(path, 64 << 10).map_err(|e| format!("key file: {e}"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| format!("key file {} is not UTF-8 text", path.display()))?;
        let encoded = match text.find("secret") {
            Some(at) => text[at + 6..].split('"').nth(1).unwrap_or("").to_string(),
            None => text.trim().to_string(),
        };
        let secret = decode_base64(&encoded)
            .ok_or_else(|| format!("key file {} holds no valid base64 secret", path.display()))?;
        if secret.len() < 16 {
            return Err(format!("key in {} is shorter than 16 octets", path.display()));
        }
        Ok(TsigKey::new(name, algorithm, &secret))
    }
}

/// Request MACs remembered against replay, at most (a key's request rate bounds how fast the
/// memory fills; a window is 2 × `MAX_FUDGE`).
const MAX_REMEMBERED_MACS: usize = 65_536;

/// The request MACs already accepted, each until it is outside every time window. RFC 8945
/// §5.2.3 leaves replay defence to the server (the time window alone allows a captured request
/// to be sent again for up to 2 × fudge); anything that changes state or hands out the zone
/// (UPDATE, AXFR/IXFR) accepts each signed request once.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    /// Request MAC -> Unix time after which it is outside every TSIG window.
    seen: std::collections::HashMap<Box<[u8]>, u64>,
}

impl ReplayGuard {
    /// Remembers a verified request MAC; false when it was seen before (a replay), or when
    /// the memory is full of live entries (refused rather than forgotten, which would allow
    /// replays).
    pub fn first_use(&mut self, mac: &[u8], now: u64) -> bool {
        if self.seen.len() >= MAX_REMEMBERED_MACS {
            self.seen.retain(|_, until| *until >= now);
        }
        if self.seen.get(mac).is_some_and(|until| *until >= now) {
            return false;
        }
        if self.seen.len() >= MAX_REMEMBERED_MACS {
            return false;
        }
        self.seen.insert(mac.into(), now + 2 * u64::from(MAX_FUDGE));
        true
    }
}

/// Decodes standard base64 (padding optional, whitespace ignored).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The message's records could not be walked (answer FORMERR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed records section")]
pub struct Malformed;

/// A TSIG record found at the end of a message.
#[derive(Debug, Clone)]
pub struct TsigRecord {
    /// Offset where the TSIG RR starts (the message without it ends here).
    pub start: usize,
    /// Lowercased key name (wire).
    pub key_name: Vec<u8>,
    pub algorithm: Vec<u8>,
    pub time_signed: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub original_id: u16,
    pub error: u16,
}

/// Finds and parses the TSIG record, which must be the last record of the additional
/// section (RFC 8945 §5.1). `records_start` is the offset after the question; the counts come
/// from the header. Returns `Ok(None)` when there is no TSIG.
pub fn find(message: &[u8], records_start: usize) -> Result<Option<TsigRecord>, Malformed> {
    let total =
        usize::from(be16(message, 6)) + usize::from(be16(message, 8)) + usize::from(be16(message, 10));
    if total == 0 {
        return Ok(None);
    }
    let mut pos = records_start;
    let mut last = None;
    for index in 0..total {
        let record = wire::read_record(message, pos).ok_or(Malformed)?;
        pos = record.end;
        if record.rtype == rtype::TSIG {
            if index != total - 1 {
                return Err(Malformed); // TSIG not last: FORMERR
            }
            last = Some(record);
        }
    }
    let Some(record) = last else {
        return Ok(None);
    };
    let (key_name, _) = read_name(message, record.start).ok_or(Malformed)?;
    let (algorithm, after_alg) = read_name(message, record.rdata).ok_or(Malformed)?;
    let rest = message.get(after_alg..record.end).ok_or(Malformed)?;
    if rest.len() < 10 {
        return Err(Malformed);
    }
    let time_signed = u64::from_be_bytes([0, 0, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5]]);
    let fudge = u16::from_be_bytes([rest[6], rest[7]]);
    let mac_len = usize::from(u16::from_be_bytes([rest[8], rest[9]]));
    let mac = rest.get(10..10 + mac_len).ok_or(Malformed)?.to_vec();
    let tail = rest.get(10 + mac_len..).ok_or(Malformed)?;
    if tail.len() < 6 {
        return Err(Malformed);
    }
    let original_id = u16::from_be_bytes([tail[0], tail[1]]);
    let error = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Some(TsigRecord {
        start: record.start,
        key_name,
        algorithm,
        time_signed,
        fudge,
        mac,
        original_id,
        error,
    }))
}

/// The outcome of checking a request's TSIG.
#[derive(Debug)]
pub enum Verified<'k> {
    /// Signed with `key` and valid; `request_mac` seeds the response MAC.
    Valid {
        key: &'k TsigKey,
        request_mac: Vec<u8>,
        time_signed: u64,
    },
    /// Signed but not acceptable: answer NOTAUTH with this TSIG error (RFC 8945 §5.2).
    Rejected {
        error: u16,
        key: Option<&'k TsigKey>,
        record: TsigRecord,
    },
}

/// Verifies a request's TSIG against `keys` (RFC 8945 §5.2).
pub fn verify<'k>(message: &[u8], record: TsigRecord, keys: &'k [TsigKey], now: u64) -> Verified<'k> {
    let Some(key) = keys.iter().find(|k| k.name.wire() == record.key_name.as_slice()) else {
        return Verified::Rejected {
            error: BADKEY,
            key: None,
            record,
        };
    };
    if record.algorithm != key.algorithm.wire_name() {
        return Verified::Rejected {
            error: BADKEY,
            key: None,
            record,
        };
    }
    let mut context = hmac::Context::with_key(&key.key);
    let mut unsigned = message[..record.start].to_vec();
    // The MAC covers the message as it was before the TSIG was added: original ID, one
    // fewer additional record.
    unsigned[0..2].copy_from_slice(&record.original_id.to_be_bytes());
    let arcount = u16::from_be_bytes([unsigned[10], unsigned[11]]).saturating_sub(1);
    unsigned[10..12].copy_from_slice(&arcount.to_be_bytes());
    context.update(&unsigned);
    update_variables(
        &mut context,
        key,
        record.time_signed,
        record.fudge,
        record.error,
        &[],
    );
    let expected = context.sign();
    // RFC 8945 §5.2.2.1: truncated MACs shorter than half the output (or 10 octets) are refused.
    let full = expected.as_ref();
    let min_len = (full.len() / 2).max(10);
    if record.mac.len() > full.len() || record.mac.len() < min_len {
        return Verified::Rejected {
            error: BADSIG,
            key: None,
            record,
        };
    }
    if !constant_time_eq(&full[..record.mac.len()], &record.mac) {
        return Verified::Rejected {
            error: BADSIG,
            key: None,
            record,
        };
    }
    if record.mac.len() < full.len() {
        // We do not sign with truncated MACs; tell the client (RFC 8945 §5.2.2.1).
        return Verified::Rejected {
            error: BADTRUNC,
            key: Some(key),
            record,
        };
    }
    // RFC 8945 §5.2.3: the window is the request's fudge, but never more than ours (300 s,
    // the RFC's recommendation): a client cannot widen it to replay a request for hours.
    if now.abs_diff(record.time_signed) > u64::from(record.fudge.min(MAX_FUDGE)) {
        return Verified::Rejected {
            error: BADTIME,
            key: Some(key),
            record,
        };
    }
    Verified::Valid {
        key,
        request_mac: record.mac,
        time_signed: record.time_signed,
    }
}

/// Compares MACs without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn update_variables(
    context: &mut hmac::Context,
    key: &TsigKey,
    time: u64,
    fudge: u16,
    error: u16,
    other: &[u8],
) {
    context.update(key.name.wire());
    context.update(&rtype::CLASS_ANY.to_be_bytes());
    context.update(&0u32.to_be_bytes());
    context.update(key.algorithm.wire_name());
    context.update(&time.to_be_bytes()[2..]);
    context.update(&fudge.to_be_bytes());
    context.update(&error.to_be_bytes());
    context.update(&(other.len() as u16).to_be_bytes());
    context.update(other);
}

/// Signs successive messages of one exchange: the first covers the request MAC (if any),
/// later ones the previous MAC with timers only (RFC 8945 §5.3.1).
#[derive(Debug)]
pub struct Signer<'k> {
    key: &'k TsigKey,
    prior_mac: Vec<u8>,
    first: bool,
}

impl<'k> Signer<'k> {
    /// `request_mac` is empty for a request we originate (e.g. NOTIFY).
    pub fn new(key: &'k TsigKey, request_mac: Vec<u8>) -> Signer<'k> {
        Signer {
            key,
            prior_mac: request_mac,
            first: true,
        }
    }

    /// Octets the next signature adds to a message.
    pub fn record_len(&self) -> usize {
        self.key.record_len()
    }

    /// The MAC of the last message signed (a request's, to check its answers with).
    pub fn last_mac(&self) -> &[u8] {
        &self.prior_mac
    }

    /// Appends a TSIG RR to `message` (and counts it in ARCOUNT), signed now.
    pub fn sign(&mut self, message: &mut Vec<u8>, error: u16, other: &[u8]) {
        self.sign_at(message, error, other, unix_now());
    }

    /// As `sign`, with `time` in the Time Signed field: a BADTIME answer carries the client's
    /// time there and ours in Other Data (RFC 8945 §5.2.3).
    pub fn sign_at(&mut self, message: &mut Vec<u8>, error: u16, other: &[u8], time: u64) {
        let mut context = hmac::Context::with_key(&self.key.key);
        if !self.prior_mac.is_empty() {
            context.update(&(self.prior_mac.len() as u16).to_be_bytes());
            context.update(&self.prior_mac);
        }
        context.update(message);
        if self.first {
            update_variables(&mut context, self.key, time, DEFAULT_FUDGE, error, other);
        } else {
            context.update(&time.to_be_bytes()[2..]);
            context.update(&DEFAULT_FUDGE.to_be_bytes());
        }
        let mac = context.sign();
        self.first = false;
        self.prior_mac = mac.as_ref().to_vec();
        let id = [message[0], message[1]];
        append_tsig(
            message,
            self.key.name.wire(),
            self.key.algorithm.wire_name(),
            time,
            mac.as_ref(),
            id,
            error,
            other,
        );
    }
}

/// Checks the answers to a request we signed, message by message (RFC 8945 §5.3.1): the first
/// covers the request MAC, each later signed one the previous MAC and every message since;
/// up to 99 unsigned messages may come between, and the last must be signed.
#[derive(Debug)]
pub struct ResponseVerifier<'k> {
    key: &'k TsigKey,
    prior_mac: Vec<u8>,
    first: bool,
    /// Unsigned messages since the last signed one, as they count in the next MAC.
    pending: Vec<u8>,
    unsigned_run: usize,
}

impl<'k> ResponseVerifier<'k> {
    pub fn new(key: &'k TsigKey, request_mac: &[u8]) -> ResponseVerifier<'k> {
        ResponseVerifier {
            key,
            prior_mac: request_mac.to_vec(),
            first: true,
            pending: Vec::new(),
            unsigned_run: 0,
        }
    }

    /// Checks one answer message (`records_start`: the offset after its question).
    pub fn check(&mut self, message: &[u8], records_start: usize, now: u64) -> Result<(), String> {
        let record =
            find(message, records_start).map_err(|_| "an answer's records cannot be read".to_string())?;
        let Some(record) = record else {
            if self.first {
                return Err("the first answer is not signed (TSIG missing)".into());
            }
            self.unsigned_run += 1;
            if self.unsigned_run > 99 {
                return Err("more than 99 answers in a row without TSIG".into());
            }
            self.pending.extend_from_slice(message);
            return Ok(());
        };
        if record.key_name != self.key.name.wire() || record.algorithm != self.key.algorithm.wire_name() {
            return Err("an answer is signed with another key".into());
        }
        if record.error != 0 {
            return Err(format!(
                "the primary rejected our signature (TSIG error {})",
                record.error
            ));
        }
        let mut context = hmac::Context::with_key(&self.key.key);
        context.update(&(self.prior_mac.len() as u16).to_be_bytes());
        context.update(&self.prior_mac);
        context.update(&self.pending);
        let mut unsigned = message[..record.start].to_vec();
        unsigned[0..2].copy_from_slice(&record.original_id.to_be_bytes());
        let arcount = u16::from_be_bytes([unsigned[10], unsigned[11]]).saturating_sub(1);
        unsigned[10..12].copy_from_slice(&arcount.to_be_bytes());
        context.update(&unsigned);
        if self.first {
            // The other data of a signed answer is empty unless BADTIME, refused above.
            update_variables(
                &mut context,
                self.key,
                record.time_signed,
                record.fudge,
                record.error,
                &[],
            );
        } else {
            context.update(&record.time_signed.to_be_bytes()[2..]);
            context.update(&record.fudge.to_be_bytes());
        }
        let expected = context.sign();
        if !constant_time_eq(expected.as_ref(), &record.mac) {
            return Err("an answer's TSIG does not verify (BADSIG)".into());
        }
        if now.abs_diff(record.time_signed) > u64::from(record.fudge.min(MAX_FUDGE)) {
            return Err("an answer's TSIG time is outside the fudge (BADTIME)".into());
        }
        self.prior_mac = record.mac;
        self.first = false;
        self.pending.clear();
        self.unsigned_run = 0;
        Ok(())
    }

    /// True when the last message checked was signed, as the last of an exchange must be.
    pub fn ends_signed(&self) -> bool {
        !self.first && self.pending.is_empty()
    }
}

/// Ends the answer to a request whose TSIG was rejected (RFC 8945 §5.2; `message` holds the
/// NOTAUTH header and question): the TSIG error, signed only when the key and MAC were good
/// (BADTIME, BADTRUNC), unsigned otherwise.
pub fn append_rejection(message: &mut Vec<u8>, error: u16, key: Option<&TsigKey>, record: &TsigRecord) {
    match key {
        Some(key) => {
            let mut signer = Signer::new(key, record.mac.clone());
            if error == BADTIME {
                // RFC 8945 §5.2.3: the client's time in Time Signed, ours in Other Data.
                let other = unix_now().to_be_bytes()[2..].to_vec();
                signer.sign_at(message, error, &other, record.time_signed);
            } else {
                signer.sign(message, error, &[]);
            }
        }
        None => append_unsigned(message, record, error),
    }
}

/// Appends an unsigned TSIG RR (for BADKEY/BADSIG answers, RFC 8945 §5.3.2).
pub fn append_unsigned(message: &mut Vec<u8>, record: &TsigRecord, error: u16) {
    let id = [message[0], message[1]];
    append_tsig(
        message,
        &record.key_name,
        &record.algorithm,
        record.time_signed,
        &[],
        id,
        error,
        &[],
    );
}

#[allow(clippy::too_many_arguments)]
fn append_tsig(
    message: &mut Vec<u8>,
    key_name: &[u8],
    algorithm: &[u8],
    time: u64,
    mac: &[u8],
    id: [u8; 2],
    error: u16,
    other: &[u8],
) {
    message.extend_from_slice(key_name);
    message.extend_from_slice(&rtype::TSIG.to_be_bytes());
    message.extend_from_slice(&rtype::CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    let rdlen = algorithm.len() + 6 + 2 + 2 + mac.len() + 2 + 2 + 2 + other.len();
    message.extend_from_slice(&(rdlen as u16).to_be_bytes());
    message.extend_from_slice(algorithm);
    message.extend_from_slice(&time.to_be_bytes()[2..]);
    message.extend_from_slice(&DEFAULT_FUDGE.to_be_bytes());
    message.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    message.extend_from_slice(mac);
    message.extend_from_slice(&id);
    message.extend_from_slice(&error.to_be_bytes());
    message.extend_from_slice(&(other.len() as u16).to_be_bytes());
    message.extend_from_slice(other);
    let arcount = u16::from_be_bytes([message[10], message[11]]).wrapping_add(1);
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TsigKey {
        TsigKey::new(
            &Name::parse("Transfer-Key.", None).expect("name"),
            Algorithm::HmacSha256,
            b"0123456789abcdef0123456789abcdef",
        )
    }

    fn query() -> Vec<u8> {
        // ID 0x4242, one question: example. AXFR IN.
        let mut q = vec![0x42, 0x42, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x00\x00\xfc\x00\x01");
        q
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = key();
        let mut message = query();
        Signer::new(&key, Vec::new()).sign(&mut message, 0, &[]);
        let record = find(&message, 12 + 13).expect("parses").expect("has TSIG");
        assert_eq!(record.key_name, b"\x0ctransfer-key\x00");
        match verify(&message, record, std::slice::from_ref(&key), unix_now()) {
            Verified::Valid { request_mac, .. } => assert_eq!(request_mac.len(), 32),
            other => panic!("expected valid, got {other:?}"),
        }
    }

    #[test]
    fn rejects_wrong_key_bad_mac_and_time() {
        let key = key();
        let other = TsigKey::new(
            &Name::parse("transfer-key.", None).expect("name"),
            Algorithm::HmacSha256,
            b"another secret of 32 octets long",
        );
        let mut message = query();
        Signer::new(&other, Vec::new()).sign(&mut message, 0, &[]);
        let record = find(&message, 25).expect("parses").expect("has TSIG");
        assert!(matches!(
            verify(&message, record.clone(), std::slice::from_ref(&key), unix_now()),
            Verified::Rejected { error: BADSIG, .. }
        ));
        let unknown = TsigKey::new(
            &Name::parse("nobody.", None).expect("name"),
            Algorithm::HmacSha256,
            b"0123456789abcdef",
        );
        assert!(matches!(
            verify(&message, record, &[unknown], unix_now()),
            Verified::Rejected { error: BADKEY, .. }
        ));

        let mut message = query();
        Signer::new(&key, Vec::new()).sign(&mut message, 0, &[]);
        let record = find(&message, 25).expect("parses").expect("has TSIG");
        assert!(matches!(
            verify(&message, record, std::slice::from_ref(&key), unix_now() + 3_600),
            Verified::Rejected { error: BADTIME, .. }
        ));
    }

    #[test]
    fn base64_and_key_files() {
        assert_eq!(decode_base64("aGVsbG8gd29ybGQ="), Some(b"hello world".to_vec()));
        assert_eq!(decode_base64("aGVsbG8gd29ybGQ"), Some(b"hello world".to_vec()));
        assert_eq!(decode_base64("a*b"), None);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("k.key");
        std::fs::write(&path, "key \"k\" {\n\talgorithm hmac-sha256;\n\tsecret \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\";\n};\n").expect("write");
        let name = Name::parse("k.", None).expect("name");
        assert!(TsigKey::from_file(&name, Algorithm::HmacSha256, &path).is_ok());
        std::fs::write(&path, "c2hvcnQ=").expect("write");
        let error = TsigKey::from_file(&name, Algorithm::HmacSha256, &path).expect_err("too short");
        assert!(!error.contains("c2hvcnQ"), "never print key material: {error}");
    }
}
