//! Protocol details checked on the wire: Extended DNS Errors and the NOTIMP header.
//!
//! - Extended DNS Errors (RFC 8914), as NSD 4.6 sends them, and only to a query with OPT: a
//!   name in no zone of ours is REFUSED with 20 (Not Authoritative), a zone transfer that
//!   allow-transfer refuses with 18 (Prohibited), a class we do not serve with 21 (Not
//!   Supported).
//! - An opcode we do not implement gets NOTIMP with the ID and opcode echoed and every other
//!   header flag clear, RD and CD included.
//!
//! Responses are read here byte by byte (RFC 1035 §4.1, RFC 6891 §6.1.2), independently of
//! `src/wire`, and parsed by hickory-proto as a check that they are well formed.

use std::net::SocketAddr;

use hickory_proto::op::Message;

use crate::common::{raw_header, raw_name, start_example, tcp_raw, udp_raw};

const RD: u16 = 0x0100;
const AD: u16 = 0x0020;
const CD: u16 = 0x0010;
const CLASS_IN: u16 = 1;
const CLASS_CH: u16 = 3;
const CLASS_HS: u16 = 4;
const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const TYPE_AXFR: u16 = 252;
const REFUSED: u16 = 5;
const NOTIMP: u16 = 4;
const NOTAUTH: u16 = 9;

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// A query with one question and, when `edns`, an OPT record (1232 octets, no options).
fn raw_query(id: u16, flags: u16, qname: &str, qtype: u16, qclass: u16, edns: bool) -> Vec<u8> {
    let mut packet = raw_header(id, flags, [1, 0, 0, u16::from(edns)]);
    packet.extend_from_slice(&raw_name(qname));
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&qclass.to_be_bytes());
    if edns {
        packet.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    packet
}

/// Offset just past the (possibly compressed) name at `pos`.
fn skip_name(message: &[u8], mut pos: usize) -> usize {
    loop {
        let len = message[pos];
        if len == 0 {
            return pos + 1;
        }
        if len & 0xC0 == 0xC0 {
            return pos + 2;
        }
        pos += usize::from(len) + 1;
    }
}

/// The EDNS options of the response's OPT record as (code, data), or `None` without OPT.
/// Fails when the message does not walk cleanly or has more than one OPT.
fn opt_options(message: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
    Message::from_vec(message).unwrap_or_else(|e| panic!("response does not parse: {e}"));
    let mut pos = 12;
    for _ in 0..be16(message, 4) {
        pos = skip_name(message, pos) + 4;
    }
    let records = usize::from(be16(message, 6)) + usize::from(be16(message, 8));
    let additional = usize::from(be16(message, 10));
    let mut found = None;
    for index in 0..records + additional {
        let owner = pos;
        pos = skip_name(message, pos);
        let rtype = be16(message, pos);
        let rdlen = usize::from(be16(message, pos + 8));
        let rdata = &message[pos + 10..pos + 10 + rdlen];
        pos += 10 + rdlen;
        if rtype == 41 {
            assert!(index >= records, "OPT outside the additional section");
            assert_eq!(pos - rdlen - 10 - owner, 1, "OPT owned by the root");
            assert!(found.is_none(), "two OPT records");
            let mut options = Vec::new();
            let mut o = 0;
            while o < rdata.len() {
                let code = be16(rdata, o);
                let len = usize::from(be16(rdata, o + 2));
                options.push((code, rdata[o + 4..o + 4 + len].to_vec()));
                o += 4 + len;
            }
            assert_eq!(o, rdata.len(), "options fill the RDATA exactly");
            found = Some(options);
        }
    }
    assert_eq!(pos, message.len(), "nothing after the last record");
    found
}

/// The INFO-CODEs of the Extended DNS Errors (option 15) in the response's OPT record.
fn ede_codes(message: &[u8]) -> Vec<u16> {
    let options = opt_options(message).expect("an OPT record in the answer to a query with OPT");
    options
        .iter()
        .filter(|(code, _)| *code == 15)
        .map(|(_, data)| {
            assert!(data.len() >= 2, "EDE option without INFO-CODE: {data:?}");
            be16(data, 0)
        })
        .collect()
}

fn rcode(message: &[u8]) -> u16 {
    be16(message, 2) & 0x000f
}

async fn udp(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    udp_raw(addr, packet).await.expect("a UDP answer")
}

async fn tcp(addr: SocketAddr, packet: &[u8]) -> Vec<u8> {
    tcp_raw(addr, &[packet.to_vec()], 1).await.remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn name_in_no_zone_is_refused_with_ede_20_only_when_the_query_has_opt() {
    let (_tree, server) = start_example().await;
    let addr = server.dns_addrs[0];
    for qname in ["example.com.", "other.org.", "example.", "."] {
        let query = raw_query(0x2020, RD, qname, TYPE_A, CLASS_IN, true);
        for (transport, answer) in [("udp", udp(addr, &query).await), ("tcp", tcp(addr, &query).await)] {
            assert_eq!(rcode(&answer), REFUSED, "{qname} over {transport}");
            assert_eq!(
                ede_codes(&answer),
                [20],
                "{qname} over {transport}: Not Authoritative"
            );
        }
        let plain = raw_query(0x2021, RD, qname, TYPE_A, CLASS_IN, false);
        let answer = udp(addr, &plain).await;
        assert_eq!(rcode(&answer), REFUSED, "{qname} without OPT");
        assert_eq!(be16(&answer, 10), 0, "{qname}: no additional record");
        assert_eq!(
            opt_options(&answer),
            None,
            "{qname}: no OPT without one in the query"
        );
    }
    // Names of our zone get no EDE: an answer, NXDOMAIN.
    for qname in ["ns1.consortium.example.", "nope.consortium.example."] {
        let answer = udp(addr, &raw_query(0x2022, 0, qname, TYPE_A, CLASS_IN, true)).await;
        assert_eq!(ede_codes(&answer), Vec::<u16>::new(), "{qname}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_zone_transfer_carries_ede_18() {
    // The example config has no allow-transfer: every AXFR is refused.
    let (_tree, server) = start_example().await;
    let addr = server.dns_addrs[0];
    let query = raw_query(0x1818, 0, "consortium.example.", TYPE_AXFR, CLASS_IN, true);
    let answer = tcp(addr, &query).await;
    assert_eq!(be16(&answer, 0), 0x1818);
    assert_eq!(rcode(&answer), REFUSED);
    assert_eq!(ede_codes(&answer), [18], "Prohibited");
    assert_eq!(be16(&answer, 4), 1, "the question is echoed");

    let plain = raw_query(0x1819, 0, "consortium.example.", TYPE_AXFR, CLASS_IN, false);
    let answer = tcp(addr, &plain).await;
    assert_eq!(rcode(&answer), REFUSED);
    assert_eq!(opt_options(&answer), None, "no OPT without one in the request");

    // A zone we do not serve: NOTAUTH (RFC 5936 §2.2.1), OPT echoed, no EDE (as NSD).
    let other = raw_query(0x181A, 0, "other.org.", TYPE_AXFR, CLASS_IN, true);
    let answer = tcp(addr, &other).await;
    assert_eq!(rcode(&answer), NOTAUTH);
    assert_eq!(ede_codes(&answer), Vec::<u16>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_class_carries_ede_21() {
    let (_tree, server) = start_example().await;
    let addr = server.dns_addrs[0];
    let cases = [
        ("www.consortium.example.", TYPE_A, CLASS_HS),
        ("www.consortium.example.", TYPE_A, 254), // NONE
        ("www.consortium.example.", TYPE_A, 255), // ANY
        ("no.such.chaos.name.", TYPE_TXT, CLASS_CH),
    ];
    for (qname, qtype, qclass) in cases {
        let query = raw_query(0x2121, 0, qname, qtype, qclass, true);
        let answer = udp(addr, &query).await;
        assert_eq!(rcode(&answer), REFUSED, "{qname} class {qclass}");
        assert_eq!(ede_codes(&answer), [21], "{qname} class {qclass}: Not Supported");
        let plain = raw_query(0x2122, 0, qname, qtype, qclass, false);
        let answer = udp(addr, &plain).await;
        assert_eq!(opt_options(&answer), None, "{qname} class {qclass} without OPT");
    }
    // A transfer in a class we do not serve, too.
    let query = raw_query(0x2123, 0, "consortium.example.", TYPE_AXFR, CLASS_HS, true);
    let answer = tcp(addr, &query).await;
    assert_eq!(rcode(&answer), REFUSED);
    assert_eq!(ede_codes(&answer), [21]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_opcodes_get_notimp_with_every_other_flag_clear() {
    let (_tree, server) = start_example().await;
    let addr = server.dns_addrs[0];
    // 3 is unassigned, 6 is DSO (RFC 8490), not offered here.
    for opcode in [3u16, 6] {
        for edns in [false, true] {
            let id = 0x3000 | (opcode << 4) | u16::from(edns);
            let flags = (opcode << 11) | RD | AD | CD;
            let query = raw_query(id, flags, "www.consortium.example.", TYPE_A, CLASS_IN, edns);
            for (transport, answer) in [("udp", udp(addr, &query).await), ("tcp", tcp(addr, &query).await)] {
                let what = format!("opcode {opcode}, EDNS {edns}, {transport}");
                let flags = be16(&answer, 2);
                assert_eq!(be16(&answer, 0), id, "{what}: ID");
                assert_eq!(flags & 0x8000, 0x8000, "{what}: QR");
                assert_eq!((flags >> 11) & 0x0f, opcode, "{what}: opcode");
                assert_eq!(flags & 0x000f, NOTIMP, "{what}: rcode");
                // AA, TC, RD, RA, Z, AD, CD.
                assert_eq!(flags & 0x07f0, 0, "{what}: flags {flags:#06x}");
            }
        }
    }
}
