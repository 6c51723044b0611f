//! The plots of fleets: line charts over time with labelled vertical marks, as PNG.
//! The demo's convergence and rollback charts, the benchmarks' fleet and simulator
//! curves and the charts of a metric across commits are all drawn here.
//!
//! **Goals**: one chart type that any fleet timeline maps onto, readable without a
//! legend lookup (marks carry their own labels), no system fonts needed.
//!
//! **Non-goals**: the simulator's own figures (`otamesh_sim::plot`, which also owns
//! the one embedded font that both use, via [`otamesh_sim::plot::register_fonts`]).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const SIZE: (u32, u32) = (1200, 650);

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Red, green, blue.
    pub color: (u8, u8, u8),
    /// (x, y) in order of x.
    pub points: Vec<(f64, f64)>,
}

/// A labelled vertical line, e.g. "wave 2 opens".
#[derive(Debug, Clone)]
pub struct Mark {
    /// Where on the x axis.
    pub x: f64,
    /// Its label.
    pub label: String,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Caption.
    pub title: String,
    /// X axis description.
    pub x_desc: String,
    /// Y axis description.
    pub y_desc: String,
    /// Top of the y axis (the bottom is 0).
    pub y_max: f64,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical marks.
    pub marks: Vec<Mark>,
}

/// Draws `chart` into the PNG file `path`; the error is a one-line reason.
pub fn png(chart: &Chart, path: &Path) -> Result<(), String> {
    otamesh_sim::plot::register_fonts();
    draw(chart, BitMapBackend::new(path, SIZE).into_drawing_area())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn draw<DB: DrawingBackend>(
    chart: &Chart,
    root: DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let x_end = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(chart.marks.iter().map(|m| m.x))
        .fold(1.0_f64, f64::max);
    let mut c = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_end * 1.02, 0.0..chart.y_max)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc(chart.x_desc.as_str())
        .y_desc(chart.y_desc.as_str())
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(err)?;
    for s in &chart.series {
        let color = RGBColor(s.color.0, s.color.1, s.color.2);
        c.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(3)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    let grey = RGBColor(100, 100, 100);
    for (i, m) in chart.marks.iter().enumerate() {
        c.draw_series(std::iter::once(PathElement::new(
            vec![(m.x, 0.0), (m.x, chart.y_max)],
            grey.stroke_width(1),
        )))
        .map_err(err)?;
        // Labels step down so that marks close together stay readable; near the right
        // edge a label goes on the left of its line.
        let y = chart.y_max * (0.97 - 0.06 * (i % 5) as f64);
        let (text, pos) = if m.x > 0.8 * x_end {
            (format!("{} ", m.label), Pos::new(HPos::Right, VPos::Center))
        } else {
            (format!(" {}", m.label), Pos::new(HPos::Left, VPos::Center))
        };
        let style = ("sans-serif", 15).into_font().color(&grey).pos(pos);
        c.draw_series(std::iter::once(Text::new(text, (m.x, y), style))).map_err(err)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let chart = Chart {
            title: "t".into(),
            x_desc: "x".into(),
            y_desc: "y".into(),
            y_max: 100.0,
            series: vec![Series {
                label: "a".into(),
                color: (1, 2, 3),
                points: vec![(0.0, 0.0), (5.0, 100.0)],
            }],
            marks: vec![Mark { x: 2.0, label: "m".into() }],
        };
        png(&chart, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
