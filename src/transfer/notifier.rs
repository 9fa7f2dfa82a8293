//! NOTIFY bookkeeping: which serial each zone last announced, so that a newer serial stops
//! the retries of an older one (`notify::spawn` does the sending), and which serial each
//! secondary was last seen serving (its SOA, asked after each NOTIFY).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::snapshot::{Snapshot, Zone};
use crate::sync::lock;

/// The serial each secondary last answered for a zone's SOA: (zone key, address) -> serial.
pub type SecondarySerials = Arc<Mutex<BTreeMap<(Box<[u8]>, SocketAddr), u32>>>;

/// Per zone: a generation bumped for each announced serial.
#[derive(Debug, Default)]
pub struct Notifier {
    generations: Mutex<HashMap<Box<[u8]>, Arc<AtomicU64>>>,
    served: SecondarySerials,
    /// `consortium_dns_notifies_total`, when the server counts.
    counts: Option<prometheus::IntCounterVec>,
}

impl Notifier {
    /// A notifier that counts each NOTIFY sent, acknowledged or failed in `counts`.
    pub fn counting(counts: prometheus::IntCounterVec) -> Notifier {
        Notifier {
            counts: Some(counts),
            ..Notifier::default()
        }
    }

    /// NOTIFYs the zone's secondaries of its current serial; older retries stop.
    pub fn announce(&self, snapshot: &Snapshot, zone: &Zone) {
        let Some(version) = zone.transfer.current.as_ref() else {
            return;
        };
        if zone.transfer.notify.is_empty() {
            return;
        }
        let generation = {
            let mut map = lock(&self.generations);
            let generation = map.entry(zone.origin.key()).or_default().clone();
            generation.fetch_add(1, Ordering::Relaxed);
            generation
        };
        super::notify::spawn(
            zone.origin.clone(),
            zone.serial,
            version.soa.clone(),
            zone.transfer.notify.clone(),
            snapshot.tsig_keys.clone(),
            generation,
            super::notify::Tracking {
                served: self.served.clone(),
                counts: self.counts.clone(),
            },
        );
    }

    /// The serial `secondary` was last seen serving for the zone `zone` (a key), if any.
    pub fn secondary_serial(&self, zone: &[u8], secondary: SocketAddr) -> Option<u32> {
        lock(&self.served).get(&(zone.into(), secondary)).copied()
    }

    /// Announces every zone of `new` whose serial differs from `previous` (all of them when
    /// there is no previous snapshot).
    pub fn announce_changes(&self, previous: Option<&Snapshot>, new: &Snapshot) {
        for zone in new.zones() {
            let before =
                previous.and_then(|p| p.zones().iter().find(|z| z.origin.key() == zone.origin.key()));
            if before.is_none_or(|b| b.serial != zone.serial) {
                self.announce(new, zone);
            }
        }
    }
}
