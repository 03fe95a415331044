//! The bench's statistics: the ratio of two means with a 95% interval
//! (Fieller's theorem), the ratio of paired runs (each repeat runs both
//! sides back to back), and medians.
//!
//! A figure over its repeats is a [`crate::stats::Estimate`] (the report's
//! type too); percentiles of raw values come from
//! [`crate::stats::percentile`].

use crate::stats::{sq_se, t95, welch_satterthwaite_df, Estimate};
use serde::{Deserialize, Serialize};

/// The ratio of two means with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// mean(numerator) / mean(denominator).
    pub value: f64,
    /// 95% interval (Fieller); both `None` when it is unbounded (the
    /// denominator's mean is not clearly away from 0) or a side has fewer
    /// than 2 values.
    pub ci95_lo: Option<f64>,
    pub ci95_hi: Option<f64>,
    pub num: Estimate,
    pub den: Estimate,
}

impl Ratio {
    /// `10.2 [8.1, 12.9]`.
    pub fn show(&self, prec: usize) -> String {
        match (self.ci95_lo, self.ci95_hi) {
            (Some(l), Some(h)) => format!("{:.p$} [{:.p$}, {:.p$}]", self.value, l, h, p = prec),
            _ => format!("{:.p$} [interval unbounded]", self.value, p = prec),
        }
    }
}

/// Ratio of the means of two independent samples, `mean(num) /
/// mean(den)`, with a 95% interval by **Fieller's theorem**.
///
/// With a = mean(num), b = mean(den) and their squared standard errors
/// va = s²/n, vb (independent samples, so no covariance term), the interval
/// is the set of r for which `a - r·b` is not significantly different from
/// 0:  `(a - r b)² <= t² (va + r² vb)`, i.e. the roots of
/// `(b² - t² vb) r² - 2ab r + (a² - t² va) = 0`. It is bounded only when
/// `b² > t² vb` (the denominator is significantly non-zero); otherwise
/// there is no finite interval and `None` is reported. Unlike the delta
/// method (`r ± t·r·sqrt(va/a² + vb/b²)`) it is not symmetric and stays
/// right when the denominator is noisy, which is the case for a collapsing
/// lock under overcommit.
///
/// `t` is Student's two-sided 95% quantile with Welch–Satterthwaite
/// degrees of freedom for `va + r² vb` at the point estimate.
pub fn ratio_of_means(num: &[f64], den: &[f64]) -> Option<Ratio> {
    let (sn, sd) = (Estimate::of(num)?, Estimate::of(den)?);
    let (a, b) = (sn.mean, sd.mean);
    if b == 0.0 {
        return None;
    }
    let r = a / b;
    let (lo, hi) = match (sq_se(num), sq_se(den)) {
        (Some(va), Some(vb)) => fieller(a, b, va, vb, num.len(), den.len()).unzip(),
        _ => (None, None),
    };
    Some(Ratio { value: r, ci95_lo: lo, ci95_hi: hi, num: sn, den: sd })
}

/// Welch–Satterthwaite degrees of freedom of `va + r² vb`, floored (the
/// conservative side) and kept in `1..=na + nb - 2`.
fn welch_df(va: f64, vb: f64, r: f64, na: usize, nb: usize) -> usize {
    match welch_satterthwaite_df(va, na, r * r * vb, nb) {
        Some(df) => (df.floor() as usize).clamp(1, na + nb - 2),
        // Both variances zero: the interval is a point whatever t is.
        None => na + nb - 2,
    }
}

/// Fieller's 95% interval; see [`ratio_of_means`].
fn fieller(a: f64, b: f64, va: f64, vb: f64, na: usize, nb: usize) -> Option<(f64, f64)> {
    let t = t95(welch_df(va, vb, a / b, na, nb));
    let t2 = t * t;
    let qa = b * b - t2 * vb;
    if qa <= 0.0 {
        return None;
    }
    let qb = -2.0 * a * b;
    let qc = a * a - t2 * va;
    let disc = qb * qb - 4.0 * qa * qc;
    // disc = 4 t² (b² va + a² vb - t² va vb) >= 0 whenever qa > 0.
    let s = disc.max(0.0).sqrt();
    let (r1, r2) = ((-qb - s) / (2.0 * qa), (-qb + s) / (2.0 * qa));
    Some((r1.min(r2), r1.max(r2)))
}

/// The ratio of paired runs: `pairs` are (numerator, denominator) of the
/// same repeat, run back to back, so a drift of the host's load between
/// repeats moves both. The value is the geometric mean of the per-pair
/// ratios, its 95% interval `exp(m ± t·s/√n)` over their logarithms
/// (Student's t, n - 1 degrees of freedom): the per-pair ratio's own
/// spread, not the much larger run-to-run spread of either side. Pairs
/// with a side <= 0 are left out. `num` / `den` summarise the two sides of
/// the pairs used. `None` with no usable pair; no interval below 2 pairs.
pub fn paired_ratio(pairs: &[(f64, f64)]) -> Option<Ratio> {
    let used: Vec<(f64, f64)> = pairs.iter().copied().filter(|&(a, b)| a > 0.0 && b > 0.0).collect();
    let logs: Vec<f64> = used.iter().map(|&(a, b)| (a / b).ln()).collect();
    let (num, den) = (
        Estimate::of(&used.iter().map(|p| p.0).collect::<Vec<_>>())?,
        Estimate::of(&used.iter().map(|p| p.1).collect::<Vec<_>>())?,
    );
    let m = logs.iter().sum::<f64>() / logs.len() as f64;
    let (lo, hi) = match sq_se(&logs) {
        Some(v) => {
            let h = t95(logs.len() - 1) * v.sqrt();
            (Some((m - h).exp()), Some((m + h).exp()))
        }
        None => (None, None),
    };
    Some(Ratio { value: m.exp(), ci95_lo: lo, ci95_hi: hi, num, den })
}

/// Pairs of the values of two sides with the same key (a repeat index):
/// `(num, den)` for every key both sides have, in key order.
pub fn pair_by_key<K: Ord + Copy>(num: &[(K, f64)], den: &[(K, f64)]) -> Vec<(f64, f64)> {
    let den: std::collections::BTreeMap<K, f64> = den.iter().copied().collect();
    let mut out: Vec<(K, f64, f64)> = num.iter().filter_map(|&(k, a)| den.get(&k).map(|&b| (k, a, b))).collect();
    out.sort_by_key(|x| x.0);
    out.into_iter().map(|(_, a, b)| (a, b)).collect()
}

/// Median of raw values (mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::percentile;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-12)
    }

    #[test]
    fn ratio_without_noise_is_a_point() {
        let r = ratio_of_means(&[10.0, 10.0, 10.0], &[2.0, 2.0]).unwrap();
        assert_eq!(r.value, 5.0);
        assert!(close(r.ci95_lo.unwrap(), 5.0, 1e-12) && close(r.ci95_hi.unwrap(), 5.0, 1e-12));
    }

    #[test]
    fn fieller_matches_a_hand_computation() {
        // a = 10, va = 1/3 (s² = 1, n = 3); b = 5, vb = 0.25/3 (s² = 0.25).
        let num = [9.0, 10.0, 11.0];
        let den = [4.5, 5.0, 5.5];
        let r = ratio_of_means(&num, &den).unwrap();
        assert!(close(r.value, 2.0, 1e-12));
        // The samples are exact multiples: the Welch df is 4 (2 + 2).
        let (va, vb) = (1.0 / 3.0, 0.25 / 3.0);
        assert_eq!(welch_df(va, vb, 2.0, 3, 3), 4);
        let t2: f64 = 2.776 * 2.776;
        let qa = 25.0 - t2 * vb;
        let qb = -100.0;
        let qc = 100.0 - t2 * va;
        let s = (qb * qb - 4.0 * qa * qc).sqrt();
        let (lo, hi) = ((-qb - s) / (2.0 * qa), (-qb + s) / (2.0 * qa));
        assert!(close(r.ci95_lo.unwrap(), lo, 1e-9), "{r:?} vs {lo}");
        assert!(close(r.ci95_hi.unwrap(), hi, 1e-9), "{r:?} vs {hi}");
        // Fieller's interval is skewed upwards (the denominator is in it).
        assert!(hi - 2.0 > 2.0 - lo);
        assert!(lo < 2.0 && hi > 2.0);
    }

    #[test]
    fn fieller_approaches_the_delta_method_for_small_noise() {
        let num = [1000.0, 1001.0, 999.0, 1000.5, 999.5];
        let den = [100.0, 100.1, 99.9, 100.05, 99.95];
        let r = ratio_of_means(&num, &den).unwrap();
        let (va, vb) = (sq_se(&num).unwrap(), sq_se(&den).unwrap());
        let (a, b) = (1000.0, 100.0);
        let t = t95(welch_df(va, vb, a / b, 5, 5));
        let half = t * (a / b) * (va / (a * a) + vb / (b * b)).sqrt();
        assert!(close(r.ci95_lo.unwrap(), 10.0 - half, 1e-4));
        assert!(close(r.ci95_hi.unwrap(), 10.0 + half, 1e-4));
    }

    #[test]
    fn a_noisy_denominator_gives_no_interval() {
        // mean 1, standard error ~1.7: not clearly away from 0.
        let r = ratio_of_means(&[5.0, 6.0], &[-2.0, 4.0]).unwrap();
        assert_eq!(r.value, 5.5);
        assert_eq!((r.ci95_lo, r.ci95_hi), (None, None));
        assert!(r.show(1).contains("unbounded"));
    }

    #[test]
    fn single_values_and_zero_means() {
        let r = ratio_of_means(&[3.0], &[1.5, 1.5]).unwrap();
        assert_eq!((r.value, r.ci95_lo), (2.0, None));
        assert!(ratio_of_means(&[1.0, 2.0], &[0.0, 0.0]).is_none());
        assert!(ratio_of_means(&[], &[1.0]).is_none());
    }

    #[test]
    fn interval_covers_the_truth_about_95_percent_of_the_time() {
        // Deterministic pseudo-normal draws (sum of 12 uniforms - 6).
        let mut s = 12345u64;
        let mut unif = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut normal = || (0..12).map(|_| unif()).sum::<f64>() - 6.0;
        let (trials, mut covered) = (2000, 0);
        for _ in 0..trials {
            let num: Vec<f64> = (0..5).map(|_| 20.0 + 2.0 * normal()).collect();
            let den: Vec<f64> = (0..5).map(|_| 10.0 + 1.0 * normal()).collect();
            let r = ratio_of_means(&num, &den).unwrap();
            if r.ci95_lo.unwrap() <= 2.0 && 2.0 <= r.ci95_hi.unwrap() {
                covered += 1;
            }
        }
        let rate = covered as f64 / trials as f64;
        assert!((0.92..=0.98).contains(&rate), "coverage {rate}");
    }

    #[test]
    fn paired_ratio_sees_through_a_shared_drift() {
        // Both sides drift 4x over the repeats; side a is 0.9x of b in each
        // pair, with 1% noise. Unpaired, the interval spans most of the
        // drift; paired, it is tight around 0.9.
        let pairs: Vec<(f64, f64)> = (0..6)
            .map(|i| {
                let level = 100.0 * (1.0 + 0.6 * i as f64);
                let wobble = if i % 2 == 0 { 1.01 } else { 0.99 };
                (0.9 * level * wobble, level)
            })
            .collect();
        let r = paired_ratio(&pairs).unwrap();
        assert!(close(r.value, 0.9, 0.01), "{r:?}");
        let (lo, hi) = (r.ci95_lo.unwrap(), r.ci95_hi.unwrap());
        assert!(lo < 0.9 && 0.9 < hi && hi - lo < 0.03, "{lo} {hi}");
        let (a, b): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        let u = ratio_of_means(&a, &b).unwrap();
        assert!(u.ci95_hi.unwrap() - u.ci95_lo.unwrap() > 10.0 * (hi - lo), "{u:?}");
        // Exactly proportional pairs: a point.
        let r = paired_ratio(&[(2.0, 1.0), (4.0, 2.0), (8.0, 4.0)]).unwrap();
        assert!(close(r.ci95_lo.unwrap(), 2.0, 1e-12) && close(r.ci95_hi.unwrap(), 2.0, 1e-12));
        // Unusable pairs are dropped; one pair has no interval.
        let r = paired_ratio(&[(1.0, 0.0), (3.0, 2.0)]).unwrap();
        assert_eq!((r.value, r.ci95_lo, r.num.n), (1.5, None, 1));
        assert!(paired_ratio(&[(0.0, 1.0)]).is_none());
    }

    #[test]
    fn pairs_are_matched_by_key() {
        let a = [(2u32, 20.0), (0, 0.5), (1, 10.0)];
        let b = [(1u32, 5.0), (2, 10.0), (3, 1.0)];
        assert_eq!(pair_by_key(&a, &b), vec![(10.0, 5.0), (20.0, 10.0)]);
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
    }
}
