//! Response rate limiting for UDP, as NSD, Knot and BIND do it.
//!
//! A spoofed flood must not turn the server into an amplifier, while real clients still get
//! through. Buckets are keyed by client netblock (/24 IPv4, /56 IPv6 by default) and response
//! kind: an answer is keyed by its name and type, NXDOMAIN by its zone (so random-subdomain
//! floods share one bucket), errors by the netblock alone. Each bucket is one `AtomicU64`
//! holding a key fingerprint and a GCRA "theoretical arrival time", in a fixed-size table:
//! memory stays bounded whatever the number of spoofed sources (colliding keys evict each
//! other, which can only let more through, never block a real client). No lock on the request
//! path. TCP is never limited: its source address cannot be spoofed.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};

use crate::config::RrlRates;

use crate::wire::{HEADER_LEN, OPT_LEN, Rcode, TC, be16, read_record, rtype, skip_name, skip_records};

/// Time unit of the limiter: 100 µs.
const TICKS_PER_SECOND: u64 = 10_000;
const FINGERPRINT_BITS: u32 = 24;
const TIME_BITS: u32 = 64 - FINGERPRINT_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// The kind of response, deciding the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind<'a> {
    /// A positive answer or NODATA: keyed by the question (lowercased name, type).
    Answer { qname: &'a [u8], qtype: u16 },
    /// NXDOMAIN: keyed by the zone that answered (its apex, as written in the response).
    NxDomain { apex: &'a [u8] },
    /// Any error rcode: keyed by the netblock alone.
    Error,
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send an empty truncated answer instead.
    Slip,
    Drop,
}

/// The shared limiter. The table is made once; the rates can be replaced at any time (a
/// reload), and a worker reads them once per batch.
#[derive(Debug)]
pub struct Limiter {
    rates: ArcSwap<RrlRates>,
    table: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
    epoch: Instant,
    limited: AtomicU64,
}

impl Limiter {
    pub fn new(rates: RrlRates, table_size: usize) -> Limiter {
        let table = (0..table_size.max(1)).map(|_| AtomicU64::new(0)).collect();
        Limiter {
            rates: ArcSwap::from_pointee(rates),
            table,
            hasher: Default::default(),
            epoch: Instant::now(),
            limited: AtomicU64::new(0),
        }
    }

    fn now_ticks(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64 / 100) & TIME_MASK
    }

    /// The rates in force; hold them for a batch of responses.
    #[inline]
    pub fn rates(&self) -> Guard<std::sync::Arc<RrlRates>> {
        self.rates.load()
    }

    /// Applies new rates from now on (buckets keep their state).
    pub fn set_rates(&self, rates: RrlRates) {
        if **self.rates.load() != rates {
            tracing::info!(?rates, "response rate limiting settings applied");
            self.rates.store(std::sync::Arc::new(rates));
        }
    }

    /// Decides for one response to `client` under `rates` (from `rates()`).
    pub fn check(&self, rates: &RrlRates, client: IpAddr, kind: ResponseKind<'_>) -> Verdict {
        self.check_at(rates, client, kind, self.now_ticks())
    }

    fn check_at(&self, rates: &RrlRates, client: IpAddr, kind: ResponseKind<'_>, now: u64) -> Verdict {
        let mut hasher = self.hasher.build_hasher();
        match client {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let prefix = u32::from(rates.ipv4_prefix);
                let masked = if prefix == 0 {
                    0
                } else {
                    bits & (u32::MAX << (32 - prefix))
                };
                hasher.write_u32(masked);
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let prefix = u32::from(rates.ipv6_prefix);
                let masked = if prefix == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - prefix))
                };
                hasher.write_u128(masked);
            }
        }
        let rate = match kind {
            ResponseKind::Answer { qname, qtype } => {
                hasher.write_u8(1);
                for &c in qname {
                    hasher.write_u8(c.to_ascii_lowercase());
                }
                hasher.write_u16(qtype);
                rates.responses_per_second
            }
            ResponseKind::NxDomain { apex } => {
                hasher.write_u8(2);
                for &c in apex {
                    hasher.write_u8(c.to_ascii_lowercase());
                }
                rates.nxdomains_per_second
            }
            ResponseKind::Error => {
                hasher.write_u8(3);
                rates.errors_per_second
            }
        };
        let hash = hasher.finish();
        let slot = &self.table[(hash % self.table.len() as u64) as usize];
        let fingerprint = (hash >> TIME_BITS) | 1; // never 0, so an empty slot never matches
        // GCRA: each response costs `interval`; a burst of `rate` responses is tolerated.
        let interval = (TICKS_PER_SECOND / u64::from(rate.max(1))).max(1);
        let tolerance = interval * u64::from(rate.max(1)).saturating_sub(1);
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let tat = if current >> TIME_BITS == fingerprint {
                current & TIME_MASK
            } else {
                now
            };
            // Wrapped clocks (after ~3.5 years) just restart the bucket.
            let tat = if tat.wrapping_sub(now) & TIME_MASK > TIME_MASK / 2 {
                now
            } else {
                tat.max(now)
            };
            if tat - now > tolerance {
                let n = self.limited.fetch_add(1, Ordering::Relaxed) + 1;
                let slip = rates.slip;
                return if slip > 0 && n % u64::from(slip) == 0 {
                    Verdict::Slip
                } else {
                    Verdict::Drop
                };
            }
            let next = (fingerprint << TIME_BITS) | ((tat + interval) & TIME_MASK);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Verdict::Send,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Classifies a response built by `answer::answer` (so well-formed: question uncompressed,
/// owners of the first authority record compressed or plain).
pub fn classify(response: &[u8]) -> ResponseKind<'_> {
    let Some((qname_end, qname)) =
        skip_name(response, HEADER_LEN).and_then(|end| Some((end, response.get(HEADER_LEN..end)?)))
    else {
        return ResponseKind::Error;
    };
    let qtype = be16(response, qname_end);
    match Rcode::from_flags(be16(response, 2)) {
        Rcode::NOERROR => ResponseKind::Answer { qname, qtype },
        Rcode::NXDOMAIN => {
            // Skip the answers (a CNAME chain may precede the NXDOMAIN); the first authority
            // record is the zone's SOA, owned by the apex.
            let answers = usize::from(be16(response, 6));
            let Some(pos) = skip_records(response, qname_end + 4, answers) else {
                return ResponseKind::Error;
            };
            let apex = match response.get(pos..pos + 2) {
                Some([high, low]) if high & 0xC0 == 0xC0 => {
                    let target = usize::from(u16::from_be_bytes([high & 0x3f, *low]));
                    skip_name(response, target).and_then(|end| response.get(target..end))
                }
                Some(_) => skip_name(response, pos).and_then(|end| response.get(pos..end)),
                None => None,
            };
            ResponseKind::NxDomain {
                apex: apex.unwrap_or(qname),
            }
        }
        _ => ResponseKind::Error,
    }
}

/// Turns a response into the RRL "slip": header and question only, TC set, so a real client
/// retries over TCP while a spoofed victim gets no amplification. The OPT record stays when
/// the response has one (RFC 6891 §7: an EDNS query gets an EDNS answer), without its options
/// (an Extended DNS Error is optional, RFC 8914 §3), which keeps the slip 11 octets longer
/// than the question, still no larger than the query.
pub fn slip(response: &mut Vec<u8>) {
    let Some(end) = skip_name(response, HEADER_LEN).map(|e| e + 4) else {
        return;
    };
    if response.len() < end {
        return;
    }
    let opt_at = find_opt(response, end);
    // Moved in place: a flood of slipped answers allocates nothing.
    if let Some(at) = opt_at {
        // Owner, TYPE, CLASS and TTL (extended rcode, version, DO) kept; RDLENGTH 0.
        response.copy_within(at..at + OPT_LEN - 2, end);
        response.truncate(end + OPT_LEN - 2);
        response.extend_from_slice(&[0, 0]);
    } else {
        response.truncate(end);
    }
    response[2] |= (TC >> 8) as u8;
    response[6..12].fill(0);
    response[10..12].copy_from_slice(&u16::from(opt_at.is_some()).to_be_bytes());
}

/// Where the OPT record of the additional section starts (root owner, RFC 6891 §6.1.1), the
/// records from `pos` (after the question) walked by the header's counts.
fn find_opt(response: &[u8], mut pos: usize) -> Option<usize> {
    let before = usize::from(be16(response, 6)) + usize::from(be16(response, 8));
    let additional = usize::from(be16(response, 10));
    for index in 0..before + additional {
        let record = read_record(response, pos)?;
        if index >= before && record.rtype == rtype::OPT && record.owner_is_root() {
            return Some(record.start);
        }
        pos = record.end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_or_short_responses_classify_as_errors_without_panicking() {
        let mut header = vec![0u8; 12];
        assert!(matches!(classify(&header[..5]), ResponseKind::Error));
        header.push(0xC0); // a compression pointer cut after its first octet
        assert!(matches!(classify(&header), ResponseKind::Error));
        let mut cut_slip = header.clone();
        slip(&mut cut_slip);
        assert_eq!(cut_slip, header, "a message too short to slip is left alone");
    }

    fn rates(rate: u32, slip: u32) -> RrlRates {
        RrlRates {
            responses_per_second: rate,
            slip,
            ..RrlRates::default()
        }
    }

    fn limiter(rate: u32, slip: u32) -> Limiter {
        Limiter::new(rates(rate, slip), 1024)
    }

    /// One decision under the limiter's current rates, at tick `now`.
    fn decide(rrl: &Limiter, client: IpAddr, kind: ResponseKind<'_>, now: u64) -> Verdict {
        rrl.check_at(&rrl.rates(), client, kind, now)
    }

    #[test]
    fn new_rates_apply_to_the_next_response() {
        let rrl = limiter(1, 0);
        let client: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(decide(&rrl, client, NAME, 0), Verdict::Send);
        // 0.2 s later the bucket is still a second ahead: at 1 per second, dropped.
        let later = TICKS_PER_SECOND / 5;
        assert_eq!(decide(&rrl, client, NAME, later), Verdict::Drop);
        // At 5 per second the same bucket state is within the burst of 5.
        rrl.set_rates(rates(5, 0));
        assert_eq!(
            decide(&rrl, client, NAME, later),
            Verdict::Send,
            "new rates apply"
        );
    }

    #[test]
    fn slip_keeps_question_and_opt_only() {
        // Header (1 answer, 1 additional), question any./A, one A record, then OPT.
        let mut response = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 1];
        response.extend_from_slice(b"\x03any\x00\x00\x01\x00\x01");
        response.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]);
        response.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        let question_end = 12 + 9;
        let mut with_opt = response.clone();
        slip(&mut with_opt);
        assert_eq!(with_opt[2] & 0x02, 0x02, "TC set");
        assert_eq!(&with_opt[4..12], &[0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&with_opt[12..question_end], &response[12..question_end]);
        assert_eq!(
            &with_opt[question_end..],
            &response[response.len() - 11..],
            "OPT kept whole"
        );

        // Without EDNS: the question alone.
        let mut plain = response[..response.len() - 11].to_vec();
        plain[11] = 0;
        slip(&mut plain);
        assert_eq!(plain.len(), question_end);
        assert_eq!(&plain[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);

        // A refusal whose OPT carries an Extended DNS Error: the OPT stays, its option goes,
        // so the slip is no longer than with a bare OPT.
        let mut refused = vec![0x12, 0x34, 0x80, 0x05, 0, 1, 0, 0, 0, 0, 0, 1];
        refused.extend_from_slice(b"\x03any\x00\x00\x01\x00\x01");
        refused.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 6, 0, 15, 0, 2, 0, 20]);
        slip(&mut refused);
        assert_eq!(&refused[10..12], &[0, 1]);
        assert_eq!(
            &refused[question_end..],
            &[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0],
            "OPT kept, options dropped"
        );
    }

    const NAME: ResponseKind<'static> = ResponseKind::Answer {
        qname: b"\x03any\x00",
        qtype: 1,
    };

    #[test]
    fn holds_a_flood_to_the_rate() {
        let rrl = limiter(10, 0);
        let client: IpAddr = "192.0.2.7".parse().expect("ip");
        // 1,000 queries over one simulated second: 10 burst + 10 refilled.
        let sent = (0..1_000u64)
            .filter(|i| decide(&rrl, client, NAME, i * TICKS_PER_SECOND / 1_000) == Verdict::Send)
            .count();
        assert!((19..=21).contains(&sent), "sent {sent}");
    }

    #[test]
    fn other_netblocks_and_names_are_independent() {
        let rrl = limiter(5, 0);
        let flooder: IpAddr = "192.0.2.7".parse().expect("ip");
        let neighbour: IpAddr = "192.0.2.200".parse().expect("ip");
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        for _ in 0..100 {
            decide(&rrl, flooder, NAME, 0);
        }
        assert_eq!(
            decide(&rrl, neighbour, NAME, 0),
            Verdict::Drop,
            "same /24 shares the bucket"
        );
        assert_eq!(decide(&rrl, other, NAME, 0), Verdict::Send);
        let other_name = ResponseKind::Answer {
            qname: b"\x05node1\x00",
            qtype: 1,
        };
        assert_eq!(decide(&rrl, flooder, other_name, 0), Verdict::Send);
        // Case does not make a new bucket.
        let upper = ResponseKind::Answer {
            qname: b"\x03ANY\x00",
            qtype: 1,
        };
        assert_eq!(decide(&rrl, flooder, upper, 0), Verdict::Drop);
    }

    #[test]
    fn slips_every_nth_limited_response() {
        let rrl = limiter(1, 3);
        let client: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(decide(&rrl, client, NAME, 0), Verdict::Send);
        let verdicts: Vec<Verdict> = (0..9).map(|_| decide(&rrl, client, NAME, 0)).collect();
        let slips = verdicts.iter().filter(|v| **v == Verdict::Slip).count();
        assert_eq!(slips, 3, "{verdicts:?}");
        // The same /56 shares the bucket.
        let neighbour: IpAddr = "2001:db8:0:ff::9".parse().expect("ip");
        assert_ne!(decide(&rrl, neighbour, NAME, 0), Verdict::Send);
    }

    #[test]
    fn refills_over_time() {
        let rrl = limiter(2, 0);
        let client: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(decide(&rrl, client, NAME, 0), Verdict::Send);
        assert_eq!(decide(&rrl, client, NAME, 0), Verdict::Send);
        assert_eq!(decide(&rrl, client, NAME, 0), Verdict::Drop);
        assert_eq!(decide(&rrl, client, NAME, TICKS_PER_SECOND), Verdict::Send);
    }
}
