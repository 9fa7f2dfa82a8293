//! NSD 4.6 (the Debian package `nsd`), the reference server of the differential test and the
//! standard secondary of the transfer tests: in the foreground on 127.0.0.1, its files in a
//! temp dir. Dropping it stops its whole process group (the main process, xfrd and the server
//! child). A missing `nsd` fails the test that needs it (never skips it).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use super::{free_port, hex, program, query};

pub struct Nsd {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// A TSIG key as NSD's `key:` clause names it.
pub struct NsdKey {
    pub name: String,
    /// `hmac-sha256`, `hmac-sha512`, ...
    pub algorithm: String,
    /// The secret, base64.
    pub secret: String,
}

impl Nsd {
    /// NSD as a primary serving `zone_text` for `origin`, advertising `edns_size` as its UDP
    /// payload, configured as close to consortium-dns as NSD allows. Returns once NSD answers
    /// the zone's SOA authoritatively; a port taken meanwhile is retried on another one.
    pub async fn primary(origin: &str, zone_text: &str, edns_size: u16) -> Nsd {
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("zone"), zone_text).expect("write NSD zone");
            let d = dir.path().display();
            let server = format!(
                "    verbosity: 0
    hide-version: yes
    hide-identity: yes
    rrl-whitelist-ratelimit: 0
    # Closest to consortium-dns: no apex NS and glue added to every answer.
    minimal-responses: yes
    # refuse-any: yes would set TC on every UDP ANY; we answer with one RRset (RFC 8482).
    refuse-any: no
    # The same advertised UDP payload as our [limits] udp-payload.
    ipv4-edns-size: {edns_size}
"
            );
            let zone = format!("    zonefile: \"{d}/zone\"\n");
            let mut nsd = Nsd::spawn(dir, free_port(), origin, &server, "", &zone);
            match nsd.wait_ready(origin).await {
                Ok(()) => return nsd,
                Err(e) => last_failure = e,
            }
        }
        panic!("NSD did not start: {last_failure}");
    }

    /// NSD as a secondary on `port` (chosen by the caller, whose NOTIFY list names it),
    /// transferring `origin` from `primary` with `key` (IXFR over TCP, AXFR fallback) and
    /// accepting NOTIFY signed with it from 127.0.0.1. Returns at once: NSD has no zone yet.
    pub fn secondary(port: u16, origin: &str, primary: SocketAddr, key: &NsdKey) -> Nsd {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let key_clause = format!(
            "key:\n    name: \"{}\"\n    algorithm: {}\n    secret: \"{}\"\n",
            key.name, key.algorithm, key.secret
        );
        let zone = format!(
            "    zonefile: \"{d}/secondary.zone\"
    request-xfr: {}@{} {name}
    allow-notify: 127.0.0.1 {name}
",
            primary.ip(),
            primary.port(),
            name = key.name
        );
        // Verbosity 2 logs "TSIG verified", which the transfer test looks for.
        Nsd::spawn(dir, port, origin, "    verbosity: 2\n", &key_clause, &zone)
    }

    /// Writes `nsd.conf` (checked with nsd-checkconf, NSD 4.6.1) and starts NSD on it. The
    /// role's lines: `server` inside `server:`, `key` before `zone:`, `zone` inside `zone:`.
    fn spawn(dir: tempfile::TempDir, port: u16, origin: &str, server: &str, key: &str, zone: &str) -> Nsd {
        let binary = program(
            "nsd",
            "nsd",
            "the differential and transfer tests run NSD 4.6 as the reference server and as a \
             standard secondary",
        );
        let config = config(dir.path(), port, origin, server, key, zone);
        std::fs::write(dir.path().join("nsd.conf"), config).expect("write nsd.conf");
        let stderr = std::fs::File::create(dir.path().join("nsd.stderr")).expect("NSD stderr file");
        let child = Command::new(&binary)
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Nsd {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
        }
    }

    /// Polls with an SOA query until NSD answers it authoritatively (10 s at most).
    async fn wait_ready(&mut self, origin: &str) -> Result<(), String> {
        let probe = query(origin, RecordType::SOA, None)
            .to_vec()
            .expect("probe encodes");
        let deadline = Instant::now() + Duration::from_secs(10);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind probe");
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            self.check_running()?;
            socket.send_to(&probe, self.addr).await.expect("send probe");
            let wait = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf));
            if let Ok(Ok(len)) = wait.await {
                let reply = Message::from_vec(&buf[..len])
                    .map_err(|e| format!("unparsable answer ({e}): {}", hex(&buf[..len])))?;
                if reply.metadata.response_code == ResponseCode::NoError && reply.metadata.authoritative {
                    return Ok(());
                }
                // Answering but not (yet) for the zone: a zone file NSD rejected shows in its log.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(format!(
            "nsd did not answer for {origin} within 10 s; its log:\n{}",
            self.log()
        ))
    }

    /// `Err` with NSD's log when it has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("nsd exited with {status}; its log:\n{}", self.log())),
            _ => Ok(()),
        }
    }

    /// NSD's log file and stderr.
    pub fn log(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
        format!("{}{}", read("nsd.log"), read("nsd.stderr"))
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM to the group: NSD's own shutdown stops xfrd and the server child.
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nsd.conf`: what both roles share, and the role's own lines.
fn config(dir: &Path, port: u16, origin: &str, server: &str, key: &str, zone: &str) -> String {
    let d = dir.display();
    format!(
        "server:
    ip-address: 127.0.0.1
    port: {port}
    server-count: 1
    # Run as the current user, no chroot, every file in the temp dir.
    username: \"\"
    chroot: \"\"
    zonesdir: \"{d}\"
    pidfile: \"{d}/nsd.pid\"
    xfrdfile: \"{d}/xfrd.state\"
    xfrdir: \"{d}\"
    zonelistfile: \"{d}/zone.list\"
    database: \"\"
    logfile: \"{d}/nsd.log\"
    # No rate limiting: the tests send thousands of queries from one address.
    rrl-ratelimit: 0
{server}remote-control:
    control-enable: no
{key}zone:
    name: \"{origin}\"
{zone}"
    )
}
