//! Building one zone's answer tables from validated zone data, in named steps: the nodes to
//! create (owners, pool names, empty non-terminals), each node's RRsets encoded into the
//! arena with their glue, the negative-answer SOA, and the pools.

use std::collections::HashSet;

use arc_swap::ArcSwap;

use super::{
    Additional, Arena, NO_INDEX, Node, Nsec3Entry, NsecEntry, Pool, PoolEntry, RRset, Span, Zone, ZoneDnssec,
    encode_tail, key_is_subdomain,
};
use crate::dnssec::Signed;
use crate::metrics::Metrics;
use crate::pick::{PickTable, WEIGHT_SCALE};
use crate::wire;
use crate::zone::members::{Member, PoolDef};
use crate::zone::name::Name;
use crate::zone::owners::{Owner, Owners, ancestors, compare_keys};
use crate::zone::{ZoneData, carrier, rtype};

/// Builds one zone, with its signatures when `signed`; with `metrics`, its pools' picks are
/// counted.
pub(super) fn build_zone(data: ZoneData, signed: Option<&Signed>, metrics: Option<&Metrics>) -> Zone {
    let content_digest = data.digest();
    let ZoneData {
        origin,
        mut records,
        members,
        pools,
        dynamic,
        transferred,
        member_texts,
        ..
    } = data;
    // The dynamic records are served like the files' (control checked that they own names of
    // their own); they are kept apart again below.
    let file_records = records.len();
    records.extend(dynamic.iter().cloned());
    // DNSKEY, CDS, CDNSKEY and the NSEC chain are served like the rest; `Zone::all_records`
    // reads them back from the tables.
    // So are the pool records (`zone::carrier`): signing makes them in a signed zone, with
    // each alternative's RRSIGs inside.
    // A secondary's come as transferred, among `records`.
    match signed {
        // NSEC3 records own hashed names, which are no nodes of the zone (RFC 5155 §7.2.8:
        // a query for one is answered as if it did not exist); `ZoneDnssec::nsec3` has them.
        Some(signed) => records.extend(signed.records.iter().filter(|r| r.rtype != rtype::NSEC3).cloned()),
        None if !transferred => records.extend(carrier::records(&members, &pools, None)),
        None => {}
    }
    let owners = Owners::new(&records, &members);
    let bare = bare_names(&origin, &owners, &pools);
    let numbering = Numbering {
        owners: &owners,
        bare: &bare,
    };
    let mut tables = Tables {
        arena: Arena {
            bytes: Vec::with_capacity(
                expected_arena_bytes(&owners, &bare, &records, &members)
                    + signed.map_or(0, |s| s.signature_bytes),
            ),
            overflowed: false,
        },
        rrsets: Vec::with_capacity(owners.len()),
        additionals: Vec::new(),
        nodes: Vec::with_capacity(owners.len() + bare.len()),
        origin_key: origin.key(),
        tails: Vec::new(),
        signed,
    };
    for (owner, name) in numbering.in_order() {
        tables.push_node(&origin, &numbering, &pools, owner, name);
    }
    let (negative_soa, serial) = negative_soa_and_serial(&origin, &owners);
    let pools = tables.pools(&origin, &numbering, pools, &members, metrics);
    let dnssec = signed.map(|signed| tables.dnssec(&origin, signed));
    if tables.arena.overflowed {
        tracing::error!(zone = %origin, "zone tables pass 4 GiB: some answers will be empty");
    }
    let Tables {
        arena,
        mut rrsets,
        mut additionals,
        nodes,
        ..
    } = tables;
    rrsets.shrink_to_fit();
    additionals.shrink_to_fit();
    records.truncate(file_records);
    Zone {
        origin,
        serial,
        content_digest,
        nodes,
        rrsets,
        additionals,
        bytes: arena.bytes.into_boxed_slice(),
        negative_soa,
        pools,
        members,
        records,
        dynamic,
        transfer: Default::default(),
        dnssec,
        transferred,
        member_texts,
    }
}

/// Names that own no record yet need a node, sorted by key: pool names, and the empty
/// non-terminals between owners and the apex. A walk up from a name stops at the first
/// ancestor that owns records or is already known, so member names directly below the apex
/// add none.
fn bare_names(origin: &Name, owners: &Owners<'_>, pools: &[PoolDef]) -> Vec<Name> {
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
    bare
}

/// The zone's nodes: the owners and the bare names merged in key order; a name's node number
/// is its rank among both.
struct Numbering<'n, 'a> {
    owners: &'n Owners<'a>,
    bare: &'n [Name],
}

impl<'n, 'a> Numbering<'n, 'a> {
    fn node_of(&self, wire: &[u8]) -> Option<u32> {
        let bare_before = self
            .bare
            .partition_point(|b| compare_keys(b.wire(), wire).is_lt());
        let is_bare = || {
            self.bare
                .get(bare_before)
                .is_some_and(|b| b.wire().eq_ignore_ascii_case(wire))
        };
        // A name of no node (most member targets lie outside the zone) costs one hash probe:
        // the binary search for its place runs only for the few bare names.
        let rank = match self.owners.position(wire) {
            Some(k) => k,
            None if is_bare() => self.owners.search(wire).err()?,
            None => return None,
        };
        Some((rank + bare_before) as u32)
    }

    /// Every node in number order: (its owner when it has records, its name).
    fn in_order(&self) -> impl Iterator<Item = (Option<Owner<'n, 'a>>, &'n Name)> + use<'n, 'a> {
        let (owners, bare) = (self.owners, self.bare);
        let (mut next_owner, mut next_bare) = (0, 0);
        std::iter::from_fn(move || {
            if next_owner >= owners.len() && next_bare >= bare.len() {
                return None;
            }
            let owner = (next_owner < owners.len())
                .then(|| owners.owner(next_owner))
                .filter(|o| {
                    bare.get(next_bare)
                        .is_none_or(|b| compare_keys(o.name().wire(), b.wire()).is_lt())
                });
            match owner {
                Some(o) => {
                    next_owner += 1;
                    Some((Some(o), o.name()))
                }
                None => {
                    next_bare += 1;
                    Some((None, &bare[next_bare - 1]))
                }
            }
        })
    }
}

/// The arena's size, computed up front (every owner name once, every record's tail, CNAME
/// chase keys at most as long as their targets), so it does not double its way past what it
/// needs.
fn expected_arena_bytes(
    owners: &Owners<'_>,
    bare: &[Name],
    records: &[crate::zone::Record],
    members: &[Member],
) -> usize {
    owners.iter().map(|o| o.name().wire().len()).sum::<usize>()
        + bare.iter().map(|n| n.wire().len()).sum::<usize>()
        + records
            .iter()
            .map(|r| 10 + r.rdata.len() * if r.rtype == rtype::CNAME { 2 } else { 1 })
            .sum::<usize>()
        + members.iter().map(|m| 10 + m.target.wire().len()).sum::<usize>()
}

/// The tables being filled, node by node.
struct Tables<'s> {
    arena: Arena,
    rrsets: Vec<RRset>,
    additionals: Vec<Additional>,
    nodes: Vec<Node>,
    origin_key: Box<[u8]>,
    /// One encoding buffer, reused for every RRset.
    tails: Vec<u8>,
    signed: Option<&'s Signed>,
}

impl Tables<'_> {
    /// Encodes one node: its name, its RRsets with their glue, and its links (cut, wildcard,
    /// pool).
    fn push_node(
        &mut self,
        origin: &Name,
        numbering: &Numbering<'_, '_>,
        pools: &[PoolDef],
        owner: Option<Owner<'_, '_>>,
        name: &Name,
    ) {
        let name_span = self.arena.push(name.wire());
        let rrsets_start = self.rrsets.len() as u32;
        if let Some(owner) = owner {
            for (t, items) in owner.rrsets() {
                self.push_rrset(numbering.owners, t, items);
            }
        }
        let owners = numbering.owners;
        // The topmost cut among this node and its ancestors below the apex.
        let cut = owners
            .cut_above(name.wire(), origin)
            .or_else(|| owners.is_cut(name.wire(), origin).then_some(name.wire()))
            .and_then(|w| numbering.node_of(w));
        // `*.<name>` on the stack (RFC 4592): a node for every name, no allocation each.
        let mut child = [0u8; wire::MAX_NAME_LEN];
        let wildcard = child.get_mut(..name.wire().len() + 2).and_then(|child| {
            child[..2].copy_from_slice(&[1, b'*']);
            child[2..].copy_from_slice(name.wire());
            numbering.node_of(child)
        });
        let pool = pools
            .iter()
            .position(|p| p.name.wire().eq_ignore_ascii_case(name.wire()))
            .map(|p| p as u32);
        self.nodes.push(Node {
            name: name_span,
            rrsets_start,
            rrsets_len: self.rrsets.len() as u32 - rrsets_start,
            cut: cut.unwrap_or(NO_INDEX),
            wildcard: wildcard.unwrap_or(NO_INDEX),
            pool: pool.unwrap_or(NO_INDEX),
        });
    }

    /// Encodes one RRset, the address records of the in-zone names it refers to, and for a
    /// CNAME into the zone the key to follow the chain by.
    fn push_rrset(&mut self, owners: &Owners<'_>, t: u16, items: &[u32]) {
        self.tails.clear();
        let additional_start = self.additionals.len() as u32;
        for &i in items {
            let r = owners.item(i);
            encode_tail(&mut self.tails, t, rtype::CLASS_IN, r.ttl, r.rdata);
            let target = match t {
                rtype::NS => Some(r.rdata),
                rtype::MX => r.rdata.get(2..),
                rtype::SRV => r.rdata.get(6..),
                _ => None,
            };
            if let Some(target) = target {
                self.push_glue(owners, target);
            }
        }
        // Lowercased on the stack: most CNAMEs (every member's) point outside the zone and
        // need no chase key at all.
        let mut lower = [0u8; wire::MAX_NAME_LEN];
        let chase = (t == rtype::CNAME)
            .then(|| owners.item(items[0]).rdata)
            .and_then(|target| {
                let lower = lower.get_mut(..target.len())?;
                for (l, c) in lower.iter_mut().zip(target) {
                    *l = c.to_ascii_lowercase();
                }
                Some(&*lower)
            })
            .filter(|target| key_is_subdomain(target, &self.origin_key))
            .map_or(Span::default(), |target| self.arena.push(target));
        let tails = self.arena.push(&self.tails);
        let first = owners.item(items[0]);
        let (sigs, sig_count) = self.signatures(first.name.wire(), t, first.ttl);
        self.rrsets.push(RRset {
            rtype: t,
            count: items.len() as u16,
            tails,
            chase,
            additional_start,
            additional_len: self.additionals.len() as u32 - additional_start,
            sigs,
            sig_count,
        });
    }

    /// The RRSIG tails of the RRset (`owner`, `t`) at `ttl`, when the zone is signed.
    fn signatures(&mut self, owner: &[u8], t: u16, ttl: u32) -> (Span, u16) {
        let Some(signed) = self.signed else {
            return (Span::default(), 0);
        };
        match signed.signatures_of(owner, t) {
            Some(rdatas) => self.push_signatures(rdatas, ttl),
            None => (Span::default(), 0),
        }
    }

    fn push_signatures(&mut self, rdatas: &[std::sync::Arc<[u8]>], ttl: u32) -> (Span, u16) {
        let start = self.arena.bytes.len();
        encode_signatures(&mut self.arena.bytes, rdatas, ttl);
        let len = self.arena.bytes.len() - start;
        match (u32::try_from(start), u32::try_from(len)) {
            (Ok(start), Ok(len)) => (Span { start, len }, rdatas.len() as u16),
            _ => {
                self.arena.overflowed = true;
                (Span::default(), 0)
            }
        }
    }

    /// The signed zone's own tables: the NSEC owners in canonical order and the signed
    /// negative-answer SOA.
    fn dnssec(&mut self, origin: &Name, signed: &Signed) -> ZoneDnssec {
        // Each NSEC owner's canonical key, sorted: the request path finds the covering NSEC
        // by binary search over plain byte comparisons.
        let mut entries: Vec<(Vec<u8>, u32)> = (0..self.nodes.len() as u32)
            .filter(|&n| {
                let node = &self.nodes[n as usize];
                node.rrsets_in(&self.rrsets)
                    .iter()
                    .any(|r| r.rtype == rtype::NSEC)
            })
            .map(|n| {
                let span = self.nodes[n as usize].name;
                let name = &self.arena.bytes[span.start as usize..(span.start + span.len) as usize];
                let mut buf = [0u8; wire::CANONICAL_KEY_MAX];
                let len = wire::canonical_key(name, &mut buf);
                (buf[..len].to_vec(), n)
            })
            .collect();
        entries.sort_unstable();
        let mut nsec_keys = Vec::with_capacity(entries.iter().map(|(k, _)| k.len()).sum());
        let nsec_order = entries
            .into_iter()
            .map(|(key, node)| {
                let start = nsec_keys.len() as u32;
                nsec_keys.extend_from_slice(&key);
                NsecEntry {
                    node,
                    key: Span {
                        start,
                        len: key.len() as u32,
                    },
                }
            })
            .collect();
        let nsec3 = self.nsec3_table(signed);
        // The SOA's signatures again at the negative TTL, kept apart like `negative_soa`.
        let soa_sigs = signed
            .signatures_of(origin.wire(), rtype::SOA)
            .unwrap_or_default();
        let mut negative_soa_sigs = Vec::new();
        encode_signatures(&mut negative_soa_sigs, soa_sigs, signed.negative_ttl);
        ZoneDnssec {
            nsec_order,
            nsec_keys: nsec_keys.into_boxed_slice(),
            nsec3,
            negative_soa_sigs: negative_soa_sigs.into_boxed_slice(),
            negative_soa_sig_count: soa_sigs.len() as u16,
            report: signed.report.clone(),
        }
    }

    /// The NSEC3 records of `signed` in the order of their hashes (RFC 5155 §7.2: the request
    /// path finds the one that matches or covers a hash by binary search), each encoded as an
    /// RRset of its own with its RRSIGs; empty for an NSEC zone. A record whose owner is no
    /// hash is left out, and of two at one hash the first is kept (signing makes neither).
    fn nsec3_table(&mut self, signed: &Signed) -> Box<[Nsec3Entry]> {
        let mut table: Vec<Nsec3Entry> = Vec::new();
        for record in signed.records.iter().filter(|r| r.rtype == rtype::NSEC3) {
            let wire_name = record.name.wire();
            let Some(hash) = wire_name
                .get(1..1 + usize::from(wire_name[0]))
                .and_then(wire::base32hex_decode)
            else {
                continue;
            };
            let owner = self.arena.push(wire_name);
            self.tails.clear();
            encode_tail(
                &mut self.tails,
                rtype::NSEC3,
                rtype::CLASS_IN,
                record.ttl,
                &record.rdata,
            );
            let tails = self.arena.push(&self.tails);
            let (sigs, sig_count) = self.signatures(wire_name, rtype::NSEC3, record.ttl);
            table.push(Nsec3Entry {
                hash,
                owner,
                rrset: self.rrsets.len() as u32,
            });
            self.rrsets.push(RRset {
                rtype: rtype::NSEC3,
                count: 1,
                tails,
                chase: Span::default(),
                additional_start: self.additionals.len() as u32,
                additional_len: 0,
                sigs,
                sig_count,
            });
        }
        table.sort_unstable_by_key(|e| e.hash);
        table.dedup_by(|a, b| a.hash == b.hash);
        table.into_boxed_slice()
    }

    /// The A and AAAA RRsets of `target` when it lies in the zone, as additional records.
    fn push_glue(&mut self, owners: &Owners<'_>, target: &[u8]) {
        if !key_is_subdomain(&target.to_ascii_lowercase(), &self.origin_key) {
            return;
        }
        let Some(glue_owner) = owners.find(target) else {
            return;
        };
        for (t, address) in [rtype::A, rtype::AAAA]
            .iter()
            .filter_map(|&t| Some((t, glue_owner.get(t)?)))
        {
            let mut glue = Vec::new();
            for &a in address {
                let a = owners.item(a);
                encode_tail(&mut glue, a.rtype, rtype::CLASS_IN, a.ttl, a.rdata);
            }
            // Authoritative addresses carry their signatures; glue below a cut has none.
            let (sigs, sig_count) = self.signatures(glue_owner.name().wire(), t, owners.item(address[0]).ttl);
            self.additionals.push(Additional {
                owner: self.arena.push(glue_owner.name().wire()),
                count: address.len() as u16,
                tails: self.arena.push(&glue),
                sigs,
                sig_count,
            });
        }
    }

    /// The pools: each member's CNAME target shared with its node, a pick counter, and a
    /// first table at configured weights.
    fn pools(
        &mut self,
        origin: &Name,
        numbering: &Numbering<'_, '_>,
        pools: Vec<PoolDef>,
        members: &[Member],
        metrics: Option<&Metrics>,
    ) -> Vec<Pool> {
        let zone_label = origin.to_string();
        let mut built = Vec::with_capacity(pools.len());
        for (p, def) in pools.into_iter().enumerate() {
            let pool_label = def.name.to_string();
            // Large pools count picks per pool, not per member (see metrics).
            let per_member_series = def.members.len() <= crate::metrics::PER_MEMBER_SERIES_LIMIT;
            let mut entries = Vec::with_capacity(def.members.len());
            for (slot, &m) in def.members.iter().enumerate() {
                let member = &members[m];
                let (target, chase) = self.member_target(origin, numbering, member);
                let picks = metrics.map(|metrics| {
                    let label = if per_member_series {
                        member.label()
                    } else {
                        "*".into()
                    };
                    metrics.pick_counter(&zone_label, &pool_label, &label)
                });
                let (sigs, sig_count) = match self.signed.and_then(|s| s.pool_signatures.get(p)?.get(slot)) {
                    Some(rdatas) => self.push_signatures(rdatas, def.ttl),
                    None => (Span::default(), 0),
                };
                entries.push(PoolEntry {
                    target,
                    chase,
                    picks,
                    sigs,
                    sig_count,
                });
            }
            // Where each member is, for the geographic policies only.
            let geographic = def.policy.is_geographic();
            let places = def
                .members
                .iter()
                .filter(|_| geographic)
                .map(|&m| {
                    let place = members[m].place.as_deref();
                    let point = place.filter(|p| !p.latitude.is_nan()).map_or([f32::NAN; 3], |p| {
                        crate::geo::unit_vector(p.latitude, p.longitude)
                    });
                    let region = place
                        .and_then(|p| p.region.as_deref())
                        .map_or(0, crate::geo::region_code);
                    (point, region)
                })
                .collect::<Box<[_]>>();
            let by_latitude = super::latitude_index(&places);
            let pool = Pool {
                def,
                entries,
                places,
                by_latitude,
                table: ArcSwap::from_pointee(PickTable::default()),
            };
            // Until the health checker has a say, every member counts at its configured weight.
            let configured: Vec<(u64, u64)> = pool
                .def
                .members
                .iter()
                .map(|&m| {
                    let w = u64::from(members[m].weight) * WEIGHT_SCALE;
                    (w, w)
                })
                .collect();
            pool.publish(&configured);
            built.push(pool);
        }
        built
    }

    /// A member's target in wire form and its chase key: the RDATA of the member's own CNAME
    /// (members never share a name with the zone file, so their node holds exactly that one
    /// record), which the pool's answer shares.
    fn member_target(
        &mut self,
        origin: &Name,
        numbering: &Numbering<'_, '_>,
        member: &Member,
    ) -> (Span, Span) {
        let cname = numbering
            .node_of(member.name.wire())
            .and_then(|n| self.nodes.get(n as usize))
            .and_then(|node| {
                node.rrsets_in(&self.rrsets)
                    .iter()
                    .find(|r| r.rtype == rtype::CNAME)
            });
        match cname {
            Some(rrset) if rrset.tails.len >= 10 => (
                Span {
                    start: rrset.tails.start + 10,
                    len: rrset.tails.len - 10,
                },
                rrset.chase,
            ),
            // Unreachable for validated data; encode the target on its own then.
            _ => (
                self.arena.push(member.target.wire()),
                if member.target.is_subdomain_of(origin) {
                    self.arena.push(&member.target.key())
                } else {
                    Span::default()
                },
            ),
        }
    }
}

/// Appends one RRSIG record tail per RDATA, at `ttl` (the covered RRset's).
fn encode_signatures(out: &mut Vec<u8>, rdatas: &[std::sync::Arc<[u8]>], ttl: u32) {
    for rdata in rdatas {
        encode_tail(out, rtype::RRSIG, rtype::CLASS_IN, ttl, rdata);
    }
}

/// The SOA tail for negative answers, its TTL min(SOA TTL, MINIMUM) (RFC 2308 §3), and the
/// serial.
fn negative_soa_and_serial(origin: &Name, owners: &Owners<'_>) -> (Box<[u8]>, u32) {
    let apex_soa = owners
        .find(origin.wire())
        .and_then(|apex| apex.get(rtype::SOA).map(|items| apex.item(items[0])));
    let Some(soa) = apex_soa else {
        // Validation guarantees an SOA; an empty tail keeps the builder total anyway.
        return (Box::default(), 0);
    };
    let minimum = wire::soa_minimum(soa.rdata).unwrap_or(0);
    let serial = wire::soa_serial(soa.rdata).unwrap_or(0);
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
