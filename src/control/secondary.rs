//! Secondary zones over time: each is checked against its primaries every SOA REFRESH (RETRY
//! after a failure, at once on a NOTIFY from a primary, RFC 1996 §3.11), transferred when the
//! primary's serial is ahead (IXFR from the copy held, AXFR otherwise or when the IXFR is
//! broken), kept on disk, and no longer served once EXPIRE passes without contact
//! (RFC 1035 §3.3.13). A bad transfer changes nothing: the copy held keeps being served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Change, Control};
use crate::config::{Config, ZoneConfig};
use crate::secondary::client::{self, Transferred};
use crate::secondary::{self, Assembled, LocalProbes, store};
use crate::sync::lock;
use crate::wire;
use crate::zone::Record;
use crate::zone::name::Name;
use crate::zone::serial::serial_gt;

/// Until a first copy exists, the primaries are asked this often.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Each read from a primary, and connecting to it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A copy held: the records as transferred (SOA first) and what was built from them.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub records: Arc<Vec<Record>>,
    pub assembled: Arc<Assembled>,
}

#[derive(Debug, Default)]
struct ZoneState {
    held: Option<Held>,
    /// Unix seconds of the last answer from a primary that confirmed or replaced the copy.
    last_contact: Option<u64>,
    last_transfer: Option<u64>,
    last_transfer_kind: Option<&'static str>,
    last_error: Option<String>,
    primary_serial: Option<u32>,
    next_check: Option<Instant>,
    in_flight: bool,
    expired: bool,
}

/// Every secondary zone's state, by zone key.
#[derive(Debug, Default)]
pub(super) struct Secondaries {
    zones: Mutex<HashMap<Box<[u8]>, ZoneState>>,
}

/// One secondary zone as status shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SecondaryZoneStatus {
    pub zone: String,
    pub primaries: Vec<String>,
    /// The serial served (None: nothing transferred yet).
    pub serial: Option<u32>,
    pub primary_serial: Option<u32>,
    pub last_transfer: Option<u64>,
    /// "AXFR" or "IXFR": how the copy served came.
    pub last_transfer_kind: Option<String>,
    pub last_contact: Option<u64>,
    /// When the copy stops being served without contact (last contact + SOA EXPIRE).
    pub expires_at: Option<u64>,
    pub expired: bool,
    pub last_error: Option<String>,
    /// Shared-name alternatives not offered: their signature did not verify.
    pub refused_alternatives: Vec<String>,
}

/// REFRESH, RETRY and EXPIRE of an SOA RDATA.
fn timers(soa: &Record) -> (u32, u32, u32) {
    let at = soa.rdata.len().saturating_sub(16);
    if soa.rdata.len() < 20 {
        return (3600, 600, 604_800);
    }
    (
        wire::be32(&soa.rdata, at),
        wire::be32(&soa.rdata, at + 4),
        wire::be32(&soa.rdata, at + 8),
    )
}

fn local_probes(
    config: &Config,
    zone: &ZoneConfig,
) -> (Vec<(String, String)>, crate::zone::probe_spec::HealthSettings) {
    (
        zone.secondary
            .as_ref()
            .map(|s| s.probe_addresses.clone())
            .unwrap_or_default(),
        config.live.health_defaults.clone(),
    )
}

impl Secondaries {
    /// The copies to build with: the zones held and not expired.
    pub(super) fn serving(&self) -> HashMap<Box<[u8]>, Held> {
        lock(&self.zones)
            .iter()
            .filter(|(_, z)| !z.expired)
            .filter_map(|(k, z)| Some((k.clone(), z.held.clone()?)))
            .collect()
    }

    /// Reads each secondary zone's copy from disk (at start): served at once, unless it is
    /// older than its SOA EXPIRE. A broken copy is logged and the zone transferred afresh.
    pub(super) fn load_stores(&self, config: &Config) {
        let now = wire::unix_now();
        let mut zones = lock(&self.zones);
        for zone in config.live.zones.iter().filter(|z| z.is_secondary()) {
            let Some(settings) = &zone.secondary else { continue };
            let state = zones.entry(zone.origin().key()).or_default();
            match store::load(&settings.store) {
                Ok(Some((records, contact))) => {
                    let (addresses, defaults) = local_probes(config, zone);
                    let local = LocalProbes {
                        addresses: &addresses,
                        defaults: Some(&defaults),
                    };
                    match secondary::assemble(zone.origin(), &records, &local, now) {
                        Ok(assembled) => {
                            let (_, _, expire) = timers(&records[0]);
                            state.expired = contact + u64::from(expire) < now;
                            if state.expired {
                                tracing::warn!(zone = %zone.origin(), file = %settings.store.display(), "the copy on disk is past its SOA expire: not served until a primary answers");
                            } else {
                                tracing::info!(zone = %zone.origin(), serial = assembled.serial, "serving the copy on disk until a primary answers");
                            }
                            state.last_contact = Some(contact);
                            state.held = Some(Held {
                                records: Arc::new(records),
                                assembled: Arc::new(assembled),
                            });
                        }
                        Err(e) => {
                            tracing::error!(zone = %zone.origin(), file = %settings.store.display(), "the copy on disk cannot be served: {e}")
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(zone = %zone.origin(), "{e}"),
            }
        }
    }

    /// Status of every secondary zone of `config`.
    pub(super) fn status(&self, config: &Config) -> Vec<SecondaryZoneStatus> {
        let zones = lock(&self.zones);
        config
            .live
            .zones
            .iter()
            .filter_map(|zone| {
                let settings = zone.secondary.as_ref()?;
                let state = zones.get(&zone.origin().key());
                let held = state.and_then(|s| s.held.as_ref());
                let expire = held.map(|h| timers(&h.records[0]).2);
                Some(SecondaryZoneStatus {
                    zone: zone.origin().to_string(),
                    primaries: settings.primaries.iter().map(|p| p.address.to_string()).collect(),
                    serial: held.map(|h| h.assembled.serial),
                    primary_serial: state.and_then(|s| s.primary_serial),
                    last_transfer: state.and_then(|s| s.last_transfer),
                    last_transfer_kind: state.and_then(|s| s.last_transfer_kind).map(str::to_string),
                    last_contact: state.and_then(|s| s.last_contact),
                    expires_at: state
                        .and_then(|s| s.last_contact)
                        .zip(expire)
                        .map(|(c, e)| c + u64::from(e)),
                    expired: state.is_some_and(|s| s.expired),
                    last_error: state.and_then(|s| s.last_error.clone()),
                    refused_alternatives: held.map(|h| h.assembled.refused.clone()).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Marks a zone to be checked now (a NOTIFY from its primary).
    fn wake(&self, zone: &[u8]) {
        if let Some(state) = lock(&self.zones).get_mut(zone) {
            state.next_check = None;
        }
    }
}

/// What one check of a zone ended with.
enum Checked {
    /// The copy held is current (or the primary's is not newer).
    Current,
    /// A new copy, to publish, and how it came ("AXFR" or "IXFR").
    New(Held, &'static str),
}

impl Control {
    /// The channel the listeners hand NOTIFYs for secondary zones to; None when no zone is a
    /// secondary.
    pub fn accept_notifies(&self) -> Option<mpsc::Receiver<Box<[u8]>>> {
        if !self.config().live.zones.iter().any(ZoneConfig::is_secondary) {
            return None;
        }
        let (sender, receiver) = mpsc::channel(64);
        self.shared.notifies.set(sender).ok()?;
        Some(receiver)
    }

    /// Secondary zones' status for `/status` and `consortium-dns status`.
    pub fn secondary_status(&self) -> Vec<SecondaryZoneStatus> {
        self.secondaries.status(&self.config())
    }

    /// Checks the secondary zones when due (every second) or at once when a NOTIFY arrives.
    pub async fn run_secondaries(self: Arc<Self>, mut notifies: Option<mpsc::Receiver<Box<[u8]>>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            match notifies.as_mut() {
                Some(incoming) => tokio::select! {
                    _ = tick.tick() => {}
                    zone = incoming.recv() => match zone {
                        Some(zone) => self.secondaries.wake(&zone),
                        None => notifies = None,
                    },
                },
                None => {
                    tick.tick().await;
                }
            }
            let config = self.config();
            let now = Instant::now();
            for zone in config.live.zones.iter().filter(|z| z.is_secondary()) {
                let key = zone.origin().key();
                let due = {
                    let mut zones = lock(&self.secondaries.zones);
                    let state = zones.entry(key.clone()).or_default();
                    let due = !state.in_flight && state.next_check.is_none_or(|at| at <= now);
                    if due {
                        state.in_flight = true;
                    }
                    due
                };
                if due {
                    let control = self.clone();
                    let origin = zone.origin().clone();
                    tokio::spawn(async move { control.check_secondary(origin).await });
                }
            }
        }
    }

    /// One check of a secondary zone against its primaries, in order, until one answers.
    async fn check_secondary(self: Arc<Self>, origin: Name) {
        let key = origin.key();
        let config = self.config();
        let held = lock(&self.secondaries.zones)
            .get(&key)
            .and_then(|z| z.held.clone());
        let mut errors = Vec::new();
        let mut outcome = None;
        if let Some(zone) = config.zone(&origin).filter(|z| z.is_secondary()) {
            for primary in zone.secondary.iter().flat_map(|s| &s.primaries) {
                let tsig = primary
                    .key
                    .as_ref()
                    .and_then(|name| config.live.keys.iter().find(|k| k.name.key() == name.key()));
                let target = client::Primary {
                    address: primary.address,
                    key: tsig,
                    timeout: TIMEOUT,
                    source: primary.source,
                };
                match self.check_one(&config, zone, target, held.as_ref()).await {
                    Ok(result) => {
                        outcome = Some(result);
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let now = wire::unix_now();
        let mut publish = None;
        let was_expired;
        {
            let mut zones = lock(&self.secondaries.zones);
            let state = zones.entry(key.clone()).or_default();
            state.in_flight = false;
            was_expired = state.expired;
            let soa = state.held.as_ref().map(|h| h.records[0].clone());
            let (refresh, retry, expire) = soa.as_ref().map_or((5, 5, u32::MAX), timers);
            match outcome {
                Some((serial, checked)) => {
                    state.last_contact = Some(now);
                    state.primary_serial = Some(serial);
                    state.last_error = None;
                    state.expired = false;
                    if let Checked::New(new, kind) = checked {
                        state.last_transfer = Some(now);
                        state.last_transfer_kind = Some(kind);
                        let refresh = timers(&new.records[0]).0;
                        state.next_check = Some(Instant::now() + Duration::from_secs(u64::from(refresh)));
                        publish = Some(new);
                    } else {
                        state.next_check = Some(Instant::now() + Duration::from_secs(u64::from(refresh)));
                    }
                }
                None => {
                    let message = errors.join("; ");
                    tracing::warn!(zone = %origin, "no primary answered: {message}");
                    state.last_error = Some(message);
                    let wait = if state.held.is_some() {
                        Duration::from_secs(u64::from(retry.max(1)))
                    } else {
                        FIRST_RETRY
                    };
                    state.next_check = Some(Instant::now() + wait);
                    if let Some(contact) = state.last_contact.filter(|_| state.held.is_some()) {
                        if contact.saturating_add(u64::from(expire)) < now && !state.expired {
                            tracing::error!(zone = %origin, "SOA expire passed without contact with a primary: the zone is no longer served (SERVFAIL)");
                            state.expired = true;
                        }
                    }
                }
            }
            if let Some(new) = &publish {
                state.held = Some(new.clone());
            }
        }
        let expired_now = lock(&self.secondaries.zones).get(&key).is_some_and(|z| z.expired);
        if publish.is_some() || was_expired != expired_now {
            let mut rebuilding = self.rebuilding.lock().await;
            match self.rebuild(&mut rebuilding, Change::Transferred).await {
                Ok(published) => {
                    tracing::info!(zone = %origin, serials = ?published.serials, "secondary zone published")
                }
                Err(errors) => {
                    for e in errors {
                        tracing::error!(zone = %origin, "secondary zone not published: {e}");
                    }
                }
            }
        }
    }

    /// Asks one primary; returns its serial and whether a new copy came.
    async fn check_one(
        &self,
        config: &Config,
        zone: &ZoneConfig,
        primary: client::Primary<'_>,
        held: Option<&Held>,
    ) -> Result<(u32, Checked), String> {
        let origin = zone.origin();
        let serial = client::soa_serial(primary, origin).await?;
        let have = held.map(|h| &h.records[0]);
        let have_serial = have.and_then(|soa| wire::soa_serial(&soa.rdata));
        if let Some(ours) = have_serial {
            if serial == ours {
                if let Some(settings) = &zone.secondary {
                    if let Err(e) = store::touch(&settings.store) {
                        tracing::warn!(zone = %origin, "{e}");
                    }
                }
                return Ok((serial, Checked::Current));
            }
            if !serial_gt(serial, ours) {
                // RFC 1982: the primary is behind us. Keep what we serve, and say so.
                return Err(format!(
                    "{}: serial {serial} is behind ours ({ours}); the copy held is kept",
                    primary.address
                ));
            }
        }
        let (records, kind) = match client::transfer(primary, origin, have).await {
            Ok(Transferred::UpToDate) => return Ok((serial, Checked::Current)),
            Ok(Transferred::Full(records)) => (records, "AXFR"),
            Ok(Transferred::Incremental(steps)) => {
                let base = held.map(|h| h.records.as_slice()).unwrap_or_default();
                match secondary::apply_steps(base, &steps) {
                    Ok(records) => (records, "IXFR"),
                    Err(e) => {
                        tracing::warn!(zone = %origin, primary = %primary.address, "IXFR refused ({e}); asking for AXFR");
                        (self.full_transfer(primary, origin).await?, "AXFR")
                    }
                }
            }
            Err(e) if have.is_some() => {
                tracing::warn!(zone = %origin, primary = %primary.address, "IXFR failed ({e}); asking for AXFR");
                (self.full_transfer(primary, origin).await?, "AXFR")
            }
            Err(e) => return Err(e),
        };
        let new_serial = records
            .first()
            .and_then(|soa| wire::soa_serial(&soa.rdata))
            .unwrap_or(0);
        if let Some(ours) = have_serial {
            if !serial_gt(new_serial, ours) {
                return Err(format!(
                    "{}: the transfer brings serial {new_serial}, not newer than ours ({ours}): refused",
                    primary.address
                ));
            }
        }
        let (addresses, defaults) = local_probes(config, zone);
        let origin_owned = origin.clone();
        let store_path = zone.secondary.as_ref().map(|s| s.store.clone());
        let built = tokio::task::spawn_blocking(move || {
            let local = LocalProbes {
                addresses: &addresses,
                defaults: Some(&defaults),
            };
            let assembled = secondary::assemble(&origin_owned, &records, &local, wire::unix_now())?;
            if let Some(path) = store_path {
                if let Err(e) = store::save(&path, &records) {
                    tracing::warn!(zone = %origin_owned, "the copy is served but not kept on disk: {e}");
                }
            }
            Ok::<_, String>(Held {
                records: Arc::new(records),
                assembled: Arc::new(assembled),
            })
        })
        .await
        .map_err(|e| {
            // A bug, never expected: counted; the copy held keeps serving.
            if e.is_panic() {
                self.metrics.panics.with_label_values(&["secondary"]).inc();
            }
            format!("assembling the transfer failed: {e}")
        })?
        .map_err(|e| format!("{}: transfer refused: {e}", primary.address))?;
        for refused in &built.assembled.refused {
            tracing::warn!(zone = %origin, "alternative not offered: {refused}");
        }
        tracing::info!(zone = %origin, primary = %primary.address, serial = new_serial, records = built.records.len(), "zone transferred");
        Ok((serial, Checked::New(built, kind)))
    }

    async fn full_transfer(
        &self,
        primary: client::Primary<'_>,
        origin: &Name,
    ) -> Result<Vec<Record>, String> {
        match client::transfer(primary, origin, None).await? {
            Transferred::Full(records) => Ok(records),
            _ => Err(format!("{}: an AXFR answered in another form", primary.address)),
        }
    }
}
