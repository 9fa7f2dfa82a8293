//! DNSSEC in the rebuild pipeline: the zones' key sets (read at start and on every reload,
//! kept for the rebuilds in between), their digest in the content before serials are chosen,
//! signing after, and re-signing by itself before signatures near expiry or a key changes
//! state.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Change, Control};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::dnssec::{self, KeySet, SignatureCache, Signed};
use crate::wire;
use crate::zone::ZoneData;

/// Key sets by zone key (lowercased wire origin), for the signed zones.
pub(super) type KeySets = HashMap<Box<[u8]>, Arc<KeySet>>;
/// The signature cache of each signed zone.
pub(super) type Caches = HashMap<Box<[u8]>, SignatureCache>;
/// What signing produced, by zone key.
pub(super) type SignedZones = HashMap<Box<[u8]>, Signed>;

/// Reads the key directory of every signed zone; all errors together.
pub(super) fn load_keys(config: &Config) -> Result<KeySets, Vec<Diagnostic>> {
    let mut sets = KeySets::new();
    let mut errors = Vec::new();
    for zone in &config.live.zones {
        let Some(signing) = &zone.signing else { continue };
        match dnssec::load_keys(signing, zone.origin()) {
            Ok(set) => {
                sets.insert(zone.origin().key(), Arc::new(set));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(sets) } else { Err(errors) }
}

/// Reads the key directory of the zone `origin` again, the other zones' key sets kept.
pub(super) fn reload_keys_of(
    sets: &mut KeySets,
    config: &Config,
    origin: &crate::zone::name::Name,
) -> Result<(), Vec<Diagnostic>> {
    match config.zone(origin).and_then(|zone| zone.signing.as_ref()) {
        Some(signing) => {
            let set = dnssec::load_keys(signing, origin)?;
            sets.insert(origin.key(), Arc::new(set));
        }
        None => {
            sets.remove(&origin.key());
        }
    }
    Ok(())
}

/// Puts each signed zone's key states into its content digest, so that a new or retired
/// key raises the serial like any other change.
pub(super) fn set_digests(zones: &mut [ZoneData], keys: &KeySets, now: u64) {
    for zone in zones {
        zone.signing_digest = keys.get(&zone.origin.key()).map_or(0, |set| set.digest(now));
    }
}

/// Signs every zone that has a key set, with the previous signatures as cache. A failure
/// fails the whole rebuild: no zone is ever published unsigned or half signed.
pub(super) fn sign(
    zones: &[ZoneData],
    keys: &KeySets,
    caches: &Caches,
    now: u64,
) -> Result<(SignedZones, Caches), Vec<Diagnostic>> {
    let mut signed = HashMap::new();
    let mut new_caches = Caches::new();
    let empty = SignatureCache::default();
    for zone in zones {
        let key = zone.origin.key();
        let Some(set) = keys.get(&key) else { continue };
        let mut result = dnssec::sign_zone(zone, set, now, caches.get(&key).unwrap_or(&empty))?;
        new_caches.insert(key.clone(), std::mem::take(&mut result.cache));
        signed.insert(key, result);
    }
    Ok((signed, new_caches))
}

impl Control {
    /// Signs again the zones whose signatures come within `dnssec::REFRESH` of expiry or
    /// whose keys change state now (called every second; does nothing most of the time).
    pub async fn resign_due(&self) {
        let now = wire::unix_now();
        let due: Vec<Box<[u8]>> = self
            .shared
            .snapshot
            .load()
            .zones()
            .iter()
            .filter(|z| z.dnssec.as_ref().is_some_and(|d| d.report.refresh_at <= now))
            .map(|z| z.origin.key())
            .collect();
        if due.is_empty() {
            return;
        }
        let mut state = self.rebuilding.lock().await;
        // A failing attempt is retried a minute later, not every second.
        if state
            .resign_failed_at
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60))
        {
            return;
        }
        match self.rebuild(&mut state, Change::Resign(due)).await {
            Ok(rebuilt) => {
                state.resign_failed_at = None;
                tracing::info!(serials = ?rebuilt.serials, "zones signed again");
            }
            Err(errors) => {
                state.resign_failed_at = Some(std::time::Instant::now());
                for e in &errors {
                    tracing::error!("re-signing failed, still serving the previous signatures: {e}");
                }
            }
        }
    }
}
