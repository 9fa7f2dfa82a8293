//! The control plane's reload pipeline: load -> validate -> build -> publish -> notify, with
//! one entry, `Control::rebuild`, that every trigger uses (start, file watcher, SIGHUP,
//! `POST /reload`, the health-driven transfer-pick refresh).
//!
//! It is the one place a Snapshot is stored. It owns the running config, the reload reports
//! and the served-serial state file; it must not answer queries or run probes.

mod secondary;
pub mod serial_state;
mod signing;
mod updates;
pub use secondary::SecondaryZoneStatus;
pub use updates::{SecondariesReport, SecondaryState};
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Config, SerialPolicy};
use crate::diag::Diagnostic;
use crate::health::HealthManager;
use crate::metrics::Metrics;
use crate::server::Shared;
use crate::snapshot::{BuildOptions, Snapshot};
use crate::sync::lock;
use crate::transfer::history;
use crate::transfer::notifier::Notifier;
use crate::update;
use crate::wire;
use crate::zone::serial::choose_serial;
use crate::zone::{self, ZoneData};
use serial_state::SerialState;
use watch::WatchHandle;

/// The outcome of one load or reload, as status and `POST /reload` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    pub ok: bool,
    /// What asked for it: "start", "file change", "SIGHUP", "http".
    pub trigger: String,
    pub at_unix: u64,
    /// `file:line: reason` for every problem found; empty on success.
    pub errors: Vec<String>,
    /// Settings changed in the config that only a restart applies.
    pub restart_needed: Vec<String>,
    /// Served serial per zone after this reload (unchanged zones included).
    pub serials: BTreeMap<String, u32>,
    pub duration_ms: f64,
}

/// Command-line settings that win over the config file, on start and on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<Vec<SocketAddr>>,
    pub http_listen: Option<Option<SocketAddr>>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = &self.listen {
            config.restart.listen = listen.clone();
        }
        if let Some(http) = self.http_listen {
            config.restart.http_listen = http;
        }
    }
}

/// What a rebuild starts from.
#[derive(Clone)]
enum Change {
    /// The first load: this config, serials continuing from the state file, or for a zone
    /// it does not know, above the highest serial its secondaries said they hold (`floors`).
    Start(Box<Config>, HashMap<Box<[u8]>, u32>),
    /// The config file and every zone file read again, or with `zone` only that zone's files
    /// and keys under the running config (`ctl reload ZONE`, as `knotc zone-reload`); `force`
    /// publishes even what the hold-back guard (`held_back`) would keep.
    Reload {
        force: bool,
        zone: Option<zone::name::Name>,
    },
    /// The published data again, with a new serial for these zones (lowercased origins):
    /// health moved their transfer pick.
    TransferPicks(Vec<Box<[u8]>>),
    /// The published data again, with these zones' challenge values as the store now holds
    /// them (an UPDATE, or values whose lifetime ended).
    Dynamic(Vec<Box<[u8]>>),
    /// The published data again, signed anew, with a new serial for these zones: signatures
    /// near expiry, or a key changing state.
    Resign(Vec<Box<[u8]>>),
    /// The published data again, with the secondary zones' copies as they now stand (a
    /// transfer, or a copy expiring).
    Transferred,
}

/// What the rebuild lock guards: state that changes only inside a rebuild.
#[derive(Debug, Default)]
struct Rebuilding {
    /// When health last raised each zone's serial (per `transfer-pick-refresh`).
    bumps: HashMap<Box<[u8]>, Instant>,
    /// The dynamic layer: ACME challenge values members added by UPDATE.
    challenges: update::store::Store,
    /// Per-key update rates and the request MACs already seen.
    guard: update::Guard,
    /// The signed zones' key sets, as the last start or reload read them.
    keys: signing::KeySets,
    /// The signed zones' signatures of the last build, reused while they stay valid.
    signatures: signing::Caches,
    /// When re-signing last failed (it is retried a minute later).
    resign_failed_at: Option<Instant>,
    /// Every file the last whole reload read, as it read them; empty after any other reload
    /// from files and after a failed one (`Control::files_unchanged`).
    last_reads: Vec<crate::file_set::FileRead>,
}

/// What a published rebuild reports.
struct Rebuilt {
    serials: BTreeMap<String, u32>,
    restart_needed: Vec<String>,
}

/// The last reload attempt and the last successful one.
#[derive(Debug, Default)]
struct Reports {
    last: Option<ReloadReport>,
    last_success: Option<ReloadReport>,
}

/// Everything the control plane needs; shared by the HTTP endpoint, signals and watcher.
#[derive(Debug)]
pub struct Control {
    pub shared: Arc<Shared>,
    pub health: Arc<HealthManager>,
    pub metrics: Metrics,
    /// The config as running (overrides applied, restart-only settings as started).
    config: Mutex<Config>,
    overrides: Overrides,
    reports: Mutex<Reports>,
    /// Held for a whole rebuild, so rebuilds never overlap; guards what only rebuilds change.
    rebuilding: tokio::sync::Mutex<Rebuilding>,
    ready: AtomicBool,
    notifier: Notifier,
    /// Serialises scrapes: gauges are reset and refilled, so two at once could see gaps.
    scrape: Mutex<()>,
    /// Adds the files a reload read for the first time to the file watcher.
    watch: OnceLock<WatchHandle>,
    /// The challenge values as last published, for status (the store itself is the
    /// rebuild lock's).
    challenges_published: Mutex<update::store::Store>,
    /// The secondary zones' copies and transfer state.
    secondaries: secondary::Secondaries,
}

/// Reads and validates every zone of the config; all errors of all files together.
pub fn load_zones(config: &Config) -> Result<Vec<ZoneData>, Vec<Diagnostic>> {
    load_zones_reusing(config, None)
}

/// The members of zone `origin` in `previous`, for a load to reuse (`zone::load_reusing`).
fn reuse_from<'s>(
    previous: Option<&'s Snapshot>,
    origin: &zone::name::Name,
) -> Option<zone::members::Reuse<'s>> {
    let zone = previous?
        .zones()
        .iter()
        .find(|z| z.origin.key() == origin.key() && !z.transferred)?;
    Some(zone::members::Reuse {
        members: &zone.members,
        texts: &zone.member_texts,
    })
}

/// `load_zones`, reusing the members of `previous` whose table text is unchanged.
fn load_zones_reusing(
    config: &Config,
    previous: Option<&Snapshot>,
) -> Result<Vec<ZoneData>, Vec<Diagnostic>> {
    let mut zones = Vec::new();
    let mut errors = Vec::new();
    // A secondary's data comes from its primaries (`control::secondary`), not from files.
    for zone_config in config.live.zones.iter().filter(|z| !z.is_secondary()) {
        let reuse = reuse_from(previous, zone_config.origin());
        match zone::load_reusing(&zone_config.source, &config.live.health_defaults, reuse) {
            Ok(data) => {
                errors.extend(updates::check_update_keys(&data, config));
                zones.push(data);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(zones) } else { Err(errors) }
}

/// Builds a snapshot of `zones` (signed as `signed` says) with everything `config` says
/// about them.
pub fn build_snapshot(
    zones: Vec<ZoneData>,
    signed: HashMap<Box<[u8]>, crate::dnssec::Signed>,
    config: &Config,
    metrics: Option<&Metrics>,
) -> Snapshot {
    let options = BuildOptions {
        identity: config.live.identity.as_deref(),
        version: config.live.version.as_deref(),
        keys: &config.live.keys,
        peers: config
            .live
            .zones
            .iter()
            .map(|z| (z.origin().key(), z.peers.clone()))
            .collect(),
        metrics,
        signed,
        primaries: config
            .live
            .zones
            .iter()
            .filter_map(|z| {
                let settings = z.secondary.as_ref()?;
                Some((
                    z.origin().key(),
                    settings.primaries.iter().map(|p| p.address.ip()).collect(),
                ))
            })
            .collect(),
        geo: config.live.geo.clone(),
        unavailable: config
            .live
            .zones
            .iter()
            .filter(|z| z.is_secondary())
            .map(|z| z.origin().key())
            .filter(|key| !zones.iter().any(|d| d.origin.key() == *key))
            .collect(),
    };
    Snapshot::build(zones, &options)
}

/// Loads every zone of the config, signs the signed ones and builds a snapshot (what `check`
/// validates).
pub fn load(config: &Config) -> Result<Snapshot, Vec<Diagnostic>> {
    let zones = load_zones(config);
    let keys = signing::load_keys(config);
    let (mut zones, keys) = match (zones, keys) {
        (Ok(zones), Ok(keys)) => (zones, keys),
        (zones, keys) => {
            let mut errors = zones.err().unwrap_or_default();
            errors.extend(keys.err().unwrap_or_default());
            return Err(errors);
        }
    };
    let now = wire::unix_now();
    signing::set_digests(&mut zones, &keys, now);
    let (signed, _) = signing::sign(&zones, &keys, &signing::Caches::new(), now)?;
    Ok(build_snapshot(zones, signed, config, None))
}

/// `zones` with every secondary zone as its held copy (none when nothing is held or the copy
/// expired), and those copies' signatures.
fn with_secondaries(
    mut zones: Vec<ZoneData>,
    config: &Config,
    serving: &HashMap<Box<[u8]>, secondary::Held>,
) -> (Vec<ZoneData>, HashMap<Box<[u8]>, crate::dnssec::Signed>) {
    zones.retain(|z| !config.zone(&z.origin).is_some_and(|c| c.is_secondary()));
    let mut signed = HashMap::new();
    for zone in config.live.zones.iter().filter(|z| z.is_secondary()) {
        let key = zone.origin().key();
        if let Some(held) = serving.get(&key) {
            zones.push(held.assembled.data.clone());
            if let Some(s) = &held.assembled.signed {
                signed.insert(key, s.clone());
            }
        }
    }
    (zones, signed)
}

/// Reads before a reload gives up on files that keep changing under it.
const READ_ATTEMPTS: usize = 5;

/// Runs `load` until it read one version of every file it read (`file_set`): none replaced or
/// written while it read. Returns what it loaded with the reads, which the caller settles
/// (`settle_for_publish`) once it has built from them: a large tree is built while the
/// debounce runs, not after it. A load that failed is settled here, before its errors are
/// reported: errors found in files that were changing are not reported, the files are read
/// again. Gives up after `READ_ATTEMPTS`, naming the files.
fn read_consistently<T>(
    config_path: &std::path::Path,
    mut load: impl FnMut() -> Result<T, Vec<Diagnostic>>,
) -> Result<(T, Vec<crate::file_set::FileRead>), Vec<Diagnostic>> {
    let mut unsettled = Vec::new();
    for attempt in 0..READ_ATTEMPTS {
        if attempt > 0 {
            // Let the writer finish before reading again.
            std::thread::sleep(watch::DEBOUNCE);
        }
        let (outcome, reads) = crate::file_set::track(&mut load);
        let settled = match &outcome {
            Ok(_) => crate::file_set::unchanged(&reads),
            Err(_) => crate::file_set::settle(&reads, watch::DEBOUNCE),
        };
        match settled {
            Ok(()) => return outcome.map(|loaded| (loaded, reads)),
            Err(changed) => unsettled = changed,
        }
    }
    Err(kept_changing(config_path, &unsettled))
}

/// Why a reload gave up on files that kept changing.
fn kept_changing(config_path: &std::path::Path, unsettled: &[std::path::PathBuf]) -> Vec<Diagnostic> {
    let names: Vec<String> = unsettled.iter().map(|p| p.display().to_string()).collect();
    vec![Diagnostic::file(
        config_path,
        format!(
            "files kept changing while being read ({READ_ATTEMPTS} attempts): {}; the previous data keeps serving, and the next change of them reloads again",
            names.join(", ")
        ),
    )]
}

/// Waits, before a rebuild from files is published, until those files are one settled
/// version: each unchanged since it was read and quiet for the debounce (by its mtime and by
/// the watcher's last event, which waits at most its `MAX_POSTPONE`). The same rule the
/// watcher's debounce kept before reading, kept now before publishing.
fn settle_for_publish(
    reads: &[crate::file_set::FileRead],
    watch: Option<&WatchHandle>,
) -> Result<(), Vec<std::path::PathBuf>> {
    if reads.is_empty() {
        return Ok(());
    }
    if let Some(watch) = watch {
        watch.wait_until_quiet();
    }
    crate::file_set::settle(reads, watch::DEBOUNCE)
}

/// Why each zone of `zones` would be held back: a reload that removes more than the zone's
/// `hold-back-removal` share of its members or of its zone-file records. An emptied members
/// file or a zone file cut short (what `>` or an in-place write leaves for a moment) would
/// otherwise be served, and resolvers would cache the NXDOMAINs for the negative TTL.
fn held_back(previous: &Snapshot, zones: &[ZoneData], config: &Config) -> Vec<Diagnostic> {
    let mut held = Vec::new();
    for zone in zones {
        let (Some(settings), Some(before)) = (
            config.zone(&zone.origin),
            previous
                .zones()
                .iter()
                .find(|z| z.origin.key() == zone.origin.key()),
        ) else {
            continue;
        };
        let share = settings.hold_back_removal;
        let removes_too_much =
            |before: usize, after: usize| after < before && (before - after) as f64 > before as f64 * share;
        let file_records = |records: &[zone::Record]| {
            records
                .iter()
                .filter(|r| !zone::carrier::is_pool_record(&r.name, r.rtype))
                .count()
        };
        let (members_before, members_after) = (before.members.len(), zone.members.len());
        if removes_too_much(members_before, members_after) {
            let file = settings
                .source
                .members
                .as_deref()
                .unwrap_or(&settings.source.file);
            held.push(Diagnostic::file(
                file,
                format!(
                    "held back: this reload would take zone {} from {members_before} members to {members_after} (hold-back-removal = {share}); the previous data keeps serving. If that is intended, confirm with `consortium-dns ctl reload --force`",
                    zone.origin
                ),
            ));
        }
        let (records_before, records_after) = (file_records(&before.records), file_records(&zone.records));
        if removes_too_much(records_before, records_after) {
            held.push(Diagnostic::file(
                &settings.source.file,
                format!(
                    "held back: this reload would take zone {} from {records_before} zone-file records to {records_after} (hold-back-removal = {share}); the previous data keeps serving. If that is intended, confirm with `consortium-dns ctl reload --force`",
                    zone.origin
                ),
            ));
        }
    }
    held
}

/// For each primary zone the state file does not know (no file, a lost file, a new zone),
/// the highest serial its NOTIFY targets answer for it (SOA over TCP, signed with the target's
/// key, 2 s each, all at once): the restart then serves a serial above it, and the secondaries
/// keep following. Zones with neither are warned about: a restart may move their serial back.
async fn serials_held_by_secondaries(config: &Config) -> HashMap<Box<[u8]>, u32> {
    let state = config.live.state_file.as_deref().map(SerialState::read);
    let mut asks = tokio::task::JoinSet::new();
    for zone in config.live.zones.iter().filter(|z| !z.is_secondary()) {
        if state
            .as_ref()
            .is_some_and(|s| s.previous(zone.origin()).is_some())
        {
            continue;
        }
        if zone.peers.notify.is_empty() {
            // Nobody to ask (`Config::warnings` says so at start-up).
            continue;
        }
        for target in &zone.peers.notify {
            let key = target
                .key
                .as_ref()
                .and_then(|name| config.live.keys.iter().find(|k| k.name.key() == name.key()))
                .cloned();
            let (origin, address, source) = (zone.origin().clone(), target.address, target.source);
            asks.spawn(async move {
                let primary = crate::secondary::client::Primary {
                    address,
                    key: key.as_ref(),
                    timeout: Duration::from_secs(2),
                    source,
                };
                let answer = crate::secondary::client::soa_serial(primary, &origin).await;
                (origin, address, answer)
            });
        }
    }
    let mut floors: HashMap<Box<[u8]>, u32> = HashMap::new();
    while let Some(asked) = asks.join_next().await {
        let Ok((origin, address, answer)) = asked else {
            continue;
        };
        match answer {
            Ok(serial) => {
                tracing::info!(zone = %origin, secondary = %address, serial, "no served serial on record: the secondary holds this one");
                let floor = floors.entry(origin.key()).or_insert(serial);
                if zone::serial::serial_gt(serial, *floor) {
                    *floor = serial;
                }
            }
            Err(e) => {
                tracing::warn!(zone = %origin, secondary = %address, "no served serial on record, and the secondary did not say what it holds: {e}")
            }
        }
    }
    floors
}

/// Sets each zone's served serial by its policy, from what `previous` says was served.
fn apply_serial_policy(
    zones: &mut [ZoneData],
    config: &Config,
    previous: impl Fn(&zone::name::Name) -> Option<(u32, u64)>,
) {
    for zone in zones {
        let served = choose_serial(
            config.serial_policy(&zone.origin),
            previous(&zone.origin),
            zone.serial(),
            zone.remember_digest(),
            SystemTime::now(),
        );
        zone.set_serial(served);
    }
}

/// The config and zone data a change leads to, serials chosen, and the files read for it
/// (none but for a reload).
fn load_change(
    change: Change,
    running: &Config,
    previous: &Snapshot,
    overrides: &Overrides,
    challenges: &mut update::store::Store,
    keys: &mut signing::KeySets,
) -> Result<(Config, Vec<ZoneData>, Vec<crate::file_set::FileRead>), Vec<Diagnostic>> {
    let now = wire::unix_now();
    match change {
        Change::Start(config, floors) => {
            let mut zones = load_zones(&config)?;
            *keys = signing::load_keys(&config)?;
            signing::set_digests(&mut zones, keys, now);
            // What was served before the restart: the serial continues from there, and the
            // challenge values still alive are served again.
            let state = config.live.state_file.as_deref().map(SerialState::read);
            if let Some(state) = &state {
                *challenges = state.challenges();
                challenges.expire(wire::unix_now());
            }
            updates::attach(&mut zones, challenges, &config);
            apply_serial_policy(&mut zones, &config, |origin| {
                state.as_ref().and_then(|s| s.previous(origin)).or_else(|| {
                    // Content unknown (digest 0): the policy moves above what they hold.
                    floors.get(&origin.key()).map(|serial| (*serial, 0))
                })
            });
            Ok((*config, zones, Vec::new()))
        }
        Change::Reload { force, zone } => {
            let ((config, mut zones), reads) = match &zone {
                None => read_consistently(&running.path, || {
                    let mut config = Config::load(&running.path)?;
                    overrides.apply(&mut config);
                    let zones = load_zones_reusing(&config, Some(previous))?;
                    Ok((config, zones))
                })?,
                Some(origin) => {
                    let (zones, reads) = zones_with_one_reread(running, previous, origin)?;
                    ((running.clone(), zones), reads)
                }
            };
            let held = held_back(previous, &zones, &config);
            if !force && !held.is_empty() {
                return Err(held);
            }
            match &zone {
                None => *keys = signing::load_keys(&config)?,
                Some(origin) => signing::reload_keys_of(keys, &config, origin)?,
            }
            signing::set_digests(&mut zones, keys, now);
            updates::attach(&mut zones, challenges, &config);
            apply_serial_policy(&mut zones, &config, |origin| {
                previous
                    .zones()
                    .iter()
                    .find(|z| z.origin.key() == origin.key())
                    .map(|z| (z.serial, z.content_digest))
            });
            Ok((config, zones, reads))
        }
        Change::TransferPicks(due) => {
            // The transferred content changed (the pick), whatever the digest says.
            let zones = published_again(previous, running, &due, |zone, _| !zone.content_digest);
            Ok((running.clone(), zones, Vec::new()))
        }
        Change::Dynamic(due) => {
            let zones = published_again(previous, running, &due, |zone, data| {
                data.dynamic = updates::records_for(challenges, &zone.origin, running);
                data.content_digest()
            });
            Ok((running.clone(), zones, Vec::new()))
        }
        Change::Transferred => Ok((running.clone(), zones_of(previous), Vec::new())),
        Change::Resign(due) => {
            // New signatures (or key states) are new content, whatever the digest says.
            let zones = published_again(previous, running, &due, |zone, data| {
                signing::set_digests(std::slice::from_mut(data), keys, now);
                !zone.content_digest
            });
            Ok((running.clone(), zones, Vec::new()))
        }
    }
}

/// The published zones as data again, with the zone `origin`'s files read anew (under the
/// running config: a zone it does not serve from files is an error naming the reason).
fn zones_with_one_reread(
    running: &Config,
    previous: &Snapshot,
    origin: &zone::name::Name,
) -> Result<(Vec<ZoneData>, Vec<crate::file_set::FileRead>), Vec<Diagnostic>> {
    let refuse = |why: String| vec![Diagnostic::file(&running.path, why)];
    let Some(settings) = running.zone(origin) else {
        return Err(refuse(format!(
            "no zone {origin} in the running config (a new zone comes with a whole reload)"
        )));
    };
    if settings.is_secondary() {
        return Err(refuse(format!(
            "zone {origin} is a secondary: its data comes from its primaries, not from files"
        )));
    }
    let (reread, reads) = read_consistently(&running.path, || {
        let reuse = reuse_from(Some(previous), origin);
        let data = zone::load_reusing(&settings.source, &running.live.health_defaults, reuse)?;
        let errors = updates::check_update_keys(&data, running);
        if errors.is_empty() { Ok(data) } else { Err(errors) }
    })?;
    let mut zones = zones_of(previous);
    // Only file-served zones, as a whole reload reads them; secondaries join afterwards.
    zones.retain(|data| !data.transferred);
    match zones.iter_mut().find(|data| data.origin.key() == origin.key()) {
        Some(slot) => *slot = reread,
        None => zones.push(reread),
    }
    Ok((zones, reads))
}

/// The published zones as data again; each zone in `due` is changed by `change`, which returns
/// the content digest to compare with the served one, and gets its next serial by policy.
fn published_again(
    previous: &Snapshot,
    running: &Config,
    due: &[Box<[u8]>],
    mut change: impl FnMut(&crate::snapshot::Zone, &mut ZoneData) -> u64,
) -> Vec<ZoneData> {
    let mut zones = zones_of(previous);
    for (zone, data) in previous.zones().iter().zip(&mut zones) {
        if due.contains(&zone.origin.key()) {
            let digest = change(zone, data);
            data.set_serial(choose_serial(
                running.serial_policy(&zone.origin),
                Some((zone.serial, zone.content_digest)),
                zone.serial,
                digest,
                SystemTime::now(),
            ));
        }
    }
    zones
}

/// The published zones as data again, for a rebuild that changes only serials.
fn zones_of(snapshot: &Snapshot) -> Vec<ZoneData> {
    snapshot
        .zones()
        .iter()
        .map(|zone| {
            let mut data = ZoneData {
                origin: zone.origin.clone(),
                records: zone.records.clone(),
                members: zone.members.clone(),
                pools: zone.pools.iter().map(|p| p.def.clone()).collect(),
                dynamic: zone.dynamic.clone(),
                signing_digest: zone.dnssec.as_ref().map_or(0, |d| d.report.keys_digest),
                transferred: zone.transferred,
                member_texts: zone.member_texts.clone(),
                digest_memo: None,
            };
            data.set_serial(zone.serial);
            data
        })
        .collect()
}

fn serials_of(snapshot: &Snapshot) -> BTreeMap<String, u32> {
    snapshot
        .zones()
        .iter()
        .map(|z| (z.origin.to_string(), z.serial))
        .collect()
}

/// Records the served serials and challenge values in the state file, when one is configured
/// and they changed (or it is the first save). A failure is logged: the zone is served all
/// the same.
fn save_state(config: &Config, state: Option<SerialState>) {
    let (Some(path), Some(state)) = (&config.live.state_file, state) else {
        return;
    };
    if let Err(e) = state.write(path) {
        tracing::warn!(file = %path.display(), "cannot save the served serials: {e}");
    }
}

impl Control {
    /// A control plane for `shared` (whose snapshot is replaced by the first `start`).
    pub fn new(
        shared: Arc<Shared>,
        health: Arc<HealthManager>,
        config: Config,
        overrides: Overrides,
    ) -> Control {
        let notifier = Notifier::counting(shared.metrics.notifies.clone());
        Control {
            metrics: shared.metrics.clone(),
            shared,
            health,
            config: Mutex::new(config),
            overrides,
            reports: Mutex::default(),
            rebuilding: tokio::sync::Mutex::default(),
            ready: AtomicBool::new(false),
            notifier,
            scrape: Mutex::default(),
            watch: OnceLock::new(),
            challenges_published: Mutex::default(),
            secondaries: secondary::Secondaries::default(),
        }
    }

    /// The first load and publication; errors are the files' problems. Nothing is announced
    /// yet: `announce_all` sends the first NOTIFYs once the listeners are bound.
    pub async fn start(&self) -> Result<ReloadReport, Vec<Diagnostic>> {
        let mut state = self.rebuilding.lock().await;
        let config = lock(&self.config).clone();
        let started = Instant::now();
        if let Some(path) = &config.live.state_file {
            // Maintenance set by `ctl drain` before the restart still holds.
            self.health.set_drained(SerialState::read(path).drained());
        }
        self.secondaries.load_stores(&config);
        let floors = serials_held_by_secondaries(&config).await;
        let published = self
            .rebuild(&mut state, Change::Start(Box::new(config), floors))
            .await?;
        let report = self.report("start", started, Ok(published));
        self.record(&report);
        Ok(report)
    }

    /// NOTIFYs the secondaries of every zone of its current serial (at start).
    pub fn announce_all(&self) {
        self.notifier.announce_changes(None, &self.shared.snapshot.load());
    }

    /// NOTIFYs the secondaries of `zone` (an origin, with or without the final dot) of its
    /// current serial now (`ctl notify`): the number of NOTIFY targets, or None for a zone
    /// not served here.
    pub fn notify_zone(&self, zone: &str) -> Option<usize> {
        let origin = zone::name::Name::parse_origin(zone).ok()?;
        let snapshot = self.shared.snapshot.load();
        let served = snapshot.zones().iter().find(|z| z.origin.key() == origin.key())?;
        self.notifier.announce(&snapshot, served);
        Some(served.transfer.notify.len())
    }

    /// `ctl drain` / `ctl undrain`: takes `member` (a label such as `node1`, or its full name)
    /// out of every pool it is in, or puts it back, at once; kept in the state file. `zone`
    /// chooses when the label is in several zones. The outcome as a sentence, or why not.
    pub async fn set_drained(
        &self,
        member: &str,
        zone: Option<&str>,
        drained: bool,
    ) -> Result<String, String> {
        // Serialised with rebuilds, which also write the state file.
        let _rebuilding = self.rebuilding.lock().await;
        let snapshot = self.shared.snapshot.load_full();
        let wanted_zone = match zone {
            Some(zone) => {
                Some(zone::name::Name::parse_origin(zone).map_err(|e| format!("zone {zone:?}: {e}"))?)
            }
            None => None,
        };
        let full = member.trim_end_matches('.').to_ascii_lowercase();
        let mut found = Vec::new();
        for served in snapshot.zones() {
            if wanted_zone
                .as_ref()
                .is_some_and(|w| w.key() != served.origin.key())
            {
                continue;
            }
            let hit = served.members.iter().find(|m| {
                m.label().eq_ignore_ascii_case(&full)
                    || m.name
                        .to_string()
                        .trim_end_matches('.')
                        .eq_ignore_ascii_case(&full)
            });
            if let Some(hit) = hit {
                found.push((served, hit));
            }
        }
        let (served, hit) = match found.as_slice() {
            [] => {
                return Err(format!(
                    "no member {member:?} in {}",
                    zone.unwrap_or("any zone served here")
                ));
            }
            [one] => *one,
            several => {
                let zones: Vec<String> = several.iter().map(|(z, _)| z.origin.to_string()).collect();
                return Err(format!(
                    "member {member:?} is in several zones ({}): say which with --zone",
                    zones.join(", ")
                ));
            }
        };
        let changed = self
            .health
            .set_member_drained(&snapshot, &served.origin, hit, drained);
        let config = self.config();
        let kept = match &config.live.state_file {
            Some(path) => {
                let state = SerialState::of(
                    &snapshot,
                    &lock(&self.challenges_published),
                    self.health.drained(),
                );
                save_state(&config, Some(state));
                format!("kept in {}", path.display())
            }
            None => "not kept across a restart: no [server] state-file".to_string(),
        };
        let name = &hit.name;
        if changed {
            tracing::info!(member = %name, drained, "member {}", if drained { "drained" } else { "undrained" });
        }
        Ok(match (drained, changed) {
            (true, true) => format!("{name} drained: no longer picked for any pool ({kept})\n"),
            (true, false) => format!("{name} was already drained\n"),
            (false, true) => format!("{name} undrained: picked again as its health allows ({kept})\n"),
            (false, false) => format!("{name} was not drained\n"),
        })
    }

    /// Connects the file watcher, which then learns of files that later reloads read.
    pub fn attach_watcher(&self, handle: WatchHandle) {
        let _ = self.watch.set(handle);
    }

    /// The config as running.
    pub fn config(&self) -> Config {
        lock(&self.config).clone()
    }

    /// Zones loaded and sockets bound.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The last reload attempt and the last successful one.
    pub fn reload_reports(&self) -> (Option<ReloadReport>, Option<ReloadReport>) {
        let reports = lock(&self.reports);
        (reports.last.clone(), reports.last_success.clone())
    }

    /// Reads the config and every zone again; on success swaps the new Snapshot in at once,
    /// on failure keeps serving the old one. Reloads never overlap.
    pub async fn reload(&self, trigger: &str) -> ReloadReport {
        self.reload_with(trigger, false, None).await
    }

    /// `reload`, and with `force` also a change the hold-back guard would keep (an operator
    /// confirming that most of a zone is to go); with `zone`, that zone's files alone.
    pub async fn reload_with(
        &self,
        trigger: &str,
        force: bool,
        zone: Option<zone::name::Name>,
    ) -> ReloadReport {
        let mut state = self.rebuilding.lock().await;
        let started = Instant::now();
        let outcome = self.rebuild(&mut state, Change::Reload { force, zone }).await;
        if let Err(errors) = &outcome {
            state.last_reads.clear();
            for e in errors {
                tracing::error!(trigger, "reload failed, still serving the previous data: {e}");
            }
            // The failed load's tables are free now: give their pages back (a broken
            // 1M-member file would otherwise leave its peak resident).
            let _ = tokio::task::spawn_blocking(crate::memory::release_freed_memory).await;
        }
        let report = self.report(trigger, started, outcome);
        if report.ok {
            tracing::info!(trigger, serials = ?report.serials, "reloaded");
        }
        self.record(&report);
        report
    }

    /// True when every file the last whole reload read still stands as it was read (and that
    /// reload succeeded): a file event since then concerned nothing the served data came from
    /// (the watcher's second request after one edit, a file beside ours), so reloading would
    /// build the same snapshot again.
    pub async fn files_unchanged(&self) -> bool {
        let state = self.rebuilding.lock().await;
        !state.last_reads.is_empty() && crate::file_set::unchanged(&state.last_reads).is_ok()
    }

    /// When health moved a shared name's transfer pick, raises the zone's serial (at most once
    /// per `transfer-pick-refresh`) so secondaries follow. Zones nobody transfers are skipped.
    pub async fn refresh_transfer_picks(&self) {
        let mut state = self.rebuilding.lock().await;
        let due = self.pick_changes_due(&state.bumps);
        if due.is_empty() {
            return;
        }
        match self.rebuild(&mut state, Change::TransferPicks(due)).await {
            Ok(published) => tracing::info!(
                serials = ?published.serials,
                "shared-name transfer pick changed with health: serial raised"
            ),
            Err(errors) => tracing::error!(?errors, "transfer-pick refresh failed"),
        }
    }

    /// Zones whose served transfer pick differs from what health now says, and whose last
    /// health-driven serial is at least `transfer-pick-refresh` old.
    fn pick_changes_due(&self, bumps: &HashMap<Box<[u8]>, Instant>) -> Vec<Box<[u8]>> {
        let snapshot = self.shared.snapshot.load();
        let config = lock(&self.config);
        snapshot
            .zones()
            .iter()
            .filter(|zone| !zone.transfer.allow.is_empty() && !zone.pools.is_empty())
            // A secondary serves its primary's serials.
            .filter(|zone| !zone.transferred)
            // Under `keep` the serial is the operator's to move: secondaries follow a pick
            // change only with the next serial the operator sets.
            .filter(|zone| config.serial_policy(&zone.origin) != SerialPolicy::Keep)
            .filter(|zone| history::picks_moved(zone))
            .filter(|zone| {
                let refresh = config
                    .zone(&zone.origin)
                    .map_or(Duration::from_secs(30), |z| z.transfer_pick_refresh);
                bumps
                    .get(&zone.origin.key())
                    .is_none_or(|at| at.elapsed() >= refresh)
            })
            .map(|zone| zone.origin.key())
            .collect()
    }

    /// The one rebuild path: load (or reuse) the data, choose serials, build, publish. The
    /// caller holds `rebuilding` (so rebuilds never overlap, and each is reported before the
    /// next begins) and passes its contents; a failed rebuild changes nothing.
    async fn rebuild(&self, state: &mut Rebuilding, change: Change) -> Result<Rebuilt, Vec<Diagnostic>> {
        let running = lock(&self.config).clone();
        let previous = self.shared.snapshot.load_full();
        let metrics = self.metrics.clone();
        let overrides = self.overrides.clone();
        let (bumped, starting, reread) = match &change {
            Change::TransferPicks(due) => (due.clone(), false, false),
            Change::Dynamic(_) | Change::Resign(_) | Change::Transferred => (Vec::new(), false, false),
            Change::Start(..) => (Vec::new(), true, true),
            Change::Reload { .. } => (Vec::new(), false, true),
        };
        let (running_now, previous_now) = (running.clone(), previous.clone());
        let (challenges_before, keys_before) = (state.challenges.clone(), state.keys.clone());
        let caches = state.signatures.clone();
        let state_before = SerialState::of(&previous, &state.challenges, self.health.drained());
        let serving = self.secondaries.serving();
        let watch = self.watch.get().cloned();
        // Parsing, signing and building are CPU and file work: off the async workers.
        let whole_reload = matches!(change, Change::Reload { zone: None, .. });
        let (config, snapshot, challenges, keys, caches, reads) = tokio::task::spawn_blocking(move || {
            for attempt in 0..READ_ATTEMPTS {
                if attempt > 0 {
                    // Let the writer finish before reading again.
                    std::thread::sleep(watch::DEBOUNCE);
                }
                let (mut challenges, mut keys) = (challenges_before.clone(), keys_before.clone());
                let stage = Instant::now();
                let (config, zones, reads) = load_change(
                    change.clone(),
                    &running_now,
                    &previous_now,
                    &overrides,
                    &mut challenges,
                    &mut keys,
                )?;
                let loaded_ms = stage.elapsed().as_secs_f64() * 1_000.0;
                let stage = Instant::now();
                let (mut zones, transferred) = with_secondaries(zones, &config, &serving);
                let (mut signed, caches) = signing::sign(&zones, &keys, &caches, wire::unix_now())?;
                let signed_ms = stage.elapsed().as_secs_f64() * 1_000.0;
                let stage = Instant::now();
                signed.extend(transferred);
                zones.sort_by_key(|z| {
                    config
                        .live
                        .zones
                        .iter()
                        .position(|c| c.origin().key() == z.origin.key())
                });
                for (zone, result) in &signed {
                    let zone = zone::name::Name::from_wire_unchecked(zone).to_string();
                    metrics
                        .dnssec_signatures
                        .with_label_values(&[zone.as_str()])
                        .inc_by(result.report.signatures_made);
                }
                let snapshot = build_snapshot(zones, signed, &config, Some(&metrics));
                let built_ms = stage.elapsed().as_secs_f64() * 1_000.0;
                // Published only from one settled version of the files read, waited for now that
                // the build is done: the debounce and the build run at the same time.
                let stage = Instant::now();
                let settled = settle_for_publish(&reads, watch.as_ref());
                // Where a rebuild's time goes, for whoever tunes a large tree.
                tracing::debug!(
                    load_ms = loaded_ms,
                    sign_ms = signed_ms,
                    build_ms = built_ms,
                    settle_ms = stage.elapsed().as_secs_f64() * 1_000.0,
                    settled = settled.is_ok(),
                    "rebuild stages"
                );
                match settled {
                    Ok(()) => return Ok((config, snapshot, challenges, keys, caches, reads)),
                    Err(changed) if attempt + 1 == READ_ATTEMPTS => {
                        return Err(kept_changing(&running_now.path, &changed));
                    }
                    Err(_) => {}
                }
            }
            Err(kept_changing(&running_now.path, &[]))
        })
        .await
        .map_err(|join_error| {
            // A bug, never expected: counted and reported; the previous data keeps serving.
            if join_error.is_panic() {
                self.metrics.panics.with_label_values(&["reload"]).inc();
                tracing::error!(
                    "a rebuild panicked; the previous data keeps serving (this is a bug: please report it)"
                );
            }
            vec![Diagnostic::file(
                std::path::Path::new("reload"),
                format!("reload task failed: {join_error}"),
            )]
        })??;
        let restart_needed = running.restart.differences(&config.restart);
        if !restart_needed.is_empty() {
            tracing::warn!(settings = ?restart_needed, "config changes that need a restart were not applied");
        }
        // What needs a restart stays as it runs.
        let config = config.with_restart_settings_of(&running);
        if let Some(watch) = self.watch.get().filter(|_| reread) {
            // New zones, members files or `$INCLUDE`s elsewhere: watch them from now on.
            watch.extend(watch::files_to_watch(&config, &snapshot));
        }
        for zone in bumped {
            state.bumps.insert(zone, Instant::now());
        }
        let state_after = SerialState::of(&snapshot, &challenges, self.health.drained());
        // Also when `state-file` was just set: the file exists from now on.
        let new_file = config.live.state_file != running.live.state_file;
        let changed_state = (starting || new_file || state_after != state_before).then_some(state_after);
        state.challenges = challenges;
        state.keys = keys;
        state.signatures = caches;
        if whole_reload {
            state.last_reads = reads;
        } else if reread {
            state.last_reads.clear();
        }
        lock(&self.challenges_published).clone_from(&state.challenges);
        let stage = Instant::now();
        let serials = self.publish(snapshot, &config, starting, changed_state);
        tracing::debug!(
            publish_ms = stage.elapsed().as_secs_f64() * 1_000.0,
            "rebuild published"
        );
        *lock(&self.config) = config;
        // The previous snapshot and the load's scratch tables are free now.
        let _ = tokio::task::spawn_blocking(crate::memory::release_freed_memory).await;
        Ok(Rebuilt {
            serials,
            restart_needed,
        })
    }

    /// Publishes a built snapshot: health tables first (so nobody sees stale weights), then
    /// the transfer history, the serial state, the swap, the RRL rates, and NOTIFY for zones
    /// whose serial moved (not at start: see `announce_all`).
    fn publish(
        &self,
        mut snapshot: Snapshot,
        config: &Config,
        starting: bool,
        state: Option<SerialState>,
    ) -> BTreeMap<String, u32> {
        let previous = self.shared.snapshot.load_full();
        if starting {
            // The first version a secondary gets picks by configured weight, as the tables
            // stand before any probe; a health-driven refresh moves it with its own serial.
            history::next(Some(&previous), &mut snapshot);
            self.health.sync(&snapshot);
        } else {
            self.health.sync(&snapshot);
            history::next(Some(&previous), &mut snapshot);
        }
        let serials = serials_of(&snapshot);
        save_state(config, state);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.rrl.set_rates(config.live.rrl.clone());
        // Tables of the published snapshot, in case a probe flipped meanwhile.
        let current = self.shared.snapshot.load();
        self.health.publish_tables(&current);
        if !starting {
            self.notifier.announce_changes(Some(&previous), &current);
        }
        self.metrics.zone_serial.reset();
        for (zone, serial) in &serials {
            self.metrics
                .zone_serial
                .with_label_values(&[zone])
                .set(i64::from(*serial));
        }
        self.metrics.pool_policy.reset();
        self.metrics.dnssec_earliest_expiry.reset();
        self.metrics.dnssec_keys.reset();
        for zone in current.zones() {
            let label = zone.origin.to_string();
            for pool in &zone.pools {
                self.metrics
                    .pool_policy
                    .with_label_values(&[
                        label.as_str(),
                        &pool.def.name.to_string(),
                        pool.def.policy.label(),
                    ])
                    .set(1);
            }
            self.metrics
                .acme_challenge_values
                .with_label_values(&[&label])
                .set(zone.dynamic.len() as i64);
            if let Some(dnssec) = &zone.dnssec {
                self.metrics
                    .dnssec_earliest_expiry
                    .with_label_values(&[&label])
                    .set(dnssec.report.earliest_expiry as i64);
                for key in &dnssec.report.keys {
                    self.metrics
                        .dnssec_keys
                        .with_label_values(&[label.as_str(), &key.role, &key.state])
                        .inc();
                }
            }
        }
        serials
    }

    fn report(
        &self,
        trigger: &str,
        started: Instant,
        outcome: Result<Rebuilt, Vec<Diagnostic>>,
    ) -> ReloadReport {
        let (ok, errors, restart_needed, serials) = match outcome {
            Ok(published) => (true, Vec::new(), published.restart_needed, published.serials),
            Err(errors) => (
                false,
                errors.iter().map(ToString::to_string).collect(),
                Vec::new(),
                serials_of(&self.shared.snapshot.load()),
            ),
        };
        ReloadReport {
            ok,
            trigger: trigger.into(),
            at_unix: wire::unix_now(),
            errors,
            restart_needed,
            serials,
            duration_ms: started.elapsed().as_secs_f64() * 1_000.0,
        }
    }

    fn record(&self, report: &ReloadReport) {
        let outcome = if report.ok { "success" } else { "failure" };
        self.metrics.reloads.with_label_values(&[outcome]).inc();
        let mut reports = lock(&self.reports);
        if report.ok {
            self.metrics.last_reload_success.set(report.at_unix as i64);
            reports.last_success = Some(report.clone());
        }
        reports.last = Some(report.clone());
    }

    /// The Prometheus text exposition, with gauges refreshed from current health.
    pub fn scrape(&self) -> String {
        let _one_at_a_time = lock(&self.scrape);
        self.health
            .refresh_gauges(&self.shared.snapshot.load(), &self.metrics);
        self.refresh_secondary_gauges();
        self.metrics.encode()
    }
}
