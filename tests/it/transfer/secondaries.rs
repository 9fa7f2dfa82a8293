//! Standard secondaries of consortium-dns: NSD 4.6 follows file edits and health through
//! NOTIFY and IXFR, with TSIG, through a relay that watches its transfers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::common::{Nsd, Secondary, edit};

// ---------------------------------------------------------------------------------------------
// A relay that watches NSD's transfers
// ---------------------------------------------------------------------------------------------

/// What the relay saw of one transfer.
#[derive(Debug, Clone)]
struct Seen {
    ixfr: bool,
    form: Form,
    signed: bool,
    records: Vec<Record>,
}

impl Seen {
    fn final_serial(&self) -> Option<u32> {
        self.records.first().and_then(soa_serial)
    }
}

/// A TCP relay between NSD and consortium-dns: passes every byte unchanged and notes each
/// transfer it carries, so the test can tell NSD's IXFR from an AXFR.
struct Relay {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let notes = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                if let Ok((client, _)) = listener.accept().await {
                    connections.spawn(relay_connection(client, upstream, notes.clone()));
                }
                while connections.try_join_next().is_some() {}
            }
        });
        Relay { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("relay notes").clone()
    }

    /// The transfer that brought `serial`, if one did.
    fn transfer_to(&self, serial: u32) -> Option<Seen> {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.final_serial() == Some(serial) && s.form != Form::UpToDate)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_connection(mut client: TcpStream, upstream: SocketAddr, seen: Arc<Mutex<Vec<Seen>>>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    loop {
        let Ok(Ok(request)) = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut client)).await
        else {
            return;
        };
        if write_frame(&mut server, &request).await.is_err() {
            return;
        }
        let ixfr = is_ixfr(&request);
        let mut progress = Progress::new(ixfr == Some(true));
        let mut records = Vec::new();
        let mut signed = true;
        loop {
            let Ok(Ok(frame)) = tokio::time::timeout(READ_TIMEOUT, read_frame(&mut server)).await else {
                return;
            };
            if write_frame(&mut client, &frame).await.is_err() {
                return;
            }
            if ixfr.is_none() {
                break; // not a transfer: one answer
            }
            let Ok(message) = Message::from_vec(&frame) else {
                return;
            };
            signed &= raw_tsig(&frame).is_some();
            progress.message(&message);
            records.extend(message.answers.iter().cloned());
            if progress.done() {
                break;
            }
        }
        if let Some(ixfr) = ixfr {
            seen.lock().expect("relay notes").push(Seen {
                ixfr,
                form: progress.form,
                signed,
                records,
            });
        }
    }
}

/// A standard secondary whose answers the tests poll (as `Rr` sets): NSD, Knot or BIND;
/// starting and stopping them is `common`'s.
pub(super) trait Polled {
    fn server(&self) -> &str;
    fn addr(&self) -> SocketAddr;
    fn check_running(&mut self) -> Result<(), String>;
    fn log(&self) -> String;

    /// Polls until `check` holds for the answer to `qname`/`qtype`; returns how long that
    /// took, or an explanation with the server's log.
    async fn wait_for(
        &mut self,
        qname: &str,
        qtype: RecordType,
        within: Duration,
        check: impl Fn(&(ResponseCode, BTreeSet<Rr>)) -> bool,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        while started.elapsed() < within {
            self.check_running()?;
            match answer_of(self.addr(), qname, qtype).await {
                Ok(answer) if check(&answer) => return Ok(started.elapsed()),
                Ok((rcode, records)) => {
                    last = format!(
                        "{rcode}: {:?}",
                        records.iter().map(ToString::to_string).collect::<Vec<_>>()
                    )
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{}'s answer to {qname} {qtype} did not come within {within:?}; last: {last}\nits log:\n{}",
            self.server(),
            self.log()
        ))
    }
}

impl Polled for Nsd {
    fn server(&self) -> &str {
        "NSD"
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn check_running(&mut self) -> Result<(), String> {
        Nsd::check_running(self)
    }
    fn log(&self) -> String {
        Nsd::log(self)
    }
}

impl Polled for Secondary {
    fn server(&self) -> &str {
        self.server
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn check_running(&mut self) -> Result<(), String> {
        Secondary::check_running(self)
    }
    fn log(&self) -> String {
        Secondary::log(self)
    }
}

/// The query types compared for every static name. ANY is left out: RFC 8482 lets servers
/// pick which RRset to send (the differential test covers it).
const QTYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::NS,
    RecordType::SOA,
    RecordType::MX,
    RecordType::TXT,
    RecordType::CAA,
    RecordType::SRV,
    RecordType::CNAME,
    RecordType::Unknown(65280),
];

/// Every static name: the owners of the zone file, the members, and names the zone answers
/// for without owning them (wildcard match, empty non-terminal, below the delegation,
/// nonexistent). The shared name `any` is not static (see the test).
fn static_names(zone: &BTreeSet<Rr>, members: &[MemberSpec]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = zone.iter().map(|r| r.owner.clone()).collect();
    names.insert(ORIGIN.into());
    names.extend(members.iter().map(MemberSpec::owner));
    for extra in [
        "foo.teams",
        "_tcp.api",
        "x.lab",
        "nonexistent",
        "deep.nonexistent",
    ] {
        names.insert(format!("{extra}.{ORIGIN}"));
    }
    names
}

/// The tree's zone transferred to (and NOTIFYing) secondaries at `ports` with `key`,
/// health-driven pick changes at most a second apart, and these members.
fn serve_to(tree: &Tree, key: &Key, ports: &[u16], members: &[MemberSpec]) {
    let notify: Vec<String> = ports
        .iter()
        .map(|port| format!("{{ address = \"127.0.0.1:{port}\", key = \"{}\" }}", key.name))
        .collect();
    configure(
        tree,
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{k}\" }}]\n\
             notify = [{notify}]\n\
             transfer-pick-refresh = \"1s\"\n",
            k = key.name,
            notify = notify.join(", ")
        ),
        &[key],
    );
    tree.write(MEMBERS_FILE, &members_file(members));
}

/// NSD as a secondary of consortium-dns, with TSIG on transfers and NOTIFY.
///
/// The shared name `any` is left out of the answer comparison on purpose: consortium-dns
/// answers it with a health-weighted random pick per query, which a secondary cannot do, so a
/// transfer carries one CNAME to the transfer pick (the heaviest eligible member, the first
/// of equals). The test checks instead that NSD serves exactly that pick, and follows it when
/// health moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsd_secondary_follows_edits_and_health() {
    let key = Key::transfer();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(Endpoint::start().await);
    }
    // node1 is the heaviest; node2 and node3 weigh the same (node2 comes first); node4 has
    // no probe.
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 5, &endpoints[0].probe()),
        MemberSpec::new("node2", "api.operator-b.net.", 3, &endpoints[1].probe()),
        MemberSpec::new("node3", "planetmint.operator-c.org.", 3, &endpoints[2].probe()),
        MemberSpec::new("node4", "node.operator-d.io.", 1, ""),
    ];
    let tree = Tree::example();
    let nsd_port = common::free_port();
    serve_to(&tree, &key, &[nsd_port], &members);
    let server = tree.start().await;
    let ours = server.dns_addrs[0];
    let relay = Relay::start(ours).await;
    let mut nsd = Nsd::secondary(nsd_port, ORIGIN, relay.addr, &key.nsd());

    // 1. After the start, NSD holds our serial and answers as we do for every static name.
    let serial = served_serial(ours).await.expect("our SOA");
    let soa_is = |serial: u32| {
        move |(_, records): &(ResponseCode, BTreeSet<Rr>)| {
            records.iter().any(|r| {
                r.rtype == u16::from(RecordType::SOA) && r.rdata.len() >= 20 && {
                    let at = r.rdata.len() - 20;
                    u32::from_be_bytes([r.rdata[at], r.rdata[at + 1], r.rdata[at + 2], r.rdata[at + 3]])
                        == serial
                }
            })
        }
    };
    nsd.wait_for(ORIGIN, RecordType::SOA, Duration::from_secs(10), soa_is(serial))
        .await
        .unwrap_or_else(|e| panic!("NSD did not load the zone from us: {e}"));
    let first = relay
        .transfer_to(serial)
        .expect("the relay saw NSD's first transfer");
    assert!(
        first.signed,
        "every message of the transfer to NSD was TSIG-signed"
    );
    assert_eq!(first.form, Form::Full, "NSD had nothing: a full transfer");
    assert!(
        nsd.log().contains("TSIG verified"),
        "NSD verified our TSIG; its log:\n{}",
        nsd.log()
    );

    let (zone, _) = zone_file_records(&tree);
    let names = static_names(&zone, &members);
    let mut differences = Vec::new();
    let mut compared = 0;
    for qname in &names {
        for &qtype in QTYPES {
            let theirs = answer_of(nsd.addr, qname, qtype).await;
            let mine = answer_of(ours, qname, qtype).await;
            compared += 1;
            if theirs != mine {
                differences.push(format!(
                    "{qname} {qtype}:\n  NSD:            {theirs:?}\n  consortium-dns: {mine:?}"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {compared} answers differ between NSD and consortium-dns:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(compared > 200, "compared {compared} answers");
    let all_up = |_: &MemberSpec| true;
    let pick = transfer_pick(&members, &all_up);
    assert_eq!(pick.label, "node1");
    let any = format!("any.{ORIGIN}");
    let expect_pick = |picked: &MemberSpec| {
        let record = pool_record(picked);
        move |(rcode, records): &(ResponseCode, BTreeSet<Rr>)| {
            *rcode == ResponseCode::NoError && records.len() == 1 && records.contains(&record)
        }
    };
    nsd.wait_for(&any, RecordType::CNAME, Duration::from_secs(1), expect_pick(pick))
        .await
        .unwrap_or_else(|e| panic!("NSD serves the transfer pick for the shared name: {e}"));

    // 2. A member added by a file edit reaches NSD through NOTIFY and IXFR.
    members.push(MemberSpec::new("node6", "node6.operator-f.example.", 1, ""));
    tree.replace(MEMBERS_FILE, &members_file(&members));
    let node6 = Rr::cname(&members[4].owner(), MEMBER_TTL, &members[4].target);
    let wanted = node6.clone();
    let took = nsd
        .wait_for(
            &members[4].owner(),
            RecordType::CNAME,
            Duration::from_secs(5),
            move |(_, records)| records.contains(&wanted),
        )
        .await
        .unwrap_or_else(|e| panic!("the added member did not reach NSD: {e}"));
    let added_serial = served_serial(ours).await.expect("our SOA");
    assert!(added_serial != serial, "the edit raised the serial");
    nsd.wait_for(
        ORIGIN,
        RecordType::SOA,
        Duration::from_secs(2),
        soa_is(added_serial),
    )
    .await
    .unwrap_or_else(|e| panic!("NSD holds our new serial: {e}"));
    let seen = relay
        .transfer_to(added_serial)
        .expect("the relay saw the transfer of the edit");
    assert!(
        seen.ixfr && seen.form == Form::Incremental && seen.signed,
        "NSD asked for IXFR and got the incremental form, signed: {seen:?}"
    );
    let step = steps(&seen.records);
    assert_eq!(step.len(), 1, "one step: {step:?}");
    assert_eq!((step[0].from, step[0].to), (serial, added_serial));
    assert!(step[0].deleted.is_empty(), "nothing deleted: {step:?}");
    let (added, pools) = split_pools(&step[0].added);
    assert_eq!(
        added,
        BTreeSet::from([node6]),
        "only the new member's CNAME added"
    );
    assert_eq!(
        pools,
        pool_entries(&members[members.len() - 1..]),
        "and its pool record"
    );
    eprintln!("member added: NSD answered for it {took:?} after the edit");

    // 3. The picked member goes down: NSD's shared name moves to the next transfer pick,
    //    node2 (node3 weighs the same but comes later).
    let mut down = BTreeSet::new();
    let mut last_serial = added_serial;
    for (endpoint, label) in [(0, "node1"), (1, "node2")] {
        let before = transfer_pick(&members, &|m: &MemberSpec| !down.contains(&m.label));
        assert_eq!(before.label, label);
        let before_record = pool_record(before);
        endpoints[endpoint].stop().await;
        down.insert(label.to_string());
        let after = transfer_pick(&members, &|m: &MemberSpec| !down.contains(&m.label)).clone();
        let took = nsd
            .wait_for(
                &any,
                RecordType::CNAME,
                Duration::from_secs(10),
                expect_pick(&after),
            )
            .await
            .unwrap_or_else(|e| panic!("NSD's shared name did not move off {label}: {e}"));
        eprintln!("{label} down: NSD's {any} moved to {} in {took:?}", after.label);
        let now_serial = served_serial(ours).await.expect("our SOA");
        assert_ne!(now_serial, last_serial, "the pick change raised the serial");
        let seen = relay
            .transfer_to(now_serial)
            .expect("the relay saw the transfer of the pick change");
        assert!(
            seen.ixfr && seen.form == Form::Incremental,
            "the pick change went by IXFR: {seen:?}"
        );
        let deleted: BTreeSet<Rr> = steps(&seen.records).into_iter().flat_map(|s| s.deleted).collect();
        let added: BTreeSet<Rr> = steps(&seen.records).into_iter().flat_map(|s| s.added).collect();
        assert_eq!(deleted, BTreeSet::from([before_record]));
        assert_eq!(added, BTreeSet::from([pool_record(&after)]));
        last_serial = now_serial;
    }
    // Our own answers never send anyone to a member that is down.
    for _ in 0..50 {
        let (_, records) = answer_of(ours, &any, RecordType::CNAME)
            .await
            .expect("our answer");
        assert!(
            !records.contains(&pool_record(&members[0])) && !records.contains(&pool_record(&members[1])),
            "picked a member that is down: {records:?}"
        );
    }
    drop(nsd);
    drop(relay);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Issue 21: a restart of the primary without its state file (lost, or turned off) must not
/// serve a serial below what the secondaries hold, or they stop following (NSD and BIND say
/// "up to date", Knot "remote is outdated"). The primary asks its NOTIFY targets for their SOA
/// before serving and continues above the highest; NSD, Knot and BIND (the last two with the
/// README's snippets) then take the restarted primary's zone, and their shared name keeps
/// following health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_a_state_file_continues_above_the_secondaries_serials() {
    let key = Key::transfer();
    let mut endpoints = [Endpoint::start().await, Endpoint::start().await];
    let members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 5, &endpoints[0].probe()),
        MemberSpec::new("node2", "api.operator-b.net.", 3, &endpoints[1].probe()),
    ];
    let tree = Tree::example();
    tree.enable_http();
    let ports = [common::free_port(), common::free_port(), common::free_port()];
    let dns_port = common::free_port();
    // A fixed port, so that the secondaries find the restarted primary; no state file at all.
    edit(
        &tree,
        "config/consortium-dns.toml",
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{dns_port}\"]\nstate-file = \"\""),
    );
    serve_to(&tree, &key, &ports, &members);
    let server = tree.start().await;
    let ours = server.dns_addrs[0];
    let mut nsd = Nsd::secondary(ports[0], ORIGIN, ours, &key.nsd());
    let mut knot = Secondary::knot(ports[1], ours, &key.nsd());
    let mut bind = Secondary::named(ports[2], ours, &key.nsd());
    let soa_is = |serial: u32| {
        move |(_, records): &(ResponseCode, BTreeSet<Rr>)| {
            records.iter().any(|r| {
                r.rtype == u16::from(RecordType::SOA)
                    && r.rdata.len() >= 20
                    && soa_serial_of_rdata(&r.rdata) == serial
            })
        }
    };
    // The same wait on each of the three, in turn (they follow concurrently meanwhile).
    macro_rules! all_serve {
        ($qname:expr, $qtype:expr, $within:expr, $check:expr, $what:expr $(,)?) => {{
            let check = $check;
            let took: [Duration; 3] = [
                nsd.wait_for($qname, $qtype, $within, &check).await,
                knot.wait_for($qname, $qtype, $within, &check).await,
                bind.wait_for($qname, $qtype, $within, &check).await,
            ]
            .map(|took| took.unwrap_or_else(|e| panic!("{}: {e}", $what)));
            took
        }};
    }
    let file_serial = served_serial(ours).await.expect("our SOA");
    all_serve!(
        ORIGIN,
        RecordType::SOA,
        Duration::from_secs(15),
        soa_is(file_serial),
        "did not load the zone",
    );

    // An edit without a serial change in the file: the policy raises the served serial, the
    // secondaries follow. The files' serial is now below what they hold.
    edit(
        &tree,
        ZONE_FILE,
        "api     IN A    192.0.2.80",
        "api     IN A    192.0.2.81",
    );
    assert!(server.control.reload("test").await.ok);
    let raised = served_serial(ours).await.expect("our SOA");
    assert_eq!(raised, file_serial + 1);
    all_serve!(
        ORIGIN,
        RecordType::SOA,
        Duration::from_secs(10),
        soa_is(raised),
        "did not follow the edit",
    );
    server.shutdown(Duration::from_secs(1)).await;

    // The restart: no state file, so it asks the secondaries, and serves above what they hold.
    let server = tree.start().await;
    let after = served_serial(ours).await.expect("our SOA");
    assert!(
        serial_gt(after, raised),
        "served {after} after the restart, not above the secondaries' {raised}"
    );
    all_serve!(
        ORIGIN,
        RecordType::SOA,
        Duration::from_secs(15),
        soa_is(after),
        "did not follow the restarted primary",
    );
    let any = format!("any.{ORIGIN}");
    let pick_is = |picked: &MemberSpec| {
        let record = pool_record(picked);
        move |(rcode, records): &(ResponseCode, BTreeSet<Rr>)| {
            *rcode == ResponseCode::NoError && records.len() == 1 && records.contains(&record)
        }
    };
    let before = pick_is(&members[0]);
    all_serve!(
        &any,
        RecordType::CNAME,
        Duration::from_secs(5),
        &before,
        "the shared name before the failure",
    );
    // Health still moves the secondaries' shared name after the restart.
    endpoints[0].stop().await;
    let failed_over = pick_is(&members[1]);
    let took = all_serve!(
        &any,
        RecordType::CNAME,
        Duration::from_secs(15),
        &failed_over,
        "the shared name did not follow node1 going down",
    );
    eprintln!(
        "restart without state: served {after} above the secondaries' {raised}; node1 down \
         reached NSD, Knot, BIND within {took:?} (polled in turn)"
    );
    let text = server.control.scrape();
    for port in ports {
        let notifies = |outcome: &str| {
            text.lines().any(|l| {
                l.starts_with("consortium_dns_notifies_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && l.contains(&format!("secondary=\"127.0.0.1:{port}\""))
            })
        };
        assert!(
            notifies("sent") && notifies("acknowledged"),
            "NOTIFY counts for 127.0.0.1:{port}:\n{text}"
        );
    }

    // The control command: a forced NOTIFY, and each secondary's serial.
    let http = server.http_addr.expect("admin endpoint").to_string();
    let ctl = |args: &[&str]| {
        let output = Command::new(common::binary())
            .arg("ctl")
            .args(args)
            .args(["--http-listen", &http])
            .output()
            .expect("run ctl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, out) = ctl(&["notify", ORIGIN]);
    assert!(ok && out.contains("sent to 3 secondaries"), "{out}");
    let (ok, out) = ctl(&["notify", "nonexistent.example"]);
    assert!(!ok && out.contains("not served here"), "{out}");
    let serial_now = served_serial(ours).await.expect("SOA");
    let wanted: Vec<String> = ports
        .iter()
        .map(|port| format!("secondary 127.0.0.1:{port}  serial {serial_now}  up to date"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = ctl(&["zone-status", ORIGIN]);
        assert!(ok, "{out}");
        if wanted.iter().all(|w| out.contains(w.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "want {wanted:?} in\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown(Duration::from_secs(1)).await;
}

fn soa_serial_of_rdata(rdata: &[u8]) -> u32 {
    let at = rdata.len() - 20;
    u32::from_be_bytes([rdata[at], rdata[at + 1], rdata[at + 2], rdata[at + 3]])
}

fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}
