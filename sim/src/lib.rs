//! The otamesh simulator: deterministic discrete-event rollouts over a modelled fleet.
//!
//! It drives the same [`otamesh_core`] device machine
//! ([`Device`](otamesh_core::device::Device)) that the real node runs, so what
//! it says about a rollout strategy is said about the code devices run. The network is
//! flow-level with max-min fair sharing ([`net`]); announcements spread by random push
//! or push-pull gossip ([`gossip`]) against the online and offline periods the rest
//! of the run follows ([`churn`]); named links and paths, open systems (arrivals,
//! per-device release sizes) and per-device fetch and install durations come from the
//! scenario ([`scenario`]); the fleet is struct-of-arrays
//! ([`engine`]); scenarios are TOML ([`scenario`]); outputs are JSON, CSV and plots
//! ([`report`], [`plot`]); [`sweep`] runs many seeds and parameter grids in parallel
//! and summarises them ([`stats`]); [`trace`] records what chosen devices were fed and
//! answered. `docs/simulator.md` describes the model and its error bounds.
//!
//! The same scenario and seed give a byte-identical `summary.json` (apart from the
//! measured `wall_s`, which `--reproducible` writes as `null`).

pub mod churn;
pub mod cli;
pub mod engine;
pub mod gossip;
pub mod net;
pub mod owner;
pub mod pieces;
pub mod plot;
pub mod queue;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod stats;
pub mod sweep;
pub mod trace;

pub use engine::{RunResult, run};
pub use scenario::{Scenario, ScenarioError};
