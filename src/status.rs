//! `consortium-dns status`: the command that prints a running server's pools and members.
//!
//! It fetches `/status` from the server's loopback admin endpoint and prints tables.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use consortium_dns::http::StatusDocument;

/// Exit codes, as Nagios-style checks read them: 0 all well, 1 the last reload failed (the
/// previous data is served), 2 a pool is failing open (no eligible member), 3 no answer.
const EXIT_RELOAD_FAILED: u8 = 1;
const EXIT_FAILING_OPEN: u8 = 2;
const EXIT_UNKNOWN: u8 = 3;

pub(crate) fn run(addr: SocketAddr, raw_json: bool) -> ExitCode {
    let body = match fetch(addr) {
        Ok(body) => body,
        Err(e) => {
            eprintln!(
                "cannot read status from http://{addr}/status: {e} (is the server running with --http-listen {addr}?)"
            );
            return ExitCode::from(EXIT_UNKNOWN);
        }
    };
    let document = match serde_json::from_str::<StatusDocument>(&body) {
        Ok(document) => document,
        Err(e) => {
            eprintln!("unexpected status document from {addr}: {e}");
            return ExitCode::from(EXIT_UNKNOWN);
        }
    };
    if raw_json {
        println!("{body}");
    } else {
        print!("{}", render(&document));
    }
    exit_code(&document)
}

fn exit_code(document: &StatusDocument) -> ExitCode {
    if document.health.pools.iter().any(|p| p.fail_open) {
        ExitCode::from(EXIT_FAILING_OPEN)
    } else if document.last_reload.as_ref().is_some_and(|r| !r.ok) {
        ExitCode::from(EXIT_RELOAD_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let (code, head, body) = admin_request(addr, "GET", "/status", Duration::from_secs(10))?;
    if code != 200 {
        return Err(std::io::Error::other(head));
    }
    Ok(body)
}

/// One request to the admin endpoint at `addr`: the status code, status line and body.
/// `wait` bounds the answer (a reload of a large zone takes as long as it takes).
pub(crate) fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    wait: Duration,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(wait))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let status_line = head.lines().next().unwrap_or("no status line").to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed status line {status_line:?}")))?;
    Ok((code, status_line, body.to_string()))
}

fn render(document: &StatusDocument) -> String {
    let mut out = String::new();
    for zone in &document.zones {
        out.push_str(&format!(
            "zone {}  serial {}  members {}\n",
            zone.zone, zone.serial, zone.members
        ));
        for secondary in &zone.secondaries {
            let serial = secondary
                .serial
                .map_or("not seen yet".to_string(), |s| s.to_string());
            let state = if secondary.has_serial {
                "up to date"
            } else {
                "behind"
            };
            out.push_str(&format!(
                "  secondary {}  serial {serial}  {state}\n",
                secondary.address
            ));
        }
        if let Some(dnssec) = &zone.dnssec {
            let keys: Vec<String> = dnssec
                .keys
                .iter()
                .map(|k| format!("{} {} {}", k.tag, k.role, k.state))
                .collect();
            out.push_str(&format!(
                "  dnssec  keys {}  earliest signature expiry unix {}  re-signing at unix {}\n",
                keys.join(", "),
                dnssec.earliest_expiry,
                dnssec.refresh_at
            ));
        }
        for challenge in &zone.acme_challenges {
            out.push_str(&format!(
                "  acme challenge {}  key {}  expires in {} s\n",
                challenge.name, challenge.key, challenge.expires_in_s
            ));
        }
    }
    for zone in &document.secondary_zones {
        let serial = zone.serial.map_or("none yet".to_string(), |s| s.to_string());
        let primary_serial = zone.primary_serial.map_or("-".to_string(), |s| s.to_string());
        let state = if zone.expired {
            "EXPIRED (SERVFAIL)"
        } else if zone.serial.is_none() {
            "not transferred yet"
        } else {
            "serving"
        };
        out.push_str(&format!(
            "secondary zone {}  primaries {}  serial {serial}  primary serial {primary_serial}  {state}\n",
            zone.zone,
            zone.primaries.join(", ")
        ));
        let unix = |t: Option<u64>| t.map_or("never".to_string(), |t| format!("unix {t}"));
        out.push_str(&format!(
            "  last transfer {}  last contact {}  expires {}\n",
            unix(zone.last_transfer),
            unix(zone.last_contact),
            unix(zone.expires_at)
        ));
        if let Some(error) = &zone.last_error {
            out.push_str(&format!("  last error: {error}\n"));
        }
        for refused in &zone.refused_alternatives {
            out.push_str(&format!("  alternative not offered: {refused}\n"));
        }
    }
    if let Some(reload) = &document.last_reload {
        let outcome = if reload.ok { "ok" } else { "FAILED" };
        out.push_str(&format!(
            "last reload: {outcome} ({}, unix {})\n",
            reload.trigger, reload.at_unix
        ));
        for error in &reload.errors {
            out.push_str(&format!("  {error}\n"));
        }
        for setting in &reload.restart_needed {
            out.push_str(&format!("  needs restart: {setting}\n"));
        }
    }
    for pool in &document.health.pools {
        let open = if pool.fail_open {
            "  FAILING OPEN (no eligible member)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\npool {}  ttl {}  policy {}  cert-policy {}{open}\n",
            pool.name, pool.ttl, pool.policy, pool.cert_policy
        ));
        out.push_str(&format!(
            "  {:<12} {:<32} {:<6} {:<7} {:>8} {:<24} {:>9} {:<18}\n",
            "MEMBER", "TARGET", "PROBE", "STATE", "WEIGHT", "LAST PROBE", "LATENCY", "CERTIFICATE"
        ));
        for m in &pool.members {
            let (last, latency) = match &m.last_probe {
                Some(p) => (p.detail.clone(), format!("{:.1}ms", p.latency_ms)),
                None => ("-".to_string(), "-".to_string()),
            };
            let cert = match &m.certificate {
                Some(c) => format!(
                    "{}d node:{} pool:{}{}",
                    c.days_to_expiry.map_or("?".to_string(), |d| d.to_string()),
                    yes_no(c.covers_node),
                    yes_no(c.covers_pool),
                    if m.cert_eligible { "" } else { " INELIGIBLE" }
                ),
                None => "-".to_string(),
            };
            out.push_str(&format!(
                "  {:<12} {:<32} {:<6} {:<7} {:>8.2} {:<24} {:>9} {:<18}\n",
                m.label,
                m.target,
                m.probe,
                if m.drained { "drained" } else { &m.state },
                m.effective_weight,
                truncate(&last, 24),
                latency,
                cert
            ));
        }
        if pool.members_omitted > 0 {
            out.push_str(&format!(
                "  ... {} more members, all up, not listed (GET /status?members=all lists every member)\n",
                pool.members_omitted
            ));
        }
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).collect::<String>() + "…"
    }
}
