//! The admin endpoint under pressure and from web pages (issue 22, findings 9 and 12): scrapes
//! and status documents of a large zone never hold up DNS over TCP, names other than an
//! address or `localhost` in `Host` are refused (DNS rebinding), and its connections are
//! capped.

use std::time::{Duration, Instant};

use consortium_dns::http::StatusDocument;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Tree, http_request, http_request_to, query, tcp};

const MEMBERS_FILE: &str = "zones/consortium.example.members.toml";

/// `count` members with tcp probes at a closed loopback port (so health state and gauges
/// exist for each), and the pool `any` over them.
fn many_probed_members(count: usize) -> String {
    let mut text = String::from("member-ttl = 300\n\n[[pool]]\nlabel = \"any\"\nttl = 30\n");
    for i in 0..count {
        text.push_str(&format!(
            "\n[[member]]\nlabel = \"m{i}\"\ntarget = \"node-{i}.operator.example.net\"\nweight = 1\n[member.health]\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"\ninterval = \"1h\"\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn scrapes_and_status_never_hold_up_dns_over_tcp() {
    let tree = Tree::example();
    tree.enable_http();
    tree.write(MEMBERS_FILE, &many_probed_members(20_000));
    let server = tree.start().await;
    let http = server.http_addr.expect("admin endpoint");
    let dns = server.dns_addrs[0];

    // How long one scrape and one status document take alone.
    let started = Instant::now();
    let (code, metrics) = http_request(http, "GET", "/metrics").await;
    let scrape_alone = started.elapsed();
    assert_eq!(code, 200);
    assert!(metrics.contains("consortium_dns_pool_members"), "no pool series");
    let started = Instant::now();
    let (code, summary) = http_request(http, "GET", "/status").await;
    let status_alone = started.elapsed();
    assert_eq!(code, 200);
    // A large pool is summarised by default (its members not up first), listed whole on
    // request.
    let pool_of = |body: &str| -> (usize, usize) {
        let document: StatusDocument = serde_json::from_str(body).expect("status JSON");
        let pool = &document.health.pools[0];
        (pool.members.len(), pool.members_omitted)
    };
    assert_eq!(pool_of(&summary), (1_000, 19_000));
    let (code, every) = http_request(http, "GET", "/status?members=all").await;
    assert_eq!(code, 200);
    assert_eq!(pool_of(&every), (20_000, 0));
    eprintln!(
        "status of 20,000 members: {} bytes summarised, {} bytes listed whole",
        summary.len(),
        every.len()
    );

    // Eight of each at once, while a resolver queries over TCP.
    let mut scrapers = Vec::new();
    for i in 0..16 {
        let path = if i % 2 == 0 { "/metrics" } else { "/status" };
        scrapers.push(tokio::spawn(
            async move { http_request(http, "GET", path).await.0 },
        ));
    }
    let mut worst = Duration::ZERO;
    let mut queries = 0;
    while scrapers.iter().any(|s| !s.is_finished()) {
        let started = Instant::now();
        let m = tcp(dns, &query("ns1.consortium.example.", RecordType::A, None)).await;
        worst = worst.max(started.elapsed());
        queries += 1;
        assert_eq!(m.answers.len(), 1, "{m}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for scraper in scrapers {
        assert_eq!(scraper.await.expect("scraper"), 200);
    }
    eprintln!(
        "20,000 probed members: a scrape alone {scrape_alone:?}, a status alone {status_alone:?}; \
         worst TCP query latency over {queries} queries during 8 + 8 concurrent: {worst:?}"
    );
    // Were scrapes run on the threads that answer DNS, a query behind them would wait for at
    // least one whole scrape; on their own threads it waits for none.
    let one_scrape = scrape_alone.min(status_alone);
    assert!(
        worst < one_scrape,
        "a TCP query waited {worst:?}, longer than one scrape ({one_scrape:?})"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_host_names_are_refused_and_connections_are_capped() {
    let tree = Tree::example();
    tree.enable_http();
    let server = tree.start().await;
    let http = server.http_addr.expect("admin endpoint");

    // A page at attacker.example rebound to 127.0.0.1 sends its own name as Host.
    for path in ["/status", "/metrics", "/reload"] {
        let method = if path == "/reload" { "POST" } else { "GET" };
        let (code, body) = http_request_to(http, "attacker.example", method, path, "").await;
        assert_eq!(code, 421, "{path}: {body}");
        assert!(body.contains("Host"), "{body}");
        let (code, body) = http_request_to(http, "attacker.example:8053", method, path, "").await;
        assert_eq!(code, 421, "{path}: {body}");
    }
    // Addresses and localhost are the endpoint's own names.
    for host in [
        http.to_string(),
        "localhost".into(),
        format!("localhost:{}", http.port()),
        "[::1]:8053".into(),
    ] {
        let (code, body) = http_request_to(http, &host, "GET", "/healthz", "").await;
        assert_eq!(code, 200, "Host {host}: {body}");
    }

    // Every path answers the wrong method with 405, the new ones included.
    for (method, path) in [
        ("GET", "/log-level"),
        ("GET", "/notify"),
        ("POST", "/history"),
        ("GET", "/reload"),
    ] {
        assert_eq!(http_request(http, method, path).await.0, 405, "{method} {path}");
    }

    // Connections beyond the cap (16) are closed at once; the capped ones still work after.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(http).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(http).await.expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a 17th admin connection was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, _) = http_request(http, "GET", "/healthz").await;
    assert_eq!(code, 200);
    server.shutdown(Duration::from_secs(1)).await;
}
