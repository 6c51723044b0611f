//! What a run leaves for people and CI: `summary.md` (a Markdown table fit for a CI
//! job summary) and, across several runs, one chart per metric (`bench history`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use otamesh_fleet::plot;

use crate::bmf::{Measure, Regression, Results, number, worse_by};

/// The Markdown summary of `results`, compared with `baseline` when there is one.
pub fn summary(
    title: &str,
    results: &Results,
    baseline: Option<&Results>,
    regressions: &[Regression],
    notes: &[String],
    plots: &[String],
) -> String {
    let mut out = format!("## {title}\n\n");
    if baseline.is_some() {
        if regressions.is_empty() {
            out.push_str("No metric regressed beyond its tolerance.\n\n");
        } else {
            let _ = writeln!(out, "**{} regression(s):**\n", regressions.len());
            for r in regressions {
                let _ = writeln!(out, "- {r}");
            }
            out.push('\n');
        }
    }
    out.push_str("| benchmark | measure | value | range over runs |");
    if baseline.is_some() {
        out.push_str(" baseline | change | tolerance | |");
    }
    out.push('\n');
    out.push_str("|---|---|---:|---|");
    if baseline.is_some() {
        out.push_str("---:|---:|---:|---|");
    }
    out.push('\n');
    for (benchmark, slug, m) in results.iter() {
        let range = match (m.lower_value, m.upper_value) {
            (Some(l), Some(u)) if l != u => format!("{} – {}", number(l), number(u)),
            _ => "—".into(),
        };
        let _ = write!(out, "| `{benchmark}` | {slug} | {} | {range} |", number(m.value));
        if let Some(base) = baseline {
            let measure = Measure::of_slug(slug);
            match (base.get(benchmark, slug), measure) {
                (Some(b), Some(measure)) => {
                    let change = worse_by(measure, m.value, b.value);
                    let verdict = match change {
                        Some(w) if w > measure.tolerance() => "regressed",
                        Some(w) if w < -measure.tolerance() => "improved",
                        _ => "",
                    };
                    let change = match change {
                        Some(w) if (100.0 * w).round() > 0.0 => format!("{:.0}% worse", 100.0 * w),
                        Some(w) if (100.0 * w).round() < 0.0 => format!("{:.0}% better", -100.0 * w),
                        Some(_) => "same".into(),
                        None => "—".into(),
                    };
                    let _ = write!(
                        out,
                        " {} | {change} | {:.0}% | {verdict} |",
                        number(b.value),
                        100.0 * measure.tolerance()
                    );
                }
                _ => out.push_str(" — | — | — | new |"),
            }
        }
        out.push('\n');
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    if !plots.is_empty() {
        let _ = writeln!(out, "\nPlots: {}", plots.join(", "));
    }
    out
}

/// Why `bench history` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// A results file could not be read.
    #[error(transparent)]
    Read(#[from] crate::bmf::ReadError),
    /// A chart could not be written; check that the output directory is writable.
    #[error("cannot write a chart: {0}")]
    Plot(String),
}

/// A metric in one results file: (its place, [value, lower, upper]).
type Point = (f64, [f64; 3]);

/// One PNG per (benchmark, measure) across `files` (oldest first, one point each: the
/// value, and its lower and upper bounds); returns the files written.
pub fn history(files: &[&Path], out: &Path) -> Result<Vec<String>, HistoryError> {
    let runs: Vec<Results> = files.iter().map(|f| Results::read(f)).collect::<Result<_, _>>()?;
    let mut series: BTreeMap<(String, String), Vec<Point>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        for (b, s, m) in r.iter() {
            let point = [m.value, m.lower_value.unwrap_or(m.value), m.upper_value.unwrap_or(m.value)];
            series.entry((b.to_owned(), s.to_owned())).or_default().push(((i + 1) as f64, point));
        }
    }
    let labels: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut written = Vec::new();
    for ((benchmark, slug), points) in series {
        let top = points.iter().map(|p| p.1[2]).fold(0.0, f64::max).max(1e-9) * 1.15;
        let line = |k: usize| points.iter().map(|(x, v)| (*x, v[k])).collect::<Vec<_>>();
        let chart = plot::Chart {
            title: format!("{benchmark} ({slug}) across {} runs", labels.len()),
            x_desc: "results file (in the order given)".into(),
            y_desc: slug.clone(),
            y_max: top,
            series: vec![
                plot::Series { label: "value (median)".into(), color: (31, 119, 180), points: line(0) },
                plot::Series { label: "lower".into(), color: (150, 150, 150), points: line(1) },
                plot::Series { label: "upper".into(), color: (200, 200, 200), points: line(2) },
            ],
            marks: points
                .iter()
                .map(|(x, _)| plot::Mark { x: *x, label: short_label(&labels[*x as usize - 1]) })
                .collect(),
        };
        let name = format!("{}.{slug}.png", benchmark.replace(['/', ' '], "_"));
        plot::png(&chart, &out.join(&name)).map_err(HistoryError::Plot)?;
        written.push(name);
    }
    Ok(written)
}

/// The part of a results path that tells runs apart: its directory name.
fn short_label(path: &str) -> String {
    let p = Path::new(path);
    let dir = p.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned());
    dir.unwrap_or_else(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmf::regressions;

    #[test]
    fn the_summary_names_regressions_and_every_metric() {
        let mut base = Results::default();
        base.record("fleet/time_to_converge", Measure::FleetSeconds, &[7.0]);
        let mut now = Results::default();
        now.record("fleet/time_to_converge", Measure::FleetSeconds, &[10.0, 11.0]);
        now.record("core/manifest_verify", Measure::OpsPerSecond, &[9000.0]);
        let regs = regressions(&now, &base);
        let md = summary("otamesh bench", &now, Some(&base), &regs, &["a note".into()], &["x.png".into()]);
        assert!(md.contains("**1 regression(s):**"), "{md}");
        assert!(
            md.contains("| `fleet/time_to_converge` | seconds | 10.50 | 10.00 – 11.00 | 7.000 | 50% worse | 25% | regressed |"),
            "{md}"
        );
        assert!(
            md.contains("| `core/manifest_verify` | ops-per-second | 9000 | — | — | — | — | new |"),
            "{md}"
        );
        assert!(md.contains("- a note") && md.contains("Plots: x.png"));
    }

    #[test]
    fn history_draws_one_chart_per_metric() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (i, v) in [10.0, 12.0, 9.0].into_iter().enumerate() {
            let mut r = Results::default();
            r.record("fleet/time_to_converge", Measure::FleetSeconds, &[v, v + 1.0]);
            r.record("lan/ratio_to_https", Measure::Ratio, &[0.5]);
            let d = dir.path().join(format!("run{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("results.json"), r.to_json()).unwrap();
            paths.push(d.join("results.json"));
        }
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let written = history(&refs, dir.path()).unwrap();
        assert_eq!(written, ["fleet_time_to_converge.seconds.png", "lan_ratio_to_https.ratio.png"]);
        for w in written {
            assert_eq!(&std::fs::read(dir.path().join(w)).unwrap()[..4], b"\x89PNG");
        }
    }
}
