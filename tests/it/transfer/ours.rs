//! consortium-dns as a secondary (issue 19): two secondaries of a consortium-dns primary, each
//! picking by its own probes, following the primary by NOTIFY and IXFR, surviving the
//! primary's absence until SOA expire, serving its copy from disk after a restart, refusing
//! bad transfers; and a secondary of Knot serving what Knot serves.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consortium_dns::app::{self, ServerHandle};
use consortium_dns::config::Config;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::*;
use crate::common::{edit, free_port};

/// A consortium-dns secondary's own directory and config.
struct SecondaryTree {
    dir: tempfile::TempDir,
    port: u16,
}

impl SecondaryTree {
    /// A secondary of `primary` for the example zone, listening on a port chosen now (so the
    /// primary can NOTIFY it), with `extra` lines in its `[[zone]]`.
    fn new(primary: SocketAddr, key: Option<&Key>, extra: &str) -> SecondaryTree {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let tree = SecondaryTree { dir, port };
        tree.write_config(primary, key, extra);
        tree
    }

    fn write_config(&self, primary: SocketAddr, key: Option<&Key>, extra: &str) {
        let key_ref = key.map_or(String::new(), |k| format!(", key = \"{}\"", k.name));
        let mut text = format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nhttp-listen = \"127.0.0.1:0\"\n\n[rrl]\nenabled = false\n\n\
             [health]\nkind = \"none\"\n\n[[zone]]\norigin = \"consortium.example\"\n\
             primaries = [{{ address = \"{primary}\"{key_ref} }}]\nstore = \"copy/consortium.example.zone\"\n{extra}",
            self.port
        );
        if let Some(key) = key {
            text.push_str(&format!(
                "\n[[key]]\nname = \"{}\"\nalgorithm = \"{}\"\nsecret-file = \"{}.key\"\n",
                key.name,
                key.algorithm_text(),
                key.name
            ));
            std::fs::write(
                self.dir.path().join(format!("{}.key", key.name)),
                format!("{}\n", key.base64()),
            )
            .expect("key file");
        }
        std::fs::write(self.config_path(), text).expect("config");
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("secondary.toml")
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn start(&self) -> ServerHandle {
        let config = Config::load(&self.config_path()).unwrap_or_else(|e| panic!("secondary config: {e:?}"));
        app::start(config)
            .await
            .unwrap_or_else(|e| panic!("secondary start: {e}"))
    }
}

/// Makes `tree` the primary at `address` (with `extra` zone lines) for `secondaries`: transfers
/// and NOTIFY with `key`.
fn serve_secondaries(
    tree: &Tree,
    address: SocketAddr,
    key: &Key,
    secondaries: [&SecondaryTree; 2],
    extra: &str,
) {
    configure(
        tree,
        &format!(
            "{extra}allow-transfer = [{{ network = \"127.0.0.1\", key = \"{0}\" }}]\n\
             notify = [{{ address = \"{1}\", key = \"{0}\" }}, {{ address = \"{2}\", key = \"{0}\" }}]\n",
            key.name,
            secondaries[0].addr(),
            secondaries[1].addr()
        ),
        &[key],
    );
    let config = tree
        .read("config/consortium-dns.toml")
        .replace("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"{address}\"]"));
    tree.write("config/consortium-dns.toml", &config);
}

/// Waits until `server` serves the zone at `serial`.
async fn wait_for_serial(server: SocketAddr, serial: u32, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if served_serial(server).await == Some(serial) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{server} does not serve serial {serial} within {within:?} (serves {:?})",
            served_serial(server).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The targets `server` gives the shared name over `n` queries.
async fn picks(server: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut targets = BTreeSet::new();
    for _ in 0..n {
        let message = common::udp(
            server,
            &common::query(&format!("any.{ORIGIN}"), RecordType::A, Some(1232)),
        )
        .await;
        assert_eq!(
            message.metadata.response_code,
            ResponseCode::NoError,
            "the shared name answers at {server}"
        );
        let target = message
            .answers
            .iter()
            .find_map(|r| match &r.data {
                RData::CNAME(cname) => Some(cname.0.to_string().to_ascii_lowercase()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("a CNAME at the shared name from {server}: {message:?}"));
        targets.insert(target);
    }
    targets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secondaries_pick_by_their_own_probes_and_follow_the_primary() {
    let key = Key::transfer();
    let endpoints = [
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    ];
    let mut members: Vec<MemberSpec> = ["node1", "node2", "node3"]
        .iter()
        .zip(&endpoints)
        .map(|(label, endpoint)| {
            MemberSpec::new(label, &format!("{label}.operator.example."), 1, &endpoint.probe())
        })
        .collect();
    let tree = Tree::example();
    tree.write(MEMBERS_FILE, &members_file(&members));
    // Ports are chosen before anyone starts, so that the primary can NOTIFY both.
    let primary_port = free_port();
    let primary_addr = SocketAddr::from(([127, 0, 0, 1], primary_port));
    let closed = free_port();
    let one = SecondaryTree::new(
        primary_addr,
        Some(&key),
        &format!("probe-addresses = {{ node1 = \"127.0.0.1:{closed}\" }}\n"),
    );
    let two = SecondaryTree::new(
        primary_addr,
        Some(&key),
        &format!("probe-addresses = {{ node2 = \"127.0.0.1:{closed}\" }}\n"),
    );
    serve_secondaries(&tree, primary_addr, &key, [&one, &two], "");
    let primary = tree.start().await;
    let serial = served_serial(primary_addr).await.expect("the primary serves");
    let first = one.start().await;
    let second = two.start().await;
    for s in [&one, &two] {
        let took = wait_for_serial(s.addr(), serial, Duration::from_secs(10)).await;
        eprintln!(
            "secondary {} serves serial {serial} {took:?} after start",
            s.addr()
        );
    }

    // Each follows its own view: node1 is down from the first, node2 from the second.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all: BTreeSet<String> = members.iter().map(|m| m.target.clone()).collect();
    assert_eq!(
        picks(primary_addr, 60).await,
        all,
        "the primary offers every member"
    );
    let from_one = picks(one.addr(), 60).await;
    let from_two = picks(two.addr(), 60).await;
    assert_eq!(
        from_one,
        BTreeSet::from([
            "node2.operator.example.".to_string(),
            "node3.operator.example.".to_string()
        ]),
        "the first secondary never offers node1, down from where it stands"
    );
    assert_eq!(
        from_two,
        BTreeSet::from([
            "node1.operator.example.".to_string(),
            "node3.operator.example.".to_string()
        ]),
        "the second secondary never offers node2"
    );
    let status = first.control.secondary_status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].serial, Some(serial));
    assert_eq!(status[0].primaries, vec![primary_addr.to_string()]);
    assert!(status[0].expires_at.is_some() && !status[0].expired, "{status:?}");
    assert!(
        first.control.health.report(&first.shared.snapshot.load()).pools[0]
            .members
            .iter()
            .any(|m| m.label == "node1" && m.state == "down"),
        "the first secondary's own health view has node1 down"
    );

    // `consortium-dns status` on a secondary: primary, serial, transfer, expiry, its own view.
    let http = first.http_addr.expect("the secondary's admin endpoint");
    let output = Command::new(common::binary())
        .args(["status", "--http-listen", &http.to_string()])
        .output()
        .expect("run status");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for wanted in [
        format!(
            "secondary zone {ORIGIN}  primaries {primary_addr}  serial {serial}  primary serial {serial}  serving"
        ),
        "last transfer unix".to_string(),
        "expires unix".to_string(),
        "pool any.consortium.example.".to_string(),
    ] {
        assert!(text.contains(&wanted), "status lacks {wanted:?}:\n{text}");
    }
    let node1 = text
        .lines()
        .find(|l| l.trim_start().starts_with("node1 "))
        .unwrap_or_else(|| panic!("status lists node1:\n{text}"));
    assert!(node1.contains(" down "), "node1 is down from here: {node1}");

    // A member added on the primary reaches both by NOTIFY and IXFR within seconds.
    let fourth = Endpoint::start().await;
    members.push(MemberSpec::new(
        "node4",
        "node4.operator.example.",
        1,
        &fourth.probe(),
    ));
    tree.write(MEMBERS_FILE, &members_file(&members));
    let started = Instant::now();
    let added = loop {
        let now = served_serial(primary_addr).await.expect("serves");
        if now != serial {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the primary reloads the edit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (s, handle) in [(&one, &first), (&two, &second)] {
        let took = wait_for_serial(s.addr(), added, Duration::from_secs(5)).await;
        eprintln!(
            "secondary {} has the new member {took:?} after the primary",
            s.addr()
        );
        let (_, answer) = answer_of(s.addr(), &format!("node4.{ORIGIN}"), RecordType::CNAME)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            answer.contains(&Rr::cname(
                &format!("node4.{ORIGIN}"),
                MEMBER_TTL,
                "node4.operator.example."
            )),
            "node4's CNAME on {}: {answer:?}",
            s.addr()
        );
        let status = handle.control.secondary_status();
        assert_eq!(
            status[0].last_transfer_kind.as_deref(),
            Some("IXFR"),
            "the edit came by IXFR: {status:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        picks(one.addr(), 80).await.contains("node4.operator.example."),
        "the new member is picked once its probes pass"
    );

    // The copy is kept on disk: a restarted secondary serves at once, with the primary gone.
    primary.shutdown(Duration::from_millis(200)).await;
    second.shutdown(Duration::from_millis(200)).await;
    let again = two.start().await;
    assert_eq!(
        served_serial(two.addr()).await,
        Some(added),
        "the restarted secondary serves its copy before any primary answers"
    );
    assert!(
        picks(two.addr(), 20).await.len() >= 2,
        "and picks among the members"
    );
    again.shutdown(Duration::from_millis(200)).await;
    first.shutdown(Duration::from_millis(200)).await;
}

/// Every file under `dir` that holds a DNSSEC private key (BIND's format names it).
fn private_key_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("entry").path());
            }
        } else if std::fs::read(&path).is_ok_and(|b| {
            String::from_utf8_lossy(&b).contains("Private-key-format")
                || path.extension().is_some_and(|e| e == "private")
        }) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_secondaries_serve_only_pre_signed_picks_that_validate_and_hold_no_key() {
    use crate::dnssec::{Unbound, bind_keygen, delv, ds_records, write_delv_anchor};
    let key = Key::transfer();
    let members: Vec<MemberSpec> = ["node1", "node2", "node3"]
        .iter()
        .map(|label| {
            MemberSpec::new(
                label,
                &format!("{label}.operator.example."),
                1,
                "kind = \"none\"\n",
            )
        })
        .collect();
    let tree = Tree::example();
    // TTL 0 at the shared name: the resolver asks afresh each time, so each answer is a pick.
    tree.write(
        MEMBERS_FILE,
        &members_file(&members).replace(&format!("\nttl = {POOL_TTL}\n"), "\nttl = 0\n"),
    );
    let primary_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let one = SecondaryTree::new(primary_addr, Some(&key), "");
    let two = SecondaryTree::new(primary_addr, Some(&key), "");
    serve_secondaries(&tree, primary_addr, &key, [&one, &two], "dnssec = true\n");
    bind_keygen(&tree, "ECDSAP256SHA256", &["-f", "KSK"]);
    let ds = ds_records(&tree);
    let anchor = write_delv_anchor(&tree, &ds);
    let primary = tree.start().await;
    let serial = served_serial(primary_addr).await.expect("the primary serves");
    let first = one.start().await;
    let second = two.start().await;
    for s in [&one, &two] {
        wait_for_serial(s.addr(), serial, Duration::from_secs(10)).await;
    }

    // Unbound, trusting only the zone's DS, asks each secondary: every answer is secure,
    // 30 at the shared name among them. Unbound keeps a TTL-0 answer for the rest of its
    // second, so that delv (no cache) also validates 30 picks asked straight of the
    // secondary, which must differ.
    let targets_of = |answers: &[String]| -> Vec<String> {
        answers
            .iter()
            .filter(|l| l.contains("\tCNAME\t") || l.split_whitespace().nth(3) == Some("CNAME"))
            .filter_map(|l| l.split_whitespace().last().map(str::to_ascii_lowercase))
            .collect()
    };
    for secondary in [one.addr(), two.addr()] {
        let (ds, anchor) = (ds.clone(), anchor.clone());
        let seen = tokio::task::spawn_blocking(move || {
            let unbound = Unbound::start(&ds, secondary);
            for (qname, qtype, status) in [
                ("node1.consortium.example", "CNAME", "NOERROR"),
                ("consortium.example", "SOA", "NOERROR"),
                ("nope.consortium.example", "A", "NXDOMAIN"),
                ("_pool.any.consortium.example", "TYPE65280", "NOERROR"),
            ] {
                let (got, flags, _) = unbound.ask(qname, qtype);
                assert_eq!(got, status, "{qname} {qtype} via {secondary}\n{}", unbound.log());
                assert!(
                    flags.iter().any(|f| f == "ad"),
                    "{qname} {qtype} via {secondary} not secure: {flags:?}"
                );
            }
            let mut seen = BTreeSet::new();
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(100));
                let (got, flags, answers) = unbound.ask("any.consortium.example", "CNAME");
                assert_eq!(
                    got,
                    "NOERROR",
                    "the shared name via {secondary}\n{}",
                    unbound.log()
                );
                assert!(
                    flags.iter().any(|f| f == "ad"),
                    "a pick via {secondary} not secure: {flags:?} {answers:?}\n{}",
                    unbound.log()
                );
                assert_eq!(targets_of(&answers).len(), 1, "one CNAME: {answers:?}");
            }
            for _ in 0..30 {
                let verdict = delv(&anchor, secondary, "any.consortium.example", "CNAME");
                assert!(
                    verdict.contains("; fully validated"),
                    "a pick via {secondary}: {verdict}"
                );
                let lines: Vec<String> = verdict.lines().map(String::from).collect();
                seen.extend(targets_of(&lines));
            }
            seen
        })
        .await
        .expect("validation via the secondary");
        assert!(
            seen.len() >= 2,
            "30 validated answers at the shared name are picks: {seen:?}"
        );
        eprintln!("via secondary {secondary}: 30 secure picks among {seen:?}");
    }
    for s in [&one, &two] {
        assert_eq!(
            private_key_files(s.dir.path()),
            Vec::<std::path::PathBuf>::new(),
            "a secondary holds no DNSSEC private key"
        );
    }
    assert!(
        !private_key_files(tree.dir.path()).is_empty(),
        "the check can see a private key: the primary's is found"
    );

    // Negative control: an alternative whose signature does not verify is never offered.
    primary.shutdown(Duration::from_millis(200)).await;
    second.shutdown(Duration::from_millis(200)).await;
    let store = two.dir.path().join("copy/consortium.example.zone");
    let (mut records, _) = consortium_dns::secondary::store::load(&store)
        .expect("the copy reads")
        .expect("the copy exists");
    let tampered = records
        .iter_mut()
        .find(|r| {
            consortium_dns::zone::carrier::is_pool_record(&r.name, r.rtype)
                && consortium_dns::zone::carrier::parse(&r.rdata)
                    .is_ok_and(|m| m.target.to_string().starts_with("node1."))
        })
        .expect("node1's pool record");
    let last = tampered.rdata.len() - 1;
    tampered.rdata[last] ^= 0x01; // the last octet of its RRSIG's signature
    consortium_dns::secondary::store::save(&store, &records).expect("write the tampered copy");
    let again = two.start().await;
    let refused = again.control.secondary_status()[0].refused_alternatives.clone();
    assert_eq!(refused.len(), 1, "one alternative refused: {refused:?}");
    assert!(refused[0].contains("node1.operator.example"), "{refused:?}");
    let offered = picks(two.addr(), 60).await;
    assert_eq!(
        offered,
        BTreeSet::from([
            "node2.operator.example.".to_string(),
            "node3.operator.example.".to_string()
        ]),
        "the tampered alternative is never served"
    );
    again.shutdown(Duration::from_millis(200)).await;
    first.shutdown(Duration::from_millis(200)).await;
}

/// A TCP gate in front of the primary: open, it passes bytes both ways; closed, nothing
/// listens on its port (the primary is unreachable, yet keeps its history).
struct Gate {
    port: u16,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Gate {
    async fn open(port: u16, upstream: SocketAddr) -> Gate {
        let mut gate = Gate {
            port,
            upstream,
            task: None,
        };
        gate.reopen().await;
        gate
    }

    async fn reopen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind gate");
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                if let Ok((mut client, _)) = listener.accept().await {
                    connections.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        }));
    }

    async fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// How the fake primary misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Its serial is behind the secondary's.
    SerialBehind,
    /// The IXFR (and then the AXFR) stops in the middle.
    Truncated,
    /// The IXFR deletes what the secondary does not hold; the AXFR brings an older serial.
    Inconsistent,
}

fn soa_of(serial: u32) -> Record {
    let soa = SOA::new(
        common::name("ns1.consortium.example."),
        common::name("hostmaster.consortium.example."),
        serial,
        1,
        1,
        5,
        300,
    );
    Record::from_rdata(common::name(ORIGIN), 300, RData::SOA(soa))
}

/// A primary that answers SOA queries and transfers wrongly, as `fault` says.
async fn fake_primary(serial: u32, fault: Fault) -> (SocketAddr, JoinHandle<()>) {
    use hickory_proto::rr::rdata::A;
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake primary");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(request) = read_frame(&mut stream).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&request) else {
                    return;
                };
                let qtype = query.queries.first().map(|q| q.query_type());
                let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
                answer.metadata.authoritative = true;
                answer.add_queries(query.queries.clone());
                let ghost = Record::from_rdata(
                    common::name(&format!("ghost.{ORIGIN}")),
                    300,
                    RData::A(A::new(192, 0, 2, 99)),
                );
                let newer = serial.wrapping_add(1);
                let (records, cut) = match (qtype, fault) {
                    (Some(RecordType::SOA), Fault::SerialBehind) => {
                        (vec![soa_of(serial.wrapping_sub(1))], false)
                    }
                    (Some(RecordType::SOA), _) => (vec![soa_of(newer)], false),
                    (Some(RecordType::IXFR), Fault::Truncated) => (vec![soa_of(newer), soa_of(serial)], true),
                    (Some(RecordType::AXFR), Fault::Truncated) => (vec![soa_of(newer), ghost], true),
                    (Some(RecordType::IXFR), _) => (
                        vec![soa_of(newer), soa_of(serial), ghost, soa_of(newer), soa_of(newer)],
                        false,
                    ),
                    _ => (vec![soa_of(serial), ghost, soa_of(serial)], false),
                };
                answer.add_answers(records);
                let bytes = answer.to_vec().expect("encodes");
                let _ = write_frame(&mut stream, &bytes).await;
                if cut {
                    // The rest never comes: the connection closes mid-transfer.
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondaries_serve_until_expire_catch_up_by_ixfr_and_refuse_bad_transfers() {
    let tree = Tree::example();
    // REFRESH 1 s, RETRY 1 s, EXPIRE 5 s: the secondary polls every second, gives up after 5.
    for (from, to) in [
        ("7200       ; refresh", "1 ; refresh"),
        ("3600       ; retry", "1 ; retry"),
        ("1209600    ; expire", "5 ; expire"),
    ] {
        edit(&tree, ZONE_FILE, from, to);
    }
    configure(&tree, "allow-transfer = [{ network = \"127.0.0.1\" }]\n", &[]);
    let primary = tree.start().await;
    let dns = primary.dns_addrs[0];
    let mut gate = Gate::open(free_port(), dns).await;
    let secondary = SecondaryTree::new(gate.addr(), None, "");
    let handle = secondary.start().await;
    let serial = served_serial(dns).await.expect("serial");
    wait_for_serial(secondary.addr(), serial, Duration::from_secs(10)).await;

    // The primary unreachable: served until EXPIRE, then SERVFAIL.
    gate.close().await;
    let closed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        served_serial(secondary.addr()).await,
        Some(serial),
        "still served 2 s in"
    );
    let expired = loop {
        let (rcode, _) = answer_of(secondary.addr(), &format!("node1.{ORIGIN}"), RecordType::CNAME)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if rcode == ResponseCode::ServFail {
            break closed_at.elapsed();
        }
        assert_eq!(rcode, ResponseCode::NoError);
        assert!(
            closed_at.elapsed() < Duration::from_secs(12),
            "the zone never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        expired >= Duration::from_secs(4),
        "expired after {expired:?}, before EXPIRE"
    );
    let status = handle.control.secondary_status();
    assert!(status[0].expired && status[0].last_error.is_some(), "{status:?}");
    eprintln!("expired {expired:?} after the primary became unreachable (EXPIRE 5 s)");

    // Meanwhile the primary changed; back, the secondary catches up by IXFR.
    edit(
        &tree,
        MEMBERS_FILE,
        "[[member]]\nlabel = \"node1\"",
        "[[member]]\nlabel = \"node9\"\ntarget = \"node9.operator.example\"\nweight = 1\n\n[[member]]\nlabel = \"node1\"",
    );
    let started = Instant::now();
    let newer = loop {
        match served_serial(dns).await {
            Some(s) if s != serial => break s,
            _ => {
                assert!(started.elapsed() < Duration::from_secs(5), "the primary reloads");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    gate.reopen().await;
    wait_for_serial(secondary.addr(), newer, Duration::from_secs(5)).await;
    let status = handle.control.secondary_status();
    assert!(!status[0].expired, "{status:?}");
    assert_eq!(
        status[0].last_transfer_kind.as_deref(),
        Some("IXFR"),
        "{status:?}"
    );

    // Bad transfers are refused and the copy held keeps being served: a key the primary
    // does not accept, a primary whose serial went back, a transfer cut short, an IXFR that
    // does not apply followed by an AXFR of an older serial.
    let wrong = Key {
        secret: b"not the consortium's secret at all".to_vec(),
        ..Key::transfer()
    };
    let (behind, _behind_task) = fake_primary(newer, Fault::SerialBehind).await;
    let (truncated, _truncated_task) = fake_primary(newer, Fault::Truncated).await;
    let (inconsistent, _inconsistent_task) = fake_primary(newer, Fault::Inconsistent).await;
    let bad_cases = [
        (gate.addr(), Some(&wrong), "rejected our signature"),
        (behind, None, "behind ours"),
        (truncated, None, "ended early"),
        (inconsistent, None, "not newer than ours"),
    ];
    for (fake, key, expected) in bad_cases {
        secondary.write_config(fake, key, "");
        let report = handle.control.reload("test").await;
        assert!(report.ok, "{report:?}");
        let started = Instant::now();
        loop {
            let status = handle.control.secondary_status();
            if status[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(expected))
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(6),
                "no '{expected}' refusal from {fake}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            served_serial(secondary.addr()).await,
            Some(newer),
            "after '{expected}', the copy held is still served"
        );
        let (rcode, answer) = answer_of(secondary.addr(), &format!("ghost.{ORIGIN}"), RecordType::A)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            rcode == ResponseCode::NXDomain && answer.is_empty(),
            "nothing of the bad transfer is served"
        );
        // Back to the real primary before EXPIRE (contact with a bad one is no contact).
        secondary.write_config(gate.addr(), None, "");
        assert!(handle.control.reload("test").await.ok);
        let started = Instant::now();
        while handle.control.secondary_status()[0].last_error.is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "the real primary answers again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    handle.shutdown(Duration::from_millis(200)).await;
    primary.shutdown(Duration::from_millis(200)).await;
}

/// `primaries = [{ ..., source = IP }]` (issue 21): a primary whose transfer ACL names one
/// address of the secondary's host transfers to it only when the secondary sends from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_transfers_from_its_configured_source_address() {
    let tree = Tree::example();
    configure(&tree, "allow-transfer = [{ network = \"127.0.0.2\" }]\n", &[]);
    let primary = tree.start().await;
    let primary_addr = primary.dns_addrs[0];
    let serial = served_serial(primary_addr).await.expect("the primary's serial");

    // Negative control: from the system's choice of address (127.0.0.1) the primary refuses.
    let secondary = SecondaryTree::new(primary_addr, None, "");
    let handle = secondary.start().await;
    let started = Instant::now();
    loop {
        let status = handle.control.secondary_status();
        if let Some(error) = &status[0].last_error {
            assert!(error.contains("REFUSED"), "refused by the ACL: {error}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no refusal: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_serial(secondary.addr()).await, None, "nothing transferred");
    handle.shutdown(Duration::from_millis(200)).await;

    // From 127.0.0.2, the address the ACL names: transferred.
    edit_file(
        &secondary.config_path(),
        &format!("primaries = [{{ address = \"{primary_addr}\" }}]"),
        &format!("primaries = [{{ address = \"{primary_addr}\", source = \"127.0.0.2\" }}]"),
    );
    let handle = secondary.start().await;
    wait_for_serial(secondary.addr(), serial, Duration::from_secs(10)).await;
    handle.shutdown(Duration::from_millis(200)).await;
    primary.shutdown(Duration::from_millis(200)).await;
}

fn edit_file(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replace(from, to)).expect("write");
}

/// Knot DNS as a primary of `zone_text`, NOTIFYing `secondary`, transfers signed with `key`.
struct Knot {
    child: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Knot {
    fn primary(zone_text: &str, secondary: SocketAddr, key: &Key) -> Knot {
        let knotd = program("knotd", "knot", "it is the primary of the interop test");
        let dir = tempfile::tempdir().expect("knot dir");
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("zone"), zone_text).expect("zone file");
        // The journal (IXFR from Knot) lives there; knotd 3.2 does not create it.
        std::fs::create_dir_all(dir.path().join("db")).expect("knot db dir");
        let config = format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: \"{d}\"\n\
             control:\n    listen: \"{d}/knot.sock\"\n\
             log:\n  - target: stderr\n    any: warning\n\
             database:\n    storage: \"{d}/db\"\n\
             key:\n  - id: {name}\n    algorithm: {alg}\n    secret: {secret}\n\
             acl:\n  - id: xfr\n    address: 127.0.0.1\n    key: {name}\n    action: transfer\n\
             remote:\n  - id: ours\n    address: {secondary_ip}@{secondary_port}\n    key: {name}\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    zonefile-load: difference\n    journal-content: changes\n\
             zone:\n  - domain: {ORIGIN}\n    file: \"zone\"\n    acl: xfr\n    notify: ours\n",
            name = key.name,
            alg = key.algorithm_text(),
            secret = key.base64(),
            secondary_ip = secondary.ip(),
            secondary_port = secondary.port(),
        );
        let config_path = dir.path().join("knot.conf");
        std::fs::write(&config_path, config).expect("knot.conf");
        let child = Command::new(knotd)
            .arg("-c")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("knot.log")).expect("log"))
            .spawn()
            .expect("start knotd");
        Knot {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }

    /// Replaces the zone file and has Knot reload it (then it NOTIFYs).
    fn reload(&self, zone_text: &str) {
        std::fs::write(self.dir.path().join("zone"), zone_text).expect("zone file");
        let knotc = program("knotc", "knot", "it reloads Knot's zone");
        let output = Command::new(knotc)
            .arg("-c")
            .arg(self.dir.path().join("knot.conf"))
            .args(["zone-reload", ORIGIN])
            .output()
            .expect("run knotc");
        assert!(
            output.status.success(),
            "knotc zone-reload: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rcode and every section of an answer, as compared.
async fn sections(
    server: SocketAddr,
    qname: &str,
    qtype: RecordType,
) -> (ResponseCode, [BTreeSet<Rr>; 3], bool) {
    let message = common::udp(server, &common::query(qname, qtype, Some(1232))).await;
    (
        message.metadata.response_code,
        [
            message.answers.iter().map(Rr::of).collect(),
            message.authorities.iter().map(Rr::of).collect(),
            message
                .additionals
                .iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .map(Rr::of)
                .collect(),
        ],
        message.metadata.authoritative,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_of_knot_serves_the_zone_as_knot_does() {
    let key = Key::transfer();
    let zone_text = std::fs::read_to_string(common::repo_root().join(ZONE_FILE)).expect("example zone");
    let secondary_port = free_port();
    let secondary_addr = SocketAddr::from(([127, 0, 0, 1], secondary_port));
    let knot = Knot::primary(&zone_text, secondary_addr, &key);
    let started = Instant::now();
    while served_serial(knot.addr).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "knotd did not start: {}",
            knot.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secondary = SecondaryTree {
        dir: tempfile::tempdir().expect("dir"),
        port: secondary_port,
    };
    secondary.write_config(knot.addr, Some(&key), "");
    let handle = secondary.start().await;
    let serial = served_serial(knot.addr).await.expect("serial");
    wait_for_serial(secondary_addr, serial, Duration::from_secs(10)).await;

    // Every name of the zone, names below them, and names that do not exist, by many types.
    let zone = handle.shared.snapshot.load().zones()[0].all_records();
    let mut names: BTreeSet<String> = zone
        .iter()
        .map(|r| r.name.to_string().to_ascii_lowercase())
        .collect();
    for name in names.clone() {
        names.insert(format!("x.{name}"));
    }
    names.insert(format!("a.b.teams.{ORIGIN}"));
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::NS,
        RecordType::SOA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::CNAME,
        RecordType::SRV,
        RecordType::CAA,
        RecordType::DS,
        RecordType::Unknown(65280),
    ];
    let mut differences = Vec::new();
    let mut compared = 0;
    for name in &names {
        for &qtype in &types {
            let theirs = sections(knot.addr, name, qtype).await;
            let ours = sections(secondary_addr, name, qtype).await;
            compared += 1;
            // Section by section; the additional section only where Knot's is a subset of
            // ours (we add MX and SRV targets' addresses as NSD's differential allows).
            let same = theirs.0 == ours.0
                && theirs.1[0] == ours.1[0]
                && theirs.1[1] == ours.1[1]
                && theirs.1[2].is_subset(&ours.1[2])
                && theirs.2 == ours.2;
            if !same {
                differences.push(format!("{name} {qtype}:\n  knot {theirs:?}\n  ours {ours:?}"));
            }
        }
    }
    assert!(compared > 200, "only {compared} queries compared");
    assert!(
        differences.is_empty(),
        "{} of {compared} answers differ from Knot's (first 5):\n{}",
        differences.len(),
        differences.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!("{compared} queries answered as Knot answers them");

    // Knot changes the zone: its NOTIFY brings the change by IXFR (from Knot's journal).
    let next = zone_text
        .replace("2026112501 ; serial", "2026112502 ; serial")
        .replace("mail    IN A    192.0.2.25", "mail    IN A    192.0.2.26");
    knot.reload(&next);
    let started = Instant::now();
    while served_serial(secondary_addr).await != Some(2026112502) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the change did not reach the secondary: {:?}\n{}",
            handle.control.secondary_status(),
            knot.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = handle.control.secondary_status();
    assert_eq!(
        status[0].last_transfer_kind.as_deref(),
        Some("IXFR"),
        "{status:?}\n{}",
        knot.log()
    );
    assert_eq!(
        sections(secondary_addr, &format!("mail.{ORIGIN}"), RecordType::A)
            .await
            .1[0],
        sections(knot.addr, &format!("mail.{ORIGIN}"), RecordType::A)
            .await
            .1[0],
        "the changed address, as Knot serves it"
    );
    handle.shutdown(Duration::from_millis(200)).await;
}
