//! The versions a zone serves to secondaries: each published snapshot's version, and the
//! differences from the versions before it (IXFR, RFC 1995 §4), carried from one snapshot to
//! the next by `next`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::snapshot::{Snapshot, VersionDiff, Zone, ZoneVersion, encode_tail};
use crate::wire::{self, rtype};

/// Versions kept per zone for IXFR (the current one and 15 differences back).
pub const HISTORY_LEN: usize = 16;

/// The difference between two versions.
pub fn diff(old: &ZoneVersion, new: &ZoneVersion) -> VersionDiff {
    VersionDiff {
        from_serial: old.serial,
        from_soa: old.soa.clone(),
        to_soa: new.soa.clone(),
        removed: old.records.difference(&new.records).cloned().collect(),
        added: new.records.difference(&old.records).cloned().collect(),
    }
}

/// The current transfer picks of a zone's pools.
pub fn current_picks(zone: &Zone) -> Vec<Option<u32>> {
    zone.pools
        .iter()
        .map(|pool| pool.table.load().heaviest())
        .collect()
}

/// Builds the version a zone serves now (its records, its pools' transfer picks).
pub fn version_of(zone: &Zone) -> ZoneVersion {
    version_with_picks(zone, current_picks(zone))
}

/// True when health has moved a transfer pick away from what the zone's version serves.
pub fn picks_moved(zone: &Zone) -> bool {
    zone.transfer
        .current
        .as_ref()
        .is_some_and(|served| served.picks != current_picks(zone))
}

/// Builds a version of the zone's records with the given transfer picks (member slots per
/// pool; a slot the pool does not have leaves the pool out).
pub fn version_with_picks(zone: &Zone, picks: Vec<Option<u32>>) -> ZoneVersion {
    let mut soa = Vec::new();
    let mut records = BTreeSet::new();
    for record in &zone.all_records() {
        let mut wire = Vec::with_capacity(record.name.wire().len() + 10 + record.rdata.len());
        wire.extend_from_slice(record.name.wire());
        let mut rdata = record.rdata.clone();
        if record.rtype == rtype::SOA && record.name.key() == zone.origin.key() {
            // The served serial (a reload may have raised the file's).
            wire::set_soa_serial(&mut rdata, zone.serial);
            encode_tail(&mut wire, record.rtype, rtype::CLASS_IN, record.ttl, &rdata);
            soa = wire;
            continue;
        }
        encode_tail(&mut wire, record.rtype, rtype::CLASS_IN, record.ttl, &rdata);
        records.insert(wire.into_boxed_slice());
    }
    for (pool, pick) in zone.pools.iter().zip(&picks) {
        // The CNAME to the picked member, with its pre-signed RRSIGs in a signed zone.
        if let Some(slot) = *pick {
            records.extend(zone.pool_pick_records(pool, slot));
        }
    }
    ZoneVersion {
        serial: zone.serial,
        soa: soa.into_boxed_slice(),
        records,
        picks,
    }
}

/// Gives each transferable zone of `new` its version and IXFR differences: those of the
/// same zone in `previous`, plus one to this version when its serial is new. Call after the
/// health checker set `new`'s pick tables and before publishing it.
pub fn next(previous: Option<&Snapshot>, new: &mut Snapshot) {
    for zone in new.zones_mut() {
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
            // served; a moved pick gets its own serial from the control plane's refresh.
            Some(old) if old.serial == zone.serial => {
                let kept = version_with_picks(zone, old.picks.clone());
                if kept.soa == old.soa && kept.records == old.records {
                    old.clone()
                } else {
                    // Same serial, other content (serial-policy keep): no difference leads
                    // here, so clients at older serials get the whole zone.
                    diffs.clear();
                    Arc::new(version_of(zone))
                }
            }
            Some(old) => {
                let version = version_of(zone);
                diffs.push(Arc::new(diff(old, &version)));
                Arc::new(version)
            }
            None => Arc::new(version_of(zone)),
        };
        let excess = diffs.len().saturating_sub(HISTORY_LEN - 1);
        diffs.drain(..excess);
        zone.transfer.diffs = diffs;
        zone.transfer.current = Some(version);
    }
}
