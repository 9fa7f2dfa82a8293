//! Zone data from files: master file + members file -> validated records, members and pools.
//!
//! Everything here runs off the request path (at load and reload). Every error carries the
//! file and, where it has one, the line. It must not know about wire responses; the snapshot
//! builder turns `ZoneData` into answer tables.

pub mod carrier;
pub mod master;
pub mod members;
pub mod name;
pub(crate) mod owners;
pub mod probe_spec;
pub mod serial;
pub use crate::wire::rtype;
use crate::{diag, wire};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use crate::diag::{Diagnostic, Location};
use members::{Member, PoolDef};
use name::Name;
use owners::{Owners, compare_keys};
use probe_spec::{HealthSettings, ProbeSpec};

/// One zone's origin and the files it is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub origin: Name,
    /// RFC 1035 master file.
    pub file: PathBuf,
    /// Members file (TOML): one CNAME per member, and the pools.
    pub members: Option<PathBuf>,
    /// What reading the files may cost at most.
    pub limits: FileLimits,
    /// Directories besides the zone file's own (and those below it) that `$INCLUDE` may read.
    pub include_roots: Vec<PathBuf>,
    /// Files `$INCLUDE` must never read, whatever the roots say: the TSIG key files, so no
    /// zone edit can bring a secret into an error message.
    pub never_include: Vec<PathBuf>,
}

impl Source {
    /// A zone read from `file` (and `members`) with the default limits and no extra roots.
    pub fn new(origin: Name, file: PathBuf, members: Option<PathBuf>) -> Source {
        Source {
            origin,
            file,
            members,
            limits: FileLimits::default(),
            include_roots: Vec::new(),
            never_include: Vec::new(),
        }
    }
}

/// Bounds on what one zone's files can make a load do (`[limits]`): a few kilobytes of
/// files `$INCLUDE`ing each other can otherwise ask for billions of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Records in the zone, counting every `$INCLUDE` expansion and every member.
    pub zone_records: usize,
    /// Bytes read for the zone, counting every `$INCLUDE` expansion.
    pub zone_bytes: u64,
    /// `$INCLUDE` directives followed for one zone, counting repeats.
    pub zone_includes: usize,
    /// Errors reported per file; the rest are counted in one line.
    pub errors_per_file: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            zone_records: 10_000_000,
            zone_bytes: 1 << 30,
            zone_includes: 1_000,
            errors_per_file: 50,
        }
    }
}

/// One resource record as loaded: RDATA in uncompressed wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
    pub location: Location,
}

/// A validated zone: the zone file's records, the members (each also a CNAME record, not
/// written out here; `Zone::all_records` does that) and pools.
#[derive(Debug, Clone)]
pub struct ZoneData {
    pub origin: Name,
    pub records: Vec<Record>,
    pub members: Vec<Member>,
    pub pools: Vec<PoolDef>,
    /// Records added by RFC 2136 UPDATE (ACME challenge TXT values), kept apart from the
    /// files' records: they are never written into an operator's file.
    pub dynamic: Vec<Record>,
    /// What signing adds to the content (`dnssec::KeySet::digest`: the keys and their
    /// states), set by the control plane before serials are chosen; 0 for an unsigned zone.
    pub signing_digest: u64,
    /// A secondary's zone as transferred: its pool records (`carrier`) are among `records`,
    /// kept exactly as the primary wrote (and signed) them, not written again.
    pub transferred: bool,
    /// Where each member came from in the members file, for the next load to reuse.
    pub member_texts: members::MemberTexts,
    /// `content_digest` as the serial policy computed it (`remember_digest`), so the build
    /// does not hash a large zone again; None whenever it has not been computed for the
    /// data as it stands.
    pub(crate) digest_memo: Option<u64>,
}

impl ZoneData {
    /// The apex SOA record.
    fn soa_mut(&mut self) -> Option<&mut Record> {
        let origin = self.origin.key();
        self.records
            .iter_mut()
            .find(|r| r.rtype == rtype::SOA && r.name.key() == origin)
    }

    /// The SOA serial as loaded (or as set by `set_serial`).
    pub fn serial(&self) -> u32 {
        let origin = self.origin.key();
        self.records
            .iter()
            .find(|r| r.rtype == rtype::SOA && r.name.key() == origin)
            .and_then(|soa| wire::soa_serial(&soa.rdata))
            .unwrap_or(0)
    }

    /// Replaces the SOA serial (RDATA: MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM).
    pub fn set_serial(&mut self, serial: u32) {
        if let Some(soa) = self.soa_mut() {
            wire::set_soa_serial(&mut soa.rdata, serial);
        }
    }

    /// A digest of the zone's content, the SOA serial excluded: equal digests mean nothing a
    /// resolver could see has changed.
    ///
    /// Order does not matter (records are unique after validation, and the per-record hashes
    /// are summed), so no sorted copy of a 100,000-record zone is made to compute it.
    /// Computes `content_digest` and keeps it for `digest`: call once the content is final
    /// (the serial, which may still change, is not part of it); nothing changes the content
    /// between the serial policy, which calls this, and the build, which reads it.
    pub fn remember_digest(&mut self) -> u64 {
        let digest = self.content_digest();
        self.digest_memo = Some(digest);
        digest
    }

    /// `content_digest`, as remembered when it was.
    pub fn digest(&self) -> u64 {
        self.digest_memo.unwrap_or_else(|| self.content_digest())
    }

    pub fn content_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let records = self
            .records
            .iter()
            .map(|r| record_hash(&r.name, r.rtype, r.ttl, &r.rdata));
        let member_cnames = self
            .members
            .iter()
            .map(|m| record_hash(&m.name, rtype::CNAME, m.ttl, m.target.wire()));
        let dynamic = self
            .dynamic
            .iter()
            .map(|r| record_hash(&r.name, r.rtype, r.ttl, &r.rdata));
        let sum = records
            .chain(member_cnames)
            .chain(dynamic)
            .fold(0u64, u64::wrapping_add);
        let mut hasher = std::hash::DefaultHasher::new();
        let count = self.records.len() + self.members.len() + self.dynamic.len();
        (sum, count).hash(&mut hasher);
        if self.signing_digest != 0 {
            self.signing_digest.hash(&mut hasher);
        }
        // The pool records (`carrier`) carry cert policies and probe settings too.
        for pool in &self.pools {
            (pool.name.key(), pool.ttl, &pool.members, pool.cert_policy).hash(&mut hasher);
            (pool.policy, pool.nearest_k).hash(&mut hasher);
        }
        let mut key = [0u8; wire::MAX_NAME_LEN];
        // Each distinct probe setting hashed once (members share them), its hash fed per member.
        let mut spec_hashes: HashMap<*const ProbeSpec, u64> = HashMap::new();
        for member in &self.members {
            // `name.key()` lowercased on the stack: a slice hashes as its boxed copy does.
            let wire = member.name.wire();
            let key = &mut key[..wire.len().min(wire::MAX_NAME_LEN)];
            for (to, from) in key.iter_mut().zip(wire) {
                *to = from.to_ascii_lowercase();
            }
            let spec = *spec_hashes
                .entry(std::sync::Arc::as_ptr(&member.probe))
                .or_insert_with(|| {
                    let mut spec = std::hash::DefaultHasher::new();
                    member.probe.hash(&mut spec);
                    spec.finish()
                });
            (&*key, member.weight, spec).hash(&mut hasher);
            if let Some(place) = &member.place {
                (place.latitude.to_bits(), place.longitude.to_bits(), &place.region).hash(&mut hasher);
            }
        }
        hasher.finish()
    }
}

/// One record's part of `ZoneData::content_digest`. Keyed SipHash with fixed keys: stable
/// within the process and across restarts of one build, which is what the serial state file
/// compares.
fn record_hash(name: &Name, rtype: u16, ttl: u32, rdata: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    // As `(name.key(), rtype, ttl).hash(..)` hashes, without allocating the key: a slice is
    // its length, then its octets (digests stored by earlier builds stay valid).
    let wire = name.wire();
    let mut key = [0u8; 255];
    let key = &mut key[..wire.len().min(255)];
    for (to, from) in key.iter_mut().zip(wire) {
        *to = from.to_ascii_lowercase();
    }
    hasher.write_usize(key.len());
    hasher.write(key);
    (rtype, ttl).hash(&mut hasher);
    match wire::soa_serial_offset(rdata).filter(|_| rtype == rtype::SOA) {
        Some(serial_at) => {
            rdata[..serial_at].hash(&mut hasher);
            rdata[serial_at + 4..].hash(&mut hasher);
        }
        None => rdata.hash(&mut hasher),
    }
    hasher.finish()
}

/// Loads and validates one configured zone.
pub fn load(zone: &Source, health_defaults: &HealthSettings) -> Result<ZoneData, Vec<Diagnostic>> {
    load_reusing(zone, health_defaults, None)
}

/// `load`, reusing the members of `previous` (the same zone's last load) whose `[[member]]`
/// table text is unchanged (`members::parse_reusing`).
pub fn load_reusing(
    zone: &Source,
    health_defaults: &HealthSettings,
    previous: Option<members::Reuse<'_>>,
) -> Result<ZoneData, Vec<Diagnostic>> {
    let cap = |errors| diag::cap_per_file(errors, zone.limits.errors_per_file);
    let records = master::parse_source(zone).map_err(cap)?;
    let (members, pools, member_texts) = match &zone.members {
        Some(path) => members::load(path, &zone.origin, health_defaults, previous).map_err(cap)?,
        None => Default::default(),
    };
    if records.len() + members.len() > zone.limits.zone_records {
        let path = zone.members.as_deref().unwrap_or(&zone.file);
        return Err(vec![Diagnostic::file(
            path,
            format!(
                "zone {}: {} records and {} members, above limits.zone-records = {}",
                zone.origin,
                records.len(),
                members.len(),
                zone.limits.zone_records
            ),
        )]);
    }
    let mut data = assemble(&zone.origin, &zone.file, records, members, pools).map_err(cap)?;
    data.member_texts = member_texts;
    Ok(data)
}

/// The zone-level checks of `load`, on records and members already parsed (`file` is the zone
/// file, for errors that belong to no line). Tests and the fuzz targets call it on text held in
/// memory.
pub fn assemble(
    origin: &Name,
    file: &Path,
    mut records: Vec<Record>,
    members: Vec<Member>,
    pools: Vec<PoolDef>,
) -> Result<ZoneData, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    check_member_names(&records, &members, &pools, &mut errors);
    check_pool_targets(origin, &members, &pools, &mut errors);
    check_pool_record_owners(&records, &pools, &mut errors);
    validate(origin, &mut records, &members, &pools, file, &mut errors);
    if errors.is_empty() {
        Ok(ZoneData {
            origin: origin.clone(),
            records,
            members,
            pools,
            dynamic: Vec::new(),
            signing_digest: 0,
            transferred: false,
            member_texts: Default::default(),
            digest_memo: None,
        })
    } else {
        Err(errors)
    }
}

/// `_pool.<pool>` holds the pool's records (`carrier`): the files may not use that name.
fn check_pool_record_owners(records: &[Record], pools: &[PoolDef], errors: &mut Vec<Diagnostic>) {
    let owners: HashSet<Box<[u8]>> = pools
        .iter()
        .filter_map(|p| carrier::owner(&p.name))
        .map(|n| n.key())
        .collect();
    if owners.is_empty() {
        return;
    }
    for r in records {
        if owners.contains(&r.name.key()) {
            errors.push(Diagnostic::at(
                r.location.clone(),
                format!(
                    "{}: this name holds the pool's records for secondaries; use another",
                    r.name
                ),
            ));
        }
    }
}

/// Reads a zone or members file: a regular file of at most `master::MAX_ZONE_FILE_BYTES`.
/// Anything else is refused before it is opened: `/dev/zero` reports length 0 yet never ends,
/// and opening a FIFO blocks the reload until someone writes to it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    crate::file_set::read(path, master::MAX_ZONE_FILE_BYTES)
}

/// A member or pool label must not name anything the zone file already defines.
fn check_member_names(
    records: &[Record],
    members: &[Member],
    pools: &[PoolDef],
    errors: &mut Vec<Diagnostic>,
) {
    let mut defined: HashMap<Box<[u8]>, &Location> = HashMap::new();
    for record in records {
        defined.entry(record.name.key()).or_insert(&record.location);
    }
    for member in members {
        if let Some(other) = defined.get(&member.name.key()) {
            errors.push(Diagnostic::at(
                member.location.clone(),
                format!(
                    "member label {} collides with a record of the zone file at {other}",
                    member.name
                ),
            ));
        }
    }
    for pool in pools {
        if let Some(other) = defined.get(&pool.name.key()) {
            errors.push(Diagnostic::at(
                pool.location.clone(),
                format!(
                    "pool name {} collides with a record of the zone file at {other}",
                    pool.name
                ),
            ));
        }
    }
}

/// A member target that is a pool name of the same zone would make the pool answer itself.
fn check_pool_targets(origin: &Name, members: &[Member], pools: &[PoolDef], errors: &mut Vec<Diagnostic>) {
    let pool_names: HashSet<Box<[u8]>> = pools.iter().map(|p| p.name.key()).collect();
    for member in members {
        if member.target.is_subdomain_of(origin) && pool_names.contains(&member.target.key()) {
            errors.push(Diagnostic::at(
                member.location.clone(),
                format!(
                    "member target {} is a pool name of this zone: that would loop",
                    member.target
                ),
            ));
        }
    }
}

/// A node of the walk in `check_pool_loops`: a pool's shared name, or an owner name of the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkNode {
    Pool(usize),
    Owner(usize),
}

/// Where `check_pool_loops` is with each node.
struct WalkStates {
    pools: Vec<u8>,
    owners: Vec<u8>,
}

impl WalkStates {
    fn of(&mut self, node: WalkNode) -> &mut u8 {
        match node {
            WalkNode::Pool(p) => &mut self.pools[p],
            WalkNode::Owner(k) => &mut self.owners[k],
        }
    }
}

/// A pool's answer must not lead back to a pool: member target -> CNAMEs inside the zone ->
/// another pool -> its members ... would make every answer a chain cut at the request path's
/// limit. Member targets that are themselves pool names are `check_pool_targets`' message;
/// pure CNAME loops are `check_cname_loops`'. One depth-first walk from every pool:
/// O((names + members) log names), no copy of any name.
fn check_pool_loops(
    owners: &Owners<'_>,
    members: &[Member],
    pools: &[PoolDef],
    errors: &mut Vec<Diagnostic>,
) {
    if pools.is_empty() {
        return;
    }
    // Pool names in key order, for a binary search without lowercasing a copy.
    let mut pools_by_name: Vec<usize> = (0..pools.len()).collect();
    pools_by_name.sort_by(|&a, &b| compare_keys(pools[a].name.wire(), pools[b].name.wire()));
    let pool_named = |wire: &[u8]| {
        pools_by_name
            .binary_search_by(|&p| compare_keys(pools[p].name.wire(), wire))
            .ok()
            .map(|at| pools_by_name[at])
    };
    // A pool name wins over an owner of the same name, as at query time.
    let node_named = |wire: &[u8]| {
        pool_named(wire)
            .map(WalkNode::Pool)
            .or_else(|| owners.position(wire).map(WalkNode::Owner))
    };
    let name_of = |node: WalkNode| match node {
        WalkNode::Pool(p) => pools[p].name.to_string(),
        WalkNode::Owner(k) => owners.owner(k).name().to_string(),
    };

    /// 1 = on the walk now, 2 = every path from it explored.
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut states = WalkStates {
        pools: vec![0; pools.len()],
        owners: vec![0; owners.len()],
    };
    for root in 0..pools.len() {
        let root = WalkNode::Pool(root);
        if *states.of(root) != 0 {
            continue;
        }
        // (node, next successor to try, the member whose pick led here)
        let mut stack: Vec<(WalkNode, usize, Option<usize>)> = vec![(root, 0, None)];
        *states.of(root) = ON_PATH;
        while let Some(top) = stack.last_mut() {
            let (node, next, _) = *top;
            top.1 += 1;
            // Successors: a pool's members (skipping direct pool targets, reported elsewhere),
            // or a name's CNAME target. Names that are neither lead nowhere.
            let successor: Option<(Option<WalkNode>, Option<usize>)> = match node {
                WalkNode::Pool(p) => match pools[p].members.get(next) {
                    Some(&m) if pool_named(members[m].target.wire()).is_some() => continue,
                    Some(&m) => Some((node_named(members[m].name.wire()), Some(m))),
                    None => None,
                },
                WalkNode::Owner(k) if next == 0 => {
                    let owner = owners.owner(k);
                    owner
                        .get(rtype::CNAME)
                        .map(|items| (node_named(owner.item(items[0]).rdata), None))
                }
                WalkNode::Owner(_) => None,
            };
            let Some((successor, via)) = successor else {
                *states.of(node) = DONE;
                stack.pop();
                continue;
            };
            let Some(successor) = successor else { continue };
            match *states.of(successor) {
                ON_PATH => {
                    let Some(start) = stack.iter().position(|(n, _, _)| *n == successor) else {
                        continue;
                    };
                    let cycle = &stack[start..];
                    // A loop that passes through no pool is a CNAME loop, reported elsewhere.
                    if !cycle.iter().any(|(n, _, _)| matches!(n, WalkNode::Pool(_))) {
                        continue;
                    }
                    // The first pick inside the loop (the entry's own `via` led into it).
                    let member = cycle.iter().skip(1).find_map(|(_, _, via)| *via).or(via);
                    let Some(m) = member else {
                        continue;
                    };
                    let mut path: Vec<String> = cycle.iter().map(|(n, _, _)| name_of(*n)).collect();
                    path.push(name_of(successor));
                    errors.push(Diagnostic::at(
                        members[m].location.clone(),
                        format!(
                            "member {:?} leads back to its pool through names of this zone ({}): that would loop",
                            members[m].label(),
                            path.join(" -> ")
                        ),
                    ));
                }
                0 => {
                    *states.of(successor) = ON_PATH;
                    stack.push((successor, 0, via));
                }
                _ => {}
            }
        }
    }
}

/// Zone-level rules (RFC 1034/1035/2181): data inside the zone, one SOA at the apex, NS at the
/// apex, CNAME alone at its name, nothing but glue below a delegation, no CNAME loops, RRsets
/// that fit a message, pools that do not lead back to themselves. The members' CNAMEs take
/// part as records. Also removes duplicate records and aligns TTLs within an RRset
/// (RFC 2181 §5.2).
fn validate(
    origin: &Name,
    records: &mut Vec<Record>,
    members: &[Member],
    pools: &[PoolDef],
    file: &Path,
    errors: &mut Vec<Diagnostic>,
) {
    records.retain(|r| {
        if carrier::is_pool_record(&r.name, r.rtype) {
            errors.push(Diagnostic::at(
                r.location.clone(),
                format!(
                    "{} {}: at a `_pool` name this type carries the pools to secondaries; the server writes it itself",
                    r.name,
                    rtype::mnemonic(r.rtype)
                ),
            ));
            false
        } else if r.name.is_subdomain_of(origin) {
            true
        } else {
            errors.push(Diagnostic::at(
                r.location.clone(),
                format!("{} is outside the zone {origin}", r.name),
            ));
            false
        }
    });
    drop_duplicates(records);
    let aligned_ttls = {
        let owners = Owners::new(records, members);
        check_apex(origin, &owners, records, file, errors);
        check_owners(origin, &owners, errors);
        check_cname_loops(&owners, errors);
        check_pool_loops(&owners, members, pools, errors);
        aligned_ttls(&owners, records.len())
    };
    for (i, ttl) in aligned_ttls {
        records[i].ttl = ttl;
    }
}

/// Removes records equal to an earlier one (same name in any case, type and RDATA): a zone
/// holds each record once. Found through their hash, without a copy of each name and RDATA.
fn drop_duplicates(records: &mut Vec<Record>) {
    let mut seen: hashbrown::HashTable<usize> = hashbrown::HashTable::with_capacity(records.len());
    let hash_state = std::hash::RandomState::new();
    let hash_of = |r: &Record| {
        use std::hash::BuildHasher;
        hash_state.hash_one((r.name.key(), r.rtype, &r.rdata))
    };
    let same = |a: &Record, b: &Record| {
        a.rtype == b.rtype && a.rdata == b.rdata && a.name.wire().eq_ignore_ascii_case(b.name.wire())
    };
    let mut keep = vec![true; records.len()];
    for (i, r) in records.iter().enumerate() {
        let hash = hash_of(r);
        if seen.find(hash, |&j| same(&records[j], r)).is_some() {
            keep[i] = false;
        } else {
            seen.insert_unique(hash, i, |&j| hash_of(&records[j]));
        }
    }
    drop(seen);
    let mut i = 0;
    records.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// One SOA, at the apex, and NS records there.
fn check_apex(
    origin: &Name,
    owners: &Owners<'_>,
    records: &[Record],
    file: &Path,
    errors: &mut Vec<Diagnostic>,
) {
    let apex = owners.find(origin.wire());
    match apex.and_then(|o| o.get(rtype::SOA).map(|soas| (o, soas))) {
        None => errors.push(Diagnostic::file(
            file,
            format!("zone {origin} has no SOA record at its apex"),
        )),
        Some((apex, soas)) if soas.len() > 1 => errors.push(Diagnostic::at(
            apex.item(soas[1]).location.clone(),
            "more than one SOA record at the apex",
        )),
        Some(_) => {}
    }
    for r in records
        .iter()
        .filter(|r| r.rtype == rtype::SOA && !r.name.wire().eq_ignore_ascii_case(origin.wire()))
    {
        errors.push(Diagnostic::at(r.location.clone(), "SOA record below the apex"));
    }
    if !apex.is_some_and(|o| o.has(rtype::NS)) {
        errors.push(Diagnostic::file(
            file,
            format!("zone {origin} has no NS records at its apex"),
        ));
    }
}

/// The rules for what may share a name: CNAME alone, no NS at a wildcard, only glue below a
/// delegation and only NS, DS and glue at one, and RRsets a message can carry.
fn check_owners(origin: &Name, owners: &Owners<'_>, errors: &mut Vec<Diagnostic>) {
    let is_apex = |wire: &[u8]| wire.eq_ignore_ascii_case(origin.wire());
    for owner in owners.iter() {
        let name = owner.name();
        let first = |t: u16| owner.get(t).map(|items| owner.item(items[0]));
        if let Some(cnames) = owner.get(rtype::CNAME) {
            let cname = owner.item(cnames[0]);
            if let Some(&second) = cnames.get(1) {
                errors.push(Diagnostic::at(
                    owner.item(second).location.clone(),
                    "more than one CNAME at one name",
                ));
            }
            if owner.type_count() > 1 {
                errors.push(Diagnostic::at(
                    cname.location.clone(),
                    format!("{} has a CNAME and other data (RFC 1034 §3.6.2)", cname.name),
                ));
            }
            if is_apex(name.wire()) {
                errors.push(Diagnostic::at(cname.location.clone(), "CNAME at the zone apex"));
            }
        }
        if let Some(ns) = first(rtype::NS).filter(|_| name.is_wildcard()) {
            errors.push(Diagnostic::at(
                ns.location.clone(),
                "NS records at a wildcard name (RFC 4592 §4.2)",
            ));
        }
        // Below a delegation only glue addresses may live; at the cut NS, DS and addresses.
        // The topmost cut above the name is the one that hides it.
        let under_cut = owners.cut_above(name.wire(), origin);
        let at_cut = owners.is_cut(name.wire(), origin);
        for (t, items) in owner.rrsets() {
            let first = owner.item(items[0]);
            let allowed = if under_cut.is_some() {
                t == rtype::A || t == rtype::AAAA
            } else if at_cut {
                matches!(t, rtype::NS | rtype::DS | rtype::A | rtype::AAAA)
            } else {
                true
            };
            if !allowed {
                let cut = under_cut.map_or_else(|| name.clone(), Name::from_wire_unchecked);
                errors.push(Diagnostic::at(
                    first.location.clone(),
                    format!(
                        "{} record at {name} is hidden by the delegation at {cut}",
                        rtype::mnemonic(t)
                    ),
                ));
            }
            if t == rtype::DS && !at_cut {
                errors.push(Diagnostic::at(
                    first.location.clone(),
                    "DS record away from a delegation",
                ));
            }
            // An RRset must fit in one message (RFC 1035 §4.2.2: TCP carries at most 65535
            // octets). A bigger one could never be answered, and its record count would wrap
            // the header's 16-bit counts (65,536 records would be announced as none).
            // Each record: a compressed owner (2), TYPE CLASS TTL RDLENGTH (10), RDATA.
            let octets: usize = items.iter().map(|&i| 12 + owner.item(i).rdata.len()).sum();
            if octets > usize::from(u16::MAX) {
                errors.push(Diagnostic::at(
                    first.location.clone(),
                    format!(
                        "the {} RRset of {} has {} records, {octets} octets on the wire: more than \
                         a DNS message can carry (65535)",
                        rtype::mnemonic(t),
                        first.name,
                        items.len()
                    ),
                ));
            }
        }
    }
}

/// CNAME chains inside the zone must end.
///
/// Each name has one CNAME edge (the first, when there are more), so one walk from every name
/// not yet seen finds every loop in linear time (walking each chain from each of its names was
/// cubic: a chain of 2,000 CNAMEs took seconds to check, 20,000 took hours). Starts in file
/// order, so the report is stable and names the loop's first record as written.
fn check_cname_loops(owners: &Owners<'_>, errors: &mut Vec<Diagnostic>) {
    const ON_WALK: u8 = 1;
    const DONE: u8 = 2;
    let cname_of = |k: usize| {
        let owner = owners.owner(k);
        owner.get(rtype::CNAME).map(|items| items[0])
    };
    let mut state = vec![0u8; owners.len()];
    // Walks begin at each CNAME in file order.
    let mut starts: Vec<(u32, usize)> = (0..owners.len())
        .filter_map(|k| cname_of(k).map(|item| (item, k)))
        .collect();
    starts.sort_unstable();
    for (item, start) in starts {
        if state[start] != 0 {
            continue;
        }
        let mut walk: Vec<usize> = Vec::new();
        let mut current = start;
        loop {
            match state[current] {
                ON_WALK => {
                    let from = walk.iter().position(|&k| k == current).unwrap_or(0);
                    let cycle = &walk[from..];
                    let first = cycle.iter().filter_map(|&k| cname_of(k)).min().unwrap_or(item);
                    let name_at = |k: usize| cname_of(k).map(|i| owners.item(i).name.to_string());
                    let mut names: Vec<String> = cycle.iter().take(8).filter_map(|&k| name_at(k)).collect();
                    if cycle.len() > 8 {
                        names.push("...".into());
                    }
                    names.extend(name_at(current));
                    let first = owners.item(first);
                    errors.push(Diagnostic::at(
                        first.location.clone(),
                        format!("CNAME loop starting at {}: {}", first.name, names.join(" -> ")),
                    ));
                    break;
                }
                DONE => break,
                _ => {}
            }
            state[current] = ON_WALK;
            walk.push(current);
            match cname_of(current).and_then(|i| owners.position(owners.item(i).rdata)) {
                Some(next) => current = next,
                None => break,
            }
        }
        for k in walk {
            state[k] = DONE;
        }
    }
}

/// RFC 2181 §5.2: one TTL per RRset; the lowest, as a cache would see. Returns the zone-file
/// records (numbers below `record_count`) whose TTL must change, and to what.
fn aligned_ttls(owners: &Owners<'_>, record_count: usize) -> Vec<(usize, u32)> {
    let mut changes = Vec::new();
    for owner in owners.iter() {
        for (_, items) in owner.rrsets().filter(|(_, items)| items.len() > 1) {
            let ttl = items.iter().map(|&i| owner.item(i).ttl).min().unwrap_or(0);
            changes.extend(
                items
                    .iter()
                    .map(|&i| i as usize)
                    .filter(|&i| i < record_count && owner.item(i as u32).ttl != ttl)
                    .map(|i| (i, ttl)),
            );
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_hash_is_the_digest_of_the_lowercased_key_as_before() {
        use std::hash::{Hash, Hasher};
        for (text, rtype, rdata) in [
            ("Node1.Consortium.Example.", rtype::CNAME, &b"\x04node\x00"[..]),
            (".", rtype::NS, &b""[..]),
        ] {
            let name = Name::parse(text, None).expect("name");
            let mut hasher = std::hash::DefaultHasher::new();
            (name.key(), rtype, 300u32).hash(&mut hasher);
            rdata.hash(&mut hasher);
            assert_eq!(record_hash(&name, rtype, 300, rdata), hasher.finish(), "{text}");
        }
    }
    use std::path::PathBuf;

    fn check(text: &str) -> Vec<String> {
        let origin = Name::parse("example.", None).expect("origin");
        let mut records = master::parse_str(text, Path::new("z"), &origin).expect("syntax ok");
        let mut errors = Vec::new();
        validate(&origin, &mut records, &[], &[], &PathBuf::from("z"), &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    const HEAD: &str = "$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n";

    #[test]
    fn accepts_good_zone() {
        assert_eq!(check(HEAD), Vec::<String>::new());
    }

    #[test]
    fn rejects_semantic_errors() {
        let errs = check(&format!("{HEAD}www CNAME ns\nwww A 1.2.3.4\n"));
        assert!(
            errs.iter().any(|e| e.contains("CNAME and other data")),
            "{errs:?}"
        );
        let errs = check(&format!("{HEAD}a CNAME b\nb CNAME a\n"));
        assert!(errs.iter().any(|e| e.contains("CNAME loop")), "{errs:?}");
        let errs = check(&format!("{HEAD}sub NS ns.sub\nx.sub TXT hi\nns.sub A 1.1.1.1\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("z:6:"), "{errs:?}");
        let errs = check(&format!("{HEAD}www.other. A 1.2.3.4\n"));
        assert!(errs[0].contains("outside the zone"), "{errs:?}");
        let errs = check("$TTL 60\n@ NS ns\n");
        assert!(errs[0].contains("no SOA"), "{errs:?}");
    }
}
