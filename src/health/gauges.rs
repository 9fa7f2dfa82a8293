//! The health gauges of the metrics endpoint, refreshed from the current state at each scrape.

use super::HealthManager;
use crate::metrics::{Metrics, PER_MEMBER_SERIES_LIMIT};
use crate::snapshot::Snapshot;

impl HealthManager {
    /// Sets the health, weight and certificate gauges from the current state (at scrape).
    pub fn refresh_gauges(&self, snapshot: &Snapshot, m: &Metrics) {
        let report = self.report(snapshot);
        m.member_up.reset();
        m.member_drained.reset();
        m.member_effective_weight.reset();
        m.member_probe_duration.reset();
        m.member_cert_expiry_days.reset();
        m.member_cert_covers_pool.reset();
        m.pool_fail_open.reset();
        m.pool_members.reset();
        for pool in &report.pools {
            m.pool_fail_open
                .with_label_values(&[&pool.zone, &pool.name])
                .set(i64::from(pool.fail_open));
            let drained = pool.members.iter().filter(|m| m.drained).count();
            let up = pool
                .members
                .iter()
                .filter(|m| m.state == "up" && !m.drained)
                .count();
            for (state, count) in [
                ("up", up),
                ("down", pool.members.len() - up - drained),
                ("drained", drained),
            ] {
                m.pool_members
                    .with_label_values(&[&pool.zone, &pool.name, state])
                    .set(count as i64);
            }
            // Per-member series cost memory per scrape; past the limit only the counts above.
            if pool.members.len() > PER_MEMBER_SERIES_LIMIT {
                continue;
            }
            for member in &pool.members {
                m.member_up
                    .with_label_values(&[&pool.zone, &member.label])
                    .set(i64::from(member.state == "up"));
                m.member_drained
                    .with_label_values(&[&pool.zone, &member.label])
                    .set(i64::from(member.drained));
                m.member_effective_weight
                    .with_label_values(&[&pool.zone, &pool.name, &member.label])
                    .set(member.effective_weight);
                if let Some(probe) = &member.last_probe {
                    m.member_probe_duration
                        .with_label_values(&[&pool.zone, &member.label])
                        .set(probe.latency_ms / 1_000.0);
                }
                if let Some(cert) = &member.certificate {
                    if let Some(days) = cert.days_to_expiry {
                        m.member_cert_expiry_days
                            .with_label_values(&[&pool.zone, &member.label])
                            .set(days);
                    }
                    m.member_cert_covers_pool
                        .with_label_values(&[&pool.zone, &pool.name, &member.label])
                        .set(i64::from(cert.covers_pool));
                }
            }
        }
    }
}
