//! Plots: convergence (PNG and SVG), WAN bytes, and the comparison of several runs.
//!
//! Text is rendered with DejaVu Sans embedded in the binary (`sim/assets/`, Bitstream
//! Vera license, see `DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so
//! plots need no system fonts or fontconfig.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
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

type DrawResult = Result<(), String>;

#[derive(Debug, Clone, Copy)]
enum Figure<'a> {
    Convergence(&'a RunResult),
    Wan(&'a RunResult),
    Compare(&'a [Curve]),
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, figure: Figure<'_>) -> DrawResult {
    match figure {
        Figure::Convergence(r) => draw_convergence(root, r),
        Figure::Wan(r) => draw_wan(root, r),
        Figure::Compare(c) => draw_compare(root, c),
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
