//! The served serials, kept across restarts (`[server] state-file`).
//!
//! The serial policy raises a zone's serial when its content changes and the operator did not
//! raise it. Without memory of what was served, a restart would serve the file's serial again,
//! which can be lower than what secondaries already hold (they would then ignore every change
//! until the serial caught up). With `state-file` set, the served serial and content digest of
//! every zone are written after each change and read at start, so the served serial never
//! goes backwards, restarts included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::health::DrainedMember;
use crate::snapshot::Snapshot;
use crate::update::store::{SavedChallenge, Store};
use crate::zone::name::Name;

/// What was last served: zone (lowercased, absolute) -> serial and content digest; and the
/// ACME challenge values members added by UPDATE (a restart during an issuance keeps them);
/// and the members drained by `ctl drain` (maintenance outlives a restart).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    zones: BTreeMap<String, ServedZone>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    challenges: Vec<SavedChallenge>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    drained: BTreeSet<DrainedMember>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ServedZone {
    serial: u32,
    /// `ZoneData::content_digest` of the served content.
    digest: u64,
}

fn key(origin: &Name) -> String {
    origin.to_string().to_ascii_lowercase()
}

impl SerialState {
    /// Reads the state file. A missing file is an empty state (first start); an unreadable or
    /// malformed one is logged and ignored: serving comes first, and the serial policy then
    /// starts from the files' serials as without a state file.
    pub fn read(path: &Path) -> SerialState {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return SerialState::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read the serial state, starting from the zone files' serials: {e}");
                return SerialState::default();
            }
        };
        serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), "malformed serial state, starting from the zone files' serials: {e}");
            SerialState::default()
        })
    }

    /// (served serial, content digest) of `origin` when it was served before.
    pub fn previous(&self, origin: &Name) -> Option<(u32, u64)> {
        self.zones.get(&key(origin)).map(|z| (z.serial, z.digest))
    }

    /// The challenge values saved.
    pub fn challenges(&self) -> Store {
        Store::from_saved(&self.challenges)
    }

    /// The members drained when the state was saved.
    pub fn drained(&self) -> BTreeSet<DrainedMember> {
        self.drained.clone()
    }

    /// The state of a snapshot's zones, the challenge values it serves and the drained members.
    pub fn of(snapshot: &Snapshot, challenges: &Store, drained: BTreeSet<DrainedMember>) -> SerialState {
        SerialState {
            challenges: challenges.saved(),
            drained,
            zones: snapshot
                .zones()
                .iter()
                .map(|zone| {
                    let served = ServedZone {
                        serial: zone.serial,
                        digest: zone.content_digest,
                    };
                    (key(&zone.origin), served)
                })
                .collect(),
        }
    }

    /// Writes the state whole or not at all: a temporary file beside the target, then a
    /// rename over it, so a crash mid-write leaves the previous state.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        std::fs::write(&temporary, text + "\n")?;
        std::fs::rename(&temporary, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("serials.json");
        assert_eq!(
            SerialState::read(&path),
            SerialState::default(),
            "missing = empty"
        );
        let origin = Name::parse("Consortium.Example.", None).expect("name");
        let mut state = SerialState::default();
        state.zones.insert(
            key(&origin),
            ServedZone {
                serial: 2026112503,
                digest: u64::MAX - 1,
            },
        );
        state
            .drained
            .insert(("consortium.example.".into(), "node2".into()));
        state.write(&path).expect("write");
        let read = SerialState::read(&path);
        assert_eq!(read, state);
        let lower = Name::parse("consortium.example.", None).expect("name");
        assert_eq!(read.previous(&lower), Some((2026112503, u64::MAX - 1)));
        std::fs::write(&path, "{ not json").expect("damage");
        assert_eq!(SerialState::read(&path), SerialState::default());
    }
}
