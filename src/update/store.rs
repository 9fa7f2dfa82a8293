//! The dynamic layer: ACME challenge values that members added by UPDATE, each owned by the
//! key that added it and removed by itself after its lifetime.
//!
//! It lives beside the files' data (the control plane passes it to every rebuild as
//! `ZoneData::dynamic`), never in an operator's file, and is saved in the state file so that a
//! restart in the middle of an issuance keeps the challenge.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::zone::name::Name;
use crate::zone::{Location, Record, rtype};

/// One challenge value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `_acme-challenge.<label>.<zone>`.
    pub name: Name,
    /// TXT RDATA as sent (character-strings).
    pub rdata: Box<[u8]>,
    /// The key that added it, lowercased, without the final dot (`op-a`).
    pub key: Box<str>,
    /// Unix time after which it is removed (`acme-challenge-lifetime`).
    pub expires_unix: u64,
}

/// Every zone's challenge values, by zone key (lowercased wire origin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    zones: BTreeMap<Box<[u8]>, Vec<Challenge>>,
}

/// How a challenge is written in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChallenge {
    pub zone: String,
    pub name: String,
    /// TXT RDATA in hex.
    pub rdata: String,
    pub key: String,
    pub expires_unix: u64,
}

impl Store {
    /// The values held in `zone`.
    pub fn zone(&self, zone: &[u8]) -> &[Challenge] {
        self.zones.get(zone).map_or(&[], Vec::as_slice)
    }

    /// Replaces the values of `zone` (after an update applied to a copy).
    pub fn set_zone(&mut self, zone: &[u8], challenges: Vec<Challenge>) {
        if challenges.is_empty() {
            self.zones.remove(zone);
        } else {
            self.zones.insert(zone.into(), challenges);
        }
    }

    /// Values in all zones.
    pub fn len(&self) -> usize {
        self.zones.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// The TXT records `zone` serves: one per distinct (name, value), whoever holds it (two
    /// keys adding the same value serve it once), in a stable order.
    pub fn records(&self, zone: &[u8], ttl: u32) -> Vec<Record> {
        let mut distinct: Vec<(&Name, &[u8])> =
            self.zone(zone).iter().map(|c| (&c.name, &c.rdata[..])).collect();
        distinct.sort_by(|a, b| (a.0.key(), a.1).cmp(&(b.0.key(), b.1)));
        distinct.dedup_by(|a, b| a.0.key() == b.0.key() && a.1 == b.1);
        let location = Location::new(Arc::from(Path::new("(dynamic update)")), 0);
        distinct
            .into_iter()
            .map(|(name, rdata)| Record {
                name: name.clone(),
                rtype: rtype::TXT,
                ttl,
                rdata: rdata.to_vec(),
                location: location.clone(),
            })
            .collect()
    }

    /// Removes what `keep` rejects; returns the zones that changed.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &Challenge) -> bool) -> Vec<Box<[u8]>> {
        let mut changed = Vec::new();
        for (zone, challenges) in &mut self.zones {
            let before = challenges.len();
            challenges.retain(|c| keep(zone, c));
            if challenges.len() != before {
                changed.push(zone.clone());
            }
        }
        self.zones.retain(|_, challenges| !challenges.is_empty());
        changed
    }

    /// Removes the values whose lifetime has passed; returns the zones that changed.
    pub fn expire(&mut self, now_unix: u64) -> Vec<Box<[u8]>> {
        self.retain(|_, c| c.expires_unix > now_unix)
    }

    /// The values as the state file keeps them.
    pub fn saved(&self) -> Vec<SavedChallenge> {
        self.zones
            .iter()
            .flat_map(|(zone, challenges)| {
                let zone = Name::from_wire_unchecked(zone).to_string();
                challenges.iter().map(move |c| SavedChallenge {
                    zone: zone.clone(),
                    name: c.name.to_string(),
                    rdata: c.rdata.iter().map(|b| format!("{b:02x}")).collect(),
                    key: c.key.to_string(),
                    expires_unix: c.expires_unix,
                })
            })
            .collect()
    }

    /// The values read back from the state file; entries that do not parse are skipped
    /// (the file is ours, but a hand edit must not stop the start).
    pub fn from_saved(saved: &[SavedChallenge]) -> Store {
        let mut store = Store::default();
        for entry in saved {
            let (Ok(zone), Ok(name), Some(rdata)) = (
                Name::parse(&entry.zone, None),
                Name::parse(&entry.name, None),
                decode_hex(&entry.rdata),
            ) else {
                tracing::warn!(name = %entry.name, "state file: unreadable challenge value skipped");
                continue;
            };
            store.zones.entry(zone.key()).or_default().push(Challenge {
                name,
                rdata: rdata.into(),
                key: entry.key.as_str().into(),
                expires_unix: entry.expires_unix,
            });
        }
        store
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(name: &str, value: &str, key: &str) -> Challenge {
        let mut rdata = vec![value.len() as u8];
        rdata.extend_from_slice(value.as_bytes());
        Challenge {
            name: Name::parse(name, None).expect("name"),
            rdata: rdata.into(),
            key: key.into(),
            expires_unix: 100,
        }
    }

    #[test]
    fn a_value_two_keys_hold_is_served_once_and_survives_the_state_file() {
        let zone = Name::parse("example.", None).expect("zone").key();
        let mut store = Store::default();
        store.set_zone(
            &zone,
            vec![
                challenge("_acme-challenge.any.example.", "v1", "op-a"),
                challenge("_acme-challenge.any.example.", "v1", "op-b"),
                challenge("_acme-challenge.any.example.", "v2", "op-b"),
            ],
        );
        assert_eq!(store.records(&zone, 0).len(), 2);
        let back = Store::from_saved(&store.saved());
        assert_eq!(back, store);
        assert_eq!(store.expire(99), Vec::<Box<[u8]>>::new());
        assert_eq!(store.expire(100), vec![zone.clone()]);
        assert!(store.is_empty());
    }
}
