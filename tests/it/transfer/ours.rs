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
use crate::common::free_port;

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
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nhttp-listen = \"\"\n\n[rrl]\nenabled = false\n\n\
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
    configure(
        &tree,
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{0}\" }}]\n\
             notify = [{{ address = \"{1}\", key = \"{0}\" }}, {{ address = \"{2}\", key = \"{0}\" }}]\n",
            key.name,
            one.addr(),
            two.addr()
        ),
        &[&key],
    );
    let config = tree.read("config/consortium-dns.toml").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{primary_addr}\"]"),
    );
    tree.write("config/consortium-dns.toml", &config);
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
