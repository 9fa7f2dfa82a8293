//! NOTIFY retries: backoff until the secondary acknowledges, and a newer serial superseding
//! an older one's retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode};
use tokio::task::JoinHandle;

use super::*;

/// One NOTIFY as the test's secondary saw it.
#[derive(Debug, Clone, Copy)]
struct NotifySeen {
    at: Instant,
    /// Where it came from.
    from: SocketAddr,
    serial: u32,
    /// The rcode the secondary answered with.
    answered: u8,
}

/// How many NOTIFYs of one serial the secondary refuses before it acknowledges one.
const REFUSALS_PER_SERIAL: usize = 3;

/// A secondary on a UDP socket that answers the first `REFUSALS_PER_SERIAL` NOTIFYs of each
/// serial with REFUSED and acknowledges (NOERROR) every later one. It records each NOTIFY.
struct RefusingSecondary {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<NotifySeen>>>,
    task: JoinHandle<()>,
}

impl RefusingSecondary {
    async fn start() -> RefusingSecondary {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind secondary");
        let addr = socket.local_addr().expect("secondary address");
        let seen: Arc<Mutex<Vec<NotifySeen>>> = Arc::default();
        let log = seen.clone();
        // A malformed NOTIFY panics this task; `wait_for` and `stop` report that panic.
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let at = Instant::now();
                let request = &buf[..n];
                let message = Message::from_vec(request).expect("the NOTIFY parses");
                if message.metadata.op_code == OpCode::Query {
                    // After an acknowledged NOTIFY the primary asks our SOA (to learn when we
                    // have the serial): not a NOTIFY, not answered here.
                    assert_eq!(message.queries[0].query_type(), RecordType::SOA, "an SOA query");
                    continue;
                }
                assert_eq!(
                    message.metadata.op_code,
                    OpCode::Notify,
                    "opcode NOTIFY (RFC 1996 §3.1)"
                );
                let serial = message
                    .answers
                    .iter()
                    .find_map(soa_serial)
                    .expect("the NOTIFY carries the SOA (RFC 1996 §3.7)");
                let answered = {
                    let mut seen = log.lock().expect("lock");
                    let earlier = seen.iter().filter(|s| s.serial == serial).count();
                    let rcode = if earlier < REFUSALS_PER_SERIAL { 5 } else { 0 };
                    seen.push(NotifySeen {
                        at,
                        from,
                        serial,
                        answered: rcode,
                    });
                    rcode
                };
                // The response: the request's ID and question, QR set, opcode NOTIFY, AA.
                let question_end = skip_name(request, 12).expect("question name") + 4;
                let mut response = request[..question_end].to_vec();
                response[2] = 0x80 | (4 << 3) | 0x04;
                response[3] = answered;
                response[6..12].fill(0);
                let _ = socket.send_to(&response, from).await;
            }
        });
        RefusingSecondary { addr, seen, task }
    }

    /// Fails with the responder's own panic when it has stopped.
    async fn check_running(&mut self) {
        if self.task.is_finished() {
            match (&mut self.task).await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!("the secondary stopped: {other:?}"),
            }
        }
    }

    /// Waits until `done` holds for what the secondary has seen, or fails after `within`.
    async fn wait_for(&mut self, within: Duration, what: &str, done: impl Fn(&[NotifySeen]) -> bool) {
        let started = Instant::now();
        loop {
            self.check_running().await;
            {
                let seen = self.seen.lock().expect("lock");
                if done(&seen) {
                    return;
                }
                assert!(
                    started.elapsed() < within,
                    "{what} within {within:?}; the secondary saw {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the secondary; returns what it saw.
    async fn stop(mut self) -> Vec<NotifySeen> {
        self.check_running().await;
        self.task.abort();
        self.seen.lock().expect("lock").clone()
    }
}

/// A secondary that refuses NOTIFYs is retried with doubling waits (1 s, 2 s, 4 s) until it
/// acknowledges, and then left alone; a newer serial stops the retries of the older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_retried_with_backoff_until_acknowledged_or_superseded() {
    let mut secondary = RefusingSecondary::start().await;
    let tree = Tree::example();
    configure(
        &tree,
        &format!("notify = [{{ address = \"{}\" }}]\n", secondary.addr),
        &[],
    );
    let mut members = vec![
        MemberSpec::new("node1", "node1.operator-a.com.", 2, ""),
        MemberSpec::new("node2", "api.operator-b.net.", 1, ""),
    ];
    tree.write(MEMBERS_FILE, &members_file(&members));
    let server = tree.start().await;
    let dns = server.dns_addrs[0];
    let s0 = served_serial(dns).await.expect("the served serial");

    // The serial at start is sent, refused, and sent again about 1 s later.
    secondary
        .wait_for(
            Duration::from_secs(5),
            "two NOTIFYs of the first serial",
            |seen| seen.iter().filter(|s| s.serial == s0).count() >= 2,
        )
        .await;
    // A member's weight changed: a new serial, while the first one's retries are waiting
    // (their next try would come 2 s after the second).
    members[1].weight = 3;
    tree.replace(MEMBERS_FILE, &members_file(&members));
    let report = server.control.reload("test edit").await;
    assert!(report.ok, "reload failed: {:?}", report.errors);
    let s1 = served_serial(dns).await.expect("the served serial");
    assert_ne!(s1, s0, "the edit changed the serial");

    // The new serial: refused three times, tried again after 1, 2 and 4 s, acknowledged.
    secondary
        .wait_for(
            Duration::from_secs(15),
            "the acknowledged NOTIFY of the new serial",
            |seen| seen.iter().any(|s| s.serial == s1 && s.answered == 0),
        )
        .await;
    // Were the acknowledgement ignored, the next try would come 8 s after it.
    tokio::time::sleep(Duration::from_secs(9)).await;
    server.shutdown(Duration::from_secs(1)).await;
    let seen = secondary.stop().await;

    let of =
        |serial: u32| -> Vec<NotifySeen> { seen.iter().filter(|s| s.serial == serial).copied().collect() };
    let (old, new) = (of(s0), of(s1));
    assert_eq!(
        old.len() + new.len(),
        seen.len(),
        "NOTIFYs only for {s0} and {s1}: {seen:?}"
    );
    // 2 s of waiting were left to the old serial's retries when the new serial came, and
    // the test watched far longer than that.
    assert_eq!(
        old.len(),
        2,
        "the old serial {s0} was sent twice, then superseded: {seen:?}"
    );
    assert!(
        old.iter().all(|o| o.at < new[0].at),
        "the old serial {s0} never appears after the new one {s1} was sent: {seen:?}"
    );
    assert_eq!(
        new.len(),
        REFUSALS_PER_SERIAL + 1,
        "three refusals, one acknowledgement, nothing after it: {seen:?}"
    );
    assert_eq!(new.last().map(|s| s.answered), Some(0));

    // The waits double. A loaded machine delays a try, never hastens it: each gap is at
    // least 0.8 × its expected value, below expected + 1.5 s, and longer than the one before.
    let gaps: Vec<Duration> = new.windows(2).map(|w| w[1].at - w[0].at).collect();
    let expected = [1.0, 2.0, 4.0];
    for (i, (gap, want)) in gaps.iter().zip(expected).enumerate() {
        let gap = gap.as_secs_f64();
        assert!(
            gap >= 0.8 * want && gap < want + 1.5,
            "wait {i} after a refusal: {gap:.2} s, expected about {want} s (all: {gaps:?})"
        );
    }
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "the waits grow: {gaps:?}");
    let first_gap = (old[1].at - old[0].at).as_secs_f64();
    assert!(
        (0.8..2.5).contains(&first_gap),
        "the old serial was retried about 1 s after its refusal: {first_gap:.2} s"
    );
}

/// `notify = [{ ..., source = IP }]` (issue 21): NOTIFY goes out from the configured address
/// (for a secondary that accepts NOTIFY from one address only); without one, from the system's
/// choice (127.0.0.1 towards 127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_is_sent_from_the_configured_source_address() {
    let mut pinned = RefusingSecondary::start().await;
    let mut default = RefusingSecondary::start().await;
    let tree = Tree::example();
    configure(
        &tree,
        &format!(
            "notify = [{{ address = \"{}\", source = \"127.0.0.2\" }}, {{ address = \"{}\" }}]\n",
            pinned.addr, default.addr
        ),
        &[],
    );
    let server = tree.start().await;
    for secondary in [&mut pinned, &mut default] {
        secondary
            .wait_for(Duration::from_secs(5), "a NOTIFY", |seen| !seen.is_empty())
            .await;
    }
    server.shutdown(Duration::from_secs(1)).await;
    let sources = |seen: Vec<NotifySeen>| -> BTreeSet<IpAddr> { seen.iter().map(|s| s.from.ip()).collect() };
    assert_eq!(
        sources(pinned.stop().await),
        BTreeSet::from([[127, 0, 0, 2].into()])
    );
    assert_eq!(
        sources(default.stop().await),
        BTreeSet::from([[127, 0, 0, 1].into()])
    );

    // A source of the other IP family, or not an address, is refused with the file and line.
    for (source, reason) in [
        ("::1", "are not of one IP family"),
        ("127.0.0.2:53", "bad source"),
    ] {
        let tree = Tree::example();
        configure(
            &tree,
            &format!("notify = [{{ address = \"127.0.0.1:53\", source = \"{source}\" }}]\n"),
            &[],
        );
        let (ok, _, stderr) = common::run_check(&tree);
        assert!(
            !ok && stderr.contains(reason) && stderr.contains("consortium-dns.toml:"),
            "{source}: {stderr}"
        );
    }
}
