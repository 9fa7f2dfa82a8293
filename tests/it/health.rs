//! Health checks and the weighted pick of the shared name (issue 4), end to end.
//!
//! Every member's probe is pointed (`address = "127.0.0.1:PORT"`) at a real HTTP or HTTPS
//! endpoint started by the test on port 0. The test switches an endpoint between healthy (200),
//! failing (500), slow (answers after the probe timeout), hangup (accepts and closes), closed
//! (not listening) and a given status line and body while the server runs, then watches the
//! effect through real DNS queries and the admin `/status` JSON and `/metrics`. HTTPS endpoints
//! present certificates from a CA made here with rcgen and handed to the server through the
//! `ca-file` option.
//!
//! Probes run every 200 ms with a 100 ms timeout, so a threshold of a few probes passes in
//! well under a second; every wait polls with a bounded deadline instead of sleeping.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use consortium_dns::app::{self, ServerHandle, StartError};
use consortium_dns::health::{MemberReport, PoolReport};
use consortium_dns::http::StatusDocument;
use consortium_dns::metrics::{
    MEMBER_CERT_COVERS_POOL, MEMBER_CERT_EXPIRY_DAYS, MEMBER_EFFECTIVE_WEIGHT, MEMBER_UP, POOL_FAIL_OPEN,
    POOL_PICKS_TOTAL,
};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::common::{Tree, binary, query, udp};

const ZONE: &str = "consortium.example.";
const POOL: &str = "any.consortium.example.";
const MEMBERS_FILE: &str = "zones/consortium.example.members.toml";
/// The members the tests use: label and target (the example's nodes).
const NODES: [(&str, &str); 5] = [
    ("node1", "node1.operator-a.com"),
    ("node2", "api.operator-b.net"),
    ("node3", "planetmint.operator-c.org"),
    ("node4", "node.operator-d.io"),
    ("node5", "bigchain.operator-e.de"),
];

/// A server config with short probe periods as the defaults of every member: the probe of
/// each member only adds its kind and address (and whatever the test is about).
const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
http-listen = "127.0.0.1:0"
udp-workers = 1

# The tests send bursts of queries from one address.
[rrl]
enabled = false

[health]
kind = "http"
interval = "200ms"
timeout = "100ms"
jitter = "20ms"
rise = 2
fall = 2
slow-start = "0s"

[[zone]]
origin = "consortium.example"
file = "../zones/consortium.example.zone"
members = "../zones/consortium.example.members.toml"
"#;

/// How long any awaited state change may take (a handful of probe intervals would do; the
/// margin is for a loaded machine running the whole suite in parallel).
const DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two polls of `/status` or of the shared name.
const POLL: Duration = Duration::from_millis(25);
/// A slow endpoint answers after this, far past the 100 ms probe timeout.
const SLOW: Duration = Duration::from_millis(1_500);

// ---------------------------------------------------------------------------------------------
// A test CA and its certificates
// ---------------------------------------------------------------------------------------------

/// A certificate authority made for one test; its PEM goes to the server's `ca-file`.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-signed CA").pem();
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server config presenting a leaf certificate for `names` signed by this CA; with
    /// `expired`, the certificate's validity ended on 2020-01-01.
    fn server(&self, names: &[&str], expired: bool) -> Arc<ServerConfig> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        Arc::new(config)
    }

    /// Writes the CA certificate into the tree; returns its absolute path.
    fn write(&self, tree: &Tree) -> String {
        tree.write("zones/test-ca.pem", &self.pem);
        tree.path("zones/test-ca.pem").display().to_string()
    }
}

/// 2020-01-01T00:00:00Z, the end of the expired test certificates.
const EXPIRED_AT_UNIX: i64 = 1_577_836_800;

// ---------------------------------------------------------------------------------------------
// A switchable HTTP(S) endpoint
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `200 OK`.
    Healthy,
    /// `500 Internal Server Error`.
    Failing,
    /// `200 OK`, but only after `SLOW`.
    Slow,
    /// Accepts the connection and closes it at once (no TLS handshake, no response).
    Hangup,
    /// Not listening: connects are refused.
    Closed,
    /// This status line and body, at once (for `expect-status` and `body-contains`).
    Answer {
        status: &'static str,
        body: &'static str,
    },
}

/// What the endpoint does now, and what it saw since the last switch.
struct Switch {
    mode: Mode,
    /// Connections accepted since the mode was last set (each probe is one connection).
    accepted: u32,
    /// `Host` header of the last request.
    host: Option<String>,
    /// TLS server name (SNI) of the last handshake.
    sni: Option<String>,
    /// The certificate presented (HTTPS endpoints); can be swapped while running.
    tls: Option<TlsAcceptor>,
}

/// A tiny HTTP/1.1 responder on 127.0.0.1, over TLS when given a server config.
struct Endpoint {
    addr: SocketAddr,
    switch: Arc<Mutex<Switch>>,
    /// The accept loop; it owns the listener, so aborting it stops listening.
    listening: Mutex<Option<JoinHandle<()>>>,
}

impl Endpoint {
    async fn http() -> Endpoint {
        Endpoint::start(None).await
    }

    async fn https(config: Arc<ServerConfig>) -> Endpoint {
        Endpoint::start(Some(TlsAcceptor::from(config))).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind endpoint");
        let addr = listener.local_addr().expect("endpoint address");
        let switch = Arc::new(Mutex::new(Switch {
            mode: Mode::Healthy,
            accepted: 0,
            host: None,
            sni: None,
            tls,
        }));
        let task = tokio::spawn(accept_loop(listener, switch.clone()));
        Endpoint {
            addr,
            switch,
            listening: Mutex::new(Some(task)),
        }
    }

    /// Switches the behaviour; counts restart from zero. `Closed` stops listening, any other
    /// mode listens again on the same port.
    async fn set(&self, mode: Mode) {
        {
            let mut switch = self.switch.lock().expect("switch");
            switch.mode = mode;
            switch.accepted = 0;
        }
        let running = self.listening.lock().expect("listening").take();
        match (mode, running) {
            (Mode::Closed, Some(task)) => {
                task.abort();
                // Wait until the task (and with it the listener) is gone.
                let _ = task.await;
            }
            (Mode::Closed, None) => {}
            (_, Some(task)) => *self.listening.lock().expect("listening") = Some(task),
            (_, None) => {
                // The port was ours a moment ago; SO_REUSEADDR (set by tokio) lets us rebind
                // it despite connections in TIME_WAIT.
                let listener = TcpListener::bind(self.addr)
                    .await
                    .expect("listen again on the same port");
                let task = tokio::spawn(accept_loop(listener, self.switch.clone()));
                *self.listening.lock().expect("listening") = Some(task);
            }
        }
    }

    /// Presents another certificate from the next connection on.
    fn set_certificate(&self, config: Arc<ServerConfig>) {
        self.switch.lock().expect("switch").tls = Some(TlsAcceptor::from(config));
    }

    fn accepted(&self) -> u32 {
        self.switch.lock().expect("switch").accepted
    }

    fn host(&self) -> Option<String> {
        self.switch.lock().expect("switch").host.clone()
    }

    fn sni(&self) -> Option<String> {
        self.switch.lock().expect("switch").sni.clone()
    }
}

async fn accept_loop(listener: TcpListener, switch: Arc<Mutex<Switch>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Mode and count under one lock, so a switch and an accept never interleave.
        let (mode, tls) = {
            let mut switch = switch.lock().expect("switch");
            switch.accepted += 1;
            (switch.mode, switch.tls.clone())
        };
        let switch = switch.clone();
        tokio::spawn(async move {
            if mode == Mode::Hangup {
                return; // dropping the stream closes it
            }
            match tls {
                None => respond(stream, mode, &switch).await,
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let sni = stream.get_ref().1.server_name().map(str::to_string);
                    switch.lock().expect("switch").sni = sni;
                    respond(stream, mode, &switch).await;
                }
            }
        });
    }
}

/// Reads one request head and answers it as `mode` says, then closes.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, mode: Mode, switch: &Mutex<Switch>) {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 && request.len() < 16 * 1024 => request.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&request);
    let host = head
        .lines()
        .find_map(|line| {
            line.strip_prefix("Host: ")
                .or_else(|| line.strip_prefix("host: "))
        })
        .map(str::to_string);
    switch.lock().expect("switch").host = host;
    if mode == Mode::Slow {
        tokio::time::sleep(SLOW).await;
    }
    let (status, body) = match mode {
        Mode::Failing => ("500 Internal Server Error", "failing\n"),
        Mode::Answer { status, body } => (status, body),
        _ => ("200 OK", "healthy\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn target_of(label: &str) -> &'static str {
    NODES
        .iter()
        .find(|(l, _)| *l == label)
        .map(|(_, t)| *t)
        .expect("known node")
}

/// One `[[member]]` table with its `[member.health]` lines.
fn member(label: &str, weight: u32, health: &str) -> String {
    format!(
        "\n[[member]]\nlabel = \"{label}\"\ntarget = \"{}\"\nweight = {weight}\n[member.health]\n{health}\n",
        target_of(label)
    )
}

/// Health lines of an http probe of `endpoint`, plus `extra`.
fn http_probe(endpoint: &Endpoint, extra: &str) -> String {
    format!("kind = \"http\"\naddress = \"{}\"\n{extra}", endpoint.addr)
}

/// Health lines of an https probe of `endpoint` trusting the CA at `ca_file`, plus `extra`.
fn https_probe(endpoint: &Endpoint, ca_file: &str, extra: &str) -> String {
    format!(
        "kind = \"https\"\naddress = \"{}\"\nca-file = \"{ca_file}\"\n{extra}",
        endpoint.addr
    )
}

/// The example tree with our config and the given members file (which holds the pools).
fn tree_with(members: &str) -> Tree {
    let tree = Tree::example();
    tree.write("config/consortium-dns.toml", CONFIG);
    tree.write(MEMBERS_FILE, members);
    tree
}

/// 1-based line of the first occurrence of `needle` at or after line `from`.
fn line_of(text: &str, needle: &str, from: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| line.contains(needle))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"))
}

// ---------------------------------------------------------------------------------------------
// Admin endpoint
// ---------------------------------------------------------------------------------------------

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect admin endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("admin answer in time")
        .expect("read");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

fn admin(server: &ServerHandle) -> SocketAddr {
    server.http_addr.expect("http-listen is on")
}

async fn status(server: &ServerHandle) -> StatusDocument {
    let (code, body) = http_get(admin(server), "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status JSON: {e}\n{body}"))
}

async fn metrics(server: &ServerHandle) -> String {
    let (code, body) = http_get(admin(server), "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the sample `name{...}` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (label_text, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().expect("sample value"))
    })
}

fn pool<'d>(doc: &'d StatusDocument, name: &str) -> &'d PoolReport {
    doc.health
        .pools
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pool {name} in {doc:#?}"))
}

fn member_in<'d>(doc: &'d StatusDocument, pool_name: &str, label: &str) -> &'d MemberReport {
    pool(doc, pool_name)
        .members
        .iter()
        .find(|m| m.label == label)
        .unwrap_or_else(|| panic!("no member {label} in pool {pool_name}"))
}

fn state_of<'d>(doc: &'d StatusDocument, label: &str) -> &'d str {
    &member_in(doc, POOL, label).state
}

/// Polls `/status` until `ready` holds; panics with the last document after `DEADLINE`.
async fn wait_status(
    server: &ServerHandle,
    what: &str,
    ready: impl Fn(&StatusDocument) -> bool,
) -> StatusDocument {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let doc = status(server).await;
        if ready(&doc) {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {doc:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every listed member shows `state` in the pool `any`.
async fn wait_states(server: &ServerHandle, labels: &[&str], state: &str) -> StatusDocument {
    wait_status(server, &format!("{labels:?} {state}"), |doc| {
        labels.iter().all(|l| state_of(doc, l) == state)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The shared name over DNS
// ---------------------------------------------------------------------------------------------

/// Counts picks per member label.
type Picks = BTreeMap<&'static str, usize>;

/// Asks the shared name `qname` `n` times over UDP on one socket and counts the members picked.
/// Every answer must be an authoritative NOERROR with exactly one CNAME, at the pool TTL, to a
/// member's target.
async fn picks(server: &ServerHandle, qname: &str, n: usize) -> Picks {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.connect(server.dns_addrs[0]).await.expect("connect");
    let mut counts = Picks::new();
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        let mut q = query(qname, RecordType::A, None);
        q.metadata.id = i as u16;
        socket.send(&q.to_vec().expect("encode")).await.expect("send");
        let len = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf))
            .await
            .expect("answer before timeout")
            .expect("recv");
        let m = Message::from_vec(&buf[..len]).expect("answer parses");
        assert_eq!(m.metadata.id, i as u16);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m}");
        assert!(m.metadata.authoritative, "AA: {m}");
        assert_eq!(m.answers.len(), 1, "one CNAME: {m}");
        let record = &m.answers[0];
        assert_eq!(record.name.to_string(), qname);
        assert_eq!(record.ttl, 30, "the pool's TTL");
        let RData::CNAME(target) = &record.data else {
            panic!("CNAME expected: {m}");
        };
        let target = target.0.to_string();
        let label = NODES
            .iter()
            .find(|(_, t)| format!("{t}.") == target)
            .map(|(l, _)| *l)
            .unwrap_or_else(|| panic!("{target} is no member's target"));
        *counts.entry(label).or_default() += 1;
    }
    counts
}

/// Asks in batches of 50 until one batch satisfies `ready`: the pick table is republished
/// shortly after `/status` shows a flip, so DNS may lag it by a moment.
async fn wait_picks(server: &ServerHandle, qname: &str, what: &str, ready: impl Fn(&Picks) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let counts = picks(server, qname, 50).await;
        if ready(&counts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for picks of {qname} to {what}; last batch {counts:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// True when the picks are exactly the listed members (each at least once, nobody else).
fn only(counts: &Picks, labels: &[&str]) -> bool {
    counts.len() == labels.len() && labels.iter().all(|l| counts.contains_key(l))
}

// ---------------------------------------------------------------------------------------------
// Rise and fall, with each way of failing
// ---------------------------------------------------------------------------------------------

/// Failing (500), slow and closed members stop being picked after `fall` failed probes and
/// come back after `rise` good ones; a tcp probe only needs the connect to succeed.
#[tokio::test(flavor = "multi_thread")]
async fn members_leave_after_fall_and_return_after_rise() {
    let ca = TestCa::new("consortium-dns test CA");
    let http1 = Endpoint::http().await;
    let https2 = Endpoint::https(ca.server(&["api.operator-b.net", "any.consortium.example"], false)).await;
    let tcp3 = Endpoint::http().await;
    let http4 = Endpoint::http().await;
    let tree = Tree::example();
    let ca_file = ca.write(&tree);
    // rise 2, fall 3: different, so a mix-up of the two would show.
    let thresholds = "rise = 2\nfall = 3\n";
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, &http_probe(&http1, thresholds)),
        member("node2", 1, &https_probe(&https2, &ca_file, thresholds)),
        member(
            "node3",
            1,
            &format!("kind = \"tcp\"\naddress = \"{}\"\n{thresholds}", tcp3.addr),
        ),
        member("node4", 1, &http_probe(&http4, thresholds)),
    ]
    .concat();
    tree.write("config/consortium-dns.toml", CONFIG);
    tree.write(MEMBERS_FILE, &members);
    let server = tree.start().await;
    let all = ["node1", "node2", "node3", "node4"];

    // Everyone probed at least once and up.
    let doc = wait_status(&server, "first probes", |doc| {
        all.iter()
            .all(|l| member_in(doc, POOL, l).last_probe.as_ref().is_some_and(|p| p.ok))
    })
    .await;
    assert!(all.iter().all(|l| state_of(&doc, l) == "up"), "{doc:#?}");
    assert!(!pool(&doc, POOL).fail_open);
    assert!(only(&picks(&server, POOL, 200).await, &all));
    // The probe went to our address but kept the target's name for Host and SNI.
    assert_eq!(http1.host().as_deref(), Some("node1.operator-a.com"));
    assert_eq!(https2.host().as_deref(), Some("api.operator-b.net"));
    assert_eq!(https2.sni().as_deref(), Some("api.operator-b.net"));

    // Round 1: node1 answers 500, node2 is slow, node3 stops listening.
    http1.set(Mode::Failing).await;
    https2.set(Mode::Slow).await;
    tcp3.set(Mode::Closed).await;
    let doc = wait_states(&server, &["node1", "node2", "node3"], "down").await;
    // Each flipped only after `fall` failed probes (every probe is one accepted connection).
    assert!(
        http1.accepted() >= 3,
        "node1 down after {} probes",
        http1.accepted()
    );
    assert!(
        https2.accepted() >= 3,
        "node2 down after {} probes",
        https2.accepted()
    );
    let detail = |label| {
        member_in(&doc, POOL, label)
            .last_probe
            .as_ref()
            .expect("probed")
            .detail
            .clone()
    };
    assert!(detail("node1").contains("500"), "{}", detail("node1"));
    assert!(detail("node2").contains("timeout"), "{}", detail("node2"));
    assert!(detail("node3").contains("connect"), "{}", detail("node3"));
    assert_eq!(state_of(&doc, "node4"), "up");
    assert!(!pool(&doc, POOL).fail_open, "node4 is still up");
    wait_picks(&server, POOL, "node4 only", |c| only(c, &["node4"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node4"]));

    // Recovery: each comes back after `rise` good probes.
    for endpoint in [&http1, &https2, &tcp3] {
        endpoint.set(Mode::Healthy).await;
    }
    let doc = wait_states(&server, &all, "up").await;
    assert!(
        http1.accepted() >= 2,
        "node1 up after {} probes",
        http1.accepted()
    );
    assert!(
        https2.accepted() >= 2,
        "node2 up after {} probes",
        https2.accepted()
    );
    assert!(tcp3.accepted() >= 2, "node3 up after {} probes", tcp3.accepted());
    assert!(
        all.iter()
            .all(|l| member_in(&doc, POOL, l).effective_weight == 1.0),
        "{doc:#?}"
    );
    wait_picks(&server, POOL, "everyone", |c| only(c, &all)).await;

    // Round 2: node1 stops listening, node2 answers 500 over TLS, node4 hangs up at once,
    // and node3 hangs up too, which a tcp probe does not mind: the connect succeeded.
    http1.set(Mode::Closed).await;
    https2.set(Mode::Failing).await;
    tcp3.set(Mode::Hangup).await;
    http4.set(Mode::Hangup).await;
    let doc = wait_states(&server, &["node1", "node2", "node4"], "down").await;
    assert!(
        https2.accepted() >= 3,
        "node2 down after {} probes",
        https2.accepted()
    );
    assert!(
        http4.accepted() >= 3,
        "node4 down after {} probes",
        http4.accepted()
    );
    assert_eq!(state_of(&doc, "node3"), "up", "{doc:#?}");
    wait_picks(&server, POOL, "node3 only", |c| only(c, &["node3"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node3"]));

    for endpoint in [&http1, &https2, &tcp3, &http4] {
        endpoint.set(Mode::Healthy).await;
    }
    wait_states(&server, &all, "up").await;
    wait_picks(&server, POOL, "everyone again", |c| only(c, &all)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Fail-open
// ---------------------------------------------------------------------------------------------

/// With every member down the shared name still answers, from all members by configured
/// weight (weight 0 still never), and `/status`, `/metrics` and `status` say so.
#[tokio::test(flavor = "multi_thread")]
async fn all_members_down_fails_open_by_configured_weight() {
    let endpoints = [
        Endpoint::http().await,
        Endpoint::http().await,
        Endpoint::http().await,
    ];
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, &http_probe(&endpoints[0], "")),
        member("node2", 3, &http_probe(&endpoints[1], "")),
        member("node3", 0, &http_probe(&endpoints[2], "")),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    let labels = [("zone", ZONE), ("pool", POOL)];

    let doc = wait_status(&server, "first probes", |doc| {
        pool(doc, POOL).members.iter().all(|m| m.last_probe.is_some())
    })
    .await;
    assert!(!pool(&doc, POOL).fail_open);
    assert!(only(&picks(&server, POOL, 100).await, &["node1", "node2"]));
    assert_eq!(
        metric(&metrics(&server).await, POOL_FAIL_OPEN, &labels),
        Some(0.0)
    );

    endpoints[0].set(Mode::Failing).await;
    endpoints[1].set(Mode::Closed).await;
    endpoints[2].set(Mode::Slow).await;
    let doc = wait_states(&server, &["node1", "node2", "node3"], "down").await;
    // The table is republished right after the last flip; /status reads the table.
    let doc = if pool(&doc, POOL).fail_open {
        doc
    } else {
        wait_status(&server, "fail-open", |doc| pool(doc, POOL).fail_open).await
    };
    assert!(
        pool(&doc, POOL).members.iter().all(|m| m.effective_weight == 0.0),
        "{doc:#?}"
    );
    let text = metrics(&server).await;
    assert_eq!(metric(&text, POOL_FAIL_OPEN, &labels), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, MEMBER_UP, &[("zone", ZONE), ("member", "node2")]),
        Some(0.0)
    );

    // Answers still come, by configured weight 1:3 and never the weight-0 member. Over 400
    // picks node2's share has mean 0.75 and standard deviation sqrt(0.75 * 0.25 / 400) =
    // 0.022; 0.64..0.86 is five deviations either side (a false alarm about once in 3 million).
    let counts = picks(&server, POOL, 400).await;
    assert!(only(&counts, &["node1", "node2"]), "{counts:?}");
    let share = counts["node2"] as f64 / 400.0;
    assert!((0.64..=0.86).contains(&share), "node2 share {share}: {counts:?}");

    // The status command shows it too.
    let out = status_command(admin(&server)).await;
    assert!(out.contains("FAILING OPEN"), "{out}");

    // One member back: no longer failing open, and only it is picked.
    endpoints[0].set(Mode::Healthy).await;
    let doc = wait_status(&server, "node1 up, not failing open", |doc| {
        state_of(doc, "node1") == "up" && !pool(doc, POOL).fail_open
    })
    .await;
    assert_eq!(member_in(&doc, POOL, "node1").effective_weight, 1.0);
    assert_eq!(
        metric(&metrics(&server).await, POOL_FAIL_OPEN, &labels),
        Some(0.0)
    );
    wait_picks(&server, POOL, "node1 only", |c| only(c, &["node1"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node1"]));
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Weight 0 and down members
// ---------------------------------------------------------------------------------------------

/// While another member is up, a member at weight 0 (healthy) and a down member (weight 2)
/// are never picked.
#[tokio::test(flavor = "multi_thread")]
async fn zero_weight_and_down_members_are_never_picked() {
    let endpoints = [
        Endpoint::http().await,
        Endpoint::http().await,
        Endpoint::http().await,
    ];
    endpoints[2].set(Mode::Failing).await;
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, &http_probe(&endpoints[0], "")),
        member("node2", 0, &http_probe(&endpoints[1], "")),
        member("node3", 2, &http_probe(&endpoints[2], "")),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    let doc = wait_status(&server, "node3 down, node1 and node2 probed", |doc| {
        state_of(doc, "node3") == "down"
            && ["node1", "node2"]
                .iter()
                .all(|l| member_in(doc, POOL, l).last_probe.as_ref().is_some_and(|p| p.ok))
    })
    .await;
    assert_eq!(state_of(&doc, "node2"), "up");
    assert_eq!(member_in(&doc, POOL, "node2").effective_weight, 0.0);
    assert_eq!(member_in(&doc, POOL, "node3").effective_weight, 0.0);
    assert_eq!(member_in(&doc, POOL, "node1").effective_weight, 1.0);
    assert!(!pool(&doc, POOL).fail_open);
    wait_picks(&server, POOL, "node1 only", |c| only(c, &["node1"])).await;
    // node1 holds all the positive weight: any other pick in 500 is a bug, not chance.
    let counts = picks(&server, POOL, 500).await;
    assert!(only(&counts, &["node1"]), "{counts:?}");
    // The member's own name still answers, whatever its health or weight.
    for label in ["node2", "node3"] {
        let m = udp(
            server.dns_addrs[0],
            &query(&format!("{label}.{ZONE}"), RecordType::CNAME, None),
        )
        .await;
        assert_eq!(m.answers.len(), 1, "{m}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Pools with nothing to offer
// ---------------------------------------------------------------------------------------------

/// A pool listing no members, and a pool whose members all have weight 0 (healthy, so not a
/// fail-open case), answer NODATA over UDP: NOERROR, AA, no answer, and the zone's SOA in the
/// authority section at min(SOA TTL, SOA MINIMUM) (RFC 2308 §3, §5).
#[tokio::test(flavor = "multi_thread")]
async fn empty_and_all_zero_weight_pools_answer_nodata_with_the_soa() {
    let members = [
        "[[pool]]\nlabel = \"empty\"\nmembers = []\n".to_string(),
        "[[pool]]\nlabel = \"idle\"\nmembers = [\"node1\", \"node2\"]\n".to_string(),
        member("node1", 0, "kind = \"none\""),
        member("node2", 0, "kind = \"none\""),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];

    // The zone's SOA as served at the apex: the negative answers must carry this record.
    let apex = udp(dns, &query(ZONE, RecordType::SOA, None)).await;
    let soa_record = apex.answers.first().unwrap_or_else(|| panic!("apex SOA: {apex}"));
    let RData::SOA(soa) = &soa_record.data else {
        panic!("apex SOA: {apex}");
    };
    let negative_ttl = soa_record.ttl.min(soa.minimum);
    // The example zone has TTL 3600 and MINIMUM 300: a TTL taken from either alone shows.
    assert_ne!(
        soa_record.ttl, soa.minimum,
        "the example SOA must tell the two apart"
    );

    for pool_name in ["empty.consortium.example.", "idle.consortium.example."] {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let m = udp(dns, &query(pool_name, qtype, None)).await;
            let what = format!("{pool_name} {qtype}: {m}");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{what}");
            assert!(m.metadata.authoritative, "AA: {what}");
            assert!(m.answers.is_empty(), "no answer: {what}");
            assert_eq!(m.authorities.len(), 1, "the SOA alone: {what}");
            let authority = &m.authorities[0];
            assert_eq!(authority.name.to_string(), ZONE, "{what}");
            assert_eq!(authority.data, soa_record.data, "the zone's SOA: {what}");
            assert_eq!(authority.ttl, negative_ttl, "min(SOA TTL, MINIMUM): {what}");
        }
    }
    // The weight-0 members still have their own names.
    let m = udp(dns, &query("node1.consortium.example.", RecordType::CNAME, None)).await;
    assert_eq!(m.answers.len(), 1, "{m}");
    // A pool empty on purpose is not an outage: no fail-open alert.
    let text = metrics(&server).await;
    for pool_name in ["empty.consortium.example.", "idle.consortium.example."] {
        let labels = [("zone", ZONE), ("pool", pool_name)];
        assert_eq!(
            metric(&text, POOL_FAIL_OPEN, &labels),
            Some(0.0),
            "{pool_name}: {text}"
        );
        assert!(!pool(&status(&server).await, pool_name).fail_open, "{pool_name}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Status and body checks
// ---------------------------------------------------------------------------------------------

/// `body-contains` fails a 200 whose body lacks the text, and `expect-status = "503"` accepts
/// a 503 and only that: a member answering 200 then goes down.
#[tokio::test(flavor = "multi_thread")]
async fn body_contains_and_expect_status_decide_health() {
    const NEEDLE: &str = "consortium-ready";
    let wants_text = Endpoint::http().await; // node1: 200 "healthy\n", without NEEDLE
    let answers_503 = Endpoint::http().await; // node2
    answers_503
        .set(Mode::Answer {
            status: "503 Service Unavailable",
            body: "draining\n",
        })
        .await;
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member(
            "node1",
            1,
            &http_probe(&wants_text, &format!("body-contains = \"{NEEDLE}\"\n")),
        ),
        member("node2", 1, &http_probe(&answers_503, "expect-status = \"503\"\n")),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    let last = |doc: &StatusDocument, label: &str| {
        member_in(doc, POOL, label)
            .last_probe
            .as_ref()
            .map(|p| (p.ok, p.detail.clone()))
    };

    // Both start up (`initial = "up"`). node1 goes down after `fall` (2) probes; node2 has
    // had at least as many by then (3 connections: 2 probes done) and stays up.
    let doc = wait_status(&server, "node1 down, node2 probed 3 times", |doc| {
        state_of(doc, "node1") == "down"
            && answers_503.accepted() >= 3
            && last(doc, "node2").is_some_and(|(ok, _)| ok)
    })
    .await;
    let (ok, detail) = last(&doc, "node1").expect("node1 probed");
    assert!(!ok && detail.contains("body lacks"), "node1: {detail}");
    assert_eq!(state_of(&doc, "node2"), "up", "{doc:#?}");
    assert!(!pool(&doc, POOL).fail_open, "node2 is up: {doc:#?}");
    wait_picks(&server, POOL, "node2 only", |c| only(c, &["node2"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node2"]));

    // Swapped: node1's body now has the text, node2 answers 200, which is not its 503.
    wants_text
        .set(Mode::Answer {
            status: "200 OK",
            body: "status: consortium-ready\n",
        })
        .await;
    answers_503.set(Mode::Healthy).await;
    let doc = wait_status(&server, "node1 up, node2 down", |doc| {
        state_of(doc, "node1") == "up" && state_of(doc, "node2") == "down"
    })
    .await;
    let (ok, detail) = last(&doc, "node2").expect("node2 probed");
    assert!(!ok && detail.contains("200"), "node2: {detail}");
    assert!(last(&doc, "node1").is_some_and(|(ok, _)| ok), "{doc:#?}");
    wait_picks(&server, POOL, "node1 only", |c| only(c, &["node1"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node1"]));
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Slow start
// ---------------------------------------------------------------------------------------------

/// A recovered member's effective weight ramps linearly over its slow-start period instead of
/// jumping, and while it ramps it gets a small share of the picks.
#[tokio::test(flavor = "multi_thread")]
async fn recovered_member_ramps_up_over_slow_start() {
    const RAMP: f64 = 3.0; // seconds, the slow-start of node1
    const WEIGHT: f64 = 4.0;
    let endpoints = [Endpoint::http().await, Endpoint::http().await];
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 4, &http_probe(&endpoints[0], "slow-start = \"3s\"\n")),
        member("node2", 4, &http_probe(&endpoints[1], "")),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    // Up from the start (initial "up"): full weight at once, no ramp.
    let doc = wait_status(&server, "first probes", |doc| {
        pool(doc, POOL).members.iter().all(|m| m.last_probe.is_some())
    })
    .await;
    assert_eq!(member_in(&doc, POOL, "node1").effective_weight, WEIGHT);

    endpoints[0].set(Mode::Failing).await;
    wait_states(&server, &["node1"], "down").await;
    endpoints[0].set(Mode::Healthy).await;
    let doc = wait_states(&server, &["node1"], "up").await;
    let up_seen = Instant::now();
    let first = member_in(&doc, POOL, "node1").effective_weight;
    assert!(first > 0.0 && first < 1.0, "starts near zero: {first}");

    // Early picks: the table holds at most the weight /status shows after the batch (the
    // table lags the ramp), so node1's expected share is at most w / (w + 4). Allow five
    // binomial standard deviations above that.
    let counts = picks(&server, POOL, 100).await;
    let after = member_in(&status(&server).await, POOL, "node1").effective_weight;
    assert!(after < WEIGHT, "still ramping after 100 queries: {after}");
    let p = after / (after + WEIGHT);
    let bound = 100.0 * p + 5.0 * (100.0 * p * (1.0 - p)).sqrt() + 1.0;
    let early = counts.get("node1").copied().unwrap_or(0);
    assert!(
        (early as f64) <= bound,
        "node1 picked {early} of 100 early on (weight {after}, bound {bound:.1})"
    );
    assert!(early < 50, "node1 must not start at its full share: {counts:?}");

    // Sample the ramp: never falling, several distinct values on the way, close to the
    // straight line from the moment it came up (that moment lies a poll or so before `up_seen`).
    let mut samples = vec![(0.0, first)];
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let doc = status(&server).await;
        let w = member_in(&doc, POOL, "node1").effective_weight;
        assert_eq!(member_in(&doc, POOL, "node2").effective_weight, WEIGHT);
        let t = up_seen.elapsed().as_secs_f64();
        samples.push((t, w));
        if w >= WEIGHT {
            break;
        }
        assert!(t < RAMP + 5.0, "ramp did not finish: {samples:?}");
        let linear = WEIGHT * t / RAMP;
        assert!(
            (w - linear).abs() < WEIGHT * 0.5 / RAMP,
            "weight {w} at {t:.2}s, a straight ramp gives {linear:.2}: {samples:?}"
        );
    }
    assert!(
        samples.windows(2).all(|w| w[0].1 <= w[1].1),
        "never falls: {samples:?}"
    );
    let intermediate = samples.iter().filter(|(_, w)| *w > 0.0 && *w < WEIGHT).count();
    assert!(intermediate >= 4, "ramps rather than jumps: {samples:?}");
    let (done_at, _) = samples.last().copied().expect("samples");
    assert!(
        done_at >= RAMP - 0.5,
        "full weight only after the ramp: {samples:?}"
    );
    let text = metrics(&server).await;
    assert_eq!(
        metric(
            &text,
            MEMBER_EFFECTIVE_WEIGHT,
            &[("pool", POOL), ("member", "node1")]
        ),
        Some(WEIGHT)
    );

    // At full weight the share is 1/2; over 400 picks the standard deviation is 0.025, so
    // 0.375..0.625 is five of them either side. The table follows within one ramp tick.
    wait_picks(&server, POOL, "both", |c| only(c, &["node1", "node2"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = picks(&server, POOL, 400).await;
    let share = counts.get("node1").copied().unwrap_or(0) as f64 / 400.0;
    assert!(
        (0.375..=0.625).contains(&share),
        "node1 share {share}: {counts:?}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// Under `strict` a node whose certificate lacks the shared name, or has expired, is never
/// picked; under `report` both stay eligible. Expiry is reported with negative days. No member
/// flips up or down here: what the certificate says must reach the pick table on its own.
/// When node2's operator then installs a certificate with the shared name, node2 joins.
#[tokio::test(flavor = "multi_thread")]
async fn certificate_policy_strict_and_report() {
    let ca = TestCa::new("consortium-dns test CA");
    let good = Endpoint::https(ca.server(
        &[
            "node1.operator-a.com",
            "node1.consortium.example",
            "any.consortium.example",
        ],
        false,
    ))
    .await;
    let lacks_shared =
        Endpoint::https(ca.server(&["api.operator-b.net", "node2.consortium.example"], false)).await;
    let expired = Endpoint::https(ca.server(
        &[
            "planetmint.operator-c.org",
            "node3.consortium.example",
            "any.consortium.example",
        ],
        true,
    ))
    .await;

    let tree = Tree::example();
    let ca_file = ca.write(&tree);
    let members = [
        "[[pool]]\nlabel = \"any\"\ncert-policy = \"strict\"\n".to_string(),
        "\n[[pool]]\nlabel = \"all\"\ncert-policy = \"report\"\n".to_string(),
        member("node1", 1, &https_probe(&good, &ca_file, "")),
        member("node2", 1, &https_probe(&lacks_shared, &ca_file, "")),
        member("node3", 1, &https_probe(&expired, &ca_file, "")),
    ]
    .concat();
    tree.write("config/consortium-dns.toml", CONFIG);
    tree.write(MEMBERS_FILE, &members);
    let server = tree.start().await;
    const ALL: &str = "all.consortium.example.";
    let nodes = ["node1", "node2", "node3"];

    let doc = wait_status(&server, "certificates seen", |doc| {
        nodes
            .iter()
            .all(|l| member_in(doc, POOL, l).certificate.is_some())
    })
    .await;

    // Strict pool: node1 eligible, node2 (name missing) and node3 (expired) not, although
    // both are up: the expired certificate still completes the probe so it can be reported.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let expected_days = (EXPIRED_AT_UNIX - now).div_euclid(86_400);
    let node1 = member_in(&doc, POOL, "node1");
    let cert1 = node1.certificate.as_ref().expect("cert");
    assert!(
        node1.cert_eligible && cert1.covers_pool && cert1.covers_node,
        "{node1:#?}"
    );
    assert!(cert1.days_to_expiry.expect("expiry") > 365, "{node1:#?}");
    let node2 = member_in(&doc, POOL, "node2");
    let cert2 = node2.certificate.as_ref().expect("cert");
    assert_eq!(node2.state, "up");
    assert!(
        !node2.cert_eligible && !cert2.covers_pool && cert2.covers_node,
        "{node2:#?}"
    );
    assert_eq!(
        node2.effective_weight, 0.0,
        "an ineligible member has no weight: {node2:#?}"
    );
    let node3 = member_in(&doc, POOL, "node3");
    let cert3 = node3.certificate.as_ref().expect("cert");
    assert_eq!(node3.state, "up", "{node3:#?}");
    assert!(!node3.cert_eligible && cert3.covers_pool, "{node3:#?}");
    assert_eq!(node3.effective_weight, 0.0, "{node3:#?}");
    let days = cert3.days_to_expiry.expect("expiry");
    assert!(days < 0, "expired: {days}");
    assert!((days - expected_days).abs() <= 1, "{days} vs {expected_days}");
    assert!(!pool(&doc, POOL).fail_open);

    // Report pool: the same certificates, all eligible at full weight.
    for label in nodes {
        let m = member_in(&doc, ALL, label);
        assert!(m.cert_eligible && m.effective_weight == 1.0, "{m:#?}");
    }

    // Over DNS: the strict pool only ever gives node1; the report pool gives all three.
    wait_picks(&server, POOL, "node1 only", |c| only(c, &["node1"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node1"]));
    assert!(only(&picks(&server, ALL, 200).await, &nodes));

    // Metrics: negative days for the expired one, coverage per pool.
    let text = metrics(&server).await;
    let expiry = metric(
        &text,
        MEMBER_CERT_EXPIRY_DAYS,
        &[("zone", ZONE), ("member", "node3")],
    );
    assert_eq!(expiry, Some(days as f64), "{text}");
    assert!(metric(&text, MEMBER_CERT_EXPIRY_DAYS, &[("member", "node1")]).expect("node1") > 365.0);
    for (pool_name, label, covered) in [(POOL, "node1", 1.0), (POOL, "node2", 0.0), (ALL, "node2", 0.0)] {
        assert_eq!(
            metric(
                &text,
                MEMBER_CERT_COVERS_POOL,
                &[("pool", pool_name), ("member", label)]
            ),
            Some(covered),
            "{pool_name} {label}"
        );
    }
    assert_eq!(
        metric(
            &text,
            MEMBER_EFFECTIVE_WEIGHT,
            &[("pool", POOL), ("member", "node2")]
        ),
        Some(0.0)
    );

    // The status command marks the ineligible ones and shows the negative days.
    let out = status_command(admin(&server)).await;
    let row = |pool_name: &str, label: &str| -> String {
        let section = out
            .split("\npool ")
            .find(|s| s.starts_with(pool_name))
            .unwrap_or_else(|| panic!("pool {pool_name} in {out}"));
        section
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("{label} in {section}"))
            .to_string()
    };
    assert!(row(POOL, "node2").contains("INELIGIBLE"), "{out}");
    assert!(row(POOL, "node3").contains(&format!("{days}d")), "{out}");
    assert!(row(POOL, "node3").contains("INELIGIBLE"), "{out}");
    assert!(!row(POOL, "node1").contains("INELIGIBLE"), "{out}");
    assert!(!row(ALL, "node2").contains("INELIGIBLE"), "{out}");

    // node2 gets a certificate that covers the shared name: eligible from its next probe.
    lacks_shared.set_certificate(ca.server(&["api.operator-b.net", "any.consortium.example"], false));
    let doc = wait_status(&server, "node2 eligible", |doc| {
        member_in(doc, POOL, "node2").cert_eligible
    })
    .await;
    assert_eq!(member_in(&doc, POOL, "node2").effective_weight, 1.0);
    wait_picks(&server, POOL, "node1 and node2", |c| only(c, &["node1", "node2"])).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// A certificate from a CA we do not trust, or for another host, fails the https probe: the
/// member goes down (and is not picked), its certificate is not recorded.
#[tokio::test(flavor = "multi_thread")]
async fn untrusted_or_misnamed_certificates_fail_the_probe() {
    let ca = TestCa::new("consortium-dns test CA");
    let stranger = TestCa::new("someone else's CA");
    let good = Endpoint::https(ca.server(&["node1.operator-a.com", "any.consortium.example"], false)).await;
    let untrusted =
        Endpoint::https(stranger.server(&["api.operator-b.net", "any.consortium.example"], false)).await;
    let wrong_host =
        Endpoint::https(ca.server(&["other.operator-c.org", "any.consortium.example"], false)).await;
    let tree = Tree::example();
    let ca_file = ca.write(&tree);
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, &https_probe(&good, &ca_file, "")),
        member("node2", 1, &https_probe(&untrusted, &ca_file, "")),
        member("node3", 1, &https_probe(&wrong_host, &ca_file, "")),
    ]
    .concat();
    tree.write("config/consortium-dns.toml", CONFIG);
    tree.write(MEMBERS_FILE, &members);
    let server = tree.start().await;
    let doc = wait_status(&server, "bad TLS down, node1 probed", |doc| {
        ["node2", "node3"].iter().all(|l| state_of(doc, l) == "down")
            && member_in(doc, POOL, "node1").last_probe.is_some()
    })
    .await;
    assert_eq!(state_of(&doc, "node1"), "up");
    for label in ["node2", "node3"] {
        let m = member_in(&doc, POOL, label);
        let detail = &m.last_probe.as_ref().expect("probed").detail;
        assert!(detail.contains("TLS"), "{label}: {detail}");
        assert!(m.certificate.is_none(), "{m:#?}");
    }
    wait_picks(&server, POOL, "node1 only", |c| only(c, &["node1"])).await;
    assert!(only(&picks(&server, POOL, 200).await, &["node1"]));
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// The status command
// ---------------------------------------------------------------------------------------------

/// Runs `consortium-dns status --http-listen ADDR` and returns its stdout; it must exit 0, or
/// 2 when the output says a pool is failing open (its Nagios-style CRITICAL).
async fn status_command(addr: SocketAddr) -> String {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(["status", "--http-listen", &addr.to_string()])
            .output()
            .expect("run consortium-dns status")
    })
    .await
    .expect("status command task");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let expected = if stdout.contains("FAILING OPEN") { 2 } else { 0 };
    assert_eq!(
        output.status.code(),
        Some(expected),
        "status exit code: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn status_command_prints_pools_and_members() {
    let endpoints = [Endpoint::http().await, Endpoint::http().await];
    endpoints[1].set(Mode::Failing).await;
    let members = [
        "[[pool]]\nlabel = \"any\"\nttl = 30\n".to_string(),
        member("node1", 2, &http_probe(&endpoints[0], "")),
        member("node2", 1, &http_probe(&endpoints[1], "")),
        member("node3", 1, "kind = \"none\"\n"),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    wait_status(&server, "node2 down, node1 probed", |doc| {
        state_of(doc, "node2") == "down" && member_in(doc, POOL, "node1").last_probe.is_some()
    })
    .await;

    let out = status_command(admin(&server)).await;
    assert!(out.contains(&format!("zone {ZONE}")), "{out}");
    let header = out
        .lines()
        .find(|l| l.starts_with("pool "))
        .unwrap_or_else(|| panic!("a pool line in {out}"));
    assert!(header.contains(POOL) && header.contains("ttl 30"), "{header}");
    assert!(!header.contains("FAILING OPEN"), "{header}");
    // MEMBER TARGET PROBE STATE WEIGHT ...
    let row = |label: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("a row for {label} in {out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("node1")[..5],
        ["node1", "node1.operator-a.com.", "http", "up", "2.00"],
        "{out}"
    );
    assert_eq!(
        row("node2")[..5],
        ["node2", "api.operator-b.net.", "http", "down", "0.00"],
        "{out}"
    );
    assert!(
        row("node2").iter().any(|f| f == "500"),
        "last probe detail: {out}"
    );
    assert_eq!(
        row("node3")[..5],
        ["node3", "planetmint.operator-c.org.", "none", "up", "1.00"],
        "{out}"
    );

    // Nothing listening: a clear failure, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let nobody = closed.local_addr().expect("addr");
    drop(closed);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(["status", "--http-listen", &nobody.to_string()])
            .output()
            .expect("run status")
    })
    .await
    .expect("task");
    assert_eq!(output.status.code(), Some(3), "no answer: UNKNOWN");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read status"));
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Bad health settings
// ---------------------------------------------------------------------------------------------

/// Each bad setting, as the last member's `[member.health]` lines, with a word the message
/// must hold and whether the error points at the setting's own line (serde errors) or at the
/// member's `[[member]]` line (validation errors).
const BAD_SETTINGS: [(&str, &str, bool); 9] = [
    ("kind = \"smtp\"", "smtp", true),
    ("interval = \"0s\"", "interval", false),
    ("interval = \"200ms\"\ntimeout = \"200ms\"", "timeout", false),
    ("interval = \"200ms\"\ntimeout = \"1s\"", "timeout", false),
    ("address = \"node1.operator-a.com:443\"", "address", false),
    ("address = \"127.0.0.1:0\"", "port 0", false),
    ("port = 0", "port", false),
    ("path = \"status page\"", "path", false),
    ("kind = \"tcp\"", "port", false),
];

fn bad_members(bad: &str) -> String {
    [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, "kind = \"none\""),
        member("node2", 1, bad),
    ]
    .concat()
}

/// `check` and start-up both refuse bad health settings with the members file's name and the
/// line; a running server keeps its data when a reload meets them.
#[tokio::test(flavor = "multi_thread")]
async fn bad_health_settings_fail_check_and_start_with_file_and_line() {
    for (bad, word, at_setting) in BAD_SETTINGS {
        let text = bad_members(bad);
        let member_line = line_of(&text, "label = \"node2\"", 1) - 1;
        let line = if at_setting {
            line_of(&text, bad.lines().next().expect("a line"), member_line)
        } else {
            member_line
        };
        let expected = format!("consortium.example.members.toml:{line}:");
        let tree = tree_with(&text);

        let output = Command::new(binary())
            .args(["check", "--config"])
            .arg(tree.config_path())
            .output()
            .expect("run check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "check accepted {bad:?}");
        assert!(
            stderr.contains(&expected) && stderr.contains(word),
            "{bad:?}: want {expected} and {word:?} in:\n{stderr}"
        );

        match app::start(tree.config()).await {
            Err(StartError::Load(errors)) => {
                let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
                assert!(
                    shown.iter().any(|e| e.contains(&expected) && e.contains(word)),
                    "{bad:?}: want {expected} in {shown:?}"
                );
            }
            Err(other) => panic!("{bad:?}: wrong error {other}"),
            Ok(_) => panic!("the server started with {bad:?}"),
        }
    }

    // A running server meeting a bad health setting on reload keeps its data.
    let good = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, "kind = \"none\""),
        member("node2", 1, "kind = \"none\""),
    ]
    .concat();
    let tree = tree_with(&good);
    let server = tree.start().await;
    assert!(only(&picks(&server, POOL, 100).await, &["node1", "node2"]));
    let text = bad_members("interval = \"0s\"");
    tree.write(MEMBERS_FILE, &text);
    let report = server.control.reload("test").await;
    assert!(!report.ok);
    let line = line_of(&text, "label = \"node2\"", 1) - 1;
    assert!(
        report.errors.iter().any(
            |e| e.contains(&format!("consortium.example.members.toml:{line}:")) && e.contains("interval")
        ),
        "{report:?}"
    );
    assert!(only(&picks(&server, POOL, 100).await, &["node1", "node2"]));
    let doc = status(&server).await;
    assert_eq!(pool(&doc, POOL).members.len(), 2);
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// Shares over the wire
// ---------------------------------------------------------------------------------------------

/// Weights 1:2:7 over the real server. The seeded chi-square test of 20,000 picks lives with
/// the picker (`pick::tests::weights_1_2_7_pass_chi_square`); the server's RNG is seeded from
/// the OS, so here the shares are checked loosely: with n = 2,000 picks a share p has binomial
/// standard deviation sqrt(p (1 - p) / n): 0.0067, 0.0089 and 0.0102 for 0.1, 0.2 and 0.7.
/// Each observed share must be within 5 standard deviations of its weight (a false alarm
/// about once in 3 million runs per member), which still catches any swapped or ignored weight.
#[tokio::test(flavor = "multi_thread")]
async fn shares_over_the_wire_follow_weights_1_2_7() {
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, "kind = \"none\""),
        member("node2", 2, "kind = \"none\""),
        member("node3", 7, "kind = \"none\""),
    ]
    .concat();
    let tree = tree_with(&members);
    let server = tree.start().await;
    const N: usize = 2_000;
    let counts = picks(&server, POOL, N).await;
    for (label, weight) in [("node1", 1.0), ("node2", 2.0), ("node3", 7.0)] {
        let p: f64 = weight / 10.0;
        let sd = (p * (1.0 - p) / N as f64).sqrt();
        let share = counts.get(label).copied().unwrap_or(0) as f64 / N as f64;
        assert!(
            (share - p).abs() <= 5.0 * sd,
            "{label}: share {share:.4}, expected {p} ± {:.4}: {counts:?}",
            5.0 * sd
        );
    }
    // The pick counter agrees with what we saw.
    let text = metrics(&server).await;
    for (label, seen) in &counts {
        assert_eq!(
            metric(&text, POOL_PICKS_TOTAL, &[("pool", POOL), ("member", label)]),
            Some(*seen as f64),
            "{label}"
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

/// Issue 21 item 2: a CA file replaced in place is used from the next probe (no restart, no
/// reload needed), and a TLS failure reads as a sentence.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_ca_file_is_used_from_the_next_probe() {
    let old_ca = TestCa::new("the consortium's old CA");
    let new_ca = TestCa::new("the consortium's new CA");
    // node2's certificate comes from the new CA; the server still trusts only the old one.
    let endpoint =
        Endpoint::https(new_ca.server(&["api.operator-b.net", "any.consortium.example"], false)).await;
    let tree = Tree::example();
    let ca_file = old_ca.write(&tree);
    let members = [
        "[[pool]]\nlabel = \"any\"\n".to_string(),
        member("node1", 1, "kind = \"none\"\n"),
        member("node2", 1, &https_probe(&endpoint, &ca_file, "")),
    ]
    .concat();
    tree.write("config/consortium-dns.toml", CONFIG);
    tree.write(MEMBERS_FILE, &members);
    let server = tree.start().await;
    let doc = wait_status(
        &server,
        "node2 down: its certificate is from an untrusted CA",
        |doc| state_of(doc, "node2") == "down",
    )
    .await;
    let detail = member_in(&doc, POOL, "node2")
        .last_probe
        .as_ref()
        .map(|p| p.detail.clone())
        .unwrap_or_default();
    assert!(
        detail.contains("certificate is not signed by a trusted CA"),
        "a sentence, not debug text: {detail}"
    );

    // The rotation: the new CA's certificate in the same file.
    new_ca.write(&tree);
    wait_status(&server, "node2 up with the new CA", |doc| {
        state_of(doc, "node2") == "up"
    })
    .await;

    // `check` and reloads refuse a CA file that holds no certificate.
    tree.write("zones/test-ca.pem", "not a certificate\n");
    let (ok, _, stderr) = crate::common::run_check(&tree);
    assert!(!ok, "check accepted a garbage ca-file");
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    assert!(!server.control.reload("test").await.ok);
    server.shutdown(Duration::from_secs(1)).await;
}
