//! Picks near the client (issue 20): a GeoIP database the test writes with PyPI's
//! mmdb-writer, EDNS Client Subnet queries from several IPv4 /24 and IPv6 subnets, the
//! nearest and region policies, the scope each answer carries, malformed options, and CAA.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;

use crate::common::{self, Tree, raw_header, raw_question, udp_raw};

const ORIGIN: &str = "consortium.example";

/// The test's GeoIP database: test networks placed in cities, written by mmdb-writer.
fn write_database(tree: &Tree) -> std::path::PathBuf {
    let python = std::env::var_os("CONSORTIUM_DNS_TEST_PYTHON").unwrap_or_else(|| {
        panic!(
            "CONSORTIUM_DNS_TEST_PYTHON is not set: the GeoIP tests need Python with PyPI's \
             mmdb-writer (tests/run.sh installs it into target/test-python)"
        )
    });
    let path = tree.path("config/test-city.mmdb");
    let script = format!(
        r#"
from mmdb_writer import MMDBWriter
from netaddr import IPSet
w = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
def place(networks, lat, lon, country, continent):
    w.insert_network(IPSet(networks), {{
        "location": {{"latitude": lat, "longitude": lon}},
        "country": {{"iso_code": country}},
        "continent": {{"code": continent}},
    }})
place(["198.51.100.0/24"], 52.37, 4.90, "NL", "EU")     # Amsterdam
place(["203.0.113.0/24"], -33.87, 151.21, "AU", "OC")   # Sydney
place(["192.0.2.0/24"], 35.68, 139.69, "JP", "AS")      # Tokyo
place(["2001:db8:aa00::/40"], 40.71, -74.01, "US", "NA") # New York
place(["127.0.1.0/24"], 52.37, 4.90, "NL", "EU")        # loopback clients of the resolver test
place(["127.0.2.0/24"], -33.87, 151.21, "AU", "OC")
w.to_db_file("{}")
"#,
        path.display()
    );
    let output = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", std::path::Path::new(&python).display()));
    assert!(
        output.status.success(),
        "mmdb-writer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

/// Members in five cities; pools over them by each policy.
fn geo_tree() -> Tree {
    let tree = Tree::example();
    write_database(&tree);
    let closed = common::free_port();
    let member = |label: &str, lat: f64, lon: f64, region: &str, health: &str| {
        format!(
            "\n[[member]]\nlabel = \"{label}\"\ntarget = \"{label}.operator.example\"\nweight = 1\n\
             location = {{ latitude = {lat}, longitude = {lon} }}\nregion = \"{region}\"\n{health}"
        )
    };
    let down = format!(
        "[member.health]\nkind = \"tcp\"\naddress = \"127.0.0.1:{closed}\"\ninitial = \"down\"\n\
         interval = \"200ms\"\ntimeout = \"100ms\"\njitter = \"10ms\"\n"
    );
    let mut text = String::from(
        "member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30\nmembers = [\"eu1\", \"eu2\", \"us1\", \"us2\", \"ap1\"]\n\n\
         [[pool]]\nlabel = \"near\"\nttl = 30\npolicy = \"nearest\"\nnearest-k = 2\n\
         members = [\"eu1\", \"eu2\", \"us1\", \"us2\", \"ap1\"]\n\n\
         [[pool]]\nlabel = \"regional\"\nttl = 30\npolicy = \"region\"\nnearest-k = 2\n\
         members = [\"eu1\", \"eu2\", \"us1\", \"us2\", \"ap1\"]\n\n\
         [[pool]]\nlabel = \"regional-down\"\nttl = 30\npolicy = \"region\"\nnearest-k = 2\n\
         members = [\"eu3\", \"eu4\", \"us1\", \"us2\", \"ap1\"]\n",
    );
    text += &member("eu1", 52.37, 4.90, "eu", ""); // Amsterdam
    text += &member("eu2", 50.11, 8.68, "eu", ""); // Frankfurt
    text += &member("us1", 40.71, -74.01, "na", ""); // New York
    text += &member("us2", 37.77, -122.42, "na", ""); // San Francisco
    text += &member("ap1", -33.87, 151.21, "oc", ""); // Sydney
    text += &member("eu3", 48.86, 2.35, "eu", &down); // Paris, down
    text += &member("eu4", 41.39, 2.17, "eu", &down); // Barcelona, down
    tree.write("zones/consortium.example.members.toml", &text);
    let config = tree.read("config/consortium-dns.toml").replace(
        "\n[[zone]]",
        "\n[geoip]\ndatabase = \"test-city.mmdb\"\n\n[[zone]]",
    );
    tree.write("config/consortium-dns.toml", &config);
    tree
}

/// A query with an EDNS Client Subnet option (RFC 7871 §6): family, source prefix, address
/// octets as given.
fn ecs_query(id: u16, qname: &str, qtype: u16, ecs: Option<(u16, u8, &[u8])>) -> Vec<u8> {
    let mut q = raw_header(id, 0x0100, [1, 0, 0, 1]);
    q.extend_from_slice(&raw_question(qname, qtype, 1));
    let mut options = Vec::new();
    if let Some((family, source, address)) = ecs {
        options.extend_from_slice(&8u16.to_be_bytes());
        options.extend_from_slice(&((4 + address.len()) as u16).to_be_bytes());
        options.extend_from_slice(&family.to_be_bytes());
        options.extend_from_slice(&[source, 0]);
        options.extend_from_slice(address);
    }
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    q.extend_from_slice(&(options.len() as u16).to_be_bytes());
    q.extend_from_slice(&options);
    q
}

/// The answer: rcode, the CNAME target at the shared name (if any), and the echoed ECS
/// option's (source, scope), read from the end of the message where the server puts it.
async fn ask(
    server: SocketAddr,
    qname: &str,
    qtype: u16,
    ecs: Option<(u16, u8, &[u8])>,
) -> (ResponseCode, Option<String>, Option<(u8, u8)>) {
    let query = ecs_query(0x4242, qname, qtype, ecs);
    let raw = udp_raw(server, &query).await.expect("an answer");
    let message = Message::from_vec(&raw).expect("the answer parses");
    let target = message.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_string().trim_end_matches('.').to_string()),
        _ => None,
    });
    let echoed = ecs.map(|(_, source, _)| {
        let len = usize::from(source).div_ceil(8);
        let at = raw.len() - len - 8;
        assert_eq!(&raw[at..at + 2], &[0, 8], "the ECS option closes the answer");
        (raw[at + 6], raw[at + 7])
    });
    (message.metadata.response_code, target, echoed)
}

/// Targets over `n` queries (label of each), with the scopes seen.
async fn tally(
    server: SocketAddr,
    pool: &str,
    ecs: Option<(u16, u8, &[u8])>,
    n: usize,
) -> (BTreeMap<String, usize>, Vec<(u8, u8)>) {
    let mut counts = BTreeMap::new();
    let mut scopes = Vec::new();
    for _ in 0..n {
        let (rcode, target, echoed) = ask(server, &format!("{pool}.{ORIGIN}"), 1, ecs).await;
        assert_eq!(rcode, ResponseCode::NoError);
        let label = target
            .expect("a CNAME")
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        *counts.entry(label).or_default() += 1;
        scopes.extend(echoed);
    }
    scopes.dedup();
    (counts, scopes)
}

fn labels(counts: &BTreeMap<String, usize>) -> Vec<&str> {
    counts.keys().map(String::as_str).collect()
}

/// Pearson's chi-square of `counts` against equal shares: with 1 degree of freedom the
/// 0.1% critical value is 10.83 (a fresh OS-seeded RNG per run: failing once in 1,000 runs).
fn assert_even(counts: &BTreeMap<String, usize>) {
    let n: usize = counts.values().sum();
    let expected = n as f64 / counts.len() as f64;
    let chi: f64 = counts
        .values()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    assert!(
        chi < 10.83 * (counts.len() - 1) as f64,
        "uneven picks {counts:?} (chi-square {chi:.2})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_clients_land_near_with_the_database_scope() {
    let tree = geo_tree();
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let amsterdam: &[u8] = &[198, 51, 100];
    let sydney: &[u8] = &[203, 0, 113];

    // nearest-k 2 from Amsterdam: Amsterdam and Frankfurt, evenly, scope the database's /24.
    let (counts, scopes) = tally(dns, "near", Some((1, 24, amsterdam)), 400).await;
    assert_eq!(labels(&counts), ["eu1", "eu2"], "{counts:?}");
    assert_even(&counts);
    assert_eq!(scopes, [(24, 24)], "scope = the database network's /24");
    // A /32 source gets the database's /24 scope, never longer than the source.
    let (counts, scopes) = tally(dns, "near", Some((1, 32, &[198, 51, 100, 77])), 50).await;
    assert_eq!(labels(&counts), ["eu1", "eu2"]);
    assert_eq!(scopes, [(32, 24)]);
    // From Sydney: Sydney, then San Francisco.
    let (counts, _) = tally(dns, "near", Some((1, 24, sydney)), 100).await;
    assert_eq!(labels(&counts), ["ap1", "us2"], "{counts:?}");
    // IPv6 /56 inside New York's /40: New York and San Francisco, scope 40.
    let ny: &[u8] = &[0x20, 0x01, 0x0d, 0xb8, 0xaa, 0x12, 0x34];
    let (counts, scopes) = tally(dns, "near", Some((2, 56, ny)), 100).await;
    assert_eq!(labels(&counts), ["us1", "us2"], "{counts:?}");
    assert_eq!(scopes, [(56, 40)]);

    // region: Amsterdam's continent; Tokyo's (AS) has none, so the nearest two.
    let (counts, _) = tally(dns, "regional", Some((1, 24, amsterdam)), 100).await;
    assert_eq!(labels(&counts), ["eu1", "eu2"], "{counts:?}");
    let (counts, _) = tally(dns, "regional", Some((1, 24, &[192, 0, 2])), 100).await;
    assert_eq!(
        labels(&counts),
        ["ap1", "us2"],
        "Tokyo falls back to the nearest: {counts:?}"
    );
    // A region whose members are all down: the nearest healthy ones.
    let (counts, _) = tally(dns, "regional-down", Some((1, 24, amsterdam)), 100).await;
    assert_eq!(labels(&counts), ["us1", "us2"], "{counts:?}");

    // Source prefix 0: "do not use my address": every member, scope 0.
    let (counts, scopes) = tally(dns, "near", Some((1, 0, &[])), 300).await;
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert_eq!(scopes, [(0, 0)]);
    // A weighted pool and a plain name do not depend on the client: scope 0, echoed.
    let (counts, scopes) = tally(dns, "any", Some((1, 24, amsterdam)), 300).await;
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert_eq!(scopes, [(24, 0)]);
    let (rcode, _, echoed) = ask(dns, &format!("ns1.{ORIGIN}"), 1, Some((1, 24, amsterdam))).await;
    assert_eq!((rcode, echoed), (ResponseCode::NoError, Some((24, 0))));
    // Without the option: the source address (127.0.0.1, in no network of the database) and
    // no option in the answer.
    let (counts, scopes) = tally(dns, "near", None, 300).await;
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(scopes.is_empty());

    // Malformed options: FORMERR (RFC 7871 §7.1.2), and the next query is answered.
    for (what, bad) in [
        (
            "source longer than the address",
            (1u16, 33u8, &[1u8, 2, 3, 4, 5][..]),
        ),
        ("bits beyond the source prefix", (1, 23, &[198, 51, 101][..])),
        ("unknown family", (7, 8, &[1][..])),
    ] {
        let (rcode, _, _) = ask_raw(dns, bad).await;
        assert_eq!(rcode, 1, "{what}: FORMERR");
        let (rcode, target, _) = ask(dns, &format!("near.{ORIGIN}"), 1, Some((1, 24, amsterdam))).await;
        assert!(rcode == ResponseCode::NoError && target.is_some(), "after {what}");
    }

    // CAA through the shared name: always the same member.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (_, target, _) = ask(dns, &format!("near.{ORIGIN}"), 257, Some((1, 24, sydney))).await;
        seen.insert(target.expect("the CNAME"));
    }
    assert_eq!(seen.len(), 1, "CAA gets one member: {seen:?}");

    // /metrics names each pool's policy (joined with the pick counters by pool).
    let scrape = server.control.scrape();
    for (pool, policy) in [("near", "nearest"), ("regional", "region"), ("any", "weighted")] {
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with("consortium_dns_pool_policy{")
                    && l.contains(&format!("pool=\"{pool}.{ORIGIN}.\""))
                    && l.contains(&format!("policy=\"{policy}\""))
                    && l.ends_with(" 1")),
            "no policy series for {pool}:\n{}",
            scrape
                .lines()
                .filter(|l| l.contains("pool_policy"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let report = server.control.health.report(&server.shared.snapshot.load());
    assert!(
        report
            .pools
            .iter()
            .any(|p| p.name == format!("near.{ORIGIN}.") && p.policy == "nearest")
    );
    server.shutdown(std::time::Duration::from_millis(200)).await;
}

/// The rcode (header bits) of the answer to a query with a raw, maybe malformed, ECS option.
async fn ask_raw(server: SocketAddr, (family, source, address): (u16, u8, &[u8])) -> (u8, (), ()) {
    let query = ecs_query(7, &format!("near.{ORIGIN}"), 1, Some((family, source, address)));
    let raw = udp_raw(server, &query).await.expect("an answer");
    (raw[3] & 0x0f, (), ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_broken_database_and_bad_places() {
    let tree = geo_tree();
    let (ok, _, _) = common::run_check(&tree);
    assert!(ok, "the geo tree checks");
    tree.write("config/test-city.mmdb", "not a database");
    let (ok, out, err) = common::run_check(&tree);
    assert!(!ok, "a broken database is refused");
    let text = format!("{out}{err}");
    assert!(
        text.contains("test-city.mmdb") && text.contains("not a MaxMind DB file"),
        "{text}"
    );
    write_database(&tree);
    let members = tree.read("zones/consortium.example.members.toml");
    tree.write(
        "zones/consortium.example.members.toml",
        &members.replacen("latitude = 52.37", "latitude = 152.37", 1),
    );
    let (ok, out, err) = common::run_check(&tree);
    let text = format!("{out}{err}");
    assert!(
        !ok && text.contains("members.toml:") && text.contains("outside -90..90"),
        "{text}"
    );
}

/// An HTTP health endpoint that answers 200 after `delay`.
async fn slow_endpoint(delay: std::time::Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_pool_picks_in_inverse_proportion_to_the_round_trip() {
    let fast = slow_endpoint(std::time::Duration::from_millis(4)).await;
    let slow = slow_endpoint(std::time::Duration::from_millis(40)).await;
    let tree = Tree::example();
    let probe = |addr: SocketAddr| {
        format!(
            "[member.health]\nkind = \"http\"\naddress = \"{addr}\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
             jitter = \"20ms\"\nrise = 1\nfall = 3\nslow-start = \"0s\"\n"
        )
    };
    tree.write(
        "zones/consortium.example.members.toml",
        &format!(
            "[[pool]]\nlabel = \"any\"\nttl = 30\npolicy = \"latency\"\n\n\
             [[member]]\nlabel = \"fast\"\ntarget = \"fast.operator.example\"\n{}\n\
             [[member]]\nlabel = \"slow\"\ntarget = \"slow.operator.example\"\n{}",
            probe(fast),
            probe(slow)
        ),
    );
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    // Ten probes each: the smoothed round trips have settled.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (counts, scopes) = tally(dns, "any", Some((1, 24, &[198, 51, 100])), 600).await;
    assert_eq!(
        scopes,
        [(24, 0)],
        "latency does not depend on the client: scope 0"
    );
    let share = *counts.get("fast").unwrap_or(&0) as f64 / 600.0;
    // Round trips of about 4.2 and 40.2 ms: the fast member's share is about 0.9. Binomial
    // noise at n = 600 is 0.012 (5σ = 0.06); the rest of the margin is for a busy machine's
    // timing.
    assert!(
        (0.78..=0.98).contains(&share),
        "fast member's share {share:.3}: {counts:?}\n{:?}",
        server.control.health.report(&server.shared.snapshot.load())
    );
    assert!(
        counts.get("slow").is_some_and(|&n| n > 0),
        "the slow member is still picked: {counts:?}"
    );
    eprintln!("latency pool: {counts:?}");
    server.shutdown(std::time::Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_sending_client_subnets_gets_each_client_a_near_pick() {
    let unbound = common::program(
        "unbound",
        "unbound",
        "it is the ECS-sending resolver of the geo test",
    );
    let dig = common::program(
        "dig",
        "bind9-dnsutils",
        "it asks the resolver from two client addresses",
    );
    let tree = geo_tree();
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let dir = tempfile::tempdir().expect("unbound dir");
    let port = common::free_port();
    let config = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-not-query-localhost: no\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
         use-syslog: no\n  logfile: \"{d}/unbound.log\"\n  verbosity: 1\n  \
         access-control: 127.0.0.0/8 allow\n  module-config: \"subnetcache iterator\"\n  \
         send-client-subnet: {ip}\n  max-client-subnet-ipv4: 24\n  \
         num-threads: 1\n  so-reuseport: no\n\
         remote-control:\n  control-enable: no\n\
         stub-zone:\n  name: \"{ORIGIN}\"\n  stub-addr: {ip}@{dns_port}\n",
        d = dir.path().display(),
        ip = dns.ip(),
        dns_port = dns.port(),
    );
    std::fs::write(dir.path().join("unbound.conf"), config).expect("unbound.conf");
    let mut child = Command::new(unbound)
        .args(["-d", "-c"])
        .arg(dir.path().join("unbound.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start unbound");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "unbound did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Each client address asks several times: Unbound caches per client subnet (scope /24).
    let ask_from = move |source: &str| -> std::collections::BTreeSet<String> {
        (0..6)
            .map(|_| {
                let output = Command::new(&dig)
                    .args([
                        "-b",
                        source,
                        "@127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "+short",
                        "+tries=1",
                        "+time=5",
                    ])
                    .arg(format!("near.{ORIGIN}"))
                    .arg("CNAME")
                    .output()
                    .expect("run dig");
                String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let from_amsterdam = tokio::task::spawn_blocking(move || (ask_from("127.0.1.1"), ask_from("127.0.2.1")))
        .await
        .expect("dig");
    let log = std::fs::read_to_string(dir.path().join("unbound.log")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let (amsterdam, sydney) = from_amsterdam;
    assert!(
        !amsterdam.is_empty() && amsterdam.iter().all(|t| t == "eu1" || t == "eu2"),
        "a client in 127.0.1.0/24 (Amsterdam) gets Amsterdam or Frankfurt via Unbound: {amsterdam:?}\n{log}"
    );
    assert!(
        !sydney.is_empty() && sydney.iter().all(|t| t == "ap1" || t == "us2"),
        "a client in 127.0.2.0/24 (Sydney) gets Sydney or San Francisco: {sydney:?}\n{log}"
    );
    server.shutdown(std::time::Duration::from_millis(200)).await;
}
