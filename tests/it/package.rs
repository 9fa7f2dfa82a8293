//! Packaging (issue 21): the Debian package built by `packaging/build-deb.sh` (cargo-deb) from
//! the binary under test installs with `dpkg -i`, its units pass `systemd-analyze verify`, and
//! the example it installs in /etc/consortium-dns answers when started as the unit's command
//! line; and the git-pull unit brings a membership change merged upstream live.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use consortium_dns::app;
use consortium_dns::config::Config;
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

use crate::common::{ManPages, Tree, binary, free_port, program, query, repo_root, udp_raw, verify_units};

const PACKAGE: &str = "consortium-dns";
const UNIT_DIR: &str = "/lib/systemd/system";
const ETC: &str = "/etc/consortium-dns";

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The `Key=` lines of a unit file, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(str::to_string))
        .collect()
}

/// Builds the package from the binary under test; returns the .deb's path.
fn build_package() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cargo_deb,
        "`cargo deb` is not installed: the package test builds the .deb with it. Install it with \
         `cargo install --locked cargo-deb` (tests/run.sh does)"
    );
    program(
        "dpkg-shlibdeps",
        "dpkg-dev",
        "cargo-deb reads the binary's library dependencies with it",
    );
    program(
        "strip",
        "binutils",
        "packaging/build-deb.sh strips the binary with it",
    );
    let output = run(Command::new(repo_root().join("packaging/build-deb.sh"))
        .arg("--binary")
        .arg(binary())
        .env("CARGO", &cargo));
    // cargo-deb prints the package's path last.
    let printed = String::from_utf8_lossy(&output.stdout);
    let deb = printed
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("build-deb.sh printed no .deb path:\n{printed}"));
    PathBuf::from(deb.trim())
}

/// The installed package; purged (files, state, credentials directory) when dropped, so a
/// failing test leaves the machine as it found it.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        // Left by an earlier run that was killed: start clean.
        purge();
        run(Command::new(program(
            "dpkg",
            "dpkg",
            "the package test installs the .deb with it",
        ))
        .arg("-i")
        .arg(deb));
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        purge();
    }
}

fn purge() {
    let _ = Command::new("dpkg")
        .args(["--purge", PACKAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A server started from the installed files; killed when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks `addr` until it answers `qname`'s CNAME (or `within` passes); the target, if any.
async fn cname_of(addr: SocketAddr, qname: &str, within: Duration) -> Option<String> {
    let until = Instant::now() + within;
    loop {
        let bytes = query(qname, RecordType::CNAME, None).to_vec().expect("encode");
        if let Some(answer) = udp_raw(addr, &bytes).await {
            let answer = Message::from_vec(&answer).expect("answer parses");
            let target = answer.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(cname) => Some(cname.0.to_string()),
                _ => None,
            });
            if target.is_some() || Instant::now() >= until {
                return target;
            }
        } else if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_debian_package_installs_and_its_example_answers_as_the_unit_starts_it() {
    // dpkg -i writes /usr and /etc.
    let whoami = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout).trim(),
        "0",
        "the package test installs the .deb with dpkg -i, which needs root"
    );
    let deb = build_package();
    let _installed = Installed::install(&deb);

    // What the package puts where a Debian admin looks for it.
    let listed =
        String::from_utf8_lossy(&run(Command::new("dpkg").args(["-L", PACKAGE])).stdout).into_owned();
    for path in [
        "/usr/bin/consortium-dns",
        "/usr/share/man/man1/consortium-dns.1.gz",
        "/usr/share/bash-completion/completions/consortium-dns",
        "/usr/share/zsh/vendor-completions/_consortium-dns",
        "/usr/share/fish/vendor_completions.d/consortium-dns.fish",
        "/usr/share/doc/consortium-dns/copyright",
        "/usr/share/doc/consortium-dns/README.md",
        "/lib/systemd/system/consortium-dns.service",
        "/lib/systemd/system/consortium-dns-pull.service",
        "/lib/systemd/system/consortium-dns-pull.timer",
        "/etc/consortium-dns/consortium-dns.toml",
        "/etc/consortium-dns/zones/consortium.example.zone",
        "/etc/consortium-dns/zones/consortium.example.members.toml",
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "the package lacks {path}:\n{listed}"
        );
    }
    let copyright = std::fs::read_to_string("/usr/share/doc/consortium-dns/copyright").expect("copyright");
    assert!(
        copyright.contains("Apache License"),
        "the copyright file carries the licence"
    );
    // An operator's edit of the config survives an upgrade: dpkg knows them as conffiles.
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    let conffiles = String::from_utf8_lossy(&conffiles.stdout);
    assert!(
        conffiles.contains("/etc/consortium-dns/consortium-dns.toml"),
        "the config is a conffile: {conffiles}"
    );
    // postinst made the credentials directory LoadCredential= needs, root's alone.
    let credentials = std::fs::metadata(format!("{ETC}/credentials")).expect("credentials directory");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&credentials.permissions()) & 0o777,
        0o700
    );

    // The installed units verify, their man page looked up through man(1).
    let units: Vec<PathBuf> = [
        "consortium-dns.service",
        "consortium-dns-pull.service",
        "consortium-dns-pull.timer",
    ]
    .iter()
    .map(|u| Path::new(UNIT_DIR).join(u))
    .collect();
    let unit_refs: Vec<&Path> = units.iter().map(PathBuf::as_path).collect();
    if let Err(why) = verify_units(&unit_refs, ManPages::Checked) {
        panic!("systemd-analyze verify rejects the installed units: {why}");
    }
    let page = run(Command::new("man")
        .args(["-P", "cat", "consortium-dns"])
        .env("MANWIDTH", "100"));
    let page = String::from_utf8_lossy(&page.stdout);
    for section in ["CONSORTIUM-DNS CTL RELOAD", "CONSORTIUM-DNS CHECK", "--config"] {
        assert!(
            page.contains(section),
            "`man consortium-dns` lacks {section}:\n{page}"
        );
    }
    // Bash completion loads and completes the commands.
    let completed = run(Command::new("bash").arg("-c").arg(
        "source /usr/share/bash-completion/completions/consortium-dns && \
         function=$(complete -p consortium-dns | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p') && \
         COMP_WORDS=(consortium-dns ct) COMP_CWORD=1 COMP_LINE='consortium-dns ct' COMP_POINT=17 && \
         \"$function\" consortium-dns ct consortium-dns && printf '%s\\n' \"${COMPREPLY[@]}\"",
    ));
    assert!(
        String::from_utf8_lossy(&completed.stdout)
            .lines()
            .any(|l| l == "ctl"),
        "bash completes `consortium-dns ct` to ctl: {}",
        String::from_utf8_lossy(&completed.stdout)
    );

    // Start it as systemd would: ExecStartPre (check), then ExecStart, with the unit's
    // StateDirectory as $STATE_DIRECTORY; on a high loopback port instead of :53, the admin
    // endpoint off so the machine's 8053 does not matter.
    let unit = std::fs::read_to_string(Path::new(UNIT_DIR).join("consortium-dns.service")).expect("unit");
    let state = tempfile::tempdir().expect("temp dir");
    let argv = |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_string).collect() };
    for pre in unit_values(&unit, "ExecStartPre") {
        let pre = argv(&pre);
        assert_eq!(
            pre[0], "/usr/bin/consortium-dns",
            "ExecStartPre runs the packaged binary"
        );
        run(Command::new(&pre[0])
            .args(&pre[1..])
            .env("STATE_DIRECTORY", state.path()));
    }
    let start = unit_values(&unit, "ExecStart");
    assert_eq!(start.len(), 1, "one ExecStart line: {start:?}");
    let start = argv(&start[0]);
    assert_eq!(
        start[0], "/usr/bin/consortium-dns",
        "ExecStart runs the packaged binary"
    );
    let port = free_port();
    let child = Command::new(&start[0])
        .args(&start[1..])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--http-listen", ""])
        .env("STATE_DIRECTORY", state.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the packaged command line");
    let _started = Started(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let target = cname_of(addr, "node1.consortium.example.", Duration::from_secs(15)).await;
    assert_eq!(
        target.as_deref(),
        Some("node1.operator-a.com."),
        "the installed example answers"
    );
    let shared = cname_of(addr, "any.consortium.example.", Duration::from_secs(5)).await;
    assert!(
        shared.is_some(),
        "the shared name answers (failing open: the example's probes fail)"
    );
    // The serials went to the StateDirectory, not beside the config in /etc.
    let until = Instant::now() + Duration::from_secs(5);
    while !state.path().join("state.json").exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        state.path().join("state.json").exists(),
        "state.json in $STATE_DIRECTORY"
    );
    assert!(!Path::new(ETC).join("consortium-dns.state.json").exists());
    drop(_started);

    drop(_installed);
    // Purged: nothing of it is left.
    for gone in [
        "/usr/bin/consortium-dns",
        ETC,
        "/lib/systemd/system/consortium-dns.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after dpkg --purge");
    }
}

/// `git` with a fixed identity, in `dir`.
fn git(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(program("git", "git", "the pull unit runs git"))
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Consortium",
            "-c",
            "user.email=ops@consortium.example",
        ])
        .args(args))
}

#[tokio::test]
async fn the_pull_unit_brings_a_member_merged_upstream_live() {
    let pull =
        std::fs::read_to_string(repo_root().join("systemd/consortium-dns-pull.service")).expect("pull unit");
    let timer =
        std::fs::read_to_string(repo_root().join("systemd/consortium-dns-pull.timer")).expect("timer");
    assert_eq!(
        unit_values(&pull, "ConditionPathExists"),
        ["/etc/consortium-dns/.git"]
    );
    assert!(
        !unit_values(&timer, "OnUnitActiveSec").is_empty(),
        "the timer repeats"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    for unit in ["consortium-dns-pull.service", "consortium-dns-pull.timer"] {
        std::fs::copy(repo_root().join("systemd").join(unit), dir.path().join(unit)).expect("copy unit");
    }
    let units = [
        dir.path().join("consortium-dns-pull.service"),
        dir.path().join("consortium-dns-pull.timer"),
    ];
    if let Err(why) = verify_units(&[&units[0], &units[1]], ManPages::Unchecked) {
        panic!("systemd-analyze verify rejects the pull units: {why}");
    }

    // The consortium's repository upstream, and this nameserver's clone of it.
    let upstream = Tree::example();
    git(upstream.dir.path(), &["init", "--quiet", "--initial-branch=main"]);
    git(upstream.dir.path(), &["add", "."]);
    git(
        upstream.dir.path(),
        &["commit", "--quiet", "-m", "the consortium"],
    );
    let node = tempfile::tempdir().expect("temp dir");
    let clone = node.path().join("consortium-dns");
    run(Command::new("git")
        .arg("clone")
        .arg("--quiet")
        .arg(upstream.dir.path())
        .arg(&clone));
    let config = Config::load(&clone.join("config/consortium-dns.toml")).expect("config of the clone");
    let server = app::start(config).await.expect("start on the clone");
    let addr = server.dns_addrs[0];
    assert_eq!(
        cname_of(addr, "node6.consortium.example.", Duration::ZERO).await,
        None,
        "node6 is not a member yet"
    );

    // A sixth member merged upstream...
    let members = "zones/consortium.example.members.toml";
    upstream.write(
        members,
        &(upstream.read(members) + "\n[[member]]\nlabel = \"node6\"\ntarget = \"node6.operator-f.org\"\n"),
    );
    git(upstream.dir.path(), &["commit", "--quiet", "-am", "node6 joins"]);
    // ...is live once the unit's ExecStart has run on this node.
    let exec = unit_values(&pull, "ExecStart");
    assert_eq!(exec.len(), 1);
    let exec = exec[0].replace(ETC, &clone.display().to_string());
    let argv: Vec<&str> = exec.split_whitespace().collect();
    run(Command::new(argv[0]).args(&argv[1..]));
    let target = cname_of(addr, "node6.consortium.example.", Duration::from_secs(5)).await;
    assert_eq!(
        target.as_deref(),
        Some("node6.operator-f.org."),
        "node6 live after the pull"
    );
    // Negative control: a history rewritten upstream is refused, and the member stays.
    git(upstream.dir.path(), &["reset", "--quiet", "--hard", "HEAD~1"]);
    git(
        upstream.dir.path(),
        &["commit", "--quiet", "--allow-empty", "-m", "rewritten"],
    );
    let refused = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run git pull");
    assert!(!refused.status.success(), "a non-fast-forward pull is refused");
    assert_eq!(
        cname_of(addr, "node6.consortium.example.", Duration::ZERO)
            .await
            .as_deref(),
        Some("node6.operator-f.org.")
    );
    server.shutdown(Duration::from_secs(1)).await;
}
