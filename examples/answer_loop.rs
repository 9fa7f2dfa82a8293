//! The request path N times on the example snapshot, for counting instructions under
//! callgrind, which gives the same count on every run whatever else the machine does:
//! (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one answer, setup excluded.
//!
//!     cargo build --release --example answer_loop
//!     valgrind --tool=callgrind target/release/examples/answer_loop node1.consortium.example 1000
//!     valgrind --tool=callgrind target/release/examples/answer_loop node1.consortium.example 11000
//!
//! benches/RESULTS.md has the figures of the control-plane round against a3fd061.
use std::hint::black_box;
use std::path::Path;

use consortium_dns::config::Config;
use consortium_dns::server::answer::{Transport, answer};
use rand::SeedableRng;

fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x4a, 0x17, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&1u16.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    q
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().expect("qname");
    let n: u64 = args.next().expect("count").parse().expect("number");
    let config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/consortium-dns.toml"))
        .expect("config");
    let snapshot = consortium_dns::control::load(&config).expect("zones");
    let q = query(&name);
    let mut out = Vec::with_capacity(4096);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    for _ in 0..n {
        black_box(answer(
            black_box(&snapshot),
            black_box(&q),
            &mut out,
            Transport::Udp,
            1232,
            &mut rng,
        ));
    }
    println!("{n} answers of {} octets", out.len());
}
