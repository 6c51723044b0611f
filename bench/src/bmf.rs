//! Results in the Bencher Metric Format (BMF), the catalogue of what the suite
//! measures, and the comparison with a baseline.
//!
//! BMF is a JSON object: benchmark name -> measure slug -> `{ "value", "lower_value",
//! "upper_value" }`. Here `value` is the median of the repeated runs and the bounds are
//! their minimum and maximum (equal to `value` for a single run, or for deterministic
//! figures such as the simulator's virtual times).
//!
//! **Goals**: one place that says, per measure, its unit, whether lower or higher is
//! better and how much worse than its baseline it may get before it is a regression.
//!
//! **Non-goals**: statistics beyond median and range; on a shared CI machine the
//! tolerances, not confidence intervals, absorb the noise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One metric of one benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The median over the runs.
    pub value: f64,
    /// The smallest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_value: Option<f64>,
    /// The largest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_value: Option<f64>,
}

impl Metric {
    /// The median and range of `runs`; `None` when there is no run.
    pub fn of(runs: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let value = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Self { value, lower_value: v.first().copied(), upper_value: v.last().copied() })
    }
}

/// A whole `results.json`: benchmark -> measure -> metric, sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Results(pub BTreeMap<String, BTreeMap<String, Metric>>);

/// Why a results file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file cannot be read; check the path.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not Bencher Metric Format JSON; pass a `results.json` that
    /// `otamesh bench` wrote.
    #[error("{path} is not a Bencher Metric Format results file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// The parse error.
        reason: String,
    },
}

impl Results {
    /// Records the runs of `benchmark`'s `measure`; nothing when there was no run.
    pub fn record(&mut self, benchmark: &str, measure: Measure, runs: &[f64]) {
        if let Some(m) = Metric::of(runs) {
            self.0.entry(benchmark.to_owned()).or_default().insert(measure.slug().to_owned(), m);
        }
    }

    /// The metric of `benchmark` and measure `slug`.
    pub fn get(&self, benchmark: &str, slug: &str) -> Option<&Metric> {
        self.0.get(benchmark)?.get(slug)
    }

    /// Every (benchmark, measure slug, metric), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Metric)> {
        self.0.iter().flat_map(|(b, ms)| ms.iter().map(move |(s, m)| (b.as_str(), s.as_str(), m)))
    }

    /// Reads a `results.json`.
    pub fn read(path: &std::path::Path) -> Result<Self, ReadError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ReadError::Io { path: name.clone(), source })?;
        serde_json::from_str(&text).map_err(|e| ReadError::Format { path: name, reason: e.to_string() })
    }

    /// The pretty JSON text.
    pub fn to_json(&self) -> String {
        // Invariant: string keys and finite floats always serialize.
        serde_json::to_string_pretty(self).expect("results serialize") + "\n"
    }
}

/// What a figure measures: its unit, its better direction, its tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Measure {
    /// Wall-clock seconds on the real fleet (converge, revoke-to-all-back).
    FleetSeconds,
    /// Bytes the origin sent per site for one release.
    WanBytes,
    /// Copies of a release the origin sent per site: its chunk bytes per site over the
    /// release's size (1.0 is the ideal: each chunk crossed each site's WAN once).
    WanCopies,
    /// Percent of fetched chunk bytes that came from site peers.
    LanSharePercent,
    /// MiB/s of a transfer.
    Throughput,
    /// One transfer's speed over another's, in the same run.
    Ratio,
    /// Virtual seconds in the simulator (deterministic for a seed).
    SimSeconds,
    /// Wall-clock seconds of a simulator run.
    WallSeconds,
    /// Peak resident memory, bytes.
    PeakRss,
    /// Operations per second of a core micro-benchmark.
    OpsPerSecond,
    /// How far the simulator is from the real fleet: |sim - real| / real, percent.
    ErrorPercent,
}

impl Measure {
    /// Every measure, for documentation and lookups.
    pub const ALL: [Measure; 11] = [
        Measure::FleetSeconds,
        Measure::WanBytes,
        Measure::WanCopies,
        Measure::LanSharePercent,
        Measure::Throughput,
        Measure::Ratio,
        Measure::SimSeconds,
        Measure::WallSeconds,
        Measure::PeakRss,
        Measure::OpsPerSecond,
        Measure::ErrorPercent,
    ];

    /// The BMF measure slug.
    pub fn slug(self) -> &'static str {
        match self {
            Measure::FleetSeconds => "seconds",
            Measure::WanBytes => "wan-bytes",
            Measure::WanCopies => "wan-copies",
            Measure::LanSharePercent => "lan-share-percent",
            Measure::Throughput => "mib-per-second",
            Measure::Ratio => "ratio",
            Measure::SimSeconds => "virtual-seconds",
            Measure::WallSeconds => "wall-seconds",
            Measure::PeakRss => "peak-rss-bytes",
            Measure::OpsPerSecond => "ops-per-second",
            Measure::ErrorPercent => "error-percent",
        }
    }

    /// The measure of a slug.
    pub fn of_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.slug() == slug)
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Measure::LanSharePercent | Measure::Throughput | Measure::Ratio | Measure::OpsPerSecond
        )
    }

    /// How much worse than the baseline, as a fraction of the baseline, a value may be
    /// before it is a regression. Wide where a shared 2-core machine makes runs noisy,
    /// narrow where the figure is deterministic.
    pub fn tolerance(self) -> f64 {
        match self {
            Measure::FleetSeconds => 0.25,
            Measure::WanBytes => 0.15,
            // One extra copy in twenty is the site planner's target (1.05x).
            Measure::WanCopies => 0.05,
            Measure::LanSharePercent => 0.10,
            Measure::Throughput | Measure::Ratio => 0.30,
            Measure::SimSeconds => 0.01,
            Measure::WallSeconds => 0.50,
            Measure::PeakRss => 0.20,
            Measure::OpsPerSecond => 0.35,
            // An error of a few percent moves by its own size between runs; the
            // target (15%) is judged from the figure itself.
            Measure::ErrorPercent => 1.0,
        }
    }
}

/// A metric worse than its baseline by more than its tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    /// The benchmark.
    pub benchmark: String,
    /// The measure slug.
    pub measure: String,
    /// This run's value.
    pub value: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// How much worse, as a fraction of the baseline (0.3: 30% worse).
    pub worse_by: f64,
    /// The tolerance it exceeded.
    pub tolerance: f64,
}

impl std::fmt::Display for Regression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {} against baseline {} ({:.0}% worse, tolerance {:.0}%)",
            self.benchmark,
            self.measure,
            number(self.value),
            number(self.baseline),
            100.0 * self.worse_by,
            100.0 * self.tolerance
        )
    }
}

/// How much worse `value` is than `baseline` for `measure`, as a fraction of the
/// baseline; negative when it is better. `None` when the baseline is zero and so
/// gives no scale.
pub fn worse_by(measure: Measure, value: f64, baseline: f64) -> Option<f64> {
    if baseline == 0.0 || !baseline.is_finite() || !value.is_finite() {
        return None;
    }
    let delta = if measure.higher_is_better() { baseline - value } else { value - baseline };
    Some(delta / baseline.abs())
}

/// Every metric of `results` worse than the same metric of `baseline` by more than its
/// tolerance. Metrics missing on either side, or of unknown measures, are not compared.
pub fn regressions(results: &Results, baseline: &Results) -> Vec<Regression> {
    let mut out = Vec::new();
    for (benchmark, slug, metric) in results.iter() {
        let (Some(measure), Some(base)) = (Measure::of_slug(slug), baseline.get(benchmark, slug)) else {
            continue;
        };
        let Some(worse) = worse_by(measure, metric.value, base.value) else { continue };
        if worse > measure.tolerance() {
            out.push(Regression {
                benchmark: benchmark.to_owned(),
                measure: slug.to_owned(),
                value: metric.value,
                baseline: base.value,
                worse_by: worse,
                tolerance: measure.tolerance(),
            });
        }
    }
    out
}

/// A number for people: few significant digits, no exponent for everyday sizes.
pub fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.3e}", x)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_is_median_and_range() {
        let m = Metric::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((m.value, m.lower_value, m.upper_value), (2.0, Some(1.0), Some(3.0)));
        assert_eq!(Metric::of(&[1.0, 4.0]).unwrap().value, 2.5);
        assert_eq!(Metric::of(&[f64::NAN]), None, "a failed run is no run");
        assert_eq!(Metric::of(&[]), None);
    }

    #[test]
    fn bmf_json_has_the_documented_shape() {
        let mut r = Results::default();
        r.record("fleet/time_to_converge", Measure::FleetSeconds, &[10.0, 12.0, 11.0]);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let m = &v["fleet/time_to_converge"]["seconds"];
        assert_eq!(
            (m["value"].as_f64(), m["lower_value"].as_f64(), m["upper_value"].as_f64()),
            (Some(11.0), Some(10.0), Some(12.0))
        );
        assert_eq!(serde_json::from_str::<Results>(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn a_regression_is_worse_by_more_than_its_tolerance_in_its_own_direction() {
        let mut base = Results::default();
        base.record("fleet/time_to_converge", Measure::FleetSeconds, &[10.0]);
        base.record("lan/two_node_transfer", Measure::Throughput, &[100.0]);
        base.record("sim/canary/t90", Measure::SimSeconds, &[0.0]);
        let mut now = Results::default();
        // Rows: within tolerance, slower beyond it, throughput higher (better), zero baseline.
        now.record("fleet/time_to_converge", Measure::FleetSeconds, &[12.0]);
        now.record("lan/two_node_transfer", Measure::Throughput, &[500.0]);
        now.record("sim/canary/t90", Measure::SimSeconds, &[5.0]);
        assert!(regressions(&now, &base).is_empty());
        now.record("fleet/time_to_converge", Measure::FleetSeconds, &[10.0 / 0.7]);
        now.record("lan/two_node_transfer", Measure::Throughput, &[60.0]);
        let r = regressions(&now, &base);
        let names: Vec<&str> = r.iter().map(|r| r.benchmark.as_str()).collect();
        assert_eq!(names, ["fleet/time_to_converge", "lan/two_node_transfer"]);
        assert!(r[0].to_string().contains("43% worse"), "{}", r[0]);
    }
}
