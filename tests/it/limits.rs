//! Bounds on what files can make the server do (issue 22, findings 1, 6 and 10): an `$INCLUDE`
//! fan-out of a few kilobytes, a file of endless errors, `$INCLUDE` of secrets. Each is
//! refused with an error naming the limit, quickly and in little memory, while the running
//! server keeps its last good data.

use std::process::Command;
use std::time::{Duration, Instant};

use consortium_dns::app::ServerHandle;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::common::{Tree, binary, edit, program, query, run_check, udp};

const ZONE_FILE: &str = "zones/consortium.example.zone";
const CONFIG: &str = "config/consortium-dns.toml";

/// Seven files, each `$INCLUDE`ing the next ten times (no loop, depth 7 within the limit of
/// 8): 10^6 expansions of the last file's record, 3.4 KB of text in all.
fn write_include_bomb(tree: &Tree) {
    for level in 0..6 {
        let line = format!("$INCLUDE bomb-{}.inc\n", level + 1);
        tree.write(&format!("zones/bomb-{level}.inc"), &line.repeat(10));
    }
    tree.write("zones/bomb-6.inc", "bomb 300 IN TXT \"boom\"\n");
    let zone = tree.read(ZONE_FILE);
    tree.write(ZONE_FILE, &format!("{zone}$INCLUDE bomb-0.inc\n"));
}

/// `consortium-dns check` under GNU time: success, stderr, peak resident set in KiB.
fn check_with_peak_rss(tree: &Tree) -> (bool, String, u64) {
    let time = program("time", "time", "it measures the peak memory of `check`");
    let output = Command::new(time)
        .args(["-f", "peak-rss-kib=%M"])
        .arg(binary())
        .arg("check")
        .arg("--config")
        .arg(tree.config_path())
        .output()
        .expect("run check under time");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let peak = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {stderr}"));
    (output.status.success(), stderr, peak)
}

async fn assert_still_serving(server: &ServerHandle) {
    let m = udp(
        server.dns_addrs[0],
        &query("node1.consortium.example.", RecordType::CNAME, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m}");
    assert_eq!(m.answers.len(), 1, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_include_fan_out_is_refused_in_little_memory_and_the_old_data_keeps_serving() {
    let tree = Tree::example();
    let server = tree.start().await;
    write_include_bomb(&tree);

    let started = Instant::now();
    let report = server.control.reload("test").await;
    let took = started.elapsed();
    assert!(!report.ok, "the fan-out was accepted: {report:?}");
    let errors = report.errors.join("\n");
    assert!(errors.contains("limits.zone-includes = 1000"), "{errors}");
    assert!(errors.contains("bomb-"), "the error names the file: {errors}");
    assert!(took < Duration::from_secs(5), "refusing it took {took:?}");
    assert_still_serving(&server).await;

    // `check` (run by the systemd unit before start) refuses it too, in little memory: the
    // expansions stop at the limit instead of building 10^6 records.
    let (ok, stderr, peak_kib) = check_with_peak_rss(&tree);
    assert!(!ok, "check accepted the fan-out");
    assert!(stderr.contains("limits.zone-includes"), "{stderr}");
    eprintln!("check of the 10^6-expansion fan-out: peak RSS {peak_kib} KiB");
    assert!(peak_kib < 100 * 1024, "check peaked at {peak_kib} KiB");
    server.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn records_and_bytes_count_every_expansion_and_the_limits_are_configurable() {
    let tree = Tree::example();
    // Three files of 40 records, each included three times: 120 distinct lines, 360 records.
    let mut zone = tree.read(ZONE_FILE);
    for part in 0..3 {
        let records: String = (0..40)
            .map(|i| format!("r{part}-{i} 300 IN TXT \"{}\"\n", "x".repeat(60)))
            .collect();
        tree.write(&format!("zones/part-{part}.inc"), &records);
        zone.push_str(&format!("$INCLUDE part-{part}.inc\n").repeat(3));
    }
    tree.write(ZONE_FILE, &zone);
    // The example config lists every limit with its default.
    edit(&tree, CONFIG, "zone-records = 10000000\n", "zone-records = 300\n");
    let (ok, _, stderr) = run_check(&tree);
    assert!(!ok);
    assert!(
        stderr.contains("more than 300 records") && stderr.contains("limits.zone-records = 300"),
        "{stderr}"
    );

    edit(&tree, CONFIG, "zone-records = 300\n", "zone-records = 400\n");
    edit(&tree, CONFIG, "zone-bytes = 1073741824\n", "zone-bytes = 20000\n");
    let (ok, _, stderr) = run_check(&tree);
    assert!(!ok);
    assert!(stderr.contains("limits.zone-bytes = 20000"), "{stderr}");

    // Within every limit, the same files are accepted.
    edit(&tree, CONFIG, "zone-bytes = 20000\n", "zone-bytes = 200000\n");
    let (ok, _, stderr) = run_check(&tree);
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_of_endless_errors_reports_the_first_fifty_and_a_count() {
    let tree = Tree::example();
    let server = tree.start().await;
    let zone = tree.read(ZONE_FILE);
    let bad: String = (0..20_000)
        .map(|i| format!("bad{i} IN A not-an-address\n"))
        .collect();
    tree.write(ZONE_FILE, &format!("{zone}{bad}"));

    let report = server.control.reload("test").await;
    assert!(!report.ok);
    assert!(
        report.errors.len() <= 52,
        "{} errors reported",
        report.errors.len()
    );
    let last = report.errors.last().expect("errors");
    assert!(
        last.contains("more errors not shown, from here on (limits.errors-per-file = 50)"),
        "{last}"
    );
    assert!(
        report.errors[0].contains("consortium.example.zone:"),
        "{}",
        report.errors[0]
    );
    assert_still_serving(&server).await;

    let (_, _, stderr) = run_check(&tree);
    assert!(
        stderr.lines().count() < 60,
        "{} lines of errors",
        stderr.lines().count()
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// A key secret in the zone's own directory, named by the config, and one text every error
/// message must keep out: the secret, the environment.
#[tokio::test(flavor = "multi_thread")]
async fn include_never_reads_key_files_or_outside_the_zone_tree_and_errors_quote_little() {
    let tree = Tree::example();
    let secret = "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1hcHBlYXItaW4tYS1sb2ctbGluZS0xMjM0NTY3ODkwMTIzNDU2Nzg5MA==";
    tree.write("zones/xfr.key", &format!("{secret}\n"));
    tree.write("config/other.key", &format!("{secret}\n"));
    edit(
        &tree,
        CONFIG,
        "[[zone]]\n",
        "[[key]]\nname = \"xfr\"\nalgorithm = \"hmac-sha256\"\nsecret-file = \"../zones/xfr.key\"\n\n[[zone]]\n",
    );
    let server = tree.start().await;
    let zone = tree.read(ZONE_FILE);
    let environment_marker = "LEAK-CHECK-ENVIRONMENT-VALUE";
    let cases = [
        ("$INCLUDE xfr.key\n", "that is a TSIG key file"),
        (
            "$INCLUDE ../config/other.key\n",
            "outside the zone file's directory",
        ),
        (
            "$INCLUDE /proc/self/environ\n",
            "outside the zone file's directory",
        ),
        // The secret pasted as an owner name: the error quotes 16 characters of it.
        (
            &*format!("{secret} 300 IN A 192.0.2.1\n"),
            "label longer than 63 octets",
        ),
    ];
    for (line, expected) in cases {
        tree.write(ZONE_FILE, &format!("{zone}{line}"));
        let report = server.control.reload("test").await;
        assert!(!report.ok, "{line}: accepted");
        let errors = report.errors.join("\n");
        assert!(errors.contains(expected), "{line}: {errors}");
        assert!(
            !errors.contains(&secret[16..40]),
            "{line}: the secret leaked: {errors}"
        );
        assert!(!errors.contains(environment_marker), "{line}: {errors}");
        let output = Command::new(binary())
            .args(["check", "--config"])
            .arg(tree.config_path())
            .env("LEAK_CHECK", environment_marker)
            .output()
            .expect("check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{line}: check accepted it");
        assert!(stderr.contains(expected), "{line}: {stderr}");
        assert!(!stderr.contains(&secret[16..40]), "{line}: {stderr}");
        assert!(!stderr.contains(environment_marker), "{line}: {stderr}");
        assert_still_serving(&server).await;
    }

    // The include roots widen what $INCLUDE may read, but never to a key file.
    std::fs::create_dir_all(tree.path("shared")).expect("mkdir");
    tree.write("shared/hosts.inc", "shared-host 300 IN A 192.0.2.77\n");
    tree.write(ZONE_FILE, &format!("{zone}$INCLUDE ../shared/hosts.inc\n"));
    assert!(!server.control.reload("test").await.ok);
    edit(
        &tree,
        CONFIG,
        "members = \"../zones/consortium.example.members.toml\"\n",
        "members = \"../zones/consortium.example.members.toml\"\ninclude-roots = [\"../shared\"]\n",
    );
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    let m = udp(
        server.dns_addrs[0],
        &query("shared-host.consortium.example.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.answers.len(), 1, "{m}");
    server.shutdown(Duration::from_secs(1)).await;
}
