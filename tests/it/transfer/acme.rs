//! End to end with real ACME software from Debian's packages (issue 18): pebble, the ACME test
//! CA, checks its DNS-01 challenges against consortium-dns; certbot with
//! python3-certbot-dns-rfc2136 and lego's rfc2136 provider publish them with the operators'
//! own keys; `openssl s_server` then serves operator 1's certificate, and node1's health
//! report must show it covering the node name and the shared name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::update::{op_a, op_b, update_tree};
use super::*;
use crate::common::{edit, free_port};

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections at `addr`.
async fn wait_listening(addr: SocketAddr, what: &str, child: &mut Running, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "{what} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a command to its end off the async workers; panics with its output on failure.
async fn run(what: &'static str, mut command: Command) -> String {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("task")
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// pebble on loopback with a TLS certificate of its own (made with openssl), sending its DNS
/// queries to `dns`. Returns (the process, its directory URL, the CA file that trusts its
/// HTTPS, its management address).
async fn start_pebble(dir: &Path, dns: SocketAddr) -> (Running, String, PathBuf, SocketAddr) {
    let openssl = program(
        "openssl",
        "openssl",
        "the ACME test makes pebble's TLS certificate",
    );
    let pebble = program(
        "pebble",
        "pebble",
        "pebble is the ACME CA of the certificate test",
    );
    let (tls_cert, tls_key) = (dir.join("pebble-tls.pem"), dir.join("pebble-tls.key"));
    let mut make = Command::new(openssl);
    make.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ])
    .arg("-keyout")
    .arg(&tls_key)
    .arg("-out")
    .arg(&tls_cert)
    .args([
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    run("openssl req", make).await;
    let (api, management) = (free_port(), free_port());
    let config = format!(
        r#"{{"pebble": {{"listenAddress": "127.0.0.1:{api}", "managementListenAddress": "127.0.0.1:{management}",
            "certificate": "{}", "privateKey": "{}", "httpPort": {}, "tlsPort": {},
            "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
        tls_cert.display(),
        tls_key.display(),
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("pebble.json"), config).expect("pebble config");
    let log = dir.join("pebble.log");
    let child = Command::new(pebble)
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .arg("-dnsserver")
        .arg(dns.to_string())
        // Validate at once, and never reject a nonce on purpose: the test is about DNS.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(std::fs::File::create(&log).expect("pebble log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run pebble");
    let mut child = Running(child);
    let api_addr: SocketAddr = ([127, 0, 0, 1], api).into();
    wait_listening(api_addr, "pebble", &mut child, &log).await;
    (
        child,
        format!("https://127.0.0.1:{api}/dir"),
        tls_cert,
        ([127, 0, 0, 1], management).into(),
    )
}

/// certbot with certbot-dns-rfc2136: a certificate for `names`, the challenges published
/// with `key`. Returns certbot's live directory for the first name.
fn certbot(dir: &Path, directory: &str, ca: &Path, dns: SocketAddr, key: &Key, names: &[&str]) -> Command {
    let certbot = program(
        "certbot",
        "certbot",
        "certbot is one of the ACME clients of the certificate test",
    );
    program(
        "certbot",
        "python3-certbot-dns-rfc2136",
        "certbot's RFC 2136 plugin publishes the challenges",
    );
    let credentials = dir.join(format!("{}.ini", key.name));
    std::fs::write(
        &credentials,
        format!(
            "dns_rfc2136_server = 127.0.0.1\ndns_rfc2136_port = {}\ndns_rfc2136_name = {}\n\
             dns_rfc2136_secret = {}\ndns_rfc2136_algorithm = {}\n",
            dns.port(),
            key.name,
            key.base64(),
            key.algorithm_text().to_ascii_uppercase()
        ),
    )
    .expect("credentials");
    // certbot warns about credentials others can read.
    std::fs::set_permissions(&credentials, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let mut command = Command::new(certbot);
    command
        .env("REQUESTS_CA_BUNDLE", ca)
        .args([
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "-m",
            "op@operator.example",
        ])
        .args(["--server", directory])
        .arg("--config-dir")
        .arg(dir.join("certbot/config"))
        .arg("--work-dir")
        .arg(dir.join("certbot/work"))
        .arg("--logs-dir")
        .arg(dir.join("certbot/logs"))
        .args(["--dns-rfc2136", "--dns-rfc2136-propagation-seconds", "1"])
        .arg("--dns-rfc2136-credentials")
        .arg(&credentials);
    for name in names {
        command.args(["-d", name]);
    }
    command
}

/// lego's rfc2136 provider: a certificate for `names`, the challenges published with `key`.
fn lego(dir: &Path, directory: &str, ca: &Path, dns: SocketAddr, key: &Key, names: &[&str]) -> Command {
    let lego = program(
        "lego",
        "lego",
        "lego is one of the ACME clients of the certificate test",
    );
    let mut command = Command::new(lego);
    command
        .env("LEGO_CA_CERTIFICATES", ca)
        .env("RFC2136_NAMESERVER", dns.to_string())
        .env("RFC2136_TSIG_KEY", key.name)
        .env("RFC2136_TSIG_SECRET", key.base64())
        .env("RFC2136_TSIG_ALGORITHM", format!("{}.", key.algorithm_text()))
        // Seconds: no waiting between names, a short propagation check.
        .env("RFC2136_SEQUENCE_INTERVAL", "1")
        .env("RFC2136_PROPAGATION_TIMEOUT", "20")
        .env("RFC2136_POLLING_INTERVAL", "1")
        .args([
            "--accept-tos",
            "--email",
            "op@operator.example",
            "--server",
            directory,
        ])
        .arg("--path")
        .arg(dir.join(format!("lego-{}", key.name)))
        .args(["--dns", "rfc2136", "--dns.resolvers", &dns.to_string()])
        // Its check of every NS of the zone would go to port 53 of the NS names' addresses;
        // the test's DNS is one loopback port.
        .arg("--dns.disable-cp");
    for name in names {
        command.args(["--domains", name]);
    }
    command.arg("run");
    command
}

/// The PEM certificate a client wrote covers each of `names` (as openssl reads it).
async fn assert_covers(cert: &Path, names: &[&str], client_output: &str) {
    let mut command = Command::new(program("openssl", "openssl", "reading the issued certificate"));
    command
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert);
    let covered = run("openssl x509", command).await;
    for name in names {
        assert!(
            covered.contains(&format!("DNS:{name}")),
            "{} covers {name}: {covered}\n{client_output}",
            cert.display()
        );
    }
}

/// Operator 1 gets a certificate for its own hostname, its node name and the shared name
/// from pebble through certbot, while operator 2 gets one for its node and the shared name
/// through lego at the same time; operator 1 again through lego. A local HTTPS endpoint
/// serving operator 1's certificate then makes node1's health report show it covering its
/// node name and the shared name.
#[tokio::test(flavor = "multi_thread")]
async fn operators_get_their_own_certificates_from_an_acme_ca() {
    // The node's own hostname must be covered too (the probe verifies it). Its challenge
    // lives in its operator's own DNS: here a second zone on the same server, where the same
    // key may publish it, so that pebble can ask one server for everything.
    let tree = update_tree("", &[]);
    edit(
        &tree,
        MEMBERS_FILE,
        "target = \"node1.operator-a.com\"",
        "target = \"node1.operator-a.test\"",
    );
    tree.write(
        "zones/operator-a.test.zone",
        "$ORIGIN operator-a.test.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ NS ns1.consortium.example.\n",
    );
    tree.write(
        "zones/operator-a.test.members.toml",
        "[[member]]\nlabel = \"node1\"\ntarget = \"backend.operator-a.net\"\nupdate-key = \"op-a\"\n",
    );
    let mut config = tree.read("config/consortium-dns.toml");
    config.push_str(
        "\n[[zone]]\norigin = \"operator-a.test\"\nfile = \"../zones/operator-a.test.zone\"\n\
         members = \"../zones/operator-a.test.members.toml\"\n",
    );
    tree.write("config/consortium-dns.toml", &config);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let work = tempfile::tempdir().expect("temp dir");
    let (_pebble, directory, pebble_tls, management) = start_pebble(work.path(), dns).await;

    let (node1, any, own) = (
        format!("node1.{}", ORIGIN.trim_end_matches('.')),
        format!("any.{}", ORIGIN.trim_end_matches('.')),
        "node1.operator-a.test".to_string(),
    );
    let node2 = format!("node2.{}", ORIGIN.trim_end_matches('.'));
    let (a, b) = (op_a(), op_b());
    // Both operators issue for the shared name at once.
    let (certbot_out, lego_out) = tokio::join!(
        run(
            "certbot (operator 1)",
            certbot(
                work.path(),
                &directory,
                &pebble_tls,
                dns,
                &a,
                &[&own, &node1, &any]
            )
        ),
        run(
            "lego (operator 2)",
            lego(work.path(), &directory, &pebble_tls, dns, &b, &[&node2, &any])
        )
    );
    let live = work.path().join(format!("certbot/config/live/{own}"));
    assert_covers(&live.join("cert.pem"), &[&own, &node1, &any], &certbot_out).await;
    let lego_cert = work.path().join(format!("lego-op-b/certificates/{node2}.crt"));
    assert_covers(&lego_cert, &[&node2, &any], &lego_out).await;
    // Operator 1 again, through lego.
    let again = run(
        "lego (operator 1)",
        lego(work.path(), &directory, &pebble_tls, dns, &a, &[&node1, &any]),
    )
    .await;
    let lego_again = work.path().join(format!("lego-op-a/certificates/{node1}.crt"));
    assert_covers(&lego_again, &[&node1, &any], &again).await;
    // The clients cleaned up: no challenge value is left behind.
    for label in ["node1", "node2", "any"] {
        let (_, records) = answer_of(dns, &format!("_acme-challenge.{label}.{ORIGIN}"), RecordType::TXT)
            .await
            .expect("answer");
        assert!(
            records.is_empty(),
            "_acme-challenge.{label} cleaned up: {records:?}"
        );
    }

    // Serve operator 1's certificate and point node1's probe at it, trusting pebble's root.
    let mut curl = Command::new(program("curl", "curl", "fetching pebble's root certificate"));
    curl.args(["-fsS", "--cacert"])
        .arg(&pebble_tls)
        .arg(format!("https://{management}/roots/0"));
    let root = run("curl pebble root", curl).await;
    tree.write("zones/pebble-root.pem", &root);
    let port = free_port();
    let s_server_log = work.path().join("s_server.log");
    let mut s_server = Running(
        Command::new(program(
            "openssl",
            "openssl",
            "serving the issued certificate over HTTPS",
        ))
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-cert")
        .arg(live.join("cert.pem"))
        .arg("-cert_chain")
        .arg(live.join("chain.pem"))
        .arg("-key")
        .arg(live.join("privkey.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&s_server_log).expect("log"))
        .spawn()
        .expect("run openssl s_server"),
    );
    wait_listening(
        ([127, 0, 0, 1], port).into(),
        "openssl s_server",
        &mut s_server,
        &s_server_log,
    )
    .await;
    edit(
        &tree,
        MEMBERS_FILE,
        "update-key = \"op-a\"\nweight = 2\n",
        &format!(
            "update-key = \"op-a\"\nweight = 2\n[member.health]\nkind = \"https\"\naddress = \"127.0.0.1:{port}\"\n\
             ca-file = \"pebble-root.pem\"\ninterval = \"1s\"\ntimeout = \"500ms\"\njitter = \"100ms\"\nrise = 1\n"
        ),
    );
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = consortium_dns::http::status(&server.control);
        let member = doc
            .health
            .pools
            .iter()
            .find(|p| p.name.starts_with("any."))
            .and_then(|p| p.members.iter().find(|m| m.label == "node1"))
            .expect("node1 in the pool any");
        if let Some(cert) = &member.certificate {
            assert!(
                cert.covers_node && cert.covers_pool,
                "operator 1's certificate covers node1 and any: {member:#?}"
            );
            assert_eq!(member.state, "up", "{member:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate seen by node1's probe: {member:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown(Duration::from_secs(1)).await;
}
