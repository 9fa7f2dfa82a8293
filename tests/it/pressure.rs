//! TCP under pressure (issue 22, findings 7 and 11): a slow secondary finishes a large
//! transfer, a client that never reads its answers is closed within seconds, and clients
//! holding the connection cap with periodic queries lock nobody out.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::{Tree, append_to_zone_table, edit, frame, query, raw_header, raw_question, read_frame};
use crate::hostile::{caught_panics, connect_from};

const CONFIG: &str = "config/consortium-dns.toml";
const ZONE_FILE: &str = "zones/consortium.example.zone";

/// 64,000 TXT records added to the zone: an AXFR of about 5 MB, more than the kernel's socket
/// buffers take (4 MB by default), so a transfer's writes wait on its reader.
fn add_five_megabytes_of_zone(tree: &Tree) {
    let zone = tree.read(ZONE_FILE);
    let filler: String = (0..64_000)
        .map(|i| format!("t{i} 300 IN TXT \"{}\"\n", "y".repeat(40)))
        .collect();
    tree.write(ZONE_FILE, &format!("{zone}{filler}"));
}

async fn open_connections_become(
    server: &consortium_dns::app::ServerHandle,
    want: i64,
    within: Duration,
) -> Duration {
    let gauge = &server.shared.metrics.tcp_connections_open;
    let started = Instant::now();
    while gauge.get() != want {
        assert!(
            started.elapsed() < within,
            "{} TCP connections open after {within:?}, want {want}",
            gauge.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_secondary_finishes_a_large_transfer() {
    let tree = Tree::example();
    // About 5 MB of zone (more than the kernel's socket buffers hold, 4 MB by default), and a
    // 1 s idle timeout: the transfer takes longer than that to read, and must not be cut while
    // it makes progress.
    add_five_megabytes_of_zone(&tree);
    edit(
        &tree,
        CONFIG,
        "tcp-idle-timeout = \"10s\"",
        "tcp-idle-timeout = \"1s\"",
    );
    append_to_zone_table(&tree, "allow-transfer = [{ network = \"127.0.0.1\" }]\n");
    let server = tree.start().await;

    let socket = TcpSocket::new_v4().expect("socket");
    // A small receive window, so the server's writes wait on this reader.
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let mut stream = socket.connect(server.dns_addrs[0]).await.expect("connect");
    let mut request = raw_header(0x4242, 0, [1, 0, 0, 0]);
    request.extend(raw_question("consortium.example.", 252, 1));
    stream.write_all(&frame(&request)).await.expect("send AXFR");
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) => {
                eprintln!("closed by the server after {} bytes", received.len());
                break;
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("transfer cut after {} bytes: {e}", received.len()),
            Err(_) => panic!("transfer stalled after {} bytes", received.len()),
        }
        if ends_with_closing_soa(&received) {
            break;
        }
        // Read at 1 MB/s at most (about half that in practice through the small window).
        let due = Duration::from_secs_f64(received.len() as f64 / 1_000_000.0);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    let took = started.elapsed();
    eprintln!("{} bytes of AXFR read slowly in {took:?}", received.len());
    assert!(received.len() > 4_500_000, "only {} bytes", received.len());
    assert!(
        ends_with_closing_soa(&received),
        "the transfer did not finish with its SOA"
    );
    assert!(
        took > Duration::from_secs(2),
        "read too fast ({took:?}) to test a slow reader"
    );
    assert_eq!(caught_panics(&server), 0);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Whether `stream` (length-prefixed AXFR messages) is whole and ends with the closing SOA
/// (RFC 5936 §2.2: a transfer begins and ends with the zone's SOA).
fn ends_with_closing_soa(stream: &[u8]) -> bool {
    let mut at = 0;
    let mut soas = 0;
    let mut last_is_soa = false;
    while at + 2 <= stream.len() {
        let len = usize::from(u16::from_be_bytes([stream[at], stream[at + 1]]));
        let Some(message) = stream.get(at + 2..at + 2 + len) else {
            return false;
        };
        let Ok(parsed) = Message::from_vec(message) else {
            return false;
        };
        soas += parsed
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .count();
        last_is_soa = parsed
            .answers
            .last()
            .is_some_and(|r| r.record_type() == RecordType::SOA);
        at += 2 + len;
    }
    at == stream.len() && soas >= 2 && last_is_soa
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_answers_is_closed_within_seconds() {
    let tree = Tree::example();
    let server = tree.start().await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(server.dns_addrs[0]).await.expect("connect");
    let (_reader, mut writer) = stream.into_split();
    // Queries pipelined without end, answers never read.
    let q = frame(
        &query("ns1.consortium.example.", RecordType::A, None)
            .to_vec()
            .expect("encode"),
    );
    let flood = tokio::spawn(async move {
        let burst: Vec<u8> = q.iter().copied().cycle().take(q.len() * 2_000).collect();
        let mut sent = 0usize;
        while let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(30), writer.write_all(&burst)).await {
            sent += 2_000;
        }
        sent
    });
    open_connections_become(&server, 1, Duration::from_secs(5)).await;
    let closed_after = open_connections_become(&server, 0, Duration::from_secs(15)).await;
    eprintln!("a client that never reads was closed after {closed_after:?}");
    let sent = flood.await.expect("flood task");
    eprintln!("it had sent {sent} queries");
    // Others are served meanwhile and after.
    let m = crate::common::tcp(
        server.dns_addrs[0],
        &query("ns1.consortium.example.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.answers.len(), 1, "{m}");
    assert_eq!(caught_panics(&server), 0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_holding_the_cap_with_periodic_queries_lock_nobody_out() {
    const CAP: usize = 40;
    let tree = Tree::example();
    edit(
        &tree,
        CONFIG,
        "tcp-max-connections = 1024",
        &format!("tcp-max-connections = {CAP}"),
    );
    let server = tree.start().await;
    let a = server.dns_addrs[0];
    // The cap held from 20 addresses, each connection sending a query every 1.5 s (well
    // inside the 10 s idle timeout, so none is ever idle long enough to time out).
    let mut holders = Vec::new();
    for i in 0..CAP {
        let local = Ipv4Addr::new(127, 0, 7, 1 + (i % 20) as u8);
        let mut stream = connect_from(local, a).await.expect("holder connects");
        holders.push(tokio::spawn(async move {
            let q = frame(
                &query("ns2.consortium.example.", RecordType::A, None)
                    .to_vec()
                    .expect("encode"),
            );
            let until = Instant::now() + Duration::from_secs(8);
            let mut answered = 0;
            while Instant::now() < until {
                if stream.write_all(&q).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(3), read_frame(&mut stream)).await {
                    Ok(Ok(_)) => answered += 1,
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            answered
        }));
    }
    open_connections_become(&server, CAP as i64, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 40 legitimate queries, each on a fresh connection from other addresses: all answered.
    let mut answered = 0;
    for i in 0..40u8 {
        let local = Ipv4Addr::new(127, 0, 8, 1 + i);
        let mut stream = connect_from(local, a).await.expect("connect");
        let q = query("ns1.consortium.example.", RecordType::A, None);
        if stream
            .write_all(&frame(&q.to_vec().expect("encode")))
            .await
            .is_err()
        {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(2), read_frame(&mut stream)).await {
            Ok(Ok(bytes)) => {
                let m = Message::from_vec(&bytes).expect("parse");
                if m.answers.len() == 1 {
                    answered += 1;
                }
            }
            other => eprintln!("legitimate query {i}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{answered} of 40 legitimate TCP queries answered while the cap was held");
    assert_eq!(answered, 40, "legitimate TCP queries locked out by the cap");
    for holder in holders {
        let _ = holder.await;
    }
    assert_eq!(caught_panics(&server), 0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unread_transfers_hold_at_most_eight_copies_of_the_zone() {
    let tree = Tree::example();
    add_five_megabytes_of_zone(&tree);
    append_to_zone_table(&tree, "allow-transfer = [{ network = \"127.0.0.0/8\" }]\n");
    let server = tree.start().await;
    let a = server.dns_addrs[0];
    let mut request = raw_header(0x4243, 0, [1, 0, 0, 0]);
    request.extend(raw_question("consortium.example.", 252, 1));
    // Twelve clients ask for the zone (5 MB, more than the kernel's socket buffers take) and
    // never read a byte.
    let mut unread = Vec::new();
    for i in 0..12u8 {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4 * 1024).expect("SO_RCVBUF");
        socket
            .bind(std::net::SocketAddr::new(
                Ipv4Addr::new(127, 0, 9, 1 + i).into(),
                0,
            ))
            .expect("bind");
        let mut stream = socket.connect(a).await.expect("connect");
        stream.write_all(&frame(&request)).await.expect("send AXFR");
        unread.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let slots = &server.shared.transfer_slots;
    assert_eq!(
        slots.available_permits(),
        0,
        "eight transfers in memory, the others waiting"
    );
    // The stalled ones are closed (no progress for 5 s), the waiting ones follow, and a
    // reader that reads gets the whole zone in the end.
    let mut reader = TcpSocket::new_v4()
        .expect("socket")
        .connect(a)
        .await
        .expect("connect");
    reader.write_all(&frame(&request)).await.expect("send AXFR");
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !ends_with_closing_soa(&received) {
        match tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    eprintln!(
        "12 unread transfers: a reading client got its {} bytes after {:?}",
        received.len(),
        started.elapsed()
    );
    assert!(
        ends_with_closing_soa(&received),
        "the reading client's transfer is whole"
    );
    drop(unread);
    assert_eq!(caught_panics(&server), 0);
    server.shutdown(Duration::from_secs(1)).await;
}
