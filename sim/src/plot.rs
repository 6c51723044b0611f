//! Plots: convergence (PNG and SVG), WAN bytes, the comparison of several runs, and a
//! sweep's estimates with their intervals and its distributions per grid point.
//!
//! Text is rendered with DejaVu Sans embedded in the binary (`sim/assets/`, Bitstream
//! Vera license, see `DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so
//! plots need no system fonts or fontconfig.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::cli::SimError;
use crate::engine::RunResult;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1200, 700);

/// One labelled convergence curve for `compare`.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend label.
    pub label: String,
    /// (time s, committed share in percent).
    pub points: Vec<(f64, f64)>,
    /// t50, t90, t99, t100.
    pub t_s: [Option<f64>; 4],
    /// WAN bytes.
    pub wan_bytes: f64,
    /// Devices failed.
    pub failed: u64,
}

impl Curve {
    /// The curve of a run.
    pub fn of(label: &str, r: &RunResult) -> Self {
        Self {
            label: label.to_owned(),
            points: committed_share(r),
            t_s: r.t_s,
            wan_bytes: r.wan_bytes,
            failed: r.failed,
        }
    }
}

/// `convergence.png` / `convergence.svg` (by extension): share of the fleet committed
/// (and in progress, and rolled back) over time, waves and halt marked.
pub fn convergence(r: &RunResult, path: &Path) -> Result<(), SimError> {
    draw(path, Figure::Convergence(r))
}

/// `wan.png`: cumulative WAN bytes over time.
pub fn wan(r: &RunResult, path: &Path) -> Result<(), SimError> {
    draw(path, Figure::Wan(r))
}

/// `compare.png`: several runs' convergence on one plot, with a table under it.
pub fn compare(curves: &[Curve], path: &Path) -> Result<(), SimError> {
    draw(path, Figure::Compare(curves))
}

/// An estimate at one value of a sweep's x grid key, with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The grid value (or its position, on a categorical axis).
    pub x: f64,
    /// The mean, or the proportion.
    pub y: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
}

/// One line of a sweep plot: the grid points that agree on every grid key but the x one.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// Legend label: the other grid keys' values (empty with a single grid key).
    pub label: String,
    /// Estimates in increasing x.
    pub points: Vec<Estimate>,
}

/// A metric (or an outcome's proportion) against one grid key, with interval bands.
#[derive(Debug, Clone, PartialEq)]
pub struct BandChart {
    /// Title.
    pub title: String,
    /// X axis description: the grid key.
    pub x_desc: String,
    /// Y axis description.
    pub y_desc: String,
    /// Labels of a categorical x axis (x = 0, 1, ...); `None` for numeric grid values.
    pub categories: Option<Vec<String>>,
    /// The lines.
    pub bands: Vec<Band>,
}

/// The distribution of one metric at one grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// The grid point.
    pub label: String,
    /// Runs in which the metric had no value (a time never reached).
    pub missing: u64,
    /// min, p5, p25, p50, p75, p95, max; `None` when no run had a value.
    pub quantiles: Option<[f64; 7]>,
}

/// Box plots of one metric, one per grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct SpreadChart {
    /// Title.
    pub title: String,
    /// Y axis description.
    pub y_desc: String,
    /// One box per grid point.
    pub spreads: Vec<Spread>,
}

/// A sweep's metric against a grid key: mean (or proportion) lines, 95% interval bands
/// and error bars.
pub fn bands(chart: &BandChart, path: &Path) -> Result<(), SimError> {
    draw(path, Figure::Bands(chart))
}

/// A sweep's distribution of one metric per grid point: boxes from the 25th to the 75th
/// percentile, the median, whiskers from the 5th to the 95th, dots at min and max.
pub fn spreads(chart: &SpreadChart, path: &Path) -> Result<(), SimError> {
    draw(path, Figure::Spreads(chart))
}

type DrawResult = Result<(), String>;

#[derive(Debug, Clone, Copy)]
enum Figure<'a> {
    Convergence(&'a RunResult),
    Wan(&'a RunResult),
    Compare(&'a [Curve]),
    Bands(&'a BandChart),
    Spreads(&'a SpreadChart),
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, figure: Figure<'_>) -> DrawResult {
    match figure {
        Figure::Convergence(r) => draw_convergence(root, r),
        Figure::Wan(r) => draw_wan(root, r),
        Figure::Compare(c) => draw_compare(root, c),
        Figure::Bands(c) => draw_bands(root, c),
        Figure::Spreads(c) => draw_spreads(root, c),
    }
}

/// Registers the embedded font as plotters' `sans-serif`, once per process. Every
/// otamesh plot (the simulator's, and the fleet harness's) draws with it, so the font
/// is embedded once, here.
pub fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // Invariant: the embedded font is a valid TrueType file.
        register_font("sans-serif", FontStyle::Normal, FONT).unwrap_or_else(|_| panic!("embedded font"));
    });
}

fn draw(path: &Path, figure: Figure<'_>) -> Result<(), SimError> {
    register_fonts();
    let fail = |reason: String| SimError::Plot { path: path.to_owned(), reason };
    if path.extension().is_some_and(|e| e == "svg") {
        render(SVGBackend::new(path, SIZE).into_drawing_area(), figure).map_err(fail)
    } else {
        render(BitMapBackend::new(path, SIZE).into_drawing_area(), figure).map_err(fail)
    }
}

fn committed_share(r: &RunResult) -> Vec<(f64, f64)> {
    r.series.iter().map(|s| (s.t_s, 100.0 * s.states[7] as f64 / r.devices as f64)).collect()
}

/// Seconds, minutes or hours, whichever reads best for a run of `end_s`.
fn time_unit(end_s: f64) -> (f64, &'static str) {
    if end_s > 4.0 * 3600.0 {
        (3600.0, "hours")
    } else if end_s > 600.0 {
        (60.0, "minutes")
    } else {
        (1.0, "seconds")
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw_convergence<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let end = r.series.last().map_or(1.0, |s| s.t_s).max(1.0);
    let (unit, unit_name) = time_unit(end);
    let title = format!("{}: share of {} devices committed ({})", r.scenario, r.devices, r.mode);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end / unit, 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("time since release ({unit_name})"))
        .y_desc("share of fleet (%)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    let share = |f: &dyn Fn(&[u64; 10]) -> u64| -> Vec<(f64, f64)> {
        r.series.iter().map(|s| (s.t_s / unit, 100.0 * f(&s.states) as f64 / r.devices as f64)).collect()
    };
    let series = [
        ("committed", RGBColor(31, 119, 180), share(&|c| c[7])),
        ("in progress (fetching to health check)", RGBColor(255, 127, 14), share(&|c| c[2..=6].iter().sum())),
        ("rolled back (failed, or revoked)", RGBColor(214, 39, 40), share(&|c| c[8])),
    ];
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    let mut marks: Vec<(f64, String, RGBColor)> = r
        .wave_starts_s
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, format!("wave {}", i + 1), RGBColor(90, 90, 90)))
        .collect();
    if let Some(t) = r.halted_at_s {
        marks.push((t, "halt".into(), RGBColor(214, 39, 40)));
    }
    if let Some(t) = r.revoked_at_s {
        marks.push((t, "revoke".into(), RGBColor(148, 103, 189)));
    }
    for (i, (t, label, color)) in marks.into_iter().enumerate() {
        if t > end {
            continue;
        }
        let x = t / unit;
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, 100.0)], color.stroke_width(2))))
            .map_err(err)?;
        let y = 96.0 - 5.0 * (i % 4) as f64;
        // Near the right edge the label goes on the left of its line.
        let (text, pos) = if t > 0.9 * end {
            (format!("{label} "), Pos::new(HPos::Right, VPos::Center))
        } else {
            (format!(" {label}"), Pos::new(HPos::Left, VPos::Center))
        };
        let style = ("sans-serif", 16).into_font().color(&color).pos(pos);
        chart.draw_series(std::iter::once(Text::new(text, (x, y), style))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn draw_wan<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let end = r.series.last().map_or(1.0, |s| s.t_s).max(1.0);
    let (unit, unit_name) = time_unit(end);
    let gib = f64::from(1u32 << 30);
    let top = (r.wan_bytes / gib).max(1e-3) * 1.1;
    let title = format!("{}: WAN bytes ({}, total {:.2} GiB)", r.scenario, r.mode, r.wan_bytes / gib);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..end / unit, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("time since release ({unit_name})"))
        .y_desc("cumulative WAN GiB")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    let points = r.series.iter().map(|s| (s.t_s / unit, s.wan_bytes / gib));
    chart.draw_series(LineSeries::new(points, RGBColor(44, 160, 44).stroke_width(3))).map_err(err)?;
    root.present().map_err(err)
}

fn draw_compare<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, curves: &[Curve]) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let table_h = 40 + 26 * curves.len() as u32;
    let (upper, lower) = root.split_vertically(SIZE.1.saturating_sub(table_h).max(300));
    let end = curves.iter().filter_map(|c| c.points.last().map(|p| p.0)).fold(1.0, f64::max);
    let (unit, unit_name) = time_unit(end);
    let mut chart = ChartBuilder::on(&upper)
        .caption("share of fleet committed", ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end / unit, 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("time since release ({unit_name})"))
        .y_desc("committed (%)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = c.points.iter().map(|&(t, y)| (t / unit, y));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let t = |x: Option<f64>| x.map_or("never".to_owned(), |v| format!("{v:.0} s"));
    let style = ("sans-serif", 17).into_font();
    let columns = [20, 520, 660, 800, 940, 1080];
    let header = ["run", "t50", "t90", "t100", "WAN GiB", "failed"];
    for (x, h) in columns.iter().zip(header) {
        lower.draw_text(h, &style.clone().style(FontStyle::Normal).color(&BLACK), (*x, 8)).map_err(err)?;
    }
    for (row, c) in curves.iter().enumerate() {
        let y = 36 + 26 * row as i32;
        let color = Palette99::pick(row).to_rgba();
        let label: String = c.label.chars().take(60).collect();
        let cells = [
            label,
            t(c.t_s[0]),
            t(c.t_s[1]),
            t(c.t_s[3]),
            format!("{:.2}", c.wan_bytes / f64::from(1u32 << 30)),
            c.failed.to_string(),
        ];
        for (x, cell) in columns.iter().zip(cells) {
            lower.draw_text(&cell, &style.clone().color(&color), (*x, y)).map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Widens `[lo, hi]` by `share` of its span on each side, or around a single value.
fn pad(lo: f64, hi: f64, share: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span > 0.0 {
        return (lo - span * share, hi + span * share);
    }
    let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
    (lo - d, hi + d)
}

/// An axis label: SI suffixes for large values, a few significant digits otherwise.
fn compact(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
    };
    for (scale, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")] {
        if a >= scale {
            let v = if suffix == "k" { v / 1e3 } else { v / scale };
            return trim(format!("{v:.2}")) + suffix;
        }
    }
    if a == 0.0 {
        return "0".into();
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    trim(format!("{v:.decimals$}"))
}

/// Says so in the middle of a sweep chart that has nothing to draw (a time no run
/// reached), rather than leaving an empty frame.
fn empty_note<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    at: (f64, f64),
) -> DrawResult {
    let style =
        ("sans-serif", 22).into_font().color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Center, VPos::Center));
    chart.draw_series(std::iter::once(Text::new("no run had a value", at, style))).map_err(err)?;
    Ok(())
}

/// The label of a categorical axis position, or nothing between positions.
fn category(categories: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    categories.get(i as usize).cloned().unwrap_or_default()
}

fn draw_bands<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &BandChart) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let points = || c.bands.iter().flat_map(|b| b.points.iter());
    let (x0, x1, y0, y1) = points()
        .fold((f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY), |(x0, x1, y0, y1), e| {
            (x0.min(e.x), x1.max(e.x), y0.min(e.lo), y1.max(e.hi))
        });
    let (x0, x1) = match &c.categories {
        Some(labels) => (-0.5, labels.len().max(1) as f64 - 0.5),
        None => pad(x0, x1, 0.05),
    };
    let (y0, y1) = pad(y0, y1, 0.08);
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let labels = c.categories.clone().unwrap_or_default();
    let x_format = |x: &f64| if c.categories.is_some() { category(&labels, *x) } else { compact(*x) };
    let mut mesh = chart.configure_mesh();
    if let Some(categories) = &c.categories {
        mesh.x_labels(categories.len().max(1));
    }
    mesh.x_desc(&c.x_desc)
        .y_desc(&c.y_desc)
        .x_label_formatter(&x_format)
        .y_label_formatter(&|y| compact(*y))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    if c.bands.iter().all(|b| b.points.is_empty()) {
        empty_note(&mut chart, ((x0 + x1) / 2.0, (y0 + y1) / 2.0))?;
    }
    for (i, band) in c.bands.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut outline: Vec<(f64, f64)> = band.points.iter().map(|e| (e.x, e.hi)).collect();
        outline.extend(band.points.iter().rev().map(|e| (e.x, e.lo)));
        chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).map_err(err)?;
        let bars = band
            .points
            .iter()
            .map(|e| PathElement::new(vec![(e.x, e.lo), (e.x, e.hi)], color.stroke_width(2)));
        chart.draw_series(bars).map_err(err)?;
        let dots = band.points.iter().map(|e| Circle::new((e.x, e.y), 4, color.filled()));
        chart.draw_series(dots).map_err(err)?;
        let line = chart
            .draw_series(LineSeries::new(band.points.iter().map(|e| (e.x, e.y)), color.stroke_width(3)))
            .map_err(err)?;
        if !band.label.is_empty() {
            line.label(band.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
    }
    if c.bands.iter().any(|b| !b.label.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn draw_spreads<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &SpreadChart) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let (y0, y1) = c
        .spreads
        .iter()
        .filter_map(|s| s.quantiles)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), q| (lo.min(q[0]), hi.max(q[6])));
    let (y0, y1) = pad(y0, y1, 0.08);
    let k = c.spreads.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5..k as f64 - 0.5, y0..y1)
        .map_err(err)?;
    let labels: Vec<String> = c
        .spreads
        .iter()
        .map(|s| if s.missing > 0 { format!("{} ({} never)", s.label, s.missing) } else { s.label.clone() })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(k)
        .x_desc("grid point")
        .y_desc(&c.y_desc)
        .x_label_formatter(&|x| category(&labels, *x))
        .y_label_formatter(&|y| compact(*y))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(err)?;
    if c.spreads.iter().all(|s| s.quantiles.is_none()) {
        empty_note(&mut chart, ((k as f64 - 1.0) / 2.0, (y0 + y1) / 2.0))?;
    }
    let color = RGBColor(31, 119, 180);
    let w = 0.3;
    for (i, s) in c.spreads.iter().enumerate() {
        let Some([min, p5, p25, p50, p75, p95, max]) = s.quantiles else { continue };
        let x = i as f64;
        let lines = [
            vec![(x, p5), (x, p25)],
            vec![(x, p75), (x, p95)],
            vec![(x - w / 2.0, p5), (x + w / 2.0, p5)],
            vec![(x - w / 2.0, p95), (x + w / 2.0, p95)],
        ];
        chart
            .draw_series(lines.into_iter().map(|l| PathElement::new(l, color.stroke_width(2))))
            .map_err(err)?;
        chart
            .draw_series([
                Rectangle::new([(x - w, p25), (x + w, p75)], color.mix(0.25).filled()),
                Rectangle::new([(x - w, p25), (x + w, p75)], color.stroke_width(2)),
            ])
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x - w, p50), (x + w, p50)],
                RGBColor(214, 39, 40).stroke_width(3),
            )))
            .map_err(err)?;
        chart.draw_series([min, max].map(|y| Circle::new((x, y), 3, color.filled()))).map_err(err)?;
    }
    root.present().map_err(err)
}
