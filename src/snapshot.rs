//! The immutable Snapshot: every served zone turned into pre-encoded answer tables, built off
//! the request path and published whole through one `ArcSwap`.
//!
//! Building does all the slow work once per load: grouping into RRsets, finding empty
//! non-terminals, delegation cuts and wildcards, encoding each record's type/class/TTL/RDATA,
//! and the glue for referrals. The request path (`server::answer`) only looks up and copies.
//! Pools carry their own `ArcSwap<PickTable>` so health changes republish a pool's table
//! without rebuilding the snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pick::PickTable;
use crate::zone::members::{Member, PoolDef};
use crate::zone::name::Name;
use crate::zone::{self, Diagnostic, Record, ZoneData, rtype};

/// Hash map keyed by lowercased wire names; the hasher is seeded randomly per process so
/// hostile query names cannot be chosen to collide.
pub(crate) type NameMap<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// Everything a query can see, consistent with itself.
#[derive(Debug)]
pub struct Snapshot {
    /// Every name of every zone -> (zone index, node index). A name lives in the deepest zone
    /// that encloses it.
    pub(crate) names: NameMap<(u32, u32)>,
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
    /// SOA tail for negative answers, TTL = min(SOA TTL, MINIMUM) (RFC 2308 §3).
    pub(crate) negative_soa: Box<[u8]>,
    pub pools: Vec<Pool>,
    pub members: Vec<Member>,
    /// The records as loaded, for differential tests, transfers and `check`.
    pub records: Vec<Record>,
    /// Transfer ACL, NOTIFY targets and IXFR history (set by `app`).
    pub transfer: crate::transfer::ZoneTransfer,
}

/// One owner name in a zone (empty non-terminals included, with no RRsets).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: Name,
    pub(crate) rrsets: Box<[RRset]>,
    /// The topmost delegation at or above this node, below the apex.
    pub(crate) cut: Option<u32>,
    /// The `*` child of this node, for RFC 4592 synthesis.
    pub(crate) wildcard: Option<u32>,
    /// The pool whose shared name this is.
    pub(crate) pool: Option<u32>,
}

/// One RRset, pre-encoded.
#[derive(Debug)]
pub(crate) struct RRset {
    pub(crate) rtype: u16,
    pub(crate) count: u16,
    /// `count` record tails back to back: TYPE CLASS TTL RDLENGTH RDATA.
    pub(crate) tails: Box<[u8]>,
    /// For a CNAME inside the zone: the target's lookup key, to follow the chain.
    pub(crate) chase: Option<Box<[u8]>>,
    /// Address records of in-zone names this RRset refers to (NS, MX, SRV targets).
    pub(crate) additional: Box<[Additional]>,
}

/// An address RRset to place in the additional section.
#[derive(Debug)]
pub(crate) struct Additional {
    pub(crate) owner: Name,
    pub(crate) count: u16,
    pub(crate) tails: Box<[u8]>,
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
    pub(crate) tail: Box<[u8]>,
    pub(crate) chase: Option<Box<[u8]>>,
    /// This member's pick counter (same series across reloads: same labels).
    pub(crate) picks: Option<prometheus::IntCounter>,
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
        let origins: Vec<Box<[u8]>> = zones.iter().map(|z| z.origin.key()).collect();
        let mut names: NameMap<(u32, u32)> = NameMap::default();
        let mut built = Vec::with_capacity(zones.len());
        for (zone_index, data) in zones.into_iter().enumerate() {
            let zone = build_zone(data, metrics);
            for (node_index, node) in zone.nodes.iter().enumerate() {
                let key = node.name.key();
                // The deepest configured zone enclosing the name answers for it.
                let owner_zone = origins
                    .iter()
                    .enumerate()
                    .filter(|(_, origin)| key_is_subdomain(&key, origin))
                    .max_by_key(|(_, origin)| origin.len())
                    .map(|(i, _)| i);
                if owner_zone == Some(zone_index) {
                    names.insert(key, (zone_index as u32, node_index as u32));
                }
            }
            built.push(zone);
        }
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

/// Owner name -> (name as written, RRsets by type).
type RecordsByName<'r> = BTreeMap<Box<[u8]>, (Name, BTreeMap<u16, Vec<&'r Record>>)>;

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

    // Owner names with their RRsets, plus every empty non-terminal up to the apex.
    let mut by_name: RecordsByName<'_> = BTreeMap::new();
    for record in &records {
        by_name
            .entry(record.name.key())
            .or_insert_with(|| (record.name.clone(), BTreeMap::new()))
            .1
            .entry(record.rtype)
            .or_default()
            .push(record);
    }
    for pool in &pools {
        by_name
            .entry(pool.name.key())
            .or_insert_with(|| (pool.name.clone(), BTreeMap::new()));
    }
    let owners: Vec<Name> = by_name.values().map(|(name, _)| name.clone()).collect();
    for name in owners {
        let mut parent = name.parent();
        while let Some(p) = parent {
            if !p.is_subdomain_of(&origin) {
                break;
            }
            by_name
                .entry(p.key())
                .or_insert_with(|| (p.clone(), BTreeMap::new()));
            parent = p.parent();
        }
    }
    let index: HashMap<&[u8], u32> = by_name
        .keys()
        .enumerate()
        .map(|(i, key)| (&key[..], i as u32))
        .collect();

    let is_cut = |key: &[u8], types: &BTreeMap<u16, Vec<&Record>>| {
        key != &origin_key[..] && types.contains_key(&rtype::NS)
    };

    let address_additional = |target: &Name| -> Vec<Additional> {
        let Some((owner, types)) = by_name.get(&target.key()) else {
            return Vec::new();
        };
        [rtype::A, rtype::AAAA]
            .iter()
            .filter_map(|t| types.get(t))
            .map(|records| {
                let mut tails = Vec::new();
                for r in records {
                    encode_tail(&mut tails, r.rtype, rtype::CLASS_IN, r.ttl, &r.rdata);
                }
                Additional {
                    owner: owner.clone(),
                    count: records.len() as u16,
                    tails: tails.into(),
                }
            })
            .collect()
    };

    let mut nodes = Vec::with_capacity(by_name.len());
    for (key, (name, types)) in &by_name {
        let mut rrsets = Vec::with_capacity(types.len());
        for (&t, records) in types {
            let mut tails = Vec::new();
            let mut additional = Vec::new();
            for r in records {
                encode_tail(&mut tails, t, rtype::CLASS_IN, r.ttl, &r.rdata);
                let target = match t {
                    rtype::NS => Some(&r.rdata[..]),
                    rtype::MX => r.rdata.get(2..),
                    rtype::SRV => r.rdata.get(6..),
                    _ => None,
                };
                if let Some(target) = target {
                    let target = Name::from_wire_unchecked(target);
                    if target.is_subdomain_of(&origin) {
                        additional.extend(address_additional(&target));
                    }
                }
            }
            let chase = (t == rtype::CNAME)
                .then(|| Name::from_wire_unchecked(&records[0].rdata))
                .filter(|target| target.is_subdomain_of(&origin))
                .map(|target| target.key());
            rrsets.push(RRset {
                rtype: t,
                count: records.len() as u16,
                tails: tails.into(),
                chase,
                additional: additional.into(),
            });
        }
        // The topmost cut among this node and its ancestors below the apex.
        let mut cut = None;
        let mut cursor = Some(name.clone());
        while let Some(n) = cursor {
            let k = n.key();
            if k == origin_key {
                break;
            }
            if let Some((_, t)) = by_name.get(&k) {
                if is_cut(&k, t) {
                    cut = index.get(&k[..]).copied();
                }
            }
            cursor = n.parent();
        }
        let wildcard = name
            .wildcard_child()
            .and_then(|w| index.get(&w.key()[..]).copied());
        let pool = pools.iter().position(|p| p.name.key() == *key).map(|p| p as u32);
        nodes.push(Node {
            name: name.clone(),
            rrsets: rrsets.into(),
            cut,
            wildcard,
            pool,
        });
    }

    let apex_soa = by_name
        .get(&origin_key)
        .and_then(|(_, types)| types.get(&rtype::SOA))
        .and_then(|records| records.first().copied());
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
                &soa.rdata,
            );
            (tail.into_boxed_slice(), serial)
        }
        // Validation guarantees an SOA; an empty tail keeps the builder total anyway.
        None => (Box::default(), 0),
    };

    let pools = pools
        .into_iter()
        .map(|def| {
            let entries = def
                .members
                .iter()
                .map(|&m| {
                    let member = &members[m];
                    let mut tail = Vec::new();
                    encode_tail(
                        &mut tail,
                        rtype::CNAME,
                        rtype::CLASS_IN,
                        def.ttl,
                        member.target.wire(),
                    );
                    let chase = member
                        .target
                        .is_subdomain_of(&origin)
                        .then(|| member.target.key());
                    // Large pools count picks per pool, not per member (see metrics).
                    let label = if def.members.len() > crate::metrics::PER_MEMBER_SERIES_LIMIT {
                        "*"
                    } else {
                        member.label.as_str()
                    };
                    let picks =
                        metrics.map(|m| m.pick_counter(&origin.to_string(), &def.name.to_string(), label));
                    PoolEntry {
                        tail: tail.into(),
                        chase,
                        picks,
                    }
                })
                .collect();
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
            pool
        })
        .collect();

    Zone {
        origin,
        serial,
        content_digest,
        nodes,
        negative_soa,
        pools,
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
