//! The statistics of records, reports and the bench, in one place:
//! percentiles from the guest's log-linear histograms, a figure over its
//! repeats ([`Estimate`]: mean, 95% Student-t interval, range), and
//! Welch's unequal-variance t statistic with its Welch–Satterthwaite
//! degrees of freedom (the report's diff tests with it, the bench's Fieller
//! ratio takes its critical value from it).

use serde::{Deserialize, Serialize};

/// p50 / p99 / max of a latency distribution, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Percentiles of a histogram given as (bucket lower bound, count), sorted
/// by bound. Each value is reported as its bucket's lower bound (the guest
/// histogram's resolution is a quarter of a power of two).
pub fn histogram_percentiles(buckets: &[(u64, u64)]) -> Percentiles {
    let count: u64 = buckets.iter().map(|b| b.1).sum();
    if count == 0 {
        return Percentiles::default();
    }
    let at = |q: f64| -> u64 {
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for &(low, n) in buckets {
            seen += n;
            if seen >= rank {
                return low;
            }
        }
        buckets.last().map(|b| b.0).unwrap_or(0)
    };
    Percentiles { count, p50: at(0.5), p99: at(0.99), max: buckets.last().map(|b| b.0).unwrap_or(0) }
}

/// Merges several (bound, count) histograms into one sorted histogram.
pub fn merge_histograms<'a>(hs: impl IntoIterator<Item = &'a [(u64, u64)]>) -> Vec<(u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for h in hs {
        for &(b, n) in h {
            *m.entry(b).or_insert(0) += n;
        }
    }
    m.into_iter().collect()
}

/// Mean and half-width of a 95% confidence interval (Student's t) of a
/// sample; the half-width is `None` for fewer than two values.
pub fn mean_ci95(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, Some(t95(n - 1) * (var / n as f64).sqrt()))
}

/// One figure over its repeats: mean with a 95% Student-t half-width, the
/// range, and how many repeats went in. The unit is the field's. The bench
/// serializes it (`mean`, `ci95`, `min`, `max`, `n`); the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    /// Half-width of the 95% interval of the mean; `None` below 2 repeats.
    pub ci95: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// Number of values.
    pub n: usize,
}

impl Estimate {
    /// `None` for no values.
    pub fn of(xs: &[f64]) -> Option<Estimate> {
        if xs.is_empty() {
            return None;
        }
        let (mean, ci95) = mean_ci95(xs);
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Estimate { mean, ci95, min, max, n: xs.len() })
    }

    /// `12.3 ± 0.4` (or `12.3 (n=1)`), with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        match self.ci95 {
            Some(h) => format!("{:.p$} ± {:.p$}", self.mean, h, p = prec),
            None => format!("{:.p$} (n={})", self.mean, self.n, p = prec),
        }
    }

    /// Whether two 95% intervals overlap (`None` if either has none).
    pub fn overlaps(&self, other: &Estimate) -> Option<bool> {
        let (a, b) = (self.ci95?, other.ci95?);
        Some(self.mean - a <= other.mean + b && other.mean - b <= self.mean + a)
    }
}

/// Squared standard error of the mean, s² / n (`None` below 2 values).
pub fn sq_se(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some(var / n as f64)
}

/// Welch–Satterthwaite degrees of freedom of the sum `va + vb` of two
/// independent squared standard errors from `na` and `nb` values (each at
/// least 2); `None` when both are zero (any df gives the same answer).
pub fn welch_satterthwaite_df(va: f64, na: usize, vb: f64, nb: usize) -> Option<f64> {
    let den = va * va / (na - 1) as f64 + vb * vb / (nb - 1) as f64;
    if den <= 0.0 {
        return None;
    }
    Some((va + vb).powi(2) / den)
}

/// Welch's t statistic and Welch–Satterthwaite degrees of freedom for the
/// difference of means `b - a`. `None` if either side has fewer than two
/// values; `t` is infinite when both variances are zero and the means
/// differ (df is then `na + nb - 2`).
pub fn welch(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let (sa, sb) = (sq_se(a)?, sq_se(b)?);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (ma, mb) = (mean(a), mean(b));
    let Some(df) = welch_satterthwaite_df(sa, a.len(), sb, b.len()) else {
        let t = if mb == ma { 0.0 } else { f64::INFINITY.copysign(mb - ma) };
        return Some((t, (a.len() + b.len() - 2) as f64));
    };
    Some(((mb - ma) / (sa + sb).sqrt(), df))
}

/// Two-sided 95% Student's t quantile for `df` degrees of freedom.
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

/// Percentile (0..=100) of raw values by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_histogram() {
        let h = [(10, 50), (20, 49), (1000, 1)];
        let p = histogram_percentiles(&h);
        assert_eq!(p, Percentiles { count: 100, p50: 10, p99: 20, max: 1000 });
        assert_eq!(histogram_percentiles(&[]), Percentiles::default());
    }

    #[test]
    fn merging_adds_counts() {
        let a = [(10u64, 1u64), (20, 2)];
        let b = [(20u64, 3u64), (5, 1)];
        assert_eq!(merge_histograms([&a[..], &b[..]]), vec![(5, 1), (10, 1), (20, 5)]);
    }

    #[test]
    fn mean_and_interval() {
        let (m, ci) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        // s = 1, n = 3: 4.303 / sqrt(3)
        assert!((ci.unwrap() - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(mean_ci95(&[5.0]).1, None);
    }

    #[test]
    fn estimate_of_repeats() {
        let s = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert!((s.ci95.unwrap() - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(Estimate::of(&[4.0]).unwrap().ci95, None);
        assert_eq!(Estimate::of(&[]), None);
        assert_eq!(s.show(1), "2.0 ± 2.5");
        assert_eq!(Estimate::of(&[4.0]).unwrap().show(0), "4 (n=1)");
        let far = Estimate::of(&[10.0, 11.0, 12.0]).unwrap();
        assert_eq!(s.overlaps(&far), Some(false));
        assert_eq!(s.overlaps(&s), Some(true));
        assert_eq!(s.overlaps(&Estimate::of(&[4.0]).unwrap()), None);
    }

    #[test]
    fn welch_matches_a_hand_computation() {
        // a: mean 2, s² 1; b: mean 5, s² 4; n = 3 each.
        // se² = 1/3 + 4/3 = 5/3; t = 3 / sqrt(5/3);
        // df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = 25/9 / (17/18) = 50/17.
        let (t, df) = welch(&[1.0, 2.0, 3.0], &[3.0, 5.0, 7.0]).unwrap();
        assert!((t - 3.0 / (5.0f64 / 3.0).sqrt()).abs() < 1e-12, "{t}");
        assert!((df - 50.0 / 17.0).abs() < 1e-12, "{df}");
        assert_eq!(welch(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(welch(&[2.0, 2.0], &[3.0, 3.0]), Some((f64::INFINITY, 2.0)));
        assert_eq!(welch(&[2.0, 2.0], &[2.0, 2.0]), Some((0.0, 2.0)));
    }

    #[test]
    fn nearest_rank_percentile() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&v, 1.0), 1.0);
    }
}
