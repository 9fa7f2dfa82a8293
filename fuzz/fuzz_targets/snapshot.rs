//! The Snapshot builder fed from parsed text: input = zone text, a NUL byte, members text.
//! Whatever validates must build, and every name of the built zone must then answer every
//! common type with a response that passes the independent check.
#![no_main]

use consortium_dns_fuzz::harness;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;

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
    if let Err(e) = harness::query_every_name(&snapshot, 64, &mut rng) {
        panic!("{e}");
    }
});
