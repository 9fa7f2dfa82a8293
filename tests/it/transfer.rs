//! Zone transfers to standard secondaries, NOTIFY and TSIG (issue 8).
//!
//! - `nsd_secondary_follows_edits_and_health`: NSD 4.6 (the Debian package) runs on loopback
//!   as a secondary of the in-process server, with a TSIG key, through a relay that notes
//!   every transfer it carries. It must serve what we serve for every static name, take a
//!   member added by a file edit through NOTIFY + IXFR within 5 s, and follow the shared
//!   name's transfer pick (the heaviest eligible member, first of equals) to a healthy
//!   member within 10 s of the picked member's probe endpoint going away.
//! - `axfr_refused_without_key_wrong_key_or_unlisted_address`: the ACL and TSIG answers
//!   (REFUSED; NOTAUTH with BADSIG, BADKEY or BADTIME per RFC 8945 §5.2), and a signed
//!   multi-message AXFR verified here (RFC 8945 §5.3.1) and by BIND's `dig`.
//! - `ixfr_incremental_full_and_up_to_date`: RFC 1995 answers from the bounded history;
//!   `ixfr_after_a_change_that_kept_the_serial` and `pick_change_waits_for_its_own_serial`:
//!   a secondary at an older serial always ends up with what is served now, and a serial
//!   never changes meaning under a secondary that holds it.
//! - `hundred_thousand_members_transfer_record_for_record`: a 100,000-member zone over AXFR,
//!   compared as a set with what the files say.
//! - `key_material_never_logged`: the real binary, with a key, at trace level.
//! - `notify_retried_with_backoff_until_acknowledged_or_superseded`: a secondary that refuses
//!   NOTIFYs is retried after 1, 2, 4 s until it acknowledges, then left alone; a newer serial
//!   ends the older serial's retries.
//!
//! Expected records come from the zone file read by hickory-proto's own master-file parser
//! and from the members file as the test wrote it, never from our loader. The TSIG checks
//! here are written from RFC 8945 with `ring`'s HMAC, independently of `src/transfer/tsig.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, NULL, SOA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_proto::serialize::txt::Parser;
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{self, Tree};

const ORIGIN: &str = "consortium.example.";
const MEMBERS_FILE: &str = "zones/consortium.example.members.toml";
const ZONE_FILE: &str = "zones/consortium.example.zone";
/// How long one message of a transfer may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// TSIG keys, and TSIG as RFC 8945 describes it (the test's own reading of the RFC)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    HmacSha256,
    HmacSha512,
}

/// A TSIG key as both ends know it.
#[derive(Debug, Clone)]
struct Key {
    name: &'static str,
    algorithm: Algorithm,
    secret: Vec<u8>,
}

impl Key {
    /// The key the config names `transfer-key`: 32 ASCII octets, so that a leak would show
    /// whichever way it were printed (raw, base64, hex).
    fn transfer() -> Key {
        Key {
            name: "transfer-key",
            algorithm: Algorithm::HmacSha256,
            secret: b"consortium transfer secret 0001!".to_vec(),
        }
    }

    fn sha512() -> Key {
        Key {
            name: "sha512-key",
            algorithm: Algorithm::HmacSha512,
            secret: b"another consortium secret, for HMAC-SHA512 transfers".to_vec(),
        }
    }

    fn base64(&self) -> String {
        base64(&self.secret)
    }

    fn algorithm_text(&self) -> &'static str {
        match self.algorithm {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn name_wire(&self) -> Vec<u8> {
        wire_name(self.name)
    }

    fn algorithm_wire(&self) -> Vec<u8> {
        wire_name(self.algorithm_text())
    }

    fn hmac(&self) -> hmac::Key {
        let algorithm = match self.algorithm {
            Algorithm::HmacSha256 => hmac::HMAC_SHA256,
            Algorithm::HmacSha512 => hmac::HMAC_SHA512,
        };
        hmac::Key::new(algorithm, &self.secret)
    }

    /// `kdig -y` / `dig -y` form.
    fn dig_arg(&self) -> String {
        format!("{}:{}:{}", self.algorithm_text(), self.name, self.base64())
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lowercase uncompressed wire form of a (relative-to-root) name.
fn wire_name(text: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in text.trim_end_matches('.').split('.') {
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    wire
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The TSIG variables a first message's MAC covers (RFC 8945 §4.3.3).
fn tsig_variables(key: &Key, time: u64, fudge: u16, error: u16, other: &[u8]) -> Vec<u8> {
    let mut v = key.name_wire();
    v.extend_from_slice(&255u16.to_be_bytes()); // CLASS ANY
    v.extend_from_slice(&0u32.to_be_bytes()); // TTL
    v.extend_from_slice(&key.algorithm_wire());
    v.extend_from_slice(&time.to_be_bytes()[2..]);
    v.extend_from_slice(&fudge.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(other.len() as u16).to_be_bytes());
    v.extend_from_slice(other);
    v
}

/// Signs a request: appends the TSIG RR (RFC 8945 §4.2) and returns its MAC.
fn sign_request(message: &mut Vec<u8>, key: &Key, time: u64) -> Vec<u8> {
    let mut context = hmac::Context::with_key(&key.hmac());
    context.update(message);
    context.update(&tsig_variables(key, time, 300, 0, &[]));
    let mac = context.sign().as_ref().to_vec();
    let id = [message[0], message[1]];
    message.extend_from_slice(&key.name_wire());
    message.extend_from_slice(&250u16.to_be_bytes()); // TSIG
    message.extend_from_slice(&255u16.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    let algorithm = key.algorithm_wire();
    let rdlen = algorithm.len() + 6 + 2 + 2 + mac.len() + 2 + 2 + 2;
    message.extend_from_slice(&(rdlen as u16).to_be_bytes());
    message.extend_from_slice(&algorithm);
    message.extend_from_slice(&time.to_be_bytes()[2..]);
    message.extend_from_slice(&300u16.to_be_bytes());
    message.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    message.extend_from_slice(&mac);
    message.extend_from_slice(&id);
    message.extend_from_slice(&0u16.to_be_bytes()); // error
    message.extend_from_slice(&0u16.to_be_bytes()); // other len
    let arcount = u16::from_be_bytes([message[10], message[11]]) + 1;
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
    mac
}

/// A TSIG RR as found, raw, at the end of a message.
#[derive(Debug, Clone)]
struct RawTsig {
    /// Where the TSIG RR starts.
    start: usize,
    key_name: Vec<u8>,
    algorithm: Vec<u8>,
    time: u64,
    fudge: u16,
    mac: Vec<u8>,
    original_id: u16,
    error: u16,
    other: Vec<u8>,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Offset after the (possibly compressed) name at `pos`.
fn skip_name(message: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *message.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += usize::from(len) + 1,
            0xC0..=0xFF => return Some(pos + 2),
            _ => return None,
        }
    }
}

/// An uncompressed name at `pos`, lowercased (TSIG owner and algorithm are never compressed,
/// RFC 8945 §4.2), and the offset after it.
fn read_plain_name(message: &[u8], mut pos: usize) -> Option<(Vec<u8>, usize)> {
    let mut name = Vec::new();
    loop {
        let len = *message.get(pos)?;
        if len > 63 {
            return None;
        }
        name.push(len);
        if len == 0 {
            return Some((name, pos + 1));
        }
        let label = message.get(pos + 1..pos + 1 + usize::from(len))?;
        name.extend(label.iter().map(u8::to_ascii_lowercase));
        pos += usize::from(len) + 1;
    }
}

/// The TSIG RR, when the last record of the message is one.
fn raw_tsig(message: &[u8]) -> Option<RawTsig> {
    let qdcount = u16_at(message, 4)?;
    let total: usize = [6, 8, 10]
        .iter()
        .map(|&at| usize::from(u16_at(message, at).unwrap_or(0)))
        .sum();
    let mut pos = 12;
    for _ in 0..qdcount {
        pos = skip_name(message, pos)? + 4;
    }
    let mut last = None;
    for _ in 0..total {
        let start = pos;
        let after = skip_name(message, pos)?;
        let rtype = u16_at(message, after)?;
        let rdlen = usize::from(u16_at(message, after + 8)?);
        last = Some((start, rtype, after + 10));
        pos = after + 10 + rdlen;
    }
    let (start, rtype, rdata) = last?;
    if rtype != 250 {
        return None;
    }
    let (key_name, _) = read_plain_name(message, start)?;
    let (algorithm, mut at) = read_plain_name(message, rdata)?;
    let time_bytes = message.get(at..at + 6)?;
    let time = time_bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    at += 6;
    let fudge = u16_at(message, at)?;
    let mac_len = usize::from(u16_at(message, at + 2)?);
    at += 4;
    let mac = message.get(at..at + mac_len)?.to_vec();
    at += mac_len;
    let original_id = u16_at(message, at)?;
    let error = u16_at(message, at + 2)?;
    let other_len = usize::from(u16_at(message, at + 4)?);
    let other = message.get(at + 6..at + 6 + other_len)?.to_vec();
    Some(RawTsig {
        start,
        key_name,
        algorithm,
        time,
        fudge,
        mac,
        original_id,
        error,
        other,
    })
}

/// Checks the TSIG of every message of a response to a request whose MAC was `request_mac`
/// (empty: the messages are a request): the first covers the request MAC, the message and
/// the TSIG variables; each later one the prior MAC, the message and the timers (RFC 8945
/// §4.3.1, §4.3.3, §5.3.1). Our server signs every
/// message, so an unsigned one is an error here. Returns the TSIG of the first message.
fn verify_response(messages: &[Vec<u8>], key: &Key, request_mac: &[u8]) -> Result<RawTsig, String> {
    let mut prior = request_mac.to_vec();
    let mut first = None;
    for (index, message) in messages.iter().enumerate() {
        let tsig = raw_tsig(message).ok_or_else(|| format!("message {index} has no TSIG"))?;
        if tsig.key_name != key.name_wire() || tsig.algorithm != key.algorithm_wire() {
            return Err(format!("message {index}: TSIG names another key or algorithm"));
        }
        let mut unsigned = message[..tsig.start].to_vec();
        unsigned[0..2].copy_from_slice(&tsig.original_id.to_be_bytes());
        let arcount = u16::from_be_bytes([unsigned[10], unsigned[11]]) - 1;
        unsigned[10..12].copy_from_slice(&arcount.to_be_bytes());
        let mut context = hmac::Context::with_key(&key.hmac());
        if !prior.is_empty() {
            // Empty only for a request (a NOTIFY we receive): no MAC precedes it.
            context.update(&(prior.len() as u16).to_be_bytes());
            context.update(&prior);
        }
        context.update(&unsigned);
        if index == 0 {
            context.update(&tsig_variables(
                key,
                tsig.time,
                tsig.fudge,
                tsig.error,
                &tsig.other,
            ));
        } else {
            context.update(&tsig.time.to_be_bytes()[2..]);
            context.update(&tsig.fudge.to_be_bytes());
        }
        if context.sign().as_ref() != tsig.mac.as_slice() {
            return Err(format!(
                "message {index} of {}: MAC does not verify",
                messages.len()
            ));
        }
        prior = tsig.mac.clone();
        first.get_or_insert(tsig);
    }
    first.ok_or_else(|| "no messages".to_string())
}

// ---------------------------------------------------------------------------------------------
// Records compared as sets
// ---------------------------------------------------------------------------------------------

/// A record as compared: owner lowercased, RDATA in canonical wire form (RFC 4034 §6.2).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rr {
    owner: String,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

impl Rr {
    fn of(record: &Record) -> Rr {
        let mut rdata = Vec::new();
        let mut encoder = BinEncoder::new(&mut rdata);
        encoder.set_canonical_form(true);
        record.data.emit(&mut encoder).expect("RDATA re-encodes");
        Rr {
            owner: record.name.to_lowercase().to_ascii(),
            rtype: u16::from(record.record_type()),
            class: u16::from(record.dns_class),
            ttl: record.ttl,
            rdata,
        }
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Rr {
        Rr::of(&Record::from_rdata(
            common::name(owner),
            ttl,
            RData::CNAME(CNAME(common::name(target))),
        ))
    }
}

impl fmt::Display for Rr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} ", self.owner, self.ttl, RecordType::from(self.rtype))?;
        for b in &self.rdata {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn soa_serial(record: &Record) -> Option<u32> {
    match &record.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    }
}

/// Everything in the example zone file except the SOA, read by hickory-proto's master-file
/// parser (not ours), and the SOA itself. hickory-proto does not read the RFC 3597 generic
/// form (`TYPE65280 \# 4 0a000001`), so those lines are read here instead.
fn zone_file_records(tree: &Tree) -> (BTreeSet<Rr>, Record) {
    let text = tree.read(ZONE_FILE);
    let default_ttl: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("$TTL"))
        .and_then(|t| t.trim().parse().ok())
        .expect("the example zone sets $TTL");
    let mut records = BTreeSet::new();
    let mut standard = String::new();
    for line in text.lines() {
        let code = line.contains("\\#").then(|| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix("TYPE")?.parse::<u16>().ok())
        });
        let Some(Some(code)) = code else {
            standard.push_str(line);
            standard.push('\n');
            continue;
        };
        // owner [ttl] IN TYPEnnn \# length hex...
        let tokens: Vec<&str> = line.split(';').next().unwrap_or("").split_whitespace().collect();
        let ttl = tokens[1].parse().unwrap_or(default_ttl);
        let after = tokens.iter().position(|t| *t == "\\#").expect("generic RDATA") + 2;
        let hex: String = tokens[after..].concat();
        let rdata: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex RDATA"))
            .collect();
        let owner = common::name(&format!("{}.{ORIGIN}", tokens[0]));
        let data = RData::Unknown {
            code: RecordType::Unknown(code),
            rdata: NULL::with(rdata),
        };
        records.insert(Rr::of(&Record::from_rdata(owner, ttl, data)));
    }
    let (_, sets) = Parser::new(standard, Some(tree.path(ZONE_FILE)), Some(common::name(ORIGIN)))
        .parse()
        .expect("hickory-proto parses the example zone file");
    let mut soa = None;
    for set in sets.values() {
        for record in set.records_without_rrsigs() {
            if record.record_type() == RecordType::SOA {
                soa = Some(record.clone());
            } else {
                records.insert(Rr::of(record));
            }
        }
    }
    (records, soa.expect("the zone file has an SOA"))
}

fn diff_text(label: &str, got: &BTreeSet<Rr>, want: &BTreeSet<Rr>) -> String {
    let missing: Vec<String> = want.difference(got).take(10).map(ToString::to_string).collect();
    let extra: Vec<String> = got.difference(want).take(10).map(ToString::to_string).collect();
    format!(
        "{label}: {} records, {} expected; {} missing (first: {missing:#?}), {} unexpected (first: {extra:#?})",
        got.len(),
        want.len(),
        want.difference(got).count(),
        got.difference(want).count(),
    )
}

// ---------------------------------------------------------------------------------------------
// Transfer requests and a client that reads a whole transfer
// ---------------------------------------------------------------------------------------------

fn axfr_request(id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    let mut query = Query::query(common::name(ORIGIN), RecordType::AXFR);
    query.set_query_class(DNSClass::IN);
    message.add_query(query);
    message.to_vec().expect("AXFR request encodes")
}

/// An IXFR request saying the client holds `serial` (RFC 1995 §3: the SOA in the authority
/// section).
fn ixfr_request(id: u16, serial: u32) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    let mut query = Query::query(common::name(ORIGIN), RecordType::IXFR);
    query.set_query_class(DNSClass::IN);
    message.add_query(query);
    let soa = SOA::new(
        common::name("ns1.consortium.example."),
        common::name("hostmaster.consortium.example."),
        serial,
        0,
        0,
        0,
        0,
    );
    message.add_authority(Record::from_rdata(common::name(ORIGIN), 0, RData::SOA(soa)));
    message.to_vec().expect("IXFR request encodes")
}

/// The shape of a transfer response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Not finished yet.
    Open,
    /// The error rcode of a one-message refusal.
    Error(ResponseCode),
    /// One SOA: the client is up to date (RFC 1995 §2).
    UpToDate,
    /// SOA, the records, SOA (AXFR, or IXFR falling back to it).
    Full,
    /// SOA new, then (SOA old, deletions, SOA new, additions) per step, SOA new (RFC 1995 §2).
    Incremental,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Start,
    AfterFirst,
    Full,
    Deletions,
    Additions,
}

/// Follows the answer records of a transfer to tell where it ends (RFC 5936 §2.2, RFC 1995
/// §2): a client has no other way to know, the connection stays open.
#[derive(Debug)]
struct Progress {
    ixfr: bool,
    serial: u32,
    mode: Mode,
    form: Form,
}

impl Progress {
    fn new(ixfr: bool) -> Progress {
        Progress {
            ixfr,
            serial: 0,
            mode: Mode::Start,
            form: Form::Open,
        }
    }

    fn done(&self) -> bool {
        self.form != Form::Open
    }

    fn message(&mut self, message: &Message) {
        if message.metadata.response_code != ResponseCode::NoError {
            self.form = Form::Error(message.metadata.response_code);
            return;
        }
        for record in &message.answers {
            self.record(record);
        }
        if self.ixfr && self.mode == Mode::AfterFirst && !self.done() {
            // The message ended after the first SOA: the client is up to date.
            self.form = Form::UpToDate;
        }
    }

    fn record(&mut self, record: &Record) {
        let soa = soa_serial(record);
        match self.mode {
            Mode::Start => {
                self.serial = soa.expect("a transfer opens with the SOA");
                self.mode = Mode::AfterFirst;
            }
            Mode::AfterFirst => match soa {
                Some(serial) if self.ixfr && serial != self.serial => self.mode = Mode::Deletions,
                Some(_) => self.form = Form::Full, // SOA, SOA: an empty zone
                None => self.mode = Mode::Full,
            },
            Mode::Full => {
                if soa == Some(self.serial) {
                    self.form = Form::Full;
                }
            }
            Mode::Deletions => {
                if soa.is_some() {
                    self.mode = Mode::Additions;
                }
            }
            Mode::Additions => match soa {
                Some(serial) if serial == self.serial => self.form = Form::Incremental,
                Some(_) => self.mode = Mode::Deletions,
                None => {}
            },
        }
    }
}

/// A whole transfer response as received.
#[derive(Debug)]
struct Transfer {
    /// The raw messages, in order.
    messages: Vec<Vec<u8>>,
    /// The answer records of every message, in order.
    records: Vec<Record>,
    form: Form,
}

impl Transfer {
    /// The TSIG of the first message, if any.
    fn tsig(&self) -> Option<RawTsig> {
        raw_tsig(self.messages.first()?)
    }

    fn header(&self) -> Message {
        Message::from_vec(&self.messages[0]).expect("first message parses")
    }

    /// A full transfer's serial and its records between the two SOAs, as a set (which must
    /// not have lost any duplicate).
    fn zone(&self) -> (u32, Record, BTreeSet<Rr>) {
        assert_eq!(self.form, Form::Full, "expected a full zone transfer");
        let first = &self.records[0];
        let last = &self.records[self.records.len() - 1];
        let serial = soa_serial(first).expect("opens with the SOA");
        assert_eq!(
            Rr::of(first),
            Rr::of(last),
            "the closing SOA repeats the opening one"
        );
        let inner = &self.records[1..self.records.len() - 1];
        let set: BTreeSet<Rr> = inner.iter().map(Rr::of).collect();
        assert_eq!(set.len(), inner.len(), "a record was sent twice");
        assert!(
            inner.iter().all(|r| r.record_type() != RecordType::SOA),
            "an SOA inside a full transfer"
        );
        (serial, first.clone(), set)
    }
}

/// One step of an incremental transfer (RFC 1995 §2).
#[derive(Debug)]
struct Step {
    from: u32,
    to: u32,
    deleted: BTreeSet<Rr>,
    added: BTreeSet<Rr>,
}

/// The steps of an incremental IXFR answer, from its answer records.
fn steps(records: &[Record]) -> Vec<Step> {
    let inner = &records[1..records.len() - 1];
    let mut steps = Vec::new();
    let mut i = 0;
    while i < inner.len() {
        let from = soa_serial(&inner[i]).expect("a step opens with the old SOA");
        i += 1;
        let mut deleted = BTreeSet::new();
        while soa_serial(inner.get(i).expect("a step has its new SOA")).is_none() {
            deleted.insert(Rr::of(&inner[i]));
            i += 1;
        }
        let to = soa_serial(&inner[i]).expect("new SOA");
        i += 1;
        let mut added = BTreeSet::new();
        while i < inner.len() && soa_serial(&inner[i]).is_none() {
            added.insert(Rr::of(&inner[i]));
            i += 1;
        }
        steps.push(Step {
            from,
            to,
            deleted,
            added,
        });
    }
    steps
}

/// What a secondary holding `base` has after applying this IXFR answer (any form), and the
/// serial it then holds. Deleting what is not there or adding what is fails the test.
fn apply_ixfr(base: &BTreeSet<Rr>, t: &Transfer) -> (u32, BTreeSet<Rr>) {
    match t.form {
        Form::Full => {
            let (serial, _, zone) = t.zone();
            (serial, zone)
        }
        Form::Incremental => {
            let mut zone = base.clone();
            for step in steps(&t.records) {
                for r in &step.deleted {
                    assert!(
                        zone.remove(r),
                        "step {} -> {} deletes what is not there: {r}",
                        step.from,
                        step.to
                    );
                }
                for r in &step.added {
                    assert!(
                        zone.insert(r.clone()),
                        "step {} -> {} adds what is there: {r}",
                        step.from,
                        step.to
                    );
                }
            }
            (soa_serial(&t.records[0]).expect("SOA"), zone)
        }
        other => panic!("not a transfer of data: {other:?}"),
    }
}

fn is_ixfr(request: &[u8]) -> Option<bool> {
    let message = Message::from_vec(request).ok()?;
    match message.queries.first()?.query_type() {
        RecordType::IXFR => Some(true),
        RecordType::AXFR => Some(false),
        _ => None,
    }
}

async fn read_frame<S: AsyncReadExt + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let len = usize::from(stream.read_u16().await?);
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame<S: AsyncWriteExt + Unpin>(stream: &mut S, message: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

/// Connects to `server`, from `source` when given (any address of 127.0.0.0/8 is local).
async fn connect(server: SocketAddr, source: Option<IpAddr>) -> TcpStream {
    match source {
        None => TcpStream::connect(server).await.expect("connect"),
        Some(ip) => {
            let socket = TcpSocket::new_v4().expect("TCP socket");
            socket
                .bind(SocketAddr::new(ip, 0))
                .unwrap_or_else(|e| panic!("bind the client to {ip}: {e}"));
            socket.connect(server).await.expect("connect")
        }
    }
}

/// Sends a transfer request over TCP and reads the whole response.
async fn transfer(server: SocketAddr, request: &[u8], source: Option<IpAddr>) -> Transfer {
    let ixfr = is_ixfr(request).expect("a transfer request");
    let mut stream = connect(server, source).await;
    write_frame(&mut stream, request).await.expect("send request");
    let mut progress = Progress::new(ixfr);
    let mut messages = Vec::new();
    let mut records = Vec::new();
    while !progress.done() {
        let frame = tokio::time::timeout(READ_TIMEOUT, read_frame(&mut stream))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "transfer message {} not received within {READ_TIMEOUT:?}",
                    messages.len()
                )
            })
            .unwrap_or_else(|e| panic!("transfer message {}: {e}", messages.len()));
        let message = Message::from_vec(&frame).expect("transfer message parses");
        assert_eq!(
            message.metadata.id,
            u16::from_be_bytes([request[0], request[1]]),
            "every message carries the request's ID (RFC 5936 §2.2.1)"
        );
        progress.message(&message);
        records.extend(message.answers.iter().cloned());
        messages.push(frame);
    }
    Transfer {
        messages,
        records,
        form: progress.form,
    }
}

// ---------------------------------------------------------------------------------------------
// Test setup: transfer settings, members files, probe endpoints, outside programs
// ---------------------------------------------------------------------------------------------

/// Appends `zone_lines` to the example config's `[[zone]]` table and one `[[key]]` table per
/// key, its secret (base64) in `config/<name>.key`.
fn configure(tree: &Tree, zone_lines: &str, keys: &[&Key]) {
    let mut config = tree.read("config/consortium-dns.toml");
    let last = config
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .expect("config has lines");
    assert!(
        last.starts_with("members ="),
        "the example config must end with its [[zone]] table; its last line is {last:?}"
    );
    if !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(zone_lines);
    for key in keys {
        config.push_str(&format!(
            "\n[[key]]\nname = \"{}\"\nalgorithm = \"{}\"\nsecret-file = \"{}.key\"\n",
            key.name,
            key.algorithm_text(),
            key.name
        ));
        tree.write(
            &format!("config/{}.key", key.name),
            &format!("{}\n", key.base64()),
        );
    }
    tree.write("config/consortium-dns.toml", &config);
}

/// One `[[member]]` of a members file the test writes.
#[derive(Debug, Clone)]
struct MemberSpec {
    label: String,
    /// Absolute target name.
    target: String,
    weight: u32,
    /// Lines of `[member.health]`; empty: the config's defaults (no probe in the test tree).
    health: String,
}

impl MemberSpec {
    fn new(label: &str, target: &str, weight: u32, health: &str) -> MemberSpec {
        MemberSpec {
            label: label.into(),
            target: target.into(),
            weight,
            health: health.into(),
        }
    }

    fn owner(&self) -> String {
        format!("{}.{ORIGIN}", self.label)
    }
}

const MEMBER_TTL: u32 = 300;
const POOL_TTL: u32 = 30;

/// A members file: the members, and the pool `any` over all of them.
fn members_file(members: &[MemberSpec]) -> String {
    let mut text = format!("member-ttl = {MEMBER_TTL}\n\n[[pool]]\nlabel = \"any\"\nttl = {POOL_TTL}\n");
    for m in members {
        text.push_str(&format!(
            "\n[[member]]\nlabel = \"{}\"\ntarget = \"{}\"\nweight = {}\n",
            m.label, m.target, m.weight
        ));
        if !m.health.is_empty() {
            text.push_str("[member.health]\n");
            text.push_str(&m.health);
        }
    }
    text
}

/// The transfer pick: the heaviest eligible member, the first of equals.
fn transfer_pick<'m>(members: &'m [MemberSpec], up: &dyn Fn(&MemberSpec) -> bool) -> &'m MemberSpec {
    let mut best: Option<&MemberSpec> = None;
    for m in members.iter().filter(|m| up(m) && m.weight > 0) {
        if best.is_none_or(|b| m.weight > b.weight) {
            best = Some(m);
        }
    }
    best.expect("someone is up")
}

/// What the members file adds to a transfer: one CNAME per member, the pool's CNAME to
/// `picked`.
fn member_records(members: &[MemberSpec], picked: &MemberSpec) -> BTreeSet<Rr> {
    let mut records: BTreeSet<Rr> = members
        .iter()
        .map(|m| Rr::cname(&m.owner(), MEMBER_TTL, &m.target))
        .collect();
    records.insert(pool_record(picked));
    records
}

fn pool_record(picked: &MemberSpec) -> Rr {
    Rr::cname(&format!("any.{ORIGIN}"), POOL_TTL, &picked.target)
}

/// A TCP endpoint a member's `tcp` probe connects to; `stop` closes it so probes are refused.
struct Endpoint {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind endpoint");
        let addr = listener.local_addr().expect("endpoint address");
        let task = tokio::spawn(async move {
            loop {
                // Accept and close: a connect is all a tcp probe asks.
                let _ = listener.accept().await;
            }
        });
        Endpoint {
            addr,
            task: Some(task),
        }
    }

    /// Closes the listening socket (the task owns it; awaiting the aborted task drops it).
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn probe(&self) -> String {
        format!(
            "kind = \"tcp\"\naddress = \"{}\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\njitter = \"50ms\"\n\
             rise = 1\nfall = 1\nslow-start = \"0s\"\n",
            self.addr
        )
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The path of an outside program the test needs; fails naming it and its Debian package.
fn program(name: &str, package: &str, why: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: {why}. Install the Debian package `{package}` \
                 (tests/run.sh does)"
            )
        })
}

/// BIND's dig asking `server` with `dig -y <key> <question>`: its output, stdout then stderr.
/// dig verifies the TSIG of every answer message and says so when one fails.
fn dig_signed(server: SocketAddr, key: &Key, question: &[&str]) -> String {
    let dig = program("dig", "bind9-dnsutils", "dig judges our TSIG signatures");
    let output = Command::new(&dig)
        .args([
            "-y",
            &key.dig_arg(),
            "@127.0.0.1",
            "-p",
            &server.port().to_string(),
        ])
        .args(question)
        .output()
        .expect("run dig");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Rcode and answer section of a UDP query, or why there is none.
async fn answer_of(
    server: SocketAddr,
    qname: &str,
    qtype: RecordType,
) -> Result<(ResponseCode, BTreeSet<Rr>), String> {
    let query = common::query(qname, qtype, Some(1232))
        .to_vec()
        .expect("query encodes");
    let raw = common::udp_raw(server, &query)
        .await
        .ok_or_else(|| format!("no answer from {server} to {qname} {qtype}"))?;
    let message = Message::from_vec(&raw).map_err(|e| format!("answer from {server} does not parse: {e}"))?;
    Ok((
        message.metadata.response_code,
        message.answers.iter().map(Rr::of).collect(),
    ))
}

async fn served_serial(server: SocketAddr) -> Option<u32> {
    let query = common::query(ORIGIN, RecordType::SOA, None)
        .to_vec()
        .expect("query encodes");
    let raw = common::udp_raw(server, &query).await?;
    let message = Message::from_vec(&raw).ok()?;
    message.answers.iter().find_map(soa_serial)
}

// ---------------------------------------------------------------------------------------------
// NSD as a secondary, and a relay that watches its transfers
// ---------------------------------------------------------------------------------------------

/// What the relay saw of one transfer.
#[derive(Debug, Clone)]
struct Seen {
    ixfr: bool,
    form: Form,
    signed: bool,
    records: Vec<Record>,
}

impl Seen {
    fn final_serial(&self) -> Option<u32> {
        self.records.first().and_then(soa_serial)
    }
}

/// A TCP relay between NSD and consortium-dns: passes every byte unchanged and notes each
/// transfer it carries, so the test can tell NSD's IXFR from an AXFR.
struct Relay {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let notes = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                if let Ok((client, _)) = listener.accept().await {
                    connections.spawn(relay_connection(client, upstream, notes.clone()));
                }
                while connections.try_join_next().is_some() {}
            }
        });
        Relay { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("relay notes").clone()
    }

    /// The transfer that brought `serial`, if one did.
    fn transfer_to(&self, serial: u32) -> Option<Seen> {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.final_serial() == Some(serial) && s.form != Form::UpToDate)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_connection(mut client: TcpStream, upstream: SocketAddr, seen: Arc<Mutex<Vec<Seen>>>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    loop {
        let Ok(Ok(request)) = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut client)).await
        else {
            return;
        };
        if write_frame(&mut server, &request).await.is_err() {
            return;
        }
        let ixfr = is_ixfr(&request);
        let mut progress = Progress::new(ixfr == Some(true));
        let mut records = Vec::new();
        let mut signed = true;
        loop {
            let Ok(Ok(frame)) = tokio::time::timeout(READ_TIMEOUT, read_frame(&mut server)).await else {
                return;
            };
            if write_frame(&mut client, &frame).await.is_err() {
                return;
            }
            if ixfr.is_none() {
                break; // not a transfer: one answer
            }
            let Ok(message) = Message::from_vec(&frame) else {
                return;
            };
            signed &= raw_tsig(&frame).is_some();
            progress.message(&message);
            records.extend(message.answers.iter().cloned());
            if progress.done() {
                break;
            }
        }
        if let Some(ixfr) = ixfr {
            seen.lock().expect("relay notes").push(Seen {
                ixfr,
                form: progress.form,
                signed,
                records,
            });
        }
    }
}

/// NSD 4.6 in the foreground as a secondary on 127.0.0.1, its files in a temp dir. Dropping
/// it stops its process group (the main process, xfrd and the server child).
struct Nsd {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nsd {
    /// Starts NSD on `port`, transferring the zone from `primary` with `key`, and accepting
    /// NOTIFY signed with it from 127.0.0.1.
    fn start(port: u16, primary: SocketAddr, key: &Key) -> Nsd {
        let binary = program(
            "nsd",
            "nsd",
            "the interop test runs NSD 4.6 as a standard secondary",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        // Checked with nsd-checkconf (NSD 4.6.1). Only the secondary's essentials: the key,
        // request-xfr from the primary (IXFR over TCP, AXFR fallback), allow-notify.
        let config = format!(
            "server:
    ip-address: 127.0.0.1
    port: {port}
    server-count: 1
    username: \"\"
    chroot: \"\"
    zonesdir: \"{d}\"
    pidfile: \"{d}/nsd.pid\"
    xfrdfile: \"{d}/xfrd.state\"
    xfrdir: \"{d}\"
    zonelistfile: \"{d}/zone.list\"
    database: \"\"
    logfile: \"{d}/nsd.log\"
    verbosity: 2
    # The comparison sends hundreds of queries from one address.
    rrl-ratelimit: 0
remote-control:
    control-enable: no
key:
    name: \"{name}\"
    algorithm: {algorithm}
    secret: \"{secret}\"
zone:
    name: \"{ORIGIN}\"
    zonefile: \"{d}/secondary.zone\"
    request-xfr: {primary_ip}@{primary_port} {name}
    allow-notify: 127.0.0.1 {name}
",
            name = key.name,
            algorithm = key.algorithm_text(),
            secret = key.base64(),
            primary_ip = primary.ip(),
            primary_port = primary.port(),
        );
        std::fs::write(dir.path().join("nsd.conf"), config).expect("write nsd.conf");
        let stderr = std::fs::File::create(dir.path().join("nsd.stderr")).expect("NSD stderr file");
        let child = Command::new(&binary)
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Nsd {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
        }
    }

    fn log(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
        format!("{}{}", read("nsd.log"), read("nsd.stderr"))
    }

    /// Polls NSD until `check` holds for its answer to `qname`/`qtype`; returns how long that
    /// took, or an explanation with NSD's log.
    async fn wait_for(
        &mut self,
        qname: &str,
        qtype: RecordType,
        within: Duration,
        check: impl Fn(&(ResponseCode, BTreeSet<Rr>)) -> bool,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        while started.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nsd exited with {status}; its log:\n{}", self.log()));
            }
            match answer_of(self.addr, qname, qtype).await {
                Ok(answer) if check(&answer) => return Ok(started.elapsed()),
                Ok((rcode, records)) => {
                    last = format!(
                        "{rcode}: {:?}",
                        records.iter().map(ToString::to_string).collect::<Vec<_>>()
                    )
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "NSD's answer to {qname} {qtype} did not come within {within:?}; last: {last}\nNSD's log:\n{}",
            self.log()
        ))
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// The query types compared for every static name. ANY is left out: RFC 8482 lets servers
/// pick which RRset to send (the differential test covers it).
const QTYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::NS,
    RecordType::SOA,
    RecordType::MX,
    RecordType::TXT,
    RecordType::CAA,
    RecordType::SRV,
    RecordType::CNAME,
    RecordType::Unknown(65280),
];

/// Every static name: the owners of the zone file, the members, and names the zone answers
/// for without owning them (wildcard match, empty non-terminal, below the delegation,
/// nonexistent). The shared name `any` is not static (see the test).
fn static_names(zone: &BTreeSet<Rr>, members: &[MemberSpec]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = zone.iter().map(|r| r.owner.clone()).collect();
    names.insert(ORIGIN.into());
    names.extend(members.iter().map(MemberSpec::owner));
    for extra in [
        "foo.teams",
        "_tcp.api",
        "x.lab",
        "nonexistent",
        "deep.nonexistent",
    ] {
        names.insert(format!("{extra}.{ORIGIN}"));
    }
    names
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// NSD as a secondary of consortium-dns, with TSIG on transfers and NOTIFY.
///
/// The shared name `any` is left out of the answer comparison on purpose: consortium-dns
/// answers it with a health-weighted random pick per query, which a secondary cannot do, so a
/// transfer carries one CNAME to the transfer pick (the heaviest eligible member, the first
/// of equals). The test checks instead that NSD serves exactly that pick, and follows it when
/// health moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsd_secondary_follows_edits_and_health() {
    let key = Key::transfer();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(Endpoint::start().await);
    }
    // node1 is the heaviest; node2 and node3 weigh the same (node2 comes first); node4 has
    // no probe.
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 5, &endpoints[0].probe()),
        MemberSpec::new("node2", "api.operator-b.net.", 3, &endpoints[1].probe()),
        MemberSpec::new("node3", "planetmint.operator-c.org.", 3, &endpoints[2].probe()),
        MemberSpec::new("node4", "node.operator-d.io.", 1, ""),
    ];
    let tree = Tree::example();
    let nsd_port = common::free_port();
    configure(
        &tree,
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{k}\" }}]\n\
             notify = [{{ address = \"127.0.0.1:{nsd_port}\", key = \"{k}\" }}]\n\
             transfer-pick-refresh = \"1s\"\n",
            k = key.name
        ),
        &[&key],
    );
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let ours = server.dns_addrs[0];
    let relay = Relay::start(ours).await;
    let mut nsd = Nsd::start(nsd_port, relay.addr, &key);

    // 1. After the start, NSD holds our serial and answers as we do for every static name.
    let serial = served_serial(ours).await.expect("our SOA");
    let soa_is = |serial: u32| {
        move |(_, records): &(ResponseCode, BTreeSet<Rr>)| {
            records.iter().any(|r| {
                r.rtype == u16::from(RecordType::SOA) && r.rdata.len() >= 20 && {
                    let at = r.rdata.len() - 20;
                    u32::from_be_bytes([r.rdata[at], r.rdata[at + 1], r.rdata[at + 2], r.rdata[at + 3]])
                        == serial
                }
            })
        }
    };
    nsd.wait_for(ORIGIN, RecordType::SOA, Duration::from_secs(10), soa_is(serial))
        .await
        .unwrap_or_else(|e| panic!("NSD did not load the zone from us: {e}"));
    let first = relay
        .transfer_to(serial)
        .expect("the relay saw NSD's first transfer");
    assert!(
        first.signed,
        "every message of the transfer to NSD was TSIG-signed"
    );
    assert_eq!(first.form, Form::Full, "NSD had nothing: a full transfer");
    assert!(
        nsd.log().contains("TSIG verified"),
        "NSD verified our TSIG; its log:\n{}",
        nsd.log()
    );

    let (zone, _) = zone_file_records(&tree);
    let names = static_names(&zone, &members);
    let mut differences = Vec::new();
    let mut compared = 0;
    for qname in &names {
        for &qtype in QTYPES {
            let theirs = answer_of(nsd.addr, qname, qtype).await;
            let mine = answer_of(ours, qname, qtype).await;
            compared += 1;
            if theirs != mine {
                differences.push(format!(
                    "{qname} {qtype}:\n  NSD:            {theirs:?}\n  consortium-dns: {mine:?}"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {compared} answers differ between NSD and consortium-dns:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(compared > 200, "compared {compared} answers");
    let all_up = |_: &MemberSpec| true;
    let pick = transfer_pick(&members, &all_up);
    assert_eq!(pick.label, "node1");
    let any = format!("any.{ORIGIN}");
    let expect_pick = |picked: &MemberSpec| {
        let record = pool_record(picked);
        move |(rcode, records): &(ResponseCode, BTreeSet<Rr>)| {
            *rcode == ResponseCode::NoError && records.len() == 1 && records.contains(&record)
        }
    };
    nsd.wait_for(&any, RecordType::CNAME, Duration::from_secs(1), expect_pick(pick))
        .await
        .unwrap_or_else(|e| panic!("NSD serves the transfer pick for the shared name: {e}"));

    // 2. A member added by a file edit reaches NSD through NOTIFY and IXFR.
    members.push(MemberSpec::new("node6", "node6.operator-f.example.", 1, ""));
    tree.replace(MEMBERS_FILE, &members_file(&members));
    let node6 = Rr::cname(&members[4].owner(), MEMBER_TTL, &members[4].target);
    let wanted = node6.clone();
    let took = nsd
        .wait_for(
            &members[4].owner(),
            RecordType::CNAME,
            Duration::from_secs(5),
            move |(_, records)| records.contains(&wanted),
        )
        .await
        .unwrap_or_else(|e| panic!("the added member did not reach NSD: {e}"));
    let added_serial = served_serial(ours).await.expect("our SOA");
    assert!(added_serial != serial, "the edit raised the serial");
    nsd.wait_for(
        ORIGIN,
        RecordType::SOA,
        Duration::from_secs(2),
        soa_is(added_serial),
    )
    .await
    .unwrap_or_else(|e| panic!("NSD holds our new serial: {e}"));
    let seen = relay
        .transfer_to(added_serial)
        .expect("the relay saw the transfer of the edit");
    assert!(
        seen.ixfr && seen.form == Form::Incremental && seen.signed,
        "NSD asked for IXFR and got the incremental form, signed: {seen:?}"
    );
    let step = steps(&seen.records);
    assert_eq!(step.len(), 1, "one step: {step:?}");
    assert_eq!((step[0].from, step[0].to), (serial, added_serial));
    assert!(step[0].deleted.is_empty(), "nothing deleted: {step:?}");
    assert_eq!(
        step[0].added,
        BTreeSet::from([node6]),
        "only the new member's CNAME added"
    );
    eprintln!("member added: NSD answered for it {took:?} after the edit");

    // 3. The picked member goes down: NSD's shared name moves to the next transfer pick,
    //    node2 (node3 weighs the same but comes later).
    let mut down = BTreeSet::new();
    let mut last_serial = added_serial;
    for (endpoint, label) in [(0, "node1"), (1, "node2")] {
        let before = transfer_pick(&members, &|m: &MemberSpec| !down.contains(&m.label));
        assert_eq!(before.label, label);
        let before_record = pool_record(before);
        endpoints[endpoint].stop().await;
        down.insert(label.to_string());
        let after = transfer_pick(&members, &|m: &MemberSpec| !down.contains(&m.label)).clone();
        let took = nsd
            .wait_for(
                &any,
                RecordType::CNAME,
                Duration::from_secs(10),
                expect_pick(&after),
            )
            .await
            .unwrap_or_else(|e| panic!("NSD's shared name did not move off {label}: {e}"));
        eprintln!("{label} down: NSD's {any} moved to {} in {took:?}", after.label);
        let now_serial = served_serial(ours).await.expect("our SOA");
        assert_ne!(now_serial, last_serial, "the pick change raised the serial");
        let seen = relay
            .transfer_to(now_serial)
            .expect("the relay saw the transfer of the pick change");
        assert!(
            seen.ixfr && seen.form == Form::Incremental,
            "the pick change went by IXFR: {seen:?}"
        );
        let deleted: BTreeSet<Rr> = steps(&seen.records).into_iter().flat_map(|s| s.deleted).collect();
        let added: BTreeSet<Rr> = steps(&seen.records).into_iter().flat_map(|s| s.added).collect();
        assert_eq!(deleted, BTreeSet::from([before_record]));
        assert_eq!(added, BTreeSet::from([pool_record(&after)]));
        last_serial = now_serial;
    }
    // Our own answers never send anyone to a member that is down.
    for _ in 0..50 {
        let (_, records) = answer_of(ours, &any, RecordType::CNAME)
            .await
            .expect("our answer");
        assert!(
            !records.contains(&pool_record(&members[0])) && !records.contains(&pool_record(&members[1])),
            "picked a member that is down: {records:?}"
        );
    }
    drop(nsd);
    drop(relay);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Members `m0`..`m{n-1}` with weights 1, 2, 3, 1, 2, 3, ...: the transfer pick is `m2`, the
/// first of the heaviest.
fn many_members(n: usize) -> Vec<MemberSpec> {
    (0..n)
        .map(|i| {
            MemberSpec::new(
                &format!("m{i}"),
                &format!("node-{i}.operator-{}.example.net.", i % 97),
                1 + (i % 3) as u32,
                "",
            )
        })
        .collect()
}

/// What an AXFR of the test tree must hold besides the SOA.
fn expected_zone(tree: &Tree, members: &[MemberSpec]) -> BTreeSet<Rr> {
    let (mut records, _) = zone_file_records(tree);
    records.extend(member_records(
        members,
        transfer_pick(members, &|_: &MemberSpec| true),
    ));
    records
}

fn assert_refused_plainly(t: &Transfer, rcode: ResponseCode, what: &str) {
    assert_eq!(t.form, Form::Error(rcode), "{what}");
    assert_eq!(t.messages.len(), 1, "{what}: one message");
    let header = t.header();
    assert!(header.answers.is_empty(), "{what}: no records");
    assert_eq!(header.queries.len(), 1, "{what}: the question is echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axfr_refused_without_key_wrong_key_or_unlisted_address() {
    let key = Key::transfer();
    let key512 = Key::sha512();
    let tree = Tree::example();
    configure(
        &tree,
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{}\" }}, \
             {{ network = \"127.0.0.0/30\", key = \"{}\" }}]\n",
            key.name, key512.name
        ),
        &[&key, &key512],
    );
    // Enough members for a transfer of many messages (each message is signed).
    let members = many_members(3_000);
    tree.write(MEMBERS_FILE, &members_file(&members));
    let expected = expected_zone(&tree, &members);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let unlisted = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
    let other_key_only = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));

    // No key, from a listed address: REFUSED (RFC 5936 §6), nothing signed.
    let t = transfer(dns, &axfr_request(1), localhost).await;
    assert_refused_plainly(&t, ResponseCode::Refused, "unsigned AXFR");
    assert!(t.tsig().is_none(), "an unsigned request gets an unsigned answer");
    let t = transfer(dns, &ixfr_request(2, 1), localhost).await;
    assert_refused_plainly(&t, ResponseCode::Refused, "unsigned IXFR");

    // The right key name with the wrong secret: NOTAUTH, TSIG error BADSIG, and an unsigned
    // TSIG (RFC 8945 §5.2.2: the MAC is empty, the server cannot sign for a key it doubts).
    let wrong = Key {
        secret: b"not the consortium's secret, 32!".to_vec(),
        ..key.clone()
    };
    let mut request = axfr_request(3);
    sign_request(&mut request, &wrong, unix_now());
    let t = transfer(dns, &request, localhost).await;
    assert_refused_plainly(&t, ResponseCode::NotAuth, "AXFR with a wrong key");
    let tsig = t.tsig().expect("a TSIG RR in the BADSIG answer");
    assert_eq!(
        (tsig.error, tsig.mac.len()),
        (16, 0),
        "BADSIG, unsigned: {tsig:?}"
    );

    // A key the server does not know: NOTAUTH, BADKEY, unsigned (RFC 8945 §5.2.1).
    let stranger = Key {
        name: "stranger-key",
        ..key.clone()
    };
    let mut request = axfr_request(4);
    sign_request(&mut request, &stranger, unix_now());
    let t = transfer(dns, &request, localhost).await;
    assert_refused_plainly(&t, ResponseCode::NotAuth, "AXFR with an unknown key");
    let tsig = t.tsig().expect("a TSIG RR in the BADKEY answer");
    assert_eq!(
        (tsig.error, tsig.mac.len()),
        (17, 0),
        "BADKEY, unsigned: {tsig:?}"
    );

    // The right key an hour off: NOTAUTH, BADTIME, signed with the key, the client's time
    // in Time Signed and ours in Other Data (RFC 8945 §5.2.3).
    let skewed = unix_now() - 3_600;
    let mut request = axfr_request(5);
    let request_mac = sign_request(&mut request, &key, skewed);
    let t = transfer(dns, &request, localhost).await;
    assert_refused_plainly(&t, ResponseCode::NotAuth, "AXFR signed an hour ago");
    let tsig = verify_response(&t.messages, &key, &request_mac)
        .unwrap_or_else(|e| panic!("the BADTIME answer is signed with the key: {e}"));
    assert_eq!(tsig.error, 18, "BADTIME");
    assert_eq!(tsig.time, skewed, "Time Signed echoes the client's time");
    assert_eq!(tsig.other.len(), 6, "Other Data holds the server's time");
    let server_time = tsig.other.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    assert!(
        server_time.abs_diff(unix_now()) <= 5,
        "Other Data is the server's time"
    );

    // The right key from an address no ACL lists: REFUSED, signed (the key was good).
    let mut request = axfr_request(6);
    let request_mac = sign_request(&mut request, &key, unix_now());
    let t = transfer(dns, &request, unlisted).await;
    assert_refused_plainly(&t, ResponseCode::Refused, "AXFR from 127.0.0.9 with the key");
    verify_response(&t.messages, &key, &request_mac)
        .unwrap_or_else(|e| panic!("the REFUSED answer to a signed request is signed: {e}"));
    // 127.0.0.2 is listed, but only with the other key.
    let mut request = axfr_request(7);
    sign_request(&mut request, &key, unix_now());
    let t = transfer(dns, &request, other_key_only).await;
    assert_refused_plainly(&t, ResponseCode::Refused, "AXFR from 127.0.0.2 with transfer-key");
    let mut request = axfr_request(7);
    let request_mac = sign_request(&mut request, &key512, unix_now());
    let t = transfer(dns, &request, other_key_only).await;
    assert!(t.form == Form::Full, "127.0.0.0/30 with {}: allowed", key512.name);
    verify_response(&t.messages, &key512, &request_mac).unwrap_or_else(|e| panic!("HMAC-SHA512: {e}"));
    let (_, _, records) = t.zone();
    assert!(
        records == expected,
        "{}",
        diff_text("AXFR with HMAC-SHA512", &records, &expected)
    );

    // The right key from a listed address: the whole zone, every message signed.
    let mut request = axfr_request(8);
    let request_mac = sign_request(&mut request, &key, unix_now());
    let t = transfer(dns, &request, localhost).await;
    assert_eq!(t.form, Form::Full, "signed AXFR from 127.0.0.1");
    assert!(
        t.messages.len() > 5,
        "a transfer of {} messages",
        t.messages.len()
    );
    let tsig = verify_response(&t.messages, &key, &request_mac)
        .unwrap_or_else(|e| panic!("the transfer's TSIG chain: {e}"));
    assert_eq!(tsig.error, 0);
    assert!(tsig.time.abs_diff(unix_now()) <= 5, "signed now");
    let (_, _, records) = t.zone();
    assert!(
        records == expected,
        "{}",
        diff_text("signed AXFR", &records, &expected)
    );

    // An outside judge: BIND's dig checks the TSIG of every message of the transfer and
    // warns when one fails. (kdig 3.2 was tried first: with every message after the first
    // deliberately mis-signed it still printed the transfer without a word.)
    let run = |key: &Key| dig_signed(dns, key, &[ORIGIN, "AXFR"]);
    let text = run(&key);
    let summary: Vec<&str> = text.lines().filter(|l| l.starts_with(';')).collect();
    let size_line = format!(
        ";; XFR size: {} records (messages {},",
        expected.len() + 2,
        t.messages.len()
    );
    assert!(
        text.contains(&size_line)
            && !text.contains("WARNING")
            && !text.contains("Couldn't verify")
            && !text.contains("failed"),
        "dig -y {} AXFR accepts every message's TSIG (wanted \"{size_line}\"):\n{}",
        key.name,
        summary.join("\n")
    );
    let text = run(&wrong);
    assert!(
        text.contains("BADSIG") && text.contains("Transfer failed"),
        "dig with a wrong secret sees BADSIG:\n{text}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// RFC 8945 beyond transfers: an ordinary query signed with a configured key gets a signed
/// answer over UDP and TCP (verified here and by BIND's dig); a wrong secret gets NOTAUTH with
/// an unsigned BADSIG, an unknown key BADKEY; an unsigned query stays unsigned.
#[tokio::test(flavor = "multi_thread")]
async fn signed_queries_get_signed_answers() {
    let key = Key::transfer();
    let tree = Tree::example();
    configure(&tree, "", &[&key]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let node1 = format!("node1.{ORIGIN}");
    let target = common::name("node1.operator-a.com.");
    let query = |id: u16| {
        let mut message = common::query(&node1, RecordType::A, Some(1232));
        message.metadata.id = id;
        message.to_vec().expect("query encodes")
    };
    let rcode = |raw: &[u8]| raw[3] & 0x0f;

    let mut signed = query(1);
    let request_mac = sign_request(&mut signed, &key, unix_now());
    let udp = common::udp_raw(dns, &signed).await.expect("a UDP answer");
    let tcp = common::tcp_raw(dns, std::slice::from_ref(&signed), 1)
        .await
        .remove(0);
    for (transport, raw) in [("UDP", &udp), ("TCP", &tcp)] {
        let tsig = verify_response(std::slice::from_ref(raw), &key, &request_mac)
            .unwrap_or_else(|e| panic!("{transport}: the answer's TSIG: {e}"));
        assert_eq!((tsig.error, tsig.original_id), (0, 1), "{transport}");
        assert!(tsig.time.abs_diff(unix_now()) <= 5, "{transport}: signed now");
        let message = Message::from_vec(raw).expect("a signed answer parses");
        assert_eq!(
            message.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(
            message
                .answers
                .iter()
                .any(|r| matches!(&r.data, RData::CNAME(c) if c.0 == target)),
            "{transport}: the answer is node1's CNAME: {:?}",
            message.answers
        );
    }

    // A wrong secret and an unknown key: NOTAUTH, the TSIG error, no MAC (RFC 8945 §5.2.2).
    let wrong = Key {
        secret: b"not the consortium's secret, 32!".to_vec(),
        ..key.clone()
    };
    let stranger = Key {
        name: "unknown-key",
        ..key.clone()
    };
    for (id, bad, error) in [(2, &wrong, 16), (3, &stranger, 17)] {
        let mut message = query(id);
        sign_request(&mut message, bad, unix_now());
        let raw = common::udp_raw(dns, &message).await.expect("an answer");
        let tsig = raw_tsig(&raw).unwrap_or_else(|| panic!("{}: the refusal carries a TSIG", bad.name));
        assert_eq!(rcode(&raw), 9, "{}: NOTAUTH", bad.name);
        assert_eq!((tsig.error, tsig.mac.len()), (error, 0), "{}", bad.name);
    }

    let plain = common::udp_raw(dns, &query(4)).await.expect("an answer");
    assert_eq!(rcode(&plain), 0);
    assert!(
        raw_tsig(&plain).is_none(),
        "an unsigned query gets an unsigned answer"
    );

    // An outside judge: dig verifies the answer's TSIG and complains when it fails.
    let run = |key: &Key| dig_signed(dns, key, &[node1.as_str(), "A"]);
    let text = run(&key);
    assert!(
        text.contains("status: NOERROR")
            && text.contains("node1.operator-a.com.")
            && text.contains("TSIG PSEUDOSECTION")
            && !text.contains("Couldn't verify")
            && !text.contains("failure"),
        "dig -y accepts the signed answer:\n{text}"
    );
    let text = run(&wrong);
    assert!(
        text.contains("status: NOTAUTH") && text.contains("BADSIG"),
        "dig with a wrong secret sees NOTAUTH/BADSIG:\n{text}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Edits the members file and reloads at once (the watcher may reload too; the content, and
/// so the serial, is the same either way). Returns the zone as a full transfer then shows it.
async fn edit_and_transfer(
    tree: &Tree,
    server: &consortium_dns::app::ServerHandle,
    members: &[MemberSpec],
    id: u16,
) -> (u32, Record, BTreeSet<Rr>) {
    tree.replace(MEMBERS_FILE, &members_file(members));
    let report = server.control.reload("test edit").await;
    assert!(report.ok, "reload failed: {:?}", report.errors);
    transfer(server.dns_addrs[0], &axfr_request(id), None)
        .await
        .zone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ixfr_incremental_full_and_up_to_date() {
    let tree = Tree::example();
    configure(&tree, "allow-transfer = [{ network = \"127.0.0.0/8\" }]\n", &[]);
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 2, ""),
        MemberSpec::new("node2", "api.operator-b.net.", 2, ""),
        MemberSpec::new("node3", "planetmint.operator-c.org.", 1, ""),
    ];
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (s0, soa0, z0) = transfer(dns, &axfr_request(1), None).await.zone();

    // Version 1: a member added, another made the heaviest (the shared name's CNAME moves).
    members.push(MemberSpec::new("node4", "node.operator-d.io.", 1, ""));
    members[2].weight = 5;
    let (s1, soa1, z1) = edit_and_transfer(&tree, &server, &members, 2).await;
    // Version 2: a member removed, another's target changed.
    members.remove(1);
    members[0].target = "node1-new.operator-a.com.".into();
    let (s2, soa2, z2) = edit_and_transfer(&tree, &server, &members, 3).await;
    assert!(s0 != s1 && s1 != s2 && s0 != s2, "three serials: {s0} {s1} {s2}");
    assert!(z0 != z1 && z1 != z2);

    // From version 0: both steps, each the difference of the zones either side of it.
    let t = transfer(dns, &ixfr_request(10, s0), None).await;
    assert_eq!(t.form, Form::Incremental, "IXFR from {s0}");
    assert_eq!(Rr::of(&t.records[0]), Rr::of(&soa2), "opens with the current SOA");
    assert_eq!(Rr::of(&t.records[1]), Rr::of(&soa0), "then the client's SOA");
    assert_eq!(
        Rr::of(t.records.last().expect("records")),
        Rr::of(&soa2),
        "closes with it"
    );
    let got = steps(&t.records);
    assert_eq!(got.len(), 2, "{got:#?}");
    let want = [(s0, s1, &z0, &z1), (s1, s2, &z1, &z2)];
    for (step, (from, to, old, new)) in got.iter().zip(want) {
        assert_eq!((step.from, step.to), (from, to));
        let deleted: BTreeSet<Rr> = old.difference(new).cloned().collect();
        let added: BTreeSet<Rr> = new.difference(old).cloned().collect();
        assert!(
            step.deleted == deleted,
            "{}",
            diff_text("deletions", &step.deleted, &deleted)
        );
        assert!(
            step.added == added,
            "{}",
            diff_text("additions", &step.added, &added)
        );
    }
    // The SOAs in the middle are the versions' own.
    let soas: Vec<Rr> = t
        .records
        .iter()
        .filter(|r| soa_serial(r).is_some())
        .map(Rr::of)
        .collect();
    let expected_soas: Vec<Rr> = [&soa2, &soa0, &soa1, &soa1, &soa2, &soa2].map(Rr::of).to_vec();
    assert_eq!(soas, expected_soas);

    // From version 1: the last step only.
    let t = transfer(dns, &ixfr_request(11, s1), None).await;
    assert_eq!(t.form, Form::Incremental);
    let got = steps(&t.records);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].from, got[0].to), (s1, s2));

    // From the current serial, or one ahead of it: the current SOA alone (RFC 1995 §2).
    for (id, serial) in [(12, s2), (13, s2.wrapping_add(7))] {
        let t = transfer(dns, &ixfr_request(id, serial), None).await;
        assert_eq!(t.form, Form::UpToDate, "IXFR from {serial}");
        assert_eq!(t.messages.len(), 1);
        assert_eq!(t.records.len(), 1);
        assert_eq!(Rr::of(&t.records[0]), Rr::of(&soa2));
    }

    // From a serial this server never served: the whole zone, AXFR-style (RFC 1995 §4).
    let t = transfer(dns, &ixfr_request(14, s0.wrapping_sub(1_000)), None).await;
    let (serial, _, records) = t.zone();
    assert_eq!(serial, s2);
    assert!(
        records == z2,
        "{}",
        diff_text("IXFR falling back to full", &records, &z2)
    );

    // The history is bounded: after HISTORY_LEN more versions, s0..s2 are gone (full zone),
    // and the oldest kept one gets every step since, which rebuild the current zone.
    let mut kept = None;
    for round in 0..consortium_dns::transfer::HISTORY_LEN {
        members[1].target = format!("round-{round}.operator-c.org.");
        let version = edit_and_transfer(&tree, &server, &members, 20 + round as u16).await;
        kept.get_or_insert(version);
    }
    let (oldest, _, kept_zone) = kept.expect("versions");
    let (current, _, zone_now) = transfer(dns, &axfr_request(50), None).await.zone();
    for gone in [s0, s1, s2] {
        let t = transfer(dns, &ixfr_request(51, gone), None).await;
        assert_eq!(t.form, Form::Full, "IXFR from {gone}, no longer in the history");
    }
    let t = transfer(dns, &ixfr_request(52, oldest), None).await;
    assert_eq!(t.form, Form::Incremental, "IXFR from the oldest kept serial");
    let got = steps(&t.records);
    assert_eq!(got.len(), consortium_dns::transfer::HISTORY_LEN - 1);
    let mut at = oldest;
    for step in &got {
        assert_eq!(step.from, at, "the steps chain");
        at = step.to;
    }
    assert_eq!(at, current);
    let (serial, rebuilt) = apply_ixfr(&kept_zone, &t);
    assert_eq!(serial, current);
    assert!(
        rebuilt == zone_now,
        "{}",
        diff_text("zone rebuilt from the steps", &rebuilt, &zone_now)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Under `serial-policy = "keep"` an edit can change the content without changing the serial.
/// Secondaries already at that serial cannot know (the operator chose to manage serials), but
/// one at an older serial must still end up with what we serve now, not with the content the
/// serial first had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ixfr_after_a_change_that_kept_the_serial() {
    let tree = Tree::example();
    configure(
        &tree,
        "serial-policy = \"keep\"\nallow-transfer = [{ network = \"127.0.0.1\" }]\n",
        &[],
    );
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 2, ""),
        MemberSpec::new("node2", "api.operator-b.net.", 1, ""),
    ];
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (s0, _, z0) = transfer(dns, &axfr_request(1), None).await.zone();

    // The file's serial raised with a member added: a new serial.
    let zone_text = tree.read(ZONE_FILE);
    let raised = zone_text.replace(&format!("{s0} ; serial"), &format!("{} ; serial", s0 + 1));
    assert_ne!(raised, zone_text, "the zone file's serial line");
    tree.replace(ZONE_FILE, &raised);
    members.push(MemberSpec::new("node3", "planetmint.operator-c.org.", 1, ""));
    let (s1, _, _) = edit_and_transfer(&tree, &server, &members, 2).await;
    assert_eq!(s1, s0 + 1);
    // Another member, the serial left alone: same serial, new content.
    members.push(MemberSpec::new("node4", "node.operator-d.io.", 1, ""));
    let (s2, _, z2) = edit_and_transfer(&tree, &server, &members, 3).await;
    assert_eq!(s2, s1, "keep serves the file's serial");

    let t = transfer(dns, &ixfr_request(4, s0), None).await;
    let (serial, got) = apply_ixfr(&z0, &t);
    assert_eq!(serial, s2);
    assert!(
        got == z2,
        "{}",
        diff_text(
            &format!("a secondary at {s0} after IXFR ({:?})", t.form),
            &got,
            &z2
        )
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Polls AXFR until its serial is not `serial` (or `within` passes).
async fn wait_for_new_serial(dns: SocketAddr, serial: u32, within: Duration) -> (u32, Record, BTreeSet<Rr>) {
    let started = Instant::now();
    loop {
        let version = transfer(dns, &axfr_request(99), None).await.zone();
        if version.0 != serial {
            return version;
        }
        assert!(
            started.elapsed() < within,
            "the serial stayed {serial} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A serial names one content: a health change that moves the transfer pick is published with
/// a serial bump (rate-limited), never slipped into the serial secondaries already hold by a
/// reload that happens meanwhile. Otherwise a secondary at that serial keeps the old pick (a
/// member that is down) for good: IXFR tells it it is up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_change_waits_for_its_own_serial() {
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        endpoints.push(Endpoint::start().await);
    }
    let members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 5, &endpoints[0].probe()),
        MemberSpec::new("node2", "api.operator-b.net.", 3, &endpoints[1].probe()),
        MemberSpec::new("node3", "planetmint.operator-c.org.", 1, ""),
    ];
    let tree = Tree::example();
    configure(
        &tree,
        "allow-transfer = [{ network = \"127.0.0.1\" }]\ntransfer-pick-refresh = \"6s\"\n",
        &[],
    );
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (s0, _, z0) = transfer(dns, &axfr_request(1), None).await.zone();
    assert!(z0.contains(&pool_record(&members[0])));

    // node1 down: the first pick change is published at once, with a new serial.
    endpoints[0].stop().await;
    let (s1, _, z1) = wait_for_new_serial(dns, s0, Duration::from_secs(5)).await;
    let bumped = Instant::now();
    assert!(z1.contains(&pool_record(&members[1])), "node2 is the pick now");

    // node2 down within the rate limit (our own answers show health has seen it), and a
    // reload of unchanged files meanwhile.
    endpoints[1].stop().await;
    let any = format!("any.{ORIGIN}");
    let node2 = pool_record(&members[1]);
    let started = Instant::now();
    'seen: loop {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "node2 never went down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // node2 outweighs node3 three to one: 20 answers without it mean it is down.
        for _ in 0..20 {
            let (_, records) = answer_of(dns, &any, RecordType::CNAME).await.expect("our answer");
            if records.contains(&node2) {
                continue 'seen;
            }
        }
        break;
    }
    let report = server.control.reload("unchanged files").await;
    assert!(report.ok);
    let (serial, _, zone) = transfer(dns, &axfr_request(2), None).await.zone();
    if serial == s1 {
        assert!(
            zone == z1,
            "{}",
            diff_text(&format!("serial {s1} after a reload"), &zone, &z1)
        );
    } else {
        assert!(
            bumped.elapsed() >= Duration::from_secs(5),
            "the serial moved before transfer-pick-refresh allowed it"
        );
    }

    // When the rate limit allows, the pick moves with its own serial, and a secondary at s1
    // gets it by IXFR.
    let (s2, _, z2) = wait_for_new_serial(dns, s1, Duration::from_secs(10)).await;
    assert!(z2.contains(&pool_record(&members[2])), "node3 is the pick now");
    let t = transfer(dns, &ixfr_request(3, s1), None).await;
    let (serial, got) = apply_ixfr(&z1, &t);
    assert_eq!(serial, s2);
    assert!(
        got == z2,
        "{}",
        diff_text("a secondary at s1 after IXFR", &got, &z2)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_members_transfer_record_for_record() {
    const MEMBERS: usize = 100_000;
    let tree = Tree::example();
    configure(&tree, "allow-transfer = [{ network = \"127.0.0.1\" }]\n", &[]);
    let members = many_members(MEMBERS);
    tree.write(MEMBERS_FILE, &members_file(&members));
    let expected = expected_zone(&tree, &members);
    assert_eq!(
        expected.len(),
        zone_file_records(&tree).0.len() + MEMBERS + 1,
        "static records + one CNAME per member + the pool's"
    );
    assert!(
        expected.contains(&Rr::cname(&format!("any.{ORIGIN}"), POOL_TTL, &members[2].target)),
        "the transfer pick is m2, the first of the heaviest"
    );
    let started = Instant::now();
    let server = tree.start().await;
    let loaded = started.elapsed();

    let started = Instant::now();
    let t = transfer(server.dns_addrs[0], &axfr_request(1), None).await;
    let took = started.elapsed();
    let (serial, soa, records) = t.zone();
    assert_eq!(Some(serial), served_serial(server.dns_addrs[0]).await);
    let (_, file_soa) = zone_file_records(&tree);
    assert_eq!(
        Rr::of(&soa),
        Rr::of(&file_soa),
        "the file's SOA, served as written"
    );
    assert!(
        records == expected,
        "{}",
        diff_text("100,000-member AXFR", &records, &expected)
    );
    for message in &t.messages {
        assert!(message.len() <= 65_535, "every message fits a TCP frame");
    }
    eprintln!(
        "{MEMBERS} members: loaded in {loaded:?}; AXFR of {} records in {} messages ({} bytes) in {took:?}",
        t.records.len(),
        t.messages.len(),
        t.messages.iter().map(Vec::len).sum::<usize>()
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Runs the real binary with a TSIG key at trace level through failing and succeeding
/// transfers, a signed NOTIFY, a reload that fails on a damaged key file and `check` on it:
/// the secret shows up nowhere in what it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_material_never_logged() {
    let key = Key::transfer();
    let tree = Tree::example();
    // A secondary that takes NOTIFYs and never answers them, so retries are logged too.
    let secondary = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind secondary");
    let secondary_addr = secondary.local_addr().expect("address");
    configure(
        &tree,
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{k}\" }}]\n\
             notify = [{{ address = \"{secondary_addr}\", key = \"{k}\" }}]\n",
            k = key.name
        ),
        &[&key],
    );
    let port = common::free_port();
    let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stderr_path = tree.path("stderr.log");
    let stdout_path = tree.path("stdout.log");
    let mut child = Command::new(common::binary())
        .arg("serve")
        .arg("--config")
        .arg(tree.config_path())
        .arg("--listen")
        .arg(dns.to_string())
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start consortium-dns");
    let pid = child.id().to_string();
    let started = Instant::now();
    while served_serial(dns).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the binary did not answer; its log:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the binary exited with {status}:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The NOTIFY sent at start is signed with the key.
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), secondary.recv_from(&mut buf))
        .await
        .expect("a NOTIFY within 5 s")
        .expect("receive");
    let notify = buf[..n].to_vec();
    assert_eq!((notify[2] >> 3) & 0x0f, 4, "opcode NOTIFY");
    verify_response(&[notify], &key, &[]).unwrap_or_else(|e| panic!("the NOTIFY's TSIG: {e}"));

    // Failing transfers: unsigned, a wrong secret, an unknown key, a skewed clock.
    let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let t = transfer(dns, &axfr_request(1), localhost).await;
    assert_eq!(t.form, Form::Error(ResponseCode::Refused));
    for (id, signer, time) in [
        (
            2,
            Key {
                secret: b"not the consortium's secret, 32!".to_vec(),
                ..key.clone()
            },
            unix_now(),
        ),
        (
            3,
            Key {
                name: "stranger-key",
                ..key.clone()
            },
            unix_now(),
        ),
        (4, key.clone(), unix_now() - 7_200),
    ] {
        let mut request = axfr_request(id);
        sign_request(&mut request, &signer, time);
        let t = transfer(dns, &request, localhost).await;
        assert_eq!(t.form, Form::Error(ResponseCode::NotAuth), "request {id}");
    }
    // A succeeding one.
    let mut request = axfr_request(5);
    let request_mac = sign_request(&mut request, &key, unix_now());
    let t = transfer(dns, &request, localhost).await;
    assert_eq!(t.form, Form::Full);
    verify_response(&t.messages, &key, &request_mac).unwrap_or_else(|e| panic!("{e}"));

    // A damaged key file (the secret with a character base64 does not have): the reload
    // fails and says where, without quoting the file.
    let key_file = format!("config/{}.key", key.name);
    tree.replace(&key_file, &format!("{}*\n", key.base64()));
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("send SIGHUP");
    assert!(status.success());
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if log.contains("holds no valid base64 secret") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failed reload was not logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = Command::new(common::binary())
        .arg("check")
        .arg("--config")
        .arg(tree.config_path())
        .env("RUST_LOG", "trace")
        .output()
        .expect("run check");
    assert!(!check.status.success(), "check fails on the damaged key file");
    // The NOTIFY nobody acknowledges is logged when its first attempt times out: wait for that
    // line, so the search below covers the NOTIFY path however fast the steps above ran.
    let started = Instant::now();
    while !std::fs::read_to_string(&stderr_path)
        .unwrap_or_default()
        .contains("NOTIFY")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no NOTIFY line was logged within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let output = format!(
        "{}{}{}{}",
        std::fs::read_to_string(&stderr_path).expect("stderr"),
        std::fs::read_to_string(&stdout_path).expect("stdout"),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
    );
    // The log covers what happened (so the search below is not vacuous).
    for expected in ["transfer refused", "TSIG", "NOTIFY", "reload failed", key.name] {
        assert!(output.contains(expected), "the output mentions {expected:?}");
    }
    let encoded = key.base64();
    let hex: String = key.secret.iter().map(|b| format!("{b:02x}")).collect();
    let secret_text = String::from_utf8(key.secret.clone()).expect("ASCII secret");
    let byte_list = format!("{:?}", key.secret);
    for (form, leak) in [
        ("base64", encoded.as_str()),
        ("base64 without padding", encoded.trim_end_matches('=')),
        ("hex", hex.as_str()),
        ("raw", secret_text.as_str()),
        ("Debug bytes", byte_list.as_str()),
    ] {
        assert!(
            !output.contains(leak),
            "the secret ({form}) appears in the output of consortium-dns"
        );
    }
    eprintln!(
        "key_material_never_logged: {} bytes of trace-level output searched",
        output.len()
    );
}

// ---------------------------------------------------------------------------------------------
// NOTIFY retries
// ---------------------------------------------------------------------------------------------

/// One NOTIFY as the test's secondary saw it.
#[derive(Debug, Clone, Copy)]
struct NotifySeen {
    at: Instant,
    serial: u32,
    /// The rcode the secondary answered with.
    answered: u8,
}

/// How many NOTIFYs of one serial the secondary refuses before it acknowledges one.
const REFUSALS_PER_SERIAL: usize = 3;

/// A secondary on a UDP socket that answers the first `REFUSALS_PER_SERIAL` NOTIFYs of each
/// serial with REFUSED and acknowledges (NOERROR) every later one. It records each NOTIFY.
struct RefusingSecondary {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<NotifySeen>>>,
    task: JoinHandle<()>,
}

impl RefusingSecondary {
    async fn start() -> RefusingSecondary {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind secondary");
        let addr = socket.local_addr().expect("secondary address");
        let seen: Arc<Mutex<Vec<NotifySeen>>> = Arc::default();
        let log = seen.clone();
        // A malformed NOTIFY panics this task; `wait_for` and `stop` report that panic.
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let at = Instant::now();
                let request = &buf[..n];
                let message = Message::from_vec(request).expect("the NOTIFY parses");
                assert_eq!(
                    message.metadata.op_code,
                    OpCode::Notify,
                    "opcode NOTIFY (RFC 1996 §3.1)"
                );
                let serial = message
                    .answers
                    .iter()
                    .find_map(soa_serial)
                    .expect("the NOTIFY carries the SOA (RFC 1996 §3.7)");
                let answered = {
                    let mut seen = log.lock().expect("lock");
                    let earlier = seen.iter().filter(|s| s.serial == serial).count();
                    let rcode = if earlier < REFUSALS_PER_SERIAL { 5 } else { 0 };
                    seen.push(NotifySeen {
                        at,
                        serial,
                        answered: rcode,
                    });
                    rcode
                };
                // The response: the request's ID and question, QR set, opcode NOTIFY, AA.
                let question_end = skip_name(request, 12).expect("question name") + 4;
                let mut response = request[..question_end].to_vec();
                response[2] = 0x80 | (4 << 3) | 0x04;
                response[3] = answered;
                response[6..12].fill(0);
                let _ = socket.send_to(&response, from).await;
            }
        });
        RefusingSecondary { addr, seen, task }
    }

    /// Fails with the responder's own panic when it has stopped.
    async fn check_running(&mut self) {
        if self.task.is_finished() {
            match (&mut self.task).await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!("the secondary stopped: {other:?}"),
            }
        }
    }

    /// Waits until `done` holds for what the secondary has seen, or fails after `within`.
    async fn wait_for(&mut self, within: Duration, what: &str, done: impl Fn(&[NotifySeen]) -> bool) {
        let started = Instant::now();
        loop {
            self.check_running().await;
            {
                let seen = self.seen.lock().expect("lock");
                if done(&seen) {
                    return;
                }
                assert!(
                    started.elapsed() < within,
                    "{what} within {within:?}; the secondary saw {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the secondary; returns what it saw.
    async fn stop(mut self) -> Vec<NotifySeen> {
        self.check_running().await;
        self.task.abort();
        self.seen.lock().expect("lock").clone()
    }
}

/// A secondary that refuses NOTIFYs is retried with doubling waits (1 s, 2 s, 4 s) until it
/// acknowledges, and then left alone; a newer serial stops the retries of the older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_retried_with_backoff_until_acknowledged_or_superseded() {
    let mut secondary = RefusingSecondary::start().await;
    let tree = Tree::example();
    configure(
        &tree,
        &format!("notify = [{{ address = \"{}\" }}]\n", secondary.addr),
        &[],
    );
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 2, ""),
        MemberSpec::new("node2", "api.operator-b.net.", 1, ""),
    ];
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let s0 = served_serial(dns).await.expect("the served serial");

    // The serial at start is sent, refused, and sent again about 1 s later.
    secondary
        .wait_for(
            Duration::from_secs(5),
            "two NOTIFYs of the first serial",
            |seen| seen.iter().filter(|s| s.serial == s0).count() >= 2,
        )
        .await;
    // A member's weight changed: a new serial, while the first one's retries are waiting
    // (their next try would come 2 s after the second).
    members[1].weight = 3;
    tree.replace(MEMBERS_FILE, &members_file(&members));
    let report = server.control.reload("test edit").await;
    assert!(report.ok, "reload failed: {:?}", report.errors);
    let s1 = served_serial(dns).await.expect("the served serial");
    assert_ne!(s1, s0, "the edit changed the serial");

    // The new serial: refused three times, tried again after 1, 2 and 4 s, acknowledged.
    secondary
        .wait_for(
            Duration::from_secs(15),
            "the acknowledged NOTIFY of the new serial",
            |seen| seen.iter().any(|s| s.serial == s1 && s.answered == 0),
        )
        .await;
    // Were the acknowledgement ignored, the next try would come 8 s after it.
    tokio::time::sleep(Duration::from_secs(9)).await;
    server.shutdown(Duration::from_secs(1)).await;
    let seen = secondary.stop().await;

    let of =
        |serial: u32| -> Vec<NotifySeen> { seen.iter().filter(|s| s.serial == serial).copied().collect() };
    let (old, new) = (of(s0), of(s1));
    assert_eq!(
        old.len() + new.len(),
        seen.len(),
        "NOTIFYs only for {s0} and {s1}: {seen:?}"
    );
    // 2 s of waiting were left to the old serial's retries when the new serial came, and
    // the test watched far longer than that.
    assert_eq!(
        old.len(),
        2,
        "the old serial {s0} was sent twice, then superseded: {seen:?}"
    );
    assert!(
        old.iter().all(|o| o.at < new[0].at),
        "the old serial {s0} never appears after the new one {s1} was sent: {seen:?}"
    );
    assert_eq!(
        new.len(),
        REFUSALS_PER_SERIAL + 1,
        "three refusals, one acknowledgement, nothing after it: {seen:?}"
    );
    assert_eq!(new.last().map(|s| s.answered), Some(0));

    // The waits double. A loaded machine delays a try, never hastens it: each gap is at
    // least 0.8 × its expected value, below expected + 1.5 s, and longer than the one before.
    let gaps: Vec<Duration> = new.windows(2).map(|w| w[1].at - w[0].at).collect();
    let expected = [1.0, 2.0, 4.0];
    for (i, (gap, want)) in gaps.iter().zip(expected).enumerate() {
        let gap = gap.as_secs_f64();
        assert!(
            gap >= 0.8 * want && gap < want + 1.5,
            "wait {i} after a refusal: {gap:.2} s, expected about {want} s (all: {gaps:?})"
        );
    }
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "the waits grow: {gaps:?}");
    let first_gap = (old[1].at - old[0].at).as_secs_f64();
    assert!(
        (0.8..2.5).contains(&first_gap),
        "the old serial was retried about 1 s after its refusal: {first_gap:.2} s"
    );
}
