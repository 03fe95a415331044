//! Small statistics used by records and reports: percentiles from the
//! guest's log-linear histograms, means and 95% intervals over repeats.

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
    fn nearest_rank_percentile() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&v, 1.0), 1.0);
    }
}
