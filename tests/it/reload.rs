//! Hot reload (issue 5): edits of the zone, members and config files go live by themselves
//! (the file watcher), on SIGHUP and on `POST /reload`; bad edits never do and say where they
//! are; the SOA serial only moves forward; health state survives for unchanged members; and
//! under load every answer comes whole from one version of the data.
//!
//! Files are edited in a private copy of the example tree while the real server runs on it.
//! Waiting is always "poll until a deadline", never a fixed sleep that hopes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use consortium_dns::app::{ReloadReport, ServerHandle};
use consortium_dns::control::watch::DEBOUNCE;
use consortium_dns::http::StatusDocument;
use consortium_dns::metrics::{RELOADS_TOTAL, ZONE_SERIAL};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::common::{self, Tree, free_port, http_request, query, udp};

const ZONE: &str = "zones/consortium.example.zone";
const MEMBERS: &str = "zones/consortium.example.members.toml";
const CONFIG: &str = "config/consortium-dns.toml";
const APEX: &str = "consortium.example.";
/// The example zone's SOA serial.
const SERIAL: u32 = 2026112501;
/// Issue 5: an edit is live within this long.
const LIVE_WITHIN: Duration = Duration::from_secs(2);
/// How long the real binary may take to start answering.
const BINARY_START: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Polls `check` every 20 ms until it returns `Ok`, and fails the test with the last thing it
/// saw once `within` has passed.
async fn eventually<T>(within: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if start.elapsed() >= within => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A record as `owner TYPE rdata`, owner lowercased, TXT strings quoted.
fn show(record: &Record) -> String {
    let rdata = match &record.data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!("{} {} {rdata}", record.name.to_lowercase(), record.record_type())
}

/// The answer section in wire order.
fn answer_lines(m: &Message) -> Vec<String> {
    m.answers.iter().map(show).collect()
}

fn dns(server: &ServerHandle) -> SocketAddr {
    server.dns_addrs[0]
}

async fn ask(server: &ServerHandle, qname: &str, qtype: RecordType) -> Message {
    udp(dns(server), &query(qname, qtype, None)).await
}

/// Waits until `qname`/`qtype` is answered NOERROR with exactly `expected` (wire order).
async fn answers_become(server: &ServerHandle, qname: &str, qtype: RecordType, expected: &[&str]) {
    eventually(LIVE_WITHIN, &format!("{qname} {qtype} answer"), async || {
        let m = ask(server, qname, qtype).await;
        let lines = answer_lines(&m);
        if m.metadata.response_code == ResponseCode::NoError && lines == expected {
            Ok(())
        } else {
            Err(format!("{} {lines:?}", m.metadata.response_code))
        }
    })
    .await;
}

/// Waits until `qname` is NXDOMAIN.
async fn becomes_nxdomain(server: &ServerHandle, qname: &str) {
    eventually(LIVE_WITHIN, &format!("{qname} NXDOMAIN"), async || {
        let m = ask(server, qname, RecordType::A).await;
        if m.metadata.response_code == ResponseCode::NXDomain {
            Ok(())
        } else {
            Err(format!("{} {:?}", m.metadata.response_code, answer_lines(&m)))
        }
    })
    .await;
}

/// The SOA serial in an answer or, for negative answers, in the authority section.
fn soa_serial(m: &Message) -> Option<u32> {
    m.answers
        .iter()
        .chain(m.authorities.iter())
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
}

async fn served_serial(server: &ServerHandle) -> u32 {
    let m = ask(server, APEX, RecordType::SOA).await;
    soa_serial(&m).unwrap_or_else(|| panic!("no SOA in {m}"))
}

/// Replaces text that must be present in a file of the tree (whole-file atomic replace).
fn edit(tree: &Tree, relative: &str, from: &str, to: &str) {
    let text = tree.read(relative);
    assert!(text.contains(from), "{relative} lacks {from:?}");
    tree.replace(relative, &text.replacen(from, to, 1));
}

/// Appends text in place (the way `cat >> file` does: no rename, the watcher sees writes).
fn append_in_place(tree: &Tree, relative: &str, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(tree.path(relative))
        .expect("open for append");
    file.write_all(text.as_bytes()).expect("append");
}

/// The 1-based line number the next appended line will have.
fn next_line(tree: &Tree, relative: &str) -> usize {
    let text = tree.read(relative);
    assert!(text.ends_with('\n'), "{relative} ends with a newline");
    text.lines().count() + 1
}

fn http(server: &ServerHandle) -> SocketAddr {
    server.http_addr.expect("the HTTP endpoint is enabled")
}

async fn status_at(addr: SocketAddr) -> StatusDocument {
    let (code, body) = http_request(addr, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status JSON: {e}\n{body}"))
}

async fn status(server: &ServerHandle) -> StatusDocument {
    status_at(http(server)).await
}

/// The value of one sample line (`name{labels}`) of a `/metrics` scrape; 0 when absent.
async fn metric_at(addr: SocketAddr, series: &str) -> f64 {
    let (code, body) = http_request(addr, "GET", "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("metric value"))
}

async fn metric(server: &ServerHandle, series: &str) -> f64 {
    metric_at(http(server), series).await
}

fn reloads(outcome: &str) -> String {
    format!("{RELOADS_TOTAL}{{outcome=\"{outcome}\"}}")
}

/// Waits until `/status` shows a last reload that `accept` likes.
async fn last_reload_becomes(
    addr: SocketAddr,
    what: &str,
    accept: impl Fn(&ReloadReport) -> bool,
) -> ReloadReport {
    eventually(LIVE_WITHIN, what, async || {
        let doc = status_at(addr).await;
        match doc.last_reload {
            Some(report) if accept(&report) => Ok(report),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// `any.<zone>` picked `n` times: the CNAME targets seen.
async fn picks(server: &ServerHandle, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let m = ask(server, "any.consortium.example.", RecordType::CNAME).await;
        assert_eq!(m.answers.len(), 1, "{m}");
        match &m.answers[0].data {
            RData::CNAME(target) => seen.push(target.0.to_lowercase().to_string()),
            other => panic!("pool answered {other:?}"),
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Membership and zone edits go live through the watcher
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn added_member_answers_within_two_seconds() {
    let (tree, server) = common::start_example().await;
    let m = ask(&server, "node6.consortium.example.", RecordType::CNAME).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m}");

    // One [[member]] table appended in place, as an operator's `cat >>` would.
    append_in_place(
        &tree,
        MEMBERS,
        "\n[[member]]\nlabel = \"node6\"\ntarget = \"node6.operator-f.org\"\nweight = 1\n",
    );
    answers_become(
        &server,
        "node6.consortium.example.",
        RecordType::CNAME,
        &["node6.consortium.example. CNAME node6.operator-f.org."],
    )
    .await;
    // The change of members counts as a change of the zone: the serial moved.
    assert_eq!(served_serial(&server).await, SERIAL + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_member_is_gone_and_never_picked() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    answers_become(
        &server,
        "node5.consortium.example.",
        RecordType::CNAME,
        &["node5.consortium.example. CNAME bigchain.operator-e.de."],
    )
    .await;

    let text = tree.read(MEMBERS);
    let at = text
        .find("[[member]]\nlabel = \"node5\"")
        .expect("node5 is the last member of the example");
    tree.replace(MEMBERS, &text[..at]);
    becomes_nxdomain(&server, "node5.consortium.example.").await;

    let doc = status(&server).await;
    assert_eq!(doc.zones[0].members, 4);
    let pool = &doc.health.pools[0];
    assert!(pool.members.iter().all(|m| m.label != "node5"), "{pool:?}");
    let seen = picks(&server, 60).await;
    assert!(
        !seen.contains(&"bigchain.operator-e.de.".to_string()),
        "a removed member was picked: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weight_change_moves_the_picks() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let before = picks(&server, 40).await;
    assert!(
        before.iter().any(|t| t != "node.operator-d.io."),
        "weights 2,2,1,1,1 pick more than node4: {before:?}"
    );

    // Every member to weight 0 (listed, never picked) but node4, raised to 5.
    let mut text = tree.read(MEMBERS);
    for w in ["weight = 2", "weight = 1"] {
        text = text.replace(w, "weight = 0");
    }
    let text = text.replacen(
        "target = \"node.operator-d.io\"\nweight = 0",
        "target = \"node.operator-d.io\"\nweight = 5",
        1,
    );
    assert!(text.contains("weight = 5"), "{text}");
    tree.replace(MEMBERS, &text);

    eventually(LIVE_WITHIN, "status shows the new weights", async || {
        let doc = status(&server).await;
        let weights: Vec<(String, u32)> = doc.health.pools[0]
            .members
            .iter()
            .map(|m| (m.label.clone(), m.configured_weight))
            .collect();
        let expected = [
            ("node1", 0),
            ("node2", 0),
            ("node3", 0),
            ("node4", 5),
            ("node5", 0),
        ];
        if weights.iter().map(|(l, w)| (l.as_str(), *w)).eq(expected) {
            Ok(())
        } else {
            Err(format!("{weights:?}"))
        }
    })
    .await;
    let after = picks(&server, 40).await;
    assert!(
        after.iter().all(|t| t == "node.operator-d.io."),
        "only node4 has weight: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn static_record_edit_goes_live() {
    let (tree, server) = common::start_example().await;
    answers_become(
        &server,
        "api.consortium.example.",
        RecordType::A,
        &["api.consortium.example. A 192.0.2.80"],
    )
    .await;
    change_api_address(&tree);
    answers_become(
        &server,
        "api.consortium.example.",
        RecordType::A,
        &["api.consortium.example. A 192.0.2.81"],
    )
    .await;
    assert_eq!(served_serial(&server).await, SERIAL + 1);
}

/// Files outside the watched directories: a zone file `$INCLUDE`s a file from another
/// directory, and a reload adds a zone whose files live in a new directory. Edits of both go
/// live by themselves, without SIGHUP.
#[tokio::test(flavor = "multi_thread")]
async fn included_files_and_new_zone_directories_are_watched() {
    let tree = Tree::example();
    std::fs::create_dir_all(tree.path("shared")).expect("mkdir");
    tree.write("shared/hosts.inc", "extra 300 IN A 192.0.2.200\n");
    let zone = tree.read(ZONE);
    tree.write(ZONE, &format!("{zone}\n$INCLUDE ../shared/hosts.inc\n"));
    // $INCLUDE reads outside the zone file's directory only where the config allows it.
    edit(
        &tree,
        CONFIG,
        "file = \"../zones/consortium.example.zone\"\n",
        "file = \"../zones/consortium.example.zone\"\ninclude-roots = [\"../shared\"]\n",
    );
    let server = tree.start().await;
    answers_become(
        &server,
        "extra.consortium.example.",
        RecordType::A,
        &["extra.consortium.example. A 192.0.2.200"],
    )
    .await;
    tree.write("shared/hosts.inc", "extra 300 IN A 192.0.2.201\n");
    answers_become(
        &server,
        "extra.consortium.example.",
        RecordType::A,
        &["extra.consortium.example. A 192.0.2.201"],
    )
    .await;

    // A second zone, in a directory the server has never looked at, added by a reload.
    std::fs::create_dir_all(tree.path("other")).expect("mkdir");
    let other_zone = |address: &str| {
        format!(
            "$ORIGIN other.example.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 900 604800 300\n@ IN NS ns1\nns1 IN A {address}\n"
        )
    };
    tree.write("other/other.example.zone", &other_zone("192.0.2.10"));
    let config = tree.read(CONFIG);
    tree.write(
        CONFIG,
        &format!("{config}\n[[zone]]\norigin = \"other.example\"\nfile = \"../other/other.example.zone\"\n"),
    );
    answers_become(
        &server,
        "ns1.other.example.",
        RecordType::A,
        &["ns1.other.example. A 192.0.2.10"],
    )
    .await;
    tree.write("other/other.example.zone", &other_zone("192.0.2.11"));
    answers_become(
        &server,
        "ns1.other.example.",
        RecordType::A,
        &["ns1.other.example. A 192.0.2.11"],
    )
    .await;
}

/// A git checkout replaces several files: each written elsewhere in the directory, then
/// renamed into place, here 50 ms apart. The zone's new `release` CNAME points at a member
/// only the new members file has, so one response shows whether the two files went live
/// together: the debounce must make it one reload of both.
#[tokio::test(flavor = "multi_thread")]
async fn several_files_replaced_like_git_go_live_together() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let zone = tree.read(ZONE) + "release 300 IN CNAME node6\n";
    let members = tree.read(MEMBERS) + "\n[[member]]\nlabel = \"node6\"\ntarget = \"node6.operator-f.org\"\n";
    let dir = tree.path("zones");
    std::fs::write(dir.join(".git-new-zone"), zone).expect("write");
    std::fs::write(dir.join(".git-new-members"), members).expect("write");

    // A poller asks for `release` without pause while the files change.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let addr = dns(&server);
        tokio::spawn(async move {
            let mut torn = Vec::new();
            let mut complete = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let m = udp(addr, &query("release.consortium.example.", RecordType::A, None)).await;
                let lines = answer_lines(&m);
                match (m.metadata.response_code, lines.len()) {
                    (ResponseCode::NXDomain, 0) => {}
                    (ResponseCode::NoError, 2) => complete += 1,
                    _ => torn.push(format!("{} {lines:?}", m.metadata.response_code)),
                }
            }
            (complete, torn)
        })
    };
    std::fs::rename(dir.join(".git-new-zone"), tree.path(ZONE)).expect("rename");
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::rename(dir.join(".git-new-members"), tree.path(MEMBERS)).expect("rename");

    answers_become(
        &server,
        "release.consortium.example.",
        RecordType::A,
        &[
            "release.consortium.example. CNAME node6.consortium.example.",
            "node6.consortium.example. CNAME node6.operator-f.org.",
        ],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (complete, torn) = poller.await.expect("poller");
    assert!(
        torn.is_empty(),
        "the zone went live without its members file: {torn:?}"
    );
    assert!(complete > 0);

    // One reload for the burst (plus the one at start), none failed.
    tokio::time::sleep(DEBOUNCE + Duration::from_millis(200)).await;
    assert_eq!(metric(&server, &reloads("success")).await, 2.0);
    assert_eq!(metric(&server, &reloads("failure")).await, 0.0);
}

/// Some deploys swap the whole directory (`mv zones.new zones`, rsync into a fresh copy). The
/// swap goes live, and so do later edits in the new directory.
#[tokio::test(flavor = "multi_thread")]
async fn swapped_zones_directory_is_noticed_and_watched() {
    let (tree, server) = common::start_example().await;
    let fresh = tree.path("zones.new");
    std::fs::create_dir(&fresh).expect("mkdir");
    for file in ["consortium.example.zone", "consortium.example.members.toml"] {
        std::fs::copy(tree.path("zones").join(file), fresh.join(file)).expect("copy");
    }
    let zone = tree
        .read(ZONE)
        .replace("api     IN A    192.0.2.80", "api     IN A    192.0.2.81");
    std::fs::write(fresh.join("consortium.example.zone"), zone).expect("write");
    std::fs::rename(tree.path("zones"), tree.path("zones.old")).expect("move away");
    std::fs::rename(&fresh, tree.path("zones")).expect("move into place");
    answers_become(
        &server,
        "api.consortium.example.",
        RecordType::A,
        &["api.consortium.example. A 192.0.2.81"],
    )
    .await;

    // The old directory is no longer what counts: editing it changes nothing, editing the new
    // one goes live.
    std::fs::write(
        tree.path("zones.old/consortium.example.zone"),
        tree.read(ZONE).replace("192.0.2.81", "192.0.2.99"),
    )
    .expect("write old");
    edit(
        &tree,
        ZONE,
        "api     IN A    192.0.2.81",
        "api     IN A    192.0.2.82",
    );
    answers_become(
        &server,
        "api.consortium.example.",
        RecordType::A,
        &["api.consortium.example. A 192.0.2.82"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// SOA serial
// ---------------------------------------------------------------------------------------------

async fn reload_ok(server: &ServerHandle) -> ReloadReport {
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    report
}

/// The static-record edit these tests make: api's address from 192.0.2.80 to .81.
fn change_api_address(tree: &Tree) {
    edit(
        tree,
        ZONE,
        "api     IN A    192.0.2.80",
        "api     IN A    192.0.2.81",
    );
}

fn report_serial(report: &ReloadReport) -> u32 {
    report.serials[APEX]
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_rises_with_content_and_never_goes_backwards() {
    let (tree, server) = common::start_example().await;
    assert_eq!(served_serial(&server).await, SERIAL);

    // Content changed, serial not raised: increment (the default policy).
    change_api_address(&tree);
    assert_eq!(report_serial(&reload_ok(&server).await), SERIAL + 1);
    assert_eq!(served_serial(&server).await, SERIAL + 1);
    // Negative answers carry the same SOA.
    let m = ask(&server, "nothing-here.consortium.example.", RecordType::A).await;
    assert_eq!(soa_serial(&m), Some(SERIAL + 1), "{m}");

    // Nothing changed: the serial stays.
    assert_eq!(report_serial(&reload_ok(&server).await), SERIAL + 1);

    // A change of the members file alone is a change of the zone.
    append_in_place(
        &tree,
        MEMBERS,
        "\n[[member]]\nlabel = \"node6\"\ntarget = \"node6.operator-f.org\"\n",
    );
    assert_eq!(report_serial(&reload_ok(&server).await), SERIAL + 2);

    // The operator raised the serial: that value, content changed or not.
    edit(&tree, ZONE, "2026112501 ; serial", "2026120100 ; serial");
    assert_eq!(report_serial(&reload_ok(&server).await), 2026120100);
    assert_eq!(served_serial(&server).await, 2026120100);

    // The file's serial went down with a content change: still forward, from the served one.
    edit(&tree, ZONE, "2026120100 ; serial", "2026110100 ; serial");
    edit(
        &tree,
        ZONE,
        "mail    IN A    192.0.2.25",
        "mail    IN A    192.0.2.26",
    );
    assert_eq!(report_serial(&reload_ok(&server).await), 2026120101);
    // ...and without a content change it stays where it is.
    edit(&tree, ZONE, "2026110100 ; serial", "2026100100 ; serial");
    assert_eq!(report_serial(&reload_ok(&server).await), 2026120101);
    assert_eq!(served_serial(&server).await, 2026120101);

    // The watcher's own reloads of these edits agree (they may have run in between).
    tokio::time::sleep(DEBOUNCE + Duration::from_millis(200)).await;
    assert_eq!(served_serial(&server).await, 2026120101);
}

/// With `state-file`, the serial the policy raised survives a restart: the same files served by a
/// new process keep the raised serial instead of going back to the file's, and a change made
/// while the server was stopped raises it further. Without the file, a restart starts over.
#[tokio::test(flavor = "multi_thread")]
async fn served_serial_survives_a_restart_with_a_state_file() {
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG,
        "[server]\n",
        "[server]\nstate-file = \"../serials.json\"\n",
    );
    let server = tree.start().await;
    assert_eq!(served_serial(&server).await, SERIAL);
    change_api_address(&tree);
    assert_eq!(report_serial(&reload_ok(&server).await), SERIAL + 1);
    server.shutdown(Duration::from_secs(1)).await;

    let server = tree.start().await;
    assert_eq!(
        served_serial(&server).await,
        SERIAL + 1,
        "the raised serial, not the file's"
    );
    server.shutdown(Duration::from_secs(1)).await;

    edit(
        &tree,
        ZONE,
        "api     IN A    192.0.2.81",
        "api     IN A    192.0.2.82",
    );
    let server = tree.start().await;
    assert_eq!(served_serial(&server).await, SERIAL + 2, "changed while stopped");
    server.shutdown(Duration::from_secs(1)).await;
    let state = tree.read("serials.json");
    assert!(state.contains(&(SERIAL + 2).to_string()), "{state}");

    std::fs::remove_file(tree.path("serials.json")).expect("remove state");
    let server = tree.start().await;
    assert_eq!(
        served_serial(&server).await,
        SERIAL,
        "no state: the file's serial"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// A tree whose zone has `serial-policy = policy` and a file serial of 1, started.
async fn start_with_policy(policy: &str) -> (Tree, ServerHandle) {
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG,
        "members = \"../zones/consortium.example.members.toml\"",
        &format!("members = \"../zones/consortium.example.members.toml\"\nserial-policy = \"{policy}\""),
    );
    edit(&tree, ZONE, "2026112501 ; serial", "1 ; serial");
    let server = tree.start().await;
    assert_eq!(served_serial(&server).await, 1);
    (tree, server)
}

/// Now, as a `unixtime` serial (32 bits).
fn unix_now() -> u32 {
    common::unix_now() as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_policy_unixtime() {
    let (tree, server) = start_with_policy("unixtime").await;
    let before = unix_now();
    change_api_address(&tree);
    let first = report_serial(&reload_ok(&server).await);
    let after = unix_now();
    assert!(
        (before..=after).contains(&first),
        "{before} <= {first} <= {after}"
    );
    // A second change within the same second still moves forward.
    edit(
        &tree,
        ZONE,
        "api     IN A    192.0.2.81",
        "api     IN A    192.0.2.82",
    );
    let second = report_serial(&reload_ok(&server).await);
    assert!(
        second > first && second <= unix_now().max(first + 1),
        "{first} then {second}"
    );
}

/// Today's UTC date as YYYYMMDD, from `date` (an independent calendar).
fn utc_date() -> u32 {
    let out = Command::new("date")
        .args(["-u", "+%Y%m%d"])
        .output()
        .expect("run date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("YYYYMMDD")
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_policy_dateserial() {
    let (tree, server) = start_with_policy("dateserial").await;
    let day_before = utc_date();
    change_api_address(&tree);
    let first = report_serial(&reload_ok(&server).await);
    let day_after = utc_date();
    assert!(
        first == day_before * 100 || first == day_after * 100,
        "YYYYMMDD00 of today, got {first}"
    );
    // The same day again: YYYYMMDD01.
    edit(
        &tree,
        ZONE,
        "api     IN A    192.0.2.81",
        "api     IN A    192.0.2.82",
    );
    let second = report_serial(&reload_ok(&server).await);
    assert!(
        second == first + 1 || second == utc_date() * 100,
        "{first} then {second}"
    );
    assert_eq!(served_serial(&server).await, second);
}

// ---------------------------------------------------------------------------------------------
// Bad edits never go live, and say where they are
// ---------------------------------------------------------------------------------------------

/// Runs `consortium-dns status --http-listen addr` and returns its exit code and output.
async fn status_command(addr: SocketAddr) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(common::binary())
            .args(["status", "--http-listen", &addr.to_string()])
            .output()
            .expect("run consortium-dns status")
    })
    .await
    .expect("join");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The common course of a broken edit: `break_it` makes a valid change plus an error at
/// `file:line`; the old answers stay, status, the status command and metrics tell, and
/// `fix_it` makes the valid change live.
async fn broken_edit_is_refused_then_fixed(
    server: &ServerHandle,
    (file, line): (&str, usize),
    old: (&str, RecordType, &[&str]),
    new: &[&str],
    fix_it: impl FnOnce(),
) {
    let (qname, qtype, old_answer) = old;
    let at = format!("{file}:{line}:");
    let failures = metric(server, &reloads("failure")).await;
    let serial_series = format!("{ZONE_SERIAL}{{zone=\"{APEX}\"}}");
    let serial = metric(server, &serial_series).await;

    // The watcher tries and fails; /status says where.
    let report = last_reload_becomes(http(server), "a failed reload in /status", |r| !r.ok).await;
    assert!(
        report.errors.iter().any(|e| e.contains(&at)),
        "{at} in {:?}",
        report.errors
    );
    assert_eq!(report.trigger, "file change");
    let doc = status(server).await;
    let success = doc.last_successful_reload.expect("a successful load");
    assert!(success.ok);
    assert_eq!(success.trigger, "start");
    assert!(metric(server, &reloads("failure")).await > failures);
    assert_eq!(metric(server, &serial_series).await, serial, "serial gauge kept");
    let (code, shown) = status_command(http(server)).await;
    assert!(
        shown.contains("last reload: FAILED") && shown.contains(&at),
        "{shown}"
    );
    assert_eq!(
        code,
        Some(1),
        "status exits 1 after a failed reload (Nagios WARNING)"
    );

    // Old answers stay, and POST /reload answers 422 with the same errors.
    let m = ask(server, qname, qtype).await;
    assert_eq!(answer_lines(&m), old_answer, "{m}");
    let before_post = metric(server, &reloads("failure")).await;
    let (code, body) = http_request(http(server), "POST", "/reload").await;
    assert_eq!(code, 422, "{body}");
    let report: ReloadReport = serde_json::from_str(&body).expect("report JSON");
    assert!(!report.ok && report.trigger == "http", "{report:?}");
    assert!(report.errors.iter().any(|e| e.contains(&at)), "{report:?}");
    assert_eq!(metric(server, &reloads("failure")).await, before_post + 1.0);
    let m = ask(server, qname, qtype).await;
    assert_eq!(answer_lines(&m), old_answer, "{m}");

    // Fixed: the valid part of the edit goes live.
    let successes = metric(server, &reloads("success")).await;
    fix_it();
    answers_become(server, qname, qtype, new).await;
    let report = last_reload_becomes(http(server), "a good reload in /status", |r| r.ok).await;
    assert!(report.errors.is_empty());
    assert!(metric(server, &reloads("success")).await > successes);
    assert_eq!(
        status_command(http(server)).await.0,
        Some(0),
        "status exits 0 again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_zone_file_keeps_old_answers_until_fixed() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let line = next_line(&tree, ZONE);
    // A valid change and a bad address in the same save.
    let good = tree
        .read(ZONE)
        .replace("api     IN A    192.0.2.80", "api     IN A    192.0.2.81");
    tree.write(ZONE, &format!("{good}broken  IN A    192.0.2.999\n"));
    broken_edit_is_refused_then_fixed(
        &server,
        ("consortium.example.zone", line),
        (
            "api.consortium.example.",
            RecordType::A,
            &["api.consortium.example. A 192.0.2.80"],
        ),
        &["api.consortium.example. A 192.0.2.81"],
        || tree.replace(ZONE, &good),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_members_file_keeps_old_answers_until_fixed() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let good = tree.read(MEMBERS).replace(
        "target = \"node1.operator-a.com\"",
        "target = \"node1.operator-z.com\"",
    );
    // The bad member's table starts on the line after the blank one.
    let line = next_line(&tree, MEMBERS) + 1;
    tree.write(
        MEMBERS,
        &format!("{good}\n[[member]]\nlabel = \"node6\"\ntarget = \"bad_host.example\"\n"),
    );
    broken_edit_is_refused_then_fixed(
        &server,
        ("consortium.example.members.toml", line),
        (
            "node1.consortium.example.",
            RecordType::CNAME,
            &["node1.consortium.example. CNAME node1.operator-a.com."],
        ),
        &["node1.consortium.example. CNAME node1.operator-z.com."],
        || tree.replace(MEMBERS, &good),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn post_reload_answers_with_the_outcome() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let (code, body) = http_request(http(&server), "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    let report: ReloadReport = serde_json::from_str(&body).expect("report JSON");
    assert!(report.ok && report.errors.is_empty(), "{report:?}");
    assert_eq!(report.trigger, "http");
    assert_eq!(report.serials[APEX], SERIAL);
    assert!(report.restart_needed.is_empty(), "{report:?}");

    let (code, _) = http_request(http(&server), "GET", "/reload").await;
    assert_eq!(code, 405, "reload is POST only");

    // A config that does not parse is refused with its line, like a zone file.
    let line = next_line(&tree, CONFIG);
    tree.replace(CONFIG, &(tree.read(CONFIG) + "listne = 1\n"));
    let (code, body) = http_request(http(&server), "POST", "/reload").await;
    assert_eq!(code, 422, "{body}");
    let report: ReloadReport = serde_json::from_str(&body).expect("report JSON");
    let at = format!("consortium-dns.toml:{line}:");
    assert!(
        report.errors.iter().any(|e| e.contains(&at)),
        "{at} in {report:?}"
    );
    // Still serving.
    assert_eq!(served_serial(&server).await, SERIAL);
}

// ---------------------------------------------------------------------------------------------
// SIGHUP, restart-only settings, health across reloads
// ---------------------------------------------------------------------------------------------

/// The server binary, killed if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name}");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_reloads_on_sighup_and_on_file_change() {
    let tree = Tree::example();
    let dns_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log = std::fs::File::create(tree.path("server.log")).expect("log file");
    let child = Command::new(common::binary())
        .arg("serve")
        .arg("--config")
        .arg(tree.config_path())
        .args(["--listen", &dns_addr.to_string()])
        .args(["--http-listen", &http_addr.to_string()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the binary");
    let mut server = Running(child);
    let log_text = || std::fs::read_to_string(tree.path("server.log")).unwrap_or_default();

    eventually(
        BINARY_START,
        "the binary ready on its admin endpoint",
        async || match TcpStream::connect(http_addr).await {
            Ok(_) => match http_request(http_addr, "GET", "/readyz").await {
                (200, _) => Ok(()),
                (code, body) => Err(format!("/readyz {code} {body}")),
            },
            Err(e) => Err(format!("{e}\n{}", log_text())),
        },
    )
    .await;
    let doc = status_at(http_addr).await;
    assert_eq!(doc.last_reload.expect("start report").trigger, "start");
    assert_eq!(metric_at(http_addr, &reloads("success")).await, 1.0);

    // SIGHUP with no file change: only the signal can have caused this reload.
    signal(&server.0, "HUP");
    let report = last_reload_becomes(http_addr, "a SIGHUP reload", |r| r.trigger == "SIGHUP").await;
    assert!(report.ok, "{report:?}");
    assert_eq!(metric_at(http_addr, &reloads("success")).await, 2.0);
    assert!(
        matches!(server.0.try_wait(), Ok(None)),
        "SIGHUP does not stop the server"
    );

    // An edit goes live by itself in the real binary too.
    change_api_address(&tree);
    eventually(LIVE_WITHIN, "the edit in the binary", async || {
        let m = udp(dns_addr, &query("api.consortium.example.", RecordType::A, None)).await;
        let lines = answer_lines(&m);
        if lines == ["api.consortium.example. A 192.0.2.81"] {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;

    // SIGTERM stops it cleanly.
    signal(&server.0, "TERM");
    let code = eventually(
        Duration::from_secs(10),
        "exit after SIGTERM",
        async || match server.0.try_wait() {
            Ok(Some(code)) => Ok(code),
            _ => Err("still running".to_string()),
        },
    )
    .await;
    assert!(code.success(), "{code:?}\n{}", log_text());
    let log = log_text();
    assert!(log.contains("SIGHUP"), "the SIGHUP reload is logged: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_only_settings_are_reported_and_the_rest_applies() {
    let (tree, server) = common::start_example().await;
    let mut chaos = query("id.server.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let m = udp(dns(&server), &chaos).await;
    assert_eq!(answer_lines(&m), ["id.server. TXT \"ns1.consortium.example\""]);
    let m = ask(&server, "www.added.example.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::Refused,
        "not ours yet: {m}"
    );

    tree.write(
        "zones/added.example.zone",
        "$ORIGIN added.example.\n$TTL 300\n@ SOA ns1 hostmaster 7 7200 3600 1209600 300\n\
         @ NS ns1\nns1 A 192.0.2.7\nwww A 192.0.2.8\n",
    );
    let config = tree
        .read(CONFIG)
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]")
        .replace("ns1.consortium.example\"", "ns9.consortium.example\"")
        + "\n[[zone]]\norigin = \"added.example\"\nfile = \"../zones/added.example.zone\"\n";
    tree.replace(CONFIG, &config);

    let report = reload_ok(&server).await;
    assert_eq!(report.restart_needed, ["server.listen"], "{report:?}");
    assert_eq!(report.serials.get("added.example."), Some(&7), "{report:?}");
    // The new zone and identity are live, on the addresses bound at start.
    answers_become(
        &server,
        "www.added.example.",
        RecordType::A,
        &["www.added.example. A 192.0.2.8"],
    )
    .await;
    let m = udp(dns(&server), &chaos).await;
    assert_eq!(answer_lines(&m), ["id.server. TXT \"ns9.consortium.example\""]);
    // The watcher's reload of the same edit says the same.
    tokio::time::sleep(DEBOUNCE + Duration::from_millis(200)).await;
    let (last, _) = server.control.reload_reports();
    let last = last.expect("a report");
    assert!(last.ok, "{last:?}");
    assert_eq!(last.restart_needed, ["server.listen"]);
}

/// A TCP listener that counts connections: each one is one health probe.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

/// A member with a TCP probe to 127.0.0.1:`port`, up after one success, down at start.
fn probed_member(label: &str, target: &str, weight: u32, port: u16, interval: &str) -> String {
    format!(
        "\n[[member]]\nlabel = \"{label}\"\ntarget = \"{target}\"\nweight = {weight}\n\
         [member.health]\nkind = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\
         interval = \"{interval}\"\ntimeout = \"50ms\"\njitter = \"0s\"\nrise = 1\nfall = 1\n\
         initial = \"down\"\nslow-start = \"0s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn health_state_survives_reload_for_unchanged_members() {
    let (steady_port, steady_probes) = counting_listener().await;
    let (moved_port, moved_probes) = counting_listener().await;
    let (leaving_port, leaving_probes) = counting_listener().await;
    let tree = Tree::example();
    tree.enable_http();
    let pool = "[[pool]]\nlabel = \"any\"\n";
    tree.write(
        MEMBERS,
        &format!(
            "{pool}{}{}{}",
            probed_member("steady", "steady.example.net", 1, steady_port, "1h"),
            probed_member("moved", "moved.example.net", 1, moved_port, "1h"),
            probed_member("leaving", "leaving.example.net", 1, leaving_port, "100ms"),
        ),
    );
    let server = tree.start().await;

    let member = |doc: &StatusDocument, label: &str| {
        doc.health.pools[0]
            .members
            .iter()
            .find(|m| m.label == label)
            .map(|m| {
                (
                    m.state.clone(),
                    m.target.clone(),
                    m.configured_weight,
                    m.last_probe.as_ref().map(|p| p.age_s),
                )
            })
    };
    eventually(LIVE_WITHIN, "every member up after its first probe", async || {
        let doc = status(&server).await;
        let states: Vec<_> = ["steady", "moved", "leaving"]
            .iter()
            .map(|l| member(&doc, l))
            .collect();
        let all_up = states.iter().all(|s| s.as_ref().is_some_and(|s| s.0 == "up"));
        if all_up && leaving_probes.load(Ordering::SeqCst) >= 2 {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;
    assert_eq!(steady_probes.load(Ordering::SeqCst), 1);
    assert_eq!(moved_probes.load(Ordering::SeqCst), 1);
    // Let the steady member's last probe age measurably.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // steady: weight only (health kept); moved: new target (fresh state); leaving: removed.
    tree.replace(
        MEMBERS,
        &format!(
            "{pool}{}{}",
            probed_member("steady", "steady.example.net", 3, steady_port, "1h"),
            probed_member("moved", "elsewhere.example.net", 1, moved_port, "1h"),
        ),
    );
    let reloaded = Instant::now();
    reload_ok(&server).await;
    let leaving_at_reload = leaving_probes.load(Ordering::SeqCst);
    let doc = status(&server).await;
    let (state, _, weight, age) = member(&doc, "steady").expect("steady listed");
    assert_eq!((state.as_str(), weight), ("up", 3), "steady keeps its state");
    let age = age.expect("steady keeps its last probe");
    assert!(
        age >= 0.29,
        "steady's last probe is the one from before the reload ({age} s)"
    );
    let (_, target, _, age) = member(&doc, "moved").expect("moved listed");
    assert_eq!(target, "elsewhere.example.net.");
    assert!(
        age.is_none_or(|a| a <= reloaded.elapsed().as_secs_f64()),
        "moved starts fresh: {age:?}"
    );
    assert!(member(&doc, "leaving").is_none());

    // The changed member is probed anew and comes up; the unchanged one is not re-probed.
    eventually(LIVE_WITHIN, "moved probed again and up", async || {
        let doc = status(&server).await;
        let moved = member(&doc, "moved");
        if moved_probes.load(Ordering::SeqCst) == 2 && moved.as_ref().is_some_and(|m| m.0 == "up") {
            Ok(())
        } else {
            Err(format!(
                "{moved:?}, {} probes",
                moved_probes.load(Ordering::SeqCst)
            ))
        }
    })
    .await;
    // Past the watcher's own reload of the same edit and five of leaving's intervals.
    let wait = (DEBOUNCE + Duration::from_millis(200)).saturating_sub(reloaded.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(
        steady_probes.load(Ordering::SeqCst),
        1,
        "steady was not probed again"
    );
    assert_eq!(
        moved_probes.load(Ordering::SeqCst),
        2,
        "no restart on an unchanged reload"
    );
    let leaving_now = leaving_probes.load(Ordering::SeqCst);
    assert!(
        leaving_now <= leaving_at_reload + 1,
        "a removed member's probes stop ({leaving_at_reload} then {leaving_now})"
    );
    let doc = status(&server).await;
    let (state, _, _, age) = member(&doc, "steady").expect("steady listed");
    assert_eq!(state, "up");
    assert!(age.is_some_and(|a| a >= 0.29 + reloaded.elapsed().as_secs_f64() - 0.05));
}

// ---------------------------------------------------------------------------------------------
// Under load
// ---------------------------------------------------------------------------------------------

/// Version `v` of the data: a zone file whose `version` TXT says it and whose `mix` CNAME
/// points at member m`v`, and a members file whose targets all say it. A response mixing
/// the two files (zone of one version, members of the other) shows as `mix` -> m1 -> *.v2
/// or `mix` -> m2 -> *.v1.
fn versioned_data(tree: &Tree, base_zone: &str, v: u8) {
    tree.write(
        &format!("zones/v{v}.zone"),
        &format!("{base_zone}version IN TXT \"v{v}\"\nmix IN CNAME m{v}\n"),
    );
    tree.write(
        &format!("zones/v{v}.members.toml"),
        &format!(
            "[[pool]]\nlabel = \"any\"\n\n[[member]]\nlabel = \"m1\"\ntarget = \"m1.v{v}.example\"\n\n\
             [[member]]\nlabel = \"m2\"\ntarget = \"m2.v{v}.example\"\n"
        ),
    );
}

/// The config text pointing the zone at version `v`'s files.
fn versioned_config(base: &str, v: u8) -> String {
    base.replace(
        "file = \"../zones/consortium.example.zone\"",
        &format!("file = \"../zones/v{v}.zone\""),
    )
    .replace(
        "members = \"../zones/consortium.example.members.toml\"",
        &format!("members = \"../zones/v{v}.members.toml\""),
    )
}

/// Which version a response comes from, or why it is wrong.
fn version_of(qname: &str, m: &Message) -> Result<u8, String> {
    if m.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{qname}: {}", m.metadata.response_code));
    }
    let lines = answer_lines(m);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    for v in [1u8, 2] {
        let expected: Vec<String> = match qname {
            "version.consortium.example." => vec![format!("{qname} TXT \"v{v}\"")],
            "mix.consortium.example." => vec![
                format!("{qname} CNAME m{v}.consortium.example."),
                format!("m{v}.consortium.example. CNAME m{v}.v{v}.example."),
            ],
            "any.consortium.example." => {
                if lines.len() == 1
                    && (lines[0] == format!("{qname} CNAME m1.v{v}.example.")
                        || lines[0] == format!("{qname} CNAME m2.v{v}.example."))
                {
                    return Ok(v);
                }
                continue;
            }
            _ => unreachable!("{qname}"),
        };
        if lines == expected {
            return Ok(v);
        }
    }
    Err(format!("{qname}: neither version: {lines:?}"))
}

const LOAD_NAMES: [&str; 4] = [
    "version.consortium.example.",
    "mix.consortium.example.",
    "any.consortium.example.",
    APEX,
];
const LOAD_TYPES: [RecordType; 4] = [RecordType::TXT, RecordType::A, RecordType::A, RecordType::SOA];

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    answered: usize,
    per_version: [usize; 2],
    lost: usize,
    wrong: Vec<String>,
}

impl Seen {
    /// Classifies one response to `LOAD_NAMES[i]`; SOA serials must never go down.
    fn record(&mut self, i: usize, m: &Message, last_serial: &mut u32) {
        self.answered += 1;
        if LOAD_NAMES[i] == APEX {
            match soa_serial(m) {
                Some(s) if s >= *last_serial => *last_serial = s,
                other => self.wrong.push(format!(
                    "serial {other:?} after {last_serial}: {}",
                    m.metadata.response_code
                )),
            }
            return;
        }
        match version_of(LOAD_NAMES[i], m) {
            Ok(v) => self.per_version[usize::from(v - 1)] += 1,
            Err(e) => self.wrong.push(e),
        }
    }
}

/// One UDP client: a query in flight at all times, each waited for (no retransmission).
async fn udp_client(addr: SocketAddr, stop: Arc<AtomicBool>, seed: u16) -> Seen {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(addr).await.expect("connect");
    let mut seen = Seen::default();
    let mut last_serial = 0;
    let mut buf = vec![0u8; 4096];
    let mut n: usize = usize::from(seed);
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let i = n % LOAD_NAMES.len();
        let id = (n as u16).wrapping_mul(7).wrapping_add(seed);
        let qtype = LOAD_TYPES[i];
        let mut q = query(LOAD_NAMES[i], qtype, None);
        q.metadata.id = id;
        socket.send(&q.to_vec().expect("encode")).await.expect("send");
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let len = socket.recv(&mut buf).await.expect("recv");
                let m = Message::from_vec(&buf[..len]).expect("answer parses");
                if m.metadata.id == id {
                    return m;
                }
            }
        })
        .await;
        match answer {
            Ok(m) => seen.record(i, &m, &mut last_serial),
            Err(_) => seen.lost += 1,
        }
    }
    seen
}

/// One TCP client on one connection, queries back to back.
async fn tcp_client(addr: SocketAddr, stop: Arc<AtomicBool>) -> Seen {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut seen = Seen::default();
    let mut last_serial = 0;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let i = n % LOAD_NAMES.len();
        let qtype = LOAD_TYPES[i];
        let bytes = query(LOAD_NAMES[i], qtype, None).to_vec().expect("encode");
        let mut frame = (bytes.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&bytes);
        stream.write_all(&frame).await.expect("write");
        let len = stream.read_u16().await.expect("length") as usize;
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await.expect("read");
        seen.record(i, &Message::from_vec(&buf).expect("parses"), &mut last_serial);
    }
    seen
}

/// 50 reloads alternate between two versions while clients query without pause: every answer
/// is whole from one version, none is SERVFAIL, and none is lost. Switching versions is one
/// atomic rename of the config (pointing at the other version's zone and members files), so a
/// reload the watcher starts on its own also sees one version or the other, never a mix that
/// the test itself made. Losses are counted, not retried: on loopback with eight queries in
/// flight nothing should drop.
#[tokio::test(flavor = "multi_thread")]
async fn answers_under_load_come_whole_from_one_version() {
    const RELOADS: usize = 50;
    const UDP_CLIENTS: u16 = 7;
    let tree = Tree::example();
    let base_zone = tree.read(ZONE);
    let base_config = tree.read(CONFIG);
    versioned_data(&tree, &base_zone, 1);
    versioned_data(&tree, &base_zone, 2);
    tree.write(CONFIG, &versioned_config(&base_config, 1));
    let server = tree.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for seed in 0..UDP_CLIENTS {
        clients.push(tokio::spawn(udp_client(dns(&server), stop.clone(), seed * 1_000)));
    }
    clients.push(tokio::spawn(tcp_client(dns(&server), stop.clone())));

    let started = Instant::now();
    for i in 0..RELOADS {
        let v = if i % 2 == 0 { 2 } else { 1 };
        tree.replace(CONFIG, &versioned_config(&base_config, v));
        let report = server.control.reload("load test").await;
        assert!(report.ok, "{report:?}");
        // Give the clients a few round trips on this version.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reload_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    let mut total = Seen::default();
    for client in clients {
        let seen = client.await.expect("client");
        total.answered += seen.answered;
        total.lost += seen.lost;
        total.per_version[0] += seen.per_version[0];
        total.per_version[1] += seen.per_version[1];
        total.wrong.extend(seen.wrong);
    }
    assert!(
        total.wrong.is_empty(),
        "{} wrong answers: {:?}",
        total.wrong.len(),
        &total.wrong[..total.wrong.len().min(10)]
    );
    assert_eq!(
        total.lost,
        0,
        "lost queries out of {}",
        total.answered + total.lost
    );
    assert!(
        total.per_version.iter().all(|&n| n >= 20),
        "both versions answered often: {total:?} over {reload_time:?}"
    );
    // 50 content changes, each raising the serial by one.
    assert_eq!(served_serial(&server).await, SERIAL + RELOADS as u32);
}

/// Sends `count` identical queries for `qname` from one socket at once and counts the full
/// (not truncated) answers that come back.
fn burst(server: SocketAddr, qname: &str, count: u16) -> usize {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(server).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    for id in 0..count {
        let mut q = query(qname, RecordType::A, None);
        q.metadata.id = id;
        socket.send(&q.to_vec().expect("encode")).expect("send");
    }
    let mut answered = 0;
    let mut buf = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        let m = Message::from_vec(&buf[..n]).expect("answer parses");
        if !m.metadata.truncation {
            answered += 1;
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread")]
async fn rrl_rates_apply_on_reload_and_listen_waits_for_a_restart() {
    let tree = Tree::example();
    let config = tree
        .read(CONFIG)
        .replace("[rrl]\nenabled = false", "[rrl]\nenabled = true")
        .replace("responses-per-second = 20", "responses-per-second = 1000")
        .replace("slip = 2", "slip = 0");
    tree.write(CONFIG, &config);
    let server = tree.start().await;
    let addr = dns(&server);
    // Negative control: at 1,000 per second a burst of 10 all gets through.
    let before = tokio::task::spawn_blocking(move || burst(addr, "www.consortium.example.", 10))
        .await
        .expect("burst");
    assert_eq!(before, 10, "every answer of the burst at 1000/s");

    tree.replace(
        CONFIG,
        &config.replace("responses-per-second = 1000", "responses-per-second = 2"),
    );
    for round in 1..=2 {
        let report = server.control.reload("test").await;
        assert!(report.ok, "reload {round}: {report:?}");
        assert!(
            report.restart_needed.is_empty(),
            "reload {round}: RRL rates need no restart: {report:?}"
        );
        assert_eq!(
            server.shared.rrl.rates().responses_per_second,
            2,
            "reload {round}"
        );
        // Another name (its own bucket): a burst of 2 passes, the rest is dropped (slip 0).
        let qname = format!("node{}.consortium.example.", round + 1);
        let after = tokio::task::spawn_blocking(move || burst(addr, &qname, 10))
            .await
            .expect("burst");
        assert!(
            (1..=3).contains(&after),
            "reload {round}: at 2 per second a burst of 10 is held to about 2, got {after}"
        );
    }

    // A new listen address needs a restart: both reloads say so, the old sockets keep serving.
    let moved = tree
        .read(CONFIG)
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]");
    tree.replace(CONFIG, &moved);
    for round in 1..=2 {
        let report = server.control.reload("test").await;
        assert!(report.ok, "reload {round}: {report:?}");
        assert_eq!(
            report.restart_needed,
            ["server.listen"],
            "reload {round}: {report:?}"
        );
        assert_eq!(
            server.control.config().restart.listen,
            server.config.restart.listen
        );
        let m = udp(addr, &query("node1.consortium.example.", RecordType::CNAME, None)).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "UDP after reload {round}"
        );
        let m = common::tcp(addr, &query("node1.consortium.example.", RecordType::CNAME, None)).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "TCP after reload {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn post_reload_from_a_web_page_is_refused() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let http = server.http_addr.expect("HTTP endpoint");
    let reloads = || {
        server
            .control
            .metrics
            .reloads
            .with_label_values(&["success"])
            .get()
    };
    let at_start = reloads();

    // What a browser adds to a POST from a page of another site (or a name rebound to
    // 127.0.0.1): refused, nothing reloaded.
    for header in [
        "Origin: http://evil.example\r\n",
        "Origin: http://evil.example:8053\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\nOrigin: http://127.0.0.1\r\n",
        "Origin: null\r\n",
    ] {
        let (code, body) = common::http_request_with(http, "POST", "/reload", header).await;
        assert_eq!(code, 403, "{header:?}: {body}");
        assert_eq!(reloads(), at_start, "{header:?}: no reload ran");
    }
    // Negative controls: the operator's own tools (no Origin), or a page served from loopback.
    for header in [
        "",
        &format!("Origin: http://{http}\r\n"),
        "Origin: http://localhost:8053\r\n",
    ] {
        let (code, body) = common::http_request_with(http, "POST", "/reload", header).await;
        assert_eq!(code, 200, "{header:?}: {body}");
    }
    assert_eq!(reloads(), at_start + 3, "the three allowed POSTs reloaded");
}
