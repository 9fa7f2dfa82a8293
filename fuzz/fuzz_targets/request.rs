//! The request path: any bytes as a query, answered over UDP and TCP from the example
//! consortium; each response must parse, echo the ID and the question, and fit its transport.
#![no_main]

use consortium_dns_fuzz::harness;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;

fuzz_target!(|query: &[u8]| {
    // The pick's randomness comes from the input, so a crash replays exactly; so does the
    // choice of the example signed with NSEC or with NSEC3.
    let seed = query.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b));
    let snapshot = if seed % 2 == 0 {
        harness::example_snapshot()
    } else {
        harness::example_nsec3_snapshot()
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if let Err(e) = harness::answer_and_check(snapshot, query, &mut out, &mut rng) {
        panic!(
            "{e}\nquery {}\nlast response {}",
            consortium_dns_fuzz::check::hex(query),
            consortium_dns_fuzz::check::hex(&out)
        );
    }
});
