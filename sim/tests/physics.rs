//! The simulator never beats physics.
//!
//! Every device has one downlink and one uplink that all its flows share, and a holder
//! serves `upload_slots` peers in all, so no run can finish faster than the bound of
//! Kumar and Ross ("Peer-assisted file distribution: the minimum distribution time",
//! 2006) for one source of upload rate u_s, N receivers of downlink d_i and uplink u_i
//! and a file of F bytes: device i is done no earlier than max(F / u_s, F / d_i), and the
//! last no earlier than N * F / (u_s + sum u_i). Here the source is the site's WAN (the
//! smaller of its capacity and the origin's egress): every byte enters the site
//! through it.

use otamesh_sim::report::timeseries_csv;
use otamesh_sim::{RunResult, Scenario, run};
use proptest::prelude::*;

/// One site, no latency, installs and health checks that take no time: a device
/// commits the moment its last byte arrives. Tests set everything else.
const ONE_SITE: &str = r#"
[sim]
duration_s = 200000
[fleet]
devices = 2
sites = 1
utc_offsets_min = [0]
[[class]]
name = "device"
share = 100
install_s = 0
reboot_s = 0
health_check_s = 0
downlink_mbps = 10
uplink_mbps = 10
[release]
bytes = 50_000_000
piece_bytes = 1_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 1000
site_lan_mbps = 1000
latency_ms = 0
[announce]
hop_delay_s = 0
fanout = 2
[rollout]
"#;

fn simulate(sets: &[String], seed: u64) -> RunResult {
    let sc = Scenario::parse("physics.toml", ONE_SITE, sets).expect("test scenario is valid");
    run(&sc, seed, &mut |_| {})
}

fn strings(sets: &[&str]) -> Vec<String> {
    sets.iter().map(|s| (*s).to_owned()).collect()
}

/// Finish times may be rounded up to the microsecond, never down; this allows float
/// rounding in the bound itself.
fn at_least(t: f64, bound: f64) -> bool {
    t >= bound * (1.0 - 1e-9) - 1e-6
}

#[test]
fn two_devices_cannot_take_400_mb_faster_than_their_downlinks() {
    // 50 MB = 400 Mb through a 10 Mb/s downlink: 40 s, however the owner of a piece
    // splits its downlink between the origin and its peer.
    let r = simulate(&[], 1);
    assert_eq!(r.committed, 2);
    for &t in &r.commit_s {
        assert!(at_least(t, 40.0), "a device committed at {t} s, before 40 s");
    }
    // The same with a finite origin (the WAN flows of all sites in one group, the
    // downlink split between groups).
    let r = simulate(&strings(&["network.origin_egress_mbps=10000"]), 1);
    assert_eq!(r.committed, 2);
    for &t in &r.commit_s {
        assert!(at_least(t, 40.0), "finite origin: a device committed at {t} s");
    }
}

#[test]
fn one_seed_uploads_the_whole_release_at_least_once() {
    // Wave 1 is one device (the seed), which fetches the release over a fast WAN; the
    // other four start at 100 s and can only get its pieces from the seed's 10 Mb/s
    // uplink (and from each other): every byte leaves the seed at least once, so none
    // of them is done before 100 s + 400 Mb / 10 Mb/s = 140 s.
    let sets = strings(&[
        "fleet.devices=5",
        "class.0.downlink_mbps=1000",
        "rollout.waves=[{percent=20}, {percent=100, after_s=100}]",
    ]);
    let seed = (1..200)
        .find(|&seed| simulate(&sets, seed).first_wave_devices == 1)
        .expect("some seed puts exactly one device in the first wave");
    let r = simulate(&sets, seed);
    assert_eq!(r.committed, 5);
    assert!(r.commit_s[0] < 100.0, "the seed is done first: {:?}", r.commit_s);
    for &t in &r.commit_s[1..] {
        assert!(at_least(t, 140.0), "a peer of the one seed committed at {t} s, before 140 s");
    }
    // The peers do help each other: the seed alone, serving each of them the whole
    // release, would need 4 x 40 s.
    assert!(r.commit_s[4] < 100.0 + 4.0 * 40.0 - 10.0, "{:?}", r.commit_s);
}

#[test]
fn an_interrupted_central_download_resumes_where_it_stopped() {
    // One device on a 100 s on / 50 s off cycle (exponential), 500 MB at 1 MB/s: the
    // origin serves ranges, so exactly the release crosses the WAN, however often the
    // device goes away, and it needs 500 s online.
    for seed in 1..4 {
        let r = simulate(
            &strings(&[
                "fleet.devices=1",
                "network.mode=\"central\"",
                "class.0.downlink_mbps=8",
                "release.bytes=500_000_000",
                "release.piece_bytes=10_000_000",
                "churn.mean_online_s=100",
                "churn.mean_offline_s=50",
            ]),
            seed,
        );
        assert_eq!(r.committed, 1, "seed {seed}");
        assert!((r.wan_bytes - 500_000_000.0).abs() < 1.0, "seed {seed}: WAN bytes {}", r.wan_bytes);
        assert!(at_least(r.commit_s[0], 500.0), "seed {seed}: done at {}", r.commit_s[0]);
    }
}

#[test]
fn bytes_are_counted_as_they_flow() {
    // Central: 10 devices share an 80 Mb/s (10 MB/s) WAN for 10 s. Sampled every half
    // second, the WAN curve rises by at most 5 MB a sample, and reaches 100 MB.
    let r = simulate(
        &strings(&[
            "fleet.devices=10",
            "network.mode=\"central\"",
            "network.site_wan_mbps=80",
            "class.0.downlink_mbps=1000",
            "release.bytes=10_000_000",
            "sim.sample_s=0.5",
        ]),
        3,
    );
    let mut rises = 0;
    for w in r.series.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let most = 10e6 * (b.t_s - a.t_s);
        assert!(
            b.wan_bytes - a.wan_bytes <= most * (1.0 + 1e-9) + 1.0,
            "{} -> {} at {} s",
            a.wan_bytes,
            b.wan_bytes,
            b.t_s
        );
        rises += usize::from(b.wan_bytes > a.wan_bytes);
    }
    assert!(rises >= 19, "the curve climbs over 10 s, not in one jump: {rises} rising samples");
    let last = r.series.last().expect("samples");
    assert!((last.wan_bytes - 100e6).abs() < 1.0, "{}", last.wan_bytes);
    assert!(timeseries_csv(&r).lines().count() > 20);
}

/// A random small scenario on one site.
#[derive(Debug, Clone)]
struct Small {
    devices: u32,
    mode: &'static str,
    bytes: u64,
    pieces: u64,
    down: f64,
    up: f64,
    wan: f64,
    origin: f64,
    lan: f64,
    slots: u32,
    wan_parallel: u32,
}

fn small() -> impl Strategy<Value = Small> {
    (
        2u32..=10,
        prop_oneof![Just("central"), Just("p2p"), Just("p2p-dedup")],
        1_000_000u64..=20_000_000,
        // Up to 8 pieces, or more than a 64-piece set holds.
        prop_oneof![1u64..=8, 65u64..=160],
        (1.0f64..200.0, 0.5f64..100.0),
        (1.0f64..500.0, prop_oneof![Just(0.0), 1.0f64..500.0], 10.0f64..1000.0),
        (1u32..=6, 1u32..=4),
    )
        .prop_map(
            |(devices, mode, bytes, pieces, (down, up), (wan, origin, lan), (slots, wan_parallel))| Small {
                devices,
                mode,
                bytes,
                pieces,
                down,
                up,
                wan,
                origin,
                lan,
                slots,
                wan_parallel,
            },
        )
}

proptest! {
    // 1,000 random scenarios, as the issue asks: about 10 s in a debug build.
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn no_device_beats_the_kumar_ross_bound(s in small(), seed in 0u64..1000) {
        let r = simulate(&[
            format!("fleet.devices={}", s.devices),
            format!("network.mode=\"{}\"", s.mode),
            format!("release.bytes={}", s.bytes),
            format!("release.piece_bytes={}", s.bytes.div_ceil(s.pieces)),
            format!("class.0.downlink_mbps={}", s.down),
            format!("class.0.uplink_mbps={}", s.up),
            format!("network.site_wan_mbps={}", s.wan),
            format!("network.origin_egress_mbps={}", s.origin),
            format!("network.site_lan_mbps={}", s.lan),
            format!("network.upload_slots={}", s.slots),
            format!("network.wan_parallel={}", s.wan_parallel),
        ], seed);
        prop_assert_eq!(r.committed, u64::from(s.devices));
        let bps = |mbps: f64| mbps * 1e6 / 8.0;
        let source = if s.origin > 0.0 { bps(s.wan.min(s.origin)) } else { bps(s.wan) };
        let f = s.bytes as f64;
        let n = f64::from(s.devices);
        let each = (f / source).max(f / bps(s.down));
        let last = n * f / (source + n * bps(s.up));
        for &t in &r.commit_s {
            prop_assert!(at_least(t, each), "a device done at {} s, bound {} s: {:?}", t, each, s);
        }
        let end = r.commit_s.last().copied().unwrap_or(0.0);
        prop_assert!(at_least(end, last), "the last done at {} s, bound {} s: {:?}", end, last, s);
    }
}

#[test]
fn each_site_draws_its_own_wan() {
    // 40 sites of 10 devices, central, 1 MB each: a quarter of the sites sit behind a
    // 2 Mb/s link (a satellite), where 10 MB take 40 s; the others have 1,000 Mb/s
    // (0.08 s). Every site is one or the other, as a whole.
    let r = simulate(
        &strings(&[
            "fleet.devices=400",
            "fleet.sites=40",
            "network.mode=\"central\"",
            "class.0.downlink_mbps=1000",
            "release.bytes=1_000_000",
            "release.piece_bytes=1_000_000",
            "network.site_wan_mix=[{share=25, mbps=2}]",
        ]),
        5,
    );
    assert_eq!(r.committed, 400);
    let slow = r.commit_s.iter().filter(|&&t| t > 1.0).count();
    for &t in &r.commit_s {
        assert!(
            t <= 0.1 || (t - 40.0).abs() < 1e-3,
            "a device done at {t} s: neither a fast nor a slow site"
        );
    }
    assert_eq!(slow % 10, 0, "whole sites are slow: {slow} devices");
    assert!((40..=200).contains(&slow), "about a quarter of 400: {slow}");
}
