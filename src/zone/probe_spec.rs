//! Health-check settings: the file form (every key optional, in the config's `[health]` and in
//! each member's `[member.health]`) and the validated `ProbeSpec` a prober runs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How a member is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// GET over TLS, certificate verified against the target hostname.
    Https,
    /// GET over plain HTTP.
    Http,
    /// A TCP connect.
    Tcp,
    /// No probe: always up.
    None,
}

/// The state a member starts in before its first probes complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    Up,
    Down,
}

/// Health settings as written; unset keys fall back to the config's `[health]`, then to the
/// built-in defaults documented on `ProbeSpec::DEFAULT_*`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthSettings {
    pub kind: Option<ProbeKind>,
    /// HTTP(S) path, default `/`.
    pub path: Option<String>,
    /// Port probed; default 443 (https), 80 (http); required for tcp.
    pub port: Option<u16>,
    /// Connect here instead of resolving the target (`IP` or `IP:PORT`); SNI and Host stay the
    /// target hostname.
    pub address: Option<String>,
    /// Expected HTTP status: `"2xx"`, `"200"` or `"200-399"`. Default `"2xx"`.
    pub expect_status: Option<String>,
    /// The response body must contain this text.
    pub body_contains: Option<String>,
    #[serde(default, with = "crate::duration::serde_text_opt")]
    pub interval: Option<Duration>,
    #[serde(default, with = "crate::duration::serde_text_opt")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "crate::duration::serde_text_opt")]
    pub jitter: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub initial: Option<InitialState>,
    #[serde(default, with = "crate::duration::serde_text_opt")]
    pub slow_start: Option<Duration>,
    /// Extra trust anchors (PEM) for https probes, for private networks and tests.
    pub ca_file: Option<PathBuf>,
}

/// A validated probe configuration for one member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub path: String,
    pub port: u16,
    pub address: Option<SocketAddr>,
    pub expect_status: (u16, u16),
    pub body_contains: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    pub rise: u32,
    pub fall: u32,
    pub initial: InitialState,
    pub slow_start: Duration,
    pub ca_file: Option<PathBuf>,
}

impl ProbeSpec {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const DEFAULT_JITTER: Duration = Duration::from_secs(1);
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;
    pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(30);
}

impl HealthSettings {
    /// `self` with unset keys taken from `defaults`.
    pub fn or(&self, defaults: &HealthSettings) -> HealthSettings {
        HealthSettings {
            kind: self.kind.or(defaults.kind),
            path: self.path.clone().or_else(|| defaults.path.clone()),
            port: self.port.or(defaults.port),
            address: self.address.clone().or_else(|| defaults.address.clone()),
            expect_status: self
                .expect_status
                .clone()
                .or_else(|| defaults.expect_status.clone()),
            body_contains: self
                .body_contains
                .clone()
                .or_else(|| defaults.body_contains.clone()),
            interval: self.interval.or(defaults.interval),
            timeout: self.timeout.or(defaults.timeout),
            jitter: self.jitter.or(defaults.jitter),
            rise: self.rise.or(defaults.rise),
            fall: self.fall.or(defaults.fall),
            initial: self.initial.or(defaults.initial),
            slow_start: self.slow_start.or(defaults.slow_start),
            ca_file: self.ca_file.clone().or_else(|| defaults.ca_file.clone()),
        }
    }

    /// Checks the config-level defaults on their own (a tcp port may come from the member).
    pub fn validate_defaults(&self) -> Result<(), String> {
        let mut probe = self.clone();
        if probe.port.is_none() {
            probe.port = Some(443);
        }
        probe.resolve().map(|_| ())
    }

    /// Fills in built-in defaults and validates. The result is what a prober runs.
    pub fn resolve(&self) -> Result<ProbeSpec, String> {
        let kind = self.kind.unwrap_or(ProbeKind::Https);
        let port = match (self.port, kind) {
            (Some(0), _) => return Err("port 0 is not a valid probe port".into()),
            (Some(port), _) => port,
            (None, ProbeKind::Https) => 443,
            (None, ProbeKind::Http) => 80,
            // `address = "IP:PORT"` already names the port.
            (None, ProbeKind::Tcp) => match self.address.as_deref().map(str::parse::<SocketAddr>) {
                Some(Ok(addr)) => addr.port(),
                _ => return Err("a tcp probe needs a port (or an address with one)".into()),
            },
            (None, ProbeKind::None) => 0,
        };
        let path = self.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(format!(
                "probe path {path:?} must start with '/' and hold no spaces"
            ));
        }
        let address = match &self.address {
            None => None,
            Some(text) => Some(parse_probe_address(text, port)?),
        };
        let expect_status = parse_status(self.expect_status.as_deref().unwrap_or("2xx"))?;
        let interval = self.interval.unwrap_or(ProbeSpec::DEFAULT_INTERVAL);
        let timeout = self
            .timeout
            .unwrap_or(ProbeSpec::DEFAULT_TIMEOUT.min(interval / 2));
        let jitter = self.jitter.unwrap_or(ProbeSpec::DEFAULT_JITTER.min(interval / 4));
        if interval.is_zero() {
            return Err("probe interval must be above zero".into());
        }
        if timeout.is_zero() || timeout >= interval {
            return Err(format!(
                "probe timeout ({}) must be above zero and below the interval ({})",
                crate::duration::format(timeout),
                crate::duration::format(interval)
            ));
        }
        if jitter >= interval {
            return Err("probe jitter must be below the interval".into());
        }
        let rise = self.rise.unwrap_or(ProbeSpec::DEFAULT_RISE);
        let fall = self.fall.unwrap_or(ProbeSpec::DEFAULT_FALL);
        if rise == 0 || fall == 0 {
            return Err("rise and fall must be at least 1".into());
        }
        if kind != ProbeKind::Https && self.ca_file.is_some() {
            return Err("ca-file applies only to https probes".into());
        }
        Ok(ProbeSpec {
            kind,
            path,
            port,
            address,
            expect_status,
            body_contains: self.body_contains.clone(),
            interval,
            timeout,
            jitter,
            rise,
            fall,
            initial: self.initial.unwrap_or(InitialState::Up),
            slow_start: self.slow_start.unwrap_or(ProbeSpec::DEFAULT_SLOW_START),
            ca_file: self.ca_file.clone(),
        })
    }
}

fn parse_probe_address(text: &str, port: u16) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => return Err(format!("probe address {text:?} has port 0")),
        Ok(addr) => addr,
        Err(_) => text
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|_| format!("bad probe address {text:?} (want IP or IP:PORT)"))?,
    };
    // Connecting to 0.0.0.0 or :: reaches this host's own services: never a member's address
    // (a loopback address, written here on purpose, is allowed: a local test or a sidecar).
    if addr.ip().is_unspecified() {
        return Err(format!(
            "probe address {text:?} is the unspecified address, which reaches this host itself; write the member's address"
        ));
    }
    Ok(addr)
}

fn parse_status(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("bad expect-status {text:?} (want \"2xx\", \"200\" or \"200-399\")");
    let range = if let Some(class) = text.strip_suffix("xx") {
        let digit: u16 = class.parse().map_err(|_| bad())?;
        (digit * 100, digit * 100 + 99)
    } else if let Some((low, high)) = text.split_once('-') {
        (
            low.trim().parse().map_err(|_| bad())?,
            high.trim().parse().map_err(|_| bad())?,
        )
    } else {
        let code: u16 = text.parse().map_err(|_| bad())?;
        (code, code)
    };
    if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) || range.0 > range.1 {
        return Err(bad());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let spec = HealthSettings::default().resolve().expect("defaults are valid");
        assert_eq!(spec.kind, ProbeKind::Https);
        assert_eq!(spec.port, 443);
        assert_eq!(spec.expect_status, (200, 299));
        assert!(spec.timeout < spec.interval);
    }

    #[test]
    fn the_unspecified_address_is_never_a_probe_address() {
        for text in ["0.0.0.0:8053", "[::]:443", "0.0.0.0"] {
            let settings = HealthSettings {
                kind: Some(ProbeKind::Tcp),
                port: Some(80),
                address: Some(text.into()),
                ..HealthSettings::default()
            };
            let error = settings
                .resolve()
                .expect_err("the unspecified address is refused");
            assert!(error.contains("unspecified address"), "{text}: {error}");
        }
    }

    #[test]
    fn tcp_port_may_come_from_the_address() {
        let spec = HealthSettings {
            kind: Some(ProbeKind::Tcp),
            address: Some("127.0.0.1:8443".into()),
            ..Default::default()
        }
        .resolve()
        .expect("the address names the port");
        assert_eq!(spec.port, 8443);
        assert_eq!(spec.address, Some("127.0.0.1:8443".parse().expect("addr")));
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = |s: HealthSettings| s.resolve().expect_err("invalid");
        assert!(
            bad(HealthSettings {
                interval: Some(Duration::ZERO),
                ..Default::default()
            })
            .contains("interval")
        );
        assert!(
            bad(HealthSettings {
                interval: Some(Duration::from_secs(1)),
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            })
            .contains("timeout")
        );
        assert!(
            bad(HealthSettings {
                port: Some(0),
                ..Default::default()
            })
            .contains("port")
        );
        assert!(
            bad(HealthSettings {
                kind: Some(ProbeKind::Tcp),
                ..Default::default()
            })
            .contains("port")
        );
        assert!(
            bad(HealthSettings {
                path: Some("x y".into()),
                ..Default::default()
            })
            .contains("path")
        );
        assert!(
            bad(HealthSettings {
                address: Some("nope".into()),
                ..Default::default()
            })
            .contains("address")
        );
        assert!(
            bad(HealthSettings {
                expect_status: Some("7xx".into()),
                ..Default::default()
            })
            .contains("status")
        );
    }
}
