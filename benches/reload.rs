//! What a reload costs at 10, 1,000, 10,000 and 100,000 members: time to read and validate the files
//! (`control::load_zones`), to build the Snapshot, and the whole `Control::reload` of a running
//! server (load, serial policy, health sync, swap); then the peak memory of a reload, measured
//! in a child process per size from the kernel's high-water mark (`VmHWM`).
//!
//! `cargo bench --bench reload` (figures in benches/RELOAD.md). A filter narrows the timings,
//! e.g. `cargo bench --bench reload -- reload/build`; the memory table is always printed.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use consortium_dns::config::Config;
use consortium_dns::control;
use consortium_dns::snapshot::{BuildOptions, Snapshot};
use criterion::{BatchSize, BenchmarkId, Criterion};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
/// Set in a child process: the config to load for the memory measurement.
const CHILD_ENV: &str = "CONSORTIUM_DNS_RELOAD_BENCH_CONFIG";

/// A config, the example zone file and a members file of `members` members in `dir`.
fn write_tree(dir: &Path, members: usize) -> PathBuf {
    let zone =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/consortium.example.zone"))
            .expect("example zone");
    std::fs::write(dir.join("consortium.example.zone"), zone).expect("write zone");
    let mut text = String::from("member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30\n");
    for i in 0..members {
        write!(
            text,
            "\n[[member]]\nlabel = \"member{i}\"\ntarget = \"node{i}.operator-{}.example.net\"\nweight = {}\n",
            i % 997,
            1 + i % 5
        )
        .expect("format");
    }
    std::fs::write(dir.join("consortium.example.members.toml"), text).expect("write members");
    let config = dir.join("consortium-dns.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhttp-listen = \"\"\nudp-workers = 1\n\n\
         [health]\nkind = \"none\"\n\n[[zone]]\norigin = \"consortium.example\"\n\
         file = \"consortium.example.zone\"\nmembers = \"consortium.example.members.toml\"\n",
    )
    .expect("write config");
    config
}

fn load_and_build(config: &Config) -> Snapshot {
    let zones = control::load_zones(config).expect("loads");
    control::build_snapshot(zones, Default::default(), config, None)
}

fn timings(c: &mut Criterion, dirs: &[(usize, tempfile::TempDir, PathBuf)]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("reload");
    for (members, _dir, path) in dirs {
        let config = Config::load(path).expect("config");
        group.bench_with_input(BenchmarkId::new("load_zones", members), &config, |b, config| {
            b.iter(|| control::load_zones(config).expect("loads"))
        });
        let zones = control::load_zones(&config).expect("loads");
        group.bench_with_input(BenchmarkId::new("build", members), &zones, |b, zones| {
            b.iter_batched(
                || zones.clone(),
                |zones| Snapshot::build(zones, &BuildOptions::default()),
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(
            BenchmarkId::new("load_zones+build", members),
            &config,
            |b, config| b.iter(|| load_and_build(config)),
        );
        // The real thing on a running server: nothing changed, so the serial stays and every
        // member keeps its health state, but everything is read, validated, built and swapped.
        let server = runtime
            .block_on(consortium_dns::app::start(config.clone()))
            .expect("server starts");
        group.bench_function(BenchmarkId::new("control_reload", members), |b| {
            b.iter(|| {
                let report = runtime.block_on(server.control.reload("bench"));
                assert!(report.ok, "{report:?}");
                black_box(report)
            })
        });
        runtime.block_on(server.shutdown(Duration::from_millis(100)));
    }
    group.finish();
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Child mode: load once (the served snapshot), then reload once while it is still held, as a
/// server does (freed memory returned after each load, as the server does); print resident
/// and peak memory above the baseline.
fn child(config_path: &Path) {
    let config = Config::load(config_path).expect("config");
    let (base_rss, _) = memory_kib();
    let served = load_and_build(&config);
    consortium_dns::memory::release_freed_memory();
    let (after_first, first_peak) = memory_kib();
    let next = load_and_build(&config);
    let (_, reload_peak) = memory_kib();
    black_box((&served, &next));
    println!(
        "retained_kib={} first_load_peak_kib={} reload_peak_kib={}",
        after_first.saturating_sub(base_rss),
        first_peak.saturating_sub(base_rss),
        reload_peak.saturating_sub(base_rss),
    );
}

fn memory_table(dirs: &[(usize, tempfile::TempDir, PathBuf)]) {
    let exe = std::env::current_exe().expect("own path");
    println!("\nmemory above the process baseline (KiB; VmRSS/VmHWM of a child per size)");
    println!(
        "{:>8}  {:>16}  {:>12}  {:>18}  {:>16}",
        "members", "retained (snap)", "B/member", "peak, first load", "peak, reload"
    );
    for (members, _dir, path) in dirs {
        let out = Command::new(&exe)
            .env(CHILD_ENV, path)
            .output()
            .expect("run child");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| -> u64 {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{key} in {text}"))
        };
        let retained = value("retained_kib");
        println!(
            "{members:>8}  {retained:>16}  {:>12}  {:>18}  {:>16}",
            retained * 1024 / *members as u64,
            value("first_load_peak_kib"),
            value("reload_peak_kib"),
        );
    }
}

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
        return;
    }
    let dirs: Vec<(usize, tempfile::TempDir, PathBuf)> = SIZES
        .iter()
        .map(|&members| {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = write_tree(dir.path(), members);
            (members, dir, config)
        })
        .collect();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    timings(&mut criterion, &dirs);
    criterion.final_summary();
    memory_table(&dirs);
}
