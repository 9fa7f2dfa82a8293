//! Zone data from files: master file + members file -> validated records, members and pools.
//!
//! Everything here runs off the request path (at load and reload). Every error carries the
//! file and, where it has one, the line. It must not know about wire responses; the snapshot
//! builder turns `ZoneData` into answer tables.

pub(crate) mod by_type;
pub mod master;
pub mod members;
pub mod name;
pub mod rtype;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::config::ZoneConfig;
use crate::health::spec::HealthSettings;
use members::{Member, PoolDef};
use name::Name;

/// Where something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: usize,
}

impl Location {
    pub fn new(file: Arc<Path>, line: usize) -> Location {
        Location { file, line }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem found in a file, shown as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: Arc<Path>,
    pub line: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn at(location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: location.file,
            line: Some(location.line),
            message: message.into(),
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: Arc::from(path),
            line: None,
            message: message.into(),
        }
    }

    /// A TOML syntax or schema error, placed on the line its span starts.
    pub fn toml(path: &Path, text: &str, error: &toml::de::Error) -> Diagnostic {
        let line = error.span().map(|span| crate::config::line_of(text, span.start));
        Diagnostic {
            file: Arc::from(path),
            line,
            message: error.message().trim().to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
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

/// A validated zone: its records (member CNAMEs included), members and pools.
#[derive(Debug, Clone)]
pub struct ZoneData {
    pub origin: Name,
    pub records: Vec<Record>,
    pub members: Vec<Member>,
    pub pools: Vec<PoolDef>,
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
            .and_then(|soa| soa.rdata.len().checked_sub(20).map(|at| &soa.rdata[at..at + 4]))
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Replaces the SOA serial (RDATA: MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM).
    pub fn set_serial(&mut self, serial: u32) {
        if let Some(soa) = self.soa_mut() {
            if let Some(at) = soa.rdata.len().checked_sub(20) {
                soa.rdata[at..at + 4].copy_from_slice(&serial.to_be_bytes());
            }
        }
    }

    /// A digest of the zone's content, the SOA serial excluded: equal digests mean nothing a
    /// resolver could see has changed.
    ///
    /// Order does not matter (records are unique after validation, and the per-record hashes
    /// are summed), so no sorted copy of a 100,000-record zone is made to compute it.
    pub fn content_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut sum: u64 = 0;
        for r in &self.records {
            // Keyed SipHash with fixed keys: stable within the process and across restarts of
            // one build, which is what the serial state file compares.
            let mut hasher = std::hash::DefaultHasher::new();
            (r.name.key(), r.rtype, r.ttl).hash(&mut hasher);
            match r.rdata.len().checked_sub(20).filter(|_| r.rtype == rtype::SOA) {
                Some(serial_at) => {
                    r.rdata[..serial_at].hash(&mut hasher);
                    r.rdata[serial_at + 4..].hash(&mut hasher);
                }
                None => r.rdata.hash(&mut hasher),
            }
            sum = sum.wrapping_add(hasher.finish());
        }
        let mut hasher = std::hash::DefaultHasher::new();
        (sum, self.records.len()).hash(&mut hasher);
        for pool in &self.pools {
            (pool.name.key(), pool.ttl, &pool.members).hash(&mut hasher);
        }
        for member in &self.members {
            (member.name.key(), member.weight).hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// Loads and validates one configured zone.
pub fn load(zone: &ZoneConfig, health_defaults: &HealthSettings) -> Result<ZoneData, Vec<Diagnostic>> {
    let records = master::parse_file(&zone.file, &zone.origin)?;
    let (members, pools) = match &zone.members {
        Some(path) => members::load(path, &zone.origin, health_defaults)?,
        None => (Vec::new(), Vec::new()),
    };
    assemble(&zone.origin, &zone.file, records, members, pools)
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
    records.reserve_exact(members.len());
    for member in &members {
        records.push(member.cname_record());
    }
    validate(origin, &mut records, file, &mut errors);
    check_pool_targets(origin, &members, &pools, &mut errors);
    check_pool_loops(&records, &members, &pools, &mut errors);
    if errors.is_empty() {
        Ok(ZoneData {
            origin: origin.clone(),
            records,
            members,
            pools,
        })
    } else {
        Err(errors)
    }
}

/// Reads a zone or members file: a regular file of at most `master::MAX_ZONE_FILE_BYTES`.
/// Anything else is refused before it is opened: `/dev/zero` reports length 0 yet never ends,
/// and opening a FIFO blocks the reload until someone writes to it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let limit = master::MAX_ZONE_FILE_BYTES;
    let too_big = |len: u64| {
        format!(
            "{} is {len} bytes or more, above the {limit} byte limit",
            path.display()
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow between the check and the read: never read past the limit.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
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

/// A pool's answer must not lead back to a pool: member target -> CNAMEs inside the zone ->
/// another pool -> its members ... would make every answer a chain cut at the request path's
/// limit. Member targets that are themselves pool names are `check_pool_targets`' message;
/// pure CNAME loops are `validate`'s. One depth-first walk from every pool: O(names + members).
fn check_pool_loops(records: &[Record], members: &[Member], pools: &[PoolDef], errors: &mut Vec<Diagnostic>) {
    if pools.is_empty() {
        return;
    }
    let cname: HashMap<Box<[u8]>, Box<[u8]>> = records
        .iter()
        .filter(|r| r.rtype == rtype::CNAME)
        .map(|r| (r.name.key(), Name::from_wire_unchecked(&r.rdata).key()))
        .collect();
    let pool_names: HashMap<Box<[u8]>, usize> =
        pools.iter().enumerate().map(|(i, p)| (p.name.key(), i)).collect();
    let member_keys: Vec<Box<[u8]>> = members.iter().map(|m| m.name.key()).collect();
    let target_is_pool = |m: usize| pool_names.contains_key(&members[m].target.key());

    /// 1 = on the walk now, 2 = every path from it explored.
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state: HashMap<&[u8], u8> = HashMap::new();
    for pool in pools {
        let root = pool.name.key();
        let Some((root, _)) = pool_names.get_key_value(&root) else {
            continue;
        };
        if state.contains_key(&root[..]) {
            continue;
        }
        // (name, next successor to try, the member whose pick led here)
        let mut stack: Vec<(&[u8], usize, Option<usize>)> = vec![(&root[..], 0, None)];
        state.insert(&root[..], ON_PATH);
        while let Some(top) = stack.last_mut() {
            let (name, next, _) = *top;
            top.1 += 1;
            // Successors: a pool's members (skipping direct pool targets, reported elsewhere),
            // or a name's CNAME target.
            let successor: Option<(&[u8], Option<usize>)> = match pool_names.get(name) {
                Some(&p) => match pools[p].members.get(next) {
                    Some(&m) if target_is_pool(m) => continue,
                    Some(&m) => Some((&member_keys[m][..], Some(m))),
                    None => None,
                },
                None if next == 0 => cname.get(name).map(|t| (&t[..], None)),
                None => None,
            };
            let Some((successor, via)) = successor else {
                state.insert(name, DONE);
                stack.pop();
                continue;
            };
            match state.get(successor) {
                Some(&ON_PATH) => {
                    let Some(start) = stack.iter().position(|(n, _, _)| *n == successor) else {
                        continue;
                    };
                    let cycle = &stack[start..];
                    // A loop that passes through no pool is a CNAME loop, reported by `validate`.
                    if !cycle.iter().any(|(n, _, _)| pool_names.contains_key(*n)) {
                        continue;
                    }
                    // The first pick inside the loop (the entry's own `via` led into it).
                    let member = cycle.iter().skip(1).find_map(|(_, _, via)| *via).or(via);
                    let Some(m) = member else {
                        continue;
                    };
                    let mut path: Vec<String> = cycle
                        .iter()
                        .map(|(n, _, _)| Name::from_wire_unchecked(n).to_string())
                        .collect();
                    path.push(Name::from_wire_unchecked(successor).to_string());
                    errors.push(Diagnostic::at(
                        members[m].location.clone(),
                        format!(
                            "member {:?} leads back to its pool through names of this zone ({}): that would loop",
                            members[m].label(),
                            path.join(" -> ")
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    state.insert(successor, ON_PATH);
                    stack.push((successor, 0, via));
                }
            }
        }
    }
}

/// A CNAME's target key and the index of its record.
type CnameEdge = (Box<[u8]>, usize);

/// Zone-level rules (RFC 1034/1035/2181): data inside the zone, one SOA at the apex, NS at the
/// apex, CNAME alone at its name, nothing but glue below a delegation, no CNAME loops.
/// Also removes duplicate records and aligns TTLs within an RRset (RFC 2181 §5.2).
fn validate(origin: &Name, records: &mut Vec<Record>, file: &Path, errors: &mut Vec<Diagnostic>) {
    let origin_key = origin.key();
    records.retain(|r| {
        if r.name.is_subdomain_of(origin) {
            true
        } else {
            errors.push(Diagnostic::at(
                r.location.clone(),
                format!("{} is outside the zone {origin}", r.name),
            ));
            false
        }
    });

    // Group into RRsets, deduplicating.
    let mut by_name: BTreeMap<Box<[u8]>, by_type::ByType<usize>> = BTreeMap::new();
    // Records seen so far, by index: equal records are found through their hash without
    // keeping a copy of each record's name and RDATA.
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
            continue;
        }
        seen.insert_unique(hash, i, |&j| hash_of(&records[j]));
        by_name.entry(r.name.key()).or_default().push(r.rtype, i);
    }
    drop(seen);

    let soa_count = records.iter().filter(|r| r.rtype == rtype::SOA).count();
    match by_name.get(&origin_key).and_then(|types| types.get(&rtype::SOA)) {
        None => errors.push(Diagnostic::file(
            file,
            format!("zone {origin} has no SOA record at its apex"),
        )),
        Some(soas) if soas.len() > 1 => errors.push(Diagnostic::at(
            records[soas[1]].location.clone(),
            "more than one SOA record at the apex",
        )),
        Some(_) => {}
    }
    if soa_count > 1 {
        for r in records
            .iter()
            .filter(|r| r.rtype == rtype::SOA && r.name.key() != origin_key)
        {
            errors.push(Diagnostic::at(r.location.clone(), "SOA record below the apex"));
        }
    }
    if by_name
        .get(&origin_key)
        .is_none_or(|types| !types.contains_key(&rtype::NS))
    {
        errors.push(Diagnostic::file(
            file,
            format!("zone {origin} has no NS records at its apex"),
        ));
    }

    let cuts: HashSet<Box<[u8]>> = by_name
        .iter()
        .filter(|(key, types)| **key != origin_key && types.contains_key(&rtype::NS))
        .map(|(key, _)| key.clone())
        .collect();

    for (key, types) in &by_name {
        let first = |t: u16| types.get(&t).map(|v| records[v[0]].location.clone());
        if let Some(cnames) = types.get(&rtype::CNAME) {
            if cnames.len() > 1 {
                errors.push(Diagnostic::at(
                    records[cnames[1]].location.clone(),
                    "more than one CNAME at one name",
                ));
            }
            if types.len() > 1 {
                let loc = first(rtype::CNAME).unwrap_or_else(|| records[cnames[0]].location.clone());
                errors.push(Diagnostic::at(
                    loc,
                    format!(
                        "{} has a CNAME and other data (RFC 1034 §3.6.2)",
                        records[cnames[0]].name
                    ),
                ));
            }
            if **key == *origin_key {
                errors.push(Diagnostic::at(
                    records[cnames[0]].location.clone(),
                    "CNAME at the zone apex",
                ));
            }
        }
        let name = &records[types.values().next().map_or(0, |v| v[0])].name;
        if name.is_wildcard() && types.contains_key(&rtype::NS) {
            if let Some(loc) = first(rtype::NS) {
                errors.push(Diagnostic::at(
                    loc,
                    "NS records at a wildcard name (RFC 4592 §4.2)",
                ));
            }
        }
        // Below a delegation only glue addresses may live; at the cut NS, DS and addresses.
        let mut ancestor = name.parent();
        let mut under_cut = None;
        while let Some(a) = ancestor {
            if a.key() == origin_key {
                break;
            }
            if cuts.contains(&a.key()) {
                under_cut = Some(a.clone());
            }
            ancestor = a.parent();
        }
        let at_cut = cuts.contains(key);
        for (&t, indexes) in types {
            let allowed = if under_cut.is_some() {
                t == rtype::A || t == rtype::AAAA
            } else if at_cut {
                matches!(t, rtype::NS | rtype::DS | rtype::A | rtype::AAAA)
            } else {
                true
            };
            if !allowed {
                let cut = under_cut.clone().unwrap_or_else(|| name.clone());
                errors.push(Diagnostic::at(
                    records[indexes[0]].location.clone(),
                    format!(
                        "{} record at {name} is hidden by the delegation at {cut}",
                        rtype::mnemonic(t)
                    ),
                ));
            }
            if t == rtype::DS && !at_cut {
                errors.push(Diagnostic::at(
                    records[indexes[0]].location.clone(),
                    "DS record away from a delegation",
                ));
            }
        }
    }

    // CNAME chains inside the zone must end.
    let cname_target: HashMap<Box<[u8]>, CnameEdge> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rtype == rtype::CNAME)
        .map(|(i, r)| (r.name.key(), (Name::from_wire_unchecked(&r.rdata).key(), i)))
        .collect();
    // Each name has one CNAME edge, so one walk from every name not yet seen finds every loop
    // in linear time (walking each chain from each of its names was cubic: a chain of 2,000
    // CNAMEs took seconds to check, 20,000 took hours). Starts in file order, so the report is
    // stable and names the loop's first record as written.
    const ON_WALK: u8 = 1;
    let mut state: HashMap<&[u8], u8> = HashMap::new();
    for record in records.iter().filter(|r| r.rtype == rtype::CNAME) {
        let start = record.name.key();
        let Some((start, _)) = cname_target.get_key_value(&start) else {
            continue;
        };
        if state.contains_key(&start[..]) {
            continue;
        }
        let mut walk: Vec<&[u8]> = Vec::new();
        let mut current: &[u8] = start;
        loop {
            match state.get(current) {
                Some(&ON_WALK) => {
                    let from = walk.iter().position(|k| *k == current).unwrap_or(0);
                    let cycle = &walk[from..];
                    let first = cycle
                        .iter()
                        .filter_map(|k| cname_target.get(*k).map(|(_, i)| *i))
                        .min()
                        .unwrap_or(0);
                    let mut names: Vec<String> = cycle
                        .iter()
                        .take(8)
                        .filter_map(|k| cname_target.get(*k).map(|(_, i)| records[*i].name.to_string()))
                        .collect();
                    if cycle.len() > 8 {
                        names.push("...".into());
                    }
                    names.push(records[cname_target[current].1].name.to_string());
                    errors.push(Diagnostic::at(
                        records[first].location.clone(),
                        format!(
                            "CNAME loop starting at {}: {}",
                            records[first].name,
                            names.join(" -> ")
                        ),
                    ));
                    break;
                }
                Some(_) => break,
                None => {}
            }
            state.insert(current, ON_WALK);
            walk.push(current);
            match cname_target.get(current) {
                Some((next, _)) => current = next,
                None => break,
            }
        }
        for key in walk {
            state.insert(key, ON_WALK + 1);
        }
    }

    // An RRset must fit in one message (RFC 1035 §4.2.2: TCP carries at most 65535 octets).
    // A bigger one could never be answered, and its record count would wrap the header's
    // 16-bit counts (65,536 records would be announced as none).
    for types in by_name.values() {
        for (&t, indexes) in types {
            // Each record: a compressed owner (2), TYPE CLASS TTL RDLENGTH (10), RDATA.
            let octets: usize = indexes.iter().map(|&i| 12 + records[i].rdata.len()).sum();
            if octets > usize::from(u16::MAX) {
                let first = &records[indexes[0]];
                errors.push(Diagnostic::at(
                    first.location.clone(),
                    format!(
                        "the {} RRset of {} has {} records, {octets} octets on the wire: more than \
                         a DNS message can carry (65535)",
                        rtype::mnemonic(t),
                        first.name,
                        indexes.len()
                    ),
                ));
            }
        }
    }

    // RFC 2181 §5.2: one TTL per RRset; take the lowest, as a cache would see.
    for types in by_name.values() {
        for indexes in types.values() {
            let ttl = indexes.iter().map(|&i| records[i].ttl).min().unwrap_or(0);
            for &i in indexes {
                records[i].ttl = ttl;
            }
        }
    }
    let mut i = 0;
    records.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn check(text: &str) -> Vec<String> {
        let origin = Name::parse("example.", None).expect("origin");
        let mut records = master::parse_str(text, Path::new("z"), &origin).expect("syntax ok");
        let mut errors = Vec::new();
        validate(&origin, &mut records, &PathBuf::from("z"), &mut errors);
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
