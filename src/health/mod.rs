//! Member health: one probe task per member, the rise/fall state machine, slow start,
//! certificate watch, and republishing each pool's pick table when effective weights change.
//!
//! Health state is keyed by (zone, label, target, probe settings), so it survives a reload for
//! members that did not change. Nothing here runs on the request path: queries only read the
//! pick tables this module publishes.

pub mod cert;
mod gauges;
pub mod probe;
/// Probe settings are zone data (members carry them); re-exported under their old home.
pub use crate::zone::probe_spec as spec;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::snapshot::{Published, Snapshot};
use crate::sync::lock;
use crate::zone::members::{CertPolicy, Member, PickPolicy};
use crate::zone::name::Name;
use probe::{ProbeResult, TlsConfigs};
use spec::{InitialState, ProbeKind, ProbeSpec};

pub use crate::pick::WEIGHT_SCALE;
/// How often pick tables are refreshed while some member is ramping up.
const RAMP_TICK: Duration = Duration::from_millis(250);

/// Identity of a member's health state across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberKey {
    zone: Box<[u8]>,
    label: String,
    target: Box<[u8]>,
    probe: Arc<ProbeSpec>,
}

impl MemberKey {
    fn of(zone: &Name, member: &Member) -> MemberKey {
        MemberKey {
            zone: zone.key(),
            label: member.label().to_ascii_lowercase(),
            target: member.target.key(),
            probe: member.probe.clone(),
        }
    }
}

/// The last probe's outcome.
#[derive(Debug, Clone)]
pub struct LastProbe {
    pub ok: bool,
    pub detail: String,
    pub latency: Duration,
    pub at: SystemTime,
}

/// A member's health as the probes see it.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub up: bool,
    consecutive_ok: u32,
    consecutive_fail: u32,
    /// When the member last came up (drives slow start); `None` when up from the start.
    pub up_since: Option<Instant>,
    pub last: Option<LastProbe>,
    /// Leaf certificate of the last https probe that completed a handshake.
    pub certificate: Option<Arc<[u8]>>,
    pub cert_not_after: Option<i64>,
    /// Round-trip time of the successful probes, smoothed (weight 1/4 to each new one): what
    /// a `latency` pool scales weights by.
    pub rtt: Option<Duration>,
}

/// One member's health, shared between its probe task, the table builder and status.
#[derive(Debug)]
pub struct MemberHealth {
    pub zone: Name,
    pub label: String,
    pub target: Name,
    pub probe: Arc<ProbeSpec>,
    state: Mutex<HealthState>,
}

impl MemberHealth {
    fn new(zone: &Name, member: &Member) -> MemberHealth {
        // A member without a probe is always up.
        let up = member.probe.kind == ProbeKind::None || member.probe.initial == InitialState::Up;
        MemberHealth {
            zone: zone.clone(),
            label: member.label(),
            target: member.target.clone(),
            probe: member.probe.clone(),
            state: Mutex::new(HealthState {
                up,
                consecutive_ok: 0,
                consecutive_fail: 0,
                up_since: None,
                last: None,
                certificate: None,
                cert_not_after: None,
                rtt: None,
            }),
        }
    }

    /// A copy of the current state.
    pub fn state(&self) -> HealthState {
        lock(&self.state).clone()
    }

    /// Feeds one probe result through the rise/fall thresholds. Returns the new state when the
    /// member flipped.
    pub fn observe(&self, result: &ProbeResult, now: Instant) -> Option<bool> {
        let mut state = lock(&self.state);
        state.last = Some(LastProbe {
            ok: result.ok,
            detail: result.detail.clone(),
            latency: result.latency,
            at: SystemTime::now(),
        });
        if let Some(der) = &result.certificate {
            state.cert_not_after = cert::not_after(der);
            state.certificate = Some(der.clone());
        }
        if result.ok {
            state.rtt = Some(match state.rtt {
                Some(old) => (old * 3 + result.latency) / 4,
                None => result.latency,
            });
            state.consecutive_ok += 1;
            state.consecutive_fail = 0;
            if !state.up && state.consecutive_ok >= self.probe.rise {
                state.up = true;
                state.up_since = Some(now);
                return Some(true);
            }
        } else {
            state.consecutive_fail += 1;
            state.consecutive_ok = 0;
            if state.up && state.consecutive_fail >= self.probe.fall {
                state.up = false;
                state.up_since = None;
                return Some(false);
            }
        }
        None
    }
}

/// A `latency` pool's weights: each effective weight times (fastest round trip / this
/// member's), so picks go in inverse proportion to the round-trip time this instance
/// measures. A member not measured (yet, or without a probe) counts as the fastest; members
/// that are down do not set the pace.
fn scale_by_latency(weights: &[(u64, u64)], rtts: &[Option<Duration>]) -> Vec<(u64, u64)> {
    // Below 50 µs a loopback round trip is noise.
    let micros = |d: Duration| (d.as_micros() as u64).max(50);
    let Some(fastest) = rtts
        .iter()
        .zip(weights)
        .filter(|(_, (effective, _))| *effective > 0)
        .filter_map(|(rtt, _)| rtt.map(micros))
        .min()
    else {
        return weights.to_vec();
    };
    weights
        .iter()
        .zip(rtts)
        .map(|(&(effective, configured), rtt)| match rtt {
            Some(rtt) => (
                (effective.saturating_mul(fastest) / micros(*rtt)).max(u64::from(effective > 0)),
                configured,
            ),
            None => (effective, configured),
        })
        .collect()
}

/// Configured weight x health: 0 when down; ramping linearly from 1/1000 to full over
/// `slow_start` after coming back up (scaled by `WEIGHT_SCALE`).
pub fn effective_weight(configured: u32, state: &HealthState, slow_start: Duration, now: Instant) -> u64 {
    if !state.up || configured == 0 {
        return 0;
    }
    let full = u64::from(configured) * WEIGHT_SCALE;
    match state.up_since {
        Some(since) if !slow_start.is_zero() => {
            let elapsed = now.saturating_duration_since(since);
            if elapsed >= slow_start {
                full
            } else {
                let fraction = elapsed.as_micros().max(1);
                ((u128::from(full) * fraction / slow_start.as_micros().max(1)) as u64).max(1)
            }
        }
        _ => full,
    }
}

/// Whether a certificate qualifies a member for a pool under its policy.
fn certificate_eligible(state: &HealthState, pool_name: &Name, policy: CertPolicy, now_unix: i64) -> bool {
    if policy == CertPolicy::Report {
        return true;
    }
    // Strict: judged once a certificate has been seen (https probes only).
    let Some(der) = &state.certificate else {
        return true;
    };
    let unexpired = state.cert_not_after.is_some_and(|t| t > now_unix);
    unexpired && cert::covers(der, &pool_name.to_string())
}

/// Seconds since the epoch, signed to compare with certificate times.
fn unix_now() -> i64 {
    i64::try_from(crate::wire::unix_now()).unwrap_or(i64::MAX)
}

struct Tracked {
    health: Arc<MemberHealth>,
    task: Option<AbortHandle>,
}

/// A member taken out of its pools by `ctl drain`: (zone as written by `Name`'s Display,
/// lowercased; member label, lowercased). Kept by name, not by `MemberKey`, so a drain
/// outlives reloads that change the member's target, weight or probe.
pub type DrainedMember = (String, String);

fn drained_key(zone: &Name, member: &Member) -> DrainedMember {
    (
        zone.to_string().to_ascii_lowercase(),
        member.label().to_ascii_lowercase(),
    )
}

/// Runs the probes and keeps the pick tables of the published snapshot current.
pub struct HealthManager {
    snapshot: Published,
    members: Mutex<HashMap<MemberKey, Tracked>>,
    /// Members in maintenance: never picked, not even when their pool fails open.
    drained: Mutex<BTreeSet<DrainedMember>>,
    fail_open: Mutex<HashMap<(String, String), bool>>,
    wake: Arc<Notify>,
    /// A ramp is running or a `latency` pool exists: the tables are republished every
    /// `RAMP_TICK` (set by whoever publishes last, so a snapshot published from outside the
    /// refresh task starts the ticking too).
    ticking: AtomicBool,
    tls: Arc<TlsConfigs>,
}

impl std::fmt::Debug for HealthManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthManager").finish_non_exhaustive()
    }
}

impl HealthManager {
    /// Creates the manager and its table-refresh task (on the current runtime).
    pub fn start(snapshot: Published) -> Arc<HealthManager> {
        let manager = Arc::new(HealthManager {
            snapshot,
            members: Mutex::default(),
            drained: Mutex::default(),
            fail_open: Mutex::default(),
            wake: Arc::new(Notify::new()),
            tls: Arc::default(),
            ticking: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&manager);
        let wake = manager.wake.clone();
        tokio::spawn(async move {
            loop {
                let ticking = weak.upgrade().is_some_and(|m| m.ticking.load(Ordering::Relaxed));
                let wait = if ticking {
                    RAMP_TICK
                } else {
                    Duration::from_secs(60)
                };
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                let Some(manager) = weak.upgrade() else { return };
                let snapshot = manager.snapshot.load();
                manager.publish_tables(&snapshot);
            }
        });
        manager
    }

    /// Aligns probes with `snapshot` (keeping state of unchanged members, starting new ones,
    /// stopping removed ones) and publishes its pick tables. Call before publishing it.
    pub fn sync(&self, snapshot: &Snapshot) {
        {
            let mut members = lock(&self.members);
            let mut wanted: HashMap<MemberKey, (&Name, &Member)> = HashMap::new();
            for zone in snapshot.zones() {
                // Members without a probe are always up: no state to keep (memory at 100,000).
                for member in zone.members.iter().filter(|m| m.probe.kind != ProbeKind::None) {
                    wanted.insert(MemberKey::of(&zone.origin, member), (&zone.origin, member));
                }
            }
            members.retain(|key, tracked| {
                let keep = wanted.contains_key(key);
                if !keep {
                    if let Some(task) = &tracked.task {
                        task.abort();
                    }
                }
                keep
            });
            for (key, (zone, member)) in wanted {
                if members.contains_key(&key) {
                    continue;
                }
                let health = Arc::new(MemberHealth::new(zone, member));
                let task = (member.probe.kind != ProbeKind::None).then(|| {
                    tokio::spawn(probe_loop(health.clone(), self.wake.clone(), self.tls.clone()))
                        .abort_handle()
                });
                members.insert(key, Tracked { health, task });
            }
        }
        self.publish_tables(snapshot);
    }

    /// The members drained now.
    pub fn drained(&self) -> BTreeSet<DrainedMember> {
        lock(&self.drained).clone()
    }

    /// Replaces the drained set (at start, from the state file). Tables follow at the next
    /// `sync`.
    pub fn set_drained(&self, drained: BTreeSet<DrainedMember>) {
        *lock(&self.drained) = drained;
    }

    /// Drains (or undrains) `member` of `zone` and republishes `snapshot`'s tables at once.
    /// Returns false when it already was in that state.
    pub fn set_member_drained(
        &self,
        snapshot: &Snapshot,
        zone: &Name,
        member: &Member,
        drained: bool,
    ) -> bool {
        let key = drained_key(zone, member);
        let changed = {
            let mut set = lock(&self.drained);
            if drained {
                set.insert(key)
            } else {
                set.remove(&key)
            }
        };
        if changed {
            self.publish_tables(snapshot);
        }
        changed
    }

    /// Rebuilds every pool's table from current health. Returns true while a ramp is running.
    pub fn publish_tables(&self, snapshot: &Snapshot) -> bool {
        let now = Instant::now();
        let now_unix = unix_now();
        let members = lock(&self.members);
        let drained = lock(&self.drained);
        let mut ramping = false;
        let mut fail_open = lock(&self.fail_open);
        for zone in snapshot.zones() {
            for pool in &zone.pools {
                let weights: Vec<(u64, u64)> = pool
                    .def
                    .members
                    .iter()
                    .map(|&m| {
                        let member = &zone.members[m];
                        if !drained.is_empty() && drained.contains(&drained_key(&zone.origin, member)) {
                            // Out of the pool entirely, fail-open included: the operator
                            // asked for no traffic.
                            return (0, 0);
                        }
                        let configured = u64::from(member.weight) * WEIGHT_SCALE;
                        // Unprobed members are never tracked (`sync`): no key to build.
                        let tracked = (member.probe.kind != ProbeKind::None)
                            .then(|| members.get(&MemberKey::of(&zone.origin, member)))
                            .flatten();
                        let Some(tracked) = tracked else {
                            return (configured, configured);
                        };
                        let state = tracked.health.state();
                        let mut effective =
                            effective_weight(member.weight, &state, member.probe.slow_start, now);
                        if effective > 0 && effective < configured {
                            ramping = true;
                        }
                        if !certificate_eligible(&state, &pool.def.name, pool.def.cert_policy, now_unix) {
                            effective = 0;
                        }
                        (effective, configured)
                    })
                    .collect();
                let weights = if pool.def.policy == PickPolicy::Latency {
                    // Round-trip times move with every probe: republish on the ramp tick.
                    ramping = true;
                    let rtts: Vec<Option<Duration>> = pool
                        .def
                        .members
                        .iter()
                        .map(|&m| {
                            let member = &zone.members[m];
                            if member.probe.kind == ProbeKind::None {
                                return None;
                            }
                            let tracked = members.get(&MemberKey::of(&zone.origin, member))?;
                            tracked.health.state().rtt
                        })
                        .collect();
                    scale_by_latency(&weights, &rtts)
                } else {
                    weights
                };
                pool.publish(&weights);
                let is_open = pool.table.load().is_fail_open();
                let key = (zone.origin.to_string(), pool.def.label.clone());
                let was_open = fail_open.insert(key, is_open).unwrap_or(false);
                if is_open && !was_open {
                    tracing::warn!(pool = %pool.def.name, "every member of the pool is down or ineligible: failing open to all members by configured weight");
                } else if was_open && !is_open {
                    tracing::info!(pool = %pool.def.name, "pool has healthy members again: no longer failing open");
                }
            }
        }
        if ramping && !self.ticking.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        } else if !ramping {
            self.ticking.store(false, Ordering::Relaxed);
        }
        ramping
    }

    /// The health of every tracked member.
    pub fn member(&self, zone: &Name, member: &Member) -> Option<Arc<MemberHealth>> {
        let members = lock(&self.members);
        members
            .get(&MemberKey::of(zone, member))
            .map(|t| t.health.clone())
    }

    /// A report of pools and members for `status` and the admin endpoint.
    pub fn report(&self, snapshot: &Snapshot) -> StatusReport {
        let now = Instant::now();
        let now_unix = unix_now();
        let drained = self.drained();
        let mut pools = Vec::new();
        for zone in snapshot.zones() {
            for pool in &zone.pools {
                let table = pool.table.load();
                let members = pool
                    .def
                    .members
                    .iter()
                    .map(|&m| {
                        let member = &zone.members[m];
                        let state = self.member(&zone.origin, member).map(|h| h.state());
                        let effective = state
                            .as_ref()
                            .map_or(u64::from(member.weight) * WEIGHT_SCALE, |s| {
                                effective_weight(member.weight, s, member.probe.slow_start, now)
                            });
                        let cert = state.as_ref().and_then(|s| {
                            let der = s.certificate.as_ref()?;
                            Some(CertReport {
                                days_to_expiry: s.cert_not_after.map(|t| (t - now_unix).div_euclid(86_400)),
                                covers_node: cert::covers(der, &member.name.to_string()),
                                covers_pool: cert::covers(der, &pool.def.name.to_string()),
                            })
                        });
                        let eligible = state.as_ref().is_none_or(|s| {
                            certificate_eligible(s, &pool.def.name, pool.def.cert_policy, now_unix)
                        });
                        let is_drained = drained.contains(&drained_key(&zone.origin, member));
                        // As the pick table sees it: an ineligible or drained member has no
                        // weight here.
                        let effective = if eligible && !is_drained { effective } else { 0 };
                        MemberReport {
                            label: member.label(),
                            target: member.target.to_string(),
                            probe: format!("{:?}", member.probe.kind).to_ascii_lowercase(),
                            state: match &state {
                                Some(s) if s.up => "up",
                                Some(_) => "down",
                                None if member.probe.kind == ProbeKind::None => "up",
                                None => "unknown",
                            }
                            .to_string(),
                            configured_weight: member.weight,
                            effective_weight: effective as f64 / WEIGHT_SCALE as f64,
                            cert_eligible: eligible,
                            drained: is_drained,
                            last_probe: state.as_ref().and_then(|s| s.last.as_ref()).map(|l| ProbeReport {
                                ok: l.ok,
                                detail: l.detail.clone(),
                                latency_ms: l.latency.as_secs_f64() * 1_000.0,
                                age_s: l.at.elapsed().map_or(0.0, |d| d.as_secs_f64()),
                            }),
                            certificate: cert,
                        }
                    })
                    .collect();
                pools.push(PoolReport {
                    zone: zone.origin.to_string(),
                    name: pool.def.name.to_string(),
                    ttl: pool.def.ttl,
                    cert_policy: format!("{:?}", pool.def.cert_policy).to_ascii_lowercase(),
                    policy: pool.def.policy.label().to_string(),
                    fail_open: table.is_fail_open(),
                    members,
                    members_omitted: 0,
                });
            }
        }
        StatusReport { pools }
    }

    /// Stops every probe.
    pub fn stop(&self) {
        let mut members = lock(&self.members);
        for tracked in members.values() {
            if let Some(task) = &tracked.task {
                task.abort();
            }
        }
        members.clear();
    }
}

async fn probe_loop(health: Arc<MemberHealth>, wake: Arc<Notify>, tls: Arc<TlsConfigs>) {
    let mut rng = SmallRng::from_os_rng();
    let spec = health.probe.clone();
    // Spread the first probes of many members over the jitter window.
    let first = rng.random_range(0..=spec.jitter.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(first)).await;
    loop {
        let result = probe::run(&spec, &health.target, &tls).await;
        // A new certificate can change eligibility under `strict` without any flip.
        let new_certificate =
            result.certificate.is_some() && health.state().certificate != result.certificate;
        if let Some(up) = health.observe(&result, Instant::now()) {
            if up {
                tracing::info!(member = %health.label, target = %health.target, detail = %result.detail, "member is up");
            } else {
                tracing::warn!(member = %health.label, target = %health.target, detail = %result.detail, "member is down");
            }
            wake.notify_one();
        } else if new_certificate {
            wake.notify_one();
        }
        let jitter = spec.jitter.as_millis() as i64;
        let offset = if jitter > 0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0
        };
        let wait = (spec.interval.as_millis() as i64 + offset).max(1) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Pools and members, as `consortium-dns status` shows them.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub pools: Vec<PoolReport>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PoolReport {
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    pub cert_policy: String,
    /// weighted | nearest | region | latency
    #[serde(default)]
    pub policy: String,
    pub fail_open: bool,
    pub members: Vec<MemberReport>,
    /// Members of the pool that `members` leaves out (a summary of a large pool lists the
    /// ones not up first; `/status?members=all` lists every one).
    #[serde(default)]
    pub members_omitted: usize,
}

impl PoolReport {
    /// Keeps at most `limit` members: those not up (or drained) first, in order, then up ones.
    pub fn summarise(&mut self, limit: usize) {
        if self.members.len() <= limit {
            return;
        }
        let total = self.members.len();
        let (mut kept, up): (Vec<_>, Vec<_>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| m.state != "up" || m.drained);
        kept.truncate(limit);
        let room = limit - kept.len();
        kept.extend(up.into_iter().take(room));
        self.members_omitted = total - kept.len();
        self.members = kept;
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct MemberReport {
    pub label: String,
    pub target: String,
    pub probe: String,
    pub state: String,
    pub configured_weight: u32,
    pub effective_weight: f64,
    pub cert_eligible: bool,
    /// Taken out of its pools by `ctl drain` (its own name still answers).
    #[serde(default)]
    pub drained: bool,
    pub last_probe: Option<ProbeReport>,
    pub certificate: Option<CertReport>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub ok: bool,
    pub detail: String,
    pub latency_ms: f64,
    pub age_s: f64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct CertReport {
    pub days_to_expiry: Option<i64>,
    pub covers_node: bool,
    pub covers_pool: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(up: bool, up_since: Option<Instant>) -> HealthState {
        HealthState {
            up,
            consecutive_ok: 0,
            consecutive_fail: 0,
            up_since,
            last: None,
            certificate: None,
            cert_not_after: None,
            rtt: None,
        }
    }

    #[test]
    fn latency_scales_weights_by_the_inverse_round_trip() {
        let ms = Duration::from_millis;
        let weights = [(1000, 1000), (1000, 1000), (1000, 1000), (0, 1000)];
        let rtts = [Some(ms(10)), Some(ms(40)), None, Some(ms(1))];
        let scaled = scale_by_latency(&weights, &rtts);
        // Against the fastest member that is up (10 ms; the down one does not count).
        assert_eq!(scaled, vec![(1000, 1000), (250, 1000), (1000, 1000), (0, 1000)]);
        assert_eq!(scale_by_latency(&weights, &[None; 4]), weights.to_vec());
    }

    #[test]
    fn slow_start_ramps_linearly() {
        let t0 = Instant::now();
        let ramp = Duration::from_secs(10);
        let w = |elapsed: u64| {
            effective_weight(4, &state(true, Some(t0)), ramp, t0 + Duration::from_secs(elapsed))
        };
        assert_eq!(w(0), 1);
        assert_eq!(w(5), 2 * WEIGHT_SCALE);
        assert_eq!(w(10), 4 * WEIGHT_SCALE);
        assert_eq!(w(60), 4 * WEIGHT_SCALE);
        assert_eq!(effective_weight(4, &state(false, None), ramp, t0), 0);
        assert_eq!(effective_weight(0, &state(true, None), ramp, t0), 0);
        assert_eq!(
            effective_weight(3, &state(true, None), ramp, t0),
            3 * WEIGHT_SCALE
        );
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let zone = Name::parse("consortium.example.", None).expect("name");
        let member = Member {
            label_len: 6,
            name: Name::parse("node1.consortium.example.", None).expect("name"),
            target: Name::parse("node1.operator-a.com.", None).expect("name"),
            weight: 1,
            ttl: 300,
            probe: Arc::new(
                spec::HealthSettings {
                    rise: Some(2),
                    fall: Some(3),
                    ..Default::default()
                }
                .resolve()
                .expect("valid"),
            ),
            update_key: None,
            place: None,
            location: crate::zone::Location::new(std::path::Path::new("m").into(), 1),
        };
        let health = MemberHealth::new(&zone, &member);
        let result = |ok| ProbeResult {
            ok,
            detail: String::new(),
            latency: Duration::ZERO,
            certificate: None,
        };
        let now = Instant::now();
        assert_eq!(health.observe(&result(false), now), None);
        assert_eq!(health.observe(&result(false), now), None);
        assert_eq!(
            health.observe(&result(true), now),
            None,
            "a success resets the failure count"
        );
        assert_eq!(health.observe(&result(false), now), None);
        assert_eq!(health.observe(&result(false), now), None);
        assert_eq!(health.observe(&result(false), now), Some(false));
        assert_eq!(health.observe(&result(true), now), None);
        assert_eq!(health.observe(&result(true), now), Some(true));
        assert_eq!(health.state().up_since, Some(now));
    }
}
