//! The simulator against closed forms, the health gate, and itself (determinism).

use otamesh_sim::report::{Summary, timeseries_csv};
use otamesh_sim::{RunResult, Scenario, run};

/// A small fleet; tests override what they need with `--set`-style strings.
const BASE: &str = r#"
[sim]
duration_s = 86400
[fleet]
devices = 400
sites = 8
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
piece_bytes = 1_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 50
site_lan_mbps = 1000
latency_ms = 20
[announce]
hop_delay_s = 1
fanout = 4
[rollout]
"#;

fn scenario(text: &str, sets: &[&str]) -> Scenario {
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    Scenario::parse("test.toml", text, &sets).expect("test scenario is valid")
}

fn simulate(text: &str, sets: &[&str], seed: u64) -> RunResult {
    run(&scenario(text, sets), seed, &mut |_| {})
}

#[test]
fn same_seed_same_bytes() {
    // Everything at once: waves, a window, churn, a delta, polling, a gate.
    let sets = [
        "rollout.waves=[{percent=10}, {percent=100, after_s=1800, require_success=0.9, require_reports=5}]",
        "rollout.window={start=\"01:00\", minutes=240}",
        "rollout.gate={max_failure_ratio=0.5, min_reports=10}",
        "churn.mean_online_s=1800",
        "churn.mean_offline_s=300",
        "release.delta_fraction=0.25",
        "announce.mode=\"poll\"",
        "announce.poll_interval_s=600",
        "class.1.install_fail=0.05",
        "class.0.die_during_install=0.1",
    ];
    let a = simulate(BASE, &sets, 42);
    let b = simulate(BASE, &sets, 42);
    assert_eq!(Summary::of(&a, None).to_json(), Summary::of(&b, None).to_json());
    assert_eq!(timeseries_csv(&a), timeseries_csv(&b));
    assert!(a.committed > 0, "the run did something: {a:?}");
    // A different seed is a different fleet, so the comparison above could fail.
    let c = simulate(BASE, &sets, 43);
    assert_ne!(Summary::of(&a, None).to_json(), Summary::of(&c, None).to_json());
}

/// One site, zero latencies and durations, device links far faster than the WAN.
const ONE_SITE: &[&str] = &[
    "fleet.devices=10",
    "fleet.sites=1",
    "class=[{name=\"fast\", share=100, install_s=0, reboot_s=0, health_check_s=0, downlink_mbps=100000, uplink_mbps=100000}]",
    "release.bytes=10_000_000",
    "release.piece_bytes=1_000_000",
    "network.mode=\"central\"",
    "network.site_wan_mbps=80",
    "network.latency_ms=0",
    "announce.hop_delay_s=0",
];

#[test]
fn central_one_site_finishes_at_n_s_over_w() {
    // N = 10 devices, S = 10 MB, W = 80 Mbit/s = 10 MB/s: all finish at N*S/W = 10 s.
    let r = simulate(BASE, ONE_SITE, 1);
    assert_eq!(r.committed, 10);
    for t in r.t_s {
        let t = t.expect("everyone commits");
        assert!((t - 10.0).abs() < 1e-5, "t = {t}, expected 10 s");
    }
    assert_eq!(r.wan_bytes, 100_000_000.0);
}

#[test]
fn central_wan_bytes_are_devices_times_release() {
    let r = simulate(BASE, &["network.mode=\"central\""], 5);
    assert_eq!(r.committed, 400);
    assert_eq!(r.wan_bytes, 400.0 * 16_000_000.0);
    assert_eq!(r.lan_bytes, 0.0);
}

#[test]
fn p2p_dedup_wan_bytes_are_sites_times_release() {
    for seed in 1..4 {
        let r = simulate(BASE, &[], seed);
        assert_eq!(r.committed, 400);
        let expected = 8.0 * 16_000_000.0;
        // Within one piece per site (an owner leaving mid-piece); without churn, exact.
        assert!((r.wan_bytes - expected).abs() <= 8.0 * 1_000_000.0, "wan {}", r.wan_bytes);
        assert_eq!(r.wan_bytes, expected);
        assert_eq!(r.lan_bytes, (400.0 - 8.0) * 16_000_000.0);
    }
}

#[test]
fn p2p_dedup_wan_stays_near_sites_times_release_under_churn() {
    let r = simulate(BASE, &["churn.mean_online_s=600", "churn.mean_offline_s=120"], 9);
    let expected = 8.0 * 16_000_000.0;
    assert!(r.wan_bytes >= expected, "every site needs the release once: {}", r.wan_bytes);
    // Aborted owners lose at most the piece in flight each time; far below central.
    assert!(r.wan_bytes < 2.0 * expected, "wan {}", r.wan_bytes);
    assert_eq!(r.committed, 400, "offline devices resume when back");
}

#[test]
fn plain_p2p_costs_more_wan_than_dedup() {
    let dedup = simulate(BASE, &[], 2);
    let p2p = simulate(BASE, &["network.mode=\"p2p\""], 2);
    assert!(p2p.wan_bytes > dedup.wan_bytes, "p2p {} vs dedup {}", p2p.wan_bytes, dedup.wan_bytes);
    assert_eq!(p2p.committed, 400);
}

#[test]
fn a_release_in_more_than_64_pieces_moves_the_same_bytes_and_swarms_sooner() {
    // 16 MB in 256 pieces of 62.5 kB (wide piece sets) against 16 pieces of 1 MB.
    let fine = simulate(BASE, &["release.piece_bytes=62_500"], 4);
    let coarse = simulate(BASE, &[], 4);
    assert_eq!(fine.committed, 400);
    assert_eq!(fine.wan_bytes, 8.0 * 16_000_000.0, "each site fetches the release once");
    assert_eq!(fine.lan_bytes, (400.0 - 8.0) * 16_000_000.0);
    // Store and forward: a piece is passed on only once whole, so finer pieces reach the
    // swarm sooner.
    let (t50_fine, t50_coarse) = (fine.t_s[0].expect("t50"), coarse.t_s[0].expect("t50"));
    assert!(t50_fine < t50_coarse, "t50 {t50_fine} s with 256 pieces, {t50_coarse} s with 16");
    for mode in ["p2p", "central"] {
        let r = simulate(BASE, &[&format!("network.mode=\"{mode}\""), "release.piece_bytes=62_500"], 4);
        assert_eq!(r.committed, 400, "{mode}");
    }
    // A delta of 1,024 pieces: the half already on the devices is not fetched.
    let delta = ["network.mode=\"central\"", "release.piece_bytes=15_625", "release.delta_fraction=0.5"];
    assert_eq!(simulate(BASE, &delta, 3).wan_bytes, 400.0 * 8_000_000.0);
}

#[test]
fn delta_fetches_only_missing_pieces() {
    let r = simulate(BASE, &["network.mode=\"central\"", "release.delta_fraction=0.5"], 3);
    assert_eq!(r.wan_bytes, 400.0 * 8_000_000.0);
}

const CANARY: &[&str] = &[
    "fleet.devices=2000",
    "fleet.sites=20",
    "class.1.health_fail=1.0",
    "rollout.waves=[{percent=5}, {percent=100, after_s=3600}]",
    "rollout.gate={max_failure_ratio=0.1, min_reports=10}",
];

#[test]
fn canary_and_gate_stop_a_bad_release() {
    let r = simulate(BASE, CANARY, 11);
    let halted = r.halted_at_s.expect("the gate halts the release");
    assert!(halted < 3600.0, "halted in the first wave, at {halted} s");
    assert!(r.failed > 0);
    // Failures stay within the first wave plus what was in flight at the halt; far
    // below the camera class (about 600 devices) a big bang would have broken.
    assert!(r.failed <= r.first_wave_devices + r.in_flight_at_halt, "{r:?}");
    assert!(r.failed < 100, "failed {}", r.failed);
    assert!(r.never_started > 1800, "the second wave never starts: {}", r.never_started);
    // Without the gate the same release breaks every camera.
    let no_gate = simulate(BASE, &[CANARY, &["rollout.gate={max_failure_ratio=1.0}"]].concat(), 11);
    assert!(no_gate.failed > 500, "failed without a gate {}", no_gate.failed);
}

#[test]
fn revoke_after_halt_rolls_everyone_back() {
    let r = simulate(BASE, &[CANARY, &["directives.revoke_after_halt_s=600"]].concat(), 11);
    let halted = r.halted_at_s.expect("halted");
    let revoked = r.revoked_at_s.expect("revoked");
    assert!((revoked - halted - 601.0).abs() < 1e-6, "revoke 600 s after the halt plus 1 s delay");
    assert_eq!(r.committed, 0, "no device keeps the revoked release");
    assert!(r.rolled_back > 0);
    assert!(r.rollback_done_s.expect("rollbacks happened") >= revoked);
}

#[test]
fn emergency_skips_the_waves() {
    let sets = [
        "rollout.waves=[{percent=5}, {percent=100, after_s=36000}]",
        "rollout.skip_waves=[\"emergency\"]",
        "release.kind=\"emergency\"",
    ];
    let r = simulate(BASE, &sets, 4);
    assert!(r.t_s[3].expect("all commit") < 36000.0, "{:?}", r.t_s);
    let normal = simulate(BASE, &sets[..1], 4);
    assert!(normal.t_s[3].expect("all commit") > 36000.0);
}

#[test]
fn maintenance_window_holds_devices_until_it_opens() {
    // Window 03:00-04:00 local; sites are at UTC+0 or UTC+2, the release at 00:00 UTC:
    // nobody may start before 01:00 UTC (03:00 at UTC+2).
    let r = simulate(BASE, &["rollout.window={start=\"03:00\", minutes=60}"], 6);
    let first = r.series.iter().find(|s| s.states[2..=8].iter().sum::<u64>() > 0).expect("some start");
    assert!(first.t_s >= 3600.0, "first start at {} s", first.t_s);
    assert_eq!(r.committed, 400);
}

#[test]
fn site_concurrency_limit_is_respected() {
    let r = simulate(BASE, &["rollout.max_concurrent_per_site=2"], 8);
    assert_eq!(r.committed, 400);
    for s in &r.series {
        assert!(s.states[4] <= 2 * 8, "at most 2 installing per site, 8 sites: {}", s.states[4]);
    }
}
