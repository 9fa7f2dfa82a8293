//! The weighted random pick for a pool's shared name.
//!
//! A `PickTable` is built off the request path from the members' effective weights (64-bit
//! sums, so 10,000 members at u32 weights cannot overflow) and published through `ArcSwap`.
//! A pick is one unbiased uniform draw in `[0, total)` and a binary search: O(log n), no
//! allocation, no lock.

use rand::Rng;

/// Effective weights are configured weights times this, so a slow-start ramp has 1/1000 steps.
pub const WEIGHT_SCALE: u64 = 1_000;

/// Candidates of one pool at one moment, with cumulative weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PickTable {
    /// Index into the pool's member list for each candidate.
    candidates: Vec<u32>,
    /// `cumulative[i]` = sum of the weights of candidates `0..=i`.
    cumulative: Vec<u64>,
    /// True when no member was eligible and the table falls back to configured weights.
    fail_open: bool,
    /// Each slot's weight in this table (0: not a candidate), when `with_slot_weights` made
    /// it: the nearest search looks members up by slot. Empty otherwise.
    slot_weights: Box<[u64]>,
}

impl PickTable {
    /// Builds a table from `(member index, effective weight, configured weight)` triples.
    ///
    /// Members with a positive effective weight are candidates. When there are none, the table
    /// fails open: every member with a positive configured weight becomes a candidate at that
    /// weight, so the shared name still leads somewhere (DESIGN.md, "fail safe"). A pool with
    /// no such member (empty, or weight 0 throughout) is not failing open: it is empty on
    /// purpose and answers NODATA, and must not raise the fail-open alert.
    pub fn build(weights: impl IntoIterator<Item = (u32, u64, u64)> + Clone) -> PickTable {
        let table = PickTable::from_weights(weights.clone().into_iter().map(|(i, eff, _)| (i, eff)), false);
        if !table.candidates.is_empty() {
            return table;
        }
        let fallback = PickTable::from_weights(weights.into_iter().map(|(i, _, conf)| (i, conf)), true);
        PickTable {
            fail_open: !fallback.candidates.is_empty(),
            ..fallback
        }
    }

    fn from_weights(weights: impl Iterator<Item = (u32, u64)>, fail_open: bool) -> PickTable {
        let mut candidates = Vec::new();
        let mut cumulative = Vec::new();
        let mut total: u64 = 0;
        for (index, weight) in weights {
            if weight == 0 {
                continue;
            }
            total = total.saturating_add(weight);
            candidates.push(index);
            cumulative.push(total);
        }
        PickTable {
            candidates,
            cumulative,
            fail_open,
            slot_weights: Box::default(),
        }
    }

    /// The table with each of `slots` slots' weight at hand (`weight_of`).
    pub fn with_slot_weights(mut self, slots: usize) -> PickTable {
        let mut weights = vec![0; slots];
        for (candidate, weight) in self.candidates() {
            if let Some(w) = weights.get_mut(candidate as usize) {
                *w = weight;
            }
        }
        self.slot_weights = weights.into_boxed_slice();
        self
    }

    /// True when `with_slot_weights` made the table, so `weight_of` answers.
    #[inline]
    pub fn has_slot_weights(&self) -> bool {
        !self.slot_weights.is_empty()
    }

    /// Slot `slot`'s weight in this table (0: not a candidate); None when the table was built
    /// without `with_slot_weights`.
    #[inline]
    pub fn weight_of(&self, slot: u32) -> Option<u64> {
        if self.slot_weights.is_empty() {
            return None;
        }
        Some(self.slot_weights.get(slot as usize).copied().unwrap_or(0))
    }

    /// Draws one member index, or `None` when the pool has nobody to offer.
    #[inline]
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<u32> {
        let total = *self.cumulative.last()?;
        let point = rng.random_range(0..total);
        let slot = self.cumulative.partition_point(|&c| c <= point);
        self.candidates.get(slot).copied()
    }

    /// The candidates with their weights, in table order.
    pub fn candidates(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let mut previous = 0;
        self.candidates
            .iter()
            .zip(&self.cumulative)
            .map(move |(&c, &cumulative)| {
                let weight = cumulative - previous;
                previous = cumulative;
                (c, weight)
            })
    }

    /// The unbiased weighted draw among the candidates `keep` accepts; `None` when it accepts
    /// none. Two passes over the candidates, no allocation.
    pub fn pick_among<R: Rng + ?Sized>(&self, rng: &mut R, keep: impl Fn(u32) -> bool) -> Option<u32> {
        let total: u64 = self.candidates().filter(|&(c, _)| keep(c)).map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut point = rng.random_range(0..total);
        for (candidate, weight) in self.candidates().filter(|&(c, _)| keep(c)) {
            if point < weight {
                return Some(candidate);
            }
            point -= weight;
        }
        None
    }

    /// True when the table offers members regardless of health.
    pub fn is_fail_open(&self) -> bool {
        self.fail_open
    }

    /// True when there is nothing to pick (no members with positive weight at all).
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The candidate with the largest weight (the first of equals): the deterministic choice
    /// served to secondaries, which cannot pick per query.
    pub fn heaviest(&self) -> Option<u32> {
        let mut best: Option<(u64, u32)> = None;
        let mut previous = 0;
        for (&candidate, &cumulative) in self.candidates.iter().zip(&self.cumulative) {
            let weight = cumulative - previous;
            previous = cumulative;
            if best.is_none_or(|(w, _)| weight > w) {
                best = Some((weight, candidate));
            }
        }
        best.map(|(_, candidate)| candidate)
    }

    /// The sum of candidate weights.
    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn empty_or_weightless_pools_are_empty_not_failing_open() {
        for weights in [vec![], vec![(0, 0, 0), (1, 0, 0)]] {
            let table = PickTable::build(weights);
            assert!(table.is_empty());
            assert!(!table.is_fail_open());
            assert_eq!(table.pick(&mut SmallRng::seed_from_u64(1)), None);
        }
        let all_down = PickTable::build(vec![(0, 0, 2), (1, 0, 0)]);
        assert!(all_down.is_fail_open());
        assert_eq!(all_down.pick(&mut SmallRng::seed_from_u64(1)), Some(0));
    }

    /// Upper critical values of chi-square at p = 0.001.
    fn chi_square_critical_0_001(degrees: usize) -> f64 {
        match degrees {
            1 => 10.828,
            2 => 13.816,
            3 => 16.266,
            9 => 27.877,
            _ => panic!("no table entry for {degrees} degrees of freedom"),
        }
    }

    fn chi_square(counts: &[u64], weights: &[u64]) -> f64 {
        let n: u64 = counts.iter().sum();
        let total: u64 = weights.iter().sum();
        counts
            .iter()
            .zip(weights)
            .map(|(&observed, &w)| {
                let expected = n as f64 * w as f64 / total as f64;
                (observed as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    #[test]
    fn weights_1_2_7_pass_chi_square() {
        let table = PickTable::build([(0, 1, 1), (1, 2, 2), (2, 7, 7)]);
        let mut rng = SmallRng::seed_from_u64(20_261_125);
        let mut counts = [0u64; 3];
        for _ in 0..20_000 {
            counts[table.pick(&mut rng).expect("non-empty") as usize] += 1;
        }
        let statistic = chi_square(&counts, &[1, 2, 7]);
        assert!(
            statistic < chi_square_critical_0_001(2),
            "chi2 {statistic} counts {counts:?}"
        );
    }

    #[test]
    fn zero_weight_and_down_members_never_picked() {
        // member 1 has weight 0 in the file, member 2 is down (effective 0).
        let table = PickTable::build([(0, 5, 5), (1, 0, 0), (2, 0, 9), (3, 1, 1)]);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let picked = table.pick(&mut rng).expect("non-empty");
            assert!(picked == 0 || picked == 3, "picked {picked}");
        }
        assert!(!table.is_fail_open());
    }

    #[test]
    fn heaviest_is_the_largest_weight_first_of_equals() {
        assert_eq!(
            PickTable::build([(0, 2, 2), (1, 5, 5), (2, 5, 5)]).heaviest(),
            Some(1)
        );
        assert_eq!(PickTable::build([(0, 0, 2), (1, 3, 5)]).heaviest(), Some(1));
        assert_eq!(PickTable::default().heaviest(), None);
    }

    #[test]
    fn all_down_fails_open_by_configured_weight() {
        let table = PickTable::build([(0, 0, 1), (1, 0, 0), (2, 0, 3)]);
        assert!(table.is_fail_open());
        assert_eq!(table.total_weight(), 4);
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..1_000 {
            assert_ne!(table.pick(&mut rng), Some(1));
        }
        assert_eq!(
            PickTable::build(std::iter::empty::<(u32, u64, u64)>()).pick(&mut rng),
            None
        );
    }

    /// Large pools: 10,000 members in 10 blocks of rising weight; the share of each block must
    /// match its weight (chi-square over blocks), and the totals must not wrap.
    #[test]
    fn ten_thousand_members_by_blocks() {
        let weights: Vec<(u32, u64, u64)> = (0..10_000u32)
            .map(|i| {
                let w = u64::from(i / 1_000 + 1) * 1_000_000;
                (i, w, w)
            })
            .collect();
        let table = PickTable::build(weights.iter().copied());
        assert_eq!(
            table.total_weight(),
            (1..=10).map(|b| b * 1_000 * 1_000_000).sum::<u64>()
        );
        let mut rng = SmallRng::seed_from_u64(42);
        let mut blocks = [0u64; 10];
        for _ in 0..200_000 {
            blocks[(table.pick(&mut rng).expect("non-empty") / 1_000) as usize] += 1;
        }
        let statistic = chi_square(&blocks, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(
            statistic < chi_square_critical_0_001(9),
            "chi2 {statistic} blocks {blocks:?}"
        );
    }
}
