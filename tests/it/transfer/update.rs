//! RFC 2136 UPDATE scoped to each member's ACME challenges (issue 18): BIND's `nsupdate` as
//! the operators' client, raw signed messages for what nsupdate cannot send (replays, stale
//! times, EDNS for the extended error), NSD as a secondary that must serve the challenge.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::secondaries::Polled;
use super::*;
use crate::common::{Nsd, edit, free_port, http_request, unix_now};

/// Three values shaped like ACME key-authorisation digests (43 base64url characters).
const V1: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const V2: &str = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
const V3: &str = "Ex-op-b-challenge-value-for-the-shared-name";
const V4: &str = "op-b-second-value-that-op-a-must-not-remove";
const V5: &str = "part-of-a-batch-that-is-refused-as-a-whole0";

pub(super) fn op_a() -> Key {
    Key {
        name: "op-a",
        algorithm: Algorithm::HmacSha256,
        secret: b"operator A's own update secret!!".to_vec(),
    }
}

pub(super) fn op_b() -> Key {
    Key {
        name: "op-b",
        algorithm: Algorithm::HmacSha512,
        secret: b"operator B's own update secret, for HMAC-SHA512 updates".to_vec(),
    }
}

fn challenge(label: &str) -> String {
    format!("_acme-challenge.{label}.{ORIGIN}")
}

/// The example tree where node1's operator holds `op-a` and node2's `op-b` (both members are
/// in the pool `any`), with `zone_lines` added to the `[[zone]]` table.
pub(super) fn update_tree(zone_lines: &str, other_keys: &[&Key]) -> Tree {
    let tree = Tree::example();
    let (a, b) = (op_a(), op_b());
    let mut keys = vec![&a, &b];
    keys.extend_from_slice(other_keys);
    configure(&tree, zone_lines, &keys);
    edit(
        &tree,
        MEMBERS_FILE,
        "target = \"node1.operator-a.com\"\n",
        "target = \"node1.operator-a.com\"\nupdate-key = \"op-a\"\n",
    );
    edit(
        &tree,
        MEMBERS_FILE,
        "target = \"api.operator-b.net\"\n",
        "target = \"api.operator-b.net\"\nupdate-key = \"op-b\"\n",
    );
    tree
}

/// Runs `nsupdate` (over TCP with `tcp`) with `commands` for the zone, signed with `key`:
/// success and what it printed.
pub(super) async fn nsupdate(
    server: SocketAddr,
    key: Option<&Key>,
    commands: &[&str],
    tcp: bool,
) -> (bool, String) {
    let binary = program(
        "nsupdate",
        "bind9-dnsutils",
        "nsupdate is the RFC 2136 client the update tests drive",
    );
    // `check-names no`: nsupdate would refuse an A record at an underscore name itself, and
    // the test wants the server's answer.
    let mut script = format!(
        "check-names no\nserver 127.0.0.1 {}\nzone {ORIGIN}\n",
        server.port()
    );
    for command in commands {
        script.push_str(command);
        script.push('\n');
    }
    script.push_str("send\n");
    let key_arg = key.map(Key::dig_arg);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(binary);
        if tcp {
            command.arg("-v");
        }
        if let Some(key) = &key_arg {
            command.args(["-y", key]);
        }
        let mut child = command
            .args(["-t", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsupdate");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write the nsupdate script");
        let output = child.wait_with_output().expect("nsupdate output");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    })
    .await
    .expect("nsupdate task")
}

/// The TXT values served at `name` (character-strings joined), sorted.
async fn txt_values(server: SocketAddr, name: &str) -> BTreeSet<String> {
    let (_, records) = answer_of(server, name, RecordType::TXT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    records
        .iter()
        .filter(|r| r.rtype == u16::from(RecordType::TXT))
        .map(|r| txt_text(&r.rdata))
        .collect()
}

fn txt_text(rdata: &[u8]) -> String {
    let mut text = String::new();
    let mut pos = 0;
    while pos < rdata.len() {
        let len = usize::from(rdata[pos]);
        text.push_str(&String::from_utf8_lossy(&rdata[pos + 1..pos + 1 + len]));
        pos += 1 + len;
    }
    text
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// What a refused update must leave as it was: the serial and every name it could touch.
async fn observable(server: SocketAddr) -> (Option<u32>, Vec<(ResponseCode, BTreeSet<Rr>)>) {
    let mut answers = Vec::new();
    for (name, rtype) in [
        (challenge("node1"), RecordType::TXT),
        (challenge("node2"), RecordType::TXT),
        (challenge("any"), RecordType::TXT),
        (challenge("node1"), RecordType::A),
        (ORIGIN.to_string(), RecordType::NS),
        (format!("www.{ORIGIN}"), RecordType::TXT),
        (format!("www.{ORIGIN}"), RecordType::A),
    ] {
        answers.push(
            answer_of(server, &name, rtype)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    (served_serial(server).await, answers)
}

/// Operators publish their own challenges, over UDP and TCP, and nothing else: every other
/// name, type or key is refused (as nsupdate reports it) and leaves the answers as they were;
/// an RRset delete removes only the deleting key's values.
#[tokio::test(flavor = "multi_thread")]
async fn each_operator_changes_only_its_own_challenges() {
    let tree = update_tree("", &[]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let (a, b) = (op_a(), op_b());
    let serial_before = served_serial(dns).await.expect("serial");

    // 1. op-a publishes node1's challenge over UDP: served at once, TTL 0, serial raised.
    let node1 = challenge("node1");
    let (ok, out) = nsupdate(
        dns,
        Some(&a),
        &[&format!("update add {node1} 60 TXT \"{V1}\"")],
        false,
    )
    .await;
    assert!(ok, "op-a adds its node's challenge:\n{out}");
    assert_eq!(txt_values(dns, &node1).await, set(&[V1]));
    let (_, records) = answer_of(dns, &node1, RecordType::TXT).await.expect("answer");
    assert!(
        records.iter().all(|r| r.ttl == 0),
        "acme-challenge-ttl 0: {records:?}"
    );
    let serial_after = served_serial(dns).await.expect("serial");
    assert!(
        serial_after != serial_before,
        "an accepted update raises the serial ({serial_before} -> {serial_after})"
    );

    // 2. Both operators publish at the shared name at once (op-a over TCP).
    let any = challenge("any");
    let add_a = format!("update add {any} 60 TXT \"{V2}\"");
    let add_b = format!("update add {any} 60 TXT \"{V3}\"");
    let (commands_a, commands_b) = ([add_a.as_str()], [add_b.as_str()]);
    let (first, second) = tokio::join!(
        nsupdate(dns, Some(&a), &commands_a, true),
        nsupdate(dns, Some(&b), &commands_b, false)
    );
    assert!(
        first.0 && second.0,
        "both operators' updates succeed:\n{}\n{}",
        first.1,
        second.1
    );
    assert_eq!(txt_values(dns, &any).await, set(&[V2, V3]));

    // 3. acme.sh's cleanup deletes the whole RRset: only op-b's own value goes.
    let (ok, out) = nsupdate(dns, Some(&b), &[&format!("update delete {any} TXT")], false).await;
    assert!(ok, "op-b's RRset delete succeeds:\n{out}");
    assert_eq!(txt_values(dns, &any).await, set(&[V2]), "op-a's value stays");
    let (ok, out) = nsupdate(
        dns,
        Some(&b),
        &[&format!("update add {any} 60 TXT \"{V4}\"")],
        false,
    )
    .await;
    assert!(ok, "{out}");

    // 4. Refusals, each leaving every answer as it was.
    let node2 = challenge("node2");
    let refused: Vec<(&str, Option<&Key>, Vec<String>, &str)> = vec![
        (
            "another member's name",
            Some(&a),
            vec![format!("update add {node2} 60 TXT \"{V1}\"")],
            "REFUSED",
        ),
        (
            "an A record",
            Some(&a),
            vec![format!("update add {node1} 60 A 192.0.2.1")],
            "REFUSED",
        ),
        (
            "the apex NS",
            Some(&a),
            vec![format!("update delete {ORIGIN} NS")],
            "REFUSED",
        ),
        (
            "a name outside _acme-challenge",
            Some(&a),
            vec![format!("update add www.{ORIGIN} 60 TXT \"{V1}\"")],
            "REFUSED",
        ),
        (
            "a value not shaped like ACME's",
            Some(&a),
            vec![format!("update add {node1} 60 TXT \"hello\"")],
            "REFUSED",
        ),
        (
            "a batch with one record out of scope",
            Some(&a),
            vec![
                format!("update add {node1} 60 TXT \"{V5}\""),
                format!("update add {node2} 60 TXT \"{V5}\""),
            ],
            "REFUSED",
        ),
        (
            "an unsigned update",
            None,
            vec![format!("update add {node1} 60 TXT \"{V5}\"")],
            "REFUSED",
        ),
    ];
    for (what, key, commands, expected) in refused {
        let before = observable(dns).await;
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        let (ok, out) = nsupdate(dns, key, &commands, false).await;
        assert!(
            !ok && out.contains(expected),
            "{what}: nsupdate must fail with {expected}:\n{out}"
        );
        assert_eq!(
            observable(dns).await,
            before,
            "{what}: the answers are as they were"
        );
    }
    // A wrong secret and an unknown key: NOTAUTH with the TSIG error (RFC 8945 §5.2).
    for (what, key, expected) in [
        (
            "a wrong secret",
            Key {
                secret: b"not operator A's secret at all!!".to_vec(),
                ..a.clone()
            },
            "BADSIG",
        ),
        (
            "an unknown key",
            Key {
                name: "op-z",
                ..a.clone()
            },
            "BADKEY",
        ),
    ] {
        let before = observable(dns).await;
        let (ok, out) = nsupdate(
            dns,
            Some(&key),
            &[&format!("update add {node1} 60 TXT \"{V5}\"")],
            false,
        )
        .await;
        assert!(
            !ok && out.contains(expected),
            "{what}: nsupdate must report {expected}:\n{out}"
        );
        assert_eq!(
            observable(dns).await,
            before,
            "{what}: the answers are as they were"
        );
    }
    // op-a deleting op-b's value by name and value: accepted (RFC 2136 §3.4.2.4: a delete of
    // what is not there is no error) but op-b's value stays.
    let (ok, out) = nsupdate(
        dns,
        Some(&a),
        &[&format!("update delete {any} TXT \"{V4}\"")],
        false,
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(
        txt_values(dns, &any).await,
        set(&[V2, V4]),
        "op-a cannot remove op-b's value"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// An UPDATE as nsupdate would send it: zone section, then `updates` (name, type, class, TTL,
/// RDATA), then an OPT record when `edns`.
pub(super) fn raw_update(id: u16, updates: &[(&str, u16, u16, u32, Vec<u8>)], edns: bool) -> Vec<u8> {
    let mut message = common::raw_header(id, 5 << 11, [1, 0, updates.len() as u16, u16::from(edns)]);
    message.extend_from_slice(&common::raw_question(ORIGIN, 6, 1));
    for (name, rtype, class, ttl, rdata) in updates {
        message.extend_from_slice(&raw_name(name));
        message.extend_from_slice(&rtype.to_be_bytes());
        message.extend_from_slice(&class.to_be_bytes());
        message.extend_from_slice(&ttl.to_be_bytes());
        message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        message.extend_from_slice(rdata);
    }
    if edns {
        message.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    message
}

pub(super) fn txt_rdata(value: &str) -> Vec<u8> {
    let mut rdata = vec![value.len() as u8];
    rdata.extend_from_slice(value.as_bytes());
    rdata
}

/// Where a message's records start (after its question section).
fn wire_question_end(message: &[u8]) -> Option<usize> {
    let mut pos = 12;
    for _ in 0..u16_at(message, 4)? {
        pos = skip_name(message, pos)? + 4;
    }
    Some(pos)
}

/// The EDE (RFC 8914) of a response's OPT record: info code and text.
fn extended_error(response: &[u8]) -> Option<(u16, String)> {
    let mut pos = wire_question_end(response)?;
    let counts = usize::from(u16_at(response, 6)?)
        + usize::from(u16_at(response, 8)?)
        + usize::from(u16_at(response, 10)?);
    for _ in 0..counts {
        let after = skip_name(response, pos)?;
        let rtype = u16_at(response, after)?;
        let rdlen = usize::from(u16_at(response, after + 8)?);
        let rdata = response.get(after + 10..after + 10 + rdlen)?;
        if rtype == 41 {
            let mut o = 0;
            while o + 4 <= rdata.len() {
                let code = u16::from_be_bytes([rdata[o], rdata[o + 1]]);
                let len = usize::from(u16::from_be_bytes([rdata[o + 2], rdata[o + 3]]));
                let value = rdata.get(o + 4..o + 4 + len)?;
                if code == 15 && value.len() >= 2 {
                    let info = u16::from_be_bytes([value[0], value[1]]);
                    return Some((info, String::from_utf8_lossy(&value[2..]).into_owned()));
                }
                o += 4 + len;
            }
        }
        pos = after + 10 + rdlen;
    }
    None
}

/// What nsupdate cannot show: a refusal names the rule in an EDE 18 text and is signed with
/// the request's key; a replayed request and one signed 1,000 s ago are refused (NOTAUTH,
/// BADTIME) and change nothing; the accepted answer is signed.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_name_the_rule_and_replays_fail() {
    let tree = update_tree("", &[]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let a = op_a();
    let node1 = challenge("node1");
    let node2 = challenge("node2");

    let mut out_of_scope = raw_update(0x1111, &[(&node2, 16, 1, 60, txt_rdata(V1))], true);
    let mac = sign_request(&mut out_of_scope, &a, unix_now());
    let answer = common::udp_raw(dns, &out_of_scope).await.expect("an answer");
    assert_eq!(common::raw_rcode(&answer), 5, "REFUSED");
    let (code, text) = extended_error(&answer).expect("an extended DNS error");
    assert_eq!(code, 18, "EDE 18 Prohibited");
    assert!(
        text.contains(&node1) && text.contains("op-a"),
        "the text names the rule (the key and its names): {text:?}"
    );
    verify_response(&[answer], &a, &mac).unwrap_or_else(|e| panic!("the refusal is signed: {e}"));

    // Accepted, then replayed byte for byte.
    let mut add = raw_update(0x2222, &[(&node1, 16, 1, 60, txt_rdata(V1))], false);
    let mac = sign_request(&mut add, &a, unix_now());
    let answer = common::udp_raw(dns, &add).await.expect("an answer");
    assert_eq!(common::raw_rcode(&answer), 0, "NOERROR");
    verify_response(&[answer], &a, &mac).unwrap_or_else(|e| panic!("the answer is signed: {e}"));
    let mut delete = raw_update(0x3333, &[(&node1, 16, 254, 0, txt_rdata(V1))], false);
    sign_request(&mut delete, &a, unix_now());
    let answer = common::udp_raw(dns, &delete).await.expect("an answer");
    assert_eq!(common::raw_rcode(&answer), 0, "the delete is accepted");
    assert!(txt_values(dns, &node1).await.is_empty());
    let replayed = common::udp_raw(dns, &add).await.expect("an answer");
    assert_eq!(common::raw_rcode(&replayed), 9, "a replayed add: NOTAUTH");
    assert_eq!(raw_tsig(&replayed).map(|t| t.error), Some(18), "BADTIME");
    assert!(
        txt_values(dns, &node1).await.is_empty(),
        "the replay changed nothing"
    );

    let mut stale = raw_update(0x4444, &[(&node1, 16, 1, 60, txt_rdata(V2))], false);
    sign_request(&mut stale, &a, unix_now() - 1_000);
    let answer = common::udp_raw(dns, &stale).await.expect("an answer");
    assert_eq!(common::raw_rcode(&answer), 9, "signed 1,000 s ago: NOTAUTH");
    assert_eq!(raw_tsig(&answer).map(|t| t.error), Some(18), "BADTIME");
    assert!(txt_values(dns, &node1).await.is_empty());
    server.shutdown(Duration::from_secs(1)).await;
}

/// Values live beside the files: a reload keeps them, a restart with `state-file` keeps them,
/// and `acme-challenge-lifetime` removes them by itself (raising the serial again).
#[tokio::test(flavor = "multi_thread")]
async fn challenges_survive_reloads_and_restarts_then_expire() {
    let tree = update_tree("acme-challenge-lifetime = \"6s\"\n", &[]);
    edit(
        &tree,
        "config/consortium-dns.toml",
        "# state-file = \"serials.json\"",
        "state-file = \"state.json\"",
    );
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let node1 = challenge("node1");
    let (ok, out) = nsupdate(
        dns,
        Some(&op_a()),
        &[&format!("update add {node1} 60 TXT \"{V1}\"")],
        false,
    )
    .await;
    assert!(ok, "{out}");
    let added_at = Instant::now();
    let members = tree.read(MEMBERS_FILE);
    assert!(
        !members.contains(V1) && !tree.read(ZONE_FILE).contains(V1),
        "never written into operator files"
    );

    // A reload (a member re-weighted) keeps the value.
    edit(&tree, MEMBERS_FILE, "weight = 1\n", "weight = 3\n");
    let report = server.control.reload("test").await;
    assert!(report.ok, "{report:?}");
    assert_eq!(txt_values(dns, &node1).await, set(&[V1]), "kept across a reload");

    // A restart keeps it too.
    server.shutdown(Duration::from_secs(1)).await;
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    assert_eq!(txt_values(dns, &node1).await, set(&[V1]), "kept across a restart");
    let serial = served_serial(dns).await.expect("serial");

    // Then it expires: gone within a second or two of its 6 s, with a new serial.
    let deadline = added_at + Duration::from_secs(10);
    while !txt_values(dns, &node1).await.is_empty() {
        assert!(Instant::now() < deadline, "the value outlived its lifetime");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        added_at.elapsed() >= Duration::from_secs(5),
        "not removed before its lifetime"
    );
    assert_ne!(
        served_serial(dns).await,
        Some(serial),
        "the removal raised the serial"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// A flood of updates from one key: the rate limit (`update-rate`, a burst of twice that)
/// refuses the excess, at most `acme-challenge-quota` values per name are held, and ordinary
/// queries are answered all along.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_one_key_stays_within_quota_and_rate() {
    let tree = update_tree("update-rate = 20\n", &[]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let node1 = challenge("node1");
    let send = move |id: u16, updates: Vec<(String, u16, u16, u32, Vec<u8>)>| async move {
        let borrowed: Vec<(&str, u16, u16, u32, Vec<u8>)> = updates
            .iter()
            .map(|(n, t, c, ttl, r)| (n.as_str(), *t, *c, *ttl, r.clone()))
            .collect();
        let mut message = raw_update(id, &borrowed, false);
        sign_request(&mut message, &op_a(), unix_now());
        common::udp_raw(dns, &message)
            .await
            .map(|r| common::raw_rcode(&r))
    };
    // Each update replaces the value (delete the RRset, add one): the quota never binds, the
    // rate does.
    let flood = {
        let node1 = node1.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut outcomes = Vec::new();
            for i in 0..300u16 {
                let value = format!("{:0>43}", format!("flood{i}"));
                let updates = vec![
                    (node1.clone(), 16, 255, 0, Vec::new()),
                    (node1.clone(), 16, 1, 60, txt_rdata(&value)),
                ];
                outcomes.push(send(i, updates).await);
            }
            (outcomes, started.elapsed())
        })
    };
    for _ in 0..20 {
        let (rcode, records) = answer_of(dns, &format!("node2.{ORIGIN}"), RecordType::CNAME)
            .await
            .unwrap_or_else(|e| panic!("an ordinary query during the flood: {e}"));
        assert_eq!(
            rcode,
            ResponseCode::NoError,
            "ordinary queries are answered during the flood"
        );
        assert_eq!(records.len(), 1);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (outcomes, took) = flood.await.expect("flood task");
    let accepted = outcomes.iter().filter(|o| **o == Some(0)).count();
    let refused = outcomes.iter().filter(|o| **o == Some(5)).count();
    assert_eq!(accepted + refused, 300, "every update answered: {outcomes:?}");
    let allowed = 40 + (took.as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!(
        (40..=allowed).contains(&accepted),
        "the burst (40) passes, then about 20 per second: {accepted} accepted in {took:?}"
    );
    assert_eq!(
        txt_values(dns, &node1).await.len(),
        1,
        "each update replaced the value"
    );

    // The quota: ten distinct values at one name, slowly enough for the rate: eight held.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let cleared = send(1_000, vec![(node1.clone(), 255, 255, 0, Vec::new())]).await;
    assert_eq!(cleared, Some(0), "delete every value at the name");
    let mut quota_outcomes = Vec::new();
    for i in 0..10u16 {
        let value = format!("{:0>43}", format!("quota{i}"));
        quota_outcomes.push(send(2_000 + i, vec![(node1.clone(), 16, 1, 60, txt_rdata(&value))]).await);
    }
    assert_eq!(
        quota_outcomes,
        [vec![Some(0); 8], vec![Some(5); 2]].concat(),
        "eight values accepted, then REFUSED by acme-challenge-quota"
    );
    assert_eq!(txt_values(dns, &node1).await.len(), 8, "the quota holds");
    let metrics = server.control.scrape();
    assert!(
        metrics.contains(
            "consortium_dns_updates_total{key=\"op-a\",rcode=\"REFUSED\",zone=\"consortium.example.\"}"
        ),
        "refusals counted per key"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Every nameserver must answer the challenge: an NSD secondary serves it within a few
/// seconds (NOTIFY + IXFR), and `GET /secondaries` says so only once it does.
#[tokio::test(flavor = "multi_thread")]
async fn an_nsd_secondary_serves_the_challenge_and_the_endpoint_says_when() {
    let nsd_port = free_port();
    let xfr = Key::transfer();
    let tree = update_tree(
        &format!(
            "allow-transfer = [{{ network = \"127.0.0.1\", key = \"{k}\" }}]\n\
         notify = [{{ address = \"127.0.0.1:{nsd_port}\", key = \"{k}\" }}]\n",
            k = xfr.name
        ),
        &[&xfr],
    );
    tree.enable_http();
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let http = server.http_addr.expect("http");
    let mut nsd = Nsd::secondary(nsd_port, ORIGIN, dns, &xfr.nsd());
    let serial = served_serial(dns).await.expect("serial");
    let has_serial = |serial: u32| {
        move |(_, records): &(ResponseCode, BTreeSet<Rr>)| {
            records.iter().any(|r| {
                r.rtype == 6 && r.rdata.len() >= 20 && {
                    let at = r.rdata.len() - 20;
                    u32::from_be_bytes([r.rdata[at], r.rdata[at + 1], r.rdata[at + 2], r.rdata[at + 3]])
                        == serial
                }
            })
        }
    };
    nsd.wait_for(
        ORIGIN,
        RecordType::SOA,
        Duration::from_secs(10),
        has_serial(serial),
    )
    .await
    .unwrap_or_else(|e| panic!("NSD did not load the zone: {e}"));

    let any = challenge("any");
    let (ok, out) = nsupdate(
        dns,
        Some(&op_a()),
        &[&format!("update add {any} 60 TXT \"{V1}\"")],
        false,
    )
    .await;
    assert!(ok, "{out}");
    let new_serial = served_serial(dns).await.expect("serial");
    let path = format!("/secondaries?zone={ORIGIN}&serial={new_serial}");
    let started = Instant::now();
    loop {
        let (code, body) = http_request(http, "GET", &path).await;
        let nsd_has_it = answer_of(nsd.addr, &any, RecordType::TXT)
            .await
            .is_ok_and(|(_, records)| records.iter().any(|r| txt_text(&r.rdata) == V1));
        if code == 200 {
            assert!(
                nsd_has_it,
                "the endpoint said yes before NSD served the value: {body}"
            );
            assert!(body.contains(&format!("\"serial\": {new_serial}")), "{body}");
            break;
        }
        assert_eq!(code, 503, "not yet: 503 ({body})");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "NSD did not get the challenge within 10 s; endpoint: {body}\nNSD log:\n{}",
            nsd.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = server.control.scrape();
    assert!(
        metrics.contains(&format!(
            "consortium_dns_secondary_serial{{secondary=\"127.0.0.1:{nsd_port}\",zone=\"consortium.example.\"}} {new_serial}"
        )),
        "the secondary's serial is exported:\n{}",
        metrics.lines().filter(|l| l.contains("secondary")).collect::<Vec<_>>().join("\n")
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// Several instances serving the zone from the same files, as the README's setup describes:
/// `update-peers` lists them all, each skips itself; an update sent to any one is forwarded
/// to the others before it is answered, so every instance serves the challenge (a CA asks any
/// NS), and a delete sent to another instance removes it everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_to_one_instance_reaches_every_instance() {
    let (port1, port2) = (free_port(), free_port());
    let tree = update_tree(
        &format!("update-peers = [\"127.0.0.1:{port1}\", \"127.0.0.1:{port2}\"]\n"),
        &[],
    );
    edit(
        &tree,
        "config/consortium-dns.toml",
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{port1}\"]"),
    );
    let first = tree.start().await;
    let overrides = consortium_dns::app::Overrides {
        listen: Some(vec![([127, 0, 0, 1], port2).into()]),
        ..Default::default()
    };
    let second = consortium_dns::app::start_with(tree.config(), overrides)
        .await
        .unwrap_or_else(|e| panic!("second instance: {e}"));
    let (dns1, dns2) = (first.dns_addrs[0], second.dns_addrs[0]);
    assert_ne!(dns1, dns2);
    let any = challenge("any");

    let (ok, out) = nsupdate(
        dns1,
        Some(&op_a()),
        &[&format!("update add {any} 60 TXT \"{V1}\"")],
        false,
    )
    .await;
    assert!(ok, "{out}");
    // Answered only after the forward: both serve it at once.
    assert_eq!(txt_values(dns1, &any).await, set(&[V1]));
    assert_eq!(
        txt_values(dns2, &any).await,
        set(&[V1]),
        "the peer instance serves it too"
    );
    let (ok, out) = nsupdate(
        dns2,
        Some(&op_b()),
        &[&format!("update add {any} 60 TXT \"{V3}\"")],
        true,
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(txt_values(dns1, &any).await, set(&[V1, V3]));
    // A delete through the other instance removes op-a's value everywhere (and only it).
    let (ok, out) = nsupdate(dns2, Some(&op_a()), &[&format!("update delete {any} TXT")], false).await;
    assert!(ok, "{out}");
    for dns in [dns1, dns2] {
        assert_eq!(txt_values(dns, &any).await, set(&[V3]), "at {dns}");
    }
    for server in [&first, &second] {
        let metrics = server.control.scrape();
        let forwarded = metrics
            .lines()
            .filter(|l| {
                l.starts_with("consortium_dns_update_forwards_total") && l.contains("outcome=\"NOERROR\"")
            })
            .count();
        let other = if server.dns_addrs[0] == dns1 { port2 } else { port1 };
        assert!(
            metrics.contains(&format!("peer=\"127.0.0.1:{other}\"")) && forwarded == 1,
            "each instance forwarded to the other only, accepted:\n{metrics}"
        );
    }
    first.shutdown(Duration::from_secs(1)).await;
    second.shutdown(Duration::from_secs(1)).await;
}

/// RFC 2136 §3.2 prerequisites, as nsupdate writes them: each failing one gets its rcode and
/// changes nothing; when all hold, the update is applied.
#[tokio::test(flavor = "multi_thread")]
async fn prerequisites_decide_whether_an_update_applies() {
    let tree = update_tree("update-rate = 0\n", &[]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let a = op_a();
    let node1 = challenge("node1");
    let add = |value: &str| format!("update add {node1} 60 TXT \"{value}\"");
    let (ok, out) = nsupdate(dns, Some(&a), &[&add(V1)], false).await;
    assert!(ok, "{out}");
    let failing = [
        (format!("prereq nxdomain www.{ORIGIN}"), "YXDOMAIN"),
        (format!("prereq yxdomain nothing-here.{ORIGIN}"), "NXDOMAIN"),
        (format!("prereq nxrrset {node1} TXT"), "YXRRSET"),
        (format!("prereq yxrrset www.{ORIGIN} A"), "NXRRSET"),
        (format!("prereq yxrrset {node1} TXT \"{V2}\""), "NXRRSET"),
    ];
    for (prerequisite, rcode) in &failing {
        let before = observable(dns).await;
        let (ok, out) = nsupdate(dns, Some(&a), &[prerequisite, &add(V2)], false).await;
        assert!(
            !ok && out.contains(rcode),
            "{prerequisite}: {rcode} expected:\n{out}"
        );
        assert_eq!(observable(dns).await, before, "{prerequisite}: nothing changed");
    }
    // All of these hold: applied.
    let holding = [
        format!("prereq yxdomain www.{ORIGIN}"),
        format!("prereq nxdomain nothing-here.{ORIGIN}"),
        format!("prereq yxrrset {node1} TXT"),
        format!("prereq yxrrset {node1} TXT \"{V1}\""),
        format!("prereq nxrrset {node1} A"),
        format!("prereq yxrrset {ORIGIN} SOA"),
    ];
    let mut commands: Vec<String> = holding.to_vec();
    commands.push(add(V2));
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let (ok, out) = nsupdate(dns, Some(&a), &commands, false).await;
    assert!(ok, "every prerequisite holds:\n{out}");
    assert_eq!(txt_values(dns, &node1).await, set(&[V1, V2]));
    server.shutdown(Duration::from_secs(1)).await;
}

/// Hostile input with a valid signature: 3,000 mutations of real UPDATE messages (bytes
/// flipped, cut, counts changed, records added), each signed again with op-a's key so that it
/// reaches the parsing, prerequisite and scope code. Every one is answered, with its ID and
/// QR, the server never panics, and nothing outside op-a's names changes.
#[tokio::test(flavor = "multi_thread")]
async fn mutated_signed_updates_are_answered_and_change_nothing_else() {
    let tree = update_tree("update-rate = 0\n", &[]);
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let a = op_a();
    let (node1, node2, any) = (challenge("node1"), challenge("node2"), challenge("any"));
    let before_www = answer_of(dns, &format!("www.{ORIGIN}"), RecordType::CNAME)
        .await
        .expect("www");
    let before_node2 = txt_values(dns, &node2).await;
    let seeds: Vec<Vec<u8>> = vec![
        raw_update(1, &[(&node1, 16, 1, 60, txt_rdata(V1))], false),
        raw_update(
            2,
            &[(&any, 16, 255, 0, Vec::new()), (&any, 16, 1, 60, txt_rdata(V2))],
            true,
        ),
        raw_update(
            3,
            &[
                (&node1, 16, 254, 0, txt_rdata(V1)),
                (&node2, 1, 1, 60, vec![192, 0, 2, 1]),
            ],
            false,
        ),
    ];
    let mut rng = crate::hostile::Gen::new(0x2136);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut buffer = vec![0u8; 65_535];
    for round in 0..3_000u32 {
        let mut message = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(5) {
                0 if message.len() > 13 => {
                    let at = 12 + rng.below(message.len() - 12);
                    message[at] = rng.byte();
                }
                1 if message.len() > 13 => {
                    let len = 12 + rng.below(message.len() - 12);
                    message.truncate(len);
                }
                2 => {
                    let at = 4 + 2 * rng.below(4);
                    message[at + 1] = rng.byte() % 4;
                }
                3 => {
                    let len = rng.below(24);
                    message.extend(rng.bytes(len));
                }
                _ => {
                    let at = 12 + rng.below(message.len().saturating_sub(11));
                    let len = 1 + rng.below(8);
                    let junk = rng.bytes(len);
                    message.splice(at.min(message.len())..at.min(message.len()), junk);
                }
            }
        }
        let id = round as u16;
        message[0..2].copy_from_slice(&id.to_be_bytes());
        sign_request(&mut message, &a, unix_now());
        socket.send_to(&message, dns).await.expect("send");
        let answer = loop {
            let wait = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer));
            let len = wait
                .await
                .unwrap_or_else(|_| panic!("round {round}: no answer to {}", common::hex(&message)))
                .expect("receive");
            if u16_at(&buffer, 0) == Some(id) {
                break buffer[..len].to_vec();
            }
        };
        assert!(
            answer.len() >= 12 && answer[2] & 0x80 != 0,
            "round {round}: a response"
        );
        assert_eq!(answer[2] >> 3 & 0x0f, 5, "round {round}: opcode UPDATE");
    }
    let metrics = server.control.scrape();
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("consortium_dns_panics_total{"))
            .all(|l| l.ends_with(" 0")),
        "no panic:\n{metrics}"
    );
    assert_eq!(
        answer_of(dns, &format!("www.{ORIGIN}"), RecordType::CNAME)
            .await
            .expect("www"),
        before_www
    );
    assert_eq!(
        txt_values(dns, &node2).await,
        before_node2,
        "op-a never reached node2's name"
    );
    server.shutdown(Duration::from_secs(1)).await;
}
