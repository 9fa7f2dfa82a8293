//! Shared harness: a copy of the example consortium in a temp dir, the server started on it,
//! and raw UDP/TCP exchanges. Messages are built and parsed with hickory-proto, an independent
//! DNS implementation. Also what several test files need: NSD as a reference server or
//! secondary (`Nsd`, in `common/nsd.rs`), records compared as sets (`Rr`), outside programs,
//! and `consortium-dns check`.
#![allow(dead_code)]

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consortium_dns::app::{self, ServerHandle};
use consortium_dns::config::Config;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod nsd;
mod secondary;

pub use nsd::{Nsd, NsdKey};
pub use secondary::Secondary;

/// The repository root (where `config/` and `zones/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private copy of `config/` and `zones/` that a test may edit. The config listens on
/// 127.0.0.1 port 0 with the HTTP endpoint off, and health probes off (`kind = "none"`)
/// unless the test rewrites them.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn example() -> Tree {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["config", "zones"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            for entry in std::fs::read_dir(repo_root().join(sub)).expect("read example dir") {
                let entry = entry.expect("dir entry");
                // A state file left by running the example in the checkout is not the example.
                if entry.file_name().to_string_lossy().ends_with(".state.json") {
                    continue;
                }
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).expect("copy");
            }
        }
        let tree = Tree { dir };
        let config = tree.read("config/consortium-dns.toml");
        let config = config
            .replace("listen = [\"127.0.0.1:5300\"]", "listen = [\"127.0.0.1:0\"]")
            .replace("http-listen = \"127.0.0.1:8053\"", "http-listen = \"\"")
            .replace("kind = \"https\"", "kind = \"none\"")
            // Tests send bursts from one address; the RRL tests turn it back on.
            .replace("[rrl]\nenabled = true", "[rrl]\nenabled = false");
        tree.write("config/consortium-dns.toml", &config);
        let members = tree
            .read("zones/consortium.example.members.toml")
            .replace("kind = \"tcp\"", "kind = \"none\"");
        tree.write("zones/consortium.example.members.toml", &members);
        tree
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config/consortium-dns.toml")
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).expect("read file")
    }

    pub fn write(&self, relative: &str, text: &str) {
        std::fs::write(self.path(relative), text).expect("write file");
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path()).unwrap_or_else(|e| panic!("config: {e:?}"))
    }

    /// Starts the server on this tree.
    pub async fn start(&self) -> ServerHandle {
        app::start(self.config())
            .await
            .unwrap_or_else(|e| panic!("server start: {e}"))
    }
}

/// The example tree, started. Keep the tree alive as long as the server.
pub async fn start_example() -> (Tree, ServerHandle) {
    let tree = Tree::example();
    let server = tree.start().await;
    (tree, server)
}

pub fn name(text: &str) -> Name {
    Name::from_str(text).expect("valid name")
}

/// A query for `qname`/`qtype` with a fixed ID, EDNS(0) at `edns_size` when given.
pub fn query(qname: &str, qtype: RecordType, edns_size: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.id = 0x1234;
    let mut q = Query::query(name(qname), qtype);
    q.set_query_class(DNSClass::IN);
    message.add_query(q);
    if let Some(size) = edns_size {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    message
}

const TIMEOUT: Duration = Duration::from_secs(3);

/// Sends raw bytes over UDP and returns the raw answer, or `None` after a timeout.
pub async fn udp_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    socket.send_to(bytes, addr).await.expect("send");
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// The next datagram on a connected `socket`, or `None` when none comes within `wait`.
pub async fn recv_within(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        Ok(Err(e)) => panic!("UDP receive failed: {e}"),
        Err(_) => None,
    }
}

/// One query over UDP, parsed.
pub async fn udp(addr: SocketAddr, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encode query");
    let answer = udp_raw(addr, &bytes).await.expect("UDP answer before timeout");
    Message::from_vec(&answer).expect("answer parses")
}

/// One query over UDP as a resolver sends it: resent after each timeout, up to `attempts`
/// times (a datagram the kernel dropped while a socket buffer was full is UDP's normal loss,
/// not a server fault). Panics naming the attempts when none is answered.
pub async fn udp_retrying(addr: SocketAddr, message: &Message, attempts: usize) -> Message {
    let bytes = message.to_vec().expect("encode query");
    for _ in 0..attempts {
        if let Some(answer) = udp_raw(addr, &bytes).await {
            return Message::from_vec(&answer).expect("answer parses");
        }
    }
    panic!("no UDP answer in {attempts} attempts of {TIMEOUT:?}");
}

/// Sends length-prefixed messages on one TCP connection and reads `expect` answers.
pub async fn tcp_raw(addr: SocketAddr, messages: &[Vec<u8>], expect: usize) -> Vec<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let frames: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
    stream.write_all(&frames).await.expect("write");
    let mut answers = Vec::new();
    for _ in 0..expect {
        answers.push(
            tokio::time::timeout(TIMEOUT, read_frame(&mut stream))
                .await
                .expect("TCP answer in time")
                .expect("read"),
        );
    }
    answers
}

/// A DNS message with its two-octet length prefix, as sent over TCP (RFC 1035 §4.2.2).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Reads one length-prefixed DNS message (no timeout: the caller sets one).
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let len = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one length-prefixed DNS message.
pub async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(&frame(message)).await
}

/// One query over TCP, parsed.
pub async fn tcp(addr: SocketAddr, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encode query");
    let answers = tcp_raw(addr, &[bytes], 1).await;
    Message::from_vec(&answers[0]).expect("answer parses")
}

/// Runs the `consortium-dns` binary built by cargo for this test run.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consortium-dns"))
}

// ---------------------------------------------------------------------------------------------
// Added for the reload tests (issue 5): atomic file replacement, the admin endpoint, free ports.
// ---------------------------------------------------------------------------------------------

impl Tree {
    /// Replaces a file the way editors and git do: the new text is written to a temporary file
    /// in the same directory, then renamed over the old one, so a reader sees old or new whole.
    pub fn replace(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        let file_name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let temp = path.with_file_name(format!(".{file_name}.tmp"));
        std::fs::write(&temp, text).expect("write temp file");
        std::fs::rename(&temp, &path).expect("rename into place");
    }

    /// Turns the admin HTTP endpoint on, on 127.0.0.1 port 0 (read `ServerHandle::http_addr`).
    pub fn enable_http(&self) {
        let config = self
            .read("config/consortium-dns.toml")
            .replace("http-listen = \"\"", "http-listen = \"127.0.0.1:0\"");
        assert!(
            config.contains("http-listen = \"127.0.0.1:0\""),
            "http-listen line not found"
        );
        self.write("config/consortium-dns.toml", &config);
    }
}

/// One HTTP/1.1 request (empty body, `Connection: close`); returns the status code and body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_with(addr, method, path, "").await
}

/// As `http_request`, with `headers` (each line ending in `\r\n`) added to the request.
pub async fn http_request_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    http_request_to(addr, &addr.to_string(), method, path, headers).await
}

/// As `http_request_with`, with `host` as the `Host` header.
pub async fn http_request_to(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("HTTP answer in time")
        .expect("HTTP exchange");
    let text = String::from_utf8(raw).expect("UTF-8 HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP status line: {head}"));
    (code, body.to_string())
}

/// A 127.0.0.1 port free for both UDP and TCP right now (for the binary's `--listen`, or NSD),
/// released for the caller to bind.
pub fn free_port() -> u16 {
    for _ in 0..32 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("local addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for UDP and TCP");
}

/// Replaces text that must be present in a file of the tree (a plain write: for tests that
/// start the server after editing; `reload.rs` has its own, which renames into place).
pub fn edit(tree: &Tree, relative: &str, from: &str, to: &str) {
    let content = tree.read(relative);
    assert!(content.contains(from), "{relative} lacks {from:?}");
    tree.write(relative, &content.replacen(from, to, 1));
}

// Raw wire format, for packets hickory-proto will not build (RFC 1035 §4.1).

pub fn raw_header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

pub fn raw_name(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in text.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

pub fn raw_question(qname: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    let mut out = raw_name(qname);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&qclass.to_be_bytes());
    out
}

pub fn raw_id(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

pub fn raw_rcode(bytes: &[u8]) -> u8 {
    bytes[3] & 0x0f
}

/// Lowercase hex of `bytes`, two digits an octet.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since 1970 by this machine's clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Records compared as sets (the differential and transfer tests)
// ---------------------------------------------------------------------------------------------

/// A record as compared: owner lowercased, RDATA in canonical wire form (RFC 4034 §6.2: names
/// inside lowercased where the type calls for it, TXT and unknown types byte for byte).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rr {
    pub owner: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

impl Rr {
    pub fn of(record: &Record) -> Rr {
        let mut rdata = Vec::new();
        let mut encoder = BinEncoder::new(&mut rdata);
        encoder.set_canonical_form(true);
        record.data.emit(&mut encoder).expect("RDATA re-encodes");
        Rr {
            owner: record.name.to_lowercase().to_ascii(),
            rtype: u16::from(record.record_type()),
            class: u16::from(record.dns_class),
            ttl: record.ttl,
            rdata,
        }
    }

    pub fn cname(owner: &str, ttl: u32, target: &str) -> Rr {
        Rr::of(&Record::from_rdata(
            name(owner),
            ttl,
            RData::CNAME(CNAME(name(target))),
        ))
    }
}

impl fmt::Display for Rr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.owner,
            self.ttl,
            RecordType::from(self.rtype),
            hex(&self.rdata)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Outside programs, and the binary's `check`
// ---------------------------------------------------------------------------------------------

/// The path of an outside program a test needs (on PATH or in the usual system directories);
/// fails naming it, why the test needs it and its Debian package.
pub fn program(name: &str, package: &str, why: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: {why}. Install the Debian package `{package}` \
                 (tests/run.sh does)"
            )
        })
}

/// `consortium-dns check` on the tree's config: success, stdout, stderr.
pub fn run_check(tree: &Tree) -> (bool, String, String) {
    let output = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(tree.config_path())
        .output()
        .expect("run consortium-dns check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Appends `lines` to the example config's `[[zone]]` table, which must be the config's last
/// table (its last line, comments aside, is the zone's `members =`).
pub fn append_to_zone_table(tree: &Tree, lines: &str) {
    let mut config = tree.read("config/consortium-dns.toml");
    let last = config
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .expect("config has lines");
    assert!(
        last.starts_with("members ="),
        "the example config must end with its [[zone]] table; its last line is {last:?}"
    );
    if !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(lines);
    tree.write("config/consortium-dns.toml", &config);
}

/// The 1-based line of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not found"))
        + 1
}

// ---------------------------------------------------------------------------------------------
// systemd units (issue 21): the checkout's and the package's
// ---------------------------------------------------------------------------------------------

/// Whether `systemd-analyze verify` looks up the man pages the units' `Documentation=` names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ManPages {
    Checked,
    Unchecked,
}

/// Runs `systemd-analyze verify` on `units`; returns its complaints about them, if any.
pub fn verify_units(units: &[&Path], man_pages: ManPages) -> Result<(), String> {
    let analyze = program(
        "systemd-analyze",
        "systemd",
        "the unit tests check the units with it",
    );
    let man = if man_pages == ManPages::Checked {
        program(
            "man",
            "man-db",
            "systemd-analyze verify looks up the units' man page with it",
        );
        "--man=yes"
    } else {
        "--man=no"
    };
    let output = Command::new(analyze)
        .arg("verify")
        .arg(man)
        .args(units)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // verify exits 0 on many warnings ("Unknown key ..., ignoring"): any line about our units
    // or our binary is a failure too.
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains("consortium-dns")).collect();
    if output.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n{text}", output.status))
    }
}
