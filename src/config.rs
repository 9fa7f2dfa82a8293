//! Server settings: the TOML config file format, its documented defaults, and validation into
//! the runtime `Config`. Paths in the file are relative to the file's own directory.
//!
//! The runtime `Config` is split by type into what a reload applies (`LiveSettings`) and what
//! only a restart applies (`RestartSettings`), so "restart needed" is computed in one place.
//! It must not read zone or members files; `zone` does that.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diag::{Diagnostic, Location, line_of};
use crate::peers::{NotifyTarget, TransferAcl, ZonePeers};
use crate::tsig::{Algorithm, TsigKey};
use crate::update::Policy as UpdatePolicy;
use crate::zone::name::Name;
use crate::zone::probe_spec::HealthSettings;
pub use crate::zone::serial::SerialPolicy;
use crate::zone::{FileLimits, Source};

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
    rrl: RrlSection,
    /// TSIG keys for zone transfers and NOTIFY.
    #[serde(default, rename = "key")]
    keys: Vec<toml::Spanned<KeySection>>,
    #[serde(default, rename = "zone")]
    zones: Vec<toml::Spanned<ZoneSection>>,
    /// The GeoIP database for the geographic pick policies.
    #[serde(default)]
    geoip: GeoipSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GeoipSection {
    /// A MaxMind DB file (GeoLite2-City or DB-IP City Lite layout).
    database: Option<PathBuf>,
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

/// A `secret-file` that starts so is a credential systemd hands the service
/// (`LoadCredential=`): a copy only the service's user can read, `DynamicUser=yes` included,
/// so the secret itself can stay readable by root alone.
const CREDENTIALS_PREFIX: &str = "$CREDENTIALS_DIRECTORY/";

/// Where a key's `secret-file` is: `$CREDENTIALS_DIRECTORY/NAME` in the directory systemd
/// names in that variable, anything else relative to the config's directory.
fn secret_path(base: &Path, written: &Path) -> Result<PathBuf, String> {
    let Some(name) = written
        .to_str()
        .and_then(|text| text.strip_prefix(CREDENTIALS_PREFIX))
    else {
        return Ok(base.join(written));
    };
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(directory) => Ok(Path::new(&directory).join(name)),
        None => Err(format!(
            "secret-file {:?} is a systemd credential, but $CREDENTIALS_DIRECTORY is not set: \
             systemd sets it for a unit with LoadCredential= (outside the unit, run \
             `CREDENTIALS_DIRECTORY=/etc/consortium-dns/credentials consortium-dns check`, or \
             give the file's own path)",
            written.display()
        )),
    }
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
    /// The address NOTIFY and the SOA queries that follow it are sent from (BIND's
    /// `notify-source`, Knot's `via`), for a secondary that accepts NOTIFY from one address.
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PrimarySection {
    /// The primary, `IP:PORT`.
    address: String,
    /// Sign SOA queries and transfer requests with this TSIG key; check the answers with it.
    #[serde(default)]
    key: Option<String>,
    /// The address SOA queries and transfers are sent from (BIND's `transfer-source`), for a
    /// primary whose transfer ACL names one address of this host.
    #[serde(default)]
    source: Option<String>,
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
    /// backwards (the directory must be writable). Default `$STATE_DIRECTORY/state.json`
    /// under systemd, else `consortium-dns.state.json` beside the config; "" = not kept (a
    /// restart then asks the NOTIFY targets for their serials and continues above them).
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
    /// Records one zone may have, counting every `$INCLUDE` expansion and every member.
    /// Default 10,000,000. Applied by every reload.
    #[serde(default = "default_zone_records")]
    zone_records: usize,
    /// Bytes read for one zone, counting every `$INCLUDE` expansion. Default 1 GiB.
    #[serde(default = "default_zone_bytes")]
    zone_bytes: u64,
    /// `$INCLUDE` directives followed for one zone, counting repeats. Default 1,000.
    #[serde(default = "default_zone_includes")]
    zone_includes: usize,
    /// Errors reported per file; the rest are counted in one line. Default 50.
    #[serde(default = "default_errors_per_file")]
    errors_per_file: usize,
}

fn default_zone_records() -> usize {
    FileLimits::default().zone_records
}
fn default_zone_bytes() -> u64 {
    FileLimits::default().zone_bytes
}
fn default_zone_includes() -> usize {
    FileLimits::default().zone_includes
}
fn default_errors_per_file() -> usize {
    FileLimits::default().errors_per_file
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
            zone_records: default_zone_records(),
            zone_bytes: default_zone_bytes(),
            zone_includes: default_zone_includes(),
            errors_per_file: default_errors_per_file(),
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
    /// RFC 1035 master file (a primary zone; a secondary has `primaries` instead).
    #[serde(default)]
    file: Option<PathBuf>,
    /// The zone is a secondary of these primaries (`{ address = "IP:PORT", key = "NAME" }`):
    /// transferred in by AXFR/IXFR, never read from a file.
    #[serde(default)]
    primaries: Vec<PrimarySection>,
    /// A secondary's copy of the transferred zone. Default `secondary/<origin>zone` beside the
    /// `[server] state-file`, or beside this config without one.
    #[serde(default)]
    store: Option<PathBuf>,
    /// A secondary's own probe address per member label (`{ node1 = "IP[:PORT]" }`): from its
    /// own vantage point a member may be reached elsewhere than the primary's settings say.
    #[serde(default)]
    probe_addresses: std::collections::BTreeMap<String, String>,
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
    /// TTL of the ACME challenge TXT records members add by UPDATE. Default 0 (ACME servers
    /// query afresh each time).
    #[serde(default, with = "crate::duration::serde_seconds_or_text")]
    acme_challenge_ttl: Duration,
    /// How long a challenge value lives before it is removed by itself. Default "1h".
    #[serde(
        default = "default_challenge_lifetime",
        with = "crate::duration::serde_seconds_or_text"
    )]
    acme_challenge_lifetime: Duration,
    /// Values one key may hold at one name. Default 8.
    #[serde(default = "default_challenge_quota")]
    acme_challenge_quota: u32,
    /// Accept any TXT value, not only ACME key-authorisation digests (43 base64url
    /// characters). Default false.
    #[serde(default)]
    acme_challenge_any_value: bool,
    /// Updates per second one key may send (a burst of twice that). Default 5.
    #[serde(default = "default_update_rate")]
    update_rate: u32,
    /// Other instances serving this zone from the same files, `IP:PORT`: an accepted UPDATE
    /// is forwarded to each (still signed by its sender) so that every one serves it.
    #[serde(default)]
    update_peers: Vec<String>,
    /// Sign the zone (DNSSEC) with the key pairs in `keys`. Default false.
    #[serde(default)]
    dnssec: bool,
    /// The zone's key directory (BIND-format pairs). Default `keys/<origin>/` beside the zone
    /// file.
    #[serde(default)]
    keys: Option<PathBuf>,
    /// When CDS/CDNSKEY are published: "none", "always", "rollover" (default).
    #[serde(default)]
    cds: crate::dnssec::CdsPolicy,
    /// Authenticated denial of existence: "nsec" (default) or "nsec3" (RFC 5155 with the
    /// RFC 9276 parameters: SHA-1, no extra iterations, empty salt, no opt-out).
    #[serde(default)]
    denial: crate::dnssec::Denial,
    /// Directories `$INCLUDE` may read besides the zone file's own (and those below it).
    /// Relative to the config file. Default none.
    #[serde(default)]
    include_roots: Vec<PathBuf>,
    /// A reload that would remove more than this share of the zone's members, or of its
    /// zone-file records, is held back until forced (`ctl reload --force`): an emptied or
    /// truncated file is what an editor writing in place leaves for a moment. 0.5 by default;
    /// 1 never holds back.
    #[serde(default = "default_hold_back_removal")]
    hold_back_removal: f64,
}

fn default_hold_back_removal() -> f64 {
    0.5
}

fn default_pick_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_challenge_lifetime() -> Duration {
    Duration::from_secs(3_600)
}

fn default_challenge_quota() -> u32 {
    8
}

fn default_update_rate() -> u32 {
    5
}

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself (for reload and messages).
    pub path: PathBuf,
    /// Applied when the server starts; a reload that changes them reports it and keeps them.
    pub restart: RestartSettings,
    /// Applied by every reload.
    pub live: LiveSettings,
}

/// Settings only a restart applies: sockets, threads and per-connection limits are made once.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartSettings {
    pub listen: Vec<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub udp_workers: usize,
    pub query_log_sample: u32,
    pub query_metrics: bool,
    pub limits: Limits,
    /// Buckets of the RRL table, allocated once (`[rrl] table-size`).
    pub rrl_table_size: usize,
}

impl RestartSettings {
    /// The settings that differ between `self` and `other`, named as in the config file.
    pub fn differences(&self, other: &RestartSettings) -> Vec<String> {
        // Destructured, so a new field cannot be added without deciding its name here.
        let RestartSettings {
            listen,
            http_listen,
            udp_workers,
            query_log_sample,
            query_metrics,
            limits,
            rrl_table_size,
        } = self;
        let mut changed = Vec::new();
        let mut note = |differs: bool, name: &str| {
            if differs {
                changed.push(name.to_string());
            }
        };
        note(*listen != other.listen, "server.listen");
        note(*http_listen != other.http_listen, "server.http-listen");
        note(*udp_workers != other.udp_workers, "server.udp-workers");
        note(
            *query_log_sample != other.query_log_sample,
            "server.query-log-sample",
        );
        note(*query_metrics != other.query_metrics, "server.query-metrics");
        note(*limits != other.limits, "limits");
        note(*rrl_table_size != other.rrl_table_size, "rrl.table-size");
        changed
    }
}

/// Settings every reload applies.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub identity: Option<String>,
    pub version: Option<String>,
    /// Where served serials are kept across restarts (`control::serial_state`).
    pub state_file: Option<PathBuf>,
    /// `[geoip] database`, opened (read again by every reload).
    pub geo: Option<std::sync::Arc<crate::geo::GeoDb>>,
    /// Response rate limiting: on/off, rates, slip and netblocks.
    pub rrl: RrlRates,
    pub health_defaults: HealthSettings,
    pub keys: Vec<TsigKey>,
    pub zones: Vec<ZoneConfig>,
}

/// `[rrl]` as written. Defaults are conservative: a resolver behind one /24 asking the same
/// name more than 20 times a second is already abnormal given our TTLs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RrlSection {
    /// Off switch (benchmarks against servers with their RRL off). Default true.
    #[serde(default = "default_true")]
    enabled: bool,
    /// Identical answers per second per netblock. Default 20.
    #[serde(default = "default_responses")]
    responses_per_second: u32,
    /// NXDOMAIN answers per second per netblock and zone. Default 10.
    #[serde(default = "default_nxdomains")]
    nxdomains_per_second: u32,
    /// Error answers (REFUSED, FORMERR, ...) per second per netblock. Default 10.
    #[serde(default = "default_errors")]
    errors_per_second: u32,
    /// Every Nth limited response is sent truncated (TC=1, empty) so real clients retry over
    /// TCP; 0 = drop them all. Default 2.
    #[serde(default = "default_slip")]
    slip: u32,
    /// IPv4 netblock prefix length. Default 24.
    #[serde(default = "default_ipv4_prefix")]
    ipv4_prefix: u8,
    /// IPv6 netblock prefix length. Default 56.
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: u8,
    /// Buckets in the table (memory: 8 bytes each; restart-only). Default 65536.
    #[serde(default = "default_rrl_table_size")]
    table_size: usize,
}

impl Default for RrlSection {
    fn default() -> Self {
        RrlSection {
            enabled: true,
            responses_per_second: default_responses(),
            nxdomains_per_second: default_nxdomains(),
            errors_per_second: default_errors(),
            slip: default_slip(),
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            table_size: default_rrl_table_size(),
        }
    }
}

fn default_responses() -> u32 {
    20
}
fn default_nxdomains() -> u32 {
    10
}
fn default_errors() -> u32 {
    10
}
fn default_slip() -> u32 {
    2
}
fn default_ipv4_prefix() -> u8 {
    24
}
fn default_ipv6_prefix() -> u8 {
    56
}
/// Also the table of a limiter built without a config (tests, benchmarks).
pub const DEFAULT_RRL_TABLE_SIZE: usize = 65_536;
fn default_rrl_table_size() -> usize {
    DEFAULT_RRL_TABLE_SIZE
}

/// The reloadable part of `[rrl]`, as the limiter applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrlRates {
    pub enabled: bool,
    pub responses_per_second: u32,
    pub nxdomains_per_second: u32,
    pub errors_per_second: u32,
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl Default for RrlRates {
    fn default() -> Self {
        RrlSection::default().split().0
    }
}

impl RrlSection {
    /// (reloadable rates, restart-only table size)
    fn split(&self) -> (RrlRates, usize) {
        let rates = RrlRates {
            enabled: self.enabled,
            responses_per_second: self.responses_per_second,
            nxdomains_per_second: self.nxdomains_per_second,
            errors_per_second: self.errors_per_second,
            slip: self.slip,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
        };
        (rates, self.table_size)
    }

    fn validate(&self) -> Result<(), String> {
        if self.responses_per_second == 0 || self.nxdomains_per_second == 0 || self.errors_per_second == 0 {
            return Err("rates must be at least 1 per second (set enabled = false to turn RRL off)".into());
        }
        if self.ipv4_prefix > 32 || self.ipv6_prefix > 128 {
            return Err("prefix lengths must be at most 32 (IPv4) and 128 (IPv6)".into());
        }
        if self.table_size == 0 || self.table_size > 1 << 26 {
            return Err("table-size must be between 1 and 67108864".into());
        }
        Ok(())
    }
}

/// Resource limits of the listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One served zone: its files (absolute or relative to the working directory) and settings.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// Origin and files, as the zone loader reads them.
    pub source: Source,
    pub serial_policy: SerialPolicy,
    /// Who may transfer the zone, whom to NOTIFY.
    pub peers: ZonePeers,
    pub transfer_pick_refresh: Duration,
    /// What RFC 2136 UPDATE may do in this zone (members' ACME challenges).
    pub updates: UpdatePolicy,
    /// DNSSEC signing settings; None for an unsigned zone.
    pub signing: Option<crate::dnssec::SigningConfig>,
    /// The zone's key directory (where `dnssec keygen` writes, signed or not yet).
    pub keys_dir: PathBuf,
    /// Set for a secondary zone: where it is transferred from.
    pub secondary: Option<SecondarySettings>,
    /// Share of members or records a reload may remove before it is held back (0..=1).
    pub hold_back_removal: f64,
    pub location: Location,
}

/// A secondary zone's settings (`[[zone]] primaries`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondarySettings {
    pub primaries: Vec<Primary>,
    /// The on-disk copy of the transferred zone.
    pub store: PathBuf,
    /// Member label (lowercase) -> this instance's own probe address for it.
    pub probe_addresses: Vec<(String, String)>,
}

/// One primary of a secondary zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub address: SocketAddr,
    /// Lowercased TSIG key name, as declared in a `[[key]]`.
    pub key: Option<Name>,
    /// The local address to send from; the system's choice when unset.
    pub source: Option<IpAddr>,
}

impl ZoneConfig {
    pub fn origin(&self) -> &Name {
        &self.source.origin
    }

    pub fn is_secondary(&self) -> bool {
        self.secondary.is_some()
    }
}

/// Where served serials are kept when the config does not say: the systemd unit's
/// StateDirectory (`$STATE_DIRECTORY`, writable by its dynamic user), else beside the config.
/// On by default: without it a restart would serve the files' serials again, lower than what
/// secondaries hold, and they would stop following (RFC 1982 comparison).
fn default_state_file(config_dir: &Path) -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd passes a colon-separated list; the first is the unit's own.
        Some(dirs) if !dirs.is_empty() => {
            let dirs = dirs.to_string_lossy().into_owned();
            PathBuf::from(dirs.split(':').next().unwrap_or_default()).join("state.json")
        }
        _ => config_dir.join("consortium-dns.state.json"),
    }
}

/// The admin endpoint a config names (`[server] http-listen`, its default when absent; None
/// when set to ""), read without the rest of the config: `ctl` must find a running server even
/// while the config on disk is being edited or is broken.
pub fn admin_address(path: &Path) -> Result<Option<SocketAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let listen = match table.get("server").and_then(|s| s.get("http-listen")) {
        None => default_http_listen(),
        Some(value) => value
            .as_str()
            .ok_or_else(|| format!("{}: server.http-listen is not a string", path.display()))?
            .to_string(),
    };
    if listen.is_empty() {
        return Ok(None);
    }
    listen
        .parse()
        .map(Some)
        .map_err(|_| format!("{}: server.http-listen: bad address {listen:?}", path.display()))
}

impl Config {
    /// The settings of the zone `origin`, if it is configured.
    /// What is allowed but probably not meant, for `check` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for zone in &self.live.zones {
            let open = zone
                .peers
                .allow_transfer
                .iter()
                .any(|acl| acl.prefix == 0 && acl.key.is_none());
            if open {
                warnings.push(format!(
                    "zone {}: allow-transfer lets anyone on the internet transfer the zone without a key",
                    zone.origin()
                ));
            }
            if self.live.state_file.is_none() && !zone.is_secondary() && zone.peers.notify.is_empty() {
                warnings.push(format!(
                    "zone {}: state-file is off and no NOTIFY targets can be asked, so a restart serves the zone file's serial, which may be below what secondaries hold",
                    zone.origin()
                ));
            }
        }
        warnings
    }

    pub fn zone(&self, origin: &Name) -> Option<&ZoneConfig> {
        let key = origin.key();
        self.live.zones.iter().find(|z| z.origin().key() == key)
    }

    /// The serial policy of the zone `origin` (the default for a zone not configured).
    pub fn serial_policy(&self, origin: &Name) -> SerialPolicy {
        self.zone(origin).map(|z| z.serial_policy).unwrap_or_default()
    }

    /// This config with `running`'s restart-only settings: what a reload actually applies.
    pub fn with_restart_settings_of(mut self, running: &Config) -> Config {
        self.restart = running.restart.clone();
        self
    }

    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        // Noted for a reload's consistency check (`file_set`); a config is small.
        let bytes = crate::file_set::read(path, 64 << 20)
            .map_err(|reason| vec![Diagnostic::file(path, format!("config: {reason}"))])?;
        let text = String::from_utf8(bytes).map_err(|_| {
            vec![Diagnostic::file(
                path,
                "config: invalid UTF-8 (a config is UTF-8 text)",
            )]
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text as if read from `path`. Every problem is reported, not just the
    /// first.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| vec![Diagnostic::toml(path, text, &e)])?;
        let mut parser = Parser {
            path,
            text,
            base: path.parent().unwrap_or(Path::new(".")),
            errors: Vec::new(),
        };
        let listen = parser.listen(&file.server);
        let http_listen = parser.http_listen(&file.server);
        let limits = parser.limits(&file.limits);
        if let Err(reason) = file.rrl.validate() {
            parser.whole(format!("rrl: {reason}"));
        }
        if let Err(reason) = file.health.validate_defaults() {
            parser.whole(format!("health: {reason}"));
        }
        let keys = parser.keys(&file.keys);
        // A reference to a key whose secret failed to load is that key's error, not its own.
        let declared: Vec<&str> = file.keys.iter().map(|k| k.get_ref().name.as_str()).collect();
        // A secondary's copy defaults to the state file's directory (writable under systemd).
        let state_file = match &file.server.state_file {
            // `state-file = ""`: served serials are not kept (restarts ask the secondaries).
            Some(f) if f.as_os_str().is_empty() => None,
            Some(f) => Some(parser.base.join(f)),
            None => Some(default_state_file(parser.base)),
        };
        let state_dir = state_file
            .as_ref()
            .map(|f| f.parent().map(Path::to_path_buf).unwrap_or_default());
        let file_limits = parser.file_limits(&file.limits);
        let key_files: Vec<PathBuf> = file
            .keys
            .iter()
            .filter_map(|k| secret_path(parser.base, &k.get_ref().secret_file).ok())
            .collect();
        let zones = parser.zones(
            &file.zones,
            &declared,
            state_dir.as_deref(),
            (file_limits, &key_files),
        );
        let geo = match &file.geoip.database {
            None => None,
            Some(path) => match crate::geo::GeoDb::open(&parser.base.join(path)) {
                Ok(db) => Some(std::sync::Arc::new(db)),
                Err(reason) => {
                    parser.whole(format!("[geoip] database: {reason}"));
                    None
                }
            },
        };
        if !parser.errors.is_empty() {
            return Err(parser.errors);
        }
        let (rrl, rrl_table_size) = file.rrl.split();
        Ok(Config {
            path: path.to_path_buf(),
            restart: RestartSettings {
                listen,
                http_listen,
                udp_workers: file.server.udp_workers,
                query_log_sample: file.server.query_log_sample,
                query_metrics: file.server.query_metrics,
                limits,
                rrl_table_size,
            },
            live: LiveSettings {
                identity: file.server.identity,
                version: file.server.version,
                state_file,
                geo,
                rrl,
                health_defaults: file.health,
                keys,
                zones,
            },
        })
    }
}

/// Validation of one config file: each step reads one section and collects its errors.
struct Parser<'t> {
    path: &'t Path,
    text: &'t str,
    /// Paths in the file are relative to its directory.
    base: &'t Path,
    errors: Vec<Diagnostic>,
}

impl Parser<'_> {
    /// An error about the file as a whole (serde keeps no spans inside plain sections).
    fn whole(&mut self, message: String) {
        self.errors.push(Diagnostic::file(self.path, message));
    }

    fn at(&mut self, location: &Location, message: String) {
        self.errors.push(Diagnostic::at(location.clone(), message));
    }

    fn location_of(&self, offset: usize) -> Location {
        Location::new(self.path.into(), line_of(self.text, offset))
    }

    fn listen(&mut self, server: &ServerSection) -> Vec<SocketAddr> {
        let mut listen = Vec::new();
        for text_addr in &server.listen {
            match text_addr.parse::<SocketAddr>() {
                Ok(addr) => listen.push(addr),
                Err(_) => self.whole(format!(
                    "server.listen: bad address {text_addr:?} (want ADDR:PORT)"
                )),
            }
        }
        if server.listen.is_empty() {
            self.whole("server.listen: at least one address is needed".into());
        }
        listen
    }

    fn http_listen(&mut self, server: &ServerSection) -> Option<SocketAddr> {
        if server.http_listen.is_empty() {
            return None;
        }
        let parsed = server.http_listen.parse::<SocketAddr>().ok();
        if parsed.is_none() {
            self.whole(format!(
                "server.http-listen: bad address {:?} (want ADDR:PORT)",
                server.http_listen
            ));
        }
        parsed
    }

    fn limits(&mut self, section: &LimitsSection) -> Limits {
        let limits = Limits {
            udp_payload: section.udp_payload,
            tcp_max_connections: section.tcp_max_connections,
            tcp_max_connections_per_client: section.tcp_max_connections_per_client,
            tcp_idle_timeout: section.tcp_idle_timeout,
            tcp_read_timeout: section.tcp_read_timeout,
            max_message_size: section.max_message_size,
            tcp_max_in_flight: section.tcp_max_in_flight,
        };
        if limits.udp_payload < 512 {
            self.whole("limits.udp-payload must be at least 512 (RFC 1035)".into());
        }
        if limits.tcp_max_connections == 0 || limits.tcp_max_connections_per_client == 0 {
            self.whole("limits: TCP connection limits must be at least 1".into());
        }
        if limits.tcp_idle_timeout.is_zero() || limits.tcp_read_timeout.is_zero() {
            self.whole("limits: TCP timeouts must be above zero".into());
        }
        if !(512..=65_535).contains(&limits.max_message_size) {
            self.whole("limits.max-message-size must be from 512 to 65535 octets".into());
        }
        if limits.tcp_max_in_flight == 0 {
            self.whole("limits.tcp-max-in-flight must be at least 1".into());
        }
        limits
    }

    /// The `[limits]` keys bounding what reading one zone's files may cost.
    fn file_limits(&mut self, section: &LimitsSection) -> FileLimits {
        let limits = FileLimits {
            zone_records: section.zone_records,
            zone_bytes: section.zone_bytes,
            zone_includes: section.zone_includes,
            errors_per_file: section.errors_per_file,
        };
        if limits.zone_records == 0 || limits.zone_bytes == 0 || limits.errors_per_file == 0 {
            self.whole("limits: zone-records, zone-bytes and errors-per-file must be at least 1".into());
        }
        limits
    }

    /// The `[[key]]` tables, their secret files read.
    fn keys(&mut self, sections: &[toml::Spanned<KeySection>]) -> Vec<TsigKey> {
        let mut keys: Vec<TsigKey> = Vec::new();
        for spanned in sections {
            let location = self.location_of(spanned.span().start);
            let section = spanned.get_ref();
            let name = match Name::parse(&absolute_name(&section.name), None) {
                Ok(name) => name,
                Err(e) => {
                    self.at(&location, format!("key name: {e}"));
                    continue;
                }
            };
            let Some(algorithm) = Algorithm::parse(&section.algorithm) else {
                self.at(
                    &location,
                    format!(
                        "key {}: unknown algorithm {:?} (hmac-sha256 or hmac-sha512)",
                        section.name, section.algorithm
                    ),
                );
                continue;
            };
            if keys.iter().any(|k| k.name.key() == name.key()) {
                self.at(&location, format!("key {} defined twice", section.name));
                continue;
            }
            let loaded = secret_path(self.base, &section.secret_file)
                .and_then(|path| TsigKey::from_file(&name, algorithm, &path));
            match loaded {
                Ok(key) => keys.push(key),
                Err(reason) => self.at(&location, format!("key {}: {reason}", section.name)),
            }
        }
        keys
    }

    fn zones(
        &mut self,
        sections: &[toml::Spanned<ZoneSection>],
        declared: &[&str],
        state_dir: Option<&Path>,
        (file_limits, key_files): (FileLimits, &[PathBuf]),
    ) -> Vec<ZoneConfig> {
        let mut zones: Vec<ZoneConfig> = Vec::new();
        if sections.is_empty() {
            self.whole("no [[zone]] configured".into());
        }
        for spanned in sections {
            let location = self.location_of(spanned.span().start);
            let section = spanned.get_ref();
            let origin = match Name::parse(&absolute_name(&section.origin), None) {
                Ok(origin) => origin,
                Err(e) => {
                    self.at(&location, format!("zone origin: {e}"));
                    continue;
                }
            };
            if zones.iter().any(|z| z.origin().key() == origin.key()) {
                self.at(&location, format!("zone {origin} configured twice"));
                continue;
            }
            let peers = ZonePeers {
                allow_transfer: self.transfer_acls(&location, &section.allow_transfer, declared),
                notify: self.notify_targets(&location, &section.notify, declared),
            };
            let secondary = self.secondary(&location, section, &origin, declared, state_dir);
            let file = match (&section.file, &secondary) {
                (Some(file), None) => self.base.join(file),
                (None, Some(settings)) => settings.store.clone(),
                (Some(_), Some(_)) => {
                    self.at(
                        &location,
                        format!("zone {origin}: a secondary (primaries) reads no file; remove `file`"),
                    );
                    continue;
                }
                (None, None) => {
                    self.at(
                        &location,
                        format!("zone {origin}: set `file` (a primary zone) or `primaries` (a secondary)"),
                    );
                    continue;
                }
            };
            let keys_dir = match &section.keys {
                Some(dir) => self.base.join(dir),
                None => crate::dnssec::default_keys_dir(&file, &origin),
            };
            let signing = section.dnssec.then(|| crate::dnssec::SigningConfig {
                keys_dir: keys_dir.clone(),
                cds: section.cds,
                denial: section.denial,
            });
            if !(0.0..=1.0).contains(&section.hold_back_removal) {
                self.at(
                    &location,
                    format!("zone {origin}: hold-back-removal must be from 0 to 1 (a share of the zone)"),
                );
            }
            zones.push(ZoneConfig {
                signing,
                keys_dir,
                secondary,
                hold_back_removal: section.hold_back_removal,
                source: Source {
                    origin,
                    file,
                    members: section.members.as_ref().map(|m| self.base.join(m)),
                    limits: file_limits,
                    include_roots: section.include_roots.iter().map(|d| self.base.join(d)).collect(),
                    never_include: key_files.to_vec(),
                },
                serial_policy: section.serial_policy,
                peers,
                transfer_pick_refresh: section.transfer_pick_refresh,
                updates: UpdatePolicy {
                    ttl: section
                        .acme_challenge_ttl
                        .as_secs()
                        .min(u64::from(i32::MAX as u32)) as u32,
                    lifetime: section.acme_challenge_lifetime,
                    quota: section.acme_challenge_quota,
                    any_value: section.acme_challenge_any_value,
                    rate: section.update_rate,
                    peers: section
                        .update_peers
                        .iter()
                        .filter_map(|peer| match peer.parse::<SocketAddr>() {
                            Ok(address) => Some(address),
                            Err(_) => {
                                self.at(
                                    &location,
                                    format!("update-peers: bad address {peer:?} (want IP:PORT)"),
                                );
                                None
                            }
                        })
                        .collect(),
                },
                location,
            });
        }
        zones
    }

    /// A `[[zone]]`'s secondary settings, when it has `primaries`.
    fn secondary(
        &mut self,
        location: &Location,
        section: &ZoneSection,
        origin: &Name,
        declared: &[&str],
        state_dir: Option<&Path>,
    ) -> Option<SecondarySettings> {
        if section.primaries.is_empty() {
            if section.store.is_some() || !section.probe_addresses.is_empty() {
                self.at(
                    location,
                    "store and probe-addresses apply to a secondary (primaries)".into(),
                );
            }
            return None;
        }
        if section.members.is_some() || section.dnssec {
            self.at(
                location,
                format!(
                    "zone {origin}: a secondary takes its members and signatures from the primary; \
                     remove `members` and `dnssec`"
                ),
            );
        }
        let mut primaries = Vec::new();
        for primary in &section.primaries {
            let Ok(address) = primary.address.parse::<SocketAddr>() else {
                self.at(
                    location,
                    format!("primaries: bad address {:?} (want IP:PORT)", primary.address),
                );
                continue;
            };
            let Ok(source) = self.source_address(location, "primaries", primary.source.as_deref(), address)
            else {
                continue;
            };
            match key_ref(&primary.key, declared) {
                Ok(key) => primaries.push(Primary { address, key, source }),
                Err(reason) => self.at(location, format!("primaries: {reason}")),
            }
        }
        let store = match &section.store {
            Some(path) => self.base.join(path),
            None => {
                let mut name = origin.to_string().to_ascii_lowercase();
                name.push_str("zone");
                state_dir.unwrap_or(self.base).join("secondary").join(name)
            }
        };
        Some(SecondarySettings {
            primaries,
            store,
            probe_addresses: section
                .probe_addresses
                .iter()
                .map(|(label, address)| (label.to_ascii_lowercase(), address.clone()))
                .collect(),
        })
    }

    fn transfer_acls(
        &mut self,
        location: &Location,
        sections: &[TransferAclSection],
        declared: &[&str],
    ) -> Vec<TransferAcl> {
        let mut acls = Vec::new();
        for acl in sections {
            let (address, prefix) = match acl.network.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok())),
                None => (acl.network.as_str(), None),
            };
            let Ok(network) = address.parse::<IpAddr>() else {
                self.at(location, format!("allow-transfer: bad network {:?}", acl.network));
                continue;
            };
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(Some(p)) if p <= max => p,
                Some(_) => {
                    self.at(
                        location,
                        format!("allow-transfer: bad prefix in {:?}", acl.network),
                    );
                    continue;
                }
            };
            match key_ref(&acl.key, declared) {
                Ok(key) => acls.push(TransferAcl { network, prefix, key }),
                Err(reason) => self.at(location, format!("allow-transfer: {reason}")),
            }
        }
        acls
    }

    fn notify_targets(
        &mut self,
        location: &Location,
        sections: &[NotifySection],
        declared: &[&str],
    ) -> Vec<NotifyTarget> {
        let mut targets = Vec::new();
        for target in sections {
            // An address without a port means DNS's own, 53 (as NSD and Knot read it).
            let parsed = target.address.parse::<SocketAddr>().or_else(|_| {
                target
                    .address
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            let Ok(address) = parsed else {
                self.at(
                    location,
                    format!("notify: bad address {:?} (want IP or IP:PORT)", target.address),
                );
                continue;
            };
            let Ok(source) = self.source_address(location, "notify", target.source.as_deref(), address)
            else {
                continue;
            };
            match key_ref(&target.key, declared) {
                Ok(key) => targets.push(NotifyTarget { address, key, source }),
                Err(reason) => self.at(location, format!("notify: {reason}")),
            }
        }
        targets
    }

    /// A `source` address: an IP of the same family as the peer's (`Err` once reported).
    fn source_address(
        &mut self,
        location: &Location,
        what: &str,
        source: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Option<IpAddr>, ()> {
        let Some(text) = source else { return Ok(None) };
        match text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) if ip.is_ipv4() == peer.is_ipv4() => Ok(Some(ip)),
            Ok(_) => {
                self.at(
                    location,
                    format!("{what}: source {text:?} and address {peer} are not of one IP family"),
                );
                Err(())
            }
            Err(_) => {
                self.at(
                    location,
                    format!("{what}: bad source {text:?} (want an IP address of this host, no port)"),
                );
                Err(())
            }
        }
    }
}

/// The key a transfer ACL or NOTIFY target names, which a `[[key]]` table must declare.
fn key_ref(key: &Option<String>, declared: &[&str]) -> Result<Option<Name>, String> {
    let Some(key) = key else { return Ok(None) };
    let name = Name::parse(&absolute_name(key), None).map_err(|e| e.to_string())?;
    if !declared
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key.trim_end_matches('.')))
    {
        return Err(format!("unknown key {key:?} (define it in a [[key]] table)"));
    }
    Ok(Some(Name::from_wire_unchecked(&name.key())))
}

/// `name` with a trailing dot.
fn absolute_name(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
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
            config.restart.listen,
            vec!["127.0.0.1:5300".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(config.restart.limits.udp_payload, 1232);
        assert_eq!(
            config.live.zones[0].source.file,
            PathBuf::from("/etc/cdns/example.zone")
        );
        assert_eq!(config.live.zones[0].origin().to_string(), "example.");
        // Served serials are kept by default (beside the config outside systemd), and
        // `state-file = ""` turns that off.
        if std::env::var_os("STATE_DIRECTORY").is_none() {
            assert_eq!(
                config.live.state_file,
                Some(PathBuf::from("/etc/cdns/consortium-dns.state.json"))
            );
        }
        let off = Config::parse(
            "[server]\nstate-file = \"\"\n[[zone]]\norigin = \"example\"\nfile = \"example.zone\"\n",
            Path::new("/etc/cdns/c.toml"),
        )
        .expect("valid");
        assert_eq!(off.live.state_file, None);
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
