//! DNS over TCP as the transfer code sees it: any byte stream, cut into length-prefixed
//! messages; each transfer request (AXFR/IXFR, with or without TSIG, from inside and outside
//! the ACL) gets whole messages with its ID, and every other message an answer that passes
//! the request path's checks. Never a panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use consortium_dns::transfer;
use consortium_dns_fuzz::harness;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;

fuzz_target!(|stream: &[u8]| {
    let snapshot = harness::transfer_snapshot();
    let mut rng = SmallRng::seed_from_u64(stream.len() as u64);
    let mut out = Vec::new();
    for (i, message) in harness::tcp_frames(stream).into_iter().enumerate() {
        // Alternately from the unsigned ACL, the keyed ACL and outside both.
        let client = match i % 3 {
            0 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            1 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            _ => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)),
        };
        if transfer::is_transfer(message) {
            let answer = transfer::respond(snapshot, message, client);
            if let Err(e) = harness::check_transfer_answer(message, &answer) {
                panic!("{e}\nrequest {}", consortium_dns_fuzz::check::hex(message));
            }
        } else if let Err(e) = harness::answer_and_check(snapshot, message, &mut out, &mut rng) {
            panic!(
                "{e}\nquery {}\nlast response {}",
                consortium_dns_fuzz::check::hex(message),
                consortium_dns_fuzz::check::hex(&out)
            );
        }
    }
});
