//! DNSSEC (issue 17), judged by real validators: `delv` and Unbound with the zone's DS as
//! trust anchor, `dnssec-verify` and `ldns-verify-zone` on an AXFR of the signed zone. Each
//! has its negative control: a signature flipped on the way (or in the file) must fail.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use consortium_dns::app::ServerHandle;
use consortium_dns::wire::{be16, skip_name};

use crate::common::{Tree, binary, edit, free_port, program, run_check};

pub(crate) const ORIGIN: &str = "consortium.example";

/// The example tree with `dnssec = true` (and `zone_lines`) in its `[[zone]]`, and no keys yet.
pub(crate) fn signed_tree(zone_lines: &str) -> Tree {
    let tree = Tree::example();
    crate::common::append_to_zone_table(&tree, &format!("dnssec = true\n{zone_lines}"));
    tree
}

pub(crate) fn keys_dir(tree: &Tree) -> PathBuf {
    tree.path("zones/keys/consortium.example")
}

/// A key pair made by BIND's `dnssec-keygen` (so the server reads BIND's files); with
/// `-f KSK` and alone, a CSK. Returns the key's tag.
pub(crate) fn bind_keygen(tree: &Tree, algorithm: &str, args: &[&str]) -> u16 {
    let keygen = program("dnssec-keygen", "bind9-utils", "it writes the DNSSEC key pairs");
    std::fs::create_dir_all(keys_dir(tree)).expect("key dir");
    let output = Command::new(keygen)
        .args(["-q", "-a", algorithm, "-K"])
        .arg(keys_dir(tree))
        .args(args)
        .arg(ORIGIN)
        .output()
        .expect("run dnssec-keygen");
    assert!(
        output.status.success(),
        "dnssec-keygen: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let name = String::from_utf8_lossy(&output.stdout).trim().to_string();
    name.rsplit('+')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("key name {name:?}"))
}

/// `consortium-dns dnssec <args> --config <tree>`: (success, stdout, stderr).
fn dnssec_command(tree: &Tree, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary())
        .arg("dnssec")
        .args(args)
        .arg("--config")
        .arg(tree.config_path())
        .output()
        .expect("run consortium-dns dnssec");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The zone's DS records as `consortium-dns dnssec ds` prints them: (tag, alg, type, digest).
pub(crate) fn ds_records(tree: &Tree) -> Vec<[String; 4]> {
    let (ok, out, err) = dnssec_command(tree, &["ds", "--zone", ORIGIN]);
    assert!(ok, "dnssec ds: {err}");
    out.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[..3], [&format!("{ORIGIN}.")[..], "IN", "DS"], "{line}");
            [fields[3], fields[4], fields[5], fields[6]].map(String::from)
        })
        .collect()
}

fn dns_addr(server: &ServerHandle) -> SocketAddr {
    server.dns_addrs[0]
}

/// `delv` with the DS as its only trust anchor, asking `server`: its whole output.
pub(crate) fn delv(anchor_file: &Path, server: SocketAddr, name: &str, qtype: &str) -> String {
    let delv = program("delv", "bind9-dnsutils", "it validates the signed answers");
    let output = Command::new(delv)
        .arg("-a")
        .arg(anchor_file)
        .arg(format!("+root={ORIGIN}."))
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args([name, qtype])
        .output()
        .expect("run delv");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn write_delv_anchor(tree: &Tree, ds: &[[String; 4]]) -> PathBuf {
    let lines: String = ds
        .iter()
        .map(|[tag, alg, kind, digest]| format!("  {ORIGIN}. static-ds {tag} {alg} {kind} \"{digest}\";\n"))
        .collect();
    let path = tree.path("anchor.conf");
    std::fs::write(&path, format!("trust-anchors {{\n{lines}}};\n")).expect("anchor file");
    path
}

/// A UDP relay between a resolver and the server that, while `tamper` is set, flips one
/// octet of the signature of every RRSIG in the answer section.
struct TamperingRelay {
    addr: SocketAddr,
    tamper: Arc<AtomicBool>,
}

impl TamperingRelay {
    fn start(upstream: SocketAddr) -> TamperingRelay {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        let addr = socket.local_addr().expect("relay address");
        let tamper = Arc::new(AtomicBool::new(false));
        let flag = tamper.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65_535];
            loop {
                let Ok((len, client)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let up = UdpSocket::bind("127.0.0.1:0").expect("upstream socket");
                up.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                if up.send_to(&buf[..len], upstream).is_err() {
                    continue;
                }
                let mut answer = [0u8; 65_535];
                let Ok(n) = up.recv(&mut answer) else { continue };
                let mut answer = answer[..n].to_vec();
                if flag.load(Ordering::SeqCst) {
                    flip_answer_signatures(&mut answer);
                }
                let _ = socket.send_to(&answer, client);
            }
        });
        TamperingRelay { addr, tamper }
    }
}

/// Flips the last octet of each answer-section RRSIG (its signature); returns how many.
fn flip_answer_signatures(message: &mut [u8]) -> usize {
    let Some(mut pos) = skip_name(message, 12).map(|p| p + 4) else {
        return 0;
    };
    let mut flipped = 0;
    for _ in 0..be16(message, 6) {
        let Some(end) = skip_name(message, pos) else {
            return flipped;
        };
        let rtype = be16(message, end);
        let rdlen = usize::from(be16(message, end + 8));
        let rdata_end = end + 10 + rdlen;
        if rdata_end > message.len() {
            return flipped;
        }
        if rtype == 46 {
            message[rdata_end - 1] ^= 0x55;
            flipped += 1;
        }
        pos = rdata_end;
    }
    flipped
}

/// An Unbound validating resolver on 127.0.0.1 with the zone's DS as trust anchor and the
/// zone stubbed to `authority`.
pub(crate) struct Unbound {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Unbound {
    pub(crate) fn start(ds: &[[String; 4]], authority: SocketAddr) -> Unbound {
        let unbound = program(
            "unbound",
            "unbound",
            "it is the validating resolver of the DNSSEC tests",
        );
        let dir = tempfile::tempdir().expect("unbound dir");
        let port = free_port();
        let anchors: String = ds
            .iter()
            .map(|[tag, alg, kind, digest]| {
                format!("  trust-anchor: \"{ORIGIN}. DS {tag} {alg} {kind} {digest}\"\n")
            })
            .collect();
        let config = format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-not-query-localhost: no\n  \
             username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"{dir}/unbound.pid\"\n  \
             use-syslog: no\n  logfile: \"{dir}/unbound.log\"\n  verbosity: 1\n  val-log-level: 2\n  \
             access-control: 127.0.0.0/8 allow\n  module-config: \"validator iterator\"\n  \
             aggressive-nsec: no\n  \
             num-threads: 1\n  so-reuseport: no\n{anchors}\
             remote-control:\n  control-enable: no\n\
             stub-zone:\n  name: \"{ORIGIN}\"\n  stub-addr: {}@{}\n",
            authority.ip(),
            authority.port(),
            dir = dir.path().display(),
        );
        let config_path = dir.path().join("unbound.conf");
        std::fs::write(&config_path, config).expect("unbound.conf");
        let child = Command::new(unbound)
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unbound");
        let unbound = Unbound { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "unbound did not start: {}",
                unbound.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        unbound
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }

    /// `dig +dnssec` through the resolver: (status, flags, answer lines).
    pub(crate) fn ask(&self, name: &str, qtype: &str) -> (String, Vec<String>, Vec<String>) {
        let dig = program("dig", "bind9-dnsutils", "it queries the validating resolver");
        let output = Command::new(dig)
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+dnssec",
                "+tries=1",
                "+time=5",
                name,
                qtype,
            ])
            .output()
            .expect("run dig");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let header = text
            .lines()
            .find(|l| l.contains("status:"))
            .unwrap_or_else(|| panic!("no answer from unbound for {name} {qtype}: {text}"));
        let status = header
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("")
            .to_string();
        let flags_line = text.lines().find(|l| l.contains(";; flags:")).unwrap_or("");
        let flags = flags_line
            .split(";; flags: ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect();
        let answers = text
            .split(";; ANSWER SECTION:\n")
            .nth(1)
            .map(|rest| {
                rest.lines()
                    .take_while(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        (status, flags, answers)
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Secure answers through delv and Unbound for every kind of name of the example zone; the
/// shared name over 30 queries, every one secure, at least two targets; a flipped signature
/// makes both fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_find_every_kind_of_answer_secure_and_a_tampered_signature_bogus() {
    let tree = signed_tree("");
    // A second shared name with nobody to offer (its one member weighs 0): NODATA.
    let members = tree.read("zones/consortium.example.members.toml");
    tree.write(
        "zones/consortium.example.members.toml",
        &format!(
            "{members}\n[[member]]\nlabel = \"spare\"\ntarget = \"spare.operator-f.org\"\nweight = 0\n\n\
             [[pool]]\nlabel = \"idle\"\nmembers = [\"spare\"]\n"
        ),
    );
    bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK"]);
    let server = tree.start().await;
    let ds = ds_records(&tree);
    assert_eq!(ds.len(), 1, "one KSK, one DS: {ds:?}");
    let anchor = write_delv_anchor(&tree, &ds);
    let addr = dns_addr(&server);

    let secure = [
        (ORIGIN, "SOA", "; fully validated"),
        (ORIGIN, "NS", "; fully validated"),
        (ORIGIN, "DNSKEY", "; fully validated"),
        ("node1.consortium.example", "CNAME", "; fully validated"),
        ("node5.consortium.example", "CNAME", "; fully validated"),
        ("ns1.consortium.example", "A", "; fully validated"),
        (
            "nope.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
        (
            "api.consortium.example",
            "TXT",
            "; negative response, fully validated",
        ),
        ("someone.teams.consortium.example", "TXT", "; fully validated"),
        (
            "someone.teams.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
        // An empty non-terminal (owner of nothing, above `_https._tcp.api`).
        (
            "_tcp.api.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
        // The insecure delegation: no DS, proved by the NSEC at the cut.
        (
            "lab.consortium.example",
            "DS",
            "; negative response, fully validated",
        ),
        // The shared name with nobody to offer: its NSEC lists no CNAME.
        (
            "idle.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
    ];
    for (name, qtype, verdict) in secure {
        let out = delv(&anchor, addr, name, qtype);
        assert!(
            out.contains(verdict),
            "{name} {qtype}: want {verdict:?}, delv says:\n{out}"
        );
    }
    let mut targets = BTreeSet::new();
    for _ in 0..30 {
        let out = delv(&anchor, addr, "any.consortium.example", "CNAME");
        assert!(out.contains("; fully validated"), "shared name: {out}");
        let target = out
            .lines()
            .find(|l| l.contains("\tCNAME\t"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no CNAME in {out}"))
            .to_string();
        targets.insert(target);
    }
    assert!(targets.len() >= 2, "30 picks gave {targets:?}");

    // Unbound through the relay, which passes answers untouched until told otherwise.
    let relay = TamperingRelay::start(addr);
    let unbound = Unbound::start(&ds, relay.addr);
    for (name, qtype, status) in [
        ("node1.consortium.example", "CNAME", "NOERROR"),
        ("any.consortium.example", "CNAME", "NOERROR"),
        (ORIGIN, "SOA", "NOERROR"),
        ("nope.consortium.example", "A", "NXDOMAIN"),
        ("api.consortium.example", "TXT", "NOERROR"),
        ("someone.teams.consortium.example", "TXT", "NOERROR"),
        ("lab.consortium.example", "DS", "NOERROR"),
    ] {
        let (got, flags, _) = unbound.ask(name, qtype);
        assert_eq!(got, status, "{name} {qtype} via unbound\n{}", unbound.log());
        assert!(
            flags.contains(&"ad".to_string()),
            "{name} {qtype}: not secure ({flags:?})\n{}",
            unbound.log()
        );
    }

    // The negative control: the same kind of answer with its signature flipped is bogus.
    relay.tamper.store(true, Ordering::SeqCst);
    let (status, flags, answers) = unbound.ask("node2.consortium.example", "CNAME");
    assert_eq!(
        status, "SERVFAIL",
        "a tampered RRSIG must not validate: {flags:?} {answers:?}"
    );
    let out = delv(&anchor, relay.addr, "node3.consortium.example", "CNAME");
    assert!(
        !out.contains("fully validated"),
        "delv accepted a tampered RRSIG:\n{out}"
    );
    drop(server);
}

/// Without DO nothing changes: no RRSIG, no NSEC. And operators see the keys and the earliest
/// signature expiry in /status, the metrics and `dnssec status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_do_carry_no_dnssec_records() {
    let tree = signed_tree("");
    tree.enable_http();
    bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK"]);
    let server = tree.start().await;
    let dig = program("dig", "bind9-dnsutils", "it queries the server");
    let addr = dns_addr(&server);
    for (name, qtype) in [
        ("node1.consortium.example", "CNAME"),
        ("nope.consortium.example", "A"),
        ("any.consortium.example", "A"),
    ] {
        let ask = |dnssec: &str| {
            let output = Command::new(&dig)
                .args([
                    &format!("@{}", addr.ip()),
                    "-p",
                    &addr.port().to_string(),
                    "+norec",
                    dnssec,
                    name,
                    qtype,
                ])
                .output()
                .expect("dig");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let plain = ask("+nodnssec");
        assert!(
            !plain.contains("RRSIG") && !plain.contains("NSEC"),
            "{name}: {plain}"
        );
        let signed = ask("+dnssec");
        assert!(signed.contains("RRSIG"), "{name} with DO: {signed}");
    }

    // A signed answer too long for the client's 512 octets goes out with TC and no partial
    // sections (RFC 4035 §3.1.1); over TCP it comes whole, denial proofs included.
    let nxdomain = |transport: &str| {
        let output = Command::new(&dig)
            .args([
                &format!("@{}", addr.ip()),
                "-p",
                &addr.port().to_string(),
                "+norec",
                "+dnssec",
            ])
            .args([
                "+bufsize=512",
                "+ignore",
                transport,
                "nope.consortium.example",
                "A",
            ])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let udp = nxdomain("+notcp");
    assert!(udp.contains(" tc") && udp.contains("AUTHORITY: 0"), "{udp}");
    let tcp = nxdomain("+tcp");
    assert!(
        !tcp.contains(" tc") && tcp.contains("\tNSEC\t") && tcp.contains("NXDOMAIN"),
        "{tcp}"
    );

    // What operators see: the key and the earliest expiry in /status and the metrics, the
    // keys' states from `dnssec status`.
    let (tag, now) = (ds_records(&tree)[0][0].clone(), crate::common::unix_now());
    let http = server.http_addr.expect("http endpoint");
    let (code, body) = crate::common::http_request(http, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let dnssec = &status["zones"][0]["dnssec"];
    let expiry = dnssec["earliest_expiry"].as_u64().expect("earliest_expiry");
    assert!(
        expiry > now + 13 * 86_400 && expiry < now + 16 * 86_400,
        "14 days plus jitter: {dnssec}"
    );
    assert_eq!(dnssec["keys"][0]["tag"].to_string(), tag, "{dnssec}");
    assert_eq!(dnssec["keys"][0]["state"], "active", "{dnssec}");
    let metrics = server.control.scrape();
    for line in [
        format!(
            "consortium_dns_dnssec_earliest_signature_expiry_timestamp_seconds{{zone=\"consortium.example.\"}} {expiry}"
        ),
        "consortium_dns_dnssec_keys{role=\"ksk\",state=\"active\",zone=\"consortium.example.\"} 1"
            .to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} missing from the metrics");
    }
    assert!(metrics.contains("consortium_dns_dnssec_signatures_total{zone=\"consortium.example.\"}"));
    let (ok, out, err) = dnssec_command(&tree, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&tag) && out.contains("active") && out.contains("signed"),
        "{out}"
    );
}

/// An AXFR of the signed zone (KSK and ZSK made by `consortium-dns dnssec keygen`, Ed25519)
/// passes `dnssec-verify` and `ldns-verify-zone`; one flipped signature in the file fails both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axfr_of_the_signed_zone_passes_dnssec_verify_and_ldns_verify_zone() {
    let tree = signed_tree("allow-transfer = [{ network = \"127.0.0.1\" }]\n");
    for role in ["--ksk", "--zsk"] {
        let (ok, out, err) = dnssec_command(
            &tree,
            &["keygen", "--zone", ORIGIN, "--algorithm", "ed25519", role],
        );
        assert!(ok, "keygen {role}: {err}");
        assert!(out.trim().ends_with(".key"), "{out}");
    }
    let server = tree.start().await;
    let addr = dns_addr(&server);
    let zone_text = axfr_text(addr);
    for kind in ["DNSKEY", "RRSIG", "NSEC"] {
        assert!(
            zone_text.contains(&format!("\t{kind}\t")),
            "AXFR lacks {kind}:\n{zone_text}"
        );
    }
    // The shared name's transfer pick travels with its pre-signed RRSIG.
    assert!(
        zone_text
            .lines()
            .any(|l| l.starts_with("any.consortium.example.") && l.contains("RRSIG\tCNAME")),
        "{zone_text}"
    );
    let file = tree.path("axfr.zone");
    std::fs::write(&file, &zone_text).expect("write AXFR");

    let verify = |path: &Path| {
        let [(bind_ok, bind_text), (ldns_ok, ldns_text)] = verify_zone_file(path, &[]);
        (bind_ok, bind_text, ldns_ok, ldns_text)
    };
    let (bind_ok, bind_text, ldns_ok, ldns_text) = verify(&file);
    assert!(bind_ok, "dnssec-verify: {bind_text}");
    assert!(ldns_ok, "ldns-verify-zone: {ldns_text}");

    // Negative control: one signature changed (the node1 CNAME's last base64 character).
    let tampered: String = zone_text
        .lines()
        .map(|line| {
            if line.starts_with("node1.consortium.example.") && line.contains("RRSIG\tCNAME") {
                let mut chars: Vec<char> = line.trim_end().chars().collect();
                let at = chars.len() - 3;
                chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
                chars.into_iter().collect::<String>() + "\n"
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(tampered, zone_text);
    let bad = tree.path("tampered.zone");
    std::fs::write(&bad, tampered).expect("write tampered");
    let (bind_ok, bind_text, ldns_ok, ldns_text) = verify(&bad);
    assert!(
        !bind_ok,
        "dnssec-verify accepted a tampered signature: {bind_text}"
    );
    assert!(
        !ldns_ok,
        "ldns-verify-zone accepted a tampered signature: {ldns_text}"
    );
}

/// The zone as `dig AXFR` from `server` prints it (one SOA).
pub(crate) fn axfr_text(server: SocketAddr) -> String {
    let dig = program("dig", "bind9-dnsutils", "it transfers the zone");
    let output = Command::new(dig)
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+nocmd",
            "+nostats",
            "+onesoa",
            ORIGIN,
            "AXFR",
        ])
        .output()
        .expect("dig AXFR");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// (success, output) of `dnssec-verify` (with `bind_args`) and of `ldns-verify-zone` on a
/// zone file.
pub(crate) fn verify_zone_file(path: &Path, bind_args: &[&str]) -> [(bool, String); 2] {
    let text = |o: std::process::Output| {
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let dnssec_verify = program("dnssec-verify", "bind9-utils", "it checks the signed zone");
    let bind = Command::new(dnssec_verify)
        .args(bind_args)
        .args(["-o", ORIGIN])
        .arg(path)
        .output()
        .expect("dnssec-verify");
    let ldns = program("ldns-verify-zone", "ldnsutils", "it checks the signed zone");
    let ldns = Command::new(ldns).arg(path).output().expect("ldns-verify-zone");
    [text(bind), text(ldns)]
}

/// Missing, malformed, mismatched, foreign and unsupported keys: `check` names the file and
/// the reason; a running server keeps serving its last signed snapshot when a reload meets
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_with_file_and_reason_and_the_signed_zone_keeps_serving() {
    let tree = signed_tree("");
    let (ok, _, err) = run_check(&tree);
    assert!(
        !ok && err.contains("keys/consortium.example") && err.contains("dnssec keygen"),
        "no keys: {err}"
    );
    bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK"]);
    let (ok, out, err) = run_check(&tree);
    assert!(ok, "a good key: {out}{err}");

    let server = tree.start().await;
    let serial_before = server.shared.snapshot.load().zones()[0].serial;
    let private = std::fs::read_dir(keys_dir(&tree))
        .expect("key dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "private"))
        .expect("a .private file");
    let good = std::fs::read_to_string(&private).expect("read private");
    let file_name = private.file_name().expect("name").to_string_lossy().into_owned();

    // A private key that is not this public key's.
    let other = tempfile::tempdir().expect("dir");
    let keygen = program("dnssec-keygen", "bind9-utils", "it writes the DNSSEC key pairs");
    let out = Command::new(&keygen)
        .args(["-q", "-a", "ECDSAP256SHA256", "-K"])
        .arg(other.path())
        .arg(ORIGIN)
        .output()
        .expect("dnssec-keygen");
    assert!(out.status.success());
    let other_private = std::fs::read_dir(other.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "private"))
        .expect("other private");
    let mismatched = std::fs::read_to_string(other_private).expect("read");
    let secret_line = good
        .lines()
        .find(|l| l.starts_with("PrivateKey:"))
        .expect("PrivateKey line")
        .to_string();
    for (bad, reason) in [
        (
            good.replace(&secret_line, "PrivateKey: not base64 at all!"),
            "not valid base64",
        ),
        (mismatched, "does not match the public key"),
        (good.replace("Algorithm: 13", "Algorithm: 8"), "algorithm"),
    ] {
        std::fs::write(&private, &bad).expect("write bad key");
        let (ok, _, err) = run_check(&tree);
        assert!(
            !ok && err.contains(&file_name) && err.contains(reason),
            "want {reason:?}: {err}"
        );
        // Key material never appears in a message.
        assert!(
            !err.contains(secret_line.trim_start_matches("PrivateKey: ")),
            "{err}"
        );
        let report = server.control.reload("test").await;
        assert!(!report.ok, "reload with a bad key must fail");
        assert!(
            report.errors.iter().any(|e| e.contains(reason)),
            "{:?}",
            report.errors
        );
        let snapshot = server.shared.snapshot.load();
        let zone = &snapshot.zones()[0];
        assert!(
            zone.dnssec.is_some() && zone.serial == serial_before,
            "still the signed snapshot"
        );
    }
    std::fs::write(&private, &good).expect("restore key");

    // A key of another zone in the directory; an RSA key, which the server does not sign with.
    let foreign = tempfile::tempdir().expect("dir");
    Command::new(&keygen)
        .args(["-q", "-a", "ECDSAP256SHA256", "-K"])
        .arg(foreign.path())
        .arg("other.example")
        .output()
        .expect("dnssec-keygen");
    for entry in std::fs::read_dir(foreign.path())
        .expect("dir")
        .filter_map(Result::ok)
    {
        let name = entry
            .file_name()
            .to_string_lossy()
            .replace("other.example", ORIGIN);
        std::fs::copy(entry.path(), keys_dir(&tree).join(name)).expect("copy foreign key");
    }
    let (ok, _, err) = run_check(&tree);
    assert!(!ok && err.contains("not for the zone"), "foreign key: {err}");
    for entry in std::fs::read_dir(keys_dir(&tree))
        .expect("dir")
        .filter_map(Result::ok)
    {
        if !entry
            .file_name()
            .to_string_lossy()
            .contains(file_name.trim_end_matches(".private"))
        {
            std::fs::remove_file(entry.path()).expect("remove");
        }
    }
    bind_keygen(&tree, "RSASHA256", &["-b", "2048"]);
    let (ok, _, err) = run_check(&tree);
    assert!(!ok && err.contains("unsupported algorithm 8"), "RSA key: {err}");
    // A zone file that brings its own DNSSEC records is refused with file:line.
    for entry in std::fs::read_dir(keys_dir(&tree))
        .expect("dir")
        .filter_map(Result::ok)
    {
        if entry.file_name().to_string_lossy().contains("+008+") {
            std::fs::remove_file(entry.path()).expect("remove");
        }
    }
    edit(
        &tree,
        "zones/consortium.example.zone",
        "mail    IN A    192.0.2.25",
        "mail    IN A    192.0.2.25\nmail IN TYPE47 \\# 1 00",
    );
    let (ok, _, err) = run_check(&tree);
    assert!(
        !ok && err.contains("consortium.example.zone:") && err.contains("signs this zone itself"),
        "{err}"
    );
}

/// What the server publishes at one moment: DNSKEY tags, the tags signing the SOA, CDS tags.
fn key_view(server: SocketAddr) -> (BTreeSet<u16>, BTreeSet<u16>, BTreeSet<u16>) {
    let dig = program("dig", "bind9-dnsutils", "it reads the published keys");
    let ask = |qtype: &str| {
        let output = Command::new(&dig)
            .args([
                &format!("@{}", server.ip()),
                "-p",
                &server.port().to_string(),
                "+norec",
                "+dnssec",
            ])
            .args(["+noall", "+answer", ORIGIN, qtype])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let tags_of = |text: &str, rtype: &str, field: usize| -> BTreeSet<u16> {
        text.lines()
            .filter(|l| l.split_whitespace().nth(3) == Some(rtype))
            .filter_map(|l| l.split_whitespace().nth(field).and_then(|t| t.parse().ok()))
            .collect()
    };
    // DNSKEY tags are not in the record text: compute them (RFC 4034 Appendix B).
    let dnskeys: BTreeSet<u16> = ask("DNSKEY")
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("DNSKEY"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let public = consortium_dns::tsig::decode_base64(&f[7..].concat()).expect("base64");
            let mut rdata = f[4].parse::<u16>().expect("flags").to_be_bytes().to_vec();
            rdata.push(3);
            rdata.push(f[6].parse().expect("algorithm"));
            rdata.extend(public);
            let mut sum: u32 = 0;
            for (i, b) in rdata.iter().enumerate() {
                sum += if i % 2 == 0 {
                    u32::from(*b) << 8
                } else {
                    u32::from(*b)
                };
            }
            ((sum + (sum >> 16)) & 0xFFFF) as u16
        })
        .collect();
    let soa = ask("SOA");
    (
        dnskeys,
        tags_of(&soa, "RRSIG", 10),
        tags_of(&ask("CDS"), "CDS", 4),
    )
}

/// A ZSK roll by pre-publication and a KSK roll by double signature, both driven by the keys'
/// timing metadata only (set by `dnssec-keygen -P/-A/-I/-D` a few seconds ahead): the server
/// moves through every step by itself, and `delv` (no cache) and Unbound (caching, the parent's
/// two DS as anchors, as during a KSK roll) validate at every second of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollovers_from_timing_metadata_never_break_validation() {
    let tree = signed_tree("");
    // t = 0: KSK1 and ZSK1 sign; ZSK2 is published ahead. t = 8: ZSK2 signs, ZSK1 retires
    // (still published), KSK2 joins and signs the DNSKEY RRset beside KSK1. t = 16: KSK1 and
    // ZSK1 are gone.
    let ksk1 = bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK", "-I", "+16", "-D", "+16"]);
    let zsk1 = bind_keygen(&tree, "ECDSAP256SHA256", &["-I", "+8", "-D", "+16"]);
    let zsk2 = bind_keygen(&tree, "ECDSAP256SHA256", &["-P", "now", "-A", "+8"]);
    let ksk2 = bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK", "-P", "+8", "-A", "+8"]);
    let started = Instant::now();
    let server = tree.start().await;
    let addr = dns_addr(&server);
    // The parent's DS set during the roll: both KSKs (`dnssec ds` prints published KSKs only,
    // so KSK2's DS is made from its file).
    let mut ds = ds_records(&tree);
    assert_eq!(ds.len(), 1, "only KSK1 is published at first: {ds:?}");
    let ksk2_file = std::fs::read_dir(keys_dir(&tree))
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("+{ksk2:05}.key")))
        .expect("KSK2 file");
    let dsfromkey = program("dnssec-dsfromkey", "bind9-utils", "it computes KSK2's DS");
    let out = Command::new(dsfromkey)
        .args(["-2"])
        .arg(&ksk2_file)
        .output()
        .expect("dnssec-dsfromkey");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.get(3).copied(), Some(&ksk2.to_string()[..]), "{line}");
    ds.push([f[3], f[4], f[5], f[6]].map(String::from));
    let anchor = write_delv_anchor(&tree, &ds);
    let unbound = Unbound::start(&ds, addr);

    let mut views = Vec::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(21) {
        let view = key_view(addr);
        let out = delv(&anchor, addr, ORIGIN, "SOA");
        assert!(
            out.contains("; fully validated"),
            "at {:?} ({view:?}): {out}",
            started.elapsed()
        );
        let (status, flags, _) = unbound.ask(&format!("roll-{i}.consortium.example"), "A");
        assert!(
            status == "NXDOMAIN" && flags.iter().any(|f| f == "ad"),
            "Unbound at {:?} ({view:?}): {status} {flags:?}\n{}",
            started.elapsed(),
            unbound.log()
        );
        let (cname_status, cname_flags, _) = unbound.ask("node1.consortium.example", "CNAME");
        assert!(
            cname_status == "NOERROR" && cname_flags.iter().any(|f| f == "ad"),
            "{cname_status} {cname_flags:?}"
        );
        views.push(view);
        i += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    let set = |tags: &[u16]| tags.iter().copied().collect::<BTreeSet<u16>>();
    let (first, last) = (views.first().expect("a view"), views.last().expect("a view"));
    assert_eq!(
        first.0,
        set(&[ksk1, zsk1, zsk2]),
        "DNSKEY at first (ZSK2 pre-published)"
    );
    assert_eq!(first.1, set(&[zsk1]), "ZSK1 signs at first");
    assert!(
        views
            .iter()
            .any(|v| v.0 == set(&[ksk1, ksk2, zsk1, zsk2]) && v.1 == set(&[zsk2]) && v.2 == set(&[ksk2])),
        "a double-KSK step with ZSK2 signing and KSK2's CDS: {views:?}"
    );
    assert_eq!(last.0, set(&[ksk2, zsk2]), "DNSKEY at the end");
    assert_eq!(last.1, set(&[zsk2]), "ZSK2 signs at the end");
    assert!(last.2.is_empty(), "no CDS once one KSK is left: {last:?}");
    drop(server);
}
