//! The Snapshot builder fed from parsed text: input = zone text, a NUL byte, members text.
//! Whatever validates must build, and every name of the built zone must then answer every
//! common type with a response that passes the independent check.
#![no_main]

use consortium_dns_fuzz::{check, harness};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Types asked at every name: the common ones, ANY, and one nobody has.
const TYPES: [u16; 12] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 255, 65280];

fuzz_target!(|data: &[u8]| {
    let (zone, members) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let zone = String::from_utf8_lossy(zone);
    let members = members.map(String::from_utf8_lossy);
    let snapshot = match harness::snapshot_from_text(&zone, members.as_deref()) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let mut rng = SmallRng::seed_from_u64(data.len() as u64);
    let mut out = Vec::new();
    for zone in snapshot.zones() {
        for record in zone.records.iter().take(64) {
            for qtype in TYPES {
                let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
                query.extend_from_slice(record.name.wire());
                query.extend_from_slice(&qtype.to_be_bytes());
                query.extend_from_slice(&1u16.to_be_bytes());
                if let Err(e) = harness::answer_and_check(&snapshot, &query, &mut out, &mut rng) {
                    panic!("{e}\nquery {}\nresponse {}", check::hex(&query), check::hex(&out));
                }
            }
        }
    }
});
