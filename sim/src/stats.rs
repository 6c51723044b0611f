//! The statistics a sweep reports: a sample described, a mean's confidence interval,
//! and a proportion's Wilson interval.
//!
//! **Goals:** the handful of estimators a simulation study needs, computed the same way
//! every time: the same values in the same order give the same bits, so a sweep merged
//! from shards reports exactly what the unsharded sweep reports.
//!
//! **Non-goals:** a statistics library: no hypothesis tests, no bootstrap, no weights.

use serde::Serialize;

/// The 97.5th percentile of the standard normal distribution (two-sided 95%).
pub const Z95: f64 = 1.959_963_984_540_054;

/// Two-sided 95% quantiles of Student's t for 1 to 30 degrees of freedom (the standard
/// table); beyond 30 [`t95`] uses the Cornish-Fisher expansion around [`Z95`].
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// A sample of one numeric key over the runs of one grid point. Every field but `n`
/// is `null` for an empty sample; `sd` and `ci95` also for a single value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Describe {
    /// Runs in which the key had a value (a time that never came is no value).
    pub n: u64,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Sample standard deviation (divisor n - 1).
    pub sd: Option<f64>,
    /// 95% confidence interval of the mean: mean -/+ t(0.975, n - 1) sd / sqrt(n).
    pub ci95: Option<[f64; 2]>,
    /// Smallest value.
    pub min: Option<f64>,
    /// 5th percentile.
    pub p5: Option<f64>,
    /// 25th percentile.
    pub p25: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 75th percentile.
    pub p75: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
}

impl Describe {
    /// Describes `values` (in the order given: the sums are taken in that order).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                n: 0,
                mean: None,
                sd: None,
                ci95: None,
                min: None,
                p5: None,
                p25: None,
                p50: None,
                p75: None,
                p95: None,
                max: None,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| {
            let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (squares / (n - 1) as f64).sqrt()
        });
        let ci95 = sd.map(|sd| {
            let half = t95(n as u64 - 1) * sd / (n as f64).sqrt();
            [mean - half, mean + half]
        });
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| Some(percentile(&sorted, p));
        Self {
            n: n as u64,
            mean: Some(mean),
            sd,
            ci95,
            min: sorted.first().copied(),
            p5: q(0.05),
            p25: q(0.25),
            p50: q(0.5),
            p75: q(0.75),
            p95: q(0.95),
            max: sorted.last().copied(),
        }
    }
}

/// A yes/no outcome over the runs of one grid point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proportion {
    /// Runs.
    pub runs: u64,
    /// Runs in which the outcome happened.
    pub yes: u64,
    /// `yes / runs`; `null` without runs.
    pub proportion: Option<f64>,
    /// Wilson score 95% interval; `null` without runs.
    pub ci95: Option<[f64; 2]>,
}

impl Proportion {
    /// `yes` of `runs`.
    pub fn of(yes: u64, runs: u64) -> Self {
        Self {
            runs,
            yes,
            proportion: (runs > 0).then(|| yes as f64 / runs as f64),
            ci95: wilson95(yes, runs),
        }
    }
}

/// The `p` quantile (0 to 1) of sorted values, interpolating linearly between the
/// closest ranks (Hyndman and Fan's definition 7, the default of R and NumPy).
/// `sorted` must not be empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom (`df` >= 1).
pub fn t95(df: u64) -> f64 {
    if df == 0 {
        return f64::INFINITY;
    }
    if let Some(t) = T95.get(df as usize - 1) {
        return *t;
    }
    // Cornish-Fisher: within 1e-4 of the exact quantile from 30 degrees of freedom on.
    let (z, v) = (Z95, df as f64);
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * v)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v * v * v)
}

/// The Wilson score 95% interval of `yes` successes in `n` trials; `None` when `n` is
/// zero. Unlike the normal approximation it stays inside [0, 1] and is sound for
/// proportions near 0 or 1 and for small `n`.
pub fn wilson95(yes: u64, n: u64) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let (k, n) = (yes.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn describe_matches_hand_computed_values() {
        let d = Describe::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(d.n, 5);
        assert_eq!(d.mean, Some(3.0));
        assert!(close(d.sd.unwrap(), 2.5f64.sqrt(), 1e-12));
        // t(0.975, 4) = 2.776: 3 -/+ 2.776 * 1.5811 / 2.2361.
        let [lo, hi] = d.ci95.unwrap();
        assert!(close(lo, 3.0 - 1.9629, 1e-3) && close(hi, 3.0 + 1.9629, 1e-3), "{lo} {hi}");
        assert_eq!((d.min, d.p50, d.max), (Some(1.0), Some(3.0), Some(5.0)));
        assert_eq!((d.p25, d.p75), (Some(2.0), Some(4.0)));
        assert!(close(d.p5.unwrap(), 1.2, 1e-12));
    }

    #[test]
    fn small_samples_have_no_spread() {
        // No values: only the count.
        let empty = Describe::of(&[]);
        assert_eq!((empty.n, empty.mean, empty.p50), (0, None, None));
        // One value: a mean and quantiles, no standard deviation or interval.
        let one = Describe::of(&[7.0]);
        assert_eq!((one.mean, one.sd, one.ci95, one.p95), (Some(7.0), None, None, Some(7.0)));
    }

    #[test]
    fn t_quantiles_follow_the_table_then_approach_the_normal() {
        assert_eq!(t95(1), 12.706);
        assert_eq!(t95(30), 2.042);
        // Published values: 2.021 (40), 2.000 (60), 1.980 (120).
        assert!(close(t95(40), 2.021, 1e-3), "{}", t95(40));
        assert!(close(t95(60), 2.000, 1e-3), "{}", t95(60));
        assert!(close(t95(120), 1.980, 1e-3), "{}", t95(120));
        assert!(close(t95(1_000_000), Z95, 1e-5));
    }

    #[test]
    fn wilson_interval_matches_published_examples() {
        // 81 of 263 (Wilson 1927 style worked example): [0.2553, 0.3662].
        let [lo, hi] = wilson95(81, 263).unwrap();
        assert!(close(lo, 0.2553, 1e-4) && close(hi, 0.3662, 1e-4), "{lo} {hi}");
        // None of 10: the interval still has width, from 0 to 0.2775.
        let [lo, hi] = wilson95(0, 10).unwrap();
        assert!(close(lo, 0.0, 1e-12) && close(hi, 0.2775, 1e-4), "{lo} {hi}");
        let [lo, hi] = wilson95(10, 10).unwrap();
        assert!(close(lo, 0.7225, 1e-4) && close(hi, 1.0, 1e-12), "{lo} {hi}");
        assert_eq!(wilson95(0, 0), None);
        assert_eq!(Proportion::of(3, 4).proportion, Some(0.75));
    }
}
