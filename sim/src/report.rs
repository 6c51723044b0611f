//! Run outputs: `summary.json` and `timeseries.csv`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{RunResult, STATE_NAMES};

/// The keys of `summary.json`, in this order. Times are seconds of virtual time since
/// the release was published; `null` where the thing never happened. `Default` is an
/// empty summary, used for its keys (a sweep writes the `runs.csv` header before any run).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Master seed.
    pub seed: u64,
    /// Devices in the fleet.
    pub devices: u64,
    /// Sites.
    pub sites: u64,
    /// Release size, bytes.
    pub release_bytes: u64,
    /// central, p2p or p2p-dedup.
    pub mode: String,
    /// Time until 50% of the eligible devices committed.
    pub t50_s: Option<f64>,
    /// ... 90%.
    pub t90_s: Option<f64>,
    /// ... 99%.
    pub t99_s: Option<f64>,
    /// ... all of them.
    pub t100_s: Option<f64>,
    /// Devices that heard of the release (the denominator of the shares above).
    pub eligible: u64,
    /// Devices committed on the new release at the end.
    pub committed: u64,
    /// Devices whose install or health check failed (rolled back or never activated).
    pub failed: u64,
    /// Devices that had started and were rolled back by a revoke.
    pub rolled_back: u64,
    /// Devices that never started fetching.
    pub never_started: u64,
    /// Bytes over site WAN links.
    pub wan_bytes: u64,
    /// Bytes between devices: over site LANs and `[[peering]]` links.
    pub lan_bytes: u64,
    /// Of those, bytes over `[[peering]]` links.
    pub peering_bytes: u64,
    /// Peak origin egress, bits per second.
    pub origin_peak_bps: u64,
    /// When the release was first halted (health gate breached, or an operator halt).
    pub halted_at_s: Option<f64>,
    /// When a revoke reached the fleet.
    pub revoked_at_s: Option<f64>,
    /// When the last rollback finished (devices back on the previous release).
    pub rollback_done_s: Option<f64>,
    /// Devices in the rollout's first wave.
    pub first_wave_devices: u64,
    /// Devices between fetching and health check at the halt.
    pub in_flight_at_halt: u64,
    /// Mean per-device fetch duration (starting to fetch to having every byte).
    pub fetch_mean_s: Option<f64>,
    /// Its median.
    pub fetch_p50_s: Option<f64>,
    /// Its 90th percentile.
    pub fetch_p90_s: Option<f64>,
    /// Its 99th percentile.
    pub fetch_p99_s: Option<f64>,
    /// Mean per-device install duration.
    pub install_mean_s: Option<f64>,
    /// Its median.
    pub install_p50_s: Option<f64>,
    /// Its 90th percentile.
    pub install_p90_s: Option<f64>,
    /// Its 99th percentile.
    pub install_p99_s: Option<f64>,
    /// Virtual time at which the run ended.
    pub end_s: f64,
    /// Events processed.
    pub events: u64,
    /// Wall-clock seconds the run took; the only key that differs between two runs of
    /// the same scenario and seed (`null` with `--reproducible`).
    pub wall_s: Option<f64>,
}

impl Summary {
    /// The summary of a run; `wall_s` as measured by the caller.
    pub fn of(r: &RunResult, wall_s: Option<f64>) -> Self {
        Self {
            scenario: r.scenario.clone(),
            seed: r.seed,
            devices: r.devices,
            sites: r.sites,
            release_bytes: r.release_bytes,
            mode: r.mode.to_owned(),
            t50_s: r.t_s[0],
            t90_s: r.t_s[1],
            t99_s: r.t_s[2],
            t100_s: r.t_s[3],
            eligible: r.eligible,
            committed: r.committed,
            failed: r.failed,
            rolled_back: r.rolled_back,
            never_started: r.never_started,
            wan_bytes: r.wan_bytes.round() as u64,
            lan_bytes: r.lan_bytes.round() as u64,
            peering_bytes: r.peering_bytes.round() as u64,
            origin_peak_bps: (r.origin_peak * 8.0).round() as u64,
            halted_at_s: r.halted_at_s,
            revoked_at_s: r.revoked_at_s,
            rollback_done_s: r.rollback_done_s,
            first_wave_devices: r.first_wave_devices,
            in_flight_at_halt: r.in_flight_at_halt,
            fetch_mean_s: r.fetch_s[0],
            fetch_p50_s: r.fetch_s[1],
            fetch_p90_s: r.fetch_s[2],
            fetch_p99_s: r.fetch_s[3],
            install_mean_s: r.install_s[0],
            install_p50_s: r.install_s[1],
            install_p90_s: r.install_s[2],
            install_p99_s: r.install_s[3],
            end_s: r.end_s,
            events: r.events,
            wall_s: wall_s.map(|w| (w * 1000.0).round() / 1000.0),
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Invariant: a struct of numbers, strings and options always serializes.
        let mut s = serde_json::to_string_pretty(self).expect("summary serializes");
        s.push('\n');
        s
    }
}

/// `timeseries.csv`: one row per sample: time, devices per lifecycle state, devices
/// offline, cumulative WAN and LAN bytes, share of the fleet committed.
pub fn timeseries_csv(r: &RunResult) -> String {
    let mut out = String::from("t_s");
    for name in STATE_NAMES {
        out.push(',');
        out.push_str(name);
    }
    out.push_str(",offline,wan_bytes,lan_bytes,committed_share\n");
    for s in &r.series {
        let _ = write!(out, "{}", s.t_s);
        for c in s.states {
            let _ = write!(out, ",{c}");
        }
        let share = s.states[7] as f64 / r.devices as f64;
        let _ = writeln!(out, ",{},{},{},{:.6}", s.offline, s.wan_bytes.round(), s.lan_bytes.round(), share);
    }
    out
}
