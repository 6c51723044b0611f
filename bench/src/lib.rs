//! The benchmark harness behind `otamesh bench`: a fixed suite over a real fleet on
//! loopback, the LAN path against HTTPS, the simulator's scenarios and the core's hot
//! paths, written as Bencher Metric Format, a Markdown summary and plots, and compared
//! with a baseline. `docs/benchmarks.md` lists every metric.
//!
//! **Goals**: figures a CI job can keep, compare and plot over commits, from a suite
//! that runs as is (`--quick` within 5 minutes on 2 cores in a release build).
//!
//! **Non-goals**: timing targets in the test suite (the tests run this harness only in
//! its tiny size and check the shape of what it writes), and statistics beyond median
//! and range.

pub mod bmf;
mod calibrate;
mod micro;
pub mod report;
mod rollout;
mod simulation;
mod site;
pub mod suite;
mod transfer;

pub use bmf::{Measure, Metric, Regression, Results, regressions};
pub use suite::{Options, Outcome, Progress, Size, SuiteError};
