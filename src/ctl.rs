//! `consortium-dns ctl`: commands to a running server through its admin endpoint, found from
//! the config's `[server] http-listen` (as `nsd-control` and `knotc` find their server).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use consortium_dns::control::ReloadReport;

/// How long a reload may take before the command gives up waiting (the reload itself runs
/// to its end on the server whatever happens to this command).
const RELOAD_WAIT: Duration = Duration::from_secs(600);

/// The admin endpoint: `--http-listen` when given, else the config's `[server] http-listen`
/// (the default 127.0.0.1:8053 when there is no config file at that path).
fn admin_address(config: &Path, http_listen: Option<SocketAddr>) -> Result<SocketAddr, ExitCode> {
    admin_address_of(config, http_listen).map_err(|reason| {
        eprintln!("{reason}");
        ExitCode::from(2)
    })
}

/// As `admin_address`, the reason as text.
pub(crate) fn admin_address_of(config: &Path, http_listen: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Some(addr) = http_listen {
        return Ok(addr);
    }
    if !config.exists() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], 8053)));
    }
    match consortium_dns::config::admin_address(config)? {
        Some(addr) => Ok(addr),
        None => Err(format!(
            "{}: [server] http-listen is off, so there is no admin endpoint to talk to",
            config.display()
        )),
    }
}

/// `ctl reload [ZONE] [--force]`: reloads, prints the outcome; exit 0 when it was published.
pub(crate) fn reload(
    config: &Path,
    http_listen: Option<SocketAddr>,
    zone: Option<&str>,
    force: bool,
) -> ExitCode {
    let addr = match admin_address(config, http_listen) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    let mut parameters = Vec::new();
    if let Some(zone) = zone {
        parameters.push(format!("zone={}", query_value(zone)));
    }
    if force {
        parameters.push("force=1".to_string());
    }
    let path = if parameters.is_empty() {
        "/reload".to_string()
    } else {
        format!("/reload?{}", parameters.join("&"))
    };
    let (code, status_line, body) = match crate::status::admin_request(addr, "POST", &path, RELOAD_WAIT) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("cannot reach the server at http://{addr}{path}: {e} (is it running?)");
            return ExitCode::from(2);
        }
    };
    let report: ReloadReport = match serde_json::from_str(&body) {
        Ok(report) => report,
        Err(_) => {
            eprintln!("reload refused: {status_line}: {}", body.trim());
            return ExitCode::from(2);
        }
    };
    print!("{}", render_reload(&report));
    if code == 200 && report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn render_reload(report: &ReloadReport) -> String {
    let mut out = String::new();
    if report.ok {
        out.push_str(&format!("reloaded in {:.0} ms\n", report.duration_ms));
    } else {
        out.push_str("reload failed; the server keeps serving the previous data:\n");
        for error in &report.errors {
            out.push_str(&format!("  {error}\n"));
        }
    }
    for (zone, serial) in &report.serials {
        out.push_str(&format!("  {zone} serial {serial}\n"));
    }
    for setting in &report.restart_needed {
        out.push_str(&format!("  changed, applied at the next restart: {setting}\n"));
    }
    out
}

/// `ctl notify ZONE`: NOTIFYs the zone's secondaries of its current serial now.
pub(crate) fn notify(config: &Path, http_listen: Option<SocketAddr>, zone: &str) -> ExitCode {
    post(
        config,
        http_listen,
        &format!("/notify?zone={}", query_value(zone)),
    )
}

/// `ctl log-level FILTER`: the running server's log filter (`info`, `debug`,
/// `consortium_dns=debug,info`...), until the next restart.
pub(crate) fn log_level(config: &Path, http_listen: Option<SocketAddr>, level: &str) -> ExitCode {
    post(
        config,
        http_listen,
        &format!("/log-level?level={}", query_value(level)),
    )
}

/// `ctl drain MEMBER` / `ctl undrain MEMBER`.
pub(crate) fn drain(
    config: &Path,
    http_listen: Option<SocketAddr>,
    member: &str,
    zone: Option<&str>,
    drained: bool,
) -> ExitCode {
    let verb = if drained { "drain" } else { "undrain" };
    let mut path = format!("/{verb}?member={}", query_value(member));
    if let Some(zone) = zone {
        path.push_str(&format!("&zone={}", query_value(zone)));
    }
    post(config, http_listen, &path)
}

/// A POST to the admin endpoint whose answer is a line of text: printed, exit 0 on 200.
fn post(config: &Path, http_listen: Option<SocketAddr>, path: &str) -> ExitCode {
    let addr = match admin_address(config, http_listen) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    match crate::status::admin_request(addr, "POST", path, Duration::from_secs(10)) {
        Ok((200, _, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((_, status_line, body)) => {
            eprintln!("{status_line}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot reach the server at http://{addr}{path}: {e} (is it running?)");
            ExitCode::from(2)
        }
    }
}

/// `ctl zone-status [ZONE]`: each zone's serial, the last load, and each secondary's last
/// known serial.
pub(crate) fn zone_status(config: &Path, http_listen: Option<SocketAddr>, zone: Option<&str>) -> ExitCode {
    let addr = match admin_address(config, http_listen) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    let document: consortium_dns::http::StatusDocument = match crate::status::fetch(addr)
        .map_err(|e| e.to_string())
        .and_then(|body| serde_json::from_str(&body).map_err(|e| e.to_string()))
    {
        Ok(document) => document,
        Err(e) => {
            eprintln!("cannot read status from http://{addr}/status: {e}");
            return ExitCode::from(2);
        }
    };
    let wanted = zone.map(|z| z.trim_end_matches('.').to_ascii_lowercase());
    let mut shown = 0;
    for z in &document.zones {
        if wanted
            .as_deref()
            .is_some_and(|w| z.zone.trim_end_matches('.') != w)
        {
            continue;
        }
        shown += 1;
        println!("zone {}  serial {}  members {}", z.zone, z.serial, z.members);
        for secondary in &z.secondaries {
            let serial = secondary
                .serial
                .map_or("not yet answered".to_string(), |s| s.to_string());
            let state = if secondary.has_serial {
                "up to date"
            } else {
                "behind"
            };
            println!("  secondary {}  serial {serial}  {state}", secondary.address);
        }
    }
    if let Some(report) = &document.last_reload {
        let outcome = if report.ok { "ok" } else { "FAILED" };
        println!("last load: {} ({}) {outcome}", report.trigger, report.at_unix);
    }
    if shown == 0 {
        eprintln!("no zone {} served here", zone.unwrap_or(""));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `value` percent-encoded for a URL query (RFC 3986 §2.1): all but unreserved characters.
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `ctl history ZONE`: the versions kept for IXFR and what changed in each.
pub(crate) fn history(config: &Path, http_listen: Option<SocketAddr>, zone: &str) -> ExitCode {
    let addr = match admin_address(config, http_listen) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    let path = format!("/history?zone={}", query_value(zone));
    let history: consortium_dns::http::ZoneHistory =
        match crate::status::admin_request(addr, "GET", &path, Duration::from_secs(10)) {
            Ok((200, _, body)) => match serde_json::from_str(&body) {
                Ok(history) => history,
                Err(e) => {
                    eprintln!("unexpected history document: {e}");
                    return ExitCode::from(2);
                }
            },
            Ok((_, status_line, body)) => {
                eprintln!("{status_line}: {}", body.trim());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("cannot reach the server at http://{addr}{path}: {e} (is it running?)");
                return ExitCode::from(2);
            }
        };
    println!(
        "zone {}  serial {}  {} versions kept for IXFR",
        history.zone,
        history.serial,
        history.versions.len()
    );
    for version in &history.versions {
        println!(
            "  {} -> {}: {} removed, {} added",
            version.from_serial, version.to_serial, version.removed_total, version.added_total
        );
        for record in &version.removed {
            println!("    - {record}");
        }
        for record in &version.added {
            println!("    + {record}");
        }
        let hidden =
            version.removed_total + version.added_total - version.removed.len() - version.added.len();
        if hidden > 0 {
            println!("    ... and {hidden} more");
        }
    }
    ExitCode::SUCCESS
}
