//! The request path: query bytes in, response bytes out, against one Snapshot.
//!
//! Pure and transport-free: UDP, TCP and the benchmarks call `answer`. It parses only the
//! header, the question and the additional section (for EDNS), lowercases the name into a
//! stack buffer, does O(1) hash lookups (one per label for names that do not exist), and copies
//! pre-encoded record tails behind compression pointers into the question. It never panics on
//! input and, once `out` has grown to its working size, never allocates (a TSIG-signed query,
//! verified and answered signed, is the exception).

use std::net::IpAddr;

use rand::Rng;

use crate::geo::{ClientPlace, GeoDb};
use crate::pick::PickTable;
use crate::snapshot::{Node, Pool, RRset, Snapshot, Zone};
use crate::tsig::{self, Signer, Verified};
use crate::wire::{
    self, AA, CLASSIC_UDP_LIMIT, ClientSubnet, ECHOED_FLAGS, Ede, Edns, HEADER_LEN, OPCODE_QUERY, OptReply,
    QR, Question, TC, be16, parse_additional, parse_question, rtype,
};
pub use crate::wire::{Rcode, Transport};
use crate::zone::members::PickPolicy;

/// The response codes under their old names here (benches and tests import them).
pub const NOERROR: Rcode = Rcode::NOERROR;
pub const FORMERR: Rcode = Rcode::FORMERR;
pub const SERVFAIL: Rcode = Rcode::SERVFAIL;
pub const NXDOMAIN: Rcode = Rcode::NXDOMAIN;
pub const NOTIMP: Rcode = Rcode::NOTIMP;
pub const REFUSED: Rcode = Rcode::REFUSED;
pub const NOTAUTH: Rcode = Rcode::NOTAUTH;
pub const BADVERS: Rcode = Rcode::BADVERS;

/// CNAMEs followed inside a zone after the first one.
const MAX_CHAIN: usize = 8;

/// What happened to one query, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No response is sent (too short to answer, or itself a response).
    Dropped,
    Responded {
        /// The full (extended) response code.
        rcode: Rcode,
        qtype: u16,
        truncated: bool,
        /// The pool pick made for this answer: (zone, pool, member slot in the pool).
        pick: Option<(u32, u32, u32)>,
    },
}

enum Owner<'a> {
    /// A compression pointer to an earlier name in the message.
    Pointer(usize),
    /// The name written out.
    Name(&'a [u8]),
}

/// Answers one query. `out` is cleared and receives the response (unless `Dropped`).
/// `max_udp_payload` is the server's ceiling for UDP answers.
pub fn answer<R: Rng + ?Sized>(
    snapshot: &Snapshot,
    query: &[u8],
    out: &mut Vec<u8>,
    transport: Transport,
    max_udp_payload: u16,
    rng: &mut R,
) -> Outcome {
    let unknown = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    answer_from(snapshot, query, out, transport, max_udp_payload, unknown, rng)
}

/// `answer`, for a query from `client` (where the geographic pools look the client up when
/// the query carries no client subnet).
pub fn answer_from<R: Rng + ?Sized>(
    snapshot: &Snapshot,
    query: &[u8],
    out: &mut Vec<u8>,
    transport: Transport,
    max_udp_payload: u16,
    client: IpAddr,
    rng: &mut R,
) -> Outcome {
    out.clear();
    if query.len() < HEADER_LEN {
        return Outcome::Dropped;
    }
    let flags = be16(query, 2);
    if flags & QR != 0 {
        // Never answer a response: that is how reflection loops start.
        return Outcome::Dropped;
    }
    let qdcount = be16(query, 4);
    let question = if qdcount == 1 { parse_question(query) } else { None };

    // Only QUERY is implemented on this path (RFC 1035 §4.1.1): NOTIFY (we are a primary, we
    // send them), UPDATE and the rest get NOTIMP.
    if wire::opcode(flags) != OPCODE_QUERY {
        // RFC 6891 §6.1.1: a request with OPT gets OPT back, errors included; look for it when
        // the message is laid out like a query (UPDATE puts records before it).
        let edns = question
            .filter(|_| be16(query, 6) == 0 && be16(query, 8) == 0)
            .and_then(|q| parse_additional(query, q.end, be16(query, 10)).ok())
            .and_then(|additional| additional.edns);
        return error_response(query, out, question, edns, NOTIMP);
    }
    let Some(question) = question else {
        return error_response(query, out, None, None, FORMERR);
    };
    // A query carries no answer or authority records (RFC 1035 §4.1.1 / §7.3).
    if be16(query, 6) != 0 || be16(query, 8) != 0 {
        return error_response(query, out, Some(question), None, FORMERR);
    }
    let additional = match parse_additional(query, question.end, be16(query, 10)) {
        Ok(additional) => additional,
        // RFC 6891 §7: a FORMERR about the OPT itself still carries an OPT, so the client can
        // tell it from a server without EDNS.
        Err(seen) => return error_response(query, out, Some(question), seen, FORMERR),
    };
    let edns = additional.edns;
    if let Some(e) = edns {
        // RFC 6891 §6.1.3: a version we do not implement gets BADVERS, with our version (0).
        if e.version > 0 {
            return error_response(query, out, Some(question), Some(e), BADVERS);
        }
    }
    if question.qtype == rtype::OPT {
        return error_response(query, out, Some(question), edns, FORMERR);
    }

    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match edns {
            // RFC 6891 §6.2.5: values below 512 are treated as 512.
            Some(e) => usize::from(e.udp_size.min(max_udp_payload)).max(CLASSIC_UDP_LIMIT),
            None => CLASSIC_UDP_LIMIT,
        },
    };
    let signer = match additional.signed {
        false => None,
        true => match check_signature(snapshot, query, out, question, edns, limit) {
            Ok(signer) => Some(signer),
            Err(rejected) => return rejected,
        },
    };

    let mut response = Response::start(query, out, &question);
    response.dnssec = edns.is_some_and(|e| e.dnssec_ok);
    response.client = client;
    response.client_subnet = edns.and_then(|e| e.client_subnet);
    let pick = match question.qclass {
        rtype::CLASS_IN => resolve(snapshot, query, &question, &mut response, rng),
        rtype::CLASS_CH => {
            chaos(snapshot, query, &question, &mut response);
            None
        }
        _ => {
            // A class we do not serve (HS, NONE, ANY...): as NSD, Not Supported (RFC 8914 §4.22).
            response.refuse(Ede::NOT_SUPPORTED);
            None
        }
    };
    // A signed answer keeps room for its signature within the client's limit (RFC 8945 §5.3).
    let limit = limit.saturating_sub(signer.as_ref().map_or(0, Signer::record_len));
    let truncated = response.finish(limit, edns, max_udp_payload);
    let rcode = response.rcode;
    if let Some(mut signer) = signer {
        signer.sign(out, 0, &[]);
    }
    Outcome::Responded {
        rcode,
        qtype: question.qtype,
        truncated,
        pick,
    }
}

/// Verifies a signed request (RFC 8945 §5.2) against the configured keys. A rejected one gets
/// NOTAUTH with the TSIG error, written into `out` and returned as the `Err` outcome.
fn check_signature<'s>(
    snapshot: &'s Snapshot,
    query: &[u8],
    out: &mut Vec<u8>,
    question: Question,
    edns: Option<Edns>,
    limit: usize,
) -> Result<Signer<'s>, Outcome> {
    match tsig::find(query, question.end) {
        Ok(Some(record)) => match tsig::verify(query, record, &snapshot.tsig_keys, wire::unix_now()) {
            Verified::Valid { key, request_mac, .. } => Ok(Signer::new(key, request_mac)),
            Verified::Rejected { error, key, record } => {
                let outcome = error_response(query, out, Some(question), edns, NOTAUTH);
                let unsigned_len = out.len();
                tsig::append_rejection(out, error, key, &record);
                if out.len() <= limit {
                    return Err(outcome);
                }
                // The TSIG echoes the request's key and algorithm names in full (a compressed
                // query can make them far longer than it is): past the client's UDP size the
                // refusal goes out without it and truncated, for a retry over TCP.
                out.truncate(unsigned_len);
                out[10..12].copy_from_slice(&u16::from(edns.is_some()).to_be_bytes());
                out[2] |= (TC >> 8) as u8;
                Err(Outcome::Responded {
                    rcode: NOTAUTH,
                    qtype: question.qtype,
                    truncated: true,
                    pick: None,
                })
            }
        },
        // A TSIG that is not the last record, or cannot be read (RFC 8945 §5.1).
        Ok(None) | Err(tsig::Malformed) => Err(error_response(query, out, Some(question), edns, FORMERR)),
    }
}

/// A response being written: header placeholder, question, then sections in order.
struct Response<'o> {
    out: &'o mut Vec<u8>,
    id: [u8; 2],
    request_flags: u16,
    qname_len: usize,
    aa: bool,
    rcode: Rcode,
    /// The Extended DNS Error of a refusal (RFC 8914), sent when the query had OPT.
    ede: Option<Ede>,
    answers: u16,
    authority: u16,
    additional: u16,
    /// Offset where the additional section starts; `usize::MAX` until `begin_additional`, so
    /// that an oversized answer with no additional section is cut down to the question.
    additional_start: usize,
    /// (offset, count) after each additional RRset, for a clean cut.
    additional_marks: [(usize, u16); 16],
    marks: usize,
    /// A referral whose glue is required (RFC 9471): losing it sets TC.
    glue_required: bool,
    /// The query set DO (RFC 3225): signed zones add their RRSIGs and denial proofs.
    dnssec: bool,
    /// Denial records to add to the authority section, without repeats: (zone, node owning
    /// the NSEC) pairs, or in a zone signed with NSEC3 (zone, index into its NSEC3 table).
    proofs: [(u32, u32); 4],
    proof_count: usize,
    /// Who asked: the source address, and the query's client subnet (RFC 7871).
    client: IpAddr,
    client_subnet: Option<ClientSubnet>,
    /// The ECS SCOPE PREFIX-LENGTH of the answer: 0 unless a geographic pool used the
    /// client's address.
    client_scope: u8,
}

impl<'o> Response<'o> {
    fn start(query: &[u8], out: &'o mut Vec<u8>, question: &Question) -> Response<'o> {
        out.extend_from_slice(&[0; HEADER_LEN]);
        // The question is echoed byte for byte, letter case included.
        out.extend_from_slice(question.bytes(query));
        Response {
            out,
            // `answer` returned early for anything shorter than a header.
            id: [query[0], query[1]],
            request_flags: be16(query, 2),
            qname_len: question.qname_len,
            aa: false,
            rcode: NOERROR,
            ede: None,
            answers: 0,
            authority: 0,
            additional: 0,
            additional_start: usize::MAX,
            additional_marks: [(0, 0); 16],
            marks: 0,
            glue_required: false,
            dnssec: false,
            proofs: [(0, 0); 4],
            proof_count: 0,
            client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            client_subnet: None,
            client_scope: 0,
        }
    }

    /// Where the client is, for a geographic pool: the query's client subnet, else the
    /// source address. A source prefix of 0 asks that no address be used (RFC 7871 §7.1.2):
    /// then nowhere. Records the scope the answer then depends on.
    fn client_place(&mut self, geo: Option<&GeoDb>) -> Option<ClientPlace> {
        let geo = geo?;
        let (address, source) = match self.client_subnet {
            Some(subnet) if subnet.source_prefix == 0 => return None,
            Some(subnet) => (subnet.ip(), subnet.source_prefix),
            None => (self.client, u8::MAX),
        };
        let place = geo.locate(address)?;
        self.client_scope = place.prefix.min(source);
        Some(place)
    }

    /// Adds the NSEC owned by node `node` of zone `z` to the denial proofs (RFC 4035
    /// §3.1.3), once.
    fn prove(&mut self, z: u32, node: Option<u32>) {
        let Some(node) = node.filter(|_| self.dnssec) else {
            return;
        };
        if self.proofs[..self.proof_count].contains(&(z, node)) || self.proof_count == self.proofs.len() {
            return;
        }
        self.proofs[self.proof_count] = (z, node);
        self.proof_count += 1;
    }

    /// The NODATA proof at node `n` (RFC 4035 §3.1.3.1): the name's own NSEC, or for an
    /// empty non-terminal (which owns none) the NSEC that covers `key`. With NSEC3 the record
    /// that matches the name (RFC 5155 §7.2.3; empty non-terminals own one too), and for a
    /// wildcard's NODATA also the one that matches the closest encloser (§7.2.5: the
    /// wildcard branch proved the next closer name absent).
    fn prove_no_data(&mut self, (z, zone, node, n): (u32, &Zone, &Node, u32), key: &[u8]) {
        if !self.dnssec {
            return;
        }
        if zone.nsec3_table().is_some() {
            let name = zone.node_name(n);
            self.prove(z, zone.nsec3_matching(name));
            if let Some(encloser) = name.strip_prefix(b"\x01*")
                && !key.eq_ignore_ascii_case(name)
            {
                self.prove(z, zone.nsec3_matching(encloser));
            }
            return;
        }
        let own = rrset_of(zone, node, rtype::NSEC).map(|_| n);
        self.prove(z, own.or_else(|| zone.covering_nsec(key)));
    }

    /// The NXDOMAIN proof for `key`, whose closest encloser starts at `encloser_at`: the
    /// name does not exist, nor the wildcard that could have stood for it (RFC 4035
    /// §3.1.3.2). With NSEC3 the closest encloser proof (the encloser's own record, one
    /// covering the next closer name) and one covering the wildcard (RFC 5155 §7.2.2).
    fn prove_name_error(&mut self, z: u32, zone: &Zone, key: &[u8], encloser_at: usize) {
        if !self.dnssec {
            return;
        }
        let encloser = &key[encloser_at..];
        let mut wildcard = [0u8; wire::MAX_NAME_LEN + 2];
        wildcard[..2].copy_from_slice(b"\x01*");
        wildcard[2..2 + encloser.len()].copy_from_slice(encloser);
        let wildcard = &wildcard[..2 + encloser.len()];
        if zone.nsec3_table().is_some() {
            self.prove(z, zone.nsec3_matching(encloser));
            self.prove(z, zone.nsec3_covering(next_closer(key, encloser_at)));
            self.prove(z, zone.nsec3_covering(wildcard));
        } else {
            self.prove(z, zone.covering_nsec(key));
            self.prove(z, zone.covering_nsec(wildcard));
        }
    }

    /// The proof that a wildcard answer for `key` was right: the name itself does not exist
    /// (RFC 4035 §3.1.3.3), or with NSEC3 that the next closer name does not (RFC 5155
    /// §7.2.6; the RRSIG labels field tells the closest encloser). `wildcard` is the name of
    /// the wildcard node.
    fn prove_wildcard_expansion(&mut self, z: u32, zone: &Zone, key: &[u8], wildcard: &[u8]) {
        if !self.dnssec {
            return;
        }
        if zone.nsec3_table().is_some() {
            let encloser_at = key.len().saturating_sub(wildcard.len().saturating_sub(2));
            self.prove(z, zone.nsec3_covering(next_closer(key, encloser_at)));
        } else {
            self.prove(z, zone.covering_nsec(key));
        }
    }

    /// Writes the denial proofs into the authority section: each NSEC or NSEC3 and its
    /// RRSIGs.
    fn write_proofs(&mut self, snapshot: &Snapshot) {
        for i in 0..std::mem::take(&mut self.proof_count) {
            let (z, n) = self.proofs[i];
            let Some(zone) = snapshot.zones.get(z as usize) else {
                continue;
            };
            if zone.nsec3_table().is_some() {
                if let Some((owner, nsec3)) = zone.nsec3_record(n) {
                    self.authority_rrset(&Owner::Name(owner), zone, nsec3);
                }
                continue;
            }
            let Some(nsec) = zone.node(n).and_then(|node| rrset_of(zone, node, rtype::NSEC)) else {
                continue;
            };
            self.authority_rrset(&Owner::Name(zone.node_name(n)), zone, nsec);
        }
    }

    /// Writes an RRset and, to a DO query, its RRSIGs into the authority section.
    fn authority_rrset(&mut self, owner: &Owner<'_>, zone: &Zone, rrset: &RRset) {
        self.put_records(owner, rrset.count, zone.tails(rrset));
        self.authority = self.authority.saturating_add(rrset.count);
        if self.dnssec {
            self.put_records(owner, rrset.sig_count, zone.sigs(rrset));
            self.authority = self.authority.saturating_add(rrset.sig_count);
        }
    }

    /// Refuses the query (RFC 1035 §4.1.1), saying why in an Extended DNS Error.
    fn refuse(&mut self, ede: Ede) {
        self.rcode = REFUSED;
        self.ede = Some(ede);
    }

    fn put_owner(&mut self, owner: &Owner<'_>) {
        match owner {
            Owner::Pointer(at) => {
                let at = *at as u16;
                self.out.extend_from_slice(&(0xC000 | at).to_be_bytes());
            }
            Owner::Name(wire) => self.out.extend_from_slice(wire),
        }
    }

    /// Writes `count` record tails under `owner`; returns the offset of the first RDATA.
    fn put_records(&mut self, owner: &Owner<'_>, count: u16, tails: &[u8]) -> usize {
        let mut pos = 0;
        let mut first_rdata = 0;
        for i in 0..count {
            self.put_owner(owner);
            let rdlen = usize::from(be16(tails, pos + 8));
            let end = (pos + 10 + rdlen).min(tails.len());
            if i == 0 {
                first_rdata = self.out.len() + 10;
            }
            self.out.extend_from_slice(&tails[pos..end]);
            pos = end;
        }
        first_rdata
    }

    /// Writes one CNAME record under `owner`; returns the offset of its RDATA.
    fn put_cname(&mut self, owner: &Owner<'_>, ttl: u32, target: &[u8]) -> usize {
        self.put_owner(owner);
        self.out.extend_from_slice(&rtype::CNAME.to_be_bytes());
        self.out.extend_from_slice(&rtype::CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        self.out.extend_from_slice(&(target.len() as u16).to_be_bytes());
        let rdata_at = self.out.len();
        self.out.extend_from_slice(target);
        rdata_at
    }

    fn answer_rrset(&mut self, owner: &Owner<'_>, zone: &Zone, rrset: &RRset) -> usize {
        // Saturating: counts never wrap (debug builds would panic); a response that large is
        // cut down by `finish` anyway.
        self.answers = self.answers.saturating_add(rrset.count);
        let first_rdata = self.put_records(owner, rrset.count, zone.tails(rrset));
        // RFC 4035 §3.1.1: a signed RRset goes with its RRSIGs.
        self.answer_sigs(owner, rrset.sig_count, zone.sigs(rrset));
        first_rdata
    }

    /// RRSIG tails into the answer section, to a DO query.
    fn answer_sigs(&mut self, owner: &Owner<'_>, count: u16, tails: &[u8]) {
        if self.dnssec {
            self.put_records(owner, count, tails);
            self.answers = self.answers.saturating_add(count);
        }
    }

    /// Pointer to the suffix of the question name that is `name_len` octets long.
    fn question_suffix(&self, name_len: usize) -> Owner<'static> {
        Owner::Pointer(HEADER_LEN + self.qname_len - name_len)
    }

    fn negative_soa(&mut self, zone: &Zone) {
        let owner = self.question_suffix(zone.origin.wire().len());
        self.put_records(&owner, 1, &zone.negative_soa);
        self.authority += 1;
        if let Some(dnssec) = zone.dnssec.as_ref().filter(|_| self.dnssec) {
            self.put_records(&owner, dnssec.negative_soa_sig_count, &dnssec.negative_soa_sigs);
            self.authority += dnssec.negative_soa_sig_count;
        }
    }

    fn begin_additional(&mut self) {
        self.additional_start = self.out.len();
    }

    fn additional_for(&mut self, zone: &Zone, rrset: &RRset) {
        for extra in zone.additional(rrset) {
            let (owner, tails) = zone.additional_parts(extra);
            self.put_records(&Owner::Name(owner), extra.count, tails);
            // Thousands of glue RRsets can add up past 65535 records; `finish` keeps at most
            // 64 KiB of them, far fewer, so the saturated value is never sent.
            self.additional = self.additional.saturating_add(extra.count);
            // RFC 4035 §3.1.1: with its RRSIGs, which may be dropped with it (never TC).
            if self.dnssec && extra.sig_count > 0 {
                self.put_records(&Owner::Name(owner), extra.sig_count, zone.additional_sigs(extra));
                self.additional = self.additional.saturating_add(extra.sig_count);
            }
            if self.marks < self.additional_marks.len() {
                self.additional_marks[self.marks] = (self.out.len(), self.additional);
                self.marks += 1;
            }
        }
    }

    /// Applies the size limit, appends OPT, writes the header. Returns whether TC was set.
    /// `advertised` is our own UDP payload size, sent in the OPT record.
    fn finish(&mut self, limit: usize, edns: Option<Edns>, advertised: u16) -> bool {
        // RFC 6891 §6.1.2/§6.1.3: our payload size, extended rcode, version 0, DO copied; the
        // EDE (6 octets more) only to a query with OPT, as it is an EDNS option.
        let opt = edns.map(|e| OptReply {
            udp_size: advertised.max(CLASSIC_UDP_LIMIT as u16),
            dnssec_ok: e.dnssec_ok,
            ede: self.ede,
            // RFC 7871 §7.2.1: echoed only when the query carried it; the scope never longer
            // than the source prefix.
            client_subnet: e
                .client_subnet
                .map(|s| (s, self.client_scope.min(s.source_prefix))),
        });
        let budget = limit.saturating_sub(opt.as_ref().map_or(0, OptReply::record_len));
        let mut truncated = false;
        if self.out.len() > budget {
            truncated = true;
            if self.additional_start <= budget {
                // Keep whole additional RRsets that fit; drop the rest. Only required glue
                // makes the loss visible as TC (RFC 9471 §3).
                let keep = self.additional_marks[..self.marks]
                    .iter()
                    .rev()
                    .find(|(end, _)| *end <= budget)
                    .copied()
                    .unwrap_or((self.additional_start, 0));
                self.out.truncate(keep.0);
                self.additional = keep.1;
                truncated = self.glue_required;
            } else {
                // RFC 2181 §9: the answer does not fit; send the question with TC set.
                self.out.truncate(HEADER_LEN + self.qname_len + 4);
                self.answers = 0;
                self.authority = 0;
                self.additional = 0;
            }
        }
        let mut additional = self.additional;
        if let Some(opt) = &opt {
            wire::put_opt(self.out, opt, self.rcode);
            additional += 1;
        }
        // ID, opcode QUERY, RD and CD echoed (RFC 1035 §4.1.1, RFC 4035 §3.2.2).
        let mut flags = QR | (self.request_flags & ECHOED_FLAGS) | self.rcode.header_bits();
        if self.aa {
            flags |= AA;
        }
        if truncated {
            flags |= TC;
        }
        let header = &mut self.out[..HEADER_LEN];
        header[0..2].copy_from_slice(&self.id);
        header[2..4].copy_from_slice(&flags.to_be_bytes());
        header[4..6].copy_from_slice(&1u16.to_be_bytes());
        header[6..8].copy_from_slice(&self.answers.to_be_bytes());
        header[8..10].copy_from_slice(&self.authority.to_be_bytes());
        header[10..12].copy_from_slice(&additional.to_be_bytes());
        truncated
    }
}

/// A header-only (plus question when known) error answer, with OPT when the query had one.
fn error_response(
    query: &[u8],
    out: &mut Vec<u8>,
    question: Option<Question>,
    edns: Option<Edns>,
    rcode: Rcode,
) -> Outcome {
    // RD and CD are echoed so the client can match the answer, except to an opcode we do not
    // implement: the header flags are defined for QUERY (RFC 1035 §4.1.1) and other opcodes
    // give them other meanings or none (RFC 2136 §2.2: UPDATE's are a zero Z field; RFC 8490:
    // DSO), so that answer echoes only ID and opcode.
    let echoed = if rcode == NOTIMP { 0 } else { ECHOED_FLAGS };
    let opt = edns.map(|e| OptReply {
        udp_size: CLASSIC_UDP_LIMIT as u16,
        dnssec_ok: e.dnssec_ok,
        ede: None,
        client_subnet: e.client_subnet.map(|s| (s, 0)),
    });
    wire::error_reply(query, out, question.as_ref(), rcode, echoed, opt.as_ref());
    Outcome::Responded {
        rcode,
        qtype: question.map_or(0, |q| q.qtype),
        truncated: false,
        pick: None,
    }
}

/// Where a name leads inside the snapshot.
enum Found<'s> {
    /// The name exists, or the wildcard of its closest encloser stands for it (RFC 4592 §3.3.1):
    /// zone index, zone, node index, node, and whether the wildcard answers.
    Node(u32, &'s Zone, u32, &'s Node, bool),
    /// The name is at or below a delegation: refer to the cut (its node index).
    Referral(u32, &'s Zone, u32),
    /// The name does not exist in zone `.0`; its closest encloser is the suffix of the name
    /// from offset `.1`.
    NxDomain(u32, usize),
    /// No zone served here encloses the name.
    NotOurs,
}

/// Finds `key` (a lowercased wire name).
fn find<'s>(snapshot: &'s Snapshot, key: &[u8], qtype: u16) -> Found<'s> {
    if let Some((z, zone, n, node)) = snapshot.lookup(key) {
        if let Some(cut) = node.cut() {
            // RFC 4035 §3.1.4.1: DS at the cut is the parent's data.
            if !(qtype == rtype::DS && cut == n) {
                return Found::Referral(z, zone, cut);
            }
        }
        return Found::Node(z, zone, n, node, false);
    }
    // The closest encloser: the longest existing ancestor.
    let mut pos = 0;
    loop {
        let len = usize::from(key.get(pos).copied().unwrap_or(0));
        if len == 0 {
            return Found::NotOurs;
        }
        pos += len + 1;
        let Some(suffix) = key.get(pos..) else {
            return Found::NotOurs;
        };
        if let Some((z, zone, _, node)) = snapshot.lookup(suffix) {
            if let Some(cut) = node.cut() {
                return Found::Referral(z, zone, cut);
            }
            return match node.wildcard().and_then(|w| Some((w, zone.node(w)?))) {
                Some((w, wildcard)) => Found::Node(z, zone, w, wildcard, true),
                None => Found::NxDomain(z, pos),
            };
        }
    }
}

/// The next closer name of `key` (RFC 5155 §1.3): the ancestor one label longer than its
/// closest encloser, which starts at `encloser_at`.
fn next_closer(key: &[u8], encloser_at: usize) -> &[u8] {
    let mut at = 0;
    loop {
        let next = at + 1 + usize::from(key.get(at).copied().unwrap_or(0));
        if next >= encloser_at || next >= key.len() {
            return key.get(at..).unwrap_or_default();
        }
        at = next;
    }
}

fn rrset_of<'z>(zone: &'z Zone, node: &Node, rtype: u16) -> Option<&'z RRset> {
    zone.rrsets(node).iter().find(|r| r.rtype == rtype)
}

/// Answers class IN. Returns the pool pick, if one was made.
fn resolve<R: Rng + ?Sized>(
    snapshot: &Snapshot,
    query: &[u8],
    question: &Question,
    response: &mut Response<'_>,
    rng: &mut R,
) -> Option<(u32, u32, u32)> {
    let qtype = question.qtype;
    if qtype == rtype::AXFR || qtype == rtype::IXFR {
        // Zone transfers are answered by `transfer::respond`, over TCP only: the listeners
        // send them there. Over UDP, where AXFR is not defined (RFC 5936 §4.2) and IXFR is
        // not offered (RFC 1995 §2 allows it), they are refused as Not Supported (RFC 8914
        // §4.22).
        response.refuse(Ede::NOT_SUPPORTED);
        return None;
    }
    let mut key_buf = [0u8; wire::MAX_NAME_LEN];
    let qname = question.qname(query);
    let key = &mut key_buf[..qname.len()];
    for (k, c) in key.iter_mut().zip(qname) {
        *k = c.to_ascii_lowercase();
    }
    let mut pick = None;
    let mut current_key: &[u8] = key;
    let mut owner = Owner::Pointer(HEADER_LEN);
    let mut chain_zone: Option<u32> = None;
    for step in 0..=MAX_CHAIN {
        let found = find(snapshot, current_key, qtype);
        if leaves_chain_zone(chain_zone, &found) {
            // In-zone chains only: a target in another zone ends the chain here.
            break;
        }
        match found {
            Found::NotOurs => {
                if step == 0 && snapshot.is_unavailable(current_key) {
                    // A secondary zone with no current copy (RFC 1035 §3.3.13: past EXPIRE
                    // it is no longer authoritative data): SERVFAIL, as BIND and NSD answer.
                    response.rcode = Rcode::SERVFAIL;
                    response.ede = Some(Ede::NOT_READY);
                } else if step == 0 {
                    // RFC 1035 §4.1.1 (REFUSED) with Not Authoritative (RFC 8914 §4.21), as
                    // NSD answers. A chain leaving our zones just ends, its CNAMEs the answer.
                    response.refuse(Ede::NOT_AUTHORITATIVE);
                }
                break;
            }
            Found::NxDomain(z, encloser_at) => {
                response.aa = true;
                // RFC 6604 §3: the rcode describes the last name of the chain.
                response.rcode = NXDOMAIN;
                if let Some(zone) = snapshot.zones.get(z as usize) {
                    response.negative_soa(zone);
                    response.prove_name_error(z, zone, current_key, encloser_at);
                }
                break;
            }
            Found::Referral(_, zone, cut) => {
                response.write_proofs(snapshot);
                refer(response, zone, cut, step == 0);
                break;
            }
            Found::Node(z, zone, n, node, wildcard) => {
                response.aa = true;
                chain_zone = Some(z);
                if wildcard {
                    response.prove_wildcard_expansion(z, zone, current_key, zone.node_name(n));
                }
                let at = Place {
                    z,
                    zone,
                    n,
                    node,
                    key: current_key,
                };
                match answer_node(response, at, qtype, &owner, snapshot, rng, &mut pick) {
                    Next::Done => break,
                    Next::Follow { target, rdata_at } => {
                        current_key = target;
                        owner = if rdata_at < 0x4000 {
                            Owner::Pointer(rdata_at)
                        } else {
                            Owner::Name(target)
                        };
                    }
                }
            }
        }
    }
    response.write_proofs(snapshot);
    pick
}

/// A name being answered: its zone, its node (or the wildcard's), and its lookup key.
struct Place<'s, 'k> {
    z: u32,
    zone: &'s Zone,
    n: u32,
    node: &'s Node,
    key: &'k [u8],
}

/// The member a pool answers this query with: the weighted draw, within the client's nearest
/// or regional members for the geographic policies. A CAA query always gets the heaviest
/// eligible member, so that a CA checking CAA through the CNAME (RFC 8659 §3) sees one
/// operator's policy from one query to the next.
fn choose_member<R: Rng + ?Sized>(
    response: &mut Response<'_>,
    pool: &Pool,
    table: &PickTable,
    qtype: u16,
    geo: Option<&GeoDb>,
    rng: &mut R,
) -> Option<u32> {
    if qtype == rtype::CAA {
        return table.heaviest();
    }
    let policy = pool.def.policy;
    if !policy.is_geographic() || pool.places.is_empty() {
        return table.pick(rng);
    }
    let Some(place) = response.client_place(geo) else {
        return table.pick(rng);
    };
    let k = usize::from(pool.def.nearest_k);
    let chosen = match policy {
        PickPolicy::Region => {
            let regional = |slot: u32| {
                let region = pool.places.get(slot as usize).map_or(0, |p| p.1);
                region != 0 && (region == place.country || region == place.continent)
            };
            table
                .pick_among(rng, regional)
                .or_else(|| nearest(pool, table, &place, k, rng))
        }
        _ => nearest(pool, table, &place, k, rng),
    };
    chosen.or_else(|| table.pick(rng))
}

/// The weighted draw among the `k` candidates nearest the client (great-circle distance:
/// the largest dot products of unit vectors); None when the client or no candidate has a
/// location.
fn nearest<R: Rng + ?Sized>(
    pool: &Pool,
    table: &PickTable,
    place: &ClientPlace,
    k: usize,
    rng: &mut R,
) -> Option<u32> {
    let client = place.point?;
    let mut best = NearestK::new(k);
    if table.has_slot_weights() && !pool.by_latitude.is_empty() {
        nearest_by_latitude(pool, table, client, &mut best);
    } else {
        for (slot, weight) in table.candidates() {
            if let Some(&(point, _)) = pool.places.get(slot as usize) {
                best.offer(closeness(point, client), slot, weight);
            }
        }
    }
    best.draw(rng)
}

/// The cosine of the angle between two unit vectors: larger is nearer; NaN without a location.
#[inline]
fn closeness(point: [f32; 3], client: [f32; 3]) -> f32 {
    point[0] * client[0] + point[1] * client[1] + point[2] * client[2]
}

/// Offers the pool's eligible located members to `best` outwards from the client's latitude,
/// nearest latitude first, and stops once the latitude gap alone exceeds the k-th nearest's
/// distance: the great-circle angle between two points is at least their latitude difference,
/// so nobody further out in latitude can be nearer. A pool of 1,000 members spread over the
/// globe looks at a few dozen of them instead of all.
fn nearest_by_latitude(pool: &Pool, table: &PickTable, client: [f32; 3], best: &mut NearestK) {
    let order = &pool.by_latitude;
    let latitude = client[2].clamp(-1.0, 1.0).asin();
    let start = order.partition_point(|&(l, _)| l < latitude);
    let (mut below, mut above) = (start, start);
    // The latitude gap beyond which no member can enter `best`; a hair wider than the exact
    // bound, against rounding in asin and acos.
    let mut reach = f32::INFINITY;
    loop {
        let gap_below = if below > 0 {
            latitude - order[below - 1].0
        } else {
            f32::INFINITY
        };
        let gap_above = order.get(above).map_or(f32::INFINITY, |&(l, _)| l - latitude);
        let (gap, slot) = if gap_below <= gap_above {
            if gap_below == f32::INFINITY {
                break; // both ends reached
            }
            below -= 1;
            (gap_below, order[below].1)
        } else {
            above += 1;
            (gap_above, order[above - 1].1)
        };
        if gap > reach {
            break;
        }
        let weight = table.weight_of(slot).unwrap_or(0);
        let Some(&(point, _)) = pool.places.get(slot as usize).filter(|_| weight > 0) else {
            continue;
        };
        if best.offer(closeness(point, client), slot, weight) {
            if let Some(worst) = best.worst_when_full() {
                reach = worst.clamp(-1.0, 1.0).acos() + 1e-4;
            }
        }
    }
}

/// The k candidates nearest the client so far, nearest first: (closeness, slot, weight).
struct NearestK {
    best: [(f32, u32, u64); crate::zone::members::MAX_NEAREST_K as usize],
    found: usize,
    k: usize,
}

impl NearestK {
    fn new(k: usize) -> NearestK {
        NearestK {
            best: [(f32::NEG_INFINITY, 0, 0); crate::zone::members::MAX_NEAREST_K as usize],
            found: 0,
            k: k.clamp(1, crate::zone::members::MAX_NEAREST_K as usize),
        }
    }

    /// Takes the candidate if it is among the k nearest so far (a tie with the k-th does not
    /// displace it); true when taken.
    fn offer(&mut self, closeness: f32, slot: u32, weight: u64) -> bool {
        if closeness.is_nan() {
            return false; // no location
        }
        let (k, found) = (self.k, self.found);
        let mut at = found.min(k);
        while at > 0 && self.best[at - 1].0 < closeness {
            at -= 1;
        }
        if at >= k {
            return false;
        }
        let end = found.min(k - 1);
        self.best.copy_within(at..end, at + 1);
        self.best[at] = (closeness, slot, weight);
        self.found = (found + 1).min(k);
        true
    }

    /// The k-th nearest's closeness, once k are found.
    fn worst_when_full(&self) -> Option<f32> {
        (self.found == self.k).then(|| self.best[self.k - 1].0)
    }

    /// The weighted draw among those found.
    fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<u32> {
        let chosen = &self.best[..self.found];
        let total: u64 = chosen.iter().map(|c| c.2).sum();
        if total == 0 {
            return None;
        }
        let mut point = rng.random_range(0..total);
        for &(_, slot, weight) in chosen {
            if point < weight {
                return Some(slot);
            }
            point -= weight;
        }
        None
    }
}

/// True when a CNAME chain that began in zone `chain_zone` has reached another zone: the
/// answer stops there (resolvers follow it themselves).
fn leaves_chain_zone(chain_zone: Option<u32>, found: &Found<'_>) -> bool {
    match (chain_zone, found) {
        (Some(z), Found::Node(fz, ..) | Found::Referral(fz, ..) | Found::NxDomain(fz, _)) => z != *fz,
        _ => false,
    }
}

/// RFC 1034 §4.3.2 step 3b, also when a CNAME restarted the lookup (step 3a): the cut's NS
/// RRset goes in the authority section and its glue in the additional section; CNAMEs already
/// in the answer keep AA set. `at_question`: the cut is a suffix of the question name.
fn refer(response: &mut Response<'_>, zone: &Zone, cut: u32, at_question: bool) {
    let Some(ns) = zone.node(cut).and_then(|node| rrset_of(zone, node, rtype::NS)) else {
        return;
    };
    let cut_name = zone.node_name(cut);
    let owner = if at_question {
        response.question_suffix(cut_name.len())
    } else {
        Owner::Name(cut_name)
    };
    response.put_records(&owner, ns.count, zone.tails(ns));
    response.authority = response.authority.saturating_add(ns.count);
    if response.dnssec {
        // RFC 4035 §3.1.4: a secure delegation's DS with its RRSIGs, or the NSEC proving
        // there is none (insecure); with NSEC3 the record that matches the cut (RFC 5155
        // §7.2.7, no opt-out).
        let node = zone.node(cut);
        let ds = node.and_then(|node| rrset_of(zone, node, rtype::DS));
        if let Some(rrset) = ds {
            response.authority_rrset(&owner, zone, rrset);
        } else if zone.nsec3_table().is_some() {
            if let Some((nsec3_owner, rrset)) =
                zone.nsec3_matching(cut_name).and_then(|i| zone.nsec3_record(i))
            {
                response.authority_rrset(&Owner::Name(nsec3_owner), zone, rrset);
            }
        } else if let Some(rrset) = node.and_then(|node| rrset_of(zone, node, rtype::NSEC)) {
            response.authority_rrset(&owner, zone, rrset);
        }
    }
    response.begin_additional();
    response.glue_required = !zone.additional(ns).is_empty();
    response.additional_for(zone, ns);
}

/// What answering one name of a chain leads to.
enum Next<'s> {
    /// The answer is complete.
    Done,
    /// A CNAME into the zone was written: look its target up next. `rdata_at` is where the
    /// target's name starts in the response, for a compression pointer.
    Follow { target: &'s [u8], rdata_at: usize },
}

/// Answers `qtype` at an existing name: the pool's pick at a shared name, the RRset asked
/// for, a CNAME to follow, one RRset for ANY (RFC 8482 §4.1), or NODATA (RFC 2308 §2.2). A
/// pick is recorded in `pick`.
fn answer_node<'s, R: Rng + ?Sized>(
    response: &mut Response<'_>,
    Place {
        z,
        zone,
        n,
        node,
        key,
    }: Place<'s, '_>,
    qtype: u16,
    owner: &Owner<'_>,
    snapshot: &Snapshot,
    rng: &mut R,
    pick: &mut Option<(u32, u32, u32)>,
) -> Next<'s> {
    let (rdata_at, chase) = if let Some(p) = node.pool() {
        let pool = &zone.pools[p as usize];
        let table = pool.table.load();
        let chosen = choose_member(response, pool, &table, qtype, snapshot.geo.as_deref(), rng);
        // A pool with no member to offer (none with a positive weight): NODATA, as for a
        // name without records of the type (RFC 2308 §2.2), with the name's NSEC (which
        // then lists no CNAME).
        let Some((slot, entry)) = chosen.and_then(|slot| Some((slot, pool.entries.get(slot as usize)?)))
        else {
            response.negative_soa(zone);
            response.prove_no_data((z, zone, node, n), key);
            return Next::Done;
        };
        *pick = Some((z, p, slot));
        let rdata_at = response.put_cname(owner, pool.def.ttl, zone.entry_target(entry));
        response.answers += 1;
        // The pre-signed RRSIG of this very CNAME.
        response.answer_sigs(owner, entry.sig_count, zone.entry_sigs(entry));
        (rdata_at, zone.entry_chase(entry))
    } else if qtype == rtype::RRSIG && zone.dnssec.is_some() {
        // Every signature at the name (RFC 4035 §3.1.5 leaves the choice; BIND and Knot do
        // this).
        let before = response.answers;
        for rrset in zone.rrsets(node) {
            response.put_records(owner, rrset.sig_count, zone.sigs(rrset));
            response.answers = response.answers.saturating_add(rrset.sig_count);
        }
        if response.answers == before {
            response.negative_soa(zone);
            response.prove_no_data((z, zone, node, n), key);
        }
        return Next::Done;
    } else if let Some(rrset) = (qtype != rtype::ANY)
        .then(|| rrset_of(zone, node, qtype))
        .flatten()
    {
        response.answer_rrset(owner, zone, rrset);
        // The authority section (a wildcard answer's NSEC proof) comes before the additional
        // one, and is never cut with it: written now, before the additional data begins.
        response.write_proofs(snapshot);
        response.begin_additional();
        response.additional_for(zone, rrset);
        return Next::Done;
    } else if let Some(cname) = rrset_of(zone, node, rtype::CNAME) {
        let rdata_at = response.answer_rrset(owner, zone, cname);
        (rdata_at, zone.rrset_chase(cname))
    } else if let Some(first) = zone.rrsets(node).first().filter(|_| qtype == rtype::ANY) {
        response.answer_rrset(owner, zone, first);
        return Next::Done;
    } else {
        // NODATA, empty non-terminals included.
        response.negative_soa(zone);
        response.prove_no_data((z, zone, node, n), key);
        return Next::Done;
    };
    match chase {
        // A CNAME answers CNAME and ANY queries itself; other types follow it.
        Some(target) if qtype != rtype::CNAME && qtype != rtype::ANY => Next::Follow { target, rdata_at },
        _ => Next::Done,
    }
}

/// Class CH: `id.server`/`hostname.bind` and `version.server`/`version.bind` when configured.
fn chaos(snapshot: &Snapshot, query: &[u8], question: &Question, response: &mut Response<'_>) {
    let qname = question.qname(query);
    let is = |name: &[u8]| qname.eq_ignore_ascii_case(name);
    let configured = if is(b"\x02id\x06server\x00") || is(b"\x08hostname\x04bind\x00") {
        Some(snapshot.chaos_identity.as_deref())
    } else if is(b"\x07version\x06server\x00") || is(b"\x07version\x04bind\x00") {
        Some(snapshot.chaos_version.as_deref())
    } else {
        None
    };
    // Refused as NSD refuses them: a name we know but do not tell (not configured) is
    // Prohibited (RFC 8914 §4.19), any other CH name Not Supported (§4.22).
    let tail = match configured {
        Some(Some(tail)) => tail,
        Some(None) => return response.refuse(Ede::PROHIBITED),
        None => return response.refuse(Ede::NOT_SUPPORTED),
    };
    response.aa = true;
    if question.qtype == rtype::TXT || question.qtype == rtype::ANY {
        response.put_records(&Owner::Pointer(HEADER_LEN), 1, tail);
        response.answers += 1;
    }
}

/// The question of a query as text (name, qtype, qclass), for the sampled query log.
pub fn question_text(query: &[u8]) -> Option<(String, u16, u16)> {
    let question = parse_question(query)?;
    let mut name = String::new();
    crate::zone::name::write_wire_name(&mut name, question.qname(query)).ok()?;
    Some((name, question.qtype, question.qclass))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CD, RD};
    use rand::SeedableRng;

    /// The latitude-pruned nearest search finds the same k nearest as looking at every
    /// eligible member: 2,000 random pools (members anywhere, some down, some unplaced) and
    /// clients, fixed seed. Positions are random reals, so distances never tie.
    #[test]
    fn nearest_by_latitude_finds_what_a_full_scan_finds() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(20);
        let mut pruned_looked = 0usize;
        for round in 0..2_000 {
            let n = rng.random_range(1..400usize);
            let k = rng.random_range(1..=usize::from(crate::zone::members::MAX_NEAREST_K));
            let places: Box<[([f32; 3], u32)]> = (0..n)
                .map(|_| {
                    if rng.random_bool(0.05) {
                        return ([f32::NAN; 3], 0);
                    }
                    let (lat, lon) = (
                        rng.random_range(-89.0f32..89.0),
                        rng.random_range(-180.0f32..180.0),
                    );
                    (crate::geo::unit_vector(lat, lon), 0)
                })
                .collect();
            let by_latitude = crate::snapshot::latitude_index(&places);
            // A tenth of the members down (effective weight 0).
            let weights: Vec<(u32, u64, u64)> = (0..n as u32)
                .map(|slot| {
                    let w = rng.random_range(1..5u64);
                    (slot, if rng.random_bool(0.1) { 0 } else { w }, w)
                })
                .collect();
            let table = PickTable::build(weights.iter().copied()).with_slot_weights(n);
            let pool = Pool {
                def: crate::zone::members::PoolDef {
                    label: "near".into(),
                    name: crate::zone::name::Name::parse("near.example.", None).expect("name"),
                    ttl: 30,
                    members: (0..n).collect(),
                    cert_policy: Default::default(),
                    policy: PickPolicy::Nearest,
                    nearest_k: k as u8,
                    location: crate::zone::Location::new(std::sync::Arc::from(std::path::Path::new("t")), 1),
                },
                entries: Vec::new(),
                places,
                by_latitude,
                table: arc_swap::ArcSwap::from_pointee(PickTable::default()),
            };
            let client = crate::geo::unit_vector(
                rng.random_range(-90.0f32..90.0),
                rng.random_range(-180.0f32..180.0),
            );
            let mut scanned = NearestK::new(k);
            for (slot, weight) in table.candidates() {
                scanned.offer(closeness(pool.places[slot as usize].0, client), slot, weight);
            }
            let mut pruned = NearestK::new(k);
            nearest_by_latitude(&pool, &table, client, &mut pruned);
            let slots = |best: &NearestK| best.best[..best.found].iter().map(|c| c.1).collect::<Vec<_>>();
            assert_eq!(slots(&pruned), slots(&scanned), "round {round}: n {n}, k {k}");
            pruned_looked += pruned.found;
        }
        assert!(pruned_looked > 0, "some rounds found members");
    }

    fn snapshot() -> Snapshot {
        crate::snapshot::tiny_for_tests()
    }

    /// `ns.example. A` signed with an unknown 251-octet key name whose algorithm name points
    /// back at it: 307 octets that the BADKEY refusal would echo as 556.
    fn query_with_long_tsig(edns: bool) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1 + u8::from(edns)];
        q.extend_from_slice(b"\x02ns\x07example\x00\x00\x01\x00\x01");
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        let key_name_at = q.len() as u8;
        for len in [63, 63, 63, 57] {
            q.push(len);
            q.extend(std::iter::repeat_n(b'k', usize::from(len)));
        }
        q.push(0);
        q.extend_from_slice(&rtype::TSIG.to_be_bytes());
        q.extend_from_slice(&rtype::CLASS_ANY.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 18, 0xc0, key_name_at]);
        // time (6), fudge, MAC size 0, original ID, error, other length 0
        q.extend_from_slice(&[0, 0, 0, 0, 0, 1, 1, 44, 0, 0, 0xab, 0xcd, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn tsig_refusal_too_long_for_udp_goes_out_truncated_without_it() {
        let snapshot = snapshot();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        let query = query_with_long_tsig(false);
        let outcome = answer(&snapshot, &query, &mut out, Transport::Udp, 1232, &mut rng);
        assert!(
            matches!(
                outcome,
                Outcome::Responded {
                    rcode: NOTAUTH,
                    truncated: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(out.len() <= CLASSIC_UDP_LIMIT, "{} octets", out.len());
        assert_eq!(be16(&out, 2) & TC, TC, "TC: the client retries over TCP");
        assert_eq!(be16(&out, 10), 0, "no TSIG, no OPT");

        // Over TCP, or with room (EDNS), the refusal carries the TSIG with the BADKEY error.
        for (transport, query) in [
            (Transport::Tcp, query),
            (Transport::Udp, query_with_long_tsig(true)),
        ] {
            let outcome = answer(&snapshot, &query, &mut out, transport, 1232, &mut rng);
            assert!(
                matches!(
                    outcome,
                    Outcome::Responded {
                        rcode: NOTAUTH,
                        truncated: false,
                        ..
                    }
                ),
                "{transport:?}: {outcome:?}"
            );
            let tsig = tsig::find(&out, 12 + 16).expect("readable").expect("a TSIG");
            assert_eq!(tsig.error, tsig::BADKEY, "{transport:?}");
            assert_eq!(tsig.key_name.len(), 251, "{transport:?}");
        }
    }

    /// A query for `name` (wire form) with `flags`, qtype and qclass; OPT when `edns`.
    fn query(flags: u16, name: &[u8], qtype: u16, qclass: u16, edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34];
        q.extend_from_slice(&flags.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&qclass.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    /// The EDE INFO-CODE in the OPT record that ends `out` (which has no other options).
    fn ede_of(out: &[u8]) -> Option<u16> {
        let opt = out.get(out.len().checked_sub(17)?..)?;
        (opt[..3] == [0, 0, 41] && opt[9..15] == [0, 6, 0, 15, 0, 2]).then(|| be16(opt, 15))
    }

    #[test]
    fn refusals_carry_an_extended_error_only_with_opt() {
        let snapshot = snapshot();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        let cases: [(&[u8], u16, u16, u16); 5] = [
            (b"\x05other\x03org\x00", rtype::A, rtype::CLASS_IN, 20),
            (b"\x02ns\x07example\x00", rtype::A, 4, 21),
            (b"\x07example\x00", rtype::AXFR, rtype::CLASS_IN, 21),
            (b"\x07version\x04bind\x00", rtype::TXT, rtype::CLASS_CH, 18),
            (b"\x03foo\x00", rtype::TXT, rtype::CLASS_CH, 21),
        ];
        for (name, qtype, qclass, info_code) in cases {
            let q = query(0, name, qtype, qclass, true);
            let outcome = answer(&snapshot, &q, &mut out, Transport::Udp, 1232, &mut rng);
            assert!(
                matches!(outcome, Outcome::Responded { rcode: REFUSED, .. }),
                "{outcome:?}"
            );
            assert_eq!(ede_of(&out), Some(info_code), "{name:?} {qtype} {qclass}");
            assert_eq!(be16(&out, 10), 1, "one additional record: the OPT");
            let q = query(0, name, qtype, qclass, false);
            answer(&snapshot, &q, &mut out, Transport::Udp, 1232, &mut rng);
            assert_eq!(out.len(), q.len(), "no OPT without one in the query");
            assert_eq!(be16(&out, 10), 0);
        }
        // Answers and NXDOMAIN have none.
        for name in [&b"\x02ns\x07example\x00"[..], b"\x04nope\x07example\x00"] {
            let q = query(0, name, rtype::A, rtype::CLASS_IN, true);
            answer(&snapshot, &q, &mut out, Transport::Udp, 1232, &mut rng);
            assert_eq!(&out[out.len() - 2..], &[0, 0], "{name:?}: OPT without options");
        }
    }

    #[test]
    fn notimp_echoes_id_and_opcode_only() {
        let snapshot = snapshot();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        for opcode in [1u16, 2, 3, 5, 6, 15] {
            let flags = (opcode << 11) | AA | TC | RD | wire::AD | CD;
            let q = query(flags, b"\x02ns\x07example\x00", rtype::A, rtype::CLASS_IN, false);
            let outcome = answer(&snapshot, &q, &mut out, Transport::Udp, 1232, &mut rng);
            assert!(
                matches!(outcome, Outcome::Responded { rcode: NOTIMP, .. }),
                "{outcome:?}"
            );
            assert_eq!(be16(&out, 0), 0x1234);
            assert_eq!(be16(&out, 2), QR | (opcode << 11) | 4, "opcode {opcode}");
        }
        // FORMERR still echoes RD and CD (RFC 1035 §4.1.1).
        let mut q = query(
            RD | CD,
            b"\x02ns\x07example\x00",
            rtype::A,
            rtype::CLASS_IN,
            false,
        );
        q[5] = 2;
        answer(&snapshot, &q, &mut out, Transport::Udp, 1232, &mut rng);
        assert_eq!(be16(&out, 2), QR | RD | CD | 1);
    }
}
