//! Differential test against NSD (issue 3).
//!
//! The example zone, its member CNAMEs written out as plain records, is served by NSD 4.6 (the
//! reference) and by consortium-dns. A few thousand queries (every owner name, empty
//! non-terminals, wildcard matches, names below the delegation, nonexistent and out-of-zone
//! names, mixed case, three EDNS variants, UDP and a TCP sample) go to both, and the answers
//! are compared section by section: header flags and rcode, the question as echoed, the
//! answer/authority/additional RRsets as sets, EDNS (Extended DNS Errors included). The only
//! differences accepted are those in `ALLOWED`, each checked as narrowly as it is stated.
//!
//! The pool name (`any`) is left out of NSD's zone and out of the queries: its answer is a
//! weighted random pick that NSD cannot make.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use consortium_dns::app::ServerHandle;
use consortium_dns::zone::rtype;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::common::{self, Nsd, Rr, Tree, hex};

/// A difference between two correct authoritative servers that the RFCs allow.
struct Allowance {
    id: &'static str,
    /// Exactly what is accepted (the check in `reconcile` implements this and nothing wider).
    accepts: &'static str,
    reason: &'static str,
}

const ANY_RRSET: &str = "any-one-rrset";
const MX_SRV_ADDITIONAL: &str = "mx-srv-additional";
const TRUNCATED_CONTENT: &str = "truncated-content";

/// Every difference the comparison accepts. Anything else fails the test.
const ALLOWED: &[Allowance] = &[
    Allowance {
        id: ANY_RRSET,
        accepts: "QTYPE=ANY: both answer sections hold exactly one whole RRset owned by the \
                  query name, and ours equals NSD's answer to a query for that RRset's type",
        reason: "RFC 8482 §4.1: a server may answer ANY with one RRset of its choosing; NSD 4.6 \
                 sends the first in its own order (SOA at the apex), we send the first by type \
                 number (NS)",
    },
    Allowance {
        id: MX_SRV_ADDITIONAL,
        accepts: "additional section: ours has extra A/AAAA RRsets owned by an MX exchange or SRV \
                  target named in our answer section; NSD's additional has nothing ours lacks",
        reason: "RFC 1035 §3.3.9 and RFC 2782: address records of MX and SRV targets may be added \
                 (additional-section processing); NSD with minimal-responses adds glue only to \
                 referrals and apex NS answers. minimal-responses: no would be further from us: \
                 NSD would then add the apex NS RRset and its glue to every positive answer",
    },
    Allowance {
        id: TRUNCATED_CONTENT,
        accepts: "both UDP answers have TC set: their sections are not compared; the same query \
                  is then sent to both over TCP and those answers must match without this allowance",
        reason: "RFC 2181 §9 / RFC 1035 §4.2.1: a truncated answer may keep the whole RRsets that \
                 fit (NSD keeps the CNAME before an RRset that does not) or be cut back to the \
                 question (ours); a resolver discards it and retries over TCP",
    },
];

/// Edge cases appended to the example zone for the second test. The example zone alone has
/// no CNAME into the delegation, no wildcard CNAME and nothing too large for UDP.
const EDGE_RECORDS: &str = "
; --- edge cases appended by tests/it/differential.rs ---
to-lab       IN CNAME x.lab             ; chain to a name below the delegation
to-cut       IN CNAME lab               ; chain to the delegation point itself
to-nx        IN CNAME nothing           ; chain to a name that does not exist
to-ent       IN CNAME _tcp.api          ; chain to an empty non-terminal
to-wild      IN CNAME foo.teams         ; chain to a wildcard-synthesized name
to-apex      IN CNAME @                 ; chain to the apex (MX, NS through a CNAME)
to-out       IN CNAME www.example.org.  ; chain out of the zone
*.w          IN CNAME api               ; wildcard CNAME
*.multi      IN A     192.0.2.99
*.multi      IN AAAA  2001:db8::99
exists.multi IN TXT   \"the wildcard does not apply to an existing name\"
to-big       IN CNAME big               ; truncation after a CNAME
";

/// Records of `big`: together larger than any UDP answer we send (1232 octets).
fn big_records() -> String {
    let filler = "0123456789".repeat(10);
    (0..13)
        .map(|i| format!("big IN TXT \"{filler} {i:02}\"\n"))
        .collect()
}

/// The query types asked for every name.
fn qtypes() -> Vec<RecordType> {
    use RecordType::*;
    vec![
        A,
        AAAA,
        NS,
        SOA,
        MX,
        TXT,
        CAA,
        SRV,
        CNAME,
        DS,
        RecordType::from(65280),
        ANY,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdnsVariant {
    None,
    Size1232,
    Size4096Do,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// One query to send to both servers.
#[derive(Debug, Clone)]
struct Case {
    qname: String,
    qtype: RecordType,
    edns: EdnsVariant,
    rd: bool,
    id: u16,
}

impl Case {
    fn message(&self) -> Message {
        let size = match self.edns {
            EdnsVariant::None => None,
            EdnsVariant::Size1232 => Some(1232),
            EdnsVariant::Size4096Do => Some(4096),
        };
        let mut message = common::query(&self.qname, self.qtype, size);
        message.metadata.id = self.id;
        message.metadata.recursion_desired = self.rd;
        if let Some(edns) = message.edns.as_mut() {
            edns.set_dnssec_ok(self.edns == EdnsVariant::Size4096Do);
        }
        message
    }

    fn describe(&self, transport: Transport) -> String {
        let edns = match self.edns {
            EdnsVariant::None => "no EDNS",
            EdnsVariant::Size1232 => "EDNS 1232",
            EdnsVariant::Size4096Do => "EDNS 4096 DO",
        };
        let rd = if self.rd { ", RD" } else { "" };
        format!("{} {} ({edns}{rd}, {transport:?})", self.qname, self.qtype)
    }
}

/// One section as a set of records as compared (`Rr`: owner lowercased, RDATA in canonical
/// wire form); the value is the record's text, for messages only.
#[derive(Debug, Clone, Default)]
struct Section(BTreeMap<Rr, String>);

impl PartialEq for Section {
    fn eq(&self, other: &Section) -> bool {
        self.0.keys().eq(other.0.keys())
    }
}

impl Eq for Section {}

impl Section {
    fn of(records: &[Record]) -> Section {
        Section(records.iter().map(|r| (Rr::of(r), r.to_string())).collect())
    }

    fn only_in<'a>(&'a self, other: &'a Section) -> impl Iterator<Item = (&'a Rr, &'a String)> {
        self.0.iter().filter(|(k, _)| !other.0.contains_key(k))
    }

    /// (owner, type) of every RRset.
    fn rrsets(&self) -> BTreeSet<(&str, u16)> {
        self.0.keys().map(|k| (k.owner.as_str(), k.rtype)).collect()
    }
}

/// EDNS as compared: version, DO bit, advertised payload size, Extended DNS Errors.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EdnsSummary {
    version: u8,
    dnssec_ok: bool,
    max_payload: u16,
    /// The data of each Extended DNS Error option (RFC 8914: INFO-CODE, EXTRA-TEXT).
    ede: Vec<Vec<u8>>,
}

/// The header bits compared (RFC 1035 §4.1.1, RFC 4035 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flags {
    qr: bool,
    aa: bool,
    tc: bool,
    rd: bool,
    ra: bool,
    ad: bool,
    cd: bool,
}

/// Everything compared in one response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    id: u16,
    opcode: OpCode,
    rcode: ResponseCode,
    flags: Flags,
    /// The question as echoed, letter case included.
    question: Vec<String>,
    answer: Section,
    authority: Section,
    additional: Section,
    edns: Option<EdnsSummary>,
}

/// A parsed response and its summary.
struct Reply {
    message: Message,
    summary: Summary,
}

impl Reply {
    fn parse(bytes: &[u8]) -> Result<Reply, String> {
        let message =
            Message::from_vec(bytes).map_err(|e| format!("unparsable answer ({e}): {}", hex(bytes)))?;
        let m = &message.metadata;
        let summary = Summary {
            id: m.id,
            opcode: m.op_code,
            rcode: m.response_code,
            flags: Flags {
                qr: m.message_type == MessageType::Response,
                aa: m.authoritative,
                tc: m.truncation,
                rd: m.recursion_desired,
                ra: m.recursion_available,
                ad: m.authentic_data,
                cd: m.checking_disabled,
            },
            question: message
                .queries
                .iter()
                .map(|q| format!("{} {} {}", q.name(), q.query_class(), q.query_type()))
                .collect(),
            answer: Section::of(&message.answers),
            authority: Section::of(&message.authorities),
            additional: Section::of(&message.additionals),
            edns: message.edns.as_ref().map(|e| EdnsSummary {
                version: e.version(),
                dnssec_ok: e.flags().dnssec_ok,
                max_payload: e.max_payload(),
                ede: e
                    .options()
                    .get_all(EdnsCode::from(15))
                    .into_iter()
                    .map(|option| match option {
                        EdnsOption::Unknown(_, data) => data.clone(),
                        other => panic!("EDE option read as {other:?}"),
                    })
                    .collect(),
            }),
        };
        Ok(Reply { message, summary })
    }

    /// Lowercased MX exchanges and SRV targets named in the answer section.
    fn answer_targets(&self) -> BTreeSet<String> {
        self.message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(mx.exchange.to_lowercase().to_string()),
                RData::SRV(srv) => Some(srv.target.to_lowercase().to_string()),
                _ => None,
            })
            .collect()
    }
}

/// Sends one query to one server and parses the answer.
async fn ask(addr: SocketAddr, case: &Case, transport: Transport) -> Result<Reply, String> {
    let bytes = case.message().to_vec().expect("query encodes");
    let raw = match transport {
        Transport::Udp => common::udp_raw(addr, &bytes)
            .await
            .ok_or_else(|| "no UDP answer within the timeout".to_string())?,
        Transport::Tcp => common::tcp_raw(addr, &[bytes], 1).await.remove(0),
    };
    Reply::parse(&raw)
}

/// Alternating letter case, to check case-insensitive lookup and the echoed question.
fn mixed_case(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                upper = !upper;
                if upper { c.to_ascii_uppercase() } else { c }
            } else {
                c
            }
        })
        .collect()
}

/// The zone's test setup read from the running server's snapshot.
struct ZoneFacts {
    origin: String,
    /// Zone file text for NSD: the file as served plus one CNAME line per member.
    nsd_zone: String,
    /// Names to query (lowercase, absolute), pool names excluded.
    names: BTreeSet<String>,
}

fn zone_facts(server: &ServerHandle) -> ZoneFacts {
    let snapshot = server.shared.snapshot.load();
    let zone = &snapshot.zones()[0];
    let origin = zone.origin.to_string().to_ascii_lowercase();

    let zone_file = &server.config.live.zones[0].source.file;
    let mut nsd_zone =
        std::fs::read_to_string(zone_file).unwrap_or_else(|e| panic!("read {}: {e}", zone_file.display()));
    nsd_zone.push_str("\n; member CNAMEs, from the members file\n");
    for member in &zone.members {
        writeln!(
            nsd_zone,
            "{} {} IN CNAME {}",
            member.name, member.ttl, member.target
        )
        .expect("write");
    }
    // The pool records the server publishes for its secondaries (RFC 3597 form for NSD).
    nsd_zone.push_str("\n; pool records\n");
    for record in zone.all_records() {
        if consortium_dns::zone::carrier::is_pool_record(&record.name, record.rtype) {
            let hex: String = record.rdata.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(
                nsd_zone,
                "{} {} IN TYPE{} \\# {} {hex}",
                record.name,
                record.ttl,
                record.rtype,
                record.rdata.len()
            )
            .expect("write");
        }
    }

    let pools: BTreeSet<String> = zone
        .pools
        .iter()
        .map(|p| p.def.name.to_string().to_ascii_lowercase())
        .collect();
    let mut names = BTreeSet::new();
    let child = |label: &str, parent: &str| format!("{label}.{parent}");
    for record in &zone.all_records() {
        let owner = record.name.to_string().to_ascii_lowercase();
        names.insert(owner.clone());
        // Empty non-terminals between the owner and the apex.
        let mut parent = record.name.parent();
        while let Some(p) = parent.filter(|p| p.is_subdomain_of(&zone.origin) && p.key() != zone.origin.key())
        {
            names.insert(p.to_string().to_ascii_lowercase());
            parent = p.parent();
        }
        if let Some(base) = owner.strip_prefix("*.") {
            // Names the wildcard synthesizes, one and two labels deep.
            names.insert(child("foo", base));
            names.insert(child("a.b", base));
        } else if owner != origin {
            // Below an existing name: NXDOMAIN, a referral under the cut, NXDOMAIN under a CNAME.
            names.insert(child("x", &owner));
        }
        if record.rtype == rtype::NS && owner != origin {
            names.insert(child("a.b", &owner));
        }
    }
    names.insert(child("nope", &origin));
    names.insert(child("a.nope", &origin));
    // Out of the zone: REFUSED from both.
    names.insert(format!("x{origin}"));
    names.insert("other.org.".to_string());
    names.insert(".".to_string());
    if let Some(parent) = zone.origin.parent() {
        names.insert(parent.to_string().to_ascii_lowercase());
    }
    names.retain(|n| !pools.contains(n));
    ZoneFacts {
        origin,
        nsd_zone,
        names,
    }
}

fn cases(names: &BTreeSet<String>) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |qname: &str, qtype: RecordType, edns: EdnsVariant| {
        let id = cases.len() as u16;
        cases.push(Case {
            qname: qname.to_string(),
            qtype,
            edns,
            rd: id % 2 == 1,
            id,
        });
    };
    for name in names {
        for qtype in qtypes() {
            for edns in [EdnsVariant::None, EdnsVariant::Size1232, EdnsVariant::Size4096Do] {
                push(name, qtype, edns);
            }
            let mixed = mixed_case(name);
            if mixed != *name {
                push(&mixed, qtype, EdnsVariant::Size1232);
            }
        }
    }
    cases
}

/// Accepts the differences of `ALLOWED` that apply, returning their ids; `Err` with a readable
/// diff when something else differs.
async fn reconcile(
    case: &Case,
    transport: Transport,
    nsd: &Reply,
    ours: &Reply,
    nsd_addr: SocketAddr,
) -> Result<Vec<&'static str>, String> {
    if nsd.summary == ours.summary {
        return Ok(Vec::new());
    }
    let mut used = Vec::new();
    let mut n = nsd.summary.clone();
    let mut o = ours.summary.clone();

    if transport == Transport::Udp && n.flags.tc && o.flags.tc {
        let sections = |s: &Summary| (s.answer.clone(), s.authority.clone(), s.additional.clone());
        if sections(&n) != sections(&o) {
            used.push(TRUNCATED_CONTENT);
            for s in [&mut n, &mut o] {
                s.answer = Section::default();
                s.authority = Section::default();
                s.additional = Section::default();
            }
        }
    }

    if !n.flags.tc && !o.flags.tc {
        let targets = ours.answer_targets();
        let extra: Vec<&Rr> = o.additional.only_in(&n.additional).map(|(k, _)| k).collect();
        let missing = n.additional.only_in(&o.additional).count();
        let explained = |k: &&Rr| {
            (k.rtype == u16::from(RecordType::A) || k.rtype == u16::from(RecordType::AAAA))
                && targets.contains(&k.owner)
        };
        if !extra.is_empty() && missing == 0 && extra.iter().all(explained) {
            used.push(MX_SRV_ADDITIONAL);
            o.additional = n.additional.clone();
        }
    }

    if case.qtype == RecordType::ANY && n.answer != o.answer && n.rcode == ResponseCode::NoError {
        let qname = case.qname.to_ascii_lowercase();
        let ours_sets = o.answer.rrsets();
        let nsd_sets = n.answer.rrsets();
        let single = |sets: &BTreeSet<(&str, u16)>| sets.len() == 1 && sets.iter().all(|s| s.0 == qname);
        if single(&ours_sets) && single(&nsd_sets) {
            let rtype = RecordType::from(ours_sets.iter().next().map_or(0, |s| s.1));
            let typed = Case {
                qtype: rtype,
                ..case.clone()
            };
            let reference = ask(nsd_addr, &typed, Transport::Tcp).await?;
            if reference.summary.rcode == ResponseCode::NoError && reference.summary.answer == o.answer {
                used.push(ANY_RRSET);
                o.answer = n.answer.clone();
            }
        }
    }

    if n == o {
        Ok(used)
    } else {
        Err(diff(case, transport, nsd, ours))
    }
}

fn diff(case: &Case, transport: Transport, nsd: &Reply, ours: &Reply) -> String {
    let (n, o) = (&nsd.summary, &ours.summary);
    let mut out = format!("query: {}\n", case.describe(transport));
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            writeln!(out, "  {name}: NSD {a} | consortium-dns {b}").expect("write");
        }
    };
    field("id", n.id.to_string(), o.id.to_string());
    field("opcode", format!("{:?}", n.opcode), format!("{:?}", o.opcode));
    field("rcode", n.rcode.to_string(), o.rcode.to_string());
    field("flags", format!("{:?}", n.flags), format!("{:?}", o.flags));
    field(
        "question",
        format!("{:?}", n.question),
        format!("{:?}", o.question),
    );
    field("EDNS", format!("{:?}", n.edns), format!("{:?}", o.edns));
    for (name, a, b) in [
        ("answer", &n.answer, &o.answer),
        ("authority", &n.authority, &o.authority),
        ("additional", &n.additional, &o.additional),
    ] {
        for (_, text) in a.only_in(b) {
            writeln!(out, "  {name} only from NSD:            {text}").expect("write");
        }
        for (_, text) in b.only_in(a) {
            writeln!(out, "  {name} only from consortium-dns: {text}").expect("write");
        }
    }
    write!(
        out,
        "  --- NSD:\n{}  --- consortium-dns:\n{}",
        indent(&nsd.message.to_string()),
        indent(&ours.message.to_string())
    )
    .expect("write");
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Sends every case to both servers and fails with the differences nothing allows.
async fn run_differential(extra_zone_text: Option<&str>) {
    let tree = Tree::example();
    if let Some(extra) = extra_zone_text {
        let mut zone = tree.read("zones/consortium.example.zone");
        zone.push_str(extra);
        tree.write("zones/consortium.example.zone", &zone);
    }
    let server = tree.start().await;
    let ours_addr = server.dns_addrs[0];
    let facts = zone_facts(&server);
    let nsd = Nsd::primary(
        &facts.origin,
        &facts.nsd_zone,
        server.config.restart.limits.udp_payload,
    )
    .await;

    let cases = cases(&facts.names);
    let mut failures = Vec::new();
    let mut used: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut tcp_sent = 0;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        // Every case over UDP; a sample over TCP, and over TCP again whenever UDP truncated.
        let mut transports = vec![Transport::Udp];
        if i % 7 == 0 {
            transports.push(Transport::Tcp);
        }
        let mut t = 0;
        while t < transports.len() {
            let transport = transports[t];
            t += 1;
            let nsd_reply = ask(nsd.addr, case, transport).await;
            let ours_reply = ask(ours_addr, case, transport).await;
            if transport == Transport::Tcp {
                tcp_sent += 1;
            }
            let (nsd_reply, ours_reply) = match (nsd_reply, ours_reply) {
                (Ok(n), Ok(o)) => (n, o),
                (n, o) => {
                    failures.push(format!(
                        "query: {}\n  NSD: {}\n  consortium-dns: {}",
                        case.describe(transport),
                        n.map_or_else(|e| e, |r| r.message.to_string()),
                        o.map_or_else(|e| e, |r| r.message.to_string()),
                    ));
                    continue;
                }
            };
            // What kinds of answer the reference gave, so the comparison is known to cover them.
            let kind = match (nsd_reply.summary.rcode, nsd_reply.summary.flags.aa) {
                (ResponseCode::NXDomain, _) => "NXDOMAIN",
                (ResponseCode::NoError, false) => "referral",
                (ResponseCode::NoError, true) if nsd_reply.summary.answer.0.is_empty() => "NODATA",
                (ResponseCode::NoError, true) => "answer",
                (ResponseCode::Refused, _) => "REFUSED",
                _ => "other",
            };
            *kinds.entry(kind).or_default() += 1;
            let truncated = nsd_reply.summary.flags.tc || ours_reply.summary.flags.tc;
            if transport == Transport::Udp && truncated && !transports.contains(&Transport::Tcp) {
                transports.push(Transport::Tcp);
            }
            match reconcile(case, transport, &nsd_reply, &ours_reply, nsd.addr).await {
                Ok(ids) => {
                    for id in ids {
                        *used.entry(id).or_default() += 1;
                    }
                }
                Err(text) => failures.push(text),
            }
        }
    }
    eprintln!(
        "differential: {} queries over UDP, {tcp_sent} over TCP, {} names; NSD's answers by kind \
         {kinds:?}; allowed differences used: {used:?}",
        cases.len(),
        facts.names.len()
    );
    assert!(cases.len() >= 300, "only {} queries compared", cases.len());
    assert!(tcp_sent > 0, "nothing compared over TCP");
    for kind in ["answer", "NODATA", "NXDOMAIN", "referral", "REFUSED"] {
        assert!(
            kinds.get(kind).is_some_and(|&n| n >= 3),
            "fewer than 3 {kind} answers compared: {kinds:?}"
        );
    }
    for id in used.keys() {
        assert!(ALLOWED.iter().any(|a| a.id == *id), "unlisted allowance {id}");
    }
    if !failures.is_empty() {
        let allowed: String = ALLOWED
            .iter()
            .map(|a| format!("  {}: {}\n    ({})\n", a.id, a.accepts, a.reason))
            .collect();
        panic!(
            "{} of {} queries answered differently by NSD and consortium-dns (first 15 below).\n\
             Allowed differences:\n{allowed}\n{}",
            failures.len(),
            cases.len(),
            failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    drop(nsd);
    server.shutdown(Duration::from_secs(1)).await;
}

/// The example zone as shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_zone_matches_nsd() {
    run_differential(None).await;
}

/// The example zone plus CNAME chains into the delegation, to an empty non-terminal, to
/// NXDOMAIN and to a wildcard, a wildcard CNAME, and an RRset too large for UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_match_nsd() {
    let extra = format!("{EDGE_RECORDS}{}", big_records());
    run_differential(Some(&extra)).await;
}
