//! A fleet played as shards of whole sites on threads (`sim.shards`) against the same
//! fleet played as one: the same rollout, reproducibly, and refused where sites are
//! coupled by more than reports.

use otamesh_sim::report::{Summary, timeseries_csv};
use otamesh_sim::{RunResult, Scenario, run};

const BASE: &str = r#"
[sim]
duration_s = 86400
[fleet]
devices = 2000
sites = 20
site_size = "skewed"
utc_offsets_min = [0, 120]
[[class]]
name = "gateway"
share = 70
install_s = [60, 120]
reboot_s = [20, 40]
health_check_s = 30
downlink_mbps = 100
uplink_mbps = 20
[[class]]
name = "camera"
share = 30
install_s = [30, 60]
reboot_s = 15
health_check_s = 20
downlink_mbps = 20
uplink_mbps = 5
[release]
bytes = 16_000_000
piece_bytes = 2_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 50
site_lan_mbps = 1000
latency_ms = 20
[announce]
hop_delay_s = 1
fanout = 4
[directives]
report_delay_s = 2
[rollout]
"#;

fn scenario(sets: &[&str]) -> Scenario {
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    Scenario::parse("shards.toml", BASE, &sets).expect("test scenario is valid")
}

fn simulate(sets: &[&str], seed: u64) -> RunResult {
    run(&scenario(sets), seed, &mut |_| {})
}

/// The summary without the figures a shard count changes by design: events (every
/// shard handles every report and its own samples) and wall time.
fn outcome(r: &RunResult) -> String {
    Summary::of(r, None)
        .to_json()
        .lines()
        .filter(|l| !l.contains("\"events\"") && !l.contains("\"wall_s\"") && !l.contains("events_per_s"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same samples at the same times: the same counts, and the same bytes but for
/// the rounding of sums taken in another order (a shard's bytes are summed, then the
/// shards').
fn assert_same_series(one: &RunResult, many: &RunResult, what: &str) {
    assert_eq!(one.series.len(), many.series.len(), "{what}: samples");
    for (a, b) in one.series.iter().zip(&many.series) {
        assert_eq!((a.t_s, a.states, a.offline), (b.t_s, b.states, b.offline), "{what}");
        for (x, y) in [(a.wan_bytes, b.wan_bytes), (a.lan_bytes, b.lan_bytes)] {
            assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{what} at {} s: {x} vs {y} bytes", a.t_s);
        }
    }
}

#[test]
fn shards_play_the_same_rollout_as_one_world() {
    // A bad release for cameras stopped by a canary wave and a gate: the gate counts
    // reports from every site, so every shard must hear every other shard's reports
    // in time; then a revoke. One world, two shards and three shards agree on every
    // count, time and byte.
    let sets = [
        "class.1.health_fail=1.0",
        "rollout.waves=[{percent=10}, {percent=100, after_s=1800, require_success=0.5, require_reports=20}]",
        "rollout.gate={max_failure_ratio=0.1, min_reports=20}",
        "directives.revoke_after_halt_s=300",
    ];
    let one = simulate(&sets, 7);
    assert!(
        one.halted_at_s.is_some() && one.rolled_back > 0,
        "the gate halts and the revoke rolls back: {one:?}"
    );
    for shards in ["sim.shards=2", "sim.shards=3"] {
        let many = simulate(&[&sets[..], &[shards]].concat(), 7);
        assert_eq!(outcome(&one), outcome(&many), "{shards}");
        assert_same_series(&one, &many, shards);
        assert!(many.events > one.events, "{shards}: each shard handles every report itself");
    }
}

#[test]
fn a_big_bang_in_shards_moves_the_same_bytes_at_the_same_times() {
    let one = simulate(&[], 3);
    let two = simulate(&["sim.shards=2"], 3);
    assert_eq!(one.committed, 2000);
    assert_eq!(outcome(&one), outcome(&two));
    assert_eq!(
        (one.wan_bytes, one.lan_bytes, one.origin_peak),
        (two.wan_bytes, two.lan_bytes, two.origin_peak)
    );
}

#[test]
fn sharded_runs_are_reproducible() {
    let sets =
        ["sim.shards=3", "churn.mean_online_s=1800", "churn.mean_offline_s=300", "class.1.health_fail=0.2"];
    let a = simulate(&sets, 11);
    let b = simulate(&sets, 11);
    assert_eq!(Summary::of(&a, None).to_json(), Summary::of(&b, None).to_json());
    assert_eq!(timeseries_csv(&a), timeseries_csv(&b));
    assert!(a.committed > 0);
    // Churn keeps every shard busy after its own devices are done (a device back online
    // may still report), and the run ends where one world ends it.
    let one = simulate(&sets[1..], 11);
    assert_eq!(outcome(&one), outcome(&a));
    assert_same_series(&one, &a, "churned, 3 shards");
}

#[test]
fn shards_are_refused_where_sites_share_more_than_reports() {
    for (sets, says) in [
        (&["sim.shards=2", "network.origin_egress_mbps=1000"][..], "origin_egress_mbps"),
        (&["sim.shards=2", "directives.report_delay_s=0"][..], "report_delay_s"),
        (&["sim.shards=21"][..], "fleet.sites"),
        (&["sim.shards=0"][..], "between 1"),
    ] {
        let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
        let err = Scenario::parse("shards.toml", BASE, &sets).expect_err("refused").to_string();
        assert!(err.contains("sim.shards") && err.contains(says), "{sets:?}: {err}");
    }
}
