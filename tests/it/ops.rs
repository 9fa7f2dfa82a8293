//! Metrics, systemd readiness and graceful shutdown (issue 6).
//!
//! The metrics tests run the server in-process and scrape its real `/metrics` endpoint; the
//! lifecycle tests run the real binary, listen on a `NOTIFY_SOCKET` of their own, send it real
//! signals with `kill`, and read its log from stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, UdpSocket as StdUdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use consortium_dns::app::{self, Overrides, ServerHandle};
use consortium_dns::metrics;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    ManPages, Tree, binary, frame, program, query, repo_root, tcp_raw, udp, udp_raw, verify_units,
};

const ZONE: &str = "consortium.example.";
const POOL: &str = "any.consortium.example.";
/// The example zone's SOA serial.
const EXAMPLE_SERIAL: f64 = 2_026_112_501.0;

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition, scraped over real HTTP
// ---------------------------------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

/// One scrape: every sample by (metric name, labels), and the `# TYPE` of every family.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<(String, Labels), f64>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
                types.insert(name.to_string(), kind.trim().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = parse_sample_head(line);
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let previous = samples.insert((name, labels), value);
            assert!(previous.is_none(), "duplicate sample {line:?}");
        }
        Scrape {
            samples,
            types,
            text: text.to_string(),
        }
    }

    /// Every sample of `name`, by its labels.
    fn family(&self, name: &str) -> BTreeMap<Labels, f64> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }

    /// The value of one sample, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&(name.to_string(), label_set(labels))).copied()
    }

    /// Every sample of the named families, for comparing with an exact expectation.
    fn only(&self, names: &[&str]) -> BTreeMap<(String, Labels), f64> {
        self.samples
            .iter()
            .filter(|((n, _), _)| names.contains(&n.as_str()))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Splits `name{a="b",...} value` into the name, the labels and the rest.
fn parse_sample_head(line: &str) -> (String, Labels, &str) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut labels = Labels::new();
    let rest = &line[name_end..];
    let Some(body) = rest.strip_prefix('{') else {
        return (name, labels, rest);
    };
    let mut chars = body.char_indices().peekable();
    loop {
        // A label name, up to '=' (or the closing brace).
        let mut key = String::new();
        let mut closed_at = None;
        for (i, c) in chars.by_ref() {
            match c {
                '=' => break,
                '}' => {
                    closed_at = Some(i);
                    break;
                }
                ',' | ' ' => {}
                c => key.push(c),
            }
        }
        if let Some(i) = closed_at {
            return (name, labels, &body[i + 1..]);
        }
        assert_eq!(
            chars.next().map(|(_, c)| c),
            Some('"'),
            "label value quoted in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated escape in {line:?}"),
                },
                Some((_, '"')) => break,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        labels.insert(key, value);
    }
}

fn label_set(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> ((String, Labels), f64) {
    ((name.to_string(), label_set(labels)), value)
}

/// A minimal HTTP/1.1 GET (blocking): status, headers (lowercased names), body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut stream = StdTcpStream::connect(addr).expect("connect to the HTTP endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the whole response");
    let (head, body) = response.split_once("\r\n\r\n").expect("end of headers");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    assert!(
        !headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked")),
        "this client reads plain bodies only"
    );
    (status, headers, body.to_string())
}

/// `http_get` from async code, off the runtime's workers.
async fn http_get_async(addr: SocketAddr, path: &'static str) -> (u16, BTreeMap<String, String>, String) {
    tokio::task::spawn_blocking(move || http_get(addr, path))
        .await
        .expect("http task")
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get_async(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers.get("content-type").map_or("", String::as_str);
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "Prometheus text format, got {content_type:?}"
    );
    Scrape::parse(&body)
}

/// Scrapes until `check` passes, then once more after every counting worker has had time to
/// flush again (UDP workers flush when idle for 200 ms), to show the values have settled.
/// Panics with the last scrape when the deadline passes.
async fn scrape_until_settled(
    addr: SocketAddr,
    deadline: Duration,
    check: impl Fn(&Scrape) -> Result<(), String>,
) -> Scrape {
    let until = Instant::now() + deadline;
    loop {
        let scrape = scrape(addr).await;
        match check(&scrape) {
            Ok(()) => break,
            Err(why) if Instant::now() >= until => {
                panic!(
                    "metrics did not reach the expected values: {why}\n{}",
                    scrape.text
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scrape = scrape(addr).await;
    if let Err(why) = check(&scrape) {
        panic!("metrics changed after settling: {why}\n{}", scrape.text);
    }
    scrape
}

/// `Ok` when `actual == expected`, else a readable difference.
fn same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    actual: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) -> Result<(), String> {
    if actual == expected {
        return Ok(());
    }
    let mut diff = format!("{what} differ:");
    for (k, v) in expected {
        match actual.get(k) {
            Some(a) if a == v => {}
            Some(a) => diff += &format!("\n  {k:?}: expected {v:?}, got {a:?}"),
            None => diff += &format!("\n  {k:?}: expected {v:?}, missing"),
        }
    }
    for (k, a) in actual {
        if !expected.contains_key(k) {
            diff += &format!("\n  {k:?}: unexpected {a:?}");
        }
    }
    Err(diff)
}

async fn start_with_http(tree: &Tree) -> ServerHandle {
    let overrides = Overrides {
        listen: None,
        http_listen: Some(Some("127.0.0.1:0".parse().expect("addr"))),
    };
    app::start_with(tree.config(), overrides)
        .await
        .unwrap_or_else(|e| panic!("server start: {e}"))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn assert_rcode(m: &Message, rcode: ResponseCode) {
    assert_eq!(m.metadata.response_code, rcode, "{m}");
}

fn cname_target(m: &Message) -> String {
    match m.answers.first().map(|r| &r.data) {
        Some(RData::CNAME(target)) => target.0.to_string(),
        _ => panic!("a CNAME answer expected: {m}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics after known queries
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_known_set_of_queries_exactly() {
    let tree = Tree::example();
    let started_at = unix_now().floor();
    let server = start_with_http(&tree).await;
    let dns = server.dns_addrs[0];
    let http = server.http_addr.expect("HTTP endpoint bound");

    let (status, _, body) = http_get_async(http, "/healthz").await;
    assert_eq!(status, 200, "/healthz: {body}");
    let (status, _, body) = http_get_async(http, "/readyz").await;
    assert_eq!(status, 200, "/readyz: {body}");

    // A fresh server has counted nothing.
    let before = scrape(http).await;
    for name in [
        metrics::QUERIES_TOTAL,
        metrics::MALFORMED_TOTAL,
        metrics::DROPPED_TOTAL,
        metrics::TRUNCATED_TOTAL,
    ] {
        assert!(
            before.family(name).values().all(|v| *v == 0.0),
            "{name} before any query:\n{}",
            before.text
        );
    }

    // 7 static answers over UDP.
    for _ in 0..7 {
        let m = udp(dns, &query("node1.consortium.example.", RecordType::A, None)).await;
        assert_rcode(&m, ResponseCode::NoError);
        assert_eq!(cname_target(&m), "node1.operator-a.com.");
    }
    // 3 names that do not exist.
    for i in 0..3 {
        let m = udp(
            dns,
            &query(&format!("missing{i}.consortium.example."), RecordType::A, None),
        )
        .await;
        assert_rcode(&m, ResponseCode::NXDomain);
    }
    // 2 names outside our zones.
    for _ in 0..2 {
        let m = udp(dns, &query("www.example.org.", RecordType::A, None)).await;
        assert_rcode(&m, ResponseCode::Refused);
    }
    // 1 query that claims an answer record: FORMERR (RFC 1035 §4.1.1).
    let mut formerr = query("node1.consortium.example.", RecordType::A, None)
        .to_vec()
        .expect("encode");
    formerr[6..8].copy_from_slice(&1u16.to_be_bytes());
    let answer = udp_raw(dns, &formerr).await.expect("FORMERR answer");
    assert_rcode(&Message::from_vec(&answer).expect("parse"), ResponseCode::FormErr);
    // 2 picks of the shared name over UDP (AAAA), 2 over TCP (A) on one connection.
    for _ in 0..2 {
        let m = udp(dns, &query(POOL, RecordType::AAAA, None)).await;
        assert_rcode(&m, ResponseCode::NoError);
        cname_target(&m);
    }
    let pair = [
        query(POOL, RecordType::A, None).to_vec().expect("encode"),
        query(POOL, RecordType::A, None).to_vec().expect("encode"),
    ];
    for bytes in tcp_raw(dns, &pair, 2).await {
        let m = Message::from_vec(&bytes).expect("parse");
        assert_rcode(&m, ResponseCode::NoError);
        cname_target(&m);
    }
    // 1 response sent to us (QR=1): dropped without an answer.
    let mut response = query("node1.consortium.example.", RecordType::A, None)
        .to_vec()
        .expect("encode");
    response[2] |= 0x80;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(&response, dns).await.expect("send");

    let q = metrics::QUERIES_TOTAL;
    let counters = [
        metrics::QUERIES_TOTAL,
        metrics::MALFORMED_TOTAL,
        metrics::DROPPED_TOTAL,
        metrics::TRUNCATED_TOTAL,
        metrics::TCP_CONNECTIONS_OPEN,
        metrics::RELOADS_TOTAL,
        metrics::ZONE_SERIAL,
    ];
    let expected: BTreeMap<_, _> = [
        sample(
            q,
            &[("transport", "udp"), ("qtype", "A"), ("rcode", "NOERROR")],
            7.0,
        ),
        sample(
            q,
            &[("transport", "udp"), ("qtype", "A"), ("rcode", "NXDOMAIN")],
            3.0,
        ),
        sample(
            q,
            &[("transport", "udp"), ("qtype", "A"), ("rcode", "REFUSED")],
            2.0,
        ),
        sample(
            q,
            &[("transport", "udp"), ("qtype", "A"), ("rcode", "FORMERR")],
            1.0,
        ),
        sample(
            q,
            &[("transport", "udp"), ("qtype", "AAAA"), ("rcode", "NOERROR")],
            2.0,
        ),
        sample(
            q,
            &[("transport", "tcp"), ("qtype", "A"), ("rcode", "NOERROR")],
            2.0,
        ),
        sample(metrics::MALFORMED_TOTAL, &[("transport", "udp")], 1.0),
        sample(metrics::DROPPED_TOTAL, &[("transport", "udp")], 1.0),
        sample(metrics::TCP_CONNECTIONS_OPEN, &[], 0.0),
        sample(metrics::RELOADS_TOTAL, &[("outcome", "success")], 1.0),
        sample(metrics::ZONE_SERIAL, &[("zone", ZONE)], EXAMPLE_SERIAL),
    ]
    .into_iter()
    .collect();
    let members: BTreeSet<String> = (1..=5).map(|i| format!("node{i}")).collect();
    let scrape = scrape_until_settled(http, Duration::from_secs(10), |s| {
        same("counters", &s.only(&counters), &expected)?;
        // Picks: one series per member of the pool (created with the snapshot), summing to 4.
        let picks = s.family(metrics::POOL_PICKS_TOTAL);
        let mut seen = BTreeSet::new();
        for labels in picks.keys() {
            if labels.get("zone").map(String::as_str) != Some(ZONE)
                || labels.get("pool").map(String::as_str) != Some(POOL)
                || labels.len() != 3
            {
                return Err(format!("unexpected pick labels {labels:?}"));
            }
            seen.insert(labels["member"].clone());
        }
        if seen != members {
            return Err(format!("pick series for {seen:?}, expected {members:?}"));
        }
        let total: f64 = picks.values().sum();
        if total != 4.0 {
            return Err(format!("{total} picks counted, expected 4"));
        }
        Ok(())
    })
    .await;

    // The last successful load is the start, and stamped when it happened.
    let last = scrape
        .get(metrics::LAST_RELOAD_SUCCESS, &[])
        .expect("last reload time");
    assert!(
        (started_at..=unix_now() + 1.0).contains(&last),
        "last reload at {last}, started at {started_at}"
    );
    // Names follow Prometheus conventions: our prefix, counters end in _total.
    for (name, kind) in &scrape.types {
        assert!(name.starts_with("consortium_dns_"), "{name}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }
    for (name, kind) in [
        (metrics::QUERIES_TOTAL, "counter"),
        (metrics::POOL_PICKS_TOTAL, "counter"),
        (metrics::RELOADS_TOTAL, "counter"),
        (metrics::ZONE_SERIAL, "gauge"),
        (metrics::TCP_CONNECTIONS_OPEN, "gauge"),
        (metrics::LAST_RELOAD_SUCCESS, "gauge"),
    ] {
        assert_eq!(scrape.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Health and certificate metrics after known probe outcomes
// ---------------------------------------------------------------------------------------------

/// A local HTTPS endpoint answering 200 with a leaf for `host` issued by a fresh CA.
struct TlsEndpoint {
    addr: SocketAddr,
    ca_pem: String,
    /// The leaf's notAfter, Unix seconds.
    not_after: i64,
}

async fn tls_endpoint(host: &str, valid_for: Duration) -> TlsEndpoint {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let not_after = now + valid_for.as_secs();

    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ops test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("leaf params");
    leaf_params.not_after = epoch + Duration::from_secs(not_after);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf cert");

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TLS endpoint");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsEndpoint {
        addr,
        ca_pem: ca_cert.pem(),
        not_after: not_after as i64,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_member_health_and_certificates_after_known_probes() {
    // node1: a TCP port that accepts. node2: a closed port. node3: HTTPS with a known leaf.
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open_port = open.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = open.accept().await {
            drop(stream);
        }
    });
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    // 20 days and a half: the days-to-expiry gauge (whole days, rounded down) reads 20.
    let tls = tls_endpoint(
        "planetmint.operator-c.org",
        Duration::from_secs(20 * 86_400 + 43_200),
    )
    .await;

    let tree = Tree::example();
    tree.write("zones/ops-ca.pem", &tls.ca_pem);
    // Fast probes, no jitter, no slow start: effective weights are exact once settled.
    let timing = "interval = \"200ms\"\ntimeout = \"100ms\"\njitter = \"0s\"\nslow-start = \"0s\"";
    tree.write(
        "zones/consortium.example.members.toml",
        &format!(
            r#"member-ttl = 300

[[pool]]
label = "any"
ttl = 30

# Starts down; up after one successful connect.
[[member]]
label = "node1"
target = "node1.operator-a.com"
weight = 2
[member.health]
kind = "tcp"
port = {open_port}
address = "127.0.0.1:{open_port}"
initial = "down"
rise = 1
{timing}

# Starts up; down after two refused connects.
[[member]]
label = "node2"
target = "api.operator-b.net"
weight = 2
[member.health]
kind = "tcp"
port = {closed_port}
address = "127.0.0.1:{closed_port}"
initial = "up"
fall = 2
{timing}

# Starts down; up after one HTTPS probe that verifies the leaf against ops-ca.pem.
[[member]]
label = "node3"
target = "planetmint.operator-c.org"
weight = 1
[member.health]
kind = "https"
address = "{tls_addr}"
ca-file = "ops-ca.pem"
initial = "down"
rise = 1
interval = "300ms"
timeout = "250ms"
jitter = "0s"
slow-start = "0s"
"#,
            tls_addr = tls.addr,
        ),
    );
    let server = start_with_http(&tree).await;
    let http = server.http_addr.expect("HTTP endpoint bound");

    let days = (tls.not_after - unix_now() as i64).div_euclid(86_400);
    assert_eq!(days, 20, "test certificate validity");
    let member = |m: &'static str| [("zone", ZONE), ("member", m)];
    let pooled = |m: &'static str| [("zone", ZONE), ("pool", POOL), ("member", m)];
    let expected: BTreeMap<_, _> = [
        sample(metrics::MEMBER_UP, &member("node1"), 1.0),
        sample(metrics::MEMBER_UP, &member("node2"), 0.0),
        sample(metrics::MEMBER_UP, &member("node3"), 1.0),
        sample(metrics::MEMBER_EFFECTIVE_WEIGHT, &pooled("node1"), 2.0),
        sample(metrics::MEMBER_EFFECTIVE_WEIGHT, &pooled("node2"), 0.0),
        sample(metrics::MEMBER_EFFECTIVE_WEIGHT, &pooled("node3"), 1.0),
        // Only an https probe sees a certificate.
        sample(metrics::MEMBER_CERT_EXPIRY_DAYS, &member("node3"), days as f64),
        // The leaf names the node's own host, not the pool's shared name.
        sample(metrics::MEMBER_CERT_COVERS_POOL, &pooled("node3"), 0.0),
        sample(metrics::POOL_FAIL_OPEN, &[("zone", ZONE), ("pool", POOL)], 0.0),
        sample(metrics::RELOADS_TOTAL, &[("outcome", "success")], 1.0),
        sample(metrics::ZONE_SERIAL, &[("zone", ZONE)], EXAMPLE_SERIAL),
    ]
    .into_iter()
    .collect();
    let watched = [
        metrics::MEMBER_UP,
        metrics::MEMBER_EFFECTIVE_WEIGHT,
        metrics::MEMBER_CERT_EXPIRY_DAYS,
        metrics::MEMBER_CERT_COVERS_POOL,
        metrics::POOL_FAIL_OPEN,
        metrics::RELOADS_TOTAL,
        metrics::ZONE_SERIAL,
    ];
    let scrape = scrape_until_settled(http, Duration::from_secs(10), |s| {
        same("health metrics", &s.only(&watched), &expected)?;
        // Every member has been probed: its last probe's duration, in seconds, within the timeout.
        let durations = s.family(metrics::MEMBER_PROBE_DURATION);
        let probed: BTreeSet<&str> = durations
            .keys()
            .filter_map(|l| l.get("member").map(String::as_str))
            .collect();
        if probed != BTreeSet::from(["node1", "node2", "node3"]) {
            return Err(format!("probe durations for {probed:?}"));
        }
        for (labels, seconds) in &durations {
            if labels.get("zone").map(String::as_str) != Some(ZONE) || labels.len() != 2 {
                return Err(format!("probe duration labels {labels:?}"));
            }
            if !(0.0..=0.3).contains(seconds) {
                return Err(format!("probe duration {seconds} s for {labels:?}"));
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(
        scrape
            .types
            .get(metrics::MEMBER_PROBE_DURATION)
            .map(String::as_str),
        Some("gauge")
    );
    // The pool answers only from members that are up.
    let dns = server.dns_addrs[0];
    for _ in 0..20 {
        let m = udp(dns, &query(POOL, RecordType::A, None)).await;
        let target = cname_target(&m);
        assert!(
            target == "node1.operator-a.com." || target == "planetmint.operator-c.org.",
            "picked a member that is down: {target}"
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// systemd unit
// ---------------------------------------------------------------------------------------------

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit =
        std::fs::read_to_string(repo_root().join("systemd/consortium-dns.service")).expect("read the unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        // A TSIG secret readable by the dynamic user alone (issue 21).
        "LoadCredential=tsig:/etc/consortium-dns/credentials",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "unit lacks {line:?}");
    }
    assert!(
        unit.contains("DynamicUser=yes") || unit.contains("User="),
        "a dedicated user"
    );
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let installed = "/usr/local/bin/consortium-dns";
    assert!(
        unit.lines()
            .filter(|l| l.starts_with("ExecStartPre=") || l.starts_with("ExecStart="))
            .all(|l| l.contains(installed)),
        "ExecStart lines run {installed}"
    );
    let unit = unit.replace(installed, &binary().display().to_string());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("consortium-dns.service");
    std::fs::write(&path, &unit).expect("write unit");
    // The man page its Documentation= names is installed by the package (tests/it/package.rs
    // verifies the installed units with it); a checkout has none.
    if let Err(why) = verify_units(&[&path], ManPages::Unchecked) {
        panic!("systemd-analyze verify rejects the unit: {why}");
    }
    // The check itself catches mistakes: a misspelled key is reported.
    std::fs::write(
        &path,
        unit.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes"),
    )
    .expect("write unit");
    assert!(
        verify_units(&[&path], ManPages::Unchecked).is_err(),
        "a misspelled key went unnoticed"
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary: readiness, signals, graceful shutdown, JSON logs
// ---------------------------------------------------------------------------------------------

/// `consortium-dns serve` on a temp tree, with its own NOTIFY_SOCKET and stderr read by a
/// thread line by line.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far, for failure messages.
    log: Vec<String>,
    notify: UnixDatagram,
    _notify_dir: tempfile::TempDir,
}

impl Daemon {
    fn start(tree: &Tree, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(tree, extra, &[])
    }

    /// As `start`, with `env` added to the server's environment.
    fn start_with_env(tree: &Tree, extra: &[&str], env: &[(&str, &Path)]) -> Daemon {
        let notify_dir = tempfile::tempdir().expect("temp dir");
        let socket_path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(tree.config_path())
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(extra)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start consortium-dns serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            log: Vec::new(),
            notify,
            _notify_dir: notify_dir,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The next stderr line that satisfies `wanted`, waiting up to `timeout`.
    fn wait_line(&mut self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no such log line in time; log so far:\n{}", self.log.join("\n")),
            }
        }
    }

    /// The DNS address from the text log (`serving DNS over UDP and TCP addr=...`).
    fn dns_addr(&mut self) -> SocketAddr {
        let line = self.wait_line(Duration::from_secs(20), |l| {
            l.contains("serving DNS over UDP and TCP")
        });
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addr.parse().unwrap_or_else(|_| panic!("bad address in {line:?}"))
    }

    /// Waits for a notification holding the line `state` (e.g. "READY=1"); returns it whole.
    fn wait_notification(&mut self, state: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        let mut other = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if text.lines().any(|l| l == state) {
                        return text;
                    }
                    other.push(text);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        self.drain_log();
                        panic!(
                            "exited ({status}) before {state}; other notifications {other:?}; log:\n{}",
                            self.log.join("\n")
                        );
                    }
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
        self.drain_log();
        panic!(
            "no {state} within {timeout:?}; other notifications {other:?}; log:\n{}",
            self.log.join("\n")
        );
    }

    /// Sends a signal by name with kill(1).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.drain_log();
                return status;
            }
            if Instant::now() >= until {
                self.drain_log();
                panic!("still running after {timeout:?}; log:\n{}", self.log.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Collects the remaining stderr lines (after exit: until the pipe closes).
    fn drain_log(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.log.push(line);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes ANSI colour sequences (in case colours are on despite NO_COLOR).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One UDP exchange, one attempt.
fn udp_once(addr: SocketAddr, message: &Message) -> Message {
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    socket
        .send_to(&message.to_vec().expect("encode"), addr)
        .expect("send");
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("an answer to the first query");
    Message::from_vec(&buf[..n]).expect("parse")
}

fn framed(message: &Message) -> Vec<u8> {
    frame(&message.to_vec().expect("encode"))
}

/// Reads one length-prefixed DNS message.
fn read_framed(stream: &mut StdTcpStream) -> Message {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("answer length");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).expect("answer body");
    Message::from_vec(&body).expect("parse")
}

fn tcp_connect(addr: SocketAddr) -> StdTcpStream {
    let stream = StdTcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

/// Waits until TCP connections to `addr` are refused: the server has stopped accepting.
fn wait_until_refused(addr: SocketAddr, timeout: Duration) {
    let until = Instant::now() + timeout;
    loop {
        match StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if Instant::now() >= until => {
                panic!("{addr} still accepts TCP connections {timeout:?} after the stop signal")
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Whether the server closed this connection (EOF or reset), waiting up to the read timeout.
fn closed_by_server(stream: &mut StdTcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// A message that has started arriving: the length and the first half of a query.
fn half_query(message: &Message) -> (Vec<u8>, Vec<u8>) {
    let frame = framed(message);
    let cut = 2 + (frame.len() - 2) / 2;
    (frame[..cut].to_vec(), frame[cut..].to_vec())
}

const START: Duration = Duration::from_secs(20);

#[test]
fn ready_reaches_notify_socket_when_queries_can_be_answered_and_stopping_on_sigterm() {
    let tree = Tree::example();
    let mut daemon = Daemon::start(&tree, &["--shutdown-grace", "5"]);
    let ready = daemon.wait_notification("READY=1", START);
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=")),
        "a status line: {ready:?}"
    );
    // The log line was written before READY=1; no retries below: the first query must work.
    let dns = daemon.dns_addr();
    let m = udp_once(dns, &query("node1.consortium.example.", RecordType::A, None));
    assert_rcode(&m, ResponseCode::NoError);
    assert_eq!(cname_target(&m), "node1.operator-a.com.");
    let mut stream = tcp_connect(dns);
    stream
        .write_all(&framed(&query(POOL, RecordType::A, None)))
        .expect("send");
    let m = read_framed(&mut stream);
    assert_rcode(&m, ResponseCode::NoError);
    drop(stream);

    daemon.signal("TERM");
    daemon.wait_notification("STOPPING=1", Duration::from_secs(5));
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; log:\n{}",
        daemon.log.join("\n")
    );
}

#[test]
fn sigterm_right_after_ready_is_a_graceful_stop() {
    // systemd may stop a unit the moment it reports READY=1: by then SIGTERM must already be
    // handled (drain, STOPPING=1, exit 0), not kill the process with the default action.
    for _ in 0..3 {
        let tree = Tree::example();
        let mut daemon = Daemon::start(&tree, &["--shutdown-grace", "5"]);
        daemon.wait_notification("READY=1", START);
        daemon.signal("TERM");
        let status = daemon.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "{status}: SIGTERM right after READY=1; log:\n{}",
            daemon.log.join("\n")
        );
    }
}

#[test]
fn no_ready_when_the_zones_do_not_load() {
    let tree = Tree::example();
    let zone = tree.read("zones/consortium.example.zone");
    tree.write(
        "zones/consortium.example.zone",
        &format!("{zone}broken IN A not-an-address\n"),
    );
    let mut daemon = Daemon::start(&tree, &[]);
    let status = daemon.wait_exit(START);
    assert_eq!(
        status.code(),
        Some(65),
        "EX_DATAERR; log:\n{}",
        daemon.log.join("\n")
    );
    let mut buf = [0u8; 4096];
    match daemon.notify.recv(&mut buf) {
        Ok(n) => panic!(
            "notified although it never served: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

#[test]
fn sigterm_finishes_a_tcp_query_in_flight_then_exits_zero() {
    finishes_a_tcp_query_in_flight_then_exits_zero("TERM");
}

/// Ctrl-C in a terminal stops the server the same graceful way.
#[test]
fn sigint_finishes_a_tcp_query_in_flight_then_exits_zero() {
    finishes_a_tcp_query_in_flight_then_exits_zero("INT");
}

fn finishes_a_tcp_query_in_flight_then_exits_zero(signal: &str) {
    let tree = Tree::example();
    let grace = Duration::from_secs(5);
    let mut daemon = Daemon::start(&tree, &["--shutdown-grace", "5"]);
    daemon.wait_notification("READY=1", START);
    let dns = daemon.dns_addr();

    let question = query("node1.consortium.example.", RecordType::A, None);
    let (first, rest) = half_query(&question);
    let mut stream = tcp_connect(dns);
    stream.write_all(&first).expect("send the first half");
    // Let the server take in the first bytes: from then on the message is in flight.
    std::thread::sleep(Duration::from_millis(200));

    let stop = Instant::now();
    daemon.signal(signal);
    daemon.wait_notification("STOPPING=1", Duration::from_secs(5));
    // Shutdown has begun: no new connections...
    wait_until_refused(dns, Duration::from_secs(5));
    // ...but the message that had started arriving is still answered.
    stream.write_all(&rest).expect("send the rest");
    let m = read_framed(&mut stream);
    assert_eq!(m.metadata.id, question.metadata.id);
    assert_rcode(&m, ResponseCode::NoError);
    assert_eq!(cname_target(&m), "node1.operator-a.com.");
    // Then the connection closes and the process exits, without waiting out the grace.
    assert!(
        closed_by_server(&mut stream),
        "connection closed after the answer"
    );
    let status = daemon.wait_exit(grace);
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; log:\n{}",
        daemon.log.join("\n")
    );
    assert!(
        stop.elapsed() < grace,
        "exit took {:?}, the whole grace",
        stop.elapsed()
    );
}

#[test]
fn idle_tcp_connections_do_not_hold_up_exit() {
    let tree = Tree::example();
    let grace = Duration::from_secs(10);
    let mut daemon = Daemon::start(&tree, &["--shutdown-grace", "10"]);
    daemon.wait_notification("READY=1", START);
    let dns = daemon.dns_addr();
    // One connection never used, one idle after an answer.
    let mut unused = tcp_connect(dns);
    let mut used = tcp_connect(dns);
    used.write_all(&framed(&query(POOL, RecordType::A, None)))
        .expect("send");
    assert_rcode(&read_framed(&mut used), ResponseCode::NoError);

    let stop = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(grace);
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; log:\n{}",
        daemon.log.join("\n")
    );
    assert!(
        stop.elapsed() < Duration::from_secs(3),
        "idle connections delayed exit by {:?}",
        stop.elapsed()
    );
    assert!(closed_by_server(&mut unused));
    assert!(closed_by_server(&mut used));
}

#[test]
fn a_stalled_tcp_message_delays_exit_at_most_the_grace() {
    let tree = Tree::example();
    let grace = Duration::from_secs(1);
    let mut daemon = Daemon::start(&tree, &["--shutdown-grace", "1"]);
    daemon.wait_notification("READY=1", START);
    let dns = daemon.dns_addr();
    let (first, _never_sent) = half_query(&query("node1.consortium.example.", RecordType::A, None));
    let mut stream = tcp_connect(dns);
    stream.write_all(&first).expect("send the first half");
    std::thread::sleep(Duration::from_millis(200));

    let stop = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(grace + Duration::from_secs(4));
    let took = stop.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; log:\n{}",
        daemon.log.join("\n")
    );
    // The message in flight was waited for (the whole grace), and not longer than needed.
    assert!(
        took >= grace - Duration::from_millis(100),
        "exited after {took:?}"
    );
    assert!(took < grace + Duration::from_secs(3), "exited after {took:?}");
    assert!(closed_by_server(&mut stream));
}

#[test]
fn a_second_sigterm_during_the_grace_exits_at_once_with_code_1() {
    let tree = Tree::example();
    let mut daemon = Daemon::start(&tree, &["--shutdown-grace", "60"]);
    daemon.wait_notification("READY=1", START);
    let dns = daemon.dns_addr();
    // A stalled message keeps the drain waiting for the whole (long) grace.
    let (first, _never_sent) = half_query(&query("node1.consortium.example.", RecordType::A, None));
    let mut stream = tcp_connect(dns);
    stream.write_all(&first).expect("send the first half");
    std::thread::sleep(Duration::from_millis(200));

    daemon.signal("TERM");
    daemon.wait_notification("STOPPING=1", Duration::from_secs(5));
    wait_until_refused(dns, Duration::from_secs(5));
    let second = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(1),
        "{status}; log:\n{}",
        daemon.log.join("\n")
    );
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "second signal took {:?}",
        second.elapsed()
    );
    assert!(
        daemon.log.iter().any(|l| l.contains("second signal")),
        "the early exit is logged:\n{}",
        daemon.log.join("\n")
    );
    assert!(closed_by_server(&mut stream));
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let tree = Tree::example();
    let mut daemon = Daemon::start(&tree, &["--log-format", "json"]);
    daemon.wait_notification("READY=1", START);
    let line = daemon.wait_line(Duration::from_secs(5), |l| l.contains("serving DNS"));
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert!(event["timestamp"].is_string(), "{event}");
    assert!(event["target"].is_string(), "{event}");
    assert_eq!(
        event["fields"]["message"], "serving DNS over UDP and TCP",
        "{event}"
    );
    let addr: SocketAddr = event["fields"]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an addr field: {event}"));
    // The address logged is the one serving.
    let m = udp_once(addr, &query("node1.consortium.example.", RecordType::A, None));
    assert_rcode(&m, ResponseCode::NoError);

    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        daemon.log.len() >= 3,
        "start, shutdown and stop lines: {:?}",
        daemon.log
    );
    for line in &daemon.log {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(event["fields"]["message"].is_string(), "{event}");
    }
    assert!(
        daemon.log.iter().any(|l| l.contains("\"stopped\"")),
        "{:?}",
        daemon.log
    );
}

/// Every stderr line that arrives within `quiet` of the previous one, as JSON events.
fn collect_events(daemon: &mut Daemon, quiet: Duration) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    while let Ok(line) = daemon.lines.recv_timeout(quiet) {
        daemon.log.push(line.clone());
        let event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        events.push(event);
    }
    events
}

/// `query-log-sample = 3`: the first query and every third after it are logged, over UDP and
/// TCP alike, with client, transport, name, type and rcode; nothing else is logged per query,
/// and a reload is logged once.
#[test]
fn sampled_query_log_over_udp_and_tcp_and_nothing_else_per_query() {
    let tree = Tree::example();
    let config = tree.read("config/consortium-dns.toml");
    tree.write(
        "config/consortium-dns.toml",
        &config.replacen("[server]\n", "[server]\nquery-log-sample = 3\n", 1),
    );
    let mut daemon = Daemon::start(&tree, &["--log-format", "json"]);
    daemon.wait_notification("READY=1", START);
    let line = daemon.wait_line(Duration::from_secs(5), |l| l.contains("serving DNS"));
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let addr: SocketAddr = event["fields"]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an addr field: {event}"));
    collect_events(&mut daemon, Duration::from_millis(300));

    // Twelve queries in a known order: nine over UDP, then three over TCP.
    let names = ["node1", "ns1", "nope"];
    let mut sent = Vec::new();
    for i in 0..12 {
        let qname = format!("{}.consortium.example.", names[i % names.len()]);
        let q = query(&qname, RecordType::A, None);
        if i < 9 {
            udp_once(addr, &q);
            sent.push(("udp", qname));
        } else {
            let mut stream = tcp_connect(addr);
            stream.write_all(&framed(&q)).expect("write");
            read_framed(&mut stream);
            sent.push(("tcp", qname));
        }
    }
    let events = collect_events(&mut daemon, Duration::from_millis(500));
    let logged: Vec<(String, String, String)> = events
        .iter()
        .filter(|e| e["target"] == "query")
        .map(|e| {
            let f = &e["fields"];
            assert_eq!(f["qtype"], "A", "{e}");
            assert!(
                f["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")),
                "{e}"
            );
            let rcode = f["rcode"].as_u64().expect("rcode");
            let qname = f["qname"].as_str().expect("qname").to_string();
            assert_eq!(rcode, if qname.starts_with("nope") { 3 } else { 0 }, "{e}");
            (
                f["transport"].as_str().expect("transport").to_string(),
                qname,
                rcode.to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [0, 3, 6, 9]
        .iter()
        .map(|&i| (sent[i].0.to_string(), sent[i].1.clone()))
        .collect();
    assert_eq!(
        logged
            .iter()
            .map(|(t, q, _)| (t.clone(), q.clone()))
            .collect::<Vec<_>>(),
        expected,
        "queries 1, 4, 7 and 10 are logged"
    );
    let other: Vec<&serde_json::Value> = events.iter().filter(|e| e["target"] != "query").collect();
    assert!(
        other.is_empty(),
        "nothing but the sampled query log per query: {other:?}"
    );

    // A reload is one line, whatever the queries around it.
    daemon.signal("HUP");
    let events = collect_events(&mut daemon, Duration::from_millis(1500));
    let reloads = events
        .iter()
        .filter(|e| e["fields"]["message"] == "reloaded")
        .count();
    assert_eq!(reloads, 1, "one reload, one line: {events:?}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Issue 21 items 7 and 9: `--version` names the commit; `check` refuses an IP address as a
/// member's target, reads a NOTIFY address without a port as port 53, and warns about an
/// allow-transfer open to everyone without a key and about serials a restart could lose.
#[test]
fn version_names_the_commit_and_check_catches_what_operators_get_wrong() {
    let output = Command::new(binary())
        .arg("--version")
        .output()
        .expect("--version");
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.starts_with(&format!("consortium-dns {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    let tree = Tree::example();
    let members = tree.read("zones/consortium.example.members.toml");
    tree.write(
        "zones/consortium.example.members.toml",
        &members.replacen("target = \"node1.operator-a.com\"", "target = \"192.0.2.10\"", 1),
    );
    let (ok, _, stderr) = crate::common::run_check(&tree);
    assert!(!ok, "an IP address as a target passed");
    assert!(stderr.contains("is an IP address"), "{stderr}");
    tree.write("zones/consortium.example.members.toml", &members);

    crate::common::append_to_zone_table(
        &tree,
        "allow-transfer = [{ network = \"0.0.0.0/0\" }]\nnotify = [{ address = \"192.0.2.53\" }]\n",
    );
    crate::common::edit(
        &tree,
        "config/consortium-dns.toml",
        "[server]\n",
        "[server]\nstate-file = \"\"\n",
    );
    let (ok, _, stderr) = crate::common::run_check(&tree);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning: zone consortium.example.: allow-transfer lets anyone"),
        "{stderr}"
    );
    let config = consortium_dns::config::Config::load(&tree.config_path()).expect("config");
    let notify = &config.live.zones[0].peers.notify;
    assert_eq!(
        notify[0].address,
        "192.0.2.53:53".parse::<SocketAddr>().expect("addr")
    );
    // With a NOTIFY target to ask, no warning about serials; without one, a warning.
    assert!(!stderr.contains("state-file is off"), "{stderr}");
    crate::common::edit(
        &tree,
        "config/consortium-dns.toml",
        "notify = [{ address = \"192.0.2.53\" }]\n",
        "",
    );
    let (_, _, stderr) = crate::common::run_check(&tree);
    assert!(
        stderr.contains("state-file is off and no NOTIFY targets"),
        "{stderr}"
    );
}

/// Issue 21 items 4 and 6: logs carry no colour codes when stderr is not a terminal, the
/// start-up says which version serves which zone, and `ctl log-level` changes the filter of the
/// running server (debug lines appear after it, not before).
#[test]
fn logs_are_plain_off_a_terminal_and_ctl_log_level_changes_them_at_run_time() {
    let tree = Tree::example();
    let mut daemon = Daemon::start(&tree, &[]);
    let dns = daemon.dns_addr();
    let http = admin_addr(&mut daemon);
    let zone_line = daemon.wait_line(START, |l| l.contains("zone loaded"));
    assert!(
        zone_line.contains("zone=consortium.example.") && zone_line.contains("members=5"),
        "{zone_line}"
    );
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("consortium-dns serving") && l.contains("commit ")),
        "no start-up line with the version: {:?}",
        daemon.log
    );
    // NO_COLOR is not what keeps colour out (the daemon's stderr is a pipe): no escape codes.
    assert!(
        daemon.log.iter().all(|l| !l.contains('\u{1b}')),
        "{:?}",
        daemon.log
    );

    let ctl = |level: &str| {
        Command::new(binary())
            .args(["ctl", "log-level", level, "--http-listen", &http.to_string()])
            .output()
            .expect("run ctl log-level")
    };
    assert!(
        daemon.log.iter().all(|l| !l.contains("DEBUG")),
        "debug before the change: {:?}",
        daemon.log
    );
    let output = ctl("consortium_dns=debug,info");
    assert!(output.status.success(), "{output:?}");
    daemon.wait_line(START, |l| l.contains("log filter changed"));
    // A query logged at debug level now: a TCP connection's end is logged at debug.
    let _ = udp_once(dns, &query("ns1.consortium.example.", RecordType::A, None));
    let output = Command::new(binary())
        .args(["ctl", "reload", "--http-listen", &http.to_string()])
        .output()
        .expect("ctl reload");
    assert!(output.status.success(), "{output:?}");
    daemon.wait_line(START, |l| l.contains("DEBUG"));
    let bad = ctl("not a[filter");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad log filter"),
        "{bad:?}"
    );
    daemon.signal("TERM");
    daemon.wait_exit(START);
}

/// The admin address from the daemon's log.
fn admin_addr(daemon: &mut Daemon) -> SocketAddr {
    let line = daemon.wait_line(START, |l| l.contains("serving metrics and admin over HTTP"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line:?}"))
}

/// The targets of `count` picks of the shared name.
fn pick_targets(dns: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let m = udp_once(dns, &query(POOL, RecordType::A, None));
        *seen.entry(cname_target(&m)).or_default() += 1;
    }
    seen
}

/// Issue 21: `ctl drain MEMBER` takes a member out of the pool at once, even while the pool
/// fails open (the example's probes all fail); status and metrics show it; the drain outlives
/// a restart (the state file); `ctl undrain` puts it back. An unknown member is an error.
#[test]
fn ctl_drain_takes_a_member_out_of_the_pool_across_a_restart_and_undrain_puts_it_back() {
    const DRAINED_TARGET: &str = "api.operator-b.net."; // node2, weight 2 of 7
    let tree = Tree::example();
    let ctl = |http: SocketAddr, args: &[&str]| {
        let output = Command::new(binary())
            .arg("ctl")
            .args(args)
            .args(["--http-listen", &http.to_string()])
            .output()
            .expect("run ctl");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let mut daemon = Daemon::start(&tree, &[]);
    let dns = daemon.dns_addr();
    let http = admin_addr(&mut daemon);
    // Before: node2 gets about 2/7 of the picks (P(none in 100) = (5/7)^100, about 1e-15).
    assert!(pick_targets(dns, 100).contains_key(DRAINED_TARGET));

    let (code, stdout, stderr) = ctl(http, &["drain", "node2"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("node2.consortium.example. drained") && stdout.contains("consortium-dns.state.json"),
        "{stdout}"
    );
    let after = pick_targets(dns, 200);
    assert!(
        !after.contains_key(DRAINED_TARGET),
        "drained member picked: {after:?}"
    );
    assert_eq!(
        after.len(),
        4,
        "the four other members still share the picks: {after:?}"
    );
    // Its own name still answers.
    let own = udp_once(dns, &query("node2.consortium.example.", RecordType::A, None));
    assert_eq!(cname_target(&own), DRAINED_TARGET);
    let (_, _, body) = http_get(http, "/metrics");
    let scrape = Scrape::parse(&body);
    let member = |m: &'static str| [("zone", ZONE), ("member", m)];
    assert_eq!(scrape.get(metrics::MEMBER_DRAINED, &member("node2")), Some(1.0));
    assert_eq!(scrape.get(metrics::MEMBER_DRAINED, &member("node1")), Some(0.0));
    let pool_state = |s: &'static str| [("zone", ZONE), ("pool", POOL), ("state", s)];
    assert_eq!(
        scrape.get(metrics::POOL_MEMBERS, &pool_state("drained")),
        Some(1.0)
    );
    let status = Command::new(binary())
        .args(["status", "--http-listen", &http.to_string()])
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.trim_start().starts_with("node2") && l.contains("drained")),
        "{status}"
    );
    let (code, _, stderr) = ctl(http, &["drain", "node9"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no member \"node9\""), "{stderr}");

    // A restart keeps the maintenance.
    daemon.signal("TERM");
    daemon.wait_exit(START);
    let mut daemon = Daemon::start(&tree, &[]);
    let dns = daemon.dns_addr();
    let http = admin_addr(&mut daemon);
    let after = pick_targets(dns, 200);
    assert!(
        !after.contains_key(DRAINED_TARGET),
        "drained member picked after a restart: {after:?}"
    );

    let (code, stdout, stderr) = ctl(http, &["undrain", "node2.consortium.example."]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("undrained"), "{stdout}");
    assert!(pick_targets(dns, 100).contains_key(DRAINED_TARGET));
    daemon.signal("TERM");
    daemon.wait_exit(START);
}

/// Runs Debian's chromium headless on `url` with `extra` flags (`--dump-dom`,
/// `--screenshot=...`): its stdout. Fails after 90 s.
fn headless_chromium(url: &str, extra: &[String]) -> String {
    let chromium = program("chromium", "chromium", "it renders the HTML status page");
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            // The tests run as root in CI, where chromium's sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            // Nothing off the machine: no updates, no sync, no safe-browsing lists.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("chromium did not finish on {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("chromium output")
}

/// The state `/status` reports for member `label` of the example pool.
fn member_state(http: SocketAddr, label: &str) -> Option<String> {
    let (_, _, body) = http_get(http, "/status");
    let document: serde_json::Value = serde_json::from_str(&body).ok()?;
    document["health"]["pools"][0]["members"]
        .as_array()?
        .iter()
        .find(|m| m["label"] == label && m["last_probe"].is_object())
        .and_then(|m| m["state"].as_str().map(str::to_string))
}

/// Issue 21: the HTML status page at `/`, in a real browser: it lists the pool's members with
/// their state, reloads itself, and shows a member going down. The screenshot of the second
/// rendering is kept in target/test-artifacts/.
#[tokio::test(flavor = "multi_thread")]
async fn status_page_in_headless_chromium_shows_a_member_going_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let tree = Tree::example();
    tree.write(
        "zones/consortium.example.members.toml",
        &format!(
            r#"[[pool]]
label = "any"

[[member]]
label = "node1"
target = "node1.operator-a.com"
[member.health]
kind = "none"

[[member]]
label = "node2"
target = "api.operator-b.net"
weight = 2
[member.health]
kind = "tcp"
port = {port}
address = "127.0.0.1:{port}"
initial = "up"
fall = 1
interval = "200ms"
timeout = "100ms"
jitter = "0s"
"#
        ),
    );
    let server = start_with_http(&tree).await;
    let http = server.http_addr.expect("HTTP endpoint bound");
    let url = format!("http://{http}/");
    let until = Instant::now() + Duration::from_secs(10);
    while member_state(http, "node2").as_deref() != Some("up") {
        assert!(Instant::now() < until, "node2 never probed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = url.clone();
    let before = tokio::task::spawn_blocking(move || headless_chromium(&page, &["--dump-dom".into()]))
        .await
        .expect("chromium");
    assert!(
        before.contains("<tr class=\"up\" data-member=\"node2\">"),
        "node2 up on the page:\n{before}"
    );
    assert!(
        before.contains("<tr class=\"up\" data-member=\"node1\">"),
        "{before}"
    );
    assert!(
        before.contains("any.consortium.example."),
        "the pool is named:\n{before}"
    );
    assert!(
        before.contains("http-equiv=\"refresh\""),
        "the page reloads itself:\n{before}"
    );
    assert!(!before.contains("FAILING OPEN"), "{before}");

    // node2's port closes: one refused connect takes it down (fall = 1).
    accepting.abort();
    let until = Instant::now() + Duration::from_secs(10);
    while member_state(http, "node2").as_deref() != Some("down") {
        assert!(Instant::now() < until, "node2 never went down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let artifacts = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let screenshot = artifacts.join("status-page-member-down.png");
    let _ = std::fs::remove_file(&screenshot);
    let flags = vec![
        "--dump-dom".to_string(),
        format!("--screenshot={}", screenshot.display()),
    ];
    let after = tokio::task::spawn_blocking(move || headless_chromium(&url, &flags))
        .await
        .expect("chromium");
    assert!(
        after.contains("<tr class=\"down\" data-member=\"node2\">"),
        "node2 down on the page:\n{after}"
    );
    assert!(
        after.contains("<tr class=\"up\" data-member=\"node1\">"),
        "{after}"
    );
    let png = std::fs::read(&screenshot).unwrap_or_else(|e| panic!("{}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "a real screenshot: {} bytes",
        png.len()
    );
}

/// Issue 21: under `DynamicUser=yes` a TSIG secret readable by the service had to be readable by
/// everyone. With `secret-file = "$CREDENTIALS_DIRECTORY/NAME"` the unit's `LoadCredential=`
/// hands the service a private copy; the secret itself stays root's alone.
#[test]
fn a_tsig_secret_is_read_from_the_systemd_credentials_directory() {
    const SECRET: &str = "c2VjcmV0LWZvci10aGUtY3JlZGVudGlhbHMtdGVzdC0zMmI=";
    let tree = Tree::example();
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        credentials.path().join("tsig_transfer.key"),
        format!("{SECRET}\n"),
    )
    .expect("write secret");
    let config = tree.read("config/consortium-dns.toml").replacen(
        "\n[[zone]]",
        "\n[[key]]\nname = \"transfer-key\"\nalgorithm = \"hmac-sha256\"\n\
         secret-file = \"$CREDENTIALS_DIRECTORY/tsig_transfer.key\"\n\n[[zone]]\n\
         allow-transfer = [{ network = \"127.0.0.1\", key = \"transfer-key\" }]",
        1,
    );
    tree.write("config/consortium-dns.toml", &config);

    // Outside the unit, the variable is unset: a clear error naming it, not "file not found".
    let output = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(tree.config_path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("consortium-dns.toml:") && stderr.contains("$CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );
    let output = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(tree.config_path())
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .output()
        .expect("run check");
    assert!(output.status.success(), "{output:?}");

    let mut daemon = Daemon::start_with_env(&tree, &[], &[("CREDENTIALS_DIRECTORY", credentials.path())]);
    let addr = daemon.dns_addr();
    let dig = program("dig", "bind9-dnsutils", "it transfers the zone with the key");
    let axfr = |secret: &str| {
        let output = Command::new(&dig)
            .args([&format!("@{}", addr.ip()), "-p", &addr.port().to_string()])
            .args([
                "-y",
                &format!("hmac-sha256:transfer-key:{secret}"),
                "+tcp",
                "consortium.example",
                "AXFR",
            ])
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let signed = axfr(SECRET);
    assert_eq!(
        signed.lines().filter(|l| l.contains("\tSOA\t")).count(),
        2,
        "the AXFR signed with the credential's secret is served whole:\n{signed}"
    );
    // Negative control: another secret under the same key name gets no zone.
    let forged = axfr("b3RoZXItc2VjcmV0LW5vdC10aGUtY3JlZGVudGlhbC0zMmI=");
    assert!(
        !forged.contains("\tSOA\t"),
        "a wrong secret must not transfer:\n{forged}"
    );
}
