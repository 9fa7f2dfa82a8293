//! A reload serves only whole, consistent files (issue 22, findings 3 and 4): an emptied or
//! cut-short file is held back until an operator confirms it, and a reload that read files
//! while they changed (a directory swap, an in-place write) reads them again instead of
//! serving a mix of two versions.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use consortium_dns::app::ServerHandle;
use consortium_dns::snapshot::Snapshot;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::common::{Tree, binary, edit, query, udp};

const ZONE_FILE: &str = "zones/consortium.example.zone";
const MEMBERS_FILE: &str = "zones/consortium.example.members.toml";
const CONFIG: &str = "config/consortium-dns.toml";

async fn rcode_of(server: &ServerHandle, name: &str, qtype: RecordType) -> ResponseCode {
    udp(server.dns_addrs[0], &query(name, qtype, None))
        .await
        .metadata
        .response_code
}

/// `consortium-dns ctl reload` against the running server: exit success, stdout.
fn ctl_reload(server: &ServerHandle, tree: &Tree, force: bool) -> (bool, String) {
    ctl_reload_with(server, tree, if force { &["--force"] } else { &[] })
}

/// `consortium-dns ctl reload ARGS...`: exit success, stdout and stderr.
fn ctl_reload_with(server: &ServerHandle, tree: &Tree, args: &[&str]) -> (bool, String) {
    let http = server.http_addr.expect("admin endpoint on");
    let mut command = Command::new(binary());
    command
        .args(["ctl", "reload", "--config"])
        .arg(tree.config_path())
        .arg("--http-listen")
        .arg(http.to_string())
        .args(args);
    let output = command.output().expect("run ctl reload");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_or_cut_short_file_is_held_back_until_an_operator_forces_it() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let members = tree.read(MEMBERS_FILE);
    let zone = tree.read(ZONE_FILE);

    // What `> members.toml` leaves: an empty file. Held back; everything keeps answering.
    tree.write(MEMBERS_FILE, "");
    let report = server.control.reload("test").await;
    assert!(!report.ok, "an emptied members file was published");
    let errors = report.errors.join("\n");
    assert!(
        errors.contains("held back") && errors.contains("from 5 members to 0"),
        "{errors}"
    );
    assert!(errors.contains("consortium.example.members.toml"), "{errors}");
    assert!(errors.contains("ctl reload --force"), "{errors}");
    assert_eq!(
        rcode_of(&server, "node1.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NoError
    );
    assert_eq!(
        rcode_of(&server, "any.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NoError
    );

    // A zone file cut after its SOA and NS: held back too.
    tree.write(MEMBERS_FILE, &members);
    let cut: String = zone
        .lines()
        .take_while(|l| !l.contains("IN CAA"))
        .map(|l| format!("{l}\n"))
        .collect();
    tree.write(ZONE_FILE, &cut);
    let report = server.control.reload("test").await;
    assert!(!report.ok, "a cut-short zone file was published");
    assert!(
        report.errors.join("\n").contains("zone-file records"),
        "{:?}",
        report.errors
    );
    assert_eq!(
        rcode_of(&server, "api.consortium.example.", RecordType::A).await,
        ResponseCode::NoError
    );

    // The control command reports the hold-back with a failing exit code, and --force
    // publishes what the operator confirms.
    tree.write(ZONE_FILE, &zone);
    tree.write(MEMBERS_FILE, "member-ttl = 300\n");
    let (ok, out) = ctl_reload(&server, &tree, false);
    assert!(!ok, "ctl reload succeeded on a held-back change: {out}");
    assert!(out.contains("held back"), "{out}");
    assert_eq!(
        rcode_of(&server, "node1.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NoError
    );
    let (ok, out) = ctl_reload(&server, &tree, true);
    assert!(ok, "ctl reload --force failed: {out}");
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(
        rcode_of(&server, "node1.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NXDomain
    );

    // Removing one member of five is an ordinary edit, never held back.
    tree.write(MEMBERS_FILE, &members);
    assert!(server.control.reload("test").await.ok);
    let four = members.replace(
        "[[member]]\nlabel = \"node1\"\ntarget = \"node1.operator-a.com\"\nweight = 2\n",
        "",
    );
    assert!(!four.contains("node1.operator-a.com"), "{four}");
    tree.write(MEMBERS_FILE, &four);
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");

    // hold-back-removal = 1 turns the guard off for the zone.
    edit(
        &tree,
        CONFIG,
        "members = \"../zones/consortium.example.members.toml\"\n",
        "members = \"../zones/consortium.example.members.toml\"\nhold-back-removal = 1\n",
    );
    tree.write(MEMBERS_FILE, "");
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        rcode_of(&server, "node2.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NXDomain
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// A version of the tree: a zone file with `version.consortium.example TXT "N"` and `filler`
/// records (so that reading it takes a while), and a members file whose node1 points at
/// `vN.operator-a.com`.
fn write_version(tree: &Tree, dir: &str, version: u32, zone: &str, members: &str, filler: &str) {
    std::fs::create_dir_all(tree.path(dir)).expect("mkdir");
    tree.write(
        &format!("{dir}/consortium.example.zone"),
        &format!("{zone}version 300 IN TXT \"{version}\"\n{filler}"),
    );
    tree.write(
        &format!("{dir}/consortium.example.members.toml"),
        &members.replace("node1.operator-a.com", &format!("v{version}.operator-a.com")),
    );
}

/// The versions one published snapshot holds: the zone file's TXT and node1's target.
fn versions_of(snapshot: &Snapshot) -> Option<(String, String)> {
    let zone = snapshot.zones().first()?;
    let txt = zone
        .records
        .iter()
        .find(|r| r.name.to_string() == "version.consortium.example.")?;
    let node1 = zone
        .members
        .iter()
        .find(|m| m.name.to_string() == "node1.consortium.example.")?;
    let target = node1.target.to_string();
    Some((
        String::from_utf8_lossy(&txt.rdata[1..]).into_owned(),
        target.split('.').next()?.trim_start_matches('v').to_string(),
    ))
}

fn versions_served(server: &ServerHandle) -> Option<(String, String)> {
    versions_of(&server.shared.snapshot.load())
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_swaps_never_publish_a_mix_of_two_versions() {
    let tree = Tree::example();
    let zone = tree.read(ZONE_FILE);
    let members = tree.read(MEMBERS_FILE);
    // 30,000 records: reading the zone file takes long enough for a swap to land between
    // it and the members file.
    let filler: String = (0..30_000)
        .map(|i| format!("f{i} 300 IN A 192.0.2.1\n"))
        .collect();
    write_version(&tree, "zones", 0, &zone, &members, &filler);
    let server = tree.start().await;
    assert_eq!(versions_served(&server), Some(("0".into(), "0".into())));

    // Watch every published snapshot while the README's `mv zones.new zones` swap runs again
    // and again, with SIGHUP-like reloads in between.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, server_shared) = (stop.clone(), server.shared.clone());
        tokio::task::spawn_blocking(move || {
            let mut mixed = Vec::new();
            let mut seen = 0usize;
            let mut last = None;
            while !stop.load(Ordering::Relaxed) {
                let snapshot = server_shared.snapshot.load_full();
                if last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &snapshot)) {
                    seen += 1;
                    if let Some((z, m)) = versions_of(&snapshot) {
                        if z != m {
                            mixed.push((z, m));
                        }
                    }
                    last = Some(snapshot);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (seen, mixed)
        })
    };
    // Reloads back to back (a SIGHUP storm), so that some are reading while a swap lands.
    let storm = {
        let (stop, control) = (stop.clone(), server.control.clone());
        tokio::spawn(async move {
            let mut reloads = 0;
            while !stop.load(Ordering::Relaxed) {
                control.reload("test").await;
                reloads += 1;
            }
            reloads
        })
    };
    let started = Instant::now();
    for version in 1..=6 {
        write_version(&tree, "zones.new", version, &zone, &members, &filler);
        std::fs::rename(tree.path("zones"), tree.path("zones.old")).expect("mv zones zones.old");
        std::fs::rename(tree.path("zones.new"), tree.path("zones")).expect("mv zones.new zones");
        std::fs::remove_dir_all(tree.path("zones.old")).expect("rm zones.old");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last version goes live by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while versions_served(&server) != Some(("6".into(), "6".into())) {
        assert!(Instant::now() < deadline, "still {:?}", versions_served(&server));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, mixed) = watcher.await.expect("watcher");
    let reloads = storm.await.expect("storm");
    eprintln!(
        "{reloads} reloads, {seen} snapshots published over {:?} of swaps, {} mixed",
        started.elapsed(),
        mixed.len()
    );
    assert!(mixed.is_empty(), "snapshots mixing two versions: {mixed:?}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_writes_are_never_served_half_written_and_endless_ones_are_reported() {
    let tree = Tree::example();
    let server = tree.start().await;
    let members = tree.read(MEMBERS_FILE);
    // An editor writing in place: truncate, the first part, a pause, the rest; again and
    // again. The first part ends between two tables, so it parses: three members of five.
    let half = members
        .find("[[member]]\nlabel = \"node4\"")
        .expect("node4's table");
    let path = tree.path(MEMBERS_FILE);
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open in place");
            file.write_all(&members.as_bytes()[..half]).expect("write");
            file.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(40));
            file.write_all(&members.as_bytes()[half..]).expect("write");
            drop(file);
            std::thread::sleep(Duration::from_millis(60));
        }
    });
    // Reloads back to back besides the watcher's (a SIGHUP storm).
    let storm = {
        let control = server.control.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                control.reload("test").await;
            }
        })
    };
    let mut answers = 0;
    let mut missing = 0;
    while !writer.is_finished() {
        for name in ["node1", "node4", "node5", "any"] {
            let rcode = rcode_of(&server, &format!("{name}.consortium.example."), RecordType::CNAME).await;
            answers += 1;
            if rcode != ResponseCode::NoError {
                missing += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.expect("writer");
    storm.await.expect("storm");
    eprintln!("{answers} answers during in-place writes, {missing} not NOERROR");
    assert_eq!(missing, 0, "answers from a half-written members file");
    // Under writes that never stop, the reload gave up and said why.
    let (last, _) = server.control.reload_reports();
    let last = last.expect("a reload was attempted");
    if !last.ok {
        let errors = last.errors.join("\n");
        assert!(
            errors.contains("files kept changing") || errors.contains("held back"),
            "{errors}"
        );
    }
    // Once the writes stop, the file is read whole and served.
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    server.shutdown(Duration::from_secs(1)).await;
}

/// Issue 21 item 4: `ctl history ZONE` lists the versions kept for IXFR and what changed.
#[tokio::test(flavor = "multi_thread")]
async fn ctl_history_lists_the_versions_kept_for_ixfr() {
    let tree = Tree::example();
    tree.enable_http();
    crate::common::append_to_zone_table(&tree, "allow-transfer = [{ network = \"127.0.0.1\" }]\n");
    let server = tree.start().await;
    edit(
        &tree,
        ZONE_FILE,
        "api     IN A    192.0.2.80",
        "api     IN A    192.0.2.81",
    );
    assert!(server.control.reload("test").await.ok);
    edit(
        &tree,
        ZONE_FILE,
        "api     IN A    192.0.2.81",
        "api     IN A    192.0.2.82",
    );
    assert!(server.control.reload("test").await.ok);
    let http = server.http_addr.expect("admin endpoint").to_string();
    let output = Command::new(binary())
        .args(["ctl", "history", "consortium.example", "--http-listen", &http])
        .output()
        .expect("run ctl history");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("2 versions kept for IXFR"), "{text}");
    for (from, to) in [(2026112501u32, 2026112502u32), (2026112502, 2026112503)] {
        assert!(
            text.contains(&format!("{from} -> {to}: 1 removed, 1 added")),
            "{text}"
        );
    }
    assert!(
        text.contains("- api.consortium.example. A") && text.contains("+ api.consortium.example. A"),
        "{text}"
    );
    let output = Command::new(binary())
        .args(["ctl", "history", "nowhere.example", "--http-listen", &http])
        .output()
        .expect("run ctl history");
    assert!(!output.status.success());
    server.shutdown(Duration::from_secs(1)).await;
}

/// `ctl reload ZONE` (issue 21) reads that zone's files alone: one operator's edit goes live
/// while another zone's file is broken, which fails every whole reload.
#[tokio::test(flavor = "multi_thread")]
async fn ctl_reload_of_one_zone_publishes_it_while_another_zone_is_broken() {
    let tree = Tree::example();
    tree.enable_http();
    let other_zone = "$ORIGIN other.example.\n$TTL 300\n@ IN SOA ns1 hostmaster 7 7200 3600 1209600 300\n  IN NS ns1\nns1 IN A 192.0.2.7\n";
    tree.write("zones/other.example.zone", other_zone);
    let config = tree.read(CONFIG);
    tree.write(
        CONFIG,
        &format!("{config}\n[[zone]]\norigin = \"other.example\"\nfile = \"../zones/other.example.zone\"\n"),
    );
    let server = tree.start().await;
    assert_eq!(
        rcode_of(&server, "ns1.other.example.", RecordType::A).await,
        ResponseCode::NoError
    );

    // The other zone breaks (a typo), and consortium.example gets a new member.
    tree.write(
        "zones/other.example.zone",
        &other_zone.replace("IN A 192.0.2.7", "IN A 192.0.2.777"),
    );
    let members = tree.read(MEMBERS_FILE);
    tree.write(
        MEMBERS_FILE,
        &format!("{members}\n[[member]]\nlabel = \"node9\"\ntarget = \"node9.operator-z.net.\"\n"),
    );
    let (ok, out) = ctl_reload_with(&server, &tree, &[]);
    assert!(!ok, "a whole reload must fail on the broken zone:\n{out}");
    assert!(out.contains("other.example.zone:5:"), "{out}");
    assert_eq!(
        rcode_of(&server, "node9.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NXDomain,
        "nothing of the failed reload is served"
    );

    let (ok, out) = ctl_reload_with(&server, &tree, &["consortium.example"]);
    assert!(ok, "{out}");
    assert!(out.contains("consortium.example"), "{out}");
    assert_eq!(
        rcode_of(&server, "node9.consortium.example.", RecordType::CNAME).await,
        ResponseCode::NoError
    );
    // The broken zone keeps its last good data.
    assert_eq!(
        rcode_of(&server, "ns1.other.example.", RecordType::A).await,
        ResponseCode::NoError
    );
    let (ok, out) = ctl_reload_with(&server, &tree, &["other.example"]);
    assert!(!ok && out.contains("other.example.zone:5:"), "{out}");
    let (ok, out) = ctl_reload_with(&server, &tree, &["nowhere.example"]);
    assert!(!ok && out.contains("no zone nowhere.example"), "{out}");
    server.shutdown(Duration::from_secs(1)).await;
}
