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
pub(crate) fn admin_address(config: &Path, http_listen: Option<SocketAddr>) -> Result<SocketAddr, String> {
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

/// `ctl reload [--force]`: reloads, prints the outcome; exit 0 when it was published.
pub(crate) fn reload(config: &Path, http_listen: Option<SocketAddr>, force: bool) -> ExitCode {
    let addr = match admin_address(config, http_listen) {
        Ok(addr) => addr,
        Err(reason) => {
            eprintln!("{reason}");
            return ExitCode::from(2);
        }
    };
    let path = if force { "/reload?force=1" } else { "/reload" };
    let (code, status_line, body) = match crate::status::admin_request(addr, "POST", path, RELOAD_WAIT) {
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
