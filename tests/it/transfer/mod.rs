//! Zone transfers to standard secondaries, NOTIFY and TSIG (issue 8).
//!
//! - `secondaries`: `nsd_secondary_follows_edits_and_health`: NSD 4.6 (the Debian package)
//!   runs on loopback as a secondary of the in-process server, with a TSIG key, through a
//!   relay that notes every transfer it carries. It must serve what we serve for every static
//!   name, take a member added by a file edit through NOTIFY + IXFR within 5 s, and follow the
//!   shared name's transfer pick (the heaviest eligible member, first of equals) to a healthy
//!   member within 10 s of the picked member's probe endpoint going away.
//! - `axfr`: `axfr_refused_without_key_wrong_key_or_unlisted_address`: the ACL and TSIG
//!   answers (REFUSED; NOTAUTH with BADSIG, BADKEY or BADTIME per RFC 8945 §5.2), and a signed
//!   multi-message AXFR verified here (RFC 8945 §5.3.1) and by BIND's `dig`;
//!   `hundred_thousand_members_transfer_record_for_record`: a 100,000-member zone over AXFR,
//!   compared as a set with what the files say.
//! - `ixfr`: `ixfr_incremental_full_and_up_to_date`: RFC 1995 answers from the bounded
//!   history; `ixfr_after_a_change_that_kept_the_serial` and
//!   `pick_change_waits_for_its_own_serial`: a secondary at an older serial always ends up
//!   with what is served now, and a serial never changes meaning under a secondary that
//!   holds it.
//! - `tsig`: `signed_queries_get_signed_answers`: TSIG on ordinary queries;
//!   `key_material_never_logged`: the real binary, with a key, at trace level.
//! - `notify`: `notify_retried_with_backoff_until_acknowledged_or_superseded`: a secondary
//!   that refuses NOTIFYs is retried after 1, 2, 4 s until it acknowledges, then left alone;
//!   a newer serial ends the older serial's retries.
//!
//! - `update`: RFC 2136 UPDATE scoped to members' ACME challenges (issue 18): nsupdate's
//!   adds and deletes, every refusal leaving the answers as they were, replays and stale
//!   requests, the values across reload, restart and lifetime, a flood within quota and rate,
//!   and an NSD secondary serving the challenge before `GET /secondaries` says it does.
//! - `acme`: pebble (the ACME test CA) issues certificates through certbot and lego with the
//!   operators' own keys; the issued certificate, served over HTTPS, shows in node1's health
//!   report as covering its node name and the shared name.
//!
//! This module holds what they share: TSIG keys and TSIG as RFC 8945 describes it, the zone
//! file's records, transfer requests and a client that reads a whole transfer, members files,
//! probe endpoints and the outside programs.
//!
//! Expected records come from the zone file read by hickory-proto's own master-file parser
//! and from the members file as the test wrote it, never from our loader. The TSIG checks
//! here are written from RFC 8945 with `ring`'s HMAC, independently of `src/transfer/tsig.rs`.

mod acme;
mod axfr;
mod ixfr;
mod notify;
mod ours;
mod secondaries;
mod signed;
mod tsig;
mod update;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{NULL, SOA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use ring::hmac;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{self, NsdKey, Rr, Tree, program, raw_name, read_frame, write_frame};

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

    /// Lowercase uncompressed wire form of the key's name.
    fn name_wire(&self) -> Vec<u8> {
        raw_name(&self.name.to_ascii_lowercase())
    }

    fn algorithm_wire(&self) -> Vec<u8> {
        raw_name(self.algorithm_text())
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

    /// The key as NSD's configuration names it.
    fn nsd(&self) -> NsdKey {
        NsdKey {
            name: self.name.to_string(),
            algorithm: self.algorithm_text().to_string(),
            secret: self.base64(),
        }
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
    sign_request_with_fudge(message, key, time, 300)
}

/// As `sign_request`, asking for a time window of `fudge` seconds.
fn sign_request_with_fudge(message: &mut Vec<u8>, key: &Key, time: u64, fudge: u16) -> Vec<u8> {
    let mut context = hmac::Context::with_key(&key.hmac());
    context.update(message);
    context.update(&tsig_variables(key, time, fudge, 0, &[]));
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
    message.extend_from_slice(&fudge.to_be_bytes());
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
// Records compared as sets (`common::Rr`)
// ---------------------------------------------------------------------------------------------

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
    let mut lines = zone_lines.to_string();
    for key in keys {
        lines.push_str(&format!(
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
    common::append_to_zone_table(tree, &lines);
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

/// The records apart from the pool records (`zone::carrier`), and what those say about each
/// member: (member name, target, weight), decoded by the server's own reader.
fn split_pools(records: &BTreeSet<Rr>) -> (BTreeSet<Rr>, BTreeSet<(String, String, u32)>) {
    let (pools, rest): (BTreeSet<Rr>, BTreeSet<Rr>) = records.iter().cloned().partition(|r| {
        r.rtype == consortium_dns::zone::carrier::POOL_MEMBER && r.owner.starts_with("_pool.")
    });
    let entries = pools
        .iter()
        .map(|r| {
            assert_eq!(r.owner, format!("_pool.any.{ORIGIN}"), "the pool's records");
            let member = consortium_dns::zone::carrier::parse(&r.rdata)
                .unwrap_or_else(|e| panic!("pool record {r}: {e}"));
            (
                member.name.to_string().to_ascii_lowercase(),
                member.target.to_string().to_ascii_lowercase(),
                member.weight,
            )
        })
        .collect();
    (rest, entries)
}

/// What the pool records of `members` (all in the pool `any`) should say.
fn pool_entries(members: &[MemberSpec]) -> BTreeSet<(String, String, u32)> {
    members
        .iter()
        .map(|m| {
            (
                m.owner().to_ascii_lowercase(),
                m.target.to_ascii_lowercase(),
                m.weight,
            )
        })
        .collect()
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
