//! Server settings: the TOML config file format, its documented defaults, and validation into
//! the runtime `Config`. Paths in the file are relative to the file's own directory.
//!
//! It must not read zone or members files; `snapshot` does that.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::health::spec::HealthSettings;
use crate::server::rrl::RrlConfig;
use crate::transfer::tsig::{Algorithm, TsigKey};
use crate::zone::name::Name;
use crate::zone::{Diagnostic, Location};

/// Where `consortium-dns serve` looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/consortium-dns.toml";

/// The file format. Every key is optional except the zones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    limits: LimitsSection,
    /// Health-check defaults for every member (each member may override them).
    #[serde(default)]
    health: HealthSettings,
    /// Response rate limiting for UDP (on by default).
    #[serde(default)]
    rrl: RrlConfig,
    /// TSIG keys for zone transfers and NOTIFY.
    #[serde(default, rename = "key")]
    keys: Vec<toml::Spanned<KeySection>>,
    #[serde(default, rename = "zone")]
    zones: Vec<toml::Spanned<ZoneSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KeySection {
    /// Key name, as the secondaries know it (e.g. `transfer-key`).
    name: String,
    /// `hmac-sha256` or `hmac-sha512`.
    algorithm: String,
    /// File holding the base64 secret (bare, or `tsig-keygen` output). Never logged.
    secret_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TransferAclSection {
    /// `IP` or `IP/prefix` the transfer request must come from.
    network: String,
    /// The TSIG key the request must be signed with; unset = no TSIG required.
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NotifySection {
    /// A secondary to NOTIFY after every serial change, `IP:PORT`.
    address: String,
    /// Sign the NOTIFY with this TSIG key.
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServerSection {
    /// DNS listen addresses, UDP and TCP on each. Default `["127.0.0.1:5300"]`.
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    /// Loopback HTTP endpoint for metrics, health and admin. Default `127.0.0.1:8053`;
    /// `""` turns it off.
    #[serde(default = "default_http_listen")]
    http_listen: String,
    /// UDP worker threads, each with its own SO_REUSEPORT socket per address. 0 = one per CPU.
    #[serde(default)]
    udp_workers: usize,
    /// Answer to CH TXT `id.server` / `hostname.bind`; unset = REFUSED.
    #[serde(default)]
    identity: Option<String>,
    /// Answer to CH TXT `version.server` / `version.bind`; unset = REFUSED.
    #[serde(default)]
    version: Option<String>,
    /// Log one query in N at info level (target `query`); 0 = off.
    #[serde(default)]
    query_log_sample: u32,
    /// Count queries (by transport, qtype, rcode) and picks in the metrics. Default true; off
    /// only to measure what counting costs (the load benchmark does).
    #[serde(default = "default_true")]
    query_metrics: bool,
    /// File keeping each zone's served serial across restarts, so that it never goes
    /// backwards (the directory must be writable). Unset = not kept: after a restart the
    /// serial policy starts again from the zone files' serials.
    #[serde(default)]
    state_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            http_listen: default_http_listen(),
            udp_workers: 0,
            identity: None,
            version: None,
            query_log_sample: 0,
            query_metrics: true,
            state_file: None,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:5300".into()]
}

fn default_true() -> bool {
    true
}

fn default_http_listen() -> String {
    "127.0.0.1:8053".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LimitsSection {
    /// Largest UDP answer we send, whatever the client advertises (RFC 6891 §6.2.5; 1232 is
    /// the DNS Flag Day 2020 value that avoids IP fragmentation). Default 1232.
    #[serde(default = "default_udp_payload")]
    udp_payload: u16,
    /// Concurrent TCP connections in total. Default 1024.
    #[serde(default = "default_tcp_max_connections")]
    tcp_max_connections: usize,
    /// Concurrent TCP connections from one client address. Default 64.
    #[serde(default = "default_tcp_max_per_client")]
    tcp_max_connections_per_client: usize,
    /// A TCP connection on which no new message starts for this long is closed (RFC 7766
    /// §6.2.3). Default "10s".
    #[serde(default = "default_tcp_idle_timeout", with = "crate::duration::serde_text")]
    tcp_idle_timeout: Duration,
    /// Once a TCP message has started arriving, the whole of it must arrive within this
    /// (a client sending one byte at a time cannot hold the connection). Default "5s".
    #[serde(default = "default_tcp_read_timeout", with = "crate::duration::serde_text")]
    tcp_read_timeout: Duration,
    /// Largest query accepted, over UDP and TCP, in octets (512-65535). A longer datagram is
    /// dropped; a longer TCP message closes the connection. Default 4096: a query, even with
    /// EDNS options and a TSIG record, is a few hundred octets.
    #[serde(default = "default_max_message_size")]
    max_message_size: usize,
    /// Pipelined queries read ahead of their answers on one TCP connection: queries that
    /// arrive together are answered in order and written together, at most this many per
    /// write. Default 32.
    #[serde(default = "default_tcp_pipeline")]
    tcp_max_in_flight: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            udp_payload: default_udp_payload(),
            tcp_max_connections: default_tcp_max_connections(),
            tcp_max_connections_per_client: default_tcp_max_per_client(),
            tcp_idle_timeout: default_tcp_idle_timeout(),
            tcp_read_timeout: default_tcp_read_timeout(),
            max_message_size: default_max_message_size(),
            tcp_max_in_flight: default_tcp_pipeline(),
        }
    }
}

fn default_udp_payload() -> u16 {
    1232
}
fn default_tcp_max_connections() -> usize {
    1024
}
fn default_tcp_max_per_client() -> usize {
    64
}
fn default_tcp_idle_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_tcp_read_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_message_size() -> usize {
    4096
}
fn default_tcp_pipeline() -> usize {
    32
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ZoneSection {
    /// The zone's apex, e.g. `consortium.example`.
    origin: String,
    /// RFC 1035 master file.
    file: PathBuf,
    /// Members file (TOML) adding one CNAME per member and the pools.
    #[serde(default)]
    members: Option<PathBuf>,
    /// How the served SOA serial moves when the content changed but the file's serial did not:
    /// `keep`, `increment`, `unixtime` or `dateserial`. Default `increment`.
    #[serde(default)]
    serial_policy: SerialPolicy,
    /// Who may transfer the zone (AXFR/IXFR over TCP); nobody by default.
    #[serde(default)]
    allow_transfer: Vec<TransferAclSection>,
    /// Secondaries to NOTIFY (RFC 1996) after each serial change.
    #[serde(default)]
    notify: Vec<NotifySection>,
    /// Least time between serial bumps caused by health changes of the shared names' transfer
    /// answer (a flapping member cannot cause a transfer storm). Default "30s".
    #[serde(default = "default_pick_refresh", with = "crate::duration::serde_text")]
    transfer_pick_refresh: Duration,
}

fn default_pick_refresh() -> Duration {
    Duration::from_secs(30)
}

/// A network allowed to transfer a zone, and the key it must sign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferAcl {
    pub network: IpAddr,
    pub prefix: u8,
    pub key: Option<Name>,
}

impl TransferAcl {
    /// True when `client` lies in the network.
    pub fn contains(&self, client: IpAddr) -> bool {
        match (self.network, client) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => net.to_ipv4_mapped() == Some(ip) && self.prefix == 128,
            _ => false,
        }
    }
}

/// A secondary to notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub address: SocketAddr,
    pub key: Option<Name>,
}

/// How a reload raises the SOA serial of changed content (after Knot's `serial-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialPolicy {
    /// Serve the file's serial as written.
    Keep,
    /// Previous served serial + 1.
    #[default]
    Increment,
    /// Seconds since the Unix epoch (or previous + 1 if that is not greater).
    Unixtime,
    /// YYYYMMDDnn (or previous + 1 if that is not greater).
    Dateserial,
}

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself (for reload and messages).
    pub path: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub udp_workers: usize,
    pub identity: Option<String>,
    pub version: Option<String>,
    pub query_log_sample: u32,
    pub query_metrics: bool,
    /// Where served serials are kept across restarts (`crate::state`).
    pub state_file: Option<PathBuf>,
    pub limits: Limits,
    pub rrl: RrlConfig,
    pub health_defaults: HealthSettings,
    pub keys: Vec<TsigKey>,
    pub zones: Vec<ZoneConfig>,
}

/// Resource limits of the listeners.
#[derive(Debug, Clone)]
pub struct Limits {
    pub udp_payload: u16,
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_client: usize,
    pub tcp_idle_timeout: Duration,
    pub tcp_read_timeout: Duration,
    pub max_message_size: usize,
    pub tcp_max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let s = LimitsSection::default();
        Limits {
            udp_payload: s.udp_payload,
            tcp_max_connections: s.tcp_max_connections,
            tcp_max_connections_per_client: s.tcp_max_connections_per_client,
            tcp_idle_timeout: s.tcp_idle_timeout,
            tcp_read_timeout: s.tcp_read_timeout,
            max_message_size: s.max_message_size,
            tcp_max_in_flight: s.tcp_max_in_flight,
        }
    }
}

/// One served zone and its files (absolute or relative to the working directory).
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub origin: Name,
    pub file: PathBuf,
    pub members: Option<PathBuf>,
    pub serial_policy: SerialPolicy,
    pub allow_transfer: Vec<TransferAcl>,
    pub notify: Vec<NotifyTarget>,
    pub transfer_pick_refresh: Duration,
    pub location: Location,
}

impl Config {
    /// The serial policy of the zone `origin` (the default for a zone not configured).
    pub fn serial_policy(&self, origin: &Name) -> SerialPolicy {
        self.zones
            .iter()
            .find(|z| z.origin.key() == origin.key())
            .map(|z| z.serial_policy)
            .unwrap_or_default()
    }

    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file(path, format!("cannot read config: {e}"))])?;
        Config::parse(&text, path)
    }

    /// Parses config text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| vec![Diagnostic::toml(path, text, &e)])?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let whole = |message: String| Diagnostic::file(path, message);

        let mut listen = Vec::new();
        for text_addr in &file.server.listen {
            match text_addr.parse::<SocketAddr>() {
                Ok(addr) => listen.push(addr),
                Err(_) => errors.push(whole(format!(
                    "server.listen: bad address {text_addr:?} (want ADDR:PORT)"
                ))),
            }
        }
        if listen.is_empty() && errors.is_empty() {
            errors.push(whole("server.listen: at least one address is needed".into()));
        }
        let http_listen = if file.server.http_listen.is_empty() {
            None
        } else {
            match file.server.http_listen.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errors.push(whole(format!(
                        "server.http-listen: bad address {:?} (want ADDR:PORT)",
                        file.server.http_listen
                    )));
                    None
                }
            }
        };
        let limits = Limits {
            udp_payload: file.limits.udp_payload,
            tcp_max_connections: file.limits.tcp_max_connections,
            tcp_max_connections_per_client: file.limits.tcp_max_connections_per_client,
            tcp_idle_timeout: file.limits.tcp_idle_timeout,
            tcp_read_timeout: file.limits.tcp_read_timeout,
            max_message_size: file.limits.max_message_size,
            tcp_max_in_flight: file.limits.tcp_max_in_flight,
        };
        if limits.udp_payload < 512 {
            errors.push(whole("limits.udp-payload must be at least 512 (RFC 1035)".into()));
        }
        if limits.tcp_max_connections == 0 || limits.tcp_max_connections_per_client == 0 {
            errors.push(whole("limits: TCP connection limits must be at least 1".into()));
        }
        if limits.tcp_idle_timeout.is_zero() || limits.tcp_read_timeout.is_zero() {
            errors.push(whole("limits: TCP timeouts must be above zero".into()));
        }
        if !(512..=65_535).contains(&limits.max_message_size) {
            errors.push(whole(
                "limits.max-message-size must be from 512 to 65535 octets".into(),
            ));
        }
        if limits.tcp_max_in_flight == 0 {
            errors.push(whole("limits.tcp-max-in-flight must be at least 1".into()));
        }
        if let Err(reason) = file.rrl.validate() {
            errors.push(whole(format!("rrl: {reason}")));
        }
        if let Err(reason) = file.health.validate_defaults() {
            errors.push(whole(format!("health: {reason}")));
        }

        let mut keys: Vec<TsigKey> = Vec::new();
        for spanned in &file.keys {
            let location = Location::new(path.into(), line_of(text, spanned.span().start));
            let section = spanned.get_ref();
            let name = match Name::parse(&absolute_name(&section.name), None) {
                Ok(name) => name,
                Err(e) => {
                    errors.push(Diagnostic::at(location, format!("key name: {e}")));
                    continue;
                }
            };
            let Some(algorithm) = Algorithm::parse(&section.algorithm) else {
                errors.push(Diagnostic::at(
                    location,
                    format!(
                        "key {}: unknown algorithm {:?} (hmac-sha256 or hmac-sha512)",
                        section.name, section.algorithm
                    ),
                ));
                continue;
            };
            if keys.iter().any(|k| k.name.key() == name.key()) {
                errors.push(Diagnostic::at(
                    location,
                    format!("key {} defined twice", section.name),
                ));
                continue;
            }
            match TsigKey::from_file(&name, algorithm, &base.join(&section.secret_file)) {
                Ok(key) => keys.push(key),
                Err(reason) => errors.push(Diagnostic::at(
                    location,
                    format!("key {}: {reason}", section.name),
                )),
            }
        }
        let key_ref = |key: &Option<String>| -> Result<Option<Name>, String> {
            let Some(key) = key else { return Ok(None) };
            let name = Name::parse(&absolute_name(key), None).map_err(|e| e.to_string())?;
            if !file
                .keys
                .iter()
                .any(|k| k.get_ref().name.eq_ignore_ascii_case(key.trim_end_matches('.')))
            {
                return Err(format!("unknown key {key:?} (define it in a [[key]] table)"));
            }
            Ok(Some(Name::from_wire_unchecked(&name.key())))
        };

        let mut zones: Vec<ZoneConfig> = Vec::new();
        if file.zones.is_empty() {
            errors.push(whole("no [[zone]] configured".into()));
        }
        for spanned in &file.zones {
            let location = Location::new(path.into(), line_of(text, spanned.span().start));
            let section = spanned.get_ref();
            let origin_text = if section.origin.ends_with('.') {
                section.origin.clone()
            } else {
                format!("{}.", section.origin)
            };
            let origin = match Name::parse(&origin_text, None) {
                Ok(origin) => origin,
                Err(e) => {
                    errors.push(Diagnostic::at(location, format!("zone origin: {e}")));
                    continue;
                }
            };
            if zones.iter().any(|z| z.origin.key() == origin.key()) {
                errors.push(Diagnostic::at(
                    location,
                    format!("zone {origin} configured twice"),
                ));
                continue;
            }
            let mut allow_transfer = Vec::new();
            for acl in &section.allow_transfer {
                let (address, prefix) = match acl.network.split_once('/') {
                    Some((address, prefix)) => (address, prefix.parse::<u8>().ok()),
                    None => (acl.network.as_str(), None),
                };
                let Ok(network) = address.parse::<IpAddr>() else {
                    errors.push(Diagnostic::at(
                        location.clone(),
                        format!("allow-transfer: bad network {:?}", acl.network),
                    ));
                    continue;
                };
                let max = if network.is_ipv4() { 32 } else { 128 };
                let prefix = match prefix {
                    Some(p) if p <= max => p,
                    None if !acl.network.contains('/') => max,
                    _ => {
                        errors.push(Diagnostic::at(
                            location.clone(),
                            format!("allow-transfer: bad prefix in {:?}", acl.network),
                        ));
                        continue;
                    }
                };
                match key_ref(&acl.key) {
                    Ok(key) => allow_transfer.push(TransferAcl { network, prefix, key }),
                    Err(reason) => errors.push(Diagnostic::at(
                        location.clone(),
                        format!("allow-transfer: {reason}"),
                    )),
                }
            }
            let mut notify = Vec::new();
            for target in &section.notify {
                let Ok(address) = target.address.parse::<SocketAddr>() else {
                    errors.push(Diagnostic::at(
                        location.clone(),
                        format!("notify: bad address {:?} (want IP:PORT)", target.address),
                    ));
                    continue;
                };
                match key_ref(&target.key) {
                    Ok(key) => notify.push(NotifyTarget { address, key }),
                    Err(reason) => errors.push(Diagnostic::at(location.clone(), format!("notify: {reason}"))),
                }
            }
            zones.push(ZoneConfig {
                origin,
                file: base.join(&section.file),
                members: section.members.as_ref().map(|m| base.join(m)),
                serial_policy: section.serial_policy,
                allow_transfer,
                notify,
                transfer_pick_refresh: section.transfer_pick_refresh,
                location,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            path: path.to_path_buf(),
            listen,
            http_listen,
            udp_workers: file.server.udp_workers,
            identity: file.server.identity,
            version: file.server.version,
            query_log_sample: file.server.query_log_sample,
            query_metrics: file.server.query_metrics,
            state_file: file.server.state_file.map(|f| base.join(f)),
            limits,
            rrl: file.rrl,
            health_defaults: file.health,
            keys,
            zones,
        })
    }
}

/// `name` with a trailing dot.
fn absolute_name(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    LineIndex::new(text).line(offset)
}

/// Line starts of a text, so that many offsets (one per member of a 100,000-member file) map
/// to lines in O(log n) each instead of rescanning the text.
pub(crate) struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, c)| *c == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let config = Config::parse(
            "[[zone]]\norigin = \"example\"\nfile = \"example.zone\"\n",
            Path::new("/etc/cdns/c.toml"),
        )
        .expect("valid");
        assert_eq!(
            config.listen,
            vec!["127.0.0.1:5300".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(config.limits.udp_payload, 1232);
        assert_eq!(config.zones[0].file, PathBuf::from("/etc/cdns/example.zone"));
        assert_eq!(config.zones[0].origin.to_string(), "example.");
    }

    #[test]
    fn unknown_keys_rejected_with_line() {
        let errors = Config::parse(
            "[server]\nlisten = [\"127.0.0.1:53\"]\nlistne = 1\n",
            Path::new("c.toml"),
        )
        .expect_err("unknown key");
        let text = errors[0].to_string();
        assert!(text.starts_with("c.toml:3:"), "{text}");
        assert!(text.contains("listne"), "{text}");
    }
}
