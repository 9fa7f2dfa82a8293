//! A signed zone (issue 17) to a standard secondary and through UPDATE: NSD, fed by NOTIFY and
//! IXFR, serves the signed zone and Unbound validates through it; an ACME challenge added by
//! UPDATE is signed before the UPDATE is answered.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use super::secondaries::Polled;
use super::update::{nsupdate, op_a, update_tree};
use super::*;
use crate::common::{Nsd, free_port};
use crate::dnssec::{Unbound, bind_keygen, delv, ds_records, write_delv_anchor};

const V1: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsd_secondary_serves_the_signed_zone_and_updates_are_signed_before_their_answer() {
    nsd_secondary_serves_the_signed_zone("").await;
}

/// The same with NSEC3 denial (RFC 5155): NSD serves the transferred NSEC3 chain (and the
/// NSEC3PARAM) and its NXDOMAIN and NODATA answers validate, a new member's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsd_secondary_serves_the_nsec3_signed_zone_and_its_denials_validate() {
    nsd_secondary_serves_the_signed_zone("denial = \"nsec3\"\n").await;
}

async fn nsd_secondary_serves_the_signed_zone(denial: &str) {
    let nsd_port = free_port();
    let xfr = Key::transfer();
    let tree = update_tree(
        &format!(
            "dnssec = true\n{denial}\
             allow-transfer = [{{ network = \"127.0.0.1\", key = \"{k}\" }}]\n\
             notify = [{{ address = \"127.0.0.1:{nsd_port}\", key = \"{k}\" }}]\n",
            k = xfr.name
        ),
        &[&xfr],
    );
    bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK"]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let ds = ds_records(&tree);
    let anchor = write_delv_anchor(&tree, &ds);

    // The UPDATE's answer comes after the publish: its value validates at once.
    let name = format!("_acme-challenge.node1.{ORIGIN}");
    let (ok, out) = nsupdate(
        dns,
        Some(&op_a()),
        &[&format!("update add {name} 60 TXT \"{V1}\"")],
        false,
    )
    .await;
    assert!(ok, "{out}");
    let verdict = tokio::task::spawn_blocking({
        let (anchor, name) = (anchor.clone(), name.clone());
        move || delv(&anchor, dns, &name, "TXT")
    })
    .await
    .expect("delv");
    assert!(
        verdict.contains("; fully validated") && verdict.contains(V1),
        "{verdict}"
    );

    let mut nsd = Nsd::secondary(nsd_port, ORIGIN, dns, &xfr.nsd());
    let serial = served_serial(dns).await.expect("serial");
    nsd.wait_for(&name, RecordType::TXT, Duration::from_secs(10), |(_, records)| {
        !records.is_empty()
    })
    .await
    .unwrap_or_else(|e| panic!("NSD did not load the signed zone at serial {serial}: {e}"));
    if !denial.is_empty() {
        // NSD's own NXDOMAIN carries the transferred NSEC3 proof, and no NSEC.
        let nxdomain = crate::nsec3::dig_dnssec(nsd.addr, "nope.consortium.example", "A");
        assert!(
            nxdomain.contains("NXDOMAIN")
                && crate::nsec3::records_of(&nxdomain, "NSEC3").len() >= 2
                && crate::nsec3::records_of(&nxdomain, "NSEC").is_empty(),
            "NSD's NXDOMAIN lacks the NSEC3 proof:\n{nxdomain}"
        );
    }

    // Unbound, validating, with NSD as the zone's only server.
    let unbound = tokio::task::spawn_blocking({
        let (ds, nsd_addr) = (ds.clone(), nsd.addr);
        move || Unbound::start(&ds, nsd_addr)
    })
    .await
    .expect("unbound");
    let secure = |unbound: &Unbound, cases: &[(&str, &str, &str)]| {
        for &(qname, qtype, status) in cases {
            let (got, flags, _) = unbound.ask(qname, qtype);
            assert_eq!(got, status, "{qname} {qtype} via NSD\n{}", unbound.log());
            assert!(
                flags.iter().any(|f| f == "ad"),
                "{qname} {qtype} via NSD not secure: {flags:?}\n{}",
                unbound.log()
            );
        }
    };
    let unbound = tokio::task::spawn_blocking(move || {
        secure(
            &unbound,
            &[
                ("node1.consortium.example", "CNAME", "NOERROR"),
                // NSD serves the transfer pick with its pre-signed RRSIG.
                ("any.consortium.example", "CNAME", "NOERROR"),
                ("nope.consortium.example", "A", "NXDOMAIN"),
                // NODATA: the name exists, the type does not.
                ("api.consortium.example", "MX", "NOERROR"),
                ("someone.teams.consortium.example", "TXT", "NOERROR"),
                ("_acme-challenge.node1.consortium.example", "TXT", "NOERROR"),
            ],
        );
        unbound
    })
    .await
    .expect("validation via NSD");

    // A sixth member, by file edit: NOTIFY, IXFR, and NSD's answer validates.
    let members = tree.read(MEMBERS_FILE);
    tree.replace(
        MEMBERS_FILE,
        &format!("{members}\n[[member]]\nlabel = \"node6\"\ntarget = \"node6.operator-f.org\"\nweight = 1\n"),
    );
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    nsd.wait_for(
        "node6.consortium.example",
        RecordType::CNAME,
        Duration::from_secs(10),
        |(_, records)| !records.is_empty(),
    )
    .await
    .unwrap_or_else(|e| panic!("NSD did not take the new member: {e}"));
    // A fresh resolver: the first one holds the NSEC that proved `nope` absent, which also
    // covers `node6` (aggressive use of NSEC, RFC 8198), and would answer NXDOMAIN from it
    // until its TTL ends.
    drop(unbound);
    let nsd_addr = nsd.addr;
    tokio::task::spawn_blocking(move || {
        let fresh = Unbound::start(&ds, nsd_addr);
        secure(&fresh, &[("node6.consortium.example", "CNAME", "NOERROR")]);
    })
    .await
    .expect("the new member validates via NSD");
    server.shutdown(Duration::from_secs(1)).await;
}
