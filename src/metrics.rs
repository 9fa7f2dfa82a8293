//! Prometheus metrics: names, the registry of one server, and the per-worker query counters.
//!
//! The names are shared with the tests; the counters keep counting off the shared cache lines.
//! Workers count into plain local arrays and flush into the registry's counters every few dozen
//! queries or when idle, so the request path does no atomic operation per query and never takes
//! the registry's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::sync::lock;
use crate::wire::{Rcode, Transport, rtype};

pub const QUERIES_TOTAL: &str = "consortium_dns_queries_total";
pub const TRUNCATED_TOTAL: &str = "consortium_dns_responses_truncated_total";
pub const DROPPED_TOTAL: &str = "consortium_dns_dropped_packets_total";
pub const MALFORMED_TOTAL: &str = "consortium_dns_malformed_queries_total";
pub const POOL_PICKS_TOTAL: &str = "consortium_dns_pool_picks_total";
pub const POOL_FAIL_OPEN: &str = "consortium_dns_pool_fail_open";
pub const MEMBER_UP: &str = "consortium_dns_member_up";
pub const MEMBER_DRAINED: &str = "consortium_dns_member_drained";
pub const MEMBER_EFFECTIVE_WEIGHT: &str = "consortium_dns_member_effective_weight";
pub const MEMBER_PROBE_DURATION: &str = "consortium_dns_member_probe_duration_seconds";
pub const MEMBER_CERT_EXPIRY_DAYS: &str = "consortium_dns_member_certificate_expiry_days";
pub const MEMBER_CERT_COVERS_POOL: &str = "consortium_dns_member_certificate_covers_pool";
pub const RELOADS_TOTAL: &str = "consortium_dns_reloads_total";
pub const LAST_RELOAD_SUCCESS: &str = "consortium_dns_last_reload_success_timestamp_seconds";
pub const ZONE_SERIAL: &str = "consortium_dns_zone_serial";
pub const TCP_CONNECTIONS_OPEN: &str = "consortium_dns_tcp_connections_open";
pub const RRL_LIMITED_TOTAL: &str = "consortium_dns_rrl_limited_total";
pub const POOL_MEMBERS: &str = "consortium_dns_pool_members";
pub const PANICS_TOTAL: &str = "consortium_dns_panics_total";
pub const UPDATES_TOTAL: &str = "consortium_dns_updates_total";
pub const UPDATE_VALUES_TOTAL: &str = "consortium_dns_update_values_total";
pub const ACME_CHALLENGE_VALUES: &str = "consortium_dns_acme_challenge_values";
pub const SECONDARY_SERIAL: &str = "consortium_dns_secondary_serial";
pub const UPDATE_FORWARDS_TOTAL: &str = "consortium_dns_update_forwards_total";
pub const DNSSEC_SIGNATURES_TOTAL: &str = "consortium_dns_dnssec_signatures_total";
pub const DNSSEC_EARLIEST_EXPIRY: &str = "consortium_dns_dnssec_earliest_signature_expiry_timestamp_seconds";
pub const DNSSEC_KEYS: &str = "consortium_dns_dnssec_keys";
pub const POOL_POLICY: &str = "consortium_dns_pool_policy";
pub const BUILD_INFO: &str = "consortium_dns_build_info";
pub const TRANSFERS_TOTAL: &str = "consortium_dns_transfers_total";
pub const NOTIFIES_TOTAL: &str = "consortium_dns_notifies_total";

/// Pools with more members than this get no per-member series (state, weight, probe,
/// certificate, picks): at 100,000 members those would cost hundreds of megabytes per scrape.
/// Their picks count under `member="*"`, their states in `consortium_dns_pool_members`.
pub const PER_MEMBER_SERIES_LIMIT: usize = 1_000;

/// Query types counted under their own label; the rest count as "other".
const QTYPES: [(u16, &str); 14] = [
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::CNAME, "CNAME"),
    (rtype::NS, "NS"),
    (rtype::SOA, "SOA"),
    (rtype::MX, "MX"),
    (rtype::TXT, "TXT"),
    (rtype::SRV, "SRV"),
    (rtype::CAA, "CAA"),
    (rtype::PTR, "PTR"),
    (rtype::DS, "DS"),
    (rtype::ANY, "ANY"),
    (rtype::AXFR, "AXFR"),
    (rtype::IXFR, "IXFR"),
];
const QTYPE_SLOTS: usize = QTYPES.len() + 1;
/// Response codes counted under their own label (`Rcode::label`); the rest count as "other".
const RCODES: [Rcode; 8] = Rcode::LABELLED;
const RCODE_SLOTS: usize = RCODES.len() + 1;

fn qtype_slot(qtype: u16) -> usize {
    QTYPES
        .iter()
        .position(|(t, _)| *t == qtype)
        .unwrap_or(QTYPES.len())
}

fn rcode_slot(rcode: Rcode) -> usize {
    RCODES.iter().position(|r| *r == rcode).unwrap_or(RCODES.len())
}

/// Every metric of one server instance.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    queries: IntCounterVec,
    truncated: IntCounterVec,
    dropped: IntCounterVec,
    malformed: IntCounterVec,
    /// Responses held back by rate limiting: dropped, or sent truncated ("slip").
    pub rrl_dropped: IntCounter,
    pub rrl_slipped: IntCounter,
    pub pool_picks: PickCounters,
    pub pool_fail_open: IntGaugeVec,
    pub pool_members: IntGaugeVec,
    pub member_up: IntGaugeVec,
    pub member_drained: IntGaugeVec,
    pub member_effective_weight: GaugeVec,
    pub member_probe_duration: GaugeVec,
    pub member_cert_expiry_days: IntGaugeVec,
    pub member_cert_covers_pool: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub last_reload_success: IntGauge,
    pub zone_serial: IntGaugeVec,
    pub tcp_connections_open: IntGauge,
    /// Panics caught in a UDP worker or a TCP connection (by `task`): 0 unless there is a bug.
    pub panics: IntCounterVec,
    /// RFC 2136 UPDATEs by zone, verified key ("-" when none) and rcode ("dropped" when the
    /// queue was full).
    pub updates: IntCounterVec,
    /// Challenge values added, removed and expired, by zone and key.
    pub update_values: IntCounterVec,
    /// Challenge values held now, by zone.
    pub acme_challenge_values: IntGaugeVec,
    /// 1 per pool, labelled with its pick policy: joins `pool_picks` by policy.
    pub pool_policy: IntGaugeVec,
    /// The serial each secondary (NOTIFY target) last answered for the zone's SOA.
    pub secondary_serial: IntGaugeVec,
    /// Updates forwarded to peer instances, by peer and outcome (its rcode, or unreachable).
    pub update_forwards: IntCounterVec,
    /// RRSIGs made (not taken from the cache), by zone.
    pub dnssec_signatures: IntCounterVec,
    /// The earliest RRSIG expiration of each signed zone.
    pub dnssec_earliest_expiry: IntGaugeVec,
    /// Keys of each signed zone by role and state.
    pub dnssec_keys: IntGaugeVec,
    /// 1, labelled with the version and commit.
    pub build_info: IntGaugeVec,
    /// Zone transfers answered, by kind (axfr, ixfr) and outcome (the answer's rcode).
    pub transfers: IntCounterVec,
    /// NOTIFYs sent, by zone, secondary and outcome (sent, acknowledged, failed).
    pub notifies: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
            // Names are constants and unique, so registration cannot collide.
            let _ = registry.register(Box::new(c.clone()));
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let float_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let rrl_limited = counter_vec(
            RRL_LIMITED_TOTAL,
            "UDP responses held back by response rate limiting, by action (drop, slip).",
            &["action"],
        );
        let metrics = Metrics {
            queries: counter_vec(
                QUERIES_TOTAL,
                "Queries answered, by transport, qtype and rcode.",
                &["transport", "qtype", "rcode"],
            ),
            truncated: counter_vec(TRUNCATED_TOTAL, "Responses sent with TC set.", &["transport"]),
            dropped: counter_vec(
                DROPPED_TOTAL,
                "Packets not answered (too short, or a response).",
                &["transport"],
            ),
            malformed: counter_vec(MALFORMED_TOTAL, "Queries answered FORMERR.", &["transport"]),
            rrl_dropped: rrl_limited.with_label_values(&["drop"]),
            rrl_slipped: rrl_limited.with_label_values(&["slip"]),
            pool_picks: register(&registry, PickCounters::new()),
            pool_fail_open: gauge_vec(
                POOL_FAIL_OPEN,
                "1 when no member of the pool is eligible and it picks among all.",
                &["zone", "pool"],
            ),
            pool_members: gauge_vec(
                POOL_MEMBERS,
                "Members of the pool by state (up, down, drained: taken out by `ctl drain`).",
                &["zone", "pool", "state"],
            ),
            member_up: gauge_vec(
                MEMBER_UP,
                "1 when the member's health checks pass.",
                &["zone", "member"],
            ),
            member_drained: gauge_vec(
                MEMBER_DRAINED,
                "1 while the member is drained by `ctl drain` (never picked, whatever its health).",
                &["zone", "member"],
            ),
            member_effective_weight: float_vec(
                MEMBER_EFFECTIVE_WEIGHT,
                "Weight the member is picked with now (configured x health x slow start x certificate).",
                &["zone", "pool", "member"],
            ),
            member_probe_duration: float_vec(
                MEMBER_PROBE_DURATION,
                "Duration of the member's last probe.",
                &["zone", "member"],
            ),
            member_cert_expiry_days: gauge_vec(
                MEMBER_CERT_EXPIRY_DAYS,
                "Days until the member's certificate expires (negative once expired).",
                &["zone", "member"],
            ),
            member_cert_covers_pool: gauge_vec(
                MEMBER_CERT_COVERS_POOL,
                "1 when the member's certificate covers the pool's shared name.",
                &["zone", "pool", "member"],
            ),
            reloads: counter_vec(
                RELOADS_TOTAL,
                "Reloads by outcome (success, failure).",
                &["outcome"],
            ),
            last_reload_success: register(
                &registry,
                IntGauge::new(LAST_RELOAD_SUCCESS, "Unix time of the last successful load.")
                    .expect("valid metric"),
            ),
            zone_serial: gauge_vec(ZONE_SERIAL, "SOA serial served for the zone.", &["zone"]),
            tcp_connections_open: register(
                &registry,
                IntGauge::new(TCP_CONNECTIONS_OPEN, "Open DNS TCP connections.").expect("valid metric"),
            ),
            panics: counter_vec(
                PANICS_TOTAL,
                "Panics caught in a UDP worker, a TCP connection or a zone transfer build, by task (a bug if above 0).",
                &["task"],
            ),
            updates: counter_vec(
                UPDATES_TOTAL,
                "RFC 2136 UPDATEs by zone, verified key (\"-\" when none) and rcode (\"dropped\" when the queue was full).",
                &["zone", "key", "rcode"],
            ),
            update_values: counter_vec(
                UPDATE_VALUES_TOTAL,
                "ACME challenge values by zone, key and action (added, removed, expired).",
                &["zone", "key", "action"],
            ),
            pool_policy: gauge_vec(
                POOL_POLICY,
                "1 for each pool, labelled with its pick policy (weighted, nearest, region, latency).",
                &["zone", "pool", "policy"],
            ),
            acme_challenge_values: gauge_vec(
                ACME_CHALLENGE_VALUES,
                "ACME challenge values held now (added by UPDATE, not yet removed or expired).",
                &["zone"],
            ),
            secondary_serial: gauge_vec(
                SECONDARY_SERIAL,
                "The SOA serial each secondary (NOTIFY target) last answered for the zone.",
                &["zone", "secondary"],
            ),
            dnssec_signatures: counter_vec(
                DNSSEC_SIGNATURES_TOTAL,
                "RRSIGs made when building snapshots (signatures reused from the cache not counted), by zone.",
                &["zone"],
            ),
            dnssec_earliest_expiry: gauge_vec(
                DNSSEC_EARLIEST_EXPIRY,
                "The earliest RRSIG expiration (unix time) served in each signed zone.",
                &["zone"],
            ),
            dnssec_keys: gauge_vec(
                DNSSEC_KEYS,
                "DNSSEC keys of each signed zone by role (ksk, zsk) and state (future, published, active, retired, removed).",
                &["zone", "role", "state"],
            ),
            update_forwards: counter_vec(
                UPDATE_FORWARDS_TOTAL,
                "Updates forwarded to peer instances (update-peers), by peer and outcome.",
                &["peer", "outcome"],
            ),
            build_info: gauge_vec(
                BUILD_INFO,
                "1, labelled with the version and the commit the binary was built from.",
                &["version", "commit"],
            ),
            transfers: counter_vec(
                TRANSFERS_TOTAL,
                "Zone transfers (AXFR/IXFR over TCP) answered, by kind (axfr, ixfr) and outcome (NOERROR, REFUSED, NOTAUTH, FORMERR, SERVFAIL...).",
                &["kind", "outcome"],
            ),
            notifies: counter_vec(
                NOTIFIES_TOTAL,
                "NOTIFY messages to secondaries, by zone, secondary and outcome (sent, acknowledged, failed).",
                &["zone", "secondary", "outcome"],
            ),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CONSORTIUM_DNS_COMMIT")])
            .set(1);
        // Present from the start, so a dashboard or an alert sees 0 rather than no series.
        for kind in ["axfr", "ixfr"] {
            for outcome in ["NOERROR", "REFUSED", "NOTAUTH"] {
                metrics.transfers.with_label_values(&[kind, outcome]);
            }
        }
        for task in ["udp", "tcp", "transfer", "reload", "secondary"] {
            metrics.panics.with_label_values(&[task]);
        }
        metrics
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }

    /// A counter handle for one member's picks (created once per snapshot build).
    pub fn pick_counter(&self, zone: &str, pool: &str, member: &str) -> PickCounter {
        self.pool_picks.counter(zone, pool, member)
    }
}

/// (zone, pool, member) labels of one pick series.
type PickLabels = (Arc<str>, Arc<str>, Box<str>);

/// `consortium_dns_pool_picks_total`, kept outside the prometheus crate's vectors: each series
/// of an `IntCounterVec` holds its own copy of the metric's description, about 950 B per member
/// measured at 1,000 members; a series here is its labels and one atomic. As with a vector,
/// a series is created once per label set and lives on across reloads.
#[derive(Debug, Clone)]
pub struct PickCounters {
    desc: Desc,
    series: Arc<Mutex<HashMap<PickLabels, PickCounter>>>,
}

/// One member's pick count; `inc` is one relaxed atomic add.
#[derive(Debug, Clone, Default)]
pub struct PickCounter(Arc<AtomicU64>);

impl PickCounter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl PickCounters {
    fn new() -> PickCounters {
        let desc = Desc::new(
            POOL_PICKS_TOTAL.into(),
            "Answers of a pool's shared name, by picked member.".into(),
            vec!["zone".into(), "pool".into(), "member".into()],
            HashMap::new(),
        )
        .expect("valid metric");
        PickCounters {
            desc,
            series: Arc::default(),
        }
    }

    /// The counter of one label set, created at zero the first time.
    pub fn counter(&self, zone: &str, pool: &str, member: &str) -> PickCounter {
        let mut series = lock(&self.series);
        // Zone and pool names repeat for every member: share one copy of each.
        let shared = |text: &str, pick: fn(&PickLabels) -> &Arc<str>| {
            series
                .keys()
                .map(pick)
                .find(|known| &***known == text)
                .cloned()
                .unwrap_or_else(|| Arc::from(text))
        };
        let key = (shared(zone, |k| &k.0), shared(pool, |k| &k.1), Box::from(member));
        series.entry(key).or_default().clone()
    }
}

impl Collector for PickCounters {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = lock(&self.series);
        let label = |name: &str, value: &str| {
            let mut pair = LabelPair::default();
            pair.set_name(name.into());
            pair.set_value(value.into());
            pair
        };
        let mut entries: Vec<(&PickLabels, &PickCounter)> = series.iter().collect();
        // Series in the order of their label values, labels sorted by name (member, pool,
        // zone), as the prometheus crate exposes its own vectors.
        entries.sort_by(|(a, _), (b, _)| (&a.2, &a.1, &a.0).cmp(&(&b.2, &b.1, &b.0)));
        let metrics: Vec<Metric> = entries
            .into_iter()
            .map(|((zone, pool, member), count)| {
                let mut counter = Counter::default();
                counter.set_value(count.get() as f64);
                let mut metric = Metric::from_label(vec![
                    label("member", member),
                    label("pool", pool),
                    label("zone", zone),
                ]);
                metric.set_counter(counter);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(POOL_PICKS_TOTAL.into());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        vec![family]
    }
}

/// One worker's local query counts; `flush` moves them into the shared counters.
#[derive(Debug)]
pub struct QueryCounters {
    metrics: Metrics,
    transport: Transport,
    counts: [[u64; RCODE_SLOTS]; QTYPE_SLOTS],
    handles: Vec<Option<IntCounter>>,
    truncated: u64,
    dropped: u64,
    malformed: u64,
    pending: u32,
    last_flush: Instant,
}

impl QueryCounters {
    /// Queries counted before a flush is considered.
    const FLUSH_EVERY: u32 = 64;

    pub fn new(metrics: Metrics, transport: Transport) -> QueryCounters {
        QueryCounters {
            metrics,
            transport,
            counts: [[0; RCODE_SLOTS]; QTYPE_SLOTS],
            handles: vec![None; QTYPE_SLOTS * RCODE_SLOTS],
            truncated: 0,
            dropped: 0,
            malformed: 0,
            pending: 0,
            last_flush: Instant::now(),
        }
    }

    #[inline]
    pub fn answered(&mut self, qtype: u16, rcode: Rcode, truncated: bool) {
        self.counts[qtype_slot(qtype)][rcode_slot(rcode)] += 1;
        self.truncated += u64::from(truncated);
        self.malformed += u64::from(rcode == Rcode::FORMERR);
        self.tick();
    }

    #[inline]
    pub fn dropped(&mut self) {
        self.dropped += 1;
        self.tick();
    }

    #[inline]
    fn tick(&mut self) {
        // `pending` counts since the last flush (which zeroes it); every FLUSH_EVERY of them
        // the clock is read, and at most every 100 ms the counts go to the registry.
        self.pending += 1;
        if self.pending % Self::FLUSH_EVERY == 0 && self.last_flush.elapsed().as_millis() >= 100 {
            self.flush();
        }
    }

    /// True when something was counted since the last flush.
    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Publishes local counts to the registry.
    pub fn flush(&mut self) {
        self.last_flush = Instant::now();
        self.pending = 0;
        let transport = self.transport.label();
        for (q, row) in self.counts.iter_mut().enumerate() {
            for (r, count) in row.iter_mut().enumerate() {
                if *count == 0 {
                    continue;
                }
                let handle = self.handles[q * RCODE_SLOTS + r].get_or_insert_with(|| {
                    let qtype = QTYPES.get(q).map_or("other", |(_, name)| name);
                    let rcode = RCODES.get(r).map_or("other", |rcode| rcode.label());
                    self.metrics.queries.with_label_values(&[transport, qtype, rcode])
                });
                handle.inc_by(*count);
                *count = 0;
            }
        }
        for (count, vec) in [
            (&mut self.truncated, &self.metrics.truncated),
            (&mut self.dropped, &self.metrics.dropped),
            (&mut self.malformed, &self.metrics.malformed),
        ] {
            if *count > 0 {
                vec.with_label_values(&[transport]).inc_by(*count);
                *count = 0;
            }
        }
    }
}

impl Drop for QueryCounters {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_series_are_shared_per_label_set_and_exposed_sorted() {
        let metrics = Metrics::new();
        let first = metrics.pick_counter("consortium.example.", "any.consortium.example.", "node2");
        first.inc();
        // A reload asks again for the same labels: the same series, counting on.
        let again = metrics.pick_counter("consortium.example.", "any.consortium.example.", "node2");
        again.inc();
        metrics
            .pick_counter("consortium.example.", "any.consortium.example.", "node1")
            .inc();
        assert_eq!(first.get(), 2);
        let text = metrics.encode();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(POOL_PICKS_TOTAL)).collect();
        assert_eq!(
            lines,
            [
                "consortium_dns_pool_picks_total{member=\"node1\",pool=\"any.consortium.example.\",zone=\"consortium.example.\"} 1",
                "consortium_dns_pool_picks_total{member=\"node2\",pool=\"any.consortium.example.\",zone=\"consortium.example.\"} 2",
            ]
        );
        assert!(
            text.contains("# TYPE consortium_dns_pool_picks_total counter"),
            "{text}"
        );
    }

    #[test]
    fn local_counts_reach_the_registry_on_flush() {
        let metrics = Metrics::new();
        let mut counters = QueryCounters::new(metrics.clone(), Transport::Udp);
        counters.answered(rtype::A, Rcode::NOERROR, false);
        counters.answered(rtype::A, Rcode::NOERROR, true);
        counters.answered(999, Rcode::NXDOMAIN, false);
        counters.dropped();
        assert!(!metrics.encode().contains("qtype=\"A\""), "not flushed yet");
        counters.flush();
        let text = metrics.encode();
        assert!(
            text.contains("consortium_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\",transport=\"udp\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "consortium_dns_queries_total{qtype=\"other\",rcode=\"NXDOMAIN\",transport=\"udp\"} 1"
        ));
        assert!(text.contains("consortium_dns_responses_truncated_total{transport=\"udp\"} 1"));
        assert!(text.contains("consortium_dns_dropped_packets_total{transport=\"udp\"} 1"));
    }
}
