//! The immutable Snapshot: every served zone turned into pre-encoded answer tables, built off
//! the request path and published whole through one `ArcSwap`.
//!
//! Building does all the slow work once per load: grouping into RRsets, finding empty
//! non-terminals, delegation cuts and wildcards, encoding each record's type/class/TTL/RDATA,
//! and the glue for referrals. The request path (`server::answer`) only looks up and copies.
//! Pools carry their own `ArcSwap<PickTable>` so health changes republish a pool's table
//! without rebuilding the snapshot.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pick::PickTable;
use crate::zone::members::{Member, PoolDef};
use crate::zone::name::Name;
use crate::zone::owners::{Owners, ancestors, compare_keys};
use crate::zone::{self, Diagnostic, Record, ZoneData, rtype};

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
    /// TSIG keys for transfers (set by `app` from the config).
    pub tsig_keys: Vec<crate::transfer::tsig::TsigKey>,
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
    /// Transfer ACL, NOTIFY targets and IXFR history (set by `app`).
    pub transfer: crate::transfer::ZoneTransfer,
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

    pub(crate) fn len(&self) -> usize {
        self.table.len()
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
}

/// An address RRset to place in the additional section.
#[derive(Debug)]
pub(crate) struct Additional {
    owner: Span,
    pub(crate) count: u16,
    tails: Span,
}

/// A pool: its members' pre-encoded CNAME tails and the current pick table.
#[derive(Debug)]
pub struct Pool {
    pub def: PoolDef,
    /// Indexed like `def.members`.
    pub(crate) entries: Vec<PoolEntry>,
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

    /// The zone's records, member CNAMEs included, as a transfer or `check` sees them.
    pub fn all_records(&self) -> Vec<Record> {
        let mut records = self.records.clone();
        records.extend(self.members.iter().map(Member::cname_record));
        records
    }
}

impl Pool {
    /// Publishes a new table from `(effective, configured)` weights, one per pool member in
    /// order (both scaled by `health::WEIGHT_SCALE`).
    pub fn publish(&self, weights: &[(u64, u64)]) {
        let triples = weights
            .iter()
            .enumerate()
            .map(|(slot, &(eff, conf))| (slot as u32, eff, conf));
        self.table.store(Arc::new(PickTable::build(triples)));
    }
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
    /// Loads every zone of the config and builds the snapshot. All errors of all files are
    /// returned together.
    pub fn load(config: &Config) -> Result<Snapshot, Vec<Diagnostic>> {
        let zones = load_zones(config)?;
        Ok(Snapshot::build(
            zones,
            config.identity.as_deref(),
            config.version.as_deref(),
            None,
        ))
    }

    /// Builds answer tables from validated zone data; with `metrics`, picks are counted.
    pub fn build(
        zones: Vec<ZoneData>,
        identity: Option<&str>,
        version: Option<&str>,
        metrics: Option<&Metrics>,
    ) -> Snapshot {
        let built: Vec<Zone> = zones.into_iter().map(|data| build_zone(data, metrics)).collect();
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
            chaos_identity: identity.map(chaos_tail),
            chaos_version: version.map(chaos_tail),
            tsig_keys: Vec::new(),
        }
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

    /// The zones, for `app` to attach transfer settings before publishing.
    pub fn zones_mut(&mut self) -> &mut [Zone] {
        &mut self.zones
    }

    /// The zones served, in config order.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Number of owner names (empty non-terminals included).
    pub fn name_count(&self) -> usize {
        self.names.len()
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

/// Reads and validates every zone of the config; all errors of all files together.
pub fn load_zones(config: &Config) -> Result<Vec<ZoneData>, Vec<Diagnostic>> {
    let mut zones = Vec::new();
    let mut errors = Vec::new();
    for zone_config in &config.zones {
        match zone::load(zone_config, &config.health_defaults) {
            Ok(data) => zones.push(data),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(zones) } else { Err(errors) }
}

fn build_zone(data: ZoneData, metrics: Option<&Metrics>) -> Zone {
    let content_digest = data.content_digest();
    let ZoneData {
        origin,
        records,
        members,
        pools,
    } = data;
    let origin_key = origin.key();
    let owners = Owners::new(&records, &members);

    // Names that own no record yet need a node: pool names, and the empty non-terminals
    // between owners and the apex. A walk up from a name stops at the first ancestor that
    // owns records or is already known, so member names directly below the apex add none.
    let mut bare: Vec<Name> = pools
        .iter()
        .filter(|p| owners.find(p.name.wire()).is_none())
        .map(|p| p.name.clone())
        .collect();
    let mut bare_keys: HashSet<Box<[u8]>> = bare.iter().map(Name::key).collect();
    let mut empty_non_terminals = Vec::new();
    for name in owners.iter().map(|o| o.name()).chain(&bare) {
        for ancestor in ancestors(name.wire()) {
            // Shorter than the origin: above the zone (every name here lies inside it).
            if ancestor.len() < origin.wire().len()
                || owners.find(ancestor).is_some()
                || !bare_keys.insert(ancestor.to_ascii_lowercase().into_boxed_slice())
            {
                break;
            }
            empty_non_terminals.push(Name::from_wire_unchecked(ancestor));
        }
    }
    drop(bare_keys);
    bare.append(&mut empty_non_terminals);
    bare.sort_by(|a, b| compare_keys(a.wire(), b.wire()));

    // Nodes are the owners and the bare names merged in key order; a name's node number is
    // its rank among both.
    let node_of = |wire: &[u8]| -> Option<u32> {
        let bare_before = bare.partition_point(|b| compare_keys(b.wire(), wire).is_lt());
        let rank = match owners.search(wire) {
            Ok(k) => k,
            Err(k)
                if bare
                    .get(bare_before)
                    .is_some_and(|b| b.wire().eq_ignore_ascii_case(wire)) =>
            {
                k
            }
            Err(_) => return None,
        };
        Some((rank + bare_before) as u32)
    };

    // Sized up front (every owner name once, every record's tail, CNAME chase keys at most
    // as long as their targets), so the arena does not double its way past what it needs.
    let expected_bytes: usize = owners.iter().map(|o| o.name().wire().len()).sum::<usize>()
        + bare.iter().map(|n| n.wire().len()).sum::<usize>()
        + records
            .iter()
            .map(|r| 10 + r.rdata.len() * if r.rtype == rtype::CNAME { 2 } else { 1 })
            .sum::<usize>()
        + members.iter().map(|m| 10 + m.target.wire().len()).sum::<usize>();
    let mut arena = Arena {
        bytes: Vec::with_capacity(expected_bytes),
        overflowed: false,
    };
    let mut rrset_table: Vec<RRset> = Vec::with_capacity(owners.len());
    let mut additionals: Vec<Additional> = Vec::new();
    let mut nodes = Vec::with_capacity(owners.len() + bare.len());
    // One encoding buffer, reused for every RRset.
    let mut tails = Vec::new();
    let (mut next_owner, mut next_bare) = (0, 0);
    while next_owner < owners.len() || next_bare < bare.len() {
        let owner = (next_owner < owners.len())
            .then(|| owners.owner(next_owner))
            .filter(|o| {
                bare.get(next_bare)
                    .is_none_or(|b| compare_keys(o.name().wire(), b.wire()).is_lt())
            });
        let name = match owner {
            Some(o) => {
                next_owner += 1;
                o.name()
            }
            None => {
                next_bare += 1;
                &bare[next_bare - 1]
            }
        };
        let name_span = arena.push(name.wire());
        let rrsets_start = rrset_table.len() as u32;
        for (t, items) in owner.iter().flat_map(|o| o.rrsets()) {
            tails.clear();
            let additional_start = additionals.len() as u32;
            for &i in items {
                let r = owners.item(i);
                encode_tail(&mut tails, t, rtype::CLASS_IN, r.ttl, r.rdata);
                let target = match t {
                    rtype::NS => Some(r.rdata),
                    rtype::MX => r.rdata.get(2..),
                    rtype::SRV => r.rdata.get(6..),
                    _ => None,
                };
                let Some(target) = target.filter(|t| key_is_subdomain(&t.to_ascii_lowercase(), &origin_key))
                else {
                    continue;
                };
                let Some(glue_owner) = owners.find(target) else {
                    continue;
                };
                for address in [rtype::A, rtype::AAAA].iter().filter_map(|&t| glue_owner.get(t)) {
                    let mut glue = Vec::new();
                    for &a in address {
                        let a = owners.item(a);
                        encode_tail(&mut glue, a.rtype, rtype::CLASS_IN, a.ttl, a.rdata);
                    }
                    additionals.push(Additional {
                        owner: arena.push(glue_owner.name().wire()),
                        count: address.len() as u16,
                        tails: arena.push(&glue),
                    });
                }
            }
            let chase = (t == rtype::CNAME)
                .then(|| owners.item(items[0]).rdata.to_ascii_lowercase())
                .filter(|target| key_is_subdomain(target, &origin_key))
                .map_or(Span::default(), |target| arena.push(&target));
            rrset_table.push(RRset {
                rtype: t,
                count: items.len() as u16,
                tails: arena.push(&tails),
                chase,
                additional_start,
                additional_len: additionals.len() as u32 - additional_start,
            });
        }
        // The topmost cut among this node and its ancestors below the apex.
        let cut = owners
            .cut_above(name.wire(), &origin)
            .or_else(|| owners.is_cut(name.wire(), &origin).then_some(name.wire()))
            .and_then(node_of);
        let wildcard = name.wildcard_child().and_then(|w| node_of(w.wire()));
        let pool = pools
            .iter()
            .position(|p| p.name.wire().eq_ignore_ascii_case(name.wire()))
            .map(|p| p as u32);
        nodes.push(Node {
            name: name_span,
            rrsets_start,
            rrsets_len: rrset_table.len() as u32 - rrsets_start,
            cut: cut.unwrap_or(NO_INDEX),
            wildcard: wildcard.unwrap_or(NO_INDEX),
            pool: pool.unwrap_or(NO_INDEX),
        });
    }

    let apex_soa = owners
        .find(origin.wire())
        .and_then(|apex| apex.get(rtype::SOA).map(|items| apex.item(items[0])));
    let (negative_soa, serial) = match apex_soa {
        Some(soa) => {
            let minimum = soa.rdata.len().checked_sub(4).map_or(0, |at| {
                u32::from_be_bytes([
                    soa.rdata[at],
                    soa.rdata[at + 1],
                    soa.rdata[at + 2],
                    soa.rdata[at + 3],
                ])
            });
            let serial = soa.rdata.len().checked_sub(20).map_or(0, |at| {
                u32::from_be_bytes([
                    soa.rdata[at],
                    soa.rdata[at + 1],
                    soa.rdata[at + 2],
                    soa.rdata[at + 3],
                ])
            });
            let mut tail = Vec::new();
            encode_tail(
                &mut tail,
                rtype::SOA,
                rtype::CLASS_IN,
                soa.ttl.min(minimum),
                soa.rdata,
            );
            (tail.into_boxed_slice(), serial)
        }
        // Validation guarantees an SOA; an empty tail keeps the builder total anyway.
        None => (Box::default(), 0),
    };

    let zone_label = origin.to_string();
    let mut built_pools = Vec::with_capacity(pools.len());
    for def in pools {
        let pool_label = def.name.to_string();
        // Large pools count picks per pool, not per member (see metrics).
        let per_member_series = def.members.len() <= crate::metrics::PER_MEMBER_SERIES_LIMIT;
        let mut entries = Vec::with_capacity(def.members.len());
        for &m in &def.members {
            let member = &members[m];
            // The member's node holds exactly one record, its CNAME (members never share a
            // name with the zone file); its RDATA and chase key serve the pool too.
            let cname = node_of(member.name.wire())
                .and_then(|n| nodes.get(n as usize))
                .and_then(|node| {
                    node.rrsets_in(&rrset_table)
                        .iter()
                        .find(|r| r.rtype == rtype::CNAME)
                });
            let (target, chase) = match cname {
                Some(rrset) if rrset.tails.len >= 10 => (
                    Span {
                        start: rrset.tails.start + 10,
                        len: rrset.tails.len - 10,
                    },
                    rrset.chase,
                ),
                // Unreachable for validated data; encode the target on its own then.
                _ => (
                    arena.push(member.target.wire()),
                    if member.target.is_subdomain_of(&origin) {
                        arena.push(&member.target.key())
                    } else {
                        Span::default()
                    },
                ),
            };
            let picks = metrics.map(|m| {
                let label = if per_member_series {
                    member.label()
                } else {
                    "*".into()
                };
                m.pick_counter(&zone_label, &pool_label, &label)
            });
            entries.push(PoolEntry { target, chase, picks });
        }
        let pool = Pool {
            def,
            entries,
            table: ArcSwap::from_pointee(PickTable::default()),
        };
        // Until the health checker has a say, every member counts at its configured weight.
        let configured: Vec<(u64, u64)> = pool
            .def
            .members
            .iter()
            .map(|&m| {
                let w = u64::from(members[m].weight) * crate::health::WEIGHT_SCALE;
                (w, w)
            })
            .collect();
        pool.publish(&configured);
        built_pools.push(pool);
    }
    if arena.overflowed {
        tracing::error!(zone = %origin, "zone tables pass 4 GiB: some answers will be empty");
    }

    rrset_table.shrink_to_fit();
    additionals.shrink_to_fit();

    Zone {
        origin,
        serial,
        content_digest,
        nodes,
        rrsets: rrset_table,
        additionals,
        bytes: arena.bytes.into_boxed_slice(),
        negative_soa,
        pools: built_pools,
        members,
        records,
        transfer: Default::default(),
    }
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
