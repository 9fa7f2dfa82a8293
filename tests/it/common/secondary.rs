//! Knot DNS 3.2 (`knot`) and BIND 9.18 (`bind9`) as standard secondaries of consortium-dns,
//! configured with the README's own snippets (section "Secondaries ..."), the documentation
//! addresses and secret replaced by the test's: so the snippets an operator copies are the
//! ones tested. Each runs in the foreground on 127.0.0.1 with its files in a temp dir; dropping
//! it stops its process group. A missing program fails the test that needs it.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{NsdKey, program, repo_root};

/// The address the README's secondary snippets give the primary.
const DOC_PRIMARY: &str = "192.0.2.53";
/// The README's placeholder for the TSIG secret.
const DOC_SECRET: &str = "<the same base64>";

pub struct Secondary {
    /// "Knot" or "BIND", for messages.
    pub server: &'static str,
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// The first code block after the README paragraph that starts with `heading`.
fn readme_snippet(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let at = readme
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("README.md has no paragraph starting {heading:?}"));
    let rest = &readme[at..];
    let open = rest.find("\n```").expect("a code block after it") + 4;
    let body_start = open + rest[open..].find('\n').expect("fence line") + 1;
    let body_len = rest[body_start..].find("```").expect("closing fence");
    rest[body_start..body_start + body_len].to_string()
}

/// `snippet` with the README's primary address (`with_port` first, then the bare address) and
/// secret replaced; fails if the snippet does not hold them, so the substitution cannot
/// silently miss.
fn substituted(snippet: &str, with_port: &str, primary_with_port: &str, key: &NsdKey) -> String {
    for needle in [with_port, DOC_SECRET] {
        assert!(
            snippet.contains(needle),
            "the README snippet lacks {needle:?}:\n{snippet}"
        );
    }
    snippet
        .replace(with_port, primary_with_port)
        .replace(DOC_PRIMARY, "127.0.0.1")
        .replace(DOC_SECRET, &key.secret)
}

impl Secondary {
    /// Knot DNS on `port`, secondary of `origin` (the README's `consortium.example.`) from
    /// `primary`, with the README's "Knot DNS secondary" snippet.
    pub fn knot(port: u16, primary: SocketAddr, key: &NsdKey) -> Secondary {
        let knotd = program(
            "knotd",
            "knot",
            "Knot DNS is a standard secondary of the restart test",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("db")).expect("knot db dir");
        let snippet = substituted(
            &readme_snippet("Knot DNS secondary"),
            &format!("{DOC_PRIMARY}@53"),
            &format!("127.0.0.1@{}", primary.port()),
            key,
        );
        let config = format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: \"{d}\"\n\
             control:\n    listen: \"{d}/knot.sock\"\n\
             log:\n  - target: stderr\n    any: info\n\
             database:\n    storage: \"{d}/db\"\n\
             template:\n  - id: default\n    storage: \"{d}\"\n\
             {snippet}"
        );
        std::fs::write(dir.path().join("knot.conf"), config).expect("write knot.conf");
        let mut command = Command::new(knotd);
        command.arg("-c").arg(dir.path().join("knot.conf"));
        Secondary::spawn("Knot", command, port, dir)
    }

    /// BIND's named on `port`, with the README's "BIND secondary" snippet.
    pub fn named(port: u16, primary: SocketAddr, key: &NsdKey) -> Secondary {
        let named = program(
            "named",
            "bind9",
            "BIND is a standard secondary of the restart test",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let snippet = substituted(
            &readme_snippet("BIND secondary"),
            &format!("{DOC_PRIMARY} port 53"),
            &format!("127.0.0.1 port {}", primary.port()),
            key,
        );
        let config = format!(
            "options {{\n    directory \"{d}\";\n    pid-file \"{d}/named.pid\";\n\
             \x20   session-keyfile \"{d}/session.key\";\n\
             \x20   listen-on port {port} {{ 127.0.0.1; }};\n    listen-on-v6 {{ none; }};\n\
             \x20   recursion no;\n    notify no;\n    dnssec-validation no;\n}};\n\
             controls {{ }};\n\
             {snippet}"
        );
        std::fs::write(dir.path().join("named.conf"), config).expect("write named.conf");
        let mut command = Command::new(named);
        // -g: foreground, log to stderr; -n 1: one worker is plenty.
        command
            .args(["-g", "-n", "1", "-c"])
            .arg(dir.path().join("named.conf"));
        Secondary::spawn("BIND", command, port, dir)
    }

    fn spawn(server: &'static str, mut command: Command, port: u16, dir: tempfile::TempDir) -> Secondary {
        let log = std::fs::File::create(dir.path().join("stderr")).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {server}: {e}"));
        Secondary {
            server,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child,
            dir,
        }
    }

    /// `Err` with the log when the server has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{} exited with {status}; its log:\n{}",
                self.server,
                self.log()
            )),
            _ => Ok(()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}
