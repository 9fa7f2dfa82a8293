//! Wiring: load the config and zones, bind, start listeners, health checks, the admin HTTP
//! endpoint and the reload triggers; `Control::reload` is the one place a new Snapshot is
//! validated and swapped in.
//!
//! `main` and the integration tests both start the server through `start`, so tests run the
//! same code as production on port 0.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::health::HealthManager;
use crate::metrics::Metrics;
use crate::reload::{self, FileWatcher};
use crate::server::{self, Listeners, Running, Shared};
use crate::snapshot::{self, Snapshot};
use crate::state::SerialState;
use crate::zone::Diagnostic;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Load(Vec<Diagnostic>),
    #[error("cannot bind DNS listeners: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot bind the HTTP endpoint: {0}")]
    BindHttp(#[source] std::io::Error),
}

/// The outcome of one load or reload, as status and `POST /reload` show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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

/// Everything the control plane needs; shared by the HTTP endpoint, signals and watcher.
#[derive(Debug)]
pub struct Control {
    pub shared: Arc<Shared>,
    pub health: Arc<HealthManager>,
    pub metrics: Metrics,
    /// The config as running (listen overrides applied).
    config: Mutex<Config>,
    overrides: Overrides,
    last_reload: Mutex<Option<ReloadReport>>,
    last_success: Mutex<Option<ReloadReport>>,
    reloading: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    /// Per zone: bumped for each new serial, so older NOTIFY retries stop.
    notify_generations: Mutex<HashMap<Box<[u8]>, Arc<AtomicU64>>>,
    /// Per zone: when health last caused a serial bump.
    last_pick_bump: Mutex<HashMap<Box<[u8]>, Instant>>,
    /// Serialises scrapes: gauges are reset and refilled, so two at once could see gaps.
    scrape: Mutex<()>,
    /// Adds the files a reload read for the first time to the file watcher.
    watch: std::sync::OnceLock<reload::WatchHandle>,
}

/// Command-line settings that win over the config file, on start and on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<Vec<SocketAddr>>,
    pub http_listen: Option<Option<SocketAddr>>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(http) = self.http_listen {
            config.http_listen = http;
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Bound DNS addresses, UDP and TCP on each.
    pub dns_addrs: Vec<SocketAddr>,
    /// Bound admin HTTP address, if enabled.
    pub http_addr: Option<SocketAddr>,
    pub control: Arc<Control>,
    /// Same as `control.shared`.
    pub shared: Arc<Shared>,
    /// The config as started (overrides applied).
    pub config: Config,
    running: Running,
    background: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<FileWatcher>,
}

/// Loads everything and starts serving on the current tokio runtime.
pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
    start_with(config, Overrides::default()).await
}

/// As `start`, with command-line overrides that also hold across reloads.
pub async fn start_with(mut config: Config, overrides: Overrides) -> Result<ServerHandle, StartError> {
    overrides.apply(&mut config);
    let metrics = Metrics::new();
    let started = Instant::now();
    let mut zones = snapshot::load_zones(&config).map_err(StartError::Load)?;
    if let Some(path) = &config.state_file {
        // What was served before the restart: the serial continues from there.
        let state = SerialState::read(path);
        apply_serial_policy(&mut zones, &config, |origin| state.previous(origin));
    }
    let mut snapshot = Snapshot::build(
        zones,
        config.identity.as_deref(),
        config.version.as_deref(),
        Some(&metrics),
    );
    prepare_transfers(&mut snapshot, &config, None);
    let listeners = Listeners::bind(&config.listen, config.udp_workers).map_err(StartError::Bind)?;
    let dns_addrs = listeners.local_addrs();
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(StartError::BindHttp)?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());

    let mut shared = Shared::new(snapshot, config.limits.clone(), metrics.clone());
    shared.query_log = server::QueryLog::every(config.query_log_sample);
    shared.count_queries = config.query_metrics;
    shared.rrl = config
        .rrl
        .enabled
        .then(|| server::rrl::Limiter::new(config.rrl.clone()));
    let shared = Arc::new(shared);
    let health = HealthManager::start(shared.clone());
    health.sync(&shared.snapshot.load());
    let report = ReloadReport {
        ok: true,
        trigger: "start".into(),
        at_unix: unix_now(),
        errors: Vec::new(),
        restart_needed: Vec::new(),
        serials: serials_of(&shared.snapshot.load()),
        duration_ms: started.elapsed().as_secs_f64() * 1_000.0,
    };
    let control = Arc::new(Control {
        shared: shared.clone(),
        health,
        metrics: metrics.clone(),
        config: Mutex::new(config.clone()),
        overrides,
        last_reload: Mutex::new(None),
        last_success: Mutex::new(None),
        reloading: tokio::sync::Mutex::new(()),
        ready: AtomicBool::new(false),
        notify_generations: Mutex::default(),
        last_pick_bump: Mutex::default(),
        scrape: Mutex::default(),
        watch: std::sync::OnceLock::new(),
    });
    control.record(report);
    save_serial_state(&config, &control.shared.snapshot.load(), None);
    crate::memory::release_freed_memory();
    for zone in control.shared.snapshot.load().zones() {
        control.send_notify(zone);
    }

    let running = server::start(listeners, shared.clone()).map_err(StartError::Bind)?;
    for addr in &dns_addrs {
        tracing::info!(%addr, "serving DNS over UDP and TCP");
    }

    let mut background = Vec::new();
    if let Some(listener) = http_listener {
        if let Some(addr) = http_addr {
            tracing::info!(%addr, "serving metrics and admin over HTTP");
        }
        background.push(tokio::spawn(crate::http::serve(listener, control.clone())));
    }

    // File changes become reload requests; one task runs them in order.
    let (requests, mut incoming) = mpsc::channel::<()>(1);
    let watched = reload::files_to_watch(&config, &control.shared.snapshot.load());
    let watcher = match FileWatcher::start(watched, requests) {
        Ok(watcher) => {
            let _ = control.watch.set(watcher.handle());
            Some(watcher)
        }
        Err(e) => {
            tracing::warn!("cannot watch zone files ({e}); reload with SIGHUP or POST /reload");
            None
        }
    };
    // Secondaries cannot pick: keep their copy of each shared name on a healthy member.
    let refresher = Arc::downgrade(&control);
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(control) = refresher.upgrade() else {
                return;
            };
            control.refresh_transfer_picks().await;
        }
    }));
    let reloader = control.clone();
    background.push(tokio::spawn(async move {
        while incoming.recv().await.is_some() {
            reloader.reload("file change").await;
        }
    }));
    control.ready.store(true, Ordering::Relaxed);
    Ok(ServerHandle {
        dns_addrs,
        http_addr,
        control,
        shared,
        config,
        running,
        background,
        _watcher: watcher,
    })
}

/// Attaches transfer settings (keys, ACLs, NOTIFY targets), the version served to secondaries,
/// and the IXFR differences: the previous snapshot's plus one to this version when its serial
/// is new.
fn prepare_transfers(snapshot: &mut Snapshot, config: &Config, previous: Option<&Snapshot>) {
    snapshot.tsig_keys = config.keys.clone();
    for zone in snapshot.zones_mut() {
        let settings = config.zones.iter().find(|z| z.origin.key() == zone.origin.key());
        zone.transfer.allow = settings.map(|s| s.allow_transfer.clone()).unwrap_or_default();
        zone.transfer.notify = settings.map(|s| s.notify.clone()).unwrap_or_default();
        if !zone.transfer.is_configured() {
            continue;
        }
        let before = previous
            .and_then(|p| p.zones().iter().find(|z| z.origin.key() == zone.origin.key()))
            .map(|z| &z.transfer);
        let mut diffs = before.map(|t| t.diffs.clone()).unwrap_or_default();
        let old = before.and_then(|t| t.current.as_ref());
        let version = match old {
            // A serial names one content. At an unchanged serial the transfer picks stay as
            // served; a moved pick gets its own serial from `refresh_transfer_picks`.
            Some(old) if old.serial == zone.serial => {
                let kept = crate::transfer::version_with_picks(zone, old.picks.clone());
                if kept.soa == old.soa && kept.records == old.records {
                    old.clone()
                } else {
                    // Same serial, other content (serial-policy keep): no difference leads
                    // here, so clients at older serials get the whole zone.
                    diffs.clear();
                    Arc::new(crate::transfer::version_of(zone))
                }
            }
            Some(old) => {
                let version = crate::transfer::version_of(zone);
                diffs.push(Arc::new(crate::transfer::VersionDiff::between(old, &version)));
                Arc::new(version)
            }
            None => Arc::new(crate::transfer::version_of(zone)),
        };
        let excess = diffs.len().saturating_sub(crate::transfer::HISTORY_LEN - 1);
        diffs.drain(..excess);
        zone.transfer.diffs = diffs;
        zone.transfer.current = Some(version);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sets each zone's served serial by its policy, from what `previous` says was served.
fn apply_serial_policy(
    zones: &mut [crate::zone::ZoneData],
    config: &Config,
    previous: impl Fn(&crate::zone::name::Name) -> Option<(u32, u64)>,
) {
    for zone in zones {
        let served = reload::choose_serial(
            config.serial_policy(&zone.origin),
            previous(&zone.origin),
            zone.serial(),
            zone.content_digest(),
            SystemTime::now(),
        );
        zone.set_serial(served);
    }
}

/// Records the served serials in the state file, when one is configured and they changed.
/// A failure is logged: the zone is served all the same.
fn save_serial_state(config: &Config, snapshot: &Snapshot, previous: Option<&Snapshot>) {
    let Some(path) = &config.state_file else { return };
    let state = SerialState::of(snapshot);
    if previous.is_some_and(|p| SerialState::of(p) == state) {
        return;
    }
    if let Err(e) = state.write(path) {
        tracing::warn!(file = %path.display(), "cannot save the served serials: {e}");
    }
}

fn serials_of(snapshot: &Snapshot) -> BTreeMap<String, u32> {
    snapshot
        .zones()
        .iter()
        .map(|z| (z.origin.to_string(), z.serial))
        .collect()
}

impl Control {
    /// Zones loaded and sockets bound.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The last reload attempt and the last successful one.
    pub fn reload_reports(&self) -> (Option<ReloadReport>, Option<ReloadReport>) {
        let last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let success = self
            .last_success
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (last, success)
    }

    fn record(&self, report: ReloadReport) {
        let outcome = if report.ok { "success" } else { "failure" };
        self.metrics.reloads.with_label_values(&[outcome]).inc();
        if report.ok {
            self.metrics.last_reload_success.set(report.at_unix as i64);
            self.metrics.zone_serial.reset();
            for (zone, serial) in &report.serials {
                self.metrics
                    .zone_serial
                    .with_label_values(&[zone])
                    .set(i64::from(*serial));
            }
            *self.last_success.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// Reads the config and every zone again; on success swaps the new Snapshot in at once,
    /// on failure keeps serving the old one. Reloads never overlap.
    pub async fn reload(&self, trigger: &str) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        let config_path = self.config.lock().unwrap_or_else(|p| p.into_inner()).path.clone();
        let previous = self.shared.snapshot.load_full();
        let metrics = self.metrics.clone();
        let overrides = self.overrides.clone();
        // Parsing and building are CPU and file work: off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            let mut config = Config::load(&config_path)?;
            overrides.apply(&mut config);
            let mut zones = snapshot::load_zones(&config)?;
            apply_serial_policy(&mut zones, &config, |origin| {
                previous
                    .zones()
                    .iter()
                    .find(|z| z.origin.key() == origin.key())
                    .map(|z| (z.serial, z.content_digest))
            });
            let snapshot = Snapshot::build(
                zones,
                config.identity.as_deref(),
                config.version.as_deref(),
                Some(&metrics),
            );
            Ok::<_, Vec<Diagnostic>>((config, snapshot))
        })
        .await;
        let built = match built {
            Ok(result) => result,
            Err(join_error) => Err(vec![Diagnostic::file(
                std::path::Path::new("reload"),
                format!("reload task failed: {join_error}"),
            )]),
        };
        let report = match built {
            Ok((config, snapshot)) => {
                let restart_needed = {
                    let running = self.config.lock().unwrap_or_else(|p| p.into_inner());
                    reload::restart_needed(&running, &config)
                };
                if !restart_needed.is_empty() {
                    tracing::warn!(settings = ?restart_needed, "config changes that need a restart were not applied");
                }
                if let Some(watch) = self.watch.get() {
                    // New zones, members files or `$INCLUDE`s elsewhere: watch them from now on.
                    watch.extend(reload::files_to_watch(&config, &snapshot));
                }
                let serials = self.publish(snapshot, &config);
                // The previous snapshot and the load's scratch tables are free now.
                let _ = tokio::task::spawn_blocking(crate::memory::release_freed_memory).await;

                {
                    let mut running = self.config.lock().unwrap_or_else(|p| p.into_inner());
                    let listen = running.listen.clone();
                    let http = running.http_listen;
                    let limits = running.limits.clone();
                    let workers = running.udp_workers;
                    let (log_sample, query_metrics) = (running.query_log_sample, running.query_metrics);
                    *running = config;
                    // What needs a restart stays as it runs.
                    running.listen = listen;
                    running.http_listen = http;
                    running.limits = limits;
                    running.udp_workers = workers;
                    running.query_log_sample = log_sample;
                    running.query_metrics = query_metrics;
                }
                tracing::info!(trigger, ?serials, "reloaded");
                ReloadReport {
                    ok: true,
                    trigger: trigger.into(),
                    at_unix: unix_now(),
                    errors: Vec::new(),
                    restart_needed,
                    serials,
                    duration_ms: started.elapsed().as_secs_f64() * 1_000.0,
                }
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(trigger, "reload failed, still serving the previous data: {e}");
                }
                ReloadReport {
                    ok: false,
                    trigger: trigger.into(),
                    at_unix: unix_now(),
                    errors: errors.iter().map(ToString::to_string).collect(),
                    restart_needed: Vec::new(),
                    serials: serials_of(&self.shared.snapshot.load()),
                    duration_ms: started.elapsed().as_secs_f64() * 1_000.0,
                }
            }
        };
        self.record(report.clone());
        report
    }

    /// Publishes a built snapshot: health tables first (so nobody sees stale weights), then
    /// transfer settings and history, the swap, and NOTIFY for zones whose serial moved.
    fn publish(&self, mut snapshot: Snapshot, config: &Config) -> BTreeMap<String, u32> {
        let previous = self.shared.snapshot.load_full();
        self.health.sync(&snapshot);
        prepare_transfers(&mut snapshot, config, Some(&previous));
        let serials = serials_of(&snapshot);
        save_serial_state(config, &snapshot, Some(&previous));
        self.shared.snapshot.store(Arc::new(snapshot));
        // Tables of the published snapshot, in case a probe flipped meanwhile.
        let current = self.shared.snapshot.load();
        self.health.publish_tables(&current);
        for zone in current.zones() {
            let before = previous
                .zones()
                .iter()
                .find(|z| z.origin.key() == zone.origin.key());
            if before.is_none_or(|b| b.serial != zone.serial) {
                self.send_notify(zone);
            }
        }
        serials
    }

    /// NOTIFYs the zone's secondaries of its current serial.
    fn send_notify(&self, zone: &snapshot::Zone) {
        let Some(version) = zone.transfer.current.as_ref() else {
            return;
        };
        if zone.transfer.notify.is_empty() {
            return;
        }
        let generation = {
            let mut map = self.notify_generations.lock().unwrap_or_else(|p| p.into_inner());
            let generation = map.entry(zone.origin.key()).or_default().clone();
            generation.fetch_add(1, Ordering::Relaxed);
            generation
        };
        let keys = self.shared.snapshot.load().tsig_keys.clone();
        crate::transfer::notify::spawn(
            zone.origin.clone(),
            zone.serial,
            version.soa.clone(),
            zone.transfer.notify.clone(),
            keys,
            generation,
        );
    }

    /// When health moved a shared name's transfer pick, raises the zone's serial (at most once
    /// per `transfer-pick-refresh`) so secondaries follow. Zones nobody transfers are skipped.
    pub async fn refresh_transfer_picks(&self) {
        let due: Vec<Box<[u8]>> = {
            let snapshot = self.shared.snapshot.load();
            let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
            let bumps = self.last_pick_bump.lock().unwrap_or_else(|p| p.into_inner());
            snapshot
                .zones()
                .iter()
                .filter(|zone| !zone.transfer.allow.is_empty() && !zone.pools.is_empty())
                // Under `keep` the serial is the operator's to move: secondaries follow a pick
                // change only with the next serial the operator sets.
                .filter(|zone| config.serial_policy(&zone.origin) != crate::config::SerialPolicy::Keep)
                .filter(|zone| {
                    let served = zone.transfer.current.as_ref().map(|v| v.picks.clone());
                    served.is_some_and(|picks| picks != crate::transfer::current_picks(zone))
                })
                .filter(|zone| {
                    let refresh = config
                        .zones
                        .iter()
                        .find(|z| z.origin.key() == zone.origin.key())
                        .map_or(Duration::from_secs(30), |z| z.transfer_pick_refresh);
                    bumps
                        .get(&zone.origin.key())
                        .is_none_or(|at| at.elapsed() >= refresh)
                })
                .map(|zone| zone.origin.key())
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let _one_at_a_time = self.reloading.lock().await;
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let current = self.shared.snapshot.load_full();
        let zones: Vec<crate::zone::ZoneData> = current
            .zones()
            .iter()
            .map(|zone| {
                let mut data = crate::zone::ZoneData {
                    origin: zone.origin.clone(),
                    records: zone.records.clone(),
                    members: zone.members.clone(),
                    pools: zone.pools.iter().map(|p| p.def.clone()).collect(),
                };
                let mut serial = zone.serial;
                if due.contains(&zone.origin.key()) {
                    // The transferred content changed (the pick), whatever the digest says.
                    serial = reload::choose_serial(
                        config.serial_policy(&zone.origin),
                        Some((zone.serial, zone.content_digest)),
                        zone.serial,
                        !zone.content_digest,
                        SystemTime::now(),
                    );
                }
                data.set_serial(serial);
                data
            })
            .collect();
        let snapshot = Snapshot::build(
            zones,
            config.identity.as_deref(),
            config.version.as_deref(),
            Some(&self.metrics),
        );
        {
            let mut bumps = self.last_pick_bump.lock().unwrap_or_else(|p| p.into_inner());
            for zone in &due {
                bumps.insert(zone.clone(), Instant::now());
            }
        }
        let serials = self.publish(snapshot, &config);
        let _ = tokio::task::spawn_blocking(crate::memory::release_freed_memory).await;
        tracing::info!(
            ?serials,
            "shared-name transfer pick changed with health: serial raised"
        );
        self.metrics.zone_serial.reset();
        for (zone, serial) in &serials {
            self.metrics
                .zone_serial
                .with_label_values(&[zone])
                .set(i64::from(*serial));
        }
    }

    /// The Prometheus text exposition, with gauges refreshed from current health.
    pub fn scrape(&self) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_gauges();
        self.metrics.encode()
    }

    /// Sets the health, weight and certificate gauges from the current state (at scrape).
    pub fn refresh_gauges(&self) {
        let snapshot = self.shared.snapshot.load();
        let report = self.health.report(&snapshot);
        let m = &self.metrics;
        m.member_up.reset();
        m.member_effective_weight.reset();
        m.member_probe_duration.reset();
        m.member_cert_expiry_days.reset();
        m.member_cert_covers_pool.reset();
        m.pool_fail_open.reset();
        m.pool_members.reset();
        for pool in &report.pools {
            m.pool_fail_open
                .with_label_values(&[&pool.zone, &pool.name])
                .set(i64::from(pool.fail_open));
            let up = pool.members.iter().filter(|m| m.state == "up").count();
            m.pool_members
                .with_label_values(&[&pool.zone, &pool.name, "up"])
                .set(up as i64);
            m.pool_members
                .with_label_values(&[&pool.zone, &pool.name, "down"])
                .set((pool.members.len() - up) as i64);
            // Per-member series cost memory per scrape; past the limit only the counts above.
            if pool.members.len() > crate::metrics::PER_MEMBER_SERIES_LIMIT {
                continue;
            }
            for member in &pool.members {
                m.member_up
                    .with_label_values(&[&pool.zone, &member.label])
                    .set(i64::from(member.state == "up"));
                m.member_effective_weight
                    .with_label_values(&[&pool.zone, &pool.name, &member.label])
                    .set(member.effective_weight);
                if let Some(probe) = &member.last_probe {
                    m.member_probe_duration
                        .with_label_values(&[&pool.zone, &member.label])
                        .set(probe.latency_ms / 1_000.0);
                }
                if let Some(cert) = &member.certificate {
                    if let Some(days) = cert.days_to_expiry {
                        m.member_cert_expiry_days
                            .with_label_values(&[&pool.zone, &member.label])
                            .set(days);
                    }
                    m.member_cert_covers_pool
                        .with_label_values(&[&pool.zone, &pool.name, &member.label])
                        .set(i64::from(cert.covers_pool));
                }
            }
        }
    }
}

impl ServerHandle {
    /// Stops the listeners, giving open TCP queries `grace` to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.control.ready.store(false, Ordering::Relaxed);
        for task in &self.background {
            task.abort();
        }
        self.control.health.stop();
        self.running.shutdown(grace).await;
    }
}
