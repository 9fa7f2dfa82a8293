//! What a snapshot serves to secondaries: the zone's current version in transfer form and the
//! differences that lead to it (IXFR, RFC 1995). Data only: `transfer::history` computes it,
//! `transfer` serves it.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::peers::{NotifyTarget, TransferAcl};

/// One version of a zone as transferred: the SOA and every other record in wire form.
#[derive(Debug)]
pub struct ZoneVersion {
    pub serial: u32,
    /// The SOA record, owner uncompressed.
    pub soa: Box<[u8]>,
    /// Every other record (owner, type, class, TTL, RDATA), sorted, without duplicates.
    pub records: BTreeSet<Box<[u8]>>,
    /// The member slot picked for each pool (None: the pool has nobody to offer).
    pub picks: Vec<Option<u32>>,
}

/// What changed from one version to the next, for IXFR (RFC 1995 §4).
#[derive(Debug)]
pub struct VersionDiff {
    pub from_serial: u32,
    pub from_soa: Box<[u8]>,
    pub to_soa: Box<[u8]>,
    pub removed: Vec<Box<[u8]>>,
    pub added: Vec<Box<[u8]>>,
}

/// Transfer settings and history of one zone. The whole zone is kept once (the current
/// version); older versions only as differences, so a 100,000-member zone reloaded many times
/// does not hold many copies of itself. Zones nobody may transfer or be notified of keep
/// nothing.
#[derive(Debug, Default)]
pub struct ZoneTransfer {
    pub allow: Vec<TransferAcl>,
    pub notify: Vec<NotifyTarget>,
    /// What this snapshot serves to secondaries.
    pub current: Option<Arc<ZoneVersion>>,
    /// Oldest first; the last leads to `current`.
    pub diffs: Vec<Arc<VersionDiff>>,
}

impl ZoneTransfer {
    /// True when transfers or NOTIFY are configured for the zone.
    pub fn is_configured(&self) -> bool {
        !self.allow.is_empty() || !self.notify.is_empty()
    }
}
