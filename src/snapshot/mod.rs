//! The immutable Snapshot: every served zone turned into pre-encoded answer tables, built off
//! the request path and published whole through one `ArcSwap`.
//!
//! Building does all the slow work once per load: grouping into RRsets, finding empty
//! non-terminals, delegation cuts and wildcards, encoding each record's type/class/TTL/RDATA,
//! and the glue for referrals. The request path (`server::answer`) only looks up and copies.
//! Pools carry their own `ArcSwap<PickTable>` so health changes republish a pool's table
//! without rebuilding the snapshot.

mod build;
pub mod versions;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::dnssec::{Signed, SigningReport};
use crate::metrics::Metrics;
use crate::peers::ZonePeers;
use crate::pick::PickTable;
use crate::tsig::TsigKey;
use crate::zone::members::{Member, PoolDef};
use crate::zone::name::Name;
use crate::zone::{Record, ZoneData, rtype};
pub use versions::{VersionDiff, ZoneTransfer, ZoneVersion};

/// The published snapshot: the request path `load()`s it once per query, the control plane
/// stores a new one, and health checks read it to republish pick tables.
pub type Published = Arc<ArcSwap<Snapshot>>;

/// Everything a query can see, consistent with itself.
#[derive(Debug)]
pub struct Snapshot {
    /// Every name of every zone -> (zone index, node index). A name lives in the deepest zone
    /// that encloses it.
    pub(crate) names: NameIndex,
    pub(crate) zones: Vec<Zone>,
    /// CH TXT answers (`id.server`, `version.bind`...), pre-encoded tails.
    pub(crate) chaos_identity: Option<Box<[u8]>>,
    pub(crate) chaos_version: Option<Box<[u8]>>,
    /// TSIG keys that signed queries, transfers and NOTIFYs are checked against.
    pub tsig_keys: Vec<TsigKey>,
    /// `BuildOptions::primaries`.
    pub primaries: Vec<(Box<[u8]>, Vec<std::net::IpAddr>)>,
    /// `BuildOptions::unavailable`.
    pub unavailable: Vec<Box<[u8]>>,
    /// `BuildOptions::geo`.
    pub geo: Option<Arc<crate::geo::GeoDb>>,
}

/// What a snapshot is built with besides the zones: all of it comes from the config, passed
/// in so that building depends on nothing else.
#[derive(Debug, Default)]
pub struct BuildOptions<'a> {
    /// CH TXT `id.server` answer.
    pub identity: Option<&'a str>,
    /// CH TXT `version.server` answer.
    pub version: Option<&'a str>,
    pub keys: &'a [TsigKey],
    /// Transfer ACL and NOTIFY targets by zone key (lowercased wire origin).
    pub peers: HashMap<Box<[u8]>, ZonePeers>,
    /// Counts picks per pool member when given.
    pub metrics: Option<&'a Metrics>,
    /// Signatures, NSEC chain and keys of the signed zones, by zone key.
    pub signed: HashMap<Box<[u8]>, Signed>,
    /// Secondary zones (by key) and the addresses of their primaries, whose NOTIFYs count.
    pub primaries: Vec<(Box<[u8]>, Vec<std::net::IpAddr>)>,
    /// Configured zones with no data to serve (a secondary before its first transfer or past
    /// its SOA expire): answered SERVFAIL, by key.
    pub unavailable: Vec<Box<[u8]>>,
    /// The GeoIP database the geographic pools locate clients with (`[geoip] database`).
    pub geo: Option<Arc<crate::geo::GeoDb>>,
}

/// One zone's tables.
#[derive(Debug)]
pub struct Zone {
    pub origin: Name,
    pub serial: u32,
    /// `ZoneData::content_digest` of what was built (serial excluded).
    pub content_digest: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) rrsets: Vec<RRset>,
    pub(crate) additionals: Vec<Additional>,
    /// Names, tails and chase keys of `nodes`, `rrsets`, `additionals` and the pools.
    bytes: Box<[u8]>,
    /// SOA tail for negative answers, TTL = min(SOA TTL, MINIMUM) (RFC 2308 §3).
    pub(crate) negative_soa: Box<[u8]>,
    pub pools: Vec<Pool>,
    pub members: Vec<Member>,
    /// The zone file's records as loaded (member CNAMEs are in `members`; `all_records` has
    /// both), for differential tests, transfers and `check`.
    pub records: Vec<Record>,
    /// Records added by RFC 2136 UPDATE (`ZoneData::dynamic`), served and transferred with
    /// the rest.
    pub dynamic: Vec<Record>,
    /// Transfer ACL, NOTIFY targets and IXFR history (`transfer::history` fills the last).
    pub transfer: ZoneTransfer,
    /// Present when the zone is signed.
    pub dnssec: Option<ZoneDnssec>,
    /// A secondary's zone (`ZoneData::transferred`).
    pub transferred: bool,
    /// `ZoneData::member_texts`: what the next load of the members file may reuse.
    pub member_texts: crate::zone::members::MemberTexts,
}

/// One NSEC owner in canonical order: its node and its canonical key in `nsec_keys`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NsecEntry {
    pub(crate) node: u32,
    pub(crate) key: Span,
}

/// One NSEC3 record (RFC 5155): the hash its owner name stands for, the owner, and its RRset
/// (in the zone's `rrsets`, outside every node's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nsec3Entry {
    pub(crate) hash: [u8; crate::wire::NSEC3_HASH_LEN],
    pub(crate) owner: Span,
    pub(crate) rrset: u32,
}

/// What a signed zone adds to its tables.
#[derive(Debug)]
pub struct ZoneDnssec {
    /// Nodes that own an NSEC, in canonical order (RFC 4034 §6.1): the covering NSEC of a
    /// name that does not exist is found by binary search.
    pub(crate) nsec_order: Vec<NsecEntry>,
    /// The `wire::canonical_key` of each of `nsec_order`'s names, back to back.
    pub(crate) nsec_keys: Box<[u8]>,
    /// A zone signed with NSEC3 (`denial = "nsec3"`): its NSEC3 records by hash. Empty for an
    /// NSEC zone, whose nodes own their NSECs.
    pub(crate) nsec3: Box<[Nsec3Entry]>,
    /// RRSIG tails of the negative-answer SOA, at its TTL.
    pub(crate) negative_soa_sigs: Box<[u8]>,
    pub(crate) negative_soa_sig_count: u16,
    pub report: SigningReport,
}

/// The NSEC3 hash of a wire name in any case, lowercased first on the stack.
fn nsec3_hash_of(name: &[u8]) -> Option<[u8; crate::wire::NSEC3_HASH_LEN]> {
    let mut key = [0u8; crate::wire::MAX_NAME_LEN];
    let key = key.get_mut(..name.len())?;
    for (k, c) in key.iter_mut().zip(name) {
        *k = c.to_ascii_lowercase();
    }
    Some(crate::wire::nsec3_hash(key))
}

/// The name index: lowercased wire name -> (zone index, node index). It holds only the
/// indexes; an entry's name is read from its node in the zone's byte arena, so no name is
/// allocated on its own. The hasher is seeded randomly per process so hostile query names
/// cannot be chosen to collide.
pub(crate) struct NameIndex {
    table: hashbrown::HashTable<(u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameIndex")
            .field("len", &self.table.len())
            .finish()
    }
}

impl NameIndex {
    /// Looks up `key`, a lowercased wire name.
    #[inline]
    pub(crate) fn get(&self, zones: &[Zone], key: &[u8]) -> Option<(u32, u32)> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |&(z, n)| {
                zones
                    .get(z as usize)
                    .is_some_and(|zone| zone.node_name(n).eq_ignore_ascii_case(key))
            })
            .copied()
    }

    /// Indexes every node of `zones` that the zone owns: a name lives in the deepest
    /// configured zone that encloses it.
    fn build(zones: &[Zone]) -> NameIndex {
        let mut index = NameIndex {
            table: hashbrown::HashTable::with_capacity(zones.iter().map(|z| z.nodes.len()).sum()),
            hasher: foldhash::fast::RandomState::default(),
        };
        let origins: Vec<Box<[u8]>> = zones.iter().map(|z| z.origin.key()).collect();
        for (z, zone) in zones.iter().enumerate() {
            for n in 0..zone.nodes.len() as u32 {
                let name = zone.node_name(n);
                let key = name.to_ascii_lowercase();
                let owner_zone = origins
                    .iter()
                    .enumerate()
                    .filter(|(_, origin)| key_is_subdomain(&key, origin))
                    .max_by_key(|(_, origin)| origin.len())
                    .map(|(i, _)| i);
                if owner_zone != Some(z) {
                    continue;
                }
                let entry = (z as u32, n);
                let hash = index.hasher.hash_one(&key[..]);
                let same = |&(oz, on): &(u32, u32)| {
                    zones
                        .get(oz as usize)
                        .is_some_and(|other| other.node_name(on).eq_ignore_ascii_case(&key))
                };
                // Two configured zones with one origin: the later one answers, as before.
                if let Some(existing) = index.table.find_mut(hash, same) {
                    *existing = entry;
                    continue;
                }
                let hasher = &index.hasher;
                index.table.insert_unique(hash, entry, |&(oz, on)| {
                    let name = zones
                        .get(oz as usize)
                        .map_or(&[][..], |other| other.node_name(on));
                    let lower = name.to_ascii_lowercase();
                    hasher.hash_one(&lower[..])
                });
            }
        }
        index
    }
}

/// A byte range in a zone's arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

/// A zone's names and pre-encoded record tails, back to back in one allocation: far less
/// memory than one allocation per name and RRset, and a node's name and its first tails
/// share cache lines.
#[derive(Debug, Default)]
struct Arena {
    bytes: Vec<u8>,
    /// Set when the arena would pass 4 GiB (u32 offsets): never for zones within the file
    /// size limits, but building stays total.
    overflowed: bool,
}

impl Arena {
    fn push(&mut self, data: &[u8]) -> Span {
        match (u32::try_from(self.bytes.len()), u32::try_from(data.len())) {
            (Ok(start), Ok(len)) if start.checked_add(len).is_some() => {
                self.bytes.extend_from_slice(data);
                Span { start, len }
            }
            _ => {
                self.overflowed = true;
                Span::default()
            }
        }
    }
}

/// "None" for the u32 node references below (a zone has far fewer than 4 billion nodes).
const NO_INDEX: u32 = u32::MAX;

fn optional(index: u32) -> Option<u32> {
    (index != NO_INDEX).then_some(index)
}

/// One owner name in a zone (empty non-terminals included, with no RRsets).
#[derive(Debug)]
pub(crate) struct Node {
    name: Span,
    /// This node's RRsets: `rrsets_len` entries of the zone's `rrsets` from `rrsets_start`.
    rrsets_start: u32,
    rrsets_len: u32,
    cut: u32,
    wildcard: u32,
    pool: u32,
}

impl Node {
    /// This node's RRsets within its zone's RRset table.
    #[inline]
    fn rrsets_in<'t>(&self, table: &'t [RRset]) -> &'t [RRset] {
        let start = self.rrsets_start as usize;
        table
            .get(start..start + self.rrsets_len as usize)
            .unwrap_or_default()
    }

    /// The topmost delegation at or above this node, below the apex.
    pub(crate) fn cut(&self) -> Option<u32> {
        optional(self.cut)
    }

    /// The `*` child of this node, for RFC 4592 synthesis.
    pub(crate) fn wildcard(&self) -> Option<u32> {
        optional(self.wildcard)
    }

    /// The pool whose shared name this is.
    pub(crate) fn pool(&self) -> Option<u32> {
        optional(self.pool)
    }
}

/// One RRset, pre-encoded.
#[derive(Debug)]
pub(crate) struct RRset {
    pub(crate) rtype: u16,
    pub(crate) count: u16,
    /// `count` record tails back to back: TYPE CLASS TTL RDLENGTH RDATA.
    tails: Span,
    /// For a CNAME inside the zone: the target's lookup key, to follow the chain (empty: none).
    chase: Span,
    /// Address records of in-zone names this RRset refers to (NS, MX, SRV targets).
    additional_start: u32,
    additional_len: u32,
    /// Its RRSIG record tails, `sig_count` of them (none in an unsigned zone).
    sigs: Span,
    pub(crate) sig_count: u16,
}

/// An address RRset to place in the additional section.
#[derive(Debug)]
pub(crate) struct Additional {
    owner: Span,
    pub(crate) count: u16,
    tails: Span,
    /// RRSIG tails of an authoritative address RRset (glue has none).
    sigs: Span,
    pub(crate) sig_count: u16,
}

/// A pool: its members' pre-encoded CNAME tails and the current pick table.
#[derive(Debug)]
pub struct Pool {
    pub def: PoolDef,
    /// Indexed like `def.members`.
    pub(crate) entries: Vec<PoolEntry>,
    /// Per member slot, for the geographic policies (empty otherwise): the unit vector of its
    /// location (NaN without one) and its region code (`geo::region_code`, 0 without one).
    pub places: Box<[([f32; 3], u32)]>,
    /// The located slots by latitude (radians, ascending), for the `nearest` search: a
    /// member more than the k-th nearest's distance away in latitude alone is never looked at.
    pub by_latitude: Box<[(f32, u32)]>,
    /// Rebuilt by the health checker whenever an effective weight changes.
    pub table: ArcSwap<PickTable>,
}

#[derive(Debug)]
pub(crate) struct PoolEntry {
    /// The member's target in wire form: the RDATA of the member's own CNAME in the zone's
    /// arena, shared with the member's node (the pool's answer differs only in its TTL).
    target: Span,
    /// The target's lookup key when it lies inside the zone (empty: none).
    chase: Span,
    /// This member's pick counter (same series across reloads: same labels).
    pub(crate) picks: Option<crate::metrics::PickCounter>,
    /// The pre-signed RRSIG tails of the shared name's CNAME to this member.
    sigs: Span,
    pub(crate) sig_count: u16,
}

impl Zone {
    #[inline]
    fn slice(&self, span: Span) -> &[u8] {
        let start = span.start as usize;
        self.bytes
            .get(start..start + span.len as usize)
            .unwrap_or_default()
    }

    fn chase(&self, span: Span) -> Option<&[u8]> {
        (span.len > 0).then(|| self.slice(span))
    }

    /// Node `n`'s name in wire form, case as written.
    #[inline]
    pub(crate) fn node_name(&self, n: u32) -> &[u8] {
        self.nodes
            .get(n as usize)
            .map_or(&[][..], |node| self.slice(node.name))
    }

    #[inline]
    pub(crate) fn node(&self, n: u32) -> Option<&Node> {
        self.nodes.get(n as usize)
    }

    #[inline]
    pub(crate) fn rrsets(&self, node: &Node) -> &[RRset] {
        node.rrsets_in(&self.rrsets)
    }

    #[inline]
    pub(crate) fn tails(&self, rrset: &RRset) -> &[u8] {
        self.slice(rrset.tails)
    }

    /// RRSIG tails of an RRset.
    #[inline]
    pub(crate) fn sigs(&self, rrset: &RRset) -> &[u8] {
        self.slice(rrset.sigs)
    }

    /// RRSIG tails of an additional RRset.
    #[inline]
    pub(crate) fn additional_sigs(&self, extra: &Additional) -> &[u8] {
        self.slice(extra.sigs)
    }

    /// RRSIG tails of a pool entry's CNAME.
    #[inline]
    pub(crate) fn entry_sigs(&self, entry: &PoolEntry) -> &[u8] {
        self.slice(entry.sigs)
    }

    /// The node that owns the NSEC covering `key`, a lowercased wire name inside the zone
    /// that has no NSEC itself: its canonical predecessor (RFC 4035 §3.1.3.2), the last one
    /// for names past the end of the chain.
    pub(crate) fn covering_nsec(&self, key: &[u8]) -> Option<u32> {
        let dnssec = self.dnssec.as_ref()?;
        let mut buf = [0u8; crate::wire::CANONICAL_KEY_MAX];
        let len = crate::wire::canonical_key(key, &mut buf);
        let wanted = &buf[..len];
        let keys = &dnssec.nsec_keys;
        let order = &dnssec.nsec_order;
        let key_of = |e: &NsecEntry| {
            let start = e.key.start as usize;
            keys.get(start..start + e.key.len as usize).unwrap_or_default()
        };
        let after = order.partition_point(|e| key_of(e) <= wanted);
        let at = after.checked_sub(1).or_else(|| order.len().checked_sub(1))?;
        order.get(at).map(|e| e.node)
    }

    /// The zone's NSEC3 records when it is signed with NSEC3.
    pub(crate) fn nsec3_table(&self) -> Option<&[Nsec3Entry]> {
        self.dnssec
            .as_ref()
            .map(|d| &d.nsec3[..])
            .filter(|t| !t.is_empty())
    }

    /// The NSEC3 record whose owner is the hash of `name` (any case): the name exists, and
    /// its type map says which types it has (RFC 5155 §7.2.3). An index into `nsec3_table`.
    pub(crate) fn nsec3_matching(&self, name: &[u8]) -> Option<u32> {
        let table = self.nsec3_table()?;
        let hash = nsec3_hash_of(name)?;
        table
            .binary_search_by(|e| e.hash.cmp(&hash))
            .ok()
            .map(|i| i as u32)
    }

    /// The NSEC3 record whose span covers the hash of `name` (any case), a name that does
    /// not exist: the last one before the hash, or the last of all for a hash before the
    /// first (the chain wraps, RFC 5155 §7.1).
    pub(crate) fn nsec3_covering(&self, name: &[u8]) -> Option<u32> {
        let table = self.nsec3_table()?;
        let hash = nsec3_hash_of(name)?;
        let after = table.partition_point(|e| e.hash < hash);
        let at = after.checked_sub(1).or_else(|| table.len().checked_sub(1))?;
        Some(at as u32)
    }

    /// (owner, RRset) of NSEC3 record `i` of `nsec3_table`.
    pub(crate) fn nsec3_record(&self, i: u32) -> Option<(&[u8], &RRset)> {
        let entry = self.nsec3_table()?.get(i as usize)?;
        Some((self.slice(entry.owner), self.rrsets.get(entry.rrset as usize)?))
    }

    #[inline]
    pub(crate) fn rrset_chase(&self, rrset: &RRset) -> Option<&[u8]> {
        self.chase(rrset.chase)
    }

    pub(crate) fn additional(&self, rrset: &RRset) -> &[Additional] {
        let start = rrset.additional_start as usize;
        self.additionals
            .get(start..start + rrset.additional_len as usize)
            .unwrap_or_default()
    }

    /// (owner wire name, tails) of an additional RRset.
    pub(crate) fn additional_parts(&self, extra: &Additional) -> (&[u8], &[u8]) {
        (self.slice(extra.owner), self.slice(extra.tails))
    }

    #[inline]
    pub(crate) fn entry_target(&self, entry: &PoolEntry) -> &[u8] {
        self.slice(entry.target)
    }

    #[inline]
    pub(crate) fn entry_chase(&self, entry: &PoolEntry) -> Option<&[u8]> {
        self.chase(entry.chase)
    }

    /// The zone's records, member CNAMEs included, as a transfer or `check` sees them; for a
    /// signed zone also DNSKEY, CDS, CDNSKEY, NSEC (or NSEC3 and NSEC3PARAM) and every RRSIG but those of the shared
    /// names' alternatives (a transfer carries the transfer pick's, `pool_pick_records`).
    pub fn all_records(&self) -> Vec<Record> {
        let mut records = self.records.clone();
        records.extend(self.members.iter().map(Member::cname_record));
        records.extend(self.dynamic.iter().cloned());
        if self.dnssec.is_none() && !self.transferred {
            let defs: Vec<PoolDef> = self.pools.iter().map(|p| p.def.clone()).collect();
            records.extend(crate::zone::carrier::records(&self.members, &defs, None));
        } else {
            let location = crate::diag::Location::new(Arc::from(std::path::Path::new("dnssec")), 0);
            // Records of `name` from record tails (own records, then RRSIGs).
            let push_tails = |records: &mut Vec<Record>, name: &Name, tails: [&[u8]; 2]| {
                for tail in tails {
                    records.extend(split_tails(tail).map(|(t, ttl, rdata)| Record {
                        name: name.clone(),
                        rtype: t,
                        ttl,
                        rdata: rdata.to_vec(),
                        location: location.clone(),
                    }));
                }
            };
            for node in &self.nodes {
                let name = Name::from_wire_unchecked(self.slice(node.name));
                for rrset in self.rrsets(node) {
                    // Pool records are signing's output too, except on a secondary.
                    let generated = matches!(
                        rrset.rtype,
                        rtype::NSEC | rtype::NSEC3PARAM | rtype::DNSKEY | rtype::CDS | rtype::CDNSKEY
                    ) || (!self.transferred
                        && crate::zone::carrier::is_pool_record(&name, rrset.rtype));
                    let own = if generated { self.tails(rrset) } else { &[] };
                    push_tails(&mut records, &name, [own, self.sigs(rrset)]);
                }
            }
            for i in 0..self.nsec3_table().map_or(0, <[_]>::len) as u32 {
                let Some((owner, rrset)) = self.nsec3_record(i) else {
                    continue;
                };
                let name = Name::from_wire_unchecked(owner);
                push_tails(&mut records, &name, [self.tails(rrset), self.sigs(rrset)]);
            }
        }
        records
    }

    /// The records of one shared-name answer in transfer form (owner, type, class, TTL,
    /// RDATA): the CNAME to pool member `slot` and its pre-signed RRSIGs.
    pub fn pool_pick_records(&self, pool: &Pool, slot: u32) -> Vec<Box<[u8]>> {
        let Some(entry) = pool.entries.get(slot as usize) else {
            return Vec::new();
        };
        let owner = pool.def.name.wire();
        let mut out = Vec::with_capacity(1 + usize::from(entry.sig_count));
        let mut cname = owner.to_vec();
        encode_tail(
            &mut cname,
            rtype::CNAME,
            rtype::CLASS_IN,
            pool.def.ttl,
            self.entry_target(entry),
        );
        out.push(cname.into_boxed_slice());
        for (t, ttl, rdata) in split_tails(self.entry_sigs(entry)) {
            let mut record = owner.to_vec();
            encode_tail(&mut record, t, rtype::CLASS_IN, ttl, rdata);
            out.push(record.into_boxed_slice());
        }
        out
    }
}

/// The located slots of `places` by latitude (radians, ascending): `Pool::by_latitude`.
pub(crate) fn latitude_index(places: &[([f32; 3], u32)]) -> Box<[(f32, u32)]> {
    let mut by_latitude: Vec<(f32, u32)> = places
        .iter()
        .enumerate()
        .filter(|(_, (point, _))| !point[2].is_nan())
        .map(|(slot, (point, _))| (point[2].clamp(-1.0, 1.0).asin(), slot as u32))
        .collect();
    by_latitude.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_latitude.into_boxed_slice()
}

impl Pool {
    /// Publishes a new table from `(effective, configured)` weights, one per pool member in
    /// order (both scaled by `pick::WEIGHT_SCALE`).
    pub fn publish(&self, weights: &[(u64, u64)]) {
        let triples = weights
            .iter()
            .enumerate()
            .map(|(slot, &(eff, conf))| (slot as u32, eff, conf));
        let table = PickTable::build(triples);
        // The nearest search asks weights by slot.
        let table = if self.by_latitude.is_empty() {
            table
        } else {
            table.with_slot_weights(weights.len())
        };
        self.table.store(Arc::new(table));
    }
}

/// The (type, TTL, RDATA) of each record tail in `tails`.
pub(crate) fn split_tails(tails: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let header = tails.get(pos..pos + 10)?;
        let len = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let rdata = tails.get(pos + 10..pos + 10 + len)?;
        pos += 10 + len;
        Some((
            u16::from_be_bytes([header[0], header[1]]),
            u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            rdata,
        ))
    })
}

/// Appends one record tail.
pub(crate) fn encode_tail(out: &mut Vec<u8>, rtype: u16, class: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

impl Snapshot {
    /// Builds answer tables from validated zone data.
    pub fn build(zones: Vec<ZoneData>, options: &BuildOptions<'_>) -> Snapshot {
        let built: Vec<Zone> = zones
            .into_iter()
            .map(|data| {
                let peers = options.peers.get(&data.origin.key()).cloned().unwrap_or_default();
                let signed = options.signed.get(&data.origin.key());
                let mut zone = build::build_zone(data, signed, options.metrics);
                zone.transfer.allow = peers.allow_transfer;
                zone.transfer.notify = peers.notify;
                zone
            })
            .collect();
        let names = NameIndex::build(&built);
        let chaos_tail = |text: &str| {
            let mut rdata = Vec::new();
            for chunk in text.as_bytes().chunks(255) {
                rdata.push(chunk.len() as u8);
                rdata.extend_from_slice(chunk);
            }
            let mut tail = Vec::new();
            encode_tail(&mut tail, rtype::TXT, rtype::CLASS_CH, 0, &rdata);
            tail.into_boxed_slice()
        };
        Snapshot {
            names,
            zones: built,
            chaos_identity: options.identity.map(chaos_tail),
            chaos_version: options.version.map(chaos_tail),
            tsig_keys: options.keys.to_vec(),
            primaries: options.primaries.clone(),
            unavailable: options.unavailable.clone(),
            geo: options.geo.clone(),
        }
    }

    /// Whether `key` (a lowercased wire name) falls in a configured zone that has no data now.
    pub fn is_unavailable(&self, key: &[u8]) -> bool {
        self.unavailable.iter().any(|zone| key_is_subdomain(key, zone))
    }

    /// The node named `key` (a lowercased wire name): (zone index, zone, node index, node).
    #[inline]
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<(u32, &Zone, u32, &Node)> {
        let (z, n) = self.names.get(&self.zones, key)?;
        let zone = self.zones.get(z as usize)?;
        Some((z, zone, n, zone.node(n)?))
    }

    /// Counts a pick reported by `server::answer`.
    #[inline]
    pub fn count_pick(&self, (zone, pool, slot): (u32, u32, u32)) {
        let entry = self
            .zones
            .get(zone as usize)
            .and_then(|z| z.pools.get(pool as usize))
            .and_then(|p| p.entries.get(slot as usize));
        if let Some(counter) = entry.and_then(|e| e.picks.as_ref()) {
            counter.inc();
        }
    }

    /// The zones, for `transfer::history` to attach versions before publishing.
    pub fn zones_mut(&mut self) -> &mut [Zone] {
        &mut self.zones
    }

    /// The zones served, in config order.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }
}

/// True when wire key `name` equals `ancestor` or lies below it (both lowercased).
pub(crate) fn key_is_subdomain(name: &[u8], ancestor: &[u8]) -> bool {
    if ancestor.len() > name.len() {
        return false;
    }
    let start = name.len() - ancestor.len();
    if name[start..] != *ancestor {
        return false;
    }
    let mut pos = 0;
    while pos < start {
        pos += name[pos] as usize + 1;
    }
    pos == start
}

/// A one-zone snapshot (`example.`: SOA, NS, one A) for the unit tests of the modules that
/// read snapshots.
#[cfg(test)]
pub(crate) fn tiny_for_tests() -> Snapshot {
    use crate::zone::{self, master};
    use std::path::Path;
    let origin = Name::parse("example.", None).expect("origin");
    let text = "$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n";
    let records = master::parse_str(text, Path::new("z"), &origin).expect("zone text");
    let data = zone::assemble(&origin, Path::new("z"), records, Vec::new(), Vec::new()).expect("valid zone");
    Snapshot::build(vec![data], &BuildOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_keys() {
        let a = Name::parse("a.b.example.", None).expect("name").key();
        let zone = Name::parse("example.", None).expect("name").key();
        let other = Name::parse("xample.", None).expect("name").key();
        assert!(key_is_subdomain(&a, &zone));
        assert!(!key_is_subdomain(&a, &other));
        assert!(key_is_subdomain(&zone, &zone));
    }
}
