//! What DNSSEC signing costs (issue 17), side by side with the same work unsigned, at 10,
//! 1,000, 10,000 and 100,000 members:
//!
//! - from scratch: read, validate, sign (on all cores) and build (`control::load`, what
//!   `check` and a start do), against reading and building unsigned;
//! - a one-member change (one weight edited) reloaded on a running server, whose signature
//!   cache keeps every unchanged signature, against the same reload of an unsigned server;
//! - resident memory of the served snapshot per member, signed and unsigned (RSS growth of a
//!   fresh process holding it, from 10 to N members, freed memory returned first).
//!
//! `cargo bench --bench signing` (figures in benches/RESULTS.md); `DENIAL=nsec3 cargo bench
//! --bench signing` signs with NSEC3 (RFC 9276 parameters) instead of NSEC. Wall-clock medians of a few
//! rounds: these take milliseconds to seconds, so Criterion's sampling would take hours.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use consortium_dns::config::Config;
use consortium_dns::control;
use consortium_dns::dnssec::keys::{self, Role};
use consortium_dns::zone::name::Name;

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];

fn members_text(members: usize, changed: bool) -> String {
    let mut text = String::from("member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30\n");
    for i in 0..members {
        // The one-member change: member 0's weight.
        let weight = if changed && i == 0 { 9 } else { 1 + i % 5 };
        write!(
            text,
            "\n[[member]]\nlabel = \"member{i}\"\ntarget = \"node{i}.operator-{}.example.net\"\nweight = {weight}\n",
            i % 997
        )
        .expect("format");
    }
    text
}

/// A config, the example zone and `members` members in `dir`; signed with one P-256 CSK when
/// `signed`.
fn write_tree(dir: &Path, members: usize, signed: bool) -> PathBuf {
    let zone =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/consortium.example.zone"))
            .expect("example zone");
    std::fs::write(dir.join("consortium.example.zone"), zone).expect("write zone");
    std::fs::write(
        dir.join("consortium.example.members.toml"),
        members_text(members, false),
    )
    .expect("members");
    if signed {
        let origin = Name::parse("consortium.example.", None).expect("origin");
        keys::generate(&dir.join("keys"), &origin, keys::ECDSAP256SHA256, Role::Ksk, 0).expect("key");
    }
    let config = dir.join("consortium-dns.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nhttp-listen = \"\"\nudp-workers = 1\n\n\
             [health]\nkind = \"none\"\n\n[[zone]]\norigin = \"consortium.example\"\n\
             file = \"consortium.example.zone\"\nmembers = \"consortium.example.members.toml\"\n\
             dnssec = {signed}\nkeys = \"keys\"\ndenial = \"{}\"\n",
            denial()
        ),
    )
    .expect("write config");
    config
}

/// The signed zones' denial of existence, from `DENIAL` ("nsec", the default, or "nsec3").
fn denial() -> String {
    match std::env::var("DENIAL").as_deref() {
        Err(_) | Ok("nsec") => "nsec".into(),
        Ok("nsec3") => "nsec3".into(),
        Ok(other) => panic!("DENIAL must be nsec or nsec3, not {other:?}"),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn rounds(members: usize) -> usize {
    if members >= 100_000 { 3 } else { 7 }
}

/// `control::load` (read, validate, sign, build) from scratch.
fn from_scratch(config: &Config, members: usize) -> Duration {
    median(
        (0..rounds(members))
            .map(|_| {
                let started = Instant::now();
                let snapshot = control::load(config).expect("loads");
                let elapsed = started.elapsed();
                drop(snapshot);
                elapsed
            })
            .collect(),
    )
}

/// A running server's reload after one member's weight changed (and back, alternately).
fn one_member_change(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    config: &Config,
    members: usize,
) -> Duration {
    let server = runtime
        .block_on(consortium_dns::app::start(config.clone()))
        .expect("server starts");
    let texts = [members_text(members, true), members_text(members, false)];
    let samples = (0..rounds(members))
        .map(|round| {
            std::fs::write(dir.join("consortium.example.members.toml"), &texts[round % 2]).expect("members");
            let started = Instant::now();
            let report = runtime.block_on(server.control.reload("bench"));
            assert!(report.ok, "{report:?}");
            let elapsed = started.elapsed();
            // The file watcher saw the edit too and reloads once more after its 300 ms
            // debounce; let that finish outside the measurement, or the next round waits for it.
            std::thread::sleep(Duration::from_millis(500) + elapsed * 2);
            elapsed
        })
        .collect();
    runtime.block_on(server.shutdown(Duration::from_millis(100)));
    median(samples)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Set in a child process: the config whose snapshot it loads and holds.
const CHILD_ENV: &str = "CONSORTIUM_DNS_SIGNING_BENCH_CONFIG";

/// RSS growth of a fresh process while it holds the snapshot of `config` (freed memory
/// returned first): each size and mode in its own process, so no allocator state carries over.
fn held_kib(config: &Path) -> u64 {
    let output = std::process::Command::new(std::env::current_exe().expect("bench binary"))
        .env(CHILD_ENV, config)
        .output()
        .expect("child process");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("child said {:?}", String::from_utf8_lossy(&output.stderr)))
}

fn child(config_path: &Path) {
    let config = Config::load(config_path).expect("config");
    consortium_dns::memory::release_freed_memory();
    let before = rss_kib();
    let snapshot = control::load(&config).expect("loads");
    consortium_dns::memory::release_freed_memory();
    println!("{}", rss_kib().saturating_sub(before));
    drop(snapshot);
}

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&path));
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("Signed with {}.\n", denial().to_uppercase());
    println!(
        "| members | unsigned from scratch | signed from scratch | ratio | unsigned one-member reload | signed one-member reload | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut memory = Vec::new();
    for members in SIZES {
        let mut row = Vec::new();
        let mut held = [0u64; 2];
        for (i, signed) in [false, true].into_iter().enumerate() {
            let dir = tempfile::tempdir().expect("dir");
            let path = write_tree(dir.path(), members, signed);
            let config = Config::load(&path).expect("config");
            row.push((
                from_scratch(&config, members),
                one_member_change(&runtime, dir.path(), &config, members),
            ));
            held[i] = held_kib(&path);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        println!(
            "| {members} | {:.1} ms | {:.1} ms | {:.2} | {:.1} ms | {:.1} ms | {:.2} |",
            ms(row[0].0),
            ms(row[1].0),
            ms(row[1].0) / ms(row[0].0),
            ms(row[0].1),
            ms(row[1].1),
            ms(row[1].1) / ms(row[0].1)
        );
        memory.push((members, held));
    }
    println!("\n| members | held unsigned | held signed |");
    println!("|---:|---:|---:|");
    for (members, [unsigned, signed]) in &memory {
        println!("| {members} | {unsigned} KiB | {signed} KiB |");
    }
    if let (Some((small, [u0, s0])), Some((large, [u1, s1]))) = (memory.first(), memory.last()) {
        let per = |a: u64, b: u64| (b.saturating_sub(a) * 1024) as f64 / (large - small) as f64;
        println!(
            "\nper member ({small} -> {large}): unsigned {:.0} B, signed {:.0} B",
            per(*u0, *u1),
            per(*s0, *s1)
        );
    }
}
