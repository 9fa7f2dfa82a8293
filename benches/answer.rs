//! Micro-benchmarks: the request path (`server::answer::answer`, query bytes in, response bytes
//! out), the weighted pick alone, and the Snapshot build, at the example's size and at
//! generated sizes (10 / 1,000 / 10,000 members).
//!
//! Short by design (the whole set runs in a few minutes): `cargo bench --bench answer`.
//! A filter narrows it, e.g. `cargo bench --bench answer -- answer/`.

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consortium_dns::config::Config;
use consortium_dns::control;
use consortium_dns::pick::PickTable;
use consortium_dns::server::answer::{NOERROR, NXDOMAIN, Outcome, Rcode, Transport, answer};
use consortium_dns::snapshot::{BuildOptions, Snapshot};
use consortium_dns::zone::{self, ZoneData};
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Our UDP payload ceiling, as in the example config.
const MAX_UDP_PAYLOAD: u16 = 1232;
const TYPE_A: u16 = 1;

/// A query as a resolver sends it: no RD, one question, an EDNS(0) OPT advertising 1232, with
/// the DO bit (RFC 3225) when `dnssec_ok`: what a validating resolver sends.
fn query_with_do(name: &str, qtype: u16, dnssec_ok: bool) -> Vec<u8> {
    let mut q = vec![0x4a, 0x17, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    // OPT: root owner, type 41, class = UDP size, TTL = ext-rcode/version/DO, no options.
    q.extend_from_slice(&[
        0,
        0,
        41,
        0x04,
        0xd0,
        0,
        0,
        if dnssec_ok { 0x80 } else { 0 },
        0,
        0,
        0,
    ]);
    q
}

/// A config tree in a temp dir: the example zone file plus `members` generated members (with
/// one pool, `any`, over all of them). Health checks are off: nothing is probed here.
struct Generated {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn generate(members: usize) -> Generated {
    generate_with(members, false)
}

/// As `generate`; `signed`: `dnssec = true` with one P-256 CSK.
fn generate_with(members: usize, signed: bool) -> Generated {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let zone_text =
        std::fs::read_to_string(root.join("zones/consortium.example.zone")).expect("example zone");
    std::fs::write(dir.path().join("consortium.example.zone"), zone_text).expect("write zone");

    let mut text = String::from("member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30\n");
    for i in 1..=members {
        let _ = write!(
            text,
            "\n[[member]]\nlabel = \"node{i}\"\ntarget = \"node{i}.operator-{}.example.net\"\nweight = {}\n",
            i % 500,
            i % 3 + 1
        );
    }
    std::fs::write(dir.path().join("consortium.example.members.toml"), text).expect("write members");

    let config = dir.path().join("consortium-dns.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhttp-listen = \"\"\nudp-workers = 1\n\n\
         [health]\nkind = \"none\"\n\n\
         [[zone]]\norigin = \"consortium.example\"\nfile = \"consortium.example.zone\"\n\
         members = \"consortium.example.members.toml\"\n",
    )
    .expect("write config");
    if signed {
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str("dnssec = true\nkeys = \"keys\"\n");
        std::fs::write(&config, text).expect("write config");
        let origin = zone::name::Name::parse("consortium.example.", None).expect("origin");
        consortium_dns::dnssec::keys::generate(
            &dir.path().join("keys"),
            &origin,
            consortium_dns::dnssec::keys::ECDSAP256SHA256,
            consortium_dns::dnssec::keys::Role::Ksk,
            consortium_dns::wire::unix_now(),
        )
        .expect("key");
    }
    Generated { _dir: dir, config }
}

fn load_snapshot(config_path: &Path) -> Snapshot {
    let config = Config::load(config_path).unwrap_or_else(|e| panic!("config: {e:?}"));
    control::load(&config).unwrap_or_else(|e| panic!("zones: {e:?}"))
}

fn response_code(outcome: Outcome) -> Rcode {
    match outcome {
        Outcome::Responded { rcode, .. } => rcode,
        Outcome::Dropped => panic!("query dropped"),
    }
}

/// The three request-path cases against one snapshot. `load` runs only when a case is selected
/// (criterion calls a closure only if its id passes the filter), so `cargo bench -- pick` does
/// not generate and load 10,000 members first.
fn bench_answers(c: &mut Criterion, group_name: &str, load: impl Fn() -> Snapshot, node: &str) {
    bench_answers_do(c, group_name, load, node, false)
}

/// As `bench_answers`, the queries with DO set when `dnssec_ok`.
fn bench_answers_do(
    c: &mut Criterion,
    group_name: &str,
    load: impl Fn() -> Snapshot,
    node: &str,
    dnssec_ok: bool,
) {
    let cases = [
        ("node_a", query_with_do(node, TYPE_A, dnssec_ok), NOERROR),
        (
            "shared_any_a",
            query_with_do("any.consortium.example", TYPE_A, dnssec_ok),
            NOERROR,
        ),
        (
            "nxdomain",
            query_with_do("no-such-node.consortium.example", TYPE_A, dnssec_ok),
            NXDOMAIN,
        ),
    ];
    let snapshot: OnceCell<Snapshot> = OnceCell::new();
    let mut group = c.benchmark_group(group_name);
    let mut out = Vec::with_capacity(4096);
    let mut rng = SmallRng::seed_from_u64(9);
    for (label, bytes, expected) in &cases {
        group.bench_function(*label, |b| {
            let snapshot = snapshot.get_or_init(&load);
            // Measure what we think we measure: a real answer with the expected rcode.
            let outcome = answer(
                snapshot,
                bytes,
                &mut out,
                Transport::Udp,
                MAX_UDP_PAYLOAD,
                &mut rng,
            );
            assert_eq!(response_code(outcome), *expected, "{group_name}/{label}");
            b.iter(|| {
                answer(
                    black_box(snapshot),
                    black_box(bytes),
                    &mut out,
                    Transport::Udp,
                    MAX_UDP_PAYLOAD,
                    &mut rng,
                )
            })
        });
    }
    group.finish();
}

fn request_path(c: &mut Criterion) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/consortium-dns.toml");
    bench_answers(
        c,
        "answer/example",
        || load_snapshot(&example),
        "node1.consortium.example",
    );
    // A node from the middle of the table, not the first one inserted.
    bench_answers(
        c,
        "answer/10000",
        || load_snapshot(&generate(10_000).config),
        "node5000.consortium.example",
    );
    // Signed, DO set: the answers carry pre-signed RRSIGs (and NSEC proofs for NXDOMAIN).
    bench_answers_do(
        c,
        "answer/signed-do/10000",
        || load_snapshot(&generate_with(10_000, true).config),
        "node5000.consortium.example",
        true,
    );
}

/// A query for `name` A with an EDNS Client Subnet option for 198.51.100.0/24 (RFC 7871).
fn ecs_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11]);
    q.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100]);
    q
}

/// The shared name's answer to an ECS query, by policy: `weighted` (the client does not
/// matter) against `nearest` (a GeoIP lookup and the 3 nearest of 10 located members).
/// Issue 20 asks the nearest pool to stay within 1.2x a weighted one.
fn geo(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("zones/consortium.example.zone"),
        dir.path().join("z.zone"),
    )
    .expect("zone");
    std::fs::copy(
        root.join("benches/data/bench-city.mmdb"),
        dir.path().join("city.mmdb"),
    )
    .expect("database");
    let mut text =
        String::from("[[pool]]\nlabel = \"any\"\n\n[[pool]]\nlabel = \"near\"\npolicy = \"nearest\"\n");
    for i in 0..10 {
        let _ = write!(
            text,
            "\n[[member]]\nlabel = \"node{i}\"\ntarget = \"node{i}.operator.example\"\n\
             location = {{ latitude = {}, longitude = {} }}\n",
            -60 + 12 * i,
            -170 + 34 * i
        );
    }
    std::fs::write(dir.path().join("m.toml"), text).expect("members");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[geoip]\ndatabase = \"city.mmdb\"\n\n[health]\nkind = \"none\"\n\n\
         [[zone]]\norigin = \"consortium.example\"\nfile = \"z.zone\"\nmembers = \"m.toml\"\n",
    )
    .expect("config");
    let snapshot = load_snapshot(&config);
    let mut group = c.benchmark_group("answer/ecs");
    let mut rng = SmallRng::seed_from_u64(7);
    let mut out = Vec::with_capacity(4096);
    for pool in ["any", "near"] {
        let query = ecs_query(&format!("{pool}.consortium.example"));
        group.bench_function(pool, |b| {
            b.iter(|| {
                let outcome = answer(
                    &snapshot,
                    black_box(&query),
                    &mut out,
                    Transport::Udp,
                    1232,
                    &mut rng,
                );
                black_box(outcome)
            })
        });
    }
    group.finish();
}

fn weights(members: u32) -> Vec<(u32, u64, u64)> {
    (0..members)
        .map(|i| {
            let w = u64::from(i % 3 + 1);
            (i, w, w)
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for members in [10u32, 10_000] {
        let triples = weights(members);
        group.bench_with_input(BenchmarkId::new("build", members), &triples, |b, t| {
            b.iter(|| PickTable::build(black_box(t).iter().copied()))
        });
        let table = PickTable::build(triples.iter().copied());
        let mut rng = SmallRng::seed_from_u64(9);
        group.bench_with_input(BenchmarkId::new("pick", members), &table, |b, t| {
            b.iter(|| black_box(t).pick(&mut rng))
        });
    }
    group.finish();
}

/// A generated tree with its config loaded and its zone parsed and validated once.
struct Prepared {
    /// Keeps the files alive for `load`.
    _generated: Generated,
    config: Config,
    data: ZoneData,
}

fn prepare(members: usize) -> Prepared {
    let generated = generate(members);
    let config = Config::load(&generated.config).expect("config");
    let data = zone::load(&config.live.zones[0].source, &config.live.health_defaults).expect("zone data");
    Prepared {
        _generated: generated,
        config,
        data,
    }
}

fn snapshot_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    // Milliseconds to seconds per iteration: few samples, each one iteration or a few.
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for members in [10usize, 1_000, 10_000] {
        // Generated (and parsed, which is slow at 10,000) only when a case below is selected.
        let prepared: OnceCell<Prepared> = OnceCell::new();
        // `build` alone: the table-making part, from parsed and validated zone data.
        group.bench_function(BenchmarkId::new("build", members), |b| {
            let p = prepared.get_or_init(|| prepare(members));
            b.iter_batched(
                || vec![p.data.clone()],
                |zones| Snapshot::build(zones, &BuildOptions::default()),
                BatchSize::LargeInput,
            )
        });
        // Files to Snapshot: what a reload costs (read, parse, validate, build).
        group.bench_function(BenchmarkId::new("load", members), |b| {
            let p = prepared.get_or_init(|| prepare(members));
            b.iter(|| control::load(&p.config).expect("loads"))
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = short();
    targets = request_path, geo, pick, snapshot_build
}
criterion_main!(benches);
