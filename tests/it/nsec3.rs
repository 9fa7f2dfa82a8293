//! NSEC3 denial (issue 17, `denial = "nsec3"`, RFC 5155 with RFC 9276's parameters), judged
//! by `delv`, Unbound, `dnssec-verify` and `ldns-verify-zone`; the negative control is a
//! tampered NSEC3 in the transferred zone, which both verifiers must reject.

use std::path::Path;
use std::process::Command;

use crate::common::program;
use crate::dnssec::{
    ORIGIN, Unbound, axfr_text, bind_keygen, delv, ds_records, signed_tree, verify_zone_file,
    write_delv_anchor,
};

/// The records of dig output (comments left out) whose type is `rtype`, as fields.
pub(crate) fn records_of<'t>(text: &'t str, rtype: &str) -> Vec<Vec<&'t str>> {
    text.lines()
        .filter(|l| !l.starts_with(';'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(3) == Some(&rtype))
        .collect()
}

/// `dig` at `server` with DO set: its whole output.
pub(crate) fn dig_dnssec(server: std::net::SocketAddr, name: &str, qtype: &str) -> String {
    let dig = program("dig", "bind9-dnsutils", "it queries the server");
    let output = Command::new(dig)
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+dnssec",
            "+norec",
            name,
            qtype,
        ])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Both zone verifiers on a file; `-z`: the one key is a CSK (KSK flag set, signing
/// everything).
fn verify(path: &Path) -> [(bool, String); 2] {
    verify_zone_file(path, &["-z"])
}

/// Every kind of denial of the example zone signed with NSEC3 validates (NXDOMAIN, NODATA, a
/// wildcard answer and its NODATA, an empty non-terminal, the insecure delegation's missing
/// DS), the shared name stays secure, the chain has RFC 9276's parameters and no NSEC, a
/// hashed owner name is answered as if it did not exist (RFC 5155 §7.2.8), and an AXFR
/// passes both zone verifiers while the same AXFR with one NSEC3 altered fails both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsec3_signed_zone_validates_everywhere_and_a_tampered_chain_fails() {
    let tree = signed_tree("denial = \"nsec3\"\nallow-transfer = [{ network = \"127.0.0.1\" }]\n");
    bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK"]);
    let server = tree.start().await;
    let addr = server.dns_addrs[0];
    let anchor = write_delv_anchor(&tree, &ds_records(&tree));

    for (name, qtype, verdict) in [
        (ORIGIN, "SOA", "; fully validated"),
        (ORIGIN, "NSEC3PARAM", "; fully validated"),
        ("node1.consortium.example", "CNAME", "; fully validated"),
        ("any.consortium.example", "CNAME", "; fully validated"),
        ("someone.teams.consortium.example", "TXT", "; fully validated"),
        (
            "nope.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
        (
            "deeper.nope.consortium.example",
            "AAAA",
            "; negative response, fully validated",
        ),
        (
            "api.consortium.example",
            "TXT",
            "; negative response, fully validated",
        ),
        (
            "someone.teams.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
        (
            "_tcp.api.consortium.example",
            "A",
            "; negative response, fully validated",
        ),
        (
            "lab.consortium.example",
            "DS",
            "; negative response, fully validated",
        ),
    ] {
        let out = delv(&anchor, addr, name, qtype);
        assert!(
            out.contains(verdict),
            "{name} {qtype}: want {verdict:?}, delv says:\n{out}"
        );
    }

    // The NXDOMAIN proof: three NSEC3 (closest encloser, next closer, wildcard), no NSEC.
    let nxdomain = dig_dnssec(addr, "nope.consortium.example", "A");
    assert!(nxdomain.contains("status: NXDOMAIN"), "{nxdomain}");
    let nsec3_records = records_of(&nxdomain, "NSEC3");
    assert_eq!(nsec3_records.len(), 3, "{nxdomain}");
    assert!(records_of(&nxdomain, "NSEC").is_empty(), "{nxdomain}");
    for fields in &nsec3_records {
        // Hash 1 (SHA-1), flags 0 (no opt-out), 0 iterations, no salt (RFC 9276 §3.1).
        assert_eq!(fields[4..8], ["1", "0", "0", "-"], "{fields:?}");
    }
    // A hashed owner asked for by name does not exist (RFC 5155 §7.2.8).
    let owner = nsec3_records[0][0].to_string();
    let hashed = dig_dnssec(addr, &owner, "NSEC3");
    assert!(hashed.contains("status: NXDOMAIN"), "{owner}: {hashed}");

    let unbound = Unbound::start(&ds_records(&tree), addr);
    for (name, qtype, status) in [
        ("nope.consortium.example", "A", "NXDOMAIN"),
        ("api.consortium.example", "TXT", "NOERROR"),
        ("lab.consortium.example", "DS", "NOERROR"),
        ("any.consortium.example", "CNAME", "NOERROR"),
    ] {
        let (got, flags, _) = unbound.ask(name, qtype);
        assert_eq!(got, status, "{name} {qtype} via unbound\n{}", unbound.log());
        assert!(
            flags.contains(&"ad".to_string()),
            "{name} {qtype}: not secure ({flags:?})"
        );
    }

    let zone_text = axfr_text(addr);
    let params = records_of(&zone_text, "NSEC3PARAM");
    assert_eq!(params.len(), 1, "{zone_text}");
    assert_eq!(params[0][4..], ["1", "0", "0", "-"], "{zone_text}");
    assert!(records_of(&zone_text, "NSEC").is_empty(), "{zone_text}");
    let good = tree.path("axfr.zone");
    std::fs::write(&good, &zone_text).expect("write AXFR");
    for (ok, text) in verify(&good) {
        assert!(ok, "a verifier refused the NSEC3 zone:\n{text}");
    }

    // Negative control: one NSEC3's next hashed owner changed by one digit.
    let mut tampered = String::new();
    let mut changed = false;
    for line in zone_text.lines() {
        let mut fields: Vec<String> = line.split_whitespace().map(String::from).collect();
        if !changed && fields.get(3).map(String::as_str) == Some("NSEC3") && fields.len() > 8 {
            let next = &mut fields[8];
            let last = next.pop().unwrap_or('0');
            next.push(if last == '0' { '1' } else { '0' });
            changed = true;
        }
        tampered.push_str(&fields.join(" "));
        tampered.push('\n');
    }
    assert!(changed, "no NSEC3 in the AXFR:\n{zone_text}");
    let bad = tree.path("tampered.zone");
    std::fs::write(&bad, tampered).expect("write tampered");
    for (ok, text) in verify(&bad) {
        assert!(!ok, "a verifier accepted a tampered NSEC3:\n{text}");
    }
    drop(server);
}
