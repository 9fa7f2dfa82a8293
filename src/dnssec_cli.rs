//! `consortium-dns dnssec keygen | ds | status`: the zone's key pairs on disk, and what the
//! running server signs with.

use std::path::Path;
use std::process::ExitCode;

use consortium_dns::config::{Config, ZoneConfig};
use consortium_dns::dnssec::keys::{self, Role};
use consortium_dns::http::StatusDocument;
use consortium_dns::zone::name::Name;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Ecdsap256sha256,
    Ed25519,
}

/// The config and the zone named `zone` in it, or the exit code after printing why not.
fn zone_of(config_path: &Path, zone: &str) -> Result<(Config, ZoneConfig), ExitCode> {
    let config = crate::load_config(config_path)?;
    let wanted = Name::parse(&format!("{}.", zone.trim_end_matches('.')), None).map_err(|e| {
        eprintln!("--zone {zone}: {e}");
        ExitCode::from(crate::EX_USAGE)
    })?;
    match config.zone(&wanted).cloned() {
        Some(zone) => Ok((config, zone)),
        None => {
            eprintln!("{}: no [[zone]] {wanted}", config_path.display());
            Err(ExitCode::from(crate::EX_USAGE))
        }
    }
}

pub(crate) fn keygen(config: &Path, zone: &str, algorithm: Algorithm, zsk: bool) -> ExitCode {
    let (_, zone) = match zone_of(config, zone) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let number = match algorithm {
        Algorithm::Ecdsap256sha256 => keys::ECDSAP256SHA256,
        Algorithm::Ed25519 => keys::ED25519,
    };
    let role = if zsk { Role::Zsk } else { Role::Ksk };
    match keys::generate(
        &zone.keys_dir,
        zone.origin(),
        number,
        role,
        consortium_dns::wire::unix_now(),
    ) {
        Ok(file) => {
            println!("{}", file.display());
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{reason}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn ds(config: &Path, zone: &str) -> ExitCode {
    let (_, zone) = match zone_of(config, zone) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let pairs = match keys::load_dir(&zone.keys_dir, zone.origin()) {
        Ok(pairs) => pairs,
        Err(errors) => {
            for (file, reason) in errors {
                eprintln!("{}: {reason}", file.display());
            }
            return ExitCode::from(crate::EX_DATAERR);
        }
    };
    let now = consortium_dns::wire::unix_now();
    let mut printed = 0;
    for key in pairs
        .iter()
        .filter(|k| k.role() == Role::Ksk && k.timing.is_published(now))
    {
        let ds = keys::ds_rdata(zone.origin(), &key.dnskey_rdata());
        let digest: String = ds[4..].iter().map(|b| format!("{b:02X}")).collect();
        println!("{} IN DS {} {} {} {digest}", zone.origin(), key.tag, ds[2], ds[3]);
        printed += 1;
    }
    if printed == 0 {
        eprintln!(
            "no published KSK in {} (create one with `consortium-dns dnssec keygen`)",
            zone.keys_dir.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

pub(crate) fn status(config_path: &Path, only: Option<&str>) -> ExitCode {
    let config = match crate::load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let running = config
        .restart
        .http_listen
        .and_then(|addr| crate::status::fetch(addr).ok())
        .and_then(|body| serde_json::from_str::<StatusDocument>(&body).ok());
    let now = consortium_dns::wire::unix_now();
    let mut failed = false;
    for zone in &config.live.zones {
        let name = zone.origin().to_string();
        if only.is_some_and(|o| o.trim_end_matches('.') != name.trim_end_matches('.')) {
            continue;
        }
        let signed = if zone.signing.is_some() {
            "signed"
        } else {
            "not signed (dnssec = false)"
        };
        println!("zone {name}: {signed}, keys in {}", zone.keys_dir.display());
        match keys::load_dir(&zone.keys_dir, zone.origin()) {
            Ok(pairs) => {
                for key in &pairs {
                    let role = if key.role() == Role::Ksk { "KSK" } else { "ZSK" };
                    println!(
                        "  key {:5} {role} {:16} {:9} {}",
                        key.tag,
                        keys::algorithm_name(key.algorithm),
                        key.timing.state(now),
                        key.file.display()
                    );
                }
            }
            Err(errors) => {
                failed |= zone.signing.is_some();
                for (file, reason) in errors {
                    println!("  {}: {reason}", file.display());
                }
            }
        }
        let served = running
            .as_ref()
            .and_then(|doc| doc.zones.iter().find(|z| z.zone == name))
            .and_then(|z| z.dnssec.as_ref());
        match served {
            Some(report) => println!(
                "  served: earliest signature expiry {} UTC (in {:.1} days), {} signatures made and {} reused in the last build",
                keys::format_timestamp(report.earliest_expiry),
                (report.earliest_expiry as f64 - now as f64) / 86_400.0,
                report.signatures_made,
                report.signatures_reused
            ),
            None if zone.signing.is_some() => {
                println!("  served: unknown (no running server answered on the config's http-listen)")
            }
            None => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
