//! The loopback HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status` (JSON for `consortium-dns status`), `/` (the same as an HTML page, `page`) and the
//! `ctl` commands (`POST /reload`, `/notify`, `/drain`...).
//!
//! It reads through `control::Control`; it never holds zone data of its own.

mod page;

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::control::{Control, ReloadReport};
use crate::health::StatusReport;

/// What `GET /status` returns.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusDocument {
    pub ready: bool,
    pub zones: Vec<ZoneStatus>,
    /// The zones this instance is a secondary for: primaries, serials, transfers, expiry.
    #[serde(default)]
    pub secondary_zones: Vec<crate::control::SecondaryZoneStatus>,
    pub last_reload: Option<ReloadReport>,
    pub last_successful_reload: Option<ReloadReport>,
    pub health: StatusReport,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ZoneStatus {
    pub zone: String,
    pub serial: u32,
    pub members: usize,
    /// ACME challenge values members added by UPDATE.
    #[serde(default)]
    pub acme_challenges: Vec<ChallengeStatus>,
    /// Each NOTIFY target and the serial it was last seen serving.
    #[serde(default)]
    pub secondaries: Vec<crate::control::SecondaryState>,
    /// Keys, signatures made and reused, earliest expiry: present for a signed zone.
    #[serde(default)]
    pub dnssec: Option<crate::dnssec::SigningReport>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeStatus {
    pub name: String,
    /// The key that added it (its name; never its secret).
    pub key: String,
    pub expires_in_s: i64,
}

/// Changes the running log filter (`ctl log-level`): set by the binary, which owns the log
/// subscriber; absent in a server embedded elsewhere (tests), which answers 501.
type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_LEVEL: std::sync::OnceLock<LogLevelSetter> = std::sync::OnceLock::new();

/// Lets `POST /log-level?level=...` change the log filter through `set`.
pub fn control_log_level(set: LogLevelSetter) {
    let _ = LOG_LEVEL.set(set);
}

/// Members per pool a default `/status` lists (`?members=all` lists every one).
pub const STATUS_MEMBERS_PER_POOL: usize = 1_000;

/// Admin connections served at once; more are closed at once (scrapers and the status
/// command need a handful; an endless stream of connections must not pile up tasks).
const MAX_ADMIN_CONNECTIONS: usize = 16;

/// Serves HTTP/1.1 on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, control: Arc<Control>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("http accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| handle(request, control.clone()));
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // Bound slow clients: the admin endpoint is for scrapers and the status command.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), connection).await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    control: Arc<Control>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(reason) = foreign_host(request.headers()) {
        tracing::warn!(reason, "admin request refused");
        return Ok(reply(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain",
            format!("refused: {reason}\n"),
        ));
    }
    let response = match (request.method(), request.uri().path()) {
        // Scrapes and status documents of a large zone take many milliseconds of CPU: on a
        // blocking thread, never on the async workers that answer DNS over TCP.
        (&Method::GET, "/metrics") => {
            let control = control.clone();
            match tokio::task::spawn_blocking(move || control.scrape()).await {
                Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "scrape failed\n".into(),
                ),
            }
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if control.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        (&Method::GET, path @ ("/" | "/status")) => {
            let html = path == "/";
            let control = control.clone();
            // `?members=all` lists every member of every pool; by default a large pool is
            // summarised (its members not up first), so a status of 100,000 members stays
            // small and cheap.
            let every_member = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .any(|p| p == "members=all");
            let encoded = tokio::task::spawn_blocking(move || {
                let mut document = status(&control);
                if !every_member {
                    for pool in &mut document.health.pools {
                        pool.summarise(STATUS_MEMBERS_PER_POOL);
                    }
                }
                if html {
                    let body = page::render(&document, crate::VERSION);
                    let mut response = reply(StatusCode::OK, "text/html; charset=utf-8", body);
                    // No script, no outside resource: only the inline style and the page itself.
                    response.headers_mut().insert(
                        hyper::header::CONTENT_SECURITY_POLICY,
                        hyper::header::HeaderValue::from_static(
                            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                        ),
                    );
                    response
                } else {
                    json(StatusCode::OK, &document)
                }
            })
            .await;
            encoded.unwrap_or_else(|_| {
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "status failed\n".into(),
                )
            })
        }
        (&Method::GET, "/secondaries") => secondaries(&control, request.uri().query().unwrap_or("")),
        (&Method::POST, "/reload") => {
            if let Some(refused) = refused_web_page(request.headers()) {
                return Ok(refused);
            }
            // Run to the end whatever the client does: a client that disconnects (or the
            // connection's time limit) must not cancel a reload half-way, unreported.
            // `?force=1`: the operator confirms a change the hold-back guard keeps.
            let force = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .any(|pair| matches!(pair, "force" | "force=1" | "force=true"));
            // `?zone=NAME`: that zone's files alone (`ctl reload ZONE`).
            let zone = match query_value(&request, "zone") {
                None => None,
                Some(text) => match crate::zone::name::Name::parse_origin(&text) {
                    Ok(origin) => Some(origin),
                    Err(e) => {
                        return Ok(reply(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            format!("zone {text:?}: {e}\n"),
                        ));
                    }
                },
            };
            let reload = tokio::spawn(async move { control.reload_with("http", force, zone).await });
            let Ok(report) = reload.await else {
                return Ok(reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "reload task failed\n".into(),
                ));
            };
            let code = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json(code, &report)
        }
        (&Method::GET, "/history") => {
            let zone = query_value(&request, "zone");
            match zone.as_deref().map(|zone| history(&control, zone)) {
                Some(Some(history)) => json(StatusCode::OK, &history),
                Some(None) => reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "zone not served here\n".into(),
                ),
                None => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "give ?zone=<origin>\n".into(),
                ),
            }
        }
        (&Method::POST, "/log-level") => {
            if let Some(refused) = refused_web_page(request.headers()) {
                return Ok(refused);
            }
            let level = query_value(&request, "level");
            let level = level.as_deref();
            match (level, LOG_LEVEL.get()) {
                (None, _) => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "give ?level=<filter>\n".into(),
                ),
                (Some(_), None) => reply(
                    StatusCode::NOT_IMPLEMENTED,
                    "text/plain",
                    "this server's log filter cannot be changed\n".into(),
                ),
                (Some(level), Some(set)) => match set(level) {
                    Ok(()) => {
                        tracing::info!(level, "log filter changed");
                        reply(StatusCode::OK, "text/plain", format!("log filter now {level}\n"))
                    }
                    Err(reason) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{reason}\n")),
                },
            }
        }
        (&Method::POST, "/notify") => {
            if let Some(refused) = refused_web_page(request.headers()) {
                return Ok(refused);
            }
            let zone = query_value(&request, "zone");
            let zone = zone.as_deref();
            match zone.map(|zone| (zone, control.notify_zone(zone))) {
                Some((zone, Some(targets))) => reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("NOTIFY of {zone} sent to {targets} secondaries\n"),
                ),
                Some((zone, None)) => reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("zone {zone} is not served here\n"),
                ),
                None => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "give ?zone=<origin>\n".into(),
                ),
            }
        }
        (&Method::POST, path @ ("/drain" | "/undrain")) => {
            if let Some(refused) = refused_web_page(request.headers()) {
                return Ok(refused);
            }
            let drained = path == "/drain";
            match query_value(&request, "member") {
                Some(member) => {
                    let zone = query_value(&request, "zone");
                    match control.set_drained(&member, zone.as_deref(), drained).await {
                        Ok(outcome) => reply(StatusCode::OK, "text/plain", outcome),
                        Err(reason) => reply(StatusCode::NOT_FOUND, "text/plain", format!("{reason}\n")),
                    }
                }
                None => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "give ?member=<label>[&zone=<origin>]\n".into(),
                ),
            }
        }
        (
            _,
            "/" | "/metrics" | "/healthz" | "/readyz" | "/status" | "/reload" | "/secondaries" | "/notify"
            | "/log-level" | "/history" | "/drain" | "/undrain",
        ) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(response)
}

/// `GET /secondaries?zone=Z[&serial=S]`: whether every secondary of zone Z (its NOTIFY
/// targets) serves serial S or later (default: the serial served here). 200 when all do, 503
/// while some do not yet, so an ACME hook can wait with `until curl -fs ...; do sleep 1; done`.
fn secondaries(control: &Control, query: &str) -> Response<Full<Bytes>> {
    let mut zone = None;
    let mut serial = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("zone", value)) => zone = Some(value.to_string()),
            Some(("serial", value)) => match value.parse::<u32>() {
                Ok(value) => serial = Some(value),
                Err(_) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "serial: not a number\n".into(),
                    );
                }
            },
            _ => {}
        }
    }
    let Some(zone) = zone else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "give ?zone=<origin>\n".into(),
        );
    };
    match control.secondaries(&zone, serial) {
        Some(report) => {
            let code = if report.all_have_serial {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, &report)
        }
        None => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("zone {zone} is not served here\n"),
        ),
    }
}

/// Why a request looks sent by a web page of another origin, for a state-changing endpoint:
/// a page in a browser on the operator's machine (or one whose name was rebound to 127.0.0.1)
/// can send a POST to a loopback port. Browsers mark such requests (Fetch Metadata
/// `Sec-Fetch-Site`, and `Origin` on every POST); `curl`, scrapers and `consortium-dns status`
/// send neither. An `Origin` naming a loopback address or `localhost` is the operator's own.
fn from_a_web_page(headers: &hyper::HeaderMap) -> Option<&'static str> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| !s.eq_ignore_ascii_case("same-origin") && !s.eq_ignore_ascii_case("none")) {
        return Some("cross-site request (Sec-Fetch-Site)");
    }
    let origin = headers.get(hyper::header::ORIGIN)?;
    let host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    let Some(host) = host else {
        return Some("unreadable Origin");
    };
    let name = host_name(host);
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then_some("Origin is not a loopback address")
}

/// Why the `Host` header says the request was meant for another site: a page on a name the
/// attacker controls, rebound to 127.0.0.1 (DNS rebinding), reaches this port with its own
/// name as `Host`. Accepted: an IP address literal (the endpoint has no name of its own) or
/// `localhost`, with or without a port; and no header at all (HTTP/1.0 tools).
fn foreign_host(headers: &hyper::HeaderMap) -> Option<&'static str> {
    let host = headers.get(hyper::header::HOST)?;
    let Ok(host) = host.to_str() else {
        return Some("unreadable Host header");
    };
    let name = host_name(host);
    let ours = name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
    (!ours).then_some("Host is not an IP address or localhost (the admin endpoint has no name)")
}

/// The 403 for a state-changing request a browser marks as sent by a web page, logged.
fn refused_web_page(headers: &hyper::HeaderMap) -> Option<Response<Full<Bytes>>> {
    let reason = from_a_web_page(headers)?;
    tracing::warn!(reason, "admin request refused: sent by a web page");
    Some(reply(
        StatusCode::FORBIDDEN,
        "text/plain",
        format!("refused: {reason}\n"),
    ))
}

/// The value of `name=` in the request's query, percent-decoded.
fn query_value(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        pair.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(percent_decoded)
    })
}

/// A URL query value with its percent-escapes decoded (RFC 3986 §2.1; `+` stays `+`).
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The versions of a zone kept for IXFR (`GET /history?zone=`), oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct ZoneHistory {
    pub zone: String,
    pub serial: u32,
    pub versions: Vec<VersionChange>,
}

/// What changed from one kept version to the next: records as `owner TYPE`, at most
/// `HISTORY_RECORDS_SHOWN` of each kind, with the totals.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionChange {
    pub from_serial: u32,
    pub to_serial: u32,
    pub removed_total: usize,
    pub added_total: usize,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

const HISTORY_RECORDS_SHOWN: usize = 20;

fn history(control: &Control, zone: &str) -> Option<ZoneHistory> {
    use crate::zone::name::Name;
    let origin = Name::parse_origin(zone).ok()?;
    let snapshot = control.shared.snapshot.load();
    let served = snapshot.zones().iter().find(|z| z.origin.key() == origin.key())?;
    // A whole SOA record ends with serial, refresh, retry, expire, minimum (RFC 1035 §3.3.13).
    let serial_of = |soa: &[u8]| {
        soa.len()
            .checked_sub(20)
            .and_then(|at| soa.get(at..at + 4))
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let summary = |records: &[Box<[u8]>]| -> Vec<String> {
        records
            .iter()
            .take(HISTORY_RECORDS_SHOWN)
            .map(|record| match Name::read_uncompressed(record, 0) {
                Some((name, end)) if record.len() >= end + 2 => {
                    let rtype = u16::from_be_bytes([record[end], record[end + 1]]);
                    format!("{name} {}", crate::wire::rtype::mnemonic(rtype))
                }
                _ => "(unreadable record)".to_string(),
            })
            .collect()
    };
    Some(ZoneHistory {
        zone: served.origin.to_string(),
        serial: served.serial,
        versions: served
            .transfer
            .diffs
            .iter()
            .map(|diff| VersionChange {
                from_serial: diff.from_serial,
                to_serial: serial_of(&diff.to_soa),
                removed_total: diff.removed.len(),
                added_total: diff.added.len(),
                removed: summary(&diff.removed),
                added: summary(&diff.added),
            })
            .collect(),
    })
}

/// The name or address of `host[:port]` or `[v6]:port`.
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

/// The status document of a running server.
pub fn status(control: &Control) -> StatusDocument {
    let snapshot = control.shared.snapshot.load();
    let (last_reload, last_successful_reload) = control.reload_reports();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    StatusDocument {
        ready: control.is_ready(),
        zones: snapshot
            .zones()
            .iter()
            .map(|z| ZoneStatus {
                zone: z.origin.to_string(),
                serial: z.serial,
                members: z.members.len(),
                acme_challenges: control
                    .challenges_of(&z.origin)
                    .into_iter()
                    .map(|c| ChallengeStatus {
                        name: c.name.to_string(),
                        key: c.key.to_string(),
                        expires_in_s: c.expires_unix as i64 - now_unix,
                    })
                    .collect(),
                secondaries: control
                    .secondaries(&z.origin.to_string(), None)
                    .map(|r| r.secondaries)
                    .unwrap_or_default(),
                dnssec: z.dnssec.as_ref().map(|d| d.report.clone()),
            })
            .collect(),
        secondary_zones: control.secondary_status(),
        last_reload,
        last_successful_reload,
        health: control.health.report(&snapshot),
    }
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn json<T: Serialize>(code: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => reply(code, "application/json", body + "\n"),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding failed: {e}\n"),
        ),
    }
}
