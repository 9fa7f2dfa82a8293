//! RFC 2136 dynamic UPDATE, scoped so that each member's operator can publish its own ACME
//! DNS-01 challenges and nothing else.
//!
//! A member with `update-key = "op-a"` lets that TSIG key add and delete TXT values at
//! `_acme-challenge.<member label>.<zone>` and `_acme-challenge.<pool label>.<zone>` for each
//! pool the member is in. Values are owned: a delete, even of a whole RRset, removes only the
//! values the same key added, so operators issuing for the shared name at once never clobber
//! each other. `process` is pure over the snapshot, the dynamic layer (`store::Store`) and the
//! per-key guards; the control plane applies the result by rebuilding the snapshot before the
//! answer is sent.

pub mod store;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::snapshot::{Snapshot, Zone};
use crate::tsig::{self, Signer, TsigKey, Verified};
use crate::wire::{self, Rcode, be16, read_name, read_record};
use crate::zone::members::{Member, PoolDef};
use crate::zone::name::Name;
use crate::zone::rtype;
use crate::zone::{Record, ZoneData};
use store::{Challenge, Store};

/// What UPDATE may do in one zone (`[[zone]] acme-challenge-*`, `update-rate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// TTL the challenge TXT records are served with.
    pub ttl: u32,
    /// A value is removed by itself this long after it was (last) added.
    pub lifetime: Duration,
    /// Values one key may hold at one name.
    pub quota: u32,
    /// Accept any TXT value, not only ACME key-authorisation digests.
    pub any_value: bool,
    /// Updates per second per key (a burst of twice that); 0 = no limit.
    pub rate: u32,
    /// Instances serving the zone from the same files, to forward accepted updates to.
    pub peers: Vec<std::net::SocketAddr>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            ttl: 0,
            lifetime: Duration::from_secs(3_600),
            quota: 8,
            any_value: false,
            rate: 5,
            peers: Vec::new(),
        }
    }
}

/// What scope and prerequisite checks read of a zone, whether built (`Zone`) or just loaded
/// (`ZoneData`, when a reload drops values whose grant went away).
pub struct ZoneView<'a> {
    pub origin: &'a Name,
    pub records: &'a [Record],
    pub members: &'a [Member],
    pub pools: Vec<&'a PoolDef>,
}

impl<'a> ZoneView<'a> {
    pub fn of_zone(zone: &'a Zone) -> ZoneView<'a> {
        ZoneView {
            origin: &zone.origin,
            records: &zone.records,
            members: &zone.members,
            pools: zone.pools.iter().map(|p| &p.def).collect(),
        }
    }

    pub fn of_data(zone: &'a ZoneData) -> ZoneView<'a> {
        ZoneView {
            origin: &zone.origin,
            records: &zone.records,
            members: &zone.members,
            pools: zone.pools.iter().collect(),
        }
    }

    /// Whether `challenge` may stay: its key still has its name, and the files do not own it.
    pub fn keeps(&self, challenge: &Challenge) -> bool {
        let name = challenge.name.key();
        granted_names(self, &challenge.key)
            .iter()
            .any(|g| g.key() == name)
            && records_at(self, &[], &name).is_empty()
    }
}

/// The label every challenge name starts with (RFC 8555 §8.4).
pub const CHALLENGE_LABEL: &str = "_acme-challenge";
/// An ACME DNS-01 value: base64url of a SHA-256 digest, without padding (RFC 8555 §8.4).
const ACME_VALUE_LEN: usize = 43;
/// Per-key state that is not zone data: the rate buckets and the MACs already accepted.
#[derive(Debug, Default)]
pub struct Guard {
    buckets: HashMap<Box<str>, (f64, Instant)>,
    seen: tsig::ReplayGuard,
}

impl Guard {
    /// Takes one token from `key`'s bucket; false when it is empty.
    fn allow(&mut self, key: &str, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let capacity = f64::from(rate) * 2.0;
        let now = Instant::now();
        let (tokens, last) = self.buckets.entry(key.into()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(rate)).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remembers a verified request MAC; false when it was seen before (a replay).
    fn first_use(&mut self, mac: &[u8], now: u64) -> bool {
        self.seen.first_use(mac, now)
    }
}

/// The outcome of one UPDATE, for the answer, the logs and the metrics.
#[derive(Debug)]
pub struct Processed {
    /// The answer (empty: send nothing).
    pub response: Vec<u8>,
    /// The zone (key) whose challenge values changed: rebuild before answering.
    pub changed: Option<Box<[u8]>>,
    pub zone: Option<String>,
    /// The verified key.
    pub key: Option<String>,
    pub rcode: Rcode,
    pub added: usize,
    pub removed: usize,
    /// Why it was refused, as the answer's EDE text says.
    pub reason: Option<String>,
    /// Sent on by a peer instance (`forward_copy`): applied here, never forwarded again.
    pub forwarded: bool,
    /// The owner names of the update section (for the log), at most `LOGGED_NAMES`.
    pub names: Vec<String>,
}

/// Names of one update written in its log line, at most.
const LOGGED_NAMES: usize = 4;

/// The copy of a signed UPDATE that an instance forwards to its peers: the header ID is the
/// complement of the TSIG's original ID, which the MAC does not cover (RFC 8945 §4.3.1: the
/// original ID is what is signed), so the peer can tell a forwarded copy and does not send it
/// on again. A client sets the header ID to the original ID.
pub fn forward_copy(message: &[u8]) -> Option<Vec<u8>> {
    let request = parse(message)?;
    let record = tsig::find(message, request.zone_end).ok()??;
    let mut copy = message.to_vec();
    copy[0..2].copy_from_slice(&(!record.original_id).to_be_bytes());
    Some(copy)
}

/// A refusal: the rcode, the EDE code and text when there is one.
struct Refusal {
    rcode: Rcode,
    ede: Option<u16>,
    text: String,
}

impl Refusal {
    fn new(rcode: Rcode, text: impl Into<String>) -> Refusal {
        Refusal {
            rcode,
            ede: None,
            text: text.into(),
        }
    }

    /// REFUSED with EDE 18 Prohibited (RFC 8914 §4.19) and a text naming the rule.
    fn prohibited(text: impl Into<String>) -> Refusal {
        Refusal {
            rcode: Rcode::REFUSED,
            ede: Some(18),
            text: text.into(),
        }
    }
}

/// One record of the prerequisite or update section.
struct Rr {
    name: Vec<u8>,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

/// The request laid out: zone, prerequisites, updates, whether it had an OPT record.
struct Request {
    zone: Vec<u8>,
    zone_class: u16,
    prerequisites: Vec<Rr>,
    updates: Vec<Rr>,
    /// Where the prerequisite section starts (TSIG's walk of the records begins there).
    zone_end: usize,
    edns: bool,
}

/// Reads the sections (RFC 2136 §2); `None` = FORMERR.
fn parse(message: &[u8]) -> Option<Request> {
    // §3.1.1: exactly one zone, of type SOA.
    if be16(message, 4) != 1 {
        return None;
    }
    let (zone, after) = read_name(message, wire::HEADER_LEN)?;
    let fixed = message.get(after..after + 4)?;
    if u16::from_be_bytes([fixed[0], fixed[1]]) != rtype::SOA {
        return None;
    }
    let zone_class = u16::from_be_bytes([fixed[2], fixed[3]]);
    let zone_end = after + 4;
    let mut pos = zone_end;
    let section = |count: u16, pos: &mut usize| -> Option<Vec<Rr>> {
        let mut rrs = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let record = read_record(message, *pos)?;
            let (name, _) = read_name(message, record.start)?;
            rrs.push(Rr {
                name,
                rtype: record.rtype,
                class: record.class,
                ttl: record.ttl,
                rdata: message[record.rdata..record.end].to_vec(),
            });
            *pos = record.end;
        }
        Some(rrs)
    };
    let prerequisites = section(be16(message, 6), &mut pos)?;
    let updates = section(be16(message, 8), &mut pos)?;
    let mut edns = false;
    for _ in 0..be16(message, 10) {
        let record = read_record(message, pos)?;
        edns |= record.rtype == rtype::OPT;
        pos = record.end;
    }
    Some(Request {
        zone,
        zone_class,
        prerequisites,
        updates,
        zone_end,
        edns,
    })
}

/// Handles one UPDATE message from a listener. `policy` gives each zone's settings.
pub fn process(
    snapshot: &Snapshot,
    store: &mut Store,
    guard: &mut Guard,
    policy: &dyn Fn(&Name) -> Policy,
    message: &[u8],
    now: u64,
) -> Processed {
    let mut processed = Processed {
        response: Vec::new(),
        changed: None,
        zone: None,
        key: None,
        rcode: Rcode::NOERROR,
        added: 0,
        removed: 0,
        reason: None,
        forwarded: false,
        names: Vec::new(),
    };
    if message.len() < wire::HEADER_LEN || be16(message, 2) & wire::QR != 0 {
        return processed; // too short to answer, or a response: silence
    }
    let Some(request) = parse(message) else {
        processed.rcode = Rcode::FORMERR;
        processed.response = header(message, Rcode::FORMERR);
        return processed;
    };
    for rr in &request.updates {
        let name = Name::from_wire_unchecked(&rr.name).to_string();
        if processed.names.len() < LOGGED_NAMES && !processed.names.contains(&name) {
            processed.names.push(name);
        }
    }
    // RFC 8945 §5.2: the signature is checked before anything else is looked at.
    let record = match tsig::find(message, request.zone_end) {
        Ok(Some(record)) => record,
        Ok(None) => {
            let refusal = Refusal::prohibited("updates must be signed (TSIG) with a member's update-key");
            return refuse(processed, message, &request, None, refusal);
        }
        Err(_) => {
            processed.rcode = Rcode::FORMERR;
            processed.response = header(message, Rcode::FORMERR);
            return processed;
        }
    };
    processed.forwarded = be16(message, 0) == !record.original_id;
    let (key, request_mac) = match tsig::verify(message, record, &snapshot.tsig_keys, now) {
        Verified::Valid { key, request_mac, .. } => (key, request_mac),
        Verified::Rejected { error, key, record } => {
            let mut response = header(message, Rcode::NOTAUTH);
            tsig::append_rejection(&mut response, error, key, &record);
            processed.rcode = Rcode::NOTAUTH;
            processed.reason = Some(format!("TSIG error {error}"));
            processed.response = response;
            return processed;
        }
    };
    let key_name = key_text(key);
    processed.key = Some(key_name.clone());
    if !guard.first_use(&request_mac, now) {
        // A replay of an accepted request: as stale as one outside the time window.
        let mut response = header(message, Rcode::NOTAUTH);
        let record = tsig::find(message, request.zone_end).ok().flatten();
        if let Some(record) = record {
            tsig::append_rejection(&mut response, tsig::BADTIME, Some(key), &record);
        }
        processed.rcode = Rcode::NOTAUTH;
        processed.reason = Some("replayed request".into());
        processed.response = response;
        return processed;
    }
    let signed = Some((key, request_mac));
    let Some(zone) = snapshot
        .zones()
        .iter()
        .find(|z| z.origin.key()[..] == request.zone[..] && request.zone_class == rtype::CLASS_IN)
    else {
        // RFC 2136 §3.1.2: not authoritative for the zone named.
        let refusal = Refusal::new(Rcode::NOTAUTH, "not authoritative for this zone");
        return refuse(processed, message, &request, signed, refusal);
    };
    processed.zone = Some(zone.origin.to_string());
    let policy = policy(&zone.origin);
    if !guard.allow(&key_name, policy.rate) {
        let text = format!(
            "rate limit: key {key_name} may send {} updates per second (update-rate)",
            policy.rate
        );
        return refuse(processed, message, &request, signed, Refusal::prohibited(text));
    }
    let zone = ZoneView::of_zone(zone);
    let current = store.zone(&zone.origin.key()).to_vec();
    if let Err(refusal) = check_prerequisites(&zone, &current, &request) {
        return refuse(processed, message, &request, signed, refusal);
    }
    let grants = granted_names(&zone, &key_name);
    let mut next = current.clone();
    let applied = prescan(&zone, &request, &grants, &key_name, &policy)
        .and_then(|()| apply(&mut next, &request, &key_name, &policy, now));
    match applied {
        Err(refusal) => refuse(processed, message, &request, signed, refusal),
        Ok((added, removed)) => {
            processed.added = added;
            processed.removed = removed;
            if next != current {
                store.set_zone(&zone.origin.key(), next);
                processed.changed = Some(zone.origin.key());
            }
            let mut response = header(message, Rcode::NOERROR);
            sign(&mut response, signed);
            processed.response = response;
            processed
        }
    }
}

/// The key's name as members write it in `update-key`: lowercased, no final dot.
fn key_text(key: &TsigKey) -> String {
    key.name.to_string().trim_end_matches('.').to_ascii_lowercase()
}

/// True when a member's `update-key` (as written) names `key`.
pub fn names_key(update_key: &str, key: &TsigKey) -> bool {
    same_key(update_key, &key_text(key))
}

/// True when a member's `update-key` (as written) is the key `key_text` (see `key_text`).
fn same_key(update_key: &str, key_text: &str) -> bool {
    update_key.trim_end_matches('.').eq_ignore_ascii_case(key_text)
}

/// A header-only answer (RFC 2136 §3.8: the sections are not echoed, their counts are zero).
fn header(message: &[u8], rcode: Rcode) -> Vec<u8> {
    let mut response = Vec::with_capacity(128);
    wire::error_reply(message, &mut response, None, rcode, 0, None);
    response
}

fn sign(response: &mut Vec<u8>, signed: Option<(&TsigKey, Vec<u8>)>) {
    if let Some((key, request_mac)) = signed {
        Signer::new(key, request_mac).sign(response, 0, &[]);
    }
}

/// Answers a refusal: its rcode, an EDE with the reason when the request had an OPT record
/// (RFC 6891 §7: none otherwise), signed with the request's key when it was valid.
fn refuse(
    mut processed: Processed,
    message: &[u8],
    request: &Request,
    signed: Option<(&TsigKey, Vec<u8>)>,
    refusal: Refusal,
) -> Processed {
    let mut response = header(message, refusal.rcode);
    if request.edns {
        wire::put_opt_with_text(
            &mut response,
            refusal.rcode,
            refusal.ede.unwrap_or(0),
            &refusal.text,
        );
        response[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
    sign(&mut response, signed);
    processed.rcode = refusal.rcode;
    processed.reason = Some(refusal.text);
    processed.response = response;
    processed
}

/// The names `key` may change in `zone`: its members' challenge names and those of the
/// pools they are in.
fn granted_names(zone: &ZoneView<'_>, key: &str) -> Vec<Name> {
    let mut names: Vec<Name> = Vec::new();
    for (index, member) in zone.members.iter().enumerate() {
        let Some(member_key) = &member.update_key else {
            continue;
        };
        if !same_key(member_key, key) {
            continue;
        }
        let pools = zone.pools.iter().filter(|p| p.members.contains(&index));
        for owner in std::iter::once(&member.name).chain(pools.map(|p| &p.name)) {
            if let Ok(name) = Name::parse(CHALLENGE_LABEL, Some(owner)) {
                if !names.iter().any(|n| n.key() == name.key()) {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn is_in_zone(name: &[u8], zone: &ZoneView<'_>) -> bool {
    let origin = zone.origin.key();
    name.len() >= origin.len()
        && name.ends_with(&origin)
        && (name.len() == origin.len() || label_boundary(name, name.len() - origin.len()))
}

/// True when a label starts at `at` in the wire name.
fn label_boundary(name: &[u8], at: usize) -> bool {
    let mut pos = 0;
    while pos < at {
        pos += 1 + usize::from(name[pos]);
    }
    pos == at
}

/// The RRsets at `name` (lowercased wire): (type, RDATA) of every record, files', members',
/// pools' and challenges'.
fn records_at(zone: &ZoneView<'_>, challenges: &[Challenge], name: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut found: Vec<(u16, Vec<u8>)> = zone
        .records
        .iter()
        .filter(|r| r.name.key()[..] == *name)
        .map(|r| (r.rtype, r.rdata.clone()))
        .collect();
    found.extend(
        zone.members
            .iter()
            .filter(|m| m.name.key()[..] == *name)
            .map(|m| (rtype::CNAME, m.target.wire().to_vec())),
    );
    // A pool's CNAME is picked per query: it exists, with no one value to compare.
    found.extend(
        zone.pools
            .iter()
            .filter(|p| p.name.key()[..] == *name)
            .map(|_| (rtype::CNAME, Vec::new())),
    );
    found.extend(
        challenges
            .iter()
            .filter(|c| c.name.key()[..] == *name)
            .map(|c| (rtype::TXT, c.rdata.to_vec())),
    );
    found
}

/// Values a prerequisite wants at (name, type).
type ValueSet<'a> = (&'a [u8], u16, Vec<&'a [u8]>);

/// RFC 2136 §3.2: every prerequisite must hold.
fn check_prerequisites(
    zone: &ZoneView<'_>,
    challenges: &[Challenge],
    request: &Request,
) -> Result<(), Refusal> {
    let formerr = |text: &str| Refusal::new(Rcode::FORMERR, text);
    // §3.2.3: value-dependent prerequisites, gathered per (name, type), compared as sets.
    let mut wanted: Vec<ValueSet<'_>> = Vec::new();
    for rr in &request.prerequisites {
        if rr.ttl != 0 {
            return Err(formerr("prerequisite with a TTL other than 0"));
        }
        if !is_in_zone(&rr.name, zone) {
            return Err(Refusal::new(Rcode::NOTZONE, "prerequisite name outside the zone"));
        }
        let present = records_at(zone, challenges, &rr.name);
        let any_type = rr.rtype == rtype::ANY;
        let has_type = present.iter().any(|(t, _)| *t == rr.rtype);
        match rr.class {
            rtype::CLASS_ANY if !rr.rdata.is_empty() => return Err(formerr("prerequisite with RDATA")),
            rtype::CLASS_ANY if any_type && present.is_empty() => {
                return Err(Refusal::new(Rcode::NXDOMAIN, "prerequisite: name is not in use"));
            }
            rtype::CLASS_ANY if !any_type && !has_type => {
                return Err(Refusal::new(Rcode::NXRRSET, "prerequisite: RRset does not exist"));
            }
            rtype::CLASS_ANY => {}
            rtype::CLASS_NONE if !rr.rdata.is_empty() => return Err(formerr("prerequisite with RDATA")),
            rtype::CLASS_NONE if any_type && !present.is_empty() => {
                return Err(Refusal::new(Rcode::YXDOMAIN, "prerequisite: name is in use"));
            }
            rtype::CLASS_NONE if !any_type && has_type => {
                return Err(Refusal::new(Rcode::YXRRSET, "prerequisite: RRset exists"));
            }
            rtype::CLASS_NONE => {}
            class if class == request.zone_class && !any_type => {
                match wanted
                    .iter_mut()
                    .find(|(n, t, _)| *n == &rr.name[..] && *t == rr.rtype)
                {
                    Some((_, _, values)) => values.push(&rr.rdata),
                    None => wanted.push((&rr.name, rr.rtype, vec![&rr.rdata])),
                }
            }
            _ => return Err(formerr("prerequisite of an unknown class")),
        }
    }
    for (name, rtype, mut values) in wanted {
        let mut present: Vec<Vec<u8>> = records_at(zone, challenges, name)
            .into_iter()
            .filter(|(t, _)| *t == rtype)
            .map(|(_, rdata)| rdata)
            .collect();
        values.sort();
        values.dedup();
        present.sort();
        present.dedup();
        if present.iter().map(Vec::as_slice).ne(values.iter().copied()) {
            return Err(Refusal::new(Rcode::NXRRSET, "prerequisite: RRset differs"));
        }
    }
    Ok(())
}

/// RFC 2136 §3.4.1: checks every update before any is applied, the scope of `key` included,
/// so that a request with one bad record changes nothing.
fn prescan(
    zone: &ZoneView<'_>,
    request: &Request,
    grants: &[Name],
    key: &str,
    policy: &Policy,
) -> Result<(), Refusal> {
    let formerr = |text: &str| Refusal::new(Rcode::FORMERR, text);
    for rr in &request.updates {
        if !is_in_zone(&rr.name, zone) {
            return Err(Refusal::new(Rcode::NOTZONE, "update name outside the zone"));
        }
        let meta = matches!(rr.rtype, rtype::ANY | rtype::AXFR | rtype::IXFR | 253 | 254);
        match rr.class {
            class if class == request.zone_class => {
                if meta {
                    return Err(formerr("adding a meta type"));
                }
            }
            rtype::CLASS_ANY => {
                if rr.ttl != 0 || !rr.rdata.is_empty() || (meta && rr.rtype != rtype::ANY) {
                    return Err(formerr("malformed RRset delete"));
                }
            }
            rtype::CLASS_NONE => {
                if rr.ttl != 0 || meta {
                    return Err(formerr("malformed RR delete"));
                }
            }
            _ => return Err(formerr("update of an unknown class")),
        }
        check_scope(zone, rr, grants, key, policy)?;
    }
    Ok(())
}

/// What the key may do: TXT at its challenge names only, where the files have no data, with
/// values shaped like ACME's.
fn check_scope(
    zone: &ZoneView<'_>,
    rr: &Rr,
    grants: &[Name],
    key: &str,
    policy: &Policy,
) -> Result<(), Refusal> {
    let name = Name::from_wire_unchecked(&rr.name);
    if grants.is_empty() {
        return Err(Refusal::prohibited(format!(
            "key {key} is no member's update-key in {}",
            zone.origin
        )));
    }
    if !grants.iter().any(|g| g.key()[..] == rr.name[..]) {
        let allowed: Vec<String> = grants.iter().take(4).map(ToString::to_string).collect();
        let more = if grants.len() > 4 { ", ..." } else { "" };
        return Err(Refusal::prohibited(format!(
            "key {key} may change only TXT at {}{more}; not {name}",
            allowed.join(", ")
        )));
    }
    let deletes_all = rr.class == rtype::CLASS_ANY && rr.rtype == rtype::ANY;
    if rr.rtype != rtype::TXT && !deletes_all {
        return Err(Refusal::prohibited(format!(
            "key {key} may change only TXT records at {name}"
        )));
    }
    if !records_at(zone, &[], &rr.name).is_empty() {
        return Err(Refusal::prohibited(format!(
            "{name} has records in the zone file; updates do not change them"
        )));
    }
    if rr.class == rtype::CLASS_IN && !valid_value(&rr.rdata, policy.any_value) {
        return Err(Refusal::prohibited(
            "a challenge value is one ACME key authorisation digest (43 base64url characters); see acme-challenge-any-value",
        ));
    }
    Ok(())
}

/// TXT RDATA that is one ACME digest (or, with `any`, well-formed character-strings).
fn valid_value(rdata: &[u8], any: bool) -> bool {
    if any {
        let mut pos = 0;
        while pos < rdata.len() {
            pos += 1 + usize::from(rdata[pos]);
        }
        return pos == rdata.len() && !rdata.is_empty();
    }
    rdata.len() == ACME_VALUE_LEN + 1
        && usize::from(rdata[0]) == ACME_VALUE_LEN
        && rdata[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// RFC 2136 §3.4.2: applies the updates in order to `challenges` (a copy): (added, removed).
fn apply(
    challenges: &mut Vec<Challenge>,
    request: &Request,
    key: &str,
    policy: &Policy,
    now: u64,
) -> Result<(usize, usize), Refusal> {
    let (mut added, mut removed) = (0, 0);
    let expires_unix = now.saturating_add(policy.lifetime.as_secs());
    for rr in &request.updates {
        let mine = |c: &Challenge| &*c.key == key && c.name.key()[..] == rr.name[..];
        if rr.class == request.zone_class {
            if let Some(existing) = challenges
                .iter_mut()
                .find(|c| mine(c) && c.rdata[..] == rr.rdata[..])
            {
                // §3.4.2.2: adding a record that is there already changes nothing (but it
                // lives on from now).
                existing.expires_unix = expires_unix;
                continue;
            }
            if challenges.iter().filter(|c| mine(c)).count() >= policy.quota as usize {
                return Err(Refusal::prohibited(format!(
                    "quota: key {key} already holds {} values at {} (acme-challenge-quota)",
                    policy.quota,
                    Name::from_wire_unchecked(&rr.name)
                )));
            }
            challenges.push(Challenge {
                name: Name::from_wire_unchecked(&rr.name),
                rdata: rr.rdata.clone().into(),
                key: key.into(),
                expires_unix,
            });
            added += 1;
        } else {
            let before = challenges.len();
            if rr.class == rtype::CLASS_ANY {
                // Delete the RRset (or every RRset at the name): this key's values only.
                challenges.retain(|c| !mine(c));
            } else {
                challenges.retain(|c| !(mine(c) && c.rdata[..] == rr.rdata[..]));
            }
            removed += before - challenges.len();
        }
    }
    Ok((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_values_are_checked() {
        let value = |text: &str| {
            let mut rdata = vec![text.len() as u8];
            rdata.extend_from_slice(text.as_bytes());
            rdata
        };
        let digest = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
        assert!(valid_value(&value(digest), false));
        assert!(!valid_value(&value("hello"), false));
        assert!(!valid_value(&value(&digest.replace('L', "+")), false));
        assert!(valid_value(&value("hello"), true));
        assert!(!valid_value(&[5, b'a'], true));
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut guard = Guard::default();
        let granted = (0..20).filter(|_| guard.allow("op-a", 5)).count();
        assert_eq!(granted, 10, "a burst of twice the rate");
        assert!(guard.allow("op-b", 5), "another key has its own bucket");
        assert!(guard.first_use(b"mac", 1_000));
        assert!(!guard.first_use(b"mac", 1_001));
        assert!(guard.first_use(b"mac", 1_000 + 601), "outside every window");
    }
}
