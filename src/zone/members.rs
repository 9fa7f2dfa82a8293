//! The members file (`zones/<zone>.members.toml`): one `[[member]]` per node, each becoming the
//! node's CNAME, and the `[[pool]]` shared names that pick among them.
//!
//! Adding a node is one `[[member]]` table in this one file. Errors carry file:line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::name::Name;
use super::probe_spec::{HealthSettings, ProbeSpec};
use super::{Diagnostic, Location, Record, rtype};
use crate::diag::LineIndex;

/// TTL of a member's CNAME when neither the member nor the file says.
pub const DEFAULT_MEMBER_TTL: u32 = 300;
/// TTL of a pool's picked CNAME when the pool does not say.
pub const DEFAULT_POOL_TTL: u32 = 30;

/// Where each member of a load came from, so that the next load of the same file reuses the
/// members whose `[[member]]` table text is unchanged instead of parsing it again: a
/// one-member change in a 100,000-member file parses one table (issue 23). About 24 B per
/// member.
#[derive(Debug, Clone, Default)]
pub struct MemberTexts {
    /// The two hashers of `TableText::hash` (random per process start, kept from load to load
    /// so the hashes compare), with the hash of what every member's parse depends on besides
    /// its own table: the file's path, the origin, `member-ttl`, the health defaults.
    hashers: Option<(foldhash::fast::RandomState, foldhash::fast::RandomState)>,
    context: [u64; 2],
    /// Per member, in the order of the member list.
    tables: Vec<TableText>,
    /// How many members this load took from the previous one.
    reused: usize,
}

/// One member's table as read: the hash of its text, and the line of the member's table
/// within it (its location is the piece's line plus this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableText {
    hash: [u64; 2],
    line_offset: u32,
}

impl MemberTexts {
    fn hash(&self, bytes: &[u8]) -> [u64; 2] {
        use std::hash::BuildHasher;
        match &self.hashers {
            Some((a, b)) => [a.hash_one(bytes), b.hash_one(bytes)],
            None => [0, 0],
        }
    }

    /// An empty record of a new load, with the hashers of `previous` (new ones when none).
    fn next(previous: Option<&MemberTexts>) -> MemberTexts {
        let hashers = previous
            .and_then(|p| p.hashers.clone())
            .unwrap_or_else(|| (Default::default(), Default::default()));
        MemberTexts {
            hashers: Some(hashers),
            context: [0, 0],
            tables: Vec::new(),
            reused: 0,
        }
    }

    /// How many members the load took from the previous one without parsing their tables.
    pub fn reused(&self) -> usize {
        self.reused
    }
}

/// A previous load of a members file, to reuse members from: its member list and where each
/// came from.
#[derive(Debug, Clone, Copy)]
pub struct Reuse<'a> {
    pub members: &'a [Member],
    pub texts: &'a MemberTexts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MembersFile {
    /// TTL of each member's CNAME unless the member sets `ttl`. Default 300.
    #[serde(default = "default_member_ttl")]
    member_ttl: u32,
    #[serde(default, rename = "pool")]
    pools: Vec<toml::Spanned<PoolSection>>,
    #[serde(default, rename = "member")]
    members: Option<Vec<toml::Spanned<MemberSection>>>,
}

/// One `[[member]]` table parsed on its own (see `split_sections`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OneMember {
    member: Vec<toml::Spanned<MemberSection>>,
}

fn default_member_ttl() -> u32 {
    DEFAULT_MEMBER_TTL
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PoolSection {
    /// The shared name relative to the zone, e.g. `any`.
    label: String,
    /// TTL of the picked CNAME. Default 30.
    #[serde(default)]
    ttl: Option<u32>,
    /// Labels of the members it draws from. Default: every member.
    #[serde(default)]
    members: Option<Vec<String>>,
    /// What a certificate that does not cover this name, or has expired, does: `report` (only
    /// reported) or `strict` (the member is not picked for this pool). Default `report`.
    #[serde(default)]
    cert_policy: CertPolicy,
    /// How a member is chosen for a query: `weighted` (default), `nearest`, `region`,
    /// `latency`.
    #[serde(default)]
    policy: PickPolicy,
    /// Under `nearest` (and `region`'s fallback): how many of the closest healthy members the
    /// weighted draw is among. Default 3.
    #[serde(default)]
    nearest_k: Option<u8>,
}

/// How a pool chooses for one query (`[[pool]] policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PickPolicy {
    /// The weighted draw among the healthy members (the client does not matter).
    #[default]
    Weighted,
    /// The weighted draw among the `nearest-k` healthy members closest to the client.
    Nearest,
    /// The weighted draw among the healthy members of the client's region (country or
    /// continent), else as `nearest`, else among all.
    Region,
    /// Weights scaled by the inverse of this instance's probe round-trip time to each member.
    Latency,
}

impl PickPolicy {
    pub fn label(self) -> &'static str {
        match self {
            PickPolicy::Weighted => "weighted",
            PickPolicy::Nearest => "nearest",
            PickPolicy::Region => "region",
            PickPolicy::Latency => "latency",
        }
    }

    /// True for the policies that depend on where the client is.
    pub fn is_geographic(self) -> bool {
        matches!(self, PickPolicy::Nearest | PickPolicy::Region)
    }
}

/// Where a member is: for the geographic policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// Degrees.
    pub latitude: f32,
    pub longitude: f32,
    /// Continent or country code, uppercase (`EU`, `DE`), as the GeoIP database names them.
    pub region: Option<Box<str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationSection {
    latitude: f64,
    longitude: f64,
}

/// Default `nearest-k`.
pub const DEFAULT_NEAREST_K: u8 = 3;
/// Largest `nearest-k`: the request path keeps the nearest members in a fixed array.
pub const MAX_NEAREST_K: u8 = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MemberSection {
    /// The node's name relative to the zone, e.g. `node1`.
    label: String,
    /// The node's own hostname, e.g. `node1.operator-a.com`.
    target: String,
    /// Relative share of the pool's picks; 0 = listed, never picked. Default 1.
    #[serde(default = "default_weight")]
    weight: u32,
    /// TTL of this member's CNAME. Default: the file's `member-ttl`.
    #[serde(default)]
    ttl: Option<u32>,
    /// Health-check settings over the config's `[health]` defaults.
    #[serde(default)]
    health: HealthSettings,
    /// The config's `[[key]]` that may add and delete this member's ACME challenges (RFC
    /// 2136 UPDATE, see `update`).
    #[serde(default)]
    update_key: Option<String>,
    /// Where the node is, for `nearest` pools: `{ latitude = 52.37, longitude = 4.90 }`.
    #[serde(default)]
    location: Option<LocationSection>,
    /// The node's region for `region` pools: a continent (`eu`) or country (`de`) code.
    #[serde(default)]
    region: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// How a pool treats a member whose certificate does not cover the pool's name or has expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertPolicy {
    #[default]
    Report,
    Strict,
}

/// One member node.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Octets of `name`'s wire form that make the label (`node1` of `node1.<zone>`): the
    /// label is not stored twice.
    pub(crate) label_len: u8,
    /// Absolute node name (`node1.consortium.example.`).
    pub name: Name,
    /// The node's own hostname.
    pub target: Name,
    pub weight: u32,
    pub ttl: u32,
    /// Shared between members with the same settings (most of them), to keep memory per
    /// member small.
    pub probe: Arc<ProbeSpec>,
    /// The `[[key]]` (as named in the config) that may update this member's ACME challenge
    /// names; most members have none.
    pub update_key: Option<Box<str>>,
    /// Where the node is (`location`, `region`); most members of a weighted pool have none.
    pub place: Option<Box<Place>>,
    pub location: Location,
}

impl Member {
    /// The label as written (`node1`, or `a.b` for a dotted one).
    pub fn label(&self) -> String {
        let relative = &self.name.wire()[..usize::from(self.label_len)];
        let mut text = Name::from_wire_unchecked(&[relative, &[0]].concat()).to_string();
        text.pop();
        text
    }

    /// The member's own CNAME record.
    pub fn cname_record(&self) -> Record {
        Record {
            name: self.name.clone(),
            rtype: rtype::CNAME,
            ttl: self.ttl,
            rdata: self.target.wire().to_vec(),
            location: self.location.clone(),
        }
    }
}

/// A shared name picking among members.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDef {
    pub label: String,
    pub name: Name,
    pub ttl: u32,
    /// Indexes into the zone's member list.
    pub members: Vec<usize>,
    pub cert_policy: CertPolicy,
    pub policy: PickPolicy,
    pub nearest_k: u8,
    pub location: Location,
}

/// Reads and validates a members file for the zone `origin`, reusing the members of
/// `previous` whose table text is unchanged.
pub fn load(
    path: &Path,
    origin: &Name,
    health_defaults: &HealthSettings,
    previous: Option<Reuse<'_>>,
) -> Result<(Vec<Member>, Vec<PoolDef>, MemberTexts), Vec<Diagnostic>> {
    let bytes = super::read_file(path)
        .map_err(|reason| vec![Diagnostic::file(path, format!("members file: {reason}"))])?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Point at the line of the first bad byte, like every other error in this file.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&c| c == b'\n').count() + 1;
        vec![Diagnostic::at(
            Location::new(Arc::from(path), line),
            "invalid UTF-8 (a members file is UTF-8 text)",
        )]
    })?;
    parse_reusing(&text, path, origin, health_defaults, previous)
}

/// Parses members-file text as if read from `path`.
///
/// Each `[[member]]` table is parsed on its own when the file can be split safely
/// (`split_sections`): a TOML parse of a whole 100,000-member file needs about 25 times the
/// file's size at once, and the allocator keeps much of that after the load. When the split
/// is unsure or any piece fails to parse, the whole file is parsed as one document, which
/// also gives the authoritative error message.
pub fn parse(
    text: &str,
    path: &Path,
    origin: &Name,
    health_defaults: &HealthSettings,
) -> Result<(Vec<Member>, Vec<PoolDef>), Vec<Diagnostic>> {
    parse_reusing(text, path, origin, health_defaults, None).map(|(members, pools, _)| (members, pools))
}

/// `parse`, taking each member whose table text is unchanged since `previous` from there
/// instead of parsing it again; also returns where each member came from, for the next load.
/// A reused member is exactly what parsing its table gives (the parse depends only on the
/// table's text and on what `MemberTexts::context` covers); the checks across members
/// (duplicates, pools, CA files) run on every load.
pub fn parse_reusing(
    text: &str,
    path: &Path,
    origin: &Name,
    health_defaults: &HealthSettings,
    previous: Option<Reuse<'_>>,
) -> Result<(Vec<Member>, Vec<PoolDef>, MemberTexts), Vec<Diagnostic>> {
    let file_path: Arc<Path> = Arc::from(path);
    let mut texts = MemberTexts::next(previous.map(|p| p.texts));
    let split = split_sections(text).and_then(|sections| {
        let head: MembersFile = toml::from_str(&sections.rest).ok()?;
        if head.members.is_some() {
            return None;
        }
        texts.context = texts.hash(
            format!(
                "{}\0{:?}\0{}\0{health_defaults:?}",
                path.display(),
                origin.wire(),
                head.member_ttl
            )
            .as_bytes(),
        );
        // Previous members by table hash, when they were parsed in the same context.
        let reusable: HashMap<[u64; 2], usize, foldhash::fast::RandomState> = match previous {
            Some(p) if p.texts.hashers.is_some() && p.texts.context == texts.context => p
                .texts
                .tables
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < p.members.len())
                .map(|(i, t)| (t.hash, i))
                .collect(),
            _ => HashMap::default(),
        };
        let count = sections.members.len();
        let mut list = MemberList::new(&file_path, origin, health_defaults, head.member_ttl, count);
        texts.tables.reserve_exact(count);
        // In batches: the parsed tables of one batch at a time are alive, not the whole file's.
        for batch in sections.members.chunks(PARSE_BATCH) {
            let hashes: Vec<[u64; 2]> = batch
                .iter()
                .map(|piece| texts.hash(&text.as_bytes()[piece.start..piece.end]))
                .collect();
            let reused: Vec<Option<usize>> = hashes.iter().map(|h| reusable.get(h).copied()).collect();
            let fresh: Vec<Piece> = batch
                .iter()
                .zip(&reused)
                .filter(|(_, r)| r.is_none())
                .map(|(piece, _)| piece.clone())
                .collect();
            let mut parsed = parse_pieces(text, &fresh)?.into_iter();
            for ((piece, hash), reuse) in batch.iter().zip(&hashes).zip(&reused) {
                let before_count = list.members.len();
                let line_offset = match (reuse, previous) {
                    (Some(i), Some(p)) => {
                        let (member, table) = (&p.members[*i], p.texts.tables[*i]);
                        let line = piece.line + table.line_offset as usize;
                        list.add_reused(Location::new(file_path.clone(), line), member);
                        texts.reused += 1;
                        table.line_offset
                    }
                    _ => {
                        let section = parsed.next()?;
                        let before = &text.as_bytes()[piece.start..piece.start + section.span().start];
                        let offset = before.iter().filter(|&&c| c == b'\n').count();
                        list.add(
                            Location::new(file_path.clone(), piece.line + offset),
                            section.get_ref(),
                        );
                        offset as u32
                    }
                };
                if list.members.len() > before_count {
                    texts.tables.push(TableText {
                        hash: *hash,
                        line_offset,
                    });
                }
            }
        }
        // The rest keeps every line where it was, so its line numbers are the file's.
        let rest_index = LineIndex::new(&sections.rest);
        let rest_line = |offset: usize| {
            let line = rest_index.line(offset);
            sections
                .rest_lines
                .get(line.wrapping_sub(1))
                .copied()
                .unwrap_or(line)
        };
        let pools = head
            .pools
            .into_iter()
            .map(|p| {
                (
                    Location::new(file_path.clone(), rest_line(p.span().start)),
                    p.into_inner(),
                )
            })
            .collect::<Vec<_>>();
        Some((list, pools))
    });
    let (list, pools) = match split {
        Some(parsed) => parsed,
        None => {
            // Parsed whole: nothing to reuse next time.
            texts.tables.clear();
            texts.context = [0, 0];
            texts.reused = 0;
            let file: MembersFile = toml::from_str(text).map_err(|e| {
                // A misspelt table name (`[[memebr]]`) makes TOML complain about something
                // else ("duplicate key" at a later `[member.health]`): name it instead.
                let unknown = unknown_tables(text, &file_path);
                if unknown.is_empty() {
                    vec![Diagnostic::toml(path, text, &e)]
                } else {
                    unknown
                }
            })?;
            let lines = LineIndex::new(text);
            let at = |offset: usize| Location::new(file_path.clone(), lines.line(offset));
            let sections = file.members.unwrap_or_default();
            let mut list = MemberList::new(
                &file_path,
                origin,
                health_defaults,
                file.member_ttl,
                sections.len(),
            );
            for section in &sections {
                list.add(at(section.span().start), section.get_ref());
            }
            let pools = file
                .pools
                .into_iter()
                .map(|p| (at(p.span().start), p.into_inner()))
                .collect();
            (list, pools)
        }
    };
    let MemberList {
        mut errors,
        mut members,
        by_name,
        ..
    } = list;
    members.shrink_to_fit();

    let mut pool_defs: Vec<PoolDef> = Vec::new();
    for (location, section) in pools {
        let mut fail = |message: String| errors.push(Diagnostic::at(location.clone(), message));
        let name = match relative_label(&section.label, origin) {
            Ok(name) => name,
            Err(reason) => {
                fail(format!("pool label {:?}: {reason}", section.label));
                continue;
            }
        };
        if by_name.get(&members, name.wire()).is_some() {
            fail(format!("pool label {:?} is also a member label", section.label));
            continue;
        }
        if pool_defs.iter().any(|p| p.name.key() == name.key()) {
            fail(format!("duplicate pool label {:?}", section.label));
            continue;
        }
        let indexes = match &section.members {
            None => (0..members.len()).collect(),
            Some(labels) => {
                let mut indexes = Vec::new();
                // Linear in the list: a 400,000-member list is checked in milliseconds.
                let mut listed = std::collections::HashSet::with_capacity(labels.len());
                for label in labels {
                    let index = relative_label(label, origin)
                        .ok()
                        .and_then(|n| by_name.get(&members, n.wire()));
                    match index {
                        Some(i) if listed.insert(i) => indexes.push(i),
                        Some(_) => fail(format!("pool {:?} lists member {label:?} twice", section.label)),
                        None => fail(format!(
                            "pool {:?} names a missing member {label:?}",
                            section.label
                        )),
                    }
                }
                indexes
            }
        };
        let nearest_k = section.nearest_k.unwrap_or(DEFAULT_NEAREST_K);
        if !(1..=MAX_NEAREST_K).contains(&nearest_k) {
            fail(format!(
                "pool {:?}: nearest-k must be from 1 to {MAX_NEAREST_K}",
                section.label
            ));
        }
        if section.policy.is_geographic() {
            let placed = indexes
                .iter()
                .filter(|&&i| members.get(i).is_some_and(|m| m.place.is_some()))
                .count();
            if placed == 0 {
                fail(format!(
                    "pool {:?}: policy {:?} needs members with a location or region",
                    section.label,
                    section.policy.label()
                ));
            }
        }
        pool_defs.push(PoolDef {
            label: section.label,
            name,
            ttl: section.ttl.unwrap_or(DEFAULT_POOL_TTL),
            members: indexes,
            cert_policy: section.cert_policy,
            policy: section.policy,
            nearest_k,
            location,
        });
    }

    if errors.is_empty() {
        Ok((members, pool_defs, texts))
    } else {
        Err(errors)
    }
}

/// Batches with fewer tables than this are parsed on one thread: starting a thread costs more.
const PARALLEL_PIECES: usize = 2_000;
/// Tables parsed (on every core) before they are checked and added, one batch at a time.
const PARSE_BATCH: usize = 8_192;

/// Each piece parsed as one `[[member]]` table, on every core for a large file (the TOML
/// parse is most of a load's time, and the pieces are independent); None if any piece is not
/// exactly one well-formed table.
fn parse_pieces(text: &str, pieces: &[Piece]) -> Option<Vec<toml::Spanned<MemberSection>>> {
    let parse_one = |piece: &Piece| -> Option<toml::Spanned<MemberSection>> {
        let one: OneMember = toml::from_str(&text[piece.start..piece.end]).ok()?;
        let [section] = <[_; 1]>::try_from(one.member).ok()?;
        Some(section)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if pieces.len() < PARALLEL_PIECES || threads < 2 {
        return pieces.iter().map(parse_one).collect();
    }
    let chunk = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = pieces
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(parse_one).collect::<Option<Vec<_>>>()))
            .collect();
        let mut all = Vec::with_capacity(pieces.len());
        for worker in workers {
            // A worker that panicked (it cannot: parse errors are values) counts as unsure,
            // and the whole-file parse below gives the verdict.
            all.extend(worker.join().ok()??);
        }
        Some(all)
    })
}

/// Member numbers by name (any case), holding no copy of any name: each entry is read back
/// from the member list it indexes.
struct MembersByName {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl MembersByName {
    fn with_capacity(capacity: usize) -> Self {
        MembersByName {
            table: hashbrown::HashTable::with_capacity(capacity),
            hasher: Default::default(),
        }
    }

    /// The number of the member of `members` named `wire` (any case).
    fn get(&self, members: &[Member], wire: &[u8]) -> Option<usize> {
        let hash = super::owners::key_hash(&self.hasher, wire);
        self.table
            .find(hash, |&i| {
                members
                    .get(i as usize)
                    .is_some_and(|m| m.name.wire().eq_ignore_ascii_case(wire))
            })
            .map(|&i| i as usize)
    }

    /// Indexes `name` as the member about to be pushed onto `members` (checked absent).
    fn insert(&mut self, members: &[Member], name: &Name) {
        let hash = super::owners::key_hash(&self.hasher, name.wire());
        let hasher = &self.hasher;
        self.table.insert_unique(hash, members.len() as u32, |&i| {
            members
                .get(i as usize)
                .map_or(0, |m| super::owners::key_hash(hasher, m.name.wire()))
        });
    }
}

/// The members read so far, with the state their checks need.
struct MemberList<'a> {
    path: &'a Path,
    origin: &'a Name,
    health_defaults: &'a HealthSettings,
    member_ttl: u32,
    errors: Vec<Diagnostic>,
    members: Vec<Member>,
    /// Probe settings shared between members (most members have the same).
    specs: std::collections::HashSet<Arc<ProbeSpec>>,
    /// The shared settings of `specs` by the address of a reused member's settings.
    reused_specs: HashMap<usize, Arc<ProbeSpec>>,
    /// Each CA file named, checked once: whether it holds PEM certificates.
    ca_files: HashMap<PathBuf, Result<(), String>>,
    /// Member names (any case) -> index: duplicate checks stay O(1) at 100,000 members.
    by_name: MembersByName,
}

impl<'a> MemberList<'a> {
    fn new(
        path: &'a Path,
        origin: &'a Name,
        health_defaults: &'a HealthSettings,
        member_ttl: u32,
        expected: usize,
    ) -> Self {
        MemberList {
            path,
            origin,
            health_defaults,
            member_ttl,
            errors: Vec::new(),
            members: Vec::with_capacity(expected),
            specs: std::collections::HashSet::new(),
            reused_specs: HashMap::new(),
            ca_files: HashMap::new(),
            by_name: MembersByName::with_capacity(expected),
        }
    }

    /// Adds a member reused from the previous load (its table text unchanged) at `location`,
    /// after the checks that depend on more than its table: its name not taken, its CA file
    /// (read again: the file may have changed) still holding certificates.
    fn add_reused(&mut self, location: Location, previous: &Member) {
        let mut fail = |message: String| self.errors.push(Diagnostic::at(location.clone(), message));
        let label = || previous.label();
        if let Some(first) = self
            .by_name
            .get(&self.members, previous.name.wire())
            .map(|i| &self.members[i])
        {
            let message = format!(
                "duplicate member label {:?} (first at {})",
                label(),
                first.location
            );
            return fail(message);
        }
        if let Err(reason) = check_ca_once(&mut self.ca_files, &previous.probe) {
            return fail(format!("member {:?} health: {reason}", label()));
        }
        self.by_name.insert(&self.members, &previous.name);
        // Most reused members share one `Arc` already: look each distinct one up once, by its
        // address, instead of hashing the settings of every member.
        let pointer = Arc::as_ptr(&previous.probe) as usize;
        let probe = match self.reused_specs.get(&pointer) {
            Some(shared) => shared.clone(),
            None => {
                let shared = match self.specs.get(&previous.probe) {
                    Some(shared) => shared.clone(),
                    None => {
                        self.specs.insert(previous.probe.clone());
                        previous.probe.clone()
                    }
                };
                self.reused_specs.insert(pointer, shared.clone());
                shared
            }
        };
        self.members.push(Member {
            probe,
            location,
            ..previous.clone()
        });
    }

    /// Checks one `[[member]]` table and adds it, or records why not.
    fn add(&mut self, location: Location, section: &MemberSection) {
        let mut fail = |message: String| self.errors.push(Diagnostic::at(location.clone(), message));
        let name = match relative_label(&section.label, self.origin) {
            Ok(name) => name,
            Err(reason) => return fail(format!("member label {:?}: {reason}", section.label)),
        };
        if let Some(first) = self
            .by_name
            .get(&self.members, name.wire())
            .map(|i| &self.members[i])
        {
            let message = format!(
                "duplicate member label {:?} (first at {})",
                section.label, first.location
            );
            return fail(message);
        }
        let target = match hostname(&section.target) {
            Ok(target) => target,
            Err(reason) => {
                return fail(format!(
                    "member {:?}: target {:?} {reason}",
                    section.label, section.target
                ));
            }
        };
        if target.key() == name.key() {
            return fail(format!("member {:?} points at itself", section.label));
        }
        let mut probe = match section.health.or(self.health_defaults).resolve() {
            Ok(probe) => probe,
            Err(reason) => return fail(format!("member {:?} health: {reason}", section.label)),
        };
        // A relative CA path follows the members file, like every path in our files.
        if let Some(ca) = probe.ca_file.as_mut().filter(|ca| ca.is_relative()) {
            *ca = self.path.parent().unwrap_or(Path::new(".")).join(&*ca);
        }
        if let Err(reason) = check_ca_once(&mut self.ca_files, &probe) {
            return fail(format!("member {:?} health: {reason}", section.label));
        }
        let place = match place_of(section) {
            Ok(place) => place,
            Err(reason) => return fail(format!("member {:?}: {reason}", section.label)),
        };
        self.by_name.insert(&self.members, &name);
        let probe = match self.specs.get(&probe) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(probe);
                self.specs.insert(shared.clone());
                shared
            }
        };
        let label_len = (name.wire().len() - self.origin.wire().len()) as u8;
        self.members.push(Member {
            label_len,
            name,
            target,
            weight: section.weight,
            ttl: section.ttl.unwrap_or(self.member_ttl),
            probe,
            update_key: section.update_key.as_deref().map(Box::from),
            place,
            location,
        });
    }
}

/// Whether the CA file of `probe`, if any, holds PEM certificates; each file is read once per
/// load (`checked`), since it may have changed since the last.
fn check_ca_once(
    checked: &mut HashMap<PathBuf, Result<(), String>>,
    probe: &ProbeSpec,
) -> Result<(), String> {
    match &probe.ca_file {
        Some(ca) => checked
            .entry(ca.clone())
            .or_insert_with(|| check_ca_file(ca))
            .clone(),
        None => Ok(()),
    }
}

/// A member's `location` and `region`, checked.
fn place_of(section: &MemberSection) -> Result<Option<Box<Place>>, String> {
    let region = match &section.region {
        None => None,
        Some(code) if (2..=3).contains(&code.len()) && code.bytes().all(|c| c.is_ascii_alphabetic()) => {
            Some(code.to_ascii_uppercase().into_boxed_str())
        }
        Some(code) => {
            return Err(format!(
                "region {code:?} is not a continent or country code (like \"eu\" or \"de\")"
            ));
        }
    };
    let (latitude, longitude) = match &section.location {
        None => (f32::NAN, f32::NAN),
        Some(l) if (-90.0..=90.0).contains(&l.latitude) && (-180.0..=180.0).contains(&l.longitude) => {
            (l.latitude as f32, l.longitude as f32)
        }
        Some(l) => {
            return Err(format!(
                "location {{ latitude = {}, longitude = {} }} is outside -90..90, -180..180",
                l.latitude, l.longitude
            ));
        }
    };
    if section.location.is_none() && region.is_none() {
        return Ok(None);
    }
    Ok(Some(Box::new(Place {
        latitude,
        longitude,
        region,
    })))
}

/// A members file cut into what can be parsed piece by piece.
#[derive(Debug, PartialEq)]
struct Sections {
    /// Everything but the `[[member]]` tables (left out: parsing 100,000 tables' worth of
    /// empty lines took a tenth of a reload).
    rest: String,
    /// The file's line number of each line of `rest`.
    rest_lines: Vec<usize>,
    /// Each `[[member]]` table with its sub-tables (`[member.health]`).
    members: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
struct Piece {
    /// Byte range in the file.
    start: usize,
    end: usize,
    /// 1-based line of `start`.
    line: usize,
}

/// Cuts a members file at its table headers, following TOML's string syntax so that a
/// header-like line inside a multi-line string is not taken for one. `None` when a header is
/// written in a form this does not follow (quoted keys), or a member sub-table comes before
/// any member: the caller then parses the file whole.
fn split_sections(text: &str) -> Option<Sections> {
    #[derive(Clone, Copy, PartialEq)]
    enum Open {
        Basic,
        Literal,
    }
    let mut open: Option<Open> = None;
    let mut rest = String::new();
    let mut rest_lines = Vec::new();
    let mut members: Vec<Piece> = Vec::new();
    let mut in_member = false;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        if open.is_none() {
            let trimmed = line.trim_start();
            if let Some(after_bracket) = trimmed.strip_prefix('[') {
                let (array, inner) = match after_bracket.strip_prefix('[') {
                    Some(inner) => (true, inner),
                    None => (false, after_bracket),
                };
                let close = inner.find(']')?;
                let key = &inner[..close];
                if key.contains(['"', '\'']) {
                    return None;
                }
                let mut parts = key.split('.').map(str::trim);
                let first = parts.next().unwrap_or_default();
                let is_member_table = first == "member";
                if array && is_member_table && parts.next().is_none() {
                    members.push(Piece {
                        start,
                        end: start,
                        line: index + 1,
                    });
                    in_member = true;
                } else if is_member_table {
                    if !in_member {
                        return None;
                    }
                } else {
                    in_member = false;
                }
            }
        }
        // Follow strings through the line, to know whether the next line starts inside one.
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let here = &bytes[i..];
            match open {
                Some(Open::Basic) if here[0] == b'\\' => i += 2,
                Some(Open::Basic) if here.starts_with(b"\"\"\"") => {
                    open = None;
                    i += 3;
                    // Up to two more quotes belong to the string's content.
                    i += bytes[i..].iter().take(2).take_while(|&&c| c == b'"').count();
                }
                Some(Open::Literal) if here.starts_with(b"'''") => {
                    open = None;
                    i += 3;
                    i += bytes[i..].iter().take(2).take_while(|&&c| c == b'\'').count();
                }
                Some(_) => i += 1,
                None => match here[0] {
                    b'#' => break,
                    b'"' if here.starts_with(b"\"\"\"") => {
                        open = Some(Open::Basic);
                        i += 3;
                    }
                    b'\'' if here.starts_with(b"'''") => {
                        open = Some(Open::Literal);
                        i += 3;
                    }
                    quote @ (b'"' | b'\'') => {
                        i += 1;
                        while i < bytes.len() && bytes[i] != quote {
                            if quote == b'"' && bytes[i] == b'\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                        i += 1;
                    }
                    _ => i += 1,
                },
            }
        }
        match members.last_mut().filter(|_| in_member) {
            Some(piece) => piece.end = offset,
            None => {
                rest.push_str(line);
                rest_lines.push(index + 1);
            }
        }
    }
    open.is_none().then_some(Sections {
        rest,
        rest_lines,
        members,
    })
}

/// The tables a members file may have, beside its `member-ttl` key.
const MEMBERS_FILE_TABLES: [&str; 2] = ["member", "pool"];

/// Table headers whose first key is not one of `MEMBERS_FILE_TABLES`, each with the nearest
/// known name when it is a likely misspelling. Looks at header lines only, so a header-like
/// line inside a multi-line string may be reported: this runs only once the file has failed
/// to parse, to explain why.
fn unknown_tables(text: &str, path: &Arc<Path>) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(header) = line.trim_start().strip_prefix('[') else {
            continue;
        };
        let (array, inner) = match header.strip_prefix('[') {
            Some(inner) => (true, inner),
            None => (false, header),
        };
        let Some(close) = inner.find(']') else {
            continue;
        };
        let first = inner[..close].split('.').next().unwrap_or_default().trim();
        let first = first.trim_matches(['"', '\'']);
        if MEMBERS_FILE_TABLES.contains(&first) {
            continue;
        }
        let written = if array {
            format!("[[{}]]", &inner[..close])
        } else {
            format!("[{}]", &inner[..close])
        };
        let nearest = MEMBERS_FILE_TABLES
            .iter()
            .map(|known| (edit_distance(first, known), known))
            .min()
            .filter(|(distance, _)| *distance <= 2);
        let message = match nearest {
            Some((_, known)) if array => format!("unknown table {written}: did you mean [[{known}]]?"),
            Some((_, known)) => format!("unknown table {written}: did you mean [{known}...]?"),
            None => format!("unknown table {written}: a members file has [[member]] and [[pool]] tables"),
        };
        found.push(Diagnostic::at(Location::new(path.clone(), index + 1), message));
    }
    found
}

/// Levenshtein distance, for the few short table names of a misspelling hint.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// A label (or dotted relative name) below the zone, made of hostname labels.
fn relative_label(label: &str, origin: &Name) -> Result<Name, String> {
    if label.is_empty() || label.ends_with('.') || label == "@" {
        return Err("must be a name relative to the zone, such as \"node1\"".into());
    }
    if !label.is_ascii() {
        return Err(super::master::RAW_UTF8_NAME.into());
    }
    let name = Name::parse(label, Some(origin)).map_err(|e| e.to_string())?;
    if !name.is_hostname() {
        return Err("is not a valid hostname label (letters, digits, inner hyphens)".into());
    }
    Ok(name)
}

/// A CA file must hold PEM certificates, each one well-formed (what a probe then trusts).
fn check_ca_file(path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bytes = crate::file_set::read(path, 1 << 20).map_err(|e| format!("ca-file: {e}"))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        cert.map_err(|e| format!("ca-file {}: not a PEM certificate ({e})", path.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("ca-file {} holds no PEM certificate", path.display()));
    }
    Ok(())
}

/// A target hostname; a missing trailing dot still means the absolute name.
fn hostname(text: &str) -> Result<Name, String> {
    if text.parse::<std::net::IpAddr>().is_ok() {
        // A CNAME points at a name (RFC 1034 §3.6.2); "192.0.2.1" would be looked up as one.
        return Err("is an IP address; a member's target is the node's hostname (a CNAME target)".into());
    }
    let absolute = if text.ends_with('.') {
        text.to_string()
    } else {
        format!("{text}.")
    };
    let name = Name::parse(&absolute, None).map_err(|e| format!("is not a valid name: {e}"))?;
    if name.label_count() < 2 || !name.is_hostname() {
        return Err("is not a valid hostname".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_members(text: &str) -> Result<(Vec<Member>, Vec<PoolDef>), Vec<String>> {
        let origin = Name::parse("consortium.example.", None).expect("origin");
        parse(text, Path::new("m.toml"), &origin, &HealthSettings::default())
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn parses_members_and_pool() {
        let (members, pools) = parse_members(
            "[[pool]]\nlabel = \"any\"\n\n[[member]]\nlabel = \"node1\"\ntarget = \"node1.operator-a.com\"\nweight = 3\n\
             [member.health]\nkind = \"none\"\n\n[[member]]\nlabel = \"node2\"\ntarget = \"api.operator-b.net.\"\n",
        )
        .expect("valid");
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].name.to_string(), "node1.consortium.example.");
        assert_eq!(members[0].target.to_string(), "node1.operator-a.com.");
        assert_eq!(members[0].weight, 3);
        assert_eq!(members[1].weight, 1);
        assert_eq!(members[1].ttl, DEFAULT_MEMBER_TTL);
        assert_eq!(pools[0].members, vec![0, 1]);
        assert_eq!(pools[0].ttl, DEFAULT_POOL_TTL);
        assert_eq!(members[1].location.line, 11);
    }

    #[test]
    fn reports_errors_with_lines() {
        let errs = parse_members(
            "[[member]]\nlabel = \"node1\"\ntarget = \"a.com\"\n[[member]]\nlabel = \"node1\"\ntarget = \"b.com\"\n",
        )
        .expect_err("duplicate");
        assert!(
            errs[0].starts_with("m.toml:4: duplicate member label"),
            "{errs:?}"
        );
        let errs =
            parse_members("[[member]]\nlabel = \"n\"\ntarget = \"bad_host.com\"\n").expect_err("bad target");
        assert!(errs[0].contains("not a valid hostname"), "{errs:?}");
        let errs =
            parse_members("[[member]]\nlabel = \"n\"\ntarget = \"a.com\"\nwieght = 2\n").expect_err("typo");
        assert!(errs[0].starts_with("m.toml:"), "{errs:?}");
        assert!(errs[0].contains("wieght"), "{errs:?}");
        let errs = parse_members("[[pool]]\nlabel = \"any\"\nmembers = [\"ghost\"]\n").expect_err("missing");
        assert!(errs[0].contains("missing member \"ghost\""), "{errs:?}");
        let errs = parse_members(
            "[[member]]\nlabel = \"n\"\ntarget = \"a.com\"\n[member.health]\nkind = \"smtp\"\n",
        )
        .expect_err("bad kind");
        assert!(errs[0].starts_with("m.toml:5:"), "{errs:?}");
    }

    /// The same file parsed as one document: a quoted header key (`[["member"]]`, the same
    /// table in TOML) makes `split_sections` give up.
    #[test]
    fn a_misspelt_table_name_is_named_with_its_line() {
        let text = "[[member]]\nlabel = \"node1\"\ntarget = \"a.com\"\n\
                    [[memebr]]\nlabel = \"node2\"\ntarget = \"b.com\"\n[member.health]\nkind = \"tcp\"\n\
                    [[memebr]]\nlabel = \"node3\"\ntarget = \"c.com\"\n[member.health]\nkind = \"tcp\"\n\
                    [[zone]]\n";
        let errs = parse_members(text).expect_err("typo");
        assert_eq!(
            errs,
            [
                "m.toml:4: unknown table [[memebr]]: did you mean [[member]]?",
                "m.toml:9: unknown table [[memebr]]: did you mean [[member]]?",
                "m.toml:14: unknown table [[zone]]: a members file has [[member]] and [[pool]] tables",
            ]
        );
        assert_eq!(edit_distance("memebr", "member"), 2);
        assert_eq!(edit_distance("pol", "pool"), 1);
    }

    fn parse_whole(text: &str) -> Result<(Vec<Member>, Vec<PoolDef>), Vec<String>> {
        let forced = text.replace("[[member]]\nlabel = \"node", "[[\"member\"]]\nlabel = \"node");
        assert!(split_sections(&forced).is_none());
        parse_members(&forced)
    }

    #[test]
    fn split_follows_strings_and_sub_tables() {
        let text = "member-ttl = 60 # [[member]] in a comment\n\
                    [[pool]]\nlabel = \"any\"\n\
                    [[member]]\nlabel = \"node1\"\ntarget = \"a.example.com\"\n\
                    [member.health]\nkind = \"http\"\nbody-contains = \"\"\"\n[[member]]\nlabel = \"fake\"\n\"\"\"\n\
                    [[member]]\nlabel = \"node2\" # ''' not a string\ntarget = 'b.example.com'\nweight = 2\n\
                    [[pool]]\nlabel = \"other\"\nmembers = [\"node2\"]\n";
        let sections = split_sections(text).expect("splits");
        assert_eq!(sections.members.len(), 2, "{sections:?}");
        assert_eq!(sections.members[0].line, 4);
        assert_eq!(sections.members[1].line, 13);
        // The rest: the header and the two pools, each line with its number in the file.
        assert_eq!(sections.rest.lines().count(), sections.rest_lines.len());
        assert_eq!(sections.rest_lines, [1, 2, 3, 17, 18, 19]);
        let (members, pools) = parse_members(text).expect("valid");
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].ttl, 60);
        assert_eq!(members[1].weight, 2);
        assert_eq!(members[1].location.line, 13);
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[1].location.line, 17);
        assert_eq!(pools[1].members, vec![1]);
        let (whole_members, whole_pools) = parse_whole(text).expect("valid whole");
        assert_eq!(whole_members.len(), members.len());
        for (a, b) in members.iter().zip(&whole_members) {
            assert_eq!(
                (&a.name, &a.target, a.weight, a.ttl),
                (&b.name, &b.target, b.weight, b.ttl)
            );
            assert_eq!(a.probe, b.probe);
            assert_eq!(a.location.line, b.location.line);
        }
        assert_eq!(pools.len(), whole_pools.len());
    }

    #[test]
    fn unsure_splits_fall_back_to_the_whole_file() {
        // Quoted keys, and a member sub-table before any member.
        assert!(split_sections("[[\"member\"]]\nlabel = \"a\"\n").is_none());
        assert!(split_sections("[member.health]\nkind = \"none\"\n").is_none());
        // An inline member array next to [[member]] tables is an error either way.
        let errs = parse_members(
            "member = [{ label = \"a\", target = \"a.com\" }]\n[[member]]\nlabel = \"b\"\ntarget = \"b.com\"\n",
        )
        .expect_err("defined twice");
        assert!(errs[0].starts_with("m.toml:"), "{errs:?}");
        // A syntax error inside one member table is reported at its line in the file.
        let errs = parse_members(
            "[[member]]\nlabel = \"a\"\ntarget = \"a.com\"\n[[member]]\nlabel = \"b\ntarget = \"b.com\"\n",
        )
        .expect_err("unterminated string");
        assert!(errs[0].starts_with("m.toml:5:"), "{errs:?}");
        // Inline member tables alone parse whole.
        let (members, _) =
            parse_members("member = [{ label = \"a\", target = \"a.com\" }]\n").expect("inline array");
        assert_eq!(members.len(), 1);
    }
}
