//! Plots (to come).
use std::path::Path;

use crate::cli::SimError;
use crate::engine::RunResult;

/// One labelled convergence curve for `compare`.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend label.
    pub label: String,
    /// (time s, committed share).
    pub points: Vec<(f64, f64)>,
    /// The table row: t50, t90, t100, WAN bytes.
    pub t_s: [Option<f64>; 4],
    /// WAN bytes.
    pub wan_bytes: f64,
}

impl Curve {
    /// The curve of a run.
    pub fn of(label: &str, r: &RunResult) -> Self {
        let points = r.series.iter().map(|s| (s.t_s, s.states[7] as f64 / r.devices as f64)).collect();
        Self { label: label.to_owned(), points, t_s: r.t_s, wan_bytes: r.wan_bytes }
    }
}

/// convergence plot.
pub fn convergence(_r: &RunResult, _path: &Path) -> Result<(), SimError> {
    Ok(())
}
/// wan plot.
pub fn wan(_r: &RunResult, _path: &Path) -> Result<(), SimError> {
    Ok(())
}
/// compare plot.
pub fn compare(_c: &[Curve], _path: &Path) -> Result<(), SimError> {
    Ok(())
}
