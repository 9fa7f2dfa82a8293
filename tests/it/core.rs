//! Behaviour of the authoritative core (issue 3): what a resolver or an operator notices when
//! talking to the real server, started in-process on 127.0.0.1 port 0 on a copy of the example.
//!
//! Well-formed queries are built and answers parsed with hickory-proto; malformed packets are
//! written byte by byte with the `raw_*` helpers below.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use consortium_dns::app::ServerHandle;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::common::{
    Tree, binary, edit, frame, line_of, query, raw_header, raw_id, raw_name, raw_question, raw_rcode,
    recv_within, run_check, start_example, tcp, tcp_raw, udp, udp_raw,
};

const ZONE_FILE: &str = "zones/consortium.example.zone";
const MEMBERS_FILE: &str = "zones/consortium.example.members.toml";
const CONFIG_FILE: &str = "config/consortium-dns.toml";
/// The example SOA: TTL 3600 ($TTL), MINIMUM 300, so negative answers carry TTL 300.
const NEGATIVE_TTL: u32 = 300;
const SERIAL: u32 = 2026112501;
/// The example members file: label, target (member-ttl 300 each).
const MEMBERS: [(&str, &str); 5] = [
    ("node1", "node1.operator-a.com."),
    ("node2", "api.operator-b.net."),
    ("node3", "planetmint.operator-c.org."),
    ("node4", "node.operator-d.io."),
    ("node5", "bigchain.operator-e.de."),
];
/// How long a test waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(100);
/// How long a test waits for an answer it hopes not to get (or for the server to close).
const SILENCE: Duration = Duration::from_millis(500);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn addr(server: &ServerHandle) -> SocketAddr {
    server.dns_addrs[0]
}

/// A record as `owner ttl TYPE rdata`, owner lowercased, TXT strings quoted one by one.
fn show(record: &Record) -> String {
    let owner = record.name.to_lowercase();
    let rdata = match &record.data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!("{owner} {} {} {rdata}", record.ttl, record.record_type())
}

/// A section as sorted `show` lines (RRsets are unordered, RFC 2181 §5).
fn section(records: &[Record]) -> Vec<String> {
    let mut lines: Vec<String> = records.iter().map(show).collect();
    lines.sort();
    lines
}

/// A section in wire order (CNAME chains are ordered).
fn in_order(records: &[Record]) -> Vec<String> {
    records.iter().map(show).collect()
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    lines.sort();
    lines
}

/// An authoritative answer with this rcode (RFC 1035 §4.1.1: QR set, AA set, RA clear).
#[track_caller]
fn assert_authoritative(m: &Message, rcode: ResponseCode) {
    assert_eq!(m.metadata.message_type, MessageType::Response, "QR set: {m}");
    assert!(m.metadata.authoritative, "AA set: {m}");
    assert!(!m.metadata.recursion_available, "RA clear: {m}");
    assert!(!m.metadata.truncation, "TC clear: {m}");
    assert_eq!(m.metadata.response_code, rcode, "{m}");
}

/// A negative answer (RFC 2308 §2.1 NXDOMAIN, §2.2 NODATA): AA, no answer, the zone's SOA in
/// authority with TTL min(SOA TTL, SOA MINIMUM) (RFC 2308 §3 and §5).
#[track_caller]
fn assert_negative(m: &Message, rcode: ResponseCode, ttl: u32) {
    assert_authoritative(m, rcode);
    assert!(m.answers.is_empty(), "no answer: {m}");
    assert_eq!(m.authorities.len(), 1, "one SOA in authority: {m}");
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_lowercase().to_string(), "consortium.example.");
    assert_eq!(soa.ttl, ttl, "negative TTL: {m}");
    match &soa.data {
        RData::SOA(data) => {
            assert_eq!(data.serial, SERIAL);
            assert_eq!(data.minimum, 300);
        }
        other => panic!("authority holds {other:?}, not an SOA"),
    }
    assert!(m.additionals.is_empty(), "nothing additional: {m}");
}

/// A query with a given ID and RD bit.
fn query_with(qname: &str, qtype: RecordType, id: u16, rd: bool) -> Message {
    let mut m = query(qname, qtype, None);
    m.metadata.id = id;
    m.metadata.recursion_desired = rd;
    m
}

/// A class CH query.
fn chaos_query(qname: &str) -> Message {
    let mut m = query(qname, RecordType::TXT, None);
    m.queries[0].set_query_class(DNSClass::CH);
    m
}

/// Appends lines to a file of the tree.
fn append(tree: &Tree, relative: &str, text: &str) {
    let mut content = tree.read(relative);
    if !content.ends_with('\n') {
        content.push('\n');
    }
    content.push_str(text);
    tree.write(relative, &content);
}

/// An OPT pseudo-record (RFC 6891 §6.1.2) owned by the root.
fn raw_opt(payload: u16, version: u8, options: &[(u16, &[u8])]) -> Vec<u8> {
    let mut rdata = Vec::new();
    for (code, data) in options {
        rdata.extend_from_slice(&code.to_be_bytes());
        rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
        rdata.extend_from_slice(data);
    }
    let mut out = vec![0];
    out.extend_from_slice(&41u16.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[0, version, 0, 0]);
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    out
}

/// A plain class IN query, RD clear.
fn raw_query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
    let mut out = raw_header(id, 0, [1, 0, 0, 0]);
    out.extend_from_slice(&raw_question(qname, qtype, 1));
    out
}

/// A UDP client connected to `server`, of the same address family.
async fn udp_client(server: SocketAddr) -> UdpSocket {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).await.expect("bind UDP client");
    socket.connect(server).await.expect("connect UDP client");
    socket
}

const PROBE_ID: u16 = 0xBEEF;

/// Sends `bad`, then a normal query (`ns1 A`, ID `PROBE_ID`) from the same socket. The kernel
/// hands both to the same SO_REUSEPORT worker in order, so any answer to `bad` arrives first.
/// Returns what arrived before the normal answer, and the normal answer.
async fn bad_then_probe(server: SocketAddr, bad: &[u8]) -> (Vec<Vec<u8>>, Message) {
    let socket = udp_client(server).await;
    socket.send(bad).await.expect("send bad packet");
    let probe = query_with("ns1.consortium.example.", RecordType::A, PROBE_ID, false);
    socket
        .send(&probe.to_vec().expect("encode"))
        .await
        .expect("send probe");
    let mut before = Vec::new();
    loop {
        let bytes = recv_within(&socket, ANSWER_TIMEOUT)
            .await
            .expect("the normal query after a bad packet is answered");
        if bytes.len() >= 2 && raw_id(&bytes) == PROBE_ID {
            let answer = Message::from_vec(&bytes).expect("probe answer parses");
            return (before, answer);
        }
        before.push(bytes);
    }
}

#[track_caller]
fn assert_probe_answer(m: &Message) {
    assert_authoritative(m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        vec!["ns1.consortium.example. 3600 A 192.0.2.53".to_string()]
    );
}

/// Writes length-prefixed messages (RFC 1035 §4.2.2) in one write.
async fn write_frames(stream: &mut TcpStream, messages: &[Vec<u8>]) {
    let frames: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
    stream.write_all(&frames).await.expect("TCP write");
}

/// One length-prefixed answer, parsed.
async fn read_frame(stream: &mut TcpStream) -> Message {
    let bytes = tokio::time::timeout(ANSWER_TIMEOUT, crate::common::read_frame(stream))
        .await
        .expect("TCP answer in time")
        .expect("TCP read");
    Message::from_vec(&bytes).expect("TCP answer parses")
}

/// The example with two big TXT RRsets: `big` (20 records, ~1.1 kB: over 512, under 1232)
/// and `huge` (40 records, ~2.2 kB: over 1232).
fn tree_with_big_rrsets() -> Tree {
    let tree = Tree::example();
    let mut extra = String::new();
    for i in 0..20 {
        writeln!(extra, "big IN TXT \"{}\"", filler(i)).expect("write");
    }
    for i in 0..40 {
        writeln!(extra, "huge IN TXT \"{}\"", filler(i)).expect("write");
    }
    append(&tree, ZONE_FILE, &extra);
    tree
}

/// A distinct 40-octet string.
fn filler(i: usize) -> String {
    format!("record {i:02} {}", "x".repeat(30))
}

// ---------------------------------------------------------------------------------------------
// Header and exact matches
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn header_echoes_id_and_rd_sets_aa_clears_ra() {
    let (_tree, server) = start_example().await;
    for (id, rd) in [(0x0000, true), (0xFFFF, false), (0xA5C3, true), (0x1234, false)] {
        let m = udp(
            addr(&server),
            &query_with("www.consortium.example.", RecordType::A, id, rd),
        )
        .await;
        // RFC 1035 §4.1.1: ID copied, QR set, opcode copied, RD copied; RA clear because we
        // do not recurse; AA set because the data is ours.
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.op_code, OpCode::Query);
        assert_eq!(m.metadata.recursion_desired, rd, "RD copied");
        assert!(!m.metadata.recursion_available, "RA clear");
        assert!(m.metadata.authoritative, "AA set");
        assert_eq!(m.queries.len(), 1, "question echoed");
        assert_eq!(m.queries[0].name().to_string(), "www.consortium.example.");
        assert_eq!(m.queries[0].query_type(), RecordType::A);
    }
    // The same over TCP, and for negative and refused answers.
    let m = tcp(
        addr(&server),
        &query_with("nope.consortium.example.", RecordType::A, 0x4321, true),
    )
    .await;
    assert_eq!(m.metadata.id, 0x4321);
    assert!(m.metadata.recursion_desired);
    assert!(!m.metadata.recursion_available);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(
        addr(&server),
        &query_with("example.com.", RecordType::A, 0x7777, true),
    )
    .await;
    assert_eq!(m.metadata.id, 0x7777);
    assert!(m.metadata.recursion_desired);
    assert!(!m.metadata.recursion_available);
}

#[tokio::test(flavor = "multi_thread")]
async fn apex_rrsets_answer_exactly_with_glue() {
    let (_tree, server) = start_example().await;
    let a = addr(&server);
    let glue = [
        "ns1.consortium.example. 3600 A 192.0.2.53",
        "ns1.consortium.example. 3600 AAAA 2001:db8::53",
        "ns2.consortium.example. 3600 A 198.51.100.53",
        "ns2.consortium.example. 3600 AAAA 2001:db8:1::53",
    ];

    let m = udp(a, &query("consortium.example.", RecordType::NS, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        sorted(&[
            "consortium.example. 3600 NS ns1.consortium.example.",
            "consortium.example. 3600 NS ns2.consortium.example.",
        ])
    );
    assert!(m.authorities.is_empty());
    // RFC 1035 §3.3.11 / §4.1: addresses of in-zone name servers in the additional section.
    assert_eq!(section(&m.additionals), sorted(&glue));

    let m = udp(a, &query("consortium.example.", RecordType::MX, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        vec!["consortium.example. 3600 MX 10 mail.consortium.example.".to_string()]
    );
    // RFC 1035 §3.3.9: the exchange's address in additional.
    assert_eq!(
        section(&m.additionals),
        vec!["mail.consortium.example. 3600 A 192.0.2.25".to_string()]
    );

    let m = udp(a, &query("consortium.example.", RecordType::TXT, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        sorted(&[
            "consortium.example. 3600 TXT \"v=spf1 -all\"",
            "consortium.example. 3600 TXT \"consortium network: see https://www.consortium.example/\"",
        ])
    );
    assert!(m.additionals.is_empty());

    let m = udp(a, &query("consortium.example.", RecordType::CAA, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        sorted(&[
            "consortium.example. 3600 CAA 0 issue \"letsencrypt.org\"",
            "consortium.example. 3600 CAA 0 iodef \"mailto:security@consortium.example\"",
        ])
    );

    let m = udp(a, &query("consortium.example.", RecordType::SOA, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    // A positive SOA answer keeps its own TTL; only negative answers use MINIMUM.
    assert_eq!(m.answers[0].ttl, 3600);
    match &m.answers[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.serial, SERIAL);
            assert_eq!(soa.mname.to_string(), "ns1.consortium.example.");
            assert_eq!(soa.rname.to_string(), "hostmaster.consortium.example.");
            assert_eq!(
                (soa.refresh, soa.retry, soa.expire, soa.minimum),
                (7200, 3600, 1_209_600, 300)
            );
        }
        other => panic!("SOA expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_records_answer_exactly() {
    let (_tree, server) = start_example().await;
    let a = addr(&server);
    for (qname, qtype, expected) in [
        (
            "ns1.consortium.example.",
            RecordType::A,
            "ns1.consortium.example. 3600 A 192.0.2.53",
        ),
        (
            "ns1.consortium.example.",
            RecordType::AAAA,
            "ns1.consortium.example. 3600 AAAA 2001:db8::53",
        ),
        (
            "ns2.consortium.example.",
            RecordType::AAAA,
            "ns2.consortium.example. 3600 AAAA 2001:db8:1::53",
        ),
        (
            "api.consortium.example.",
            RecordType::A,
            "api.consortium.example. 3600 A 192.0.2.80",
        ),
    ] {
        let m = udp(a, &query(qname, qtype, None)).await;
        assert_authoritative(&m, ResponseCode::NoError);
        assert_eq!(section(&m.answers), vec![expected.to_string()], "{qname} {qtype}");
        assert!(m.authorities.is_empty() && m.additionals.is_empty(), "{m}");
    }

    let m = udp(
        a,
        &query("_https._tcp.api.consortium.example.", RecordType::SRV, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        vec!["_https._tcp.api.consortium.example. 3600 SRV 10 5 443 api.consortium.example.".to_string()]
    );
    // RFC 2782: the target's address may be added to the additional section.
    assert_eq!(
        section(&m.additionals),
        vec!["api.consortium.example. 3600 A 192.0.2.80".to_string()]
    );

    // RFC 3597 §5: a type we do not know is served as opaque RDATA.
    let m = udp(
        a,
        &query("meta.consortium.example.", RecordType::Unknown(65280), None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(u16::from(m.answers[0].record_type()), 65280);
    match &m.answers[0].data {
        RData::Unknown { rdata, .. } => assert_eq!(rdata.anything, vec![10, 0, 0, 1]),
        other => panic!("opaque RDATA expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn member_nodes_are_cnames_to_their_targets() {
    let (_tree, server) = start_example().await;
    for (label, target) in MEMBERS {
        let qname = format!("{label}.consortium.example.");
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let m = udp(addr(&server), &query(&qname, qtype, None)).await;
            assert_authoritative(&m, ResponseCode::NoError);
            // The target is outside our zones: the answer is the CNAME alone (RFC 1034 §4.3.2).
            assert_eq!(
                in_order(&m.answers),
                vec![format!("{qname} 300 CNAME {target}")],
                "{qname} {qtype}"
            );
            assert!(m.authorities.is_empty(), "{m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_name_picks_one_member_target_per_query() {
    let (_tree, server) = start_example().await;
    let targets: BTreeSet<&str> = MEMBERS.iter().map(|(_, t)| *t).collect();
    let socket = udp_client(addr(&server)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..200u16 {
        let qtype = if i % 2 == 0 {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let q = query_with("any.consortium.example.", qtype, i, false);
        socket.send(&q.to_vec().expect("encode")).await.expect("send");
        let bytes = recv_within(&socket, ANSWER_TIMEOUT).await.expect("answer");
        let m = Message::from_vec(&bytes).expect("parse");
        assert_eq!(m.metadata.id, i);
        assert_authoritative(&m, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1, "exactly one CNAME: {m}");
        let record = &m.answers[0];
        assert_eq!(record.name.to_string(), "any.consortium.example.");
        assert_eq!(record.ttl, 30, "the pool's TTL");
        let RData::CNAME(target) = &record.data else {
            panic!("CNAME expected: {m}");
        };
        let target = target.0.to_string();
        assert!(
            targets.contains(target.as_str()),
            "{target} is not a member target"
        );
        *seen.entry(target).or_default() += 1;
    }
    // Weights 2,2,1,1,1: the chance that 200 picks all land on one member is below 1e-100.
    assert!(seen.len() > 1, "the pick varies: {seen:?}");
    // qtype CNAME gets the same kind of answer.
    let m = udp(
        addr(&server),
        &query("any.consortium.example.", RecordType::CNAME, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
}

// ---------------------------------------------------------------------------------------------
// CNAME chains
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn in_zone_cname_chain_is_followed() {
    let (_tree, server) = start_example().await;
    for qtype in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
        let m = udp(addr(&server), &query("docs.consortium.example.", qtype, None)).await;
        assert_authoritative(&m, ResponseCode::NoError);
        // RFC 1034 §4.3.2 step 3a: restart at the CNAME's target while it is in the zone;
        // the chain is written in order.
        assert_eq!(
            in_order(&m.answers),
            vec![
                "docs.consortium.example. 300 CNAME www.consortium.example.",
                "www.consortium.example. 300 CNAME node1.consortium.example.",
                "node1.consortium.example. 300 CNAME node1.operator-a.com.",
            ],
            "{qtype}"
        );
        assert!(m.authorities.is_empty(), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qtype_cname_returns_only_the_cname() {
    let (_tree, server) = start_example().await;
    for (qname, expected) in [
        (
            "docs.consortium.example.",
            "docs.consortium.example. 300 CNAME www.consortium.example.",
        ),
        (
            "www.consortium.example.",
            "www.consortium.example. 300 CNAME node1.consortium.example.",
        ),
    ] {
        let m = udp(addr(&server), &query(qname, RecordType::CNAME, None)).await;
        assert_authoritative(&m, ResponseCode::NoError);
        // RFC 1034 §3.6.2: a query for the CNAME itself is not followed.
        assert_eq!(in_order(&m.answers), vec![expected.to_string()]);
        assert!(m.authorities.is_empty() && m.additionals.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cname_chains_end_in_the_right_negative_answer() {
    let tree = Tree::example();
    append(
        &tree,
        ZONE_FILE,
        "ghost 300 IN CNAME nowhere\nto-mail 300 IN CNAME mail\n",
    );
    let server = tree.start().await;
    // RFC 6604 §3 / RFC 2308 §2.1: the rcode describes the last name of the chain.
    let m = udp(
        addr(&server),
        &query("ghost.consortium.example.", RecordType::A, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NXDomain);
    assert_eq!(
        in_order(&m.answers),
        vec!["ghost.consortium.example. 300 CNAME nowhere.consortium.example.".to_string()]
    );
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(m.authorities[0].ttl, NEGATIVE_TTL);
    // Chain to a name without the type: NODATA after the CNAME.
    let m = udp(
        addr(&server),
        &query("to-mail.consortium.example.", RecordType::TXT, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        in_order(&m.answers),
        vec!["to-mail.consortium.example. 300 CNAME mail.consortium.example.".to_string()]
    );
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // And to one with it: the chain plus the data.
    let m = udp(
        addr(&server),
        &query("to-mail.consortium.example.", RecordType::A, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        in_order(&m.answers),
        vec![
            "to-mail.consortium.example. 300 CNAME mail.consortium.example.",
            "mail.consortium.example. 3600 A 192.0.2.25",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Negative answers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn nxdomain_carries_soa_with_negative_ttl() {
    let (_tree, server) = start_example().await;
    for qname in [
        "nope.consortium.example.",
        "deep.below.nope.consortium.example.",
        "x.mail.consortium.example.",
        "x.node1.consortium.example.",
    ] {
        for qtype in [RecordType::A, RecordType::TXT] {
            let m = udp(addr(&server), &query(qname, qtype, None)).await;
            assert_negative(&m, ResponseCode::NXDomain, NEGATIVE_TTL);
        }
    }
    // Over TCP too.
    let m = tcp(
        addr(&server),
        &query("nope.consortium.example.", RecordType::AAAA, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NXDomain, NEGATIVE_TTL);
}

#[tokio::test(flavor = "multi_thread")]
async fn nodata_carries_soa_with_negative_ttl() {
    let (_tree, server) = start_example().await;
    for (qname, qtype) in [
        ("mail.consortium.example.", RecordType::TXT),
        ("mail.consortium.example.", RecordType::AAAA),
        ("consortium.example.", RecordType::A),
        ("api.consortium.example.", RecordType::MX),
        ("ns1.consortium.example.", RecordType::TXT),
    ] {
        let m = udp(addr(&server), &query(qname, qtype, None)).await;
        assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn negative_ttl_is_soa_ttl_when_lower_than_minimum() {
    let tree = Tree::example();
    edit(&tree, ZONE_FILE, "@       IN SOA", "@ 60    IN SOA");
    let server = tree.start().await;
    // RFC 2308 §5: min(SOA TTL, SOA MINIMUM) = min(60, 300).
    let m = udp(
        addr(&server),
        &query("nope.consortium.example.", RecordType::A, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NXDomain, 60);
    let m = udp(
        addr(&server),
        &query("mail.consortium.example.", RecordType::TXT, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NoError, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_non_terminals_are_nodata() {
    let (_tree, server) = start_example().await;
    // RFC 4592 §2.2.2 / RFC 8020: a name with descendants exists, even without records.
    // `teams` exists because of `*.teams`, `_tcp.api` because of `_https._tcp.api`.
    for qname in ["teams.consortium.example.", "_tcp.api.consortium.example."] {
        for qtype in [RecordType::TXT, RecordType::A, RecordType::SRV] {
            let m = udp(addr(&server), &query(qname, qtype, None)).await;
            assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
        }
    }
    // Below an ENT, a missing name is NXDOMAIN.
    let m = udp(
        addr(&server),
        &query("_udp.api.consortium.example.", RecordType::SRV, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NXDomain, NEGATIVE_TTL);
}

// ---------------------------------------------------------------------------------------------
// Wildcards (RFC 4592)
// ---------------------------------------------------------------------------------------------

const TEAMS_TXT: &str = "\"ask the consortium secretariat for a team name\"";

#[tokio::test(flavor = "multi_thread")]
async fn wildcard_synthesizes_with_qname_owner() {
    let (_tree, server) = start_example().await;
    for qname in [
        "foo.teams.consortium.example.",
        "a.b.teams.consortium.example.",
        "x.y.z.teams.consortium.example.",
    ] {
        let m = udp(addr(&server), &query(qname, RecordType::TXT, None)).await;
        assert_authoritative(&m, ResponseCode::NoError);
        // RFC 4592 §3.3.1: the closest encloser is `teams`, its `*` child exists, and the
        // synthesized RRset's owner is the query name.
        assert_eq!(
            section(&m.answers),
            vec![format!("{qname} 3600 TXT {TEAMS_TXT}")],
            "{qname}"
        );
        // A type the wildcard lacks: NODATA (RFC 4592 §2.2.1).
        let m = udp(addr(&server), &query(qname, RecordType::A, None)).await;
        assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
    }
    // The wildcard owner itself, asked literally.
    let m = udp(
        addr(&server),
        &query("*.teams.consortium.example.", RecordType::TXT, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        vec![format!("*.teams.consortium.example. 3600 TXT {TEAMS_TXT}")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcard_does_not_match_existing_names() {
    let tree = Tree::example();
    append(
        &tree,
        ZONE_FILE,
        "red.teams IN A 192.0.2.99\nhost.blue.teams IN A 192.0.2.98\n",
    );
    let server = tree.start().await;
    let a = addr(&server);
    // RFC 4592 §2.2.1 / §3.3.1: `red.teams` exists, so TXT there is NODATA, not synthesized.
    let m = udp(a, &query("red.teams.consortium.example.", RecordType::TXT, None)).await;
    assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
    let m = udp(a, &query("red.teams.consortium.example.", RecordType::A, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        vec!["red.teams.consortium.example. 3600 A 192.0.2.99".to_string()]
    );
    // Below `red.teams` the closest encloser is `red.teams`, which has no `*` child.
    let m = udp(
        a,
        &query("x.red.teams.consortium.example.", RecordType::TXT, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NXDomain, NEGATIVE_TTL);
    // `blue.teams` is an empty non-terminal: it exists, so the wildcard does not apply to it
    // nor below it (RFC 4592 §2.2.2, the "host3.example." example).
    let m = udp(a, &query("blue.teams.consortium.example.", RecordType::TXT, None)).await;
    assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
    let m = udp(
        a,
        &query("x.blue.teams.consortium.example.", RecordType::TXT, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NXDomain, NEGATIVE_TTL);
    // Siblings that do not exist are still synthesized.
    let m = udp(
        a,
        &query("green.teams.consortium.example.", RecordType::TXT, None),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn delegation_gets_referral_with_glue() {
    let (_tree, server) = start_example().await;
    for (qname, qtype) in [
        ("lab.consortium.example.", RecordType::A),
        ("lab.consortium.example.", RecordType::NS),
        ("lab.consortium.example.", RecordType::SOA),
        ("www.lab.consortium.example.", RecordType::A),
        ("a.b.c.lab.consortium.example.", RecordType::TXT),
        ("ns.lab.consortium.example.", RecordType::A),
        ("x.lab.consortium.example.", RecordType::DS),
    ] {
        for over_tcp in [false, true] {
            let q = query(qname, qtype, None);
            let m = if over_tcp {
                tcp(addr(&server), &q).await
            } else {
                udp(addr(&server), &q).await
            };
            // RFC 1034 §4.3.2 step 3b: below a cut we refer, not answer: AA clear, the cut's
            // NS in authority, glue in additional.
            let context = format!("{qname} {qtype} tcp={over_tcp}: {m}");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{context}");
            assert!(!m.metadata.authoritative, "AA clear: {context}");
            assert!(!m.metadata.truncation, "{context}");
            assert!(m.answers.is_empty(), "{context}");
            assert_eq!(
                section(&m.authorities),
                vec!["lab.consortium.example. 3600 NS ns.lab.consortium.example.".to_string()],
                "{context}"
            );
            // RFC 9471 §3: in-domain glue is required in a referral.
            assert_eq!(
                section(&m.additionals),
                vec!["ns.lab.consortium.example. 3600 A 203.0.113.53".to_string()],
                "{context}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ds_at_the_cut_is_answered_by_the_parent() {
    let (_tree, server) = start_example().await;
    // RFC 4035 §3.1.4.1 / RFC 3658: DS lives on the parent side of the cut. The zone has no
    // DS for `lab`, so the parent answers NODATA, authoritatively, with its SOA.
    let m = udp(
        addr(&server),
        &query("lab.consortium.example.", RecordType::DS, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
}

// ---------------------------------------------------------------------------------------------
// Refusals and errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn names_outside_zones_are_refused() {
    let (_tree, server) = start_example().await;
    for qname in [
        "example.com.",
        "www.example.com.",
        "example.",
        ".",
        "consortium.example.com.",
        "xconsortium.example.",
    ] {
        let m = udp(addr(&server), &query(qname, RecordType::A, None)).await;
        // RFC 1035 §4.1.1 (REFUSED), RFC 8906 §3.1.3: not ours, not authoritative.
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}: {m}");
        assert!(!m.metadata.authoritative, "AA clear for {qname}");
        assert!(!m.metadata.recursion_available);
        assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
        assert_eq!(m.queries.len(), 1, "question echoed");
        assert_eq!(m.queries[0].name().to_string(), qname);
    }
    // A class we do not serve is refused too (class HS).
    let mut q = query("www.consortium.example.", RecordType::A, None);
    q.queries[0].set_query_class(DNSClass::HS);
    let m = udp(addr(&server), &q).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_opcodes_get_notimp() {
    let (_tree, server) = start_example().await;
    // RFC 1035 §4.1.1: opcode 1 IQUERY (obsolete, RFC 3425), 2 STATUS, 15 unassigned. UPDATE
    // (5) is served (tests/it/transfer/update.rs).
    for opcode in [1u16, 2, 15] {
        let mut packet = raw_header(0x5151, (opcode << 11) | 0x0100, [1, 0, 0, 0]);
        packet.extend_from_slice(&raw_question("www.consortium.example.", 1, 1));
        let bytes = udp_raw(addr(&server), &packet)
            .await
            .unwrap_or_else(|| panic!("opcode {opcode} is answered"));
        assert_eq!(raw_id(&bytes), 0x5151);
        assert_eq!(raw_rcode(&bytes), 4, "NOTIMP for opcode {opcode}");
        assert_eq!(bytes[2] & 0x80, 0x80, "QR set");
        assert_eq!(u16::from((bytes[2] >> 3) & 0x0f), opcode, "opcode echoed");
        assert_eq!(bytes[3] & 0x80, 0, "RA clear");
        assert_eq!(&bytes[6..10], &[0, 0, 0, 0], "no answer, no authority");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qdcount_other_than_one_is_formerr() {
    let (_tree, server) = start_example().await;
    // RFC 9619: a query with QDCOUNT other than 1 is a format error.
    let no_question = raw_header(0x0101, 0, [0, 0, 0, 0]);
    let mut two_questions = raw_header(0x0202, 0, [2, 0, 0, 0]);
    two_questions.extend_from_slice(&raw_question("www.consortium.example.", 1, 1));
    two_questions.extend_from_slice(&raw_question("mail.consortium.example.", 1, 1));
    for (packet, id) in [(no_question, 0x0101), (two_questions, 0x0202)] {
        let bytes = udp_raw(addr(&server), &packet)
            .await
            .expect("a format error is answered");
        assert_eq!(raw_id(&bytes), id);
        assert_eq!(raw_rcode(&bytes), 1, "FORMERR");
        assert_eq!(bytes[2] & 0x80, 0x80, "QR set");
        assert_eq!(&bytes[6..10], &[0, 0, 0, 0], "no answer, no authority");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_never_answered() {
    let (_tree, server) = start_example().await;
    // RFC 1035 §4.1.1: QR=1 is a response; answering it would let two servers loop.
    for flags in [0x8000u16, 0x8400, 0x8180] {
        let mut packet = raw_header(0x0BAD, flags, [1, 0, 0, 0]);
        packet.extend_from_slice(&raw_question("www.consortium.example.", 1, 1));
        let (before, probe) = bad_then_probe(addr(&server), &packet).await;
        assert!(
            before.is_empty(),
            "no answer to a response (flags {flags:#06x}): {before:?}"
        );
        assert_probe_answer(&probe);
    }
    // Over TCP: nothing comes back for the response, the next query on a new connection works.
    let mut packet = raw_header(0x0BAD, 0x8000, [1, 0, 0, 0]);
    packet.extend_from_slice(&raw_question("www.consortium.example.", 1, 1));
    let mut stream = TcpStream::connect(addr(&server)).await.expect("connect");
    write_frames(&mut stream, &[packet]).await;
    let mut buf = [0u8; 2];
    // Closing, or staying silent, are both fine; sending anything is not.
    if let Ok(Ok(n @ 1..)) = tokio::time::timeout(SILENCE, stream.read(&mut buf)).await {
        panic!("{n} bytes came back for a response over TCP");
    }
    let m = tcp(
        addr(&server),
        &query("ns1.consortium.example.", RecordType::A, None),
    )
    .await;
    assert_probe_answer(&m);
}

// ---------------------------------------------------------------------------------------------
// ANY, letter case, CHAOS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn any_returns_one_rrset() {
    let (_tree, server) = start_example().await;
    for qname in [
        "consortium.example.",
        "ns1.consortium.example.",
        "www.consortium.example.",
        "foo.teams.consortium.example.",
    ] {
        let m = udp(addr(&server), &query(qname, RecordType::ANY, None)).await;
        assert_authoritative(&m, ResponseCode::NoError);
        // RFC 8482 §4.1: one RRset (of the types present), whole.
        assert!(!m.answers.is_empty(), "{qname}: {m}");
        let rtype = m.answers[0].record_type();
        let owner = m.answers[0].name.clone();
        assert!(
            m.answers
                .iter()
                .all(|r| r.record_type() == rtype && r.name == owner),
            "one RRset for {qname}: {m}"
        );
        // The whole RRset: what a query for that type returns at that owner (a CNAME query
        // does not follow the chain, so this is exactly the set).
        let full = udp(addr(&server), &query(qname, rtype, None)).await;
        let expected: Vec<Record> = full
            .answers
            .iter()
            .filter(|r| r.record_type() == rtype && r.name == owner)
            .cloned()
            .collect();
        assert!(!expected.is_empty(), "{qname} {rtype}: {full}");
        assert_eq!(section(&m.answers), section(&expected), "{qname}");
    }
    // ANY at names without data follows the negative rules.
    let m = udp(
        addr(&server),
        &query("nope.consortium.example.", RecordType::ANY, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NXDomain, NEGATIVE_TTL);
    let m = udp(
        addr(&server),
        &query("teams.consortium.example.", RecordType::ANY, None),
    )
    .await;
    assert_negative(&m, ResponseCode::NoError, NEGATIVE_TTL);
}

#[tokio::test(flavor = "multi_thread")]
async fn question_case_is_echoed_byte_for_byte() {
    let (_tree, server) = start_example().await;
    for (qname, qtype, rcode) in [
        ("WwW.CoNsOrTiUm.ExAmPlE.", 1u16, 0u8),
        ("NS1.CONSORTIUM.EXAMPLE.", 28, 0),
        ("FoO.TeAmS.consortium.EXAMPLE.", 16, 0),
        ("NoPe.CONSORTIUM.example.", 1, 3),
        ("WWW.Example.COM.", 1, 5),
        ("LaB.cOnSoRtIuM.eXaMpLe.", 1, 0),
    ] {
        let packet = raw_query(0x0C0C, qname, qtype);
        for bytes in [
            udp_raw(addr(&server), &packet).await.expect("UDP answer"),
            tcp_raw(addr(&server), std::slice::from_ref(&packet), 1)
                .await
                .remove(0),
        ] {
            // RFC 1035 §7.3 / RFC 4343 §4: the question is copied as sent, letter case and all
            // (resolvers using 0x20 randomisation compare it byte for byte).
            assert_eq!(raw_rcode(&bytes), rcode, "{qname}");
            assert_eq!(&bytes[4..6], &[0, 1], "QDCOUNT 1");
            assert_eq!(
                &bytes[12..packet.len()],
                &packet[12..],
                "question of {qname} echoed exactly"
            );
        }
    }
    // The answers still match case-insensitively (RFC 4343 §3).
    let m = udp(
        addr(&server),
        &query("FoO.TeAmS.consortium.EXAMPLE.", RecordType::TXT, None),
    )
    .await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].name.to_lowercase().to_string(),
        "foo.teams.consortium.example."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_identity_and_unconfigured_version() {
    let (_tree, server) = start_example().await;
    for qname in ["id.server.", "ID.SERVER.", "hostname.bind."] {
        let m = udp(addr(&server), &chaos_query(qname)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qname}: {m}");
        assert_eq!(m.answers.len(), 1, "{qname}: {m}");
        let record = &m.answers[0];
        assert_eq!(record.dns_class, DNSClass::CH);
        assert_eq!(
            record.name.to_lowercase(),
            crate::common::name(qname).to_lowercase()
        );
        let RData::TXT(txt) = &record.data else {
            panic!("TXT expected: {m}");
        };
        let text: Vec<&[u8]> = txt.txt_data.iter().map(|s| &s[..]).collect();
        assert_eq!(text, vec![&b"ns1.consortium.example"[..]]);
    }
    // No `version` configured: refused, never a default version string.
    for qname in ["version.bind.", "version.server."] {
        let m = udp(addr(&server), &chaos_query(qname)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}: {m}");
        assert!(m.answers.is_empty());
    }
    // Any other CH name, our zone's names included, is not ours.
    let m = udp(addr(&server), &chaos_query("www.consortium.example.")).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m}");
    assert!(m.answers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// EDNS(0)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn opt_is_returned_iff_the_query_has_one() {
    let (_tree, server) = start_example().await;
    for (qname, qtype, rcode) in [
        ("www.consortium.example.", RecordType::A, ResponseCode::NoError),
        ("mail.consortium.example.", RecordType::TXT, ResponseCode::NoError),
        ("nope.consortium.example.", RecordType::A, ResponseCode::NXDomain),
        ("lab.consortium.example.", RecordType::A, ResponseCode::NoError),
        ("example.com.", RecordType::A, ResponseCode::Refused),
    ] {
        // RFC 6891 §7: no OPT in the query, none in the answer.
        let m = udp(addr(&server), &query(qname, qtype, None)).await;
        assert_eq!(m.metadata.response_code, rcode, "{qname}");
        assert!(m.edns.is_none(), "no OPT expected for {qname}: {m}");
        // RFC 6891 §6.1.1: with one, the answer carries one, version 0, our payload size.
        for size in [512u16, 1232, 4096] {
            let m = udp(addr(&server), &query(qname, qtype, Some(size))).await;
            assert_eq!(m.metadata.response_code, rcode, "{qname}");
            let edns = m
                .edns
                .as_ref()
                .unwrap_or_else(|| panic!("OPT expected for {qname}"));
            assert_eq!(edns.version(), 0);
            assert_eq!(edns.max_payload(), 1232, "the server's udp-payload");
            assert_eq!(edns.rcode_high(), 0);
        }
        let m = tcp(addr(&server), &query(qname, qtype, Some(1232))).await;
        assert!(m.edns.is_some(), "OPT over TCP for {qname}");
    }
    // The DO bit is copied back (RFC 3225 §3).
    let mut q = query("www.consortium.example.", RecordType::A, Some(1232));
    q.edns.as_mut().expect("edns").set_dnssec_ok(true);
    let m = udp(addr(&server), &q).await;
    assert!(m.edns.expect("OPT").flags().dnssec_ok, "DO copied");
    // An error answer to a query with OPT carries one too (RFC 6891 §6.1.1).
    let mut packet = raw_header(0x0404, 2 << 11, [1, 0, 0, 1]);
    packet.extend_from_slice(&raw_question("www.consortium.example.", 1, 1));
    packet.extend_from_slice(&raw_opt(1232, 0, &[]));
    let bytes = udp_raw(addr(&server), &packet).await.expect("NOTIMP answer");
    assert_eq!(raw_rcode(&bytes), 4, "NOTIMP");
    assert_eq!(&bytes[10..12], &[0, 1], "OPT in the NOTIMP answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn edns_version_1_gets_badvers() {
    let (_tree, server) = start_example().await;
    let mut packet = raw_query(0x0B0B, "www.consortium.example.", 1);
    packet[11] = 1; // ARCOUNT
    packet.extend_from_slice(&raw_opt(1232, 1, &[]));
    for bytes in [
        udp_raw(addr(&server), &packet).await.expect("UDP answer"),
        tcp_raw(addr(&server), std::slice::from_ref(&packet), 1)
            .await
            .remove(0),
    ] {
        // RFC 6891 §6.1.3: BADVERS (16) = header rcode 0 + OPT extended rcode 1, and our
        // highest version (0) in the OPT.
        assert_eq!(raw_rcode(&bytes), 0, "low bits of 16");
        let m = Message::from_vec(&bytes).expect("parse");
        assert_eq!(m.metadata.id, 0x0B0B);
        // hickory names 16 BADSIG (TSIG shares the value); compare the number.
        assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS: {m}");
        let edns = m.edns.as_ref().expect("OPT in a BADVERS answer");
        assert_eq!(edns.rcode_high(), 1);
        assert_eq!(edns.version(), 0);
        assert!(m.answers.is_empty(), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_edns_options_are_ignored() {
    let (_tree, server) = start_example().await;
    let mut packet = raw_query(0x0E0E, "www.consortium.example.", 1);
    packet[11] = 1;
    // Option 65001 (local/experimental use) and 65534 with empty data.
    packet.extend_from_slice(&raw_opt(1232, 0, &[(65001, b"\x01\x02\x03\x04"), (65534, b"")]));
    let bytes = udp_raw(addr(&server), &packet).await.expect("answer");
    let m = Message::from_vec(&bytes).expect("parse");
    // RFC 6891 §6.1.2: options not understood MUST be ignored; the answer is the normal one.
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 2, "www -> node1 -> node1.operator-a.com.: {m}");
    let edns = m.edns.as_ref().expect("OPT");
    assert!(
        edns.option(EdnsCode::from(65001)).is_none(),
        "unknown option not echoed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_duplicate_opt_is_formerr() {
    let (_tree, server) = start_example().await;
    // RFC 6891 §6.1.1: more than one OPT is a FORMERR.
    let mut two = raw_query(0x0D0D, "www.consortium.example.", 1);
    two[11] = 2;
    two.extend_from_slice(&raw_opt(1232, 0, &[]));
    two.extend_from_slice(&raw_opt(4096, 0, &[]));
    // RFC 6891 §7: a badly formatted option is a FORMERR, answered with an OPT so the client
    // can tell it from a server without EDNS.
    let mut bad_option = raw_query(0x0D0E, "www.consortium.example.", 1);
    bad_option[11] = 1;
    let mut opt = raw_opt(1232, 0, &[(65001, b"12345678")]);
    // OPT = root(1) TYPE(2) CLASS(2) TTL(4) RDLEN(2), then OPTION-CODE(2) OPTION-LENGTH(2):
    // the option now claims 200 octets where the RDATA holds 8.
    opt[13..15].copy_from_slice(&200u16.to_be_bytes());
    bad_option.extend_from_slice(&opt);
    for (packet, id) in [(two, 0x0D0D), (bad_option, 0x0D0E)] {
        let (before, probe) = bad_then_probe(addr(&server), &packet).await;
        assert_eq!(before.len(), 1, "one answer to {id:#06x}");
        let bytes = &before[0];
        assert_eq!(raw_id(bytes), id);
        assert_eq!(raw_rcode(bytes), 1, "FORMERR for {id:#06x}");
        assert_eq!(&bytes[6..10], &[0, 0, 0, 0], "no answer, no authority");
        assert_eq!(&bytes[10..12], &[0, 1], "one OPT in the FORMERR for {id:#06x}");
        let m = Message::from_vec(bytes).expect("FORMERR parses");
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.edns.as_ref().map(|e| e.version()), Some(0));
        assert_probe_answer(&probe);
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation and TCP fallback
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn large_answer_truncated_without_edns_fits_with_edns() {
    let tree = tree_with_big_rrsets();
    let server = tree.start().await;
    let a = addr(&server);
    let big = "big.consortium.example.";

    // RFC 1035 §4.2.1 / RFC 2181 §9: without EDNS, 512 octets; the RRset does not fit, so TC
    // is set and no partial RRset is sent.
    for qtype in [RecordType::TXT, RecordType::ANY] {
        let bytes = udp_raw(a, &query(big, qtype, None).to_vec().expect("encode"))
            .await
            .expect("answer");
        assert!(bytes.len() <= 512, "{} octets over UDP without EDNS", bytes.len());
        let m = Message::from_vec(&bytes).expect("a truncated answer still parses");
        assert!(m.metadata.truncation, "TC set for {qtype}: {m}");
        assert!(m.answers.is_empty(), "no partial RRset for {qtype}: {m}");
        assert_eq!(m.queries.len(), 1, "the question is kept");
        assert!(m.edns.is_none());
    }

    // RFC 6891 §6.2.5: with EDNS 4096 (capped by the server at 1232) the 1.1 kB answer fits.
    let bytes = udp_raw(
        a,
        &query(big, RecordType::TXT, Some(4096)).to_vec().expect("encode"),
    )
    .await
    .expect("answer");
    assert!(bytes.len() > 512 && bytes.len() <= 1232, "{} octets", bytes.len());
    let m = Message::from_vec(&bytes).expect("parse");
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 20);
    let mut expected: Vec<String> = (0..20)
        .map(|i| format!("{big} 3600 TXT \"{}\"", filler(i)))
        .collect();
    expected.sort();
    assert_eq!(section(&m.answers), expected);

    // RFC 7766 §5: over TCP the whole answer arrives, TC clear.
    let m = tcp(a, &query(big, RecordType::TXT, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(section(&m.answers), expected);

    // `huge` (2.2 kB) exceeds 1232 even though the client offers 4096; TCP carries it.
    let bytes = udp_raw(
        a,
        &query("huge.consortium.example.", RecordType::TXT, Some(4096))
            .to_vec()
            .expect("encode"),
    )
    .await
    .expect("answer");
    assert!(bytes.len() <= 1232, "{} octets", bytes.len());
    let m = Message::from_vec(&bytes).expect("parse");
    assert!(m.metadata.truncation, "TC set: {m}");
    assert!(m.answers.is_empty(), "no partial RRset");
    assert!(m.edns.is_some(), "OPT kept in a truncated answer");
    let m = tcp(a, &query("huge.consortium.example.", RecordType::TXT, Some(4096))).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_udp_payload_caps_what_the_client_advertises() {
    let tree = tree_with_big_rrsets();
    edit(&tree, CONFIG_FILE, "udp-payload = 1232", "udp-payload = 1024");
    let server = tree.start().await;
    let a = addr(&server);
    // `big` needs ~1.1 kB: over the server's 1024 whatever the client offers.
    for size in [1100u16, 1232, 4096, 65_535] {
        let bytes = udp_raw(
            a,
            &query("big.consortium.example.", RecordType::TXT, Some(size))
                .to_vec()
                .expect("encode"),
        )
        .await
        .expect("answer");
        assert!(
            bytes.len() <= 1024,
            "{} octets with client size {size}",
            bytes.len()
        );
        let m = Message::from_vec(&bytes).expect("parse");
        assert!(m.metadata.truncation, "TC with client size {size}: {m}");
        assert!(m.answers.is_empty());
        // RFC 6891 §6.2.3: we advertise our own limit.
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1024));
    }
    // A small answer is unaffected, and TCP still carries the big one.
    let m = udp(a, &query("www.consortium.example.", RecordType::A, Some(4096))).await;
    assert_authoritative(&m, ResponseCode::NoError);
    let m = tcp(a, &query("big.consortium.example.", RecordType::TXT, Some(4096))).await;
    assert_eq!(m.answers.len(), 20);

    // Raising the limit lets `huge` (2.2 kB) through UDP for a client offering 4096.
    let tree = tree_with_big_rrsets();
    edit(&tree, CONFIG_FILE, "udp-payload = 1232", "udp-payload = 4096");
    let server = tree.start().await;
    let m = udp(
        addr(&server),
        &query("huge.consortium.example.", RecordType::TXT, Some(4096)),
    )
    .await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 40);
    // But not for a client offering 1232.
    let m = udp(
        addr(&server),
        &query("huge.consortium.example.", RecordType::TXT, Some(1232)),
    )
    .await;
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

/// A mix of queries with distinct IDs and the first answer record (or rcode) each expects.
fn pipelined_batch(round: u16) -> Vec<(Message, String)> {
    let cases: [(&str, RecordType, &str); 6] = [
        (
            "ns1.consortium.example.",
            RecordType::A,
            "ns1.consortium.example. 3600 A 192.0.2.53",
        ),
        (
            "node2.consortium.example.",
            RecordType::A,
            "node2.consortium.example. 300 CNAME api.operator-b.net.",
        ),
        ("nope.consortium.example.", RecordType::A, "NXDomain"),
        (
            "mail.consortium.example.",
            RecordType::A,
            "mail.consortium.example. 3600 A 192.0.2.25",
        ),
        ("example.com.", RecordType::A, "Refused"),
        (
            "foo.teams.consortium.example.",
            RecordType::TXT,
            "foo.teams.consortium.example. 3600 TXT \"ask the consortium secretariat for a team name\"",
        ),
    ];
    cases
        .iter()
        .enumerate()
        .map(|(i, (qname, qtype, expect))| {
            let mut q = query(qname, *qtype, None);
            q.metadata.id = round * 100 + i as u16;
            (q, expect.to_string())
        })
        .collect()
}

fn summary(m: &Message) -> String {
    match m.answers.first() {
        Some(record) => show(record),
        None => format!("{:?}", m.metadata.response_code),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_pipelined_queries_are_all_answered() {
    let (_tree, server) = start_example().await;
    let batch = pipelined_batch(1);
    let bytes: Vec<Vec<u8>> = batch.iter().map(|(q, _)| q.to_vec().expect("encode")).collect();
    // RFC 7766 §6.2.1.1: queries pipelined in one write; answers may come in any order.
    let answers = tcp_raw(addr(&server), &bytes, batch.len()).await;
    let mut by_id: HashMap<u16, Message> = HashMap::new();
    for bytes in answers {
        let m = Message::from_vec(&bytes).expect("parse");
        assert!(by_id.insert(m.metadata.id, m).is_none(), "one answer per ID");
    }
    for (q, expect) in &batch {
        let m = by_id
            .get(&q.metadata.id)
            .unwrap_or_else(|| panic!("no answer for ID {}", q.metadata.id));
        assert_eq!(&summary(m), expect, "ID {}", q.metadata.id);
    }
}

/// Many pipelined queries in one write, more than `tcp-max-in-flight`: every one is answered,
/// in order; a message we do not answer (a response, QR=1) closes the connection only after the
/// answers owed to the queries before it.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_pipeline_longer_than_the_in_flight_cap_is_answered_in_order() {
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG_FILE,
        "tcp-max-in-flight = 32",
        "tcp-max-in-flight = 3",
    );
    let server = tree.start().await;
    let names = ["ns1", "mail", "node1", "nope", "ns2"];
    let mut batch: Vec<Vec<u8>> = (0..100u16)
        .map(|i| {
            let name = format!("{}.consortium.example.", names[usize::from(i) % names.len()]);
            let mut q = query(&name, RecordType::A, None);
            q.metadata.id = 1000 + i;
            q.to_vec().expect("encode")
        })
        .collect();
    let mut stray_response = query("ns1.consortium.example.", RecordType::A, None);
    stray_response.metadata.message_type = MessageType::Response;
    batch.push(stray_response.to_vec().expect("encode"));
    let mut stream = TcpStream::connect(addr(&server)).await.expect("connect");
    write_frames(&mut stream, &batch).await;
    for i in 0..100u16 {
        let m = read_frame(&mut stream).await;
        assert_eq!(m.metadata.id, 1000 + i, "answers come in query order");
        let expected = if names[usize::from(i) % names.len()] == "nope" {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        assert_eq!(m.metadata.response_code, expected, "{m}");
    }
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the stray response closes the connection, with nothing more sent: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_connection_survives_several_rounds() {
    let (_tree, server) = start_example().await;
    let mut stream = TcpStream::connect(addr(&server)).await.expect("connect");
    for round in 1..=5u16 {
        let batch = pipelined_batch(round);
        let bytes: Vec<Vec<u8>> = batch.iter().map(|(q, _)| q.to_vec().expect("encode")).collect();
        write_frames(&mut stream, &bytes).await;
        let mut by_id = HashMap::new();
        for _ in 0..batch.len() {
            let m = read_frame(&mut stream).await;
            by_id.insert(m.metadata.id, summary(&m));
        }
        for (q, expect) in &batch {
            assert_eq!(by_id.get(&q.metadata.id), Some(expect), "round {round}");
        }
        // A query split across writes is fine too (RFC 7766 §8: a message may arrive in pieces).
        let single = query("ns2.consortium.example.", RecordType::A, None)
            .to_vec()
            .expect("encode");
        let frame = frame(&single);
        let (head, tail) = frame.split_at(5);
        stream.write_all(head).await.expect("write head");
        stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.write_all(tail).await.expect("write tail");
        let m = read_frame(&mut stream).await;
        assert_eq!(summary(&m), "ns2.consortium.example. 3600 A 198.51.100.53");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_idle_connection_is_closed_while_others_are_served() {
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG_FILE,
        "tcp-idle-timeout = \"10s\"",
        "tcp-idle-timeout = \"1s\"",
    );
    edit(
        &tree,
        CONFIG_FILE,
        "tcp-read-timeout = \"5s\"",
        "tcp-read-timeout = \"2s\"",
    );
    let server = tree.start().await;
    let a = addr(&server);
    let started = Instant::now();
    // One client sends nothing: closed after the idle timeout. Another sends half a length
    // prefix: its message has started, so it is closed when the read timeout ends without the
    // rest (RFC 7766 §6.2.3).
    let silent = TcpStream::connect(a).await.expect("connect");
    let mut slow = TcpStream::connect(a).await.expect("connect");
    slow.write_all(&[0]).await.expect("write one byte");
    let wait_closed = |mut stream: TcpStream| async move {
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        match closed {
            Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
            Ok(Ok(n)) => panic!("{n} unexpected bytes on an idle connection"),
            Err(_) => panic!("idle connection still open after 5 s"),
        }
    };
    let silent_closed = tokio::spawn(wait_closed(silent));
    let slow_closed = tokio::spawn(wait_closed(slow));
    // Meanwhile other clients are served, over UDP and TCP.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1200) {
        let m = udp(a, &query("ns1.consortium.example.", RecordType::A, None)).await;
        assert_probe_answer(&m);
        let m = tcp(a, &query("ns1.consortium.example.", RecordType::A, None)).await;
        assert_probe_answer(&m);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 5, "{served} rounds served");
    let expected = [
        (
            "silent",
            silent_closed,
            Duration::from_millis(900),
            Duration::from_millis(1800),
        ),
        (
            "slow",
            slow_closed,
            Duration::from_millis(1900),
            Duration::from_millis(3200),
        ),
    ];
    for (what, handle, at_least, below) in expected {
        let elapsed = handle.await.expect("join");
        assert!(
            elapsed >= at_least && elapsed < below,
            "{what} client closed after {elapsed:?}, want {at_least:?}..{below:?}"
        );
    }
    // A connection that does send stays usable past the timeout while it keeps sending.
    let mut active = TcpStream::connect(a).await.expect("connect");
    for _ in 0..3 {
        let q = query("ns1.consortium.example.", RecordType::A, None)
            .to_vec()
            .expect("encode");
        write_frames(&mut active, &[q]).await;
        assert_probe_answer(&read_frame(&mut active).await);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// A query for `ns1.consortium.example. A` with an EDNS padding option (RFC 7830) that makes the
/// whole message exactly `size` octets.
fn padded_probe(id: u16, size: usize) -> Vec<u8> {
    let mut q = raw_header(id, 0x0100, [1, 0, 0, 1]);
    q.extend_from_slice(&raw_name("ns1.consortium.example."));
    q.extend_from_slice(&[0, 1, 0, 1]);
    // OPT: root owner, type 41, class = UDP size 1232, TTL 0; one option: padding.
    let fixed = q.len() + 11 + 4;
    let padding = size.checked_sub(fixed).expect("size leaves room for the OPT");
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    q.extend_from_slice(&((4 + padding) as u16).to_be_bytes());
    q.extend_from_slice(&[0, 12]);
    q.extend_from_slice(&(padding as u16).to_be_bytes());
    q.resize(q.len() + padding, 0);
    assert_eq!(q.len(), size);
    q
}

/// `limits.max-message-size`: a query up to the limit is answered; a longer one is dropped
/// over UDP and closes the connection over TCP, and the server goes on answering.
#[tokio::test(flavor = "multi_thread")]
async fn queries_over_max_message_size_are_refused_per_transport() {
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG_FILE,
        "max-message-size = 4096",
        "max-message-size = 600",
    );
    let server = tree.start().await;
    let a = addr(&server);

    let fits = udp_raw(a, &padded_probe(0x0600, 600))
        .await
        .expect("a 600-octet query is answered");
    let m = Message::from_vec(&fits).expect("parse");
    assert_eq!(m.metadata.id, 0x0600);
    assert_probe_answer(&m);
    assert_eq!(
        udp_raw(a, &padded_probe(0x0601, 601)).await,
        None,
        "601 octets: dropped"
    );
    assert_eq!(
        udp_raw(a, &padded_probe(0x0602, 4000)).await,
        None,
        "4000 octets: dropped"
    );
    assert_probe_answer(&udp(a, &query("ns1.consortium.example.", RecordType::A, None)).await);

    let mut stream = TcpStream::connect(a).await.expect("connect");
    write_frames(&mut stream, &[padded_probe(0x0603, 600)]).await;
    let m = read_frame(&mut stream).await;
    assert_eq!(m.metadata.id, 0x0603);
    assert_probe_answer(&m);
    write_frames(&mut stream, &[padded_probe(0x0604, 601)]).await;
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a 601-octet TCP message closes the connection without an answer: {closed:?}"
    );
    assert_probe_answer(&tcp(a, &query("ns1.consortium.example.", RecordType::A, None)).await);
}

/// RFC 7766 §7: answers on one connection may leave in another order than their queries. A
/// zone transfer is built off the connection's reader, so the ordinary queries pipelined
/// behind an AXFR of a big zone are answered before it, and the transfer still arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_queries_pipelined_behind_a_zone_transfer_are_answered_first() {
    const BULK: usize = 30_000;
    let tree = Tree::example();
    let mut members = tree.read(MEMBERS_FILE);
    for i in 0..BULK {
        writeln!(
            members,
            "[[member]]\nlabel = \"bulk{i}\"\ntarget = \"bulk{i}.operator-z.net\"\nweight = 0\n"
        )
        .expect("write");
    }
    tree.write(MEMBERS_FILE, &members);
    edit(
        &tree,
        CONFIG_FILE,
        "members = \"../zones/consortium.example.members.toml\"",
        "members = \"../zones/consortium.example.members.toml\"\nallow-transfer = [{ network = \"127.0.0.1\" }]",
    );
    let server = tree.start().await;

    let mut axfr = query("consortium.example.", RecordType::AXFR, None);
    axfr.metadata.id = 0xA0A0;
    let mut batch = vec![axfr.to_vec().expect("encode")];
    let behind: Vec<Message> = (0..4u16)
        .map(|i| {
            let mut q = query("ns1.consortium.example.", RecordType::A, None);
            q.metadata.id = 0x0B00 + i;
            q
        })
        .collect();
    batch.extend(behind.iter().map(|q| q.to_vec().expect("encode")));
    let mut stream = TcpStream::connect(addr(&server)).await.expect("connect");
    write_frames(&mut stream, &batch).await;

    // First the four answers behind the transfer, in their order...
    for q in &behind {
        let m = read_frame(&mut stream).await;
        assert_eq!(
            m.metadata.id, q.metadata.id,
            "the query behind the AXFR is answered first"
        );
        assert_probe_answer(&m);
    }
    // ...then the transfer, whole: SOA first and last, every member's CNAME once.
    let mut cnames = 0usize;
    let mut soas = 0usize;
    let mut last_was_soa = false;
    while soas < 2 {
        let m = read_frame(&mut stream).await;
        assert_eq!(
            m.metadata.id, 0xA0A0,
            "transfer messages are not interleaved with others"
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        for record in &m.answers {
            last_was_soa = record.record_type() == RecordType::SOA;
            soas += usize::from(last_was_soa);
            cnames += usize::from(
                record.record_type() == RecordType::CNAME && record.name.to_string().starts_with("bulk"),
            );
        }
    }
    assert!(last_was_soa, "the transfer ends with the SOA");
    assert_eq!(cnames, BULK, "every bulk member's CNAME is in the transfer");
}

// ---------------------------------------------------------------------------------------------
// Malformed packets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_udp_packets_get_formerr_or_silence() {
    let (_tree, server) = start_example().await;
    let question = raw_question("www.consortium.example.", 1, 1);
    let with = |id: u16, counts: [u16; 4], body: &[u8]| {
        let mut packet = raw_header(id, 0x0100, counts);
        packet.extend_from_slice(body);
        packet
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", Vec::new()),
        ("5 bytes", vec![0x13, 0x37, 0xde, 0xad, 0xbe]),
        (
            "truncated header",
            raw_header(0x0001, 0x0100, [1, 0, 0, 0])[..9].to_vec(),
        ),
        ("header only, QDCOUNT 1", with(0x0002, [1, 0, 0, 0], &[])),
        ("cut mid-name", with(0x0003, [1, 0, 0, 0], &question[..7])),
        (
            "cut before QCLASS",
            with(0x0004, [1, 0, 0, 0], &question[..question.len() - 1]),
        ),
        // A compression pointer at offset 12 pointing to itself.
        (
            "pointer loop in question",
            with(0x0005, [1, 0, 0, 0], &[0xC0, 0x0C, 0, 1, 0, 1]),
        ),
        // A pointer backwards into the header.
        (
            "pointer into header",
            with(0x0006, [1, 0, 0, 0], &[0xC0, 0x02, 0, 1, 0, 1]),
        ),
    ];
    // A 64-octet label (RFC 1035 §2.3.4: labels are 63 octets or less).
    let mut long_label = vec![64];
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&raw_name("consortium.example."));
    long_label.extend_from_slice(&[0, 1, 0, 1]);
    cases.push(("label of 64", with(0x0007, [1, 0, 0, 0], &long_label)));
    // Label types 0x40 (extended, deprecated by RFC 6891 §5) and 0x80 (reserved).
    cases.push((
        "label type 0x40",
        with(0x0008, [1, 0, 0, 0], &[0x41, 0, 0, 1, 0, 1]),
    ));
    cases.push((
        "label type 0x80",
        with(0x0010, [1, 0, 0, 0], &[0x81, 0, 0, 1, 0, 1]),
    ));
    // A name of 4 * 64 + 20 = 276 octets, over 255 (RFC 1035 §2.3.4).
    let mut long_name = Vec::new();
    for _ in 0..4 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'b'; 63]);
    }
    long_name.extend_from_slice(&raw_name("consortium.example."));
    long_name.extend_from_slice(&[0, 1, 0, 1]);
    cases.push(("name over 255", with(0x0009, [1, 0, 0, 0], &long_name)));
    // Counts larger than the content.
    cases.push(("ANCOUNT 3, no records", with(0x000A, [1, 3, 0, 0], &question)));
    cases.push(("NSCOUNT 1, no records", with(0x000B, [1, 0, 1, 0], &question)));
    cases.push(("ARCOUNT 2, no records", with(0x000C, [1, 0, 0, 2], &question)));
    cases.push(("QDCOUNT 65535", with(0x000D, [0xFFFF, 0, 0, 0], &question)));
    // An OPT record in the answer section (RFC 6891 §6.1.1: additional section only).
    let mut opt_in_answer = question.clone();
    opt_in_answer.extend_from_slice(&raw_opt(1232, 0, &[]));
    cases.push(("OPT in answer", with(0x000E, [1, 1, 0, 0], &opt_in_answer)));
    // An additional record whose RDLENGTH runs past the end.
    let mut long_rdata = question.clone();
    long_rdata.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 0, 0x01, 0x00, 1, 2, 3]);
    cases.push(("RDLENGTH past the end", with(0x000F, [1, 0, 0, 1], &long_rdata)));

    for (what, packet) in &cases {
        let (before, probe) = bad_then_probe(addr(&server), packet).await;
        if packet.len() < 12 {
            // No whole header, no ID to answer to: silence.
            assert!(before.is_empty(), "{what}: answered a packet without a header");
        } else {
            // RFC 1035 §4.1.1: a whole header with a broken rest gets FORMERR for that ID, so
            // the client learns at once instead of timing out.
            assert_eq!(before.len(), 1, "{what}: one FORMERR expected, got {before:?}");
            let bytes = &before[0];
            assert!(bytes.len() >= 12, "{what}: answer shorter than a header");
            assert_eq!(raw_id(bytes), raw_id(packet), "{what}: ID echoed");
            assert_eq!(bytes[2] & 0x80, 0x80, "{what}: QR set");
            assert_eq!(raw_rcode(bytes), 1, "{what}: FORMERR");
            assert_eq!(&bytes[6..10], &[0, 0, 0, 0], "{what}: no records");
        }
        // The server is still up and answers correctly.
        assert_probe_answer(&probe);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tcp_messages_do_not_hurt_the_server() {
    let (_tree, server) = start_example().await;
    let a = addr(&server);
    // A message too short for a header, then a good query on the same connection: the server
    // may close (RFC 7766 §7) but must not answer garbage; a new connection is served.
    let mut stream = TcpStream::connect(a).await.expect("connect");
    write_frames(&mut stream, &[vec![1, 2, 3]]).await;
    let mut buf = [0u8; 64];
    if let Ok(Ok(n @ 1..)) = tokio::time::timeout(SILENCE, stream.read(&mut buf)).await {
        panic!("{n} bytes answered to a 3-byte message");
    }
    // A broken question gets FORMERR over TCP and the connection keeps serving.
    let mut broken = raw_header(0x0AAA, 0, [1, 0, 0, 0]);
    broken.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    let good = query("ns1.consortium.example.", RecordType::A, None)
        .to_vec()
        .expect("encode");
    let answers = tcp_raw(a, &[broken, good], 2).await;
    assert_eq!(raw_id(&answers[0]), 0x0AAA);
    assert_eq!(raw_rcode(&answers[0]), 1, "FORMERR over TCP");
    assert_probe_answer(&Message::from_vec(&answers[1]).expect("parse"));
    // A zero-length message.
    let mut stream = TcpStream::connect(a).await.expect("connect");
    stream.write_all(&[0, 0]).await.expect("write");
    if let Ok(Ok(n @ 1..)) = tokio::time::timeout(SILENCE, stream.read(&mut buf)).await {
        panic!("{n} bytes answered to an empty message");
    }
    let m = tcp(a, &query("ns1.consortium.example.", RecordType::A, None)).await;
    assert_probe_answer(&m);
}

// ---------------------------------------------------------------------------------------------
// IPv6
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn serves_ipv6_loopback_too() {
    if let Err(e) = std::net::UdpSocket::bind("[::1]:0") {
        panic!("this test needs the IPv6 loopback address ::1, which is unavailable here: {e}");
    }
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG_FILE,
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let server = tree.start().await;
    assert_eq!(server.dns_addrs.len(), 2, "{:?}", server.dns_addrs);
    let v6 = *server
        .dns_addrs
        .iter()
        .find(|a| a.is_ipv6())
        .expect("an IPv6 listener");
    assert!(v6.ip().is_loopback() && v6.port() != 0, "{v6}");
    let socket = udp_client(v6).await;
    let q = query("ns1.consortium.example.", RecordType::AAAA, None);
    socket.send(&q.to_vec().expect("encode")).await.expect("send");
    let bytes = recv_within(&socket, ANSWER_TIMEOUT)
        .await
        .expect("UDP answer over IPv6");
    let m = Message::from_vec(&bytes).expect("parse");
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        section(&m.answers),
        vec!["ns1.consortium.example. 3600 AAAA 2001:db8::53".to_string()]
    );
    let m = tcp(v6, &query("node3.consortium.example.", RecordType::A, None)).await;
    assert_authoritative(&m, ResponseCode::NoError);
    assert_eq!(
        in_order(&m.answers),
        vec!["node3.consortium.example. 300 CNAME planetmint.operator-c.org.".to_string()]
    );
    // The IPv4 listener still works.
    let v4 = *server.dns_addrs.iter().find(|a| a.is_ipv4()).expect("IPv4");
    assert_probe_answer(&udp(v4, &query("ns1.consortium.example.", RecordType::A, None)).await);
    assert!(recv_within(&socket, QUIET).await.is_none(), "nothing stray");
}

// ---------------------------------------------------------------------------------------------
// `consortium-dns check`
// ---------------------------------------------------------------------------------------------

#[test]
fn check_accepts_the_example() {
    let tree = Tree::example();
    let (ok, stdout, stderr) = run_check(&tree);
    assert!(ok, "check fails on the example:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("consortium.example") && stdout.contains(&SERIAL.to_string()),
        "check names the zone and its serial: {stdout}"
    );
}

#[test]
fn check_reports_zone_syntax_error_with_line() {
    let tree = Tree::example();
    edit(
        &tree,
        ZONE_FILE,
        "api     IN A    192.0.2.80",
        "api     IN A    192.0.2.800",
    );
    let line = line_of(&tree.read(ZONE_FILE), "192.0.2.800");
    let (ok, stdout, stderr) = run_check(&tree);
    assert!(!ok, "check accepts a broken zone:\n{stdout}\n{stderr}");
    let wanted = format!("consortium.example.zone:{line}: ");
    let reported: Vec<&str> = stderr.lines().filter(|l| l.contains(".zone:")).collect();
    assert!(
        reported.iter().any(|l| l.contains(&wanted)),
        "want {wanted:?} in:\n{stderr}"
    );
    // Only that line is blamed.
    assert!(
        reported.iter().all(|l| l.contains(&wanted)),
        "other lines blamed:\n{stderr}"
    );
    // An unknown type on another line is reported with its own line.
    let tree = Tree::example();
    edit(
        &tree,
        ZONE_FILE,
        "mail    IN A    192.0.2.25",
        "mail    IN BOGUS 192.0.2.25",
    );
    let line = line_of(&tree.read(ZONE_FILE), "BOGUS");
    let (ok, _, stderr) = run_check(&tree);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("consortium.example.zone:{line}: ")),
        "line {line} in:\n{stderr}"
    );
}

#[test]
fn check_reports_duplicate_member_label_with_line() {
    let tree = Tree::example();
    append(
        &tree,
        MEMBERS_FILE,
        "\n[[member]]\nlabel = \"node3\"\ntarget = \"other.operator-f.example\"\n",
    );
    let text = tree.read(MEMBERS_FILE);
    // The second `[[member]]` table whose label is node3.
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[member]]")
        .map(|(i, _)| i + 1)
        .last()
        .expect("the appended member");
    assert!(text.lines().nth(line).is_some_and(|l| l.contains("node3")));
    let (ok, stdout, stderr) = run_check(&tree);
    assert!(!ok, "check accepts a duplicate member:\n{stdout}\n{stderr}");
    let wanted = format!("consortium.example.members.toml:{line}: duplicate member label");
    assert!(stderr.contains(&wanted), "want {wanted:?} in:\n{stderr}");
}

#[test]
fn check_names_a_misspelt_member_table_and_config_goes_before_or_after_the_command() {
    // Found by an operator: `[[memebr]]` gave "duplicate key" at a later line.
    let tree = Tree::example();
    let text = tree.read(MEMBERS_FILE);
    let line = line_of(&text, "label = \"node4\"") - 1;
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == line {
                "[[memebr]]".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(
        text.lines()
            .nth(line - 1)
            .is_some_and(|l| l.trim() == "[[member]]")
    );
    tree.write(MEMBERS_FILE, &(lines.join("\n") + "\n"));
    for config_first in [false, true] {
        let mut command = Command::new(binary());
        if config_first {
            command.arg("--config").arg(tree.config_path()).arg("check");
        } else {
            command.arg("check").arg("--config").arg(tree.config_path());
        }
        let output = command.output().expect("run check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(65), "{stderr}");
        let wanted = format!(
            "consortium.example.members.toml:{line}: unknown table [[memebr]]: did you mean [[member]]?"
        );
        assert!(stderr.contains(&wanted), "want {wanted:?} in:\n{stderr}");
    }
    // A serve option before another command is refused, not silently ignored.
    let output = Command::new(binary())
        .args(["--listen", "127.0.0.1:5399", "check"])
        .output()
        .expect("run check");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--listen is an option of `serve`, not of `check`"),
        "{output:?}"
    );
}

/// The example zone file is a plain RFC 1035 master file that BIND's checker accepts (member
/// CNAMEs live in the members file, so they are not part of this check). Debian 12's knot
/// package ships no kzonecheck, so BIND's tool is the judge here.
#[test]
fn example_zone_passes_named_checkzone() {
    let zone = crate::common::repo_root().join("zones/consortium.example.zone");
    let output = Command::new("named-checkzone")
        .arg("consortium.example")
        .arg(&zone)
        .output()
        .unwrap_or_else(|e| panic!("cannot run named-checkzone ({e}); tests/run.sh installs bind9-utils"));
    assert!(
        output.status.success(),
        "named-checkzone rejected the example zone:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
