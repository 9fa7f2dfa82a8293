//! IXFR (RFC 1995) from the bounded history, and what a secondary at an older serial ends
//! up with after edits that kept the serial or health changes that moved the transfer pick.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::{Record, RecordType};

use super::*;

/// Edits the members file and reloads at once (the watcher may reload too; the content, and
/// so the serial, is the same either way). Returns the zone as a full transfer then shows it.
async fn edit_and_transfer(
    tree: &Tree,
    server: &consortium_dns::app::ServerHandle,
    members: &[MemberSpec],
    id: u16,
) -> (u32, Record, BTreeSet<Rr>) {
    tree.replace(MEMBERS_FILE, &members_file(members));
    let report = server.control.reload("test edit").await;
    assert!(report.ok, "reload failed: {:?}", report.errors);
    transfer(server.dns_addrs[0], &axfr_request(id), None)
        .await
        .zone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ixfr_incremental_full_and_up_to_date() {
    let tree = Tree::example();
    configure(&tree, "allow-transfer = [{ network = \"127.0.0.0/8\" }]\n", &[]);
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 2, ""),
        MemberSpec::new("node2", "api.operator-b.net.", 2, ""),
        MemberSpec::new("node3", "planetmint.operator-c.org.", 1, ""),
    ];
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (s0, soa0, z0) = transfer(dns, &axfr_request(1), None).await.zone();

    // Version 1: a member added, another made the heaviest (the shared name's CNAME moves).
    members.push(MemberSpec::new("node4", "node.operator-d.io.", 1, ""));
    members[2].weight = 5;
    let (s1, soa1, z1) = edit_and_transfer(&tree, &server, &members, 2).await;
    // Version 2: a member removed, another's target changed.
    members.remove(1);
    members[0].target = "node1-new.operator-a.com.".into();
    let (s2, soa2, z2) = edit_and_transfer(&tree, &server, &members, 3).await;
    assert!(s0 != s1 && s1 != s2 && s0 != s2, "three serials: {s0} {s1} {s2}");
    assert!(z0 != z1 && z1 != z2);

    // From version 0: both steps, each the difference of the zones either side of it.
    let t = transfer(dns, &ixfr_request(10, s0), None).await;
    assert_eq!(t.form, Form::Incremental, "IXFR from {s0}");
    assert_eq!(Rr::of(&t.records[0]), Rr::of(&soa2), "opens with the current SOA");
    assert_eq!(Rr::of(&t.records[1]), Rr::of(&soa0), "then the client's SOA");
    assert_eq!(
        Rr::of(t.records.last().expect("records")),
        Rr::of(&soa2),
        "closes with it"
    );
    let got = steps(&t.records);
    assert_eq!(got.len(), 2, "{got:#?}");
    let want = [(s0, s1, &z0, &z1), (s1, s2, &z1, &z2)];
    for (step, (from, to, old, new)) in got.iter().zip(want) {
        assert_eq!((step.from, step.to), (from, to));
        let deleted: BTreeSet<Rr> = old.difference(new).cloned().collect();
        let added: BTreeSet<Rr> = new.difference(old).cloned().collect();
        assert!(
            step.deleted == deleted,
            "{}",
            diff_text("deletions", &step.deleted, &deleted)
        );
        assert!(
            step.added == added,
            "{}",
            diff_text("additions", &step.added, &added)
        );
    }
    // The SOAs in the middle are the versions' own.
    let soas: Vec<Rr> = t
        .records
        .iter()
        .filter(|r| soa_serial(r).is_some())
        .map(Rr::of)
        .collect();
    let expected_soas: Vec<Rr> = [&soa2, &soa0, &soa1, &soa1, &soa2, &soa2].map(Rr::of).to_vec();
    assert_eq!(soas, expected_soas);

    // From version 1: the last step only.
    let t = transfer(dns, &ixfr_request(11, s1), None).await;
    assert_eq!(t.form, Form::Incremental);
    let got = steps(&t.records);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].from, got[0].to), (s1, s2));

    // From the current serial, or one ahead of it: the current SOA alone (RFC 1995 §2).
    for (id, serial) in [(12, s2), (13, s2.wrapping_add(7))] {
        let t = transfer(dns, &ixfr_request(id, serial), None).await;
        assert_eq!(t.form, Form::UpToDate, "IXFR from {serial}");
        assert_eq!(t.messages.len(), 1);
        assert_eq!(t.records.len(), 1);
        assert_eq!(Rr::of(&t.records[0]), Rr::of(&soa2));
    }

    // From a serial this server never served: the whole zone, AXFR-style (RFC 1995 §4).
    let t = transfer(dns, &ixfr_request(14, s0.wrapping_sub(1_000)), None).await;
    let (serial, _, records) = t.zone();
    assert_eq!(serial, s2);
    assert!(
        records == z2,
        "{}",
        diff_text("IXFR falling back to full", &records, &z2)
    );

    // The history is bounded: after HISTORY_LEN more versions, s0..s2 are gone (full zone),
    // and the oldest kept one gets every step since, which rebuild the current zone.
    let mut kept = None;
    for round in 0..consortium_dns::transfer::HISTORY_LEN {
        members[1].target = format!("round-{round}.operator-c.org.");
        let version = edit_and_transfer(&tree, &server, &members, 20 + round as u16).await;
        kept.get_or_insert(version);
    }
    let (oldest, _, kept_zone) = kept.expect("versions");
    let (current, _, zone_now) = transfer(dns, &axfr_request(50), None).await.zone();
    for gone in [s0, s1, s2] {
        let t = transfer(dns, &ixfr_request(51, gone), None).await;
        assert_eq!(t.form, Form::Full, "IXFR from {gone}, no longer in the history");
    }
    let t = transfer(dns, &ixfr_request(52, oldest), None).await;
    assert_eq!(t.form, Form::Incremental, "IXFR from the oldest kept serial");
    let got = steps(&t.records);
    assert_eq!(got.len(), consortium_dns::transfer::HISTORY_LEN - 1);
    let mut at = oldest;
    for step in &got {
        assert_eq!(step.from, at, "the steps chain");
        at = step.to;
    }
    assert_eq!(at, current);
    let (serial, rebuilt) = apply_ixfr(&kept_zone, &t);
    assert_eq!(serial, current);
    assert!(
        rebuilt == zone_now,
        "{}",
        diff_text("zone rebuilt from the steps", &rebuilt, &zone_now)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Under `serial-policy = "keep"` an edit can change the content without changing the serial.
/// Secondaries already at that serial cannot know (the operator chose to manage serials), but
/// one at an older serial must still end up with what we serve now, not with the content the
/// serial first had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ixfr_after_a_change_that_kept_the_serial() {
    let tree = Tree::example();
    configure(
        &tree,
        "serial-policy = \"keep\"\nallow-transfer = [{ network = \"127.0.0.1\" }]\n",
        &[],
    );
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 2, ""),
        MemberSpec::new("node2", "api.operator-b.net.", 1, ""),
    ];
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (s0, _, z0) = transfer(dns, &axfr_request(1), None).await.zone();

    // The file's serial raised with a member added: a new serial.
    let zone_text = tree.read(ZONE_FILE);
    let raised = zone_text.replace(&format!("{s0} ; serial"), &format!("{} ; serial", s0 + 1));
    assert_ne!(raised, zone_text, "the zone file's serial line");
    tree.replace(ZONE_FILE, &raised);
    members.push(MemberSpec::new("node3", "planetmint.operator-c.org.", 1, ""));
    let (s1, _, _) = edit_and_transfer(&tree, &server, &members, 2).await;
    assert_eq!(s1, s0 + 1);
    // Another member, the serial left alone: same serial, new content.
    members.push(MemberSpec::new("node4", "node.operator-d.io.", 1, ""));
    let (s2, _, z2) = edit_and_transfer(&tree, &server, &members, 3).await;
    assert_eq!(s2, s1, "keep serves the file's serial");

    let t = transfer(dns, &ixfr_request(4, s0), None).await;
    let (serial, got) = apply_ixfr(&z0, &t);
    assert_eq!(serial, s2);
    assert!(
        got == z2,
        "{}",
        diff_text(
            &format!("a secondary at {s0} after IXFR ({:?})", t.form),
            &got,
            &z2
        )
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Polls AXFR until its serial is not `serial` (or `within` passes).
async fn wait_for_new_serial(dns: SocketAddr, serial: u32, within: Duration) -> (u32, Record, BTreeSet<Rr>) {
    let started = Instant::now();
    loop {
        let version = transfer(dns, &axfr_request(99), None).await.zone();
        if version.0 != serial {
            return version;
        }
        assert!(
            started.elapsed() < within,
            "the serial stayed {serial} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A serial names one content: a health change that moves the transfer pick is published with
/// a serial bump (rate-limited), never slipped into the serial secondaries already hold by a
/// reload that happens meanwhile. Otherwise a secondary at that serial keeps the old pick (a
/// member that is down) for good: IXFR tells it it is up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_change_waits_for_its_own_serial() {
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        endpoints.push(Endpoint::start().await);
    }
    let members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 5, &endpoints[0].probe()),
        MemberSpec::new("node2", "api.operator-b.net.", 3, &endpoints[1].probe()),
        MemberSpec::new("node3", "planetmint.operator-c.org.", 1, ""),
    ];
    let tree = Tree::example();
    configure(
        &tree,
        "allow-transfer = [{ network = \"127.0.0.1\" }]\ntransfer-pick-refresh = \"6s\"\n",
        &[],
    );
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (s0, _, z0) = transfer(dns, &axfr_request(1), None).await.zone();
    assert!(z0.contains(&pool_record(&members[0])));

    // node1 down: the first pick change is published at once, with a new serial.
    endpoints[0].stop().await;
    let (s1, _, z1) = wait_for_new_serial(dns, s0, Duration::from_secs(5)).await;
    let bumped = Instant::now();
    assert!(z1.contains(&pool_record(&members[1])), "node2 is the pick now");

    // node2 down within the rate limit (our own answers show health has seen it), and a
    // reload of unchanged files meanwhile.
    endpoints[1].stop().await;
    let any = format!("any.{ORIGIN}");
    let node2 = pool_record(&members[1]);
    let started = Instant::now();
    'seen: loop {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "node2 never went down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // node2 outweighs node3 three to one: 20 answers without it mean it is down.
        for _ in 0..20 {
            let (_, records) = answer_of(dns, &any, RecordType::CNAME).await.expect("our answer");
            if records.contains(&node2) {
                continue 'seen;
            }
        }
        break;
    }
    let report = server.control.reload("unchanged files").await;
    assert!(report.ok);
    let (serial, _, zone) = transfer(dns, &axfr_request(2), None).await.zone();
    if serial == s1 {
        assert!(
            zone == z1,
            "{}",
            diff_text(&format!("serial {s1} after a reload"), &zone, &z1)
        );
    } else {
        assert!(
            bumped.elapsed() >= Duration::from_secs(5),
            "the serial moved before transfer-pick-refresh allowed it"
        );
    }

    // When the rate limit allows, the pick moves with its own serial, and a secondary at s1
    // gets it by IXFR.
    let (s2, _, z2) = wait_for_new_serial(dns, s1, Duration::from_secs(10)).await;
    assert!(z2.contains(&pool_record(&members[2])), "node3 is the pick now");
    let t = transfer(dns, &ixfr_request(3, s1), None).await;
    let (serial, got) = apply_ixfr(&z1, &t);
    assert_eq!(serial, s2);
    assert!(
        got == z2,
        "{}",
        diff_text("a secondary at s1 after IXFR", &got, &z2)
    );
    server.shutdown(Duration::from_secs(1)).await;
}
