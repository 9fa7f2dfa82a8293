//! The HTML status page at `/` of the admin endpoint: the `/status` document rendered for a
//! person, server-side, without JavaScript. It reloads itself every few seconds (a `<meta
//! http-equiv="refresh">`), so an open tab follows members going down and coming back.
//!
//! Every value from outside (member labels, targets, probe details, reload errors) is
//! HTML-escaped; the page's Content-Security-Policy (set in `http::handle`) allows no script at all.

use std::fmt::Write as _;

use super::StatusDocument;
use crate::health::{MemberReport, PoolReport};

/// Seconds between the page's own reloads.
const REFRESH_SECONDS: u32 = 5;

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for element content and quoted attributes.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f3f3f3}td.num{text-align:right}\
.up{background:#e3f6e3}.down{background:#fbe0e0}.drained{background:#eee;color:#666}\
.unknown{background:#fff6d6}.warn{color:#a40000;font-weight:bold}.ok{color:#1a6b1a}";

/// The whole page for `document`.
pub(super) fn render(document: &StatusDocument, version: &str) -> String {
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>consortium-dns status</title><style>{STYLE}</style></head><body>\n\
         <h1>consortium-dns status</h1>\n<p>version {} &middot; {} &middot; this page reloads every {REFRESH_SECONDS} s</p>\n",
        escape(version),
        if document.ready {
            "<span class=\"ok\">ready</span>"
        } else {
            "<span class=\"warn\">not ready</span>"
        },
    );
    reload_section(&mut out, document);
    zones_section(&mut out, document);
    for pool in &document.health.pools {
        pool_section(&mut out, pool);
    }
    secondary_zones_section(&mut out, document);
    out.push_str("</body></html>\n");
    out
}

fn reload_section(out: &mut String, document: &StatusDocument) {
    out.push_str("<h2>Last reload</h2>\n");
    match &document.last_reload {
        None => out.push_str("<p>none yet</p>\n"),
        Some(report) if report.ok => {
            let _ = writeln!(
                out,
                "<p id=\"reload\" class=\"ok\">ok ({}, {:.0} ms, unix {})</p>",
                escape(&report.trigger),
                report.duration_ms,
                report.at_unix
            );
        }
        Some(report) => {
            let _ = writeln!(
                out,
                "<p id=\"reload\" class=\"warn\">failed ({}, unix {}): the previous data is served</p><ul>",
                escape(&report.trigger),
                report.at_unix
            );
            for error in &report.errors {
                let _ = writeln!(out, "<li>{}</li>", escape(error));
            }
            out.push_str("</ul>\n");
        }
    }
    if let Some(report) = document
        .last_reload
        .as_ref()
        .filter(|r| !r.restart_needed.is_empty())
    {
        let _ = writeln!(
            out,
            "<p class=\"warn\">changed settings that need a restart: {}</p>",
            escape(&report.restart_needed.join(", "))
        );
    }
}

fn zones_section(out: &mut String, document: &StatusDocument) {
    out.push_str(
        "<h2>Zones</h2>\n<table id=\"zones\"><tr><th>zone</th><th>serial</th><th>members</th>\
         <th>DNSSEC</th><th>secondaries (serial last seen)</th></tr>\n",
    );
    for zone in &document.zones {
        let dnssec = match &zone.dnssec {
            Some(report) => format!(
                "signed, {} keys, earliest signature expiry unix {}",
                report.keys.len(),
                report.earliest_expiry
            ),
            None => "unsigned".to_string(),
        };
        let secondaries = if zone.secondaries.is_empty() {
            "none".to_string()
        } else {
            zone.secondaries
                .iter()
                .map(|s| {
                    let serial = s.serial.map_or("not asked yet".to_string(), |v| v.to_string());
                    let state = if s.has_serial { "up to date" } else { "behind" };
                    format!("{} ({serial}, {state})", s.address)
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&zone.zone),
            zone.serial,
            zone.members,
            escape(&dnssec),
            secondaries
        );
    }
    out.push_str("</table>\n");
}

fn pool_section(out: &mut String, pool: &PoolReport) {
    let _ = writeln!(
        out,
        "<h2>Pool {}</h2>\n<p>policy {}, TTL {} s, cert-policy {}{}</p>",
        escape(&pool.name),
        escape(&pool.policy),
        pool.ttl,
        escape(&pool.cert_policy),
        if pool.fail_open {
            " &middot; <span class=\"warn fail-open\">FAILING OPEN: no member is eligible, picking among all by configured weight</span>"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "<table class=\"members\" data-pool=\"{}\"><tr><th>member</th><th>target</th><th>probe</th><th>state</th>\
         <th>weight (effective / configured)</th><th>last probe</th><th>latency</th><th>age</th>\
         <th>certificate</th></tr>",
        escape(&pool.name)
    );
    for member in &pool.members {
        member_row(out, member);
    }
    out.push_str("</table>\n");
    if pool.members_omitted > 0 {
        let _ = writeln!(
            out,
            "<p>{} more members, all up, not listed (<a href=\"/?members=all\">list every member</a>)</p>",
            pool.members_omitted
        );
    }
}

fn member_row(out: &mut String, member: &MemberReport) {
    let state = if member.drained {
        "drained"
    } else {
        match member.state.as_str() {
            "up" => "up",
            "down" => "down",
            _ => "unknown",
        }
    };
    let (detail, latency, age) = match &member.last_probe {
        Some(probe) => (
            format!("{} {}", if probe.ok { "ok:" } else { "failed:" }, probe.detail),
            format!("{:.1} ms", probe.latency_ms),
            format!("{:.0} s ago", probe.age_s),
        ),
        None => ("-".to_string(), "-".to_string(), "-".to_string()),
    };
    let certificate = match &member.certificate {
        Some(cert) => format!(
            "expires in {} days; covers node: {}, pool: {}{}",
            cert.days_to_expiry.map_or("?".to_string(), |d| d.to_string()),
            yes_no(cert.covers_node),
            yes_no(cert.covers_pool),
            if member.cert_eligible { "" } else { "; INELIGIBLE" }
        ),
        None => "-".to_string(),
    };
    let _ = writeln!(
        out,
        "<tr class=\"{state}\" data-member=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"state\">{state}</td>\
         <td class=\"num\">{:.2} / {}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
        escape(&member.label),
        escape(&member.label),
        escape(&member.target),
        escape(&member.probe),
        member.effective_weight,
        member.configured_weight,
        escape(&detail),
        latency,
        age,
        escape(&certificate)
    );
}

fn secondary_zones_section(out: &mut String, document: &StatusDocument) {
    if document.secondary_zones.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Zones served as a secondary</h2>\n<table id=\"secondary-zones\"><tr><th>zone</th>\
         <th>primaries</th><th>serial</th><th>primary serial</th><th>state</th></tr>\n",
    );
    for zone in &document.secondary_zones {
        let state = match (&zone.last_error, zone.expired) {
            (_, true) => "<span class=\"warn\">expired: not served</span>".to_string(),
            (Some(error), false) => format!("<span class=\"warn\">{}</span>", escape(error)),
            (None, false) => "ok".to_string(),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{state}</td></tr>",
            escape(&zone.zone),
            escape(&zone.primaries.join(", ")),
            zone.serial.map_or("-".to_string(), |s| s.to_string()),
            zone.primary_serial.map_or("-".to_string(), |s| s.to_string()),
        );
    }
    out.push_str("</table>\n");
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn outside_text_cannot_open_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
