//! A membership change reuses what did not change (issue 23): a reload takes every member
//! whose `[[member]]` table text is unchanged from the running snapshot instead of parsing it
//! again. The shortcut must never serve stale data, so after every step of seeded random edit
//! sequences the running server's snapshot is compared with one built from scratch from the
//! same files: the members (each one's file:line included), the pools, every record, and the
//! answer to every name of the zone (member names, pool names, the zone file's owners, names
//! that do not exist) in several types, byte for byte with the same random picks.

use std::fmt::Write as _;
use std::sync::Arc;

use consortium_dns::app::ServerHandle;
use consortium_dns::snapshot::Snapshot;
use consortium_dns::wire::Transport;
use hickory_proto::rr::RecordType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::{self, Tree};

const MEMBERS: &str = "zones/consortium.example.members.toml";

/// One member as the generator writes it: the shapes a members file holds (sub-tables,
/// locations, regions, per-member TTLs, comments between tables).
#[derive(Debug, Clone)]
struct Table {
    label: String,
    target: String,
    weight: u32,
    ttl: Option<u32>,
    health_path: Option<String>,
    place: Option<(f64, f64, &'static str)>,
    comment: Option<String>,
}

impl Table {
    fn random(rng: &mut SmallRng, serial: &mut u32) -> Table {
        *serial += 1;
        let n = *serial;
        Table {
            label: format!("node{n}"),
            target: format!("node{n}.operator-{}.example.net", rng.random_range(0..7)),
            weight: rng.random_range(0..4),
            ttl: rng.random_bool(0.2).then(|| rng.random_range(60..600)),
            health_path: rng.random_bool(0.2).then(|| format!("/health/{n}")),
            place: rng.random_bool(0.3).then(|| {
                let regions = ["eu", "na", "as"];
                (
                    rng.random_range(-60.0..60.0),
                    rng.random_range(-170.0..170.0),
                    regions[rng.random_range(0..regions.len())],
                )
            }),
            comment: rng.random_bool(0.1).then(|| format!("# operator note {n}")),
        }
    }

    fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "\n[[member]]\nlabel = \"{}\"\ntarget = \"{}\"\nweight = {}\n",
            self.label, self.target, self.weight
        );
        if let Some(ttl) = self.ttl {
            let _ = writeln!(out, "ttl = {ttl}");
        }
        if let Some((latitude, longitude, region)) = self.place {
            let _ = writeln!(
                out,
                "location = {{ latitude = {latitude:.3}, longitude = {longitude:.3} }}\nregion = \"{region}\""
            );
        }
        if let Some(path) = &self.health_path {
            let _ = writeln!(out, "[member.health]\nkind = \"none\"\npath = \"{path}\"");
        }
        if let Some(comment) = &self.comment {
            let _ = writeln!(out, "{comment}");
        }
    }
}

/// The members file: a header (whose `member-ttl` every member's parse depends on), two pools
/// (one over all members, one listing fixed members that are never removed) and the tables.
fn members_file(member_ttl: u32, header_comments: usize, fixed: &[Table], tables: &[Table]) -> String {
    let mut out = String::new();
    for i in 0..header_comments {
        let _ = writeln!(out, "# header line {i}");
    }
    let listed: Vec<String> = fixed.iter().map(|t| format!("\"{}\"", t.label)).collect();
    let _ = write!(
        out,
        "member-ttl = {member_ttl}\n\n[[pool]]\nlabel = \"any\"\nttl = 30\n\n\
         [[pool]]\nlabel = \"some\"\nmembers = [{}]\n",
        listed.join(", ")
    );
    for table in fixed.iter().chain(tables) {
        table.write(&mut out);
    }
    out
}

/// One random edit of the kinds an operator makes, applied to `tables`.
fn edit(
    rng: &mut SmallRng,
    tables: &mut Vec<Table>,
    serial: &mut u32,
    member_ttl: &mut u32,
    header: &mut usize,
) -> String {
    let pick = |rng: &mut SmallRng, len: usize| rng.random_range(0..len.max(1));
    match rng.random_range(0..9) {
        0 | 1 => {
            let at = rng.random_range(0..=tables.len());
            let table = Table::random(rng, serial);
            let what = format!("add {} at {at}", table.label);
            tables.insert(at, table);
            what
        }
        2 if tables.len() > 3 => {
            let gone = tables.remove(pick(rng, tables.len()));
            format!("remove {}", gone.label)
        }
        3 if !tables.is_empty() => {
            let i = pick(rng, tables.len());
            tables[i].weight = rng.random_range(0..5);
            format!("re-weight {}", tables[i].label)
        }
        4 if !tables.is_empty() => {
            let i = pick(rng, tables.len());
            tables[i].target = format!("moved{}.operator-x.example.org", rng.random_range(0..1000));
            format!("re-target {}", tables[i].label)
        }
        5 if tables.len() > 1 => {
            let from = pick(rng, tables.len());
            let table = tables.remove(from);
            let to = rng.random_range(0..=tables.len());
            let what = format!("move {} from {from} to {to}", table.label);
            tables.insert(to, table);
            what
        }
        6 => {
            // Lines before every table shift: each reused member's file:line must follow.
            *header = (*header + rng.random_range(1..3)) % 5;
            format!("header comments now {header}")
        }
        7 if rng.random_bool(0.3) => {
            // What every member's parse depends on: nothing may be reused.
            *member_ttl = if *member_ttl == 300 { 120 } else { 300 };
            format!("member-ttl {member_ttl}")
        }
        _ if !tables.is_empty() => {
            let i = pick(rng, tables.len());
            let table = &mut tables[i];
            table.ttl = match table.ttl {
                Some(_) => None,
                None => Some(rng.random_range(60..600)),
            };
            table.place = table.place.map(|(lat, lon, region)| (lat + 1.0, lon, region));
            format!("ttl/location of {}", table.label)
        }
        _ => "nothing".into(),
    }
}

/// The same files loaded from scratch (no reuse), at the running serials, as a snapshot.
fn from_scratch(tree: &Tree, running: &Snapshot) -> Snapshot {
    let config = tree.config();
    let mut zones =
        consortium_dns::control::load_zones(&config).unwrap_or_else(|e| panic!("full load: {e:?}"));
    for zone in &mut zones {
        let serial = running
            .zones()
            .iter()
            .find(|z| z.origin == zone.origin)
            .map(|z| z.serial)
            .expect("zone served");
        zone.set_serial(serial);
    }
    consortium_dns::control::build_snapshot(zones, Default::default(), &config, None)
}

/// Every answer of `name` in `types` from `snapshot`, raw, with picks from a fixed seed.
fn answers(snapshot: &Snapshot, names: &[String], types: &[RecordType]) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(23);
    let mut all = Vec::new();
    for name in names {
        for &qtype in types {
            let query = common::query(name, qtype, Some(1232)).to_vec().expect("query");
            // Several picks at the shared names.
            for _ in 0..3 {
                let mut out = Vec::new();
                consortium_dns::server::answer::answer(
                    snapshot,
                    &query,
                    &mut out,
                    Transport::Udp,
                    1232,
                    &mut rng,
                );
                all.push(out);
            }
        }
    }
    all
}

/// Fails with what differs between the running snapshot and the one built from scratch.
fn assert_same(step: &str, running: &Snapshot, full: &Snapshot) {
    assert_eq!(running.zones().len(), full.zones().len(), "{step}: zone count");
    for (ours, fresh) in running.zones().iter().zip(full.zones()) {
        assert_eq!(ours.origin, fresh.origin, "{step}");
        assert_eq!(ours.members.len(), fresh.members.len(), "{step}: member count");
        for (a, b) in ours.members.iter().zip(&fresh.members) {
            assert_eq!(a, b, "{step}: member differs from a fresh parse");
        }
        let defs =
            |z: &consortium_dns::snapshot::Zone| z.pools.iter().map(|p| p.def.clone()).collect::<Vec<_>>();
        assert_eq!(defs(ours), defs(fresh), "{step}: pools");
        assert_eq!(ours.all_records(), fresh.all_records(), "{step}: records");
        assert_eq!(
            ours.content_digest, fresh.content_digest,
            "{step}: content digest"
        );
        let mut names: Vec<String> = fresh.all_records().iter().map(|r| r.name.to_string()).collect();
        names.extend(fresh.pools.iter().map(|p| p.def.name.to_string()));
        names.extend([
            "nothere.consortium.example.".into(),
            "a.b.nothere.consortium.example.".into(),
        ]);
        names.dedup();
        let types = [RecordType::CNAME, RecordType::A, RecordType::SOA, RecordType::TXT];
        let (a, b) = (answers(running, &names, &types), answers(full, &names, &types));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(
                x,
                y,
                "{step}: answer {i} ({}) differs",
                names[i / (types.len() * 3)]
            );
        }
    }
}

/// Starts the server on the generated members file.
async fn start(tree: &Tree, text: &str) -> ServerHandle {
    tree.write(MEMBERS, text);
    tree.start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_that_reuse_members_serve_exactly_what_a_full_rebuild_serves() {
    for seed in [1u64, 2, 3] {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut serial = 0;
        let fixed: Vec<Table> = (0..3).map(|_| Table::random(&mut rng, &mut serial)).collect();
        let mut tables: Vec<Table> = (0..40).map(|_| Table::random(&mut rng, &mut serial)).collect();
        let (mut member_ttl, mut header) = (300, 0);
        let tree = Tree::example();
        let server = start(&tree, &members_file(member_ttl, header, &fixed, &tables)).await;
        let mut log = Vec::new();
        let (mut reused, mut served) = (0, 0);
        for step in 0..14 {
            let edits = rng.random_range(1..4);
            let what: Vec<String> = (0..edits)
                .map(|_| edit(&mut rng, &mut tables, &mut serial, &mut member_ttl, &mut header))
                .collect();
            log.push(format!("step {step}: {}", what.join(", ")));
            tree.replace(MEMBERS, &members_file(member_ttl, header, &fixed, &tables));
            let report = server.control.reload("test").await;
            assert!(
                report.ok,
                "seed {seed}, {}: reload failed: {report:?}",
                log.join("; ")
            );
            let running: Arc<Snapshot> = server.shared.snapshot.load_full();
            let full = from_scratch(&tree, &running);
            assert_same(&format!("seed {seed}, {}", log.join("; ")), &running, &full);
            reused += running.zones()[0].member_texts.reused();
            served += running.zones()[0].members.len();
        }
        // The comparison means something only if the shortcut was taken: most members of most
        // steps came from the previous snapshot (a `member-ttl` change reuses none).
        assert!(
            reused * 2 > served,
            "seed {seed}: only {reused} of {served} members were reused"
        );
        server.shutdown(std::time::Duration::from_secs(1)).await;
    }
}
