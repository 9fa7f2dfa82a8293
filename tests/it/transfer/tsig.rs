//! TSIG beyond transfers: signed ordinary queries, and key material never logged by the real
//! binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::*;
use crate::common::unix_now;

/// RFC 8945 beyond transfers: an ordinary query signed with a configured key gets a signed
/// answer over UDP and TCP (verified here and by BIND's dig); a wrong secret gets NOTAUTH with
/// an unsigned BADSIG, an unknown key BADKEY; an unsigned query stays unsigned.
#[tokio::test(flavor = "multi_thread")]
async fn signed_queries_get_signed_answers() {
    let key = Key::transfer();
    let tree = Tree::example();
    configure(&tree, "", &[&key]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let node1 = format!("node1.{ORIGIN}");
    let target = common::name("node1.operator-a.com.");
    let query = |id: u16| {
        let mut message = common::query(&node1, RecordType::A, Some(1232));
        message.metadata.id = id;
        message.to_vec().expect("query encodes")
    };
    let rcode = |raw: &[u8]| raw[3] & 0x0f;

    let mut signed = query(1);
    let request_mac = sign_request(&mut signed, &key, unix_now());
    let udp = common::udp_raw(dns, &signed).await.expect("a UDP answer");
    let tcp = common::tcp_raw(dns, std::slice::from_ref(&signed), 1)
        .await
        .remove(0);
    for (transport, raw) in [("UDP", &udp), ("TCP", &tcp)] {
        let tsig = verify_response(std::slice::from_ref(raw), &key, &request_mac)
            .unwrap_or_else(|e| panic!("{transport}: the answer's TSIG: {e}"));
        assert_eq!((tsig.error, tsig.original_id), (0, 1), "{transport}");
        assert!(tsig.time.abs_diff(unix_now()) <= 5, "{transport}: signed now");
        let message = Message::from_vec(raw).expect("a signed answer parses");
        assert_eq!(
            message.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(
            message
                .answers
                .iter()
                .any(|r| matches!(&r.data, RData::CNAME(c) if c.0 == target)),
            "{transport}: the answer is node1's CNAME: {:?}",
            message.answers
        );
    }

    // A wrong secret and an unknown key: NOTAUTH, the TSIG error, no MAC (RFC 8945 §5.2.2).
    let wrong = Key {
        secret: b"not the consortium's secret, 32!".to_vec(),
        ..key.clone()
    };
    let stranger = Key {
        name: "unknown-key",
        ..key.clone()
    };
    for (id, bad, error) in [(2, &wrong, 16), (3, &stranger, 17)] {
        let mut message = query(id);
        sign_request(&mut message, bad, unix_now());
        let raw = common::udp_raw(dns, &message).await.expect("an answer");
        let tsig = raw_tsig(&raw).unwrap_or_else(|| panic!("{}: the refusal carries a TSIG", bad.name));
        assert_eq!(rcode(&raw), 9, "{}: NOTAUTH", bad.name);
        assert_eq!((tsig.error, tsig.mac.len()), (error, 0), "{}", bad.name);
    }

    let plain = common::udp_raw(dns, &query(4)).await.expect("an answer");
    assert_eq!(rcode(&plain), 0);
    assert!(
        raw_tsig(&plain).is_none(),
        "an unsigned query gets an unsigned answer"
    );

    // An outside judge: dig verifies the answer's TSIG and complains when it fails.
    let run = |key: &Key| dig_signed(dns, key, &[node1.as_str(), "A"]);
    let text = run(&key);
    assert!(
        text.contains("status: NOERROR")
            && text.contains("node1.operator-a.com.")
            && text.contains("TSIG PSEUDOSECTION")
            && !text.contains("Couldn't verify")
            && !text.contains("failure"),
        "dig -y accepts the signed answer:\n{text}"
    );
    let text = run(&wrong);
    assert!(
        text.contains("status: NOTAUTH") && text.contains("BADSIG"),
        "dig with a wrong secret sees NOTAUTH/BADSIG:\n{text}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Runs the real binary with a TSIG key at trace level through failing and succeeding
/// transfers, refused UPDATEs, a signed NOTIFY, a reload that fails on a damaged key file and
/// `check` on it: the secret shows up nowhere in what it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_material_never_logged() {
    let key = Key::transfer();
    let tree = Tree::example();
    // A secondary that takes NOTIFYs and never answers them, so retries are logged too.
    let secondary = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind secondary");
    let secondary_addr = secondary.local_addr().expect("address");
    configure(
        &tree,
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{k}\" }}]\n\
             notify = [{{ address = \"{secondary_addr}\", key = \"{k}\" }}]\n",
            k = key.name
        ),
        &[&key],
    );
    let port = common::free_port();
    let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stderr_path = tree.path("stderr.log");
    let stdout_path = tree.path("stdout.log");
    let mut child = Command::new(common::binary())
        .arg("serve")
        .arg("--config")
        .arg(tree.config_path())
        .arg("--listen")
        .arg(dns.to_string())
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start consortium-dns");
    let pid = child.id().to_string();
    let started = Instant::now();
    while served_serial(dns).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the binary did not answer; its log:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the binary exited with {status}:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The NOTIFY sent at start is signed with the key.
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), secondary.recv_from(&mut buf))
        .await
        .expect("a NOTIFY within 5 s")
        .expect("receive");
    let notify = buf[..n].to_vec();
    assert_eq!((notify[2] >> 3) & 0x0f, 4, "opcode NOTIFY");
    verify_response(&[notify], &key, &[]).unwrap_or_else(|e| panic!("the NOTIFY's TSIG: {e}"));

    // Failing transfers: unsigned, a wrong secret, an unknown key, a skewed clock.
    let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let t = transfer(dns, &axfr_request(1), localhost).await;
    assert_eq!(t.form, Form::Error(ResponseCode::Refused));
    for (id, signer, time) in [
        (
            2,
            Key {
                secret: b"not the consortium's secret, 32!".to_vec(),
                ..key.clone()
            },
            unix_now(),
        ),
        (
            3,
            Key {
                name: "stranger-key",
                ..key.clone()
            },
            unix_now(),
        ),
        (4, key.clone(), unix_now() - 7_200),
    ] {
        let mut request = axfr_request(id);
        sign_request(&mut request, &signer, time);
        let t = transfer(dns, &request, localhost).await;
        assert_eq!(t.form, Form::Error(ResponseCode::NotAuth), "request {id}");
    }
    // UPDATEs: signed with the key (no member's update-key: refused, the key's name logged),
    // with a wrong secret, and unsigned.
    let node1 = format!("_acme-challenge.node1.{ORIGIN}");
    let value = update::txt_rdata("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0");
    for (id, signer) in [
        (6, Some(key.clone())),
        (
            7,
            Some(Key {
                secret: b"not the consortium's secret, 32!".to_vec(),
                ..key.clone()
            }),
        ),
        (8, None),
    ] {
        let mut update = update::raw_update(id, &[(&node1, 16, 1, 60, value.clone())], true);
        if let Some(signer) = &signer {
            sign_request(&mut update, signer, unix_now());
        }
        let answer = common::udp_raw(dns, &update)
            .await
            .expect("the UPDATE is answered");
        assert!(matches!(common::raw_rcode(&answer), 5 | 9), "update {id} refused");
    }
    // A succeeding one.
    let mut request = axfr_request(5);
    let request_mac = sign_request(&mut request, &key, unix_now());
    let t = transfer(dns, &request, localhost).await;
    assert_eq!(t.form, Form::Full);
    verify_response(&t.messages, &key, &request_mac).unwrap_or_else(|e| panic!("{e}"));

    // A damaged key file (the secret with a character base64 does not have): the reload
    // fails and says where, without quoting the file.
    let key_file = format!("config/{}.key", key.name);
    tree.replace(&key_file, &format!("{}*\n", key.base64()));
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("send SIGHUP");
    assert!(status.success());
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if log.contains("holds no valid base64 secret") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failed reload was not logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = Command::new(common::binary())
        .arg("check")
        .arg("--config")
        .arg(tree.config_path())
        .env("RUST_LOG", "trace")
        .output()
        .expect("run check");
    assert!(!check.status.success(), "check fails on the damaged key file");
    assert!(
        std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .contains("update refused"),
        "the refused UPDATEs are logged"
    );
    // The NOTIFY nobody acknowledges is logged when its first attempt times out: wait for that
    // line, so the search below covers the NOTIFY path however fast the steps above ran.
    let started = Instant::now();
    while !std::fs::read_to_string(&stderr_path)
        .unwrap_or_default()
        .contains("NOTIFY")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no NOTIFY line was logged within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let output = format!(
        "{}{}{}{}",
        std::fs::read_to_string(&stderr_path).expect("stderr"),
        std::fs::read_to_string(&stdout_path).expect("stdout"),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
    );
    // The log covers what happened (so the search below is not vacuous).
    for expected in ["transfer refused", "TSIG", "NOTIFY", "reload failed", key.name] {
        assert!(output.contains(expected), "the output mentions {expected:?}");
    }
    let encoded = key.base64();
    let hex = common::hex(&key.secret);
    let secret_text = String::from_utf8(key.secret.clone()).expect("ASCII secret");
    let byte_list = format!("{:?}", key.secret);
    for (form, leak) in [
        ("base64", encoded.as_str()),
        ("base64 without padding", encoded.trim_end_matches('=')),
        ("hex", hex.as_str()),
        ("raw", secret_text.as_str()),
        ("Debug bytes", byte_list.as_str()),
    ] {
        assert!(
            !output.contains(leak),
            "the secret ({form}) appears in the output of consortium-dns"
        );
    }
    eprintln!(
        "key_material_never_logged: {} bytes of trace-level output searched",
        output.len()
    );
}
