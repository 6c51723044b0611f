//! Sites that peer with each other (`[[peering]]`): in p2p-dedup a piece one of two
//! peered sites holds crosses their link to the other instead of coming from the origin.

use otamesh_sim::{RunResult, Scenario, run};
use proptest::prelude::*;

/// Two sites of 10 devices, no latency, installs that take no time; site 0 and 1 peer
/// over `x`. Tests set the rest.
const PAIR: &str = r#"
[sim]
duration_s = 200000
[fleet]
devices = 20
sites = 2
utc_offsets_min = [0]
[[class]]
name = "device"
share = 100
install_s = 0
reboot_s = 0
health_check_s = 0
downlink_mbps = 100
uplink_mbps = 20
[release]
bytes = 16_000_000
piece_bytes = 1_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 50
site_lan_mbps = 1000
latency_ms = 0
[announce]
hop_delay_s = 0
fanout = 4
[rollout]
[[link]]
name = "x"
mbps = 100
"#;

const PEERED: &str = "\n[[peering]]\nsites = [0, 1]\nlink = \"x\"\n";

fn simulate(peered: bool, extra: &str, sets: &[String], seed: u64) -> RunResult {
    let text = format!("{PAIR}{}{extra}", if peered { PEERED } else { "" });
    let sc = Scenario::parse("peering.toml", &text, sets).expect("test scenario is valid");
    run(&sc, seed, &mut |_| {})
}

fn strings(sets: &[&str]) -> Vec<String> {
    sets.iter().map(|s| (*s).to_owned()).collect()
}

const F: f64 = 16_000_000.0;

#[test]
fn two_peered_sites_fetch_the_release_from_the_origin_once_between_them() {
    for seed in 1..4 {
        let apart = simulate(false, "", &[], seed);
        assert_eq!(apart.committed, 20, "seed {seed}");
        assert_eq!(apart.wan_bytes, 2.0 * F, "seed {seed}: each site fetches the release once");
        assert_eq!(apart.peering_bytes, 0.0);

        let r = simulate(true, "", &[], seed);
        assert_eq!(r.committed, 20, "seed {seed}");
        // Each piece comes from the origin to one site, crosses the link once to the
        // other site's owner of it, and reaches every other device on its LAN.
        assert_eq!(r.wan_bytes, F, "seed {seed}: the pair fetches the release once");
        assert_eq!(r.peering_bytes, F, "seed {seed}: every piece crosses the link once");
        assert_eq!(r.lan_bytes, 19.0 * F, "seed {seed}: every device but the fetcher gets it from a peer");
    }
}

#[test]
fn a_site_behind_a_slow_way_to_the_origin_gets_the_release_over_its_peering() {
    // Site 1 reaches the origin over a 2 Mb/s satellite link (16 MB: 64 s at best);
    // site 0 has 50 Mb/s and a 100 Mb/s link to site 1. Site 0 never waits for what the
    // satellite brings; site 1 takes everything it can from site 0.
    let satellite = "\n[[link]]\nname = \"sat\"\nmbps = 2\n[[path]]\nsites = [1]\nlinks = [\"sat\"]\n";
    for seed in 1..4 {
        let apart = simulate(false, satellite, &[], seed);
        let peered = simulate(true, satellite, &[], seed);
        assert_eq!((apart.committed, peered.committed), (20, 20), "seed {seed}");
        let last = |r: &RunResult| *r.commit_s.last().expect("commits");
        assert!(last(&apart) >= 64.0, "seed {seed}: alone, site 1 waits for its satellite: {}", last(&apart));
        assert!(
            last(&peered) < 0.5 * last(&apart),
            "seed {seed}: peered, the last device commits at {} s, apart at {} s",
            last(&peered),
            last(&apart)
        );
        assert!(peered.wan_bytes < 2.0 * F, "seed {seed}: {}", peered.wan_bytes);
        assert!(peered.peering_bytes > 0.5 * F, "seed {seed}: {}", peered.peering_bytes);
        // Site 0 finishes as fast as it would alone: it waits for nothing over the
        // satellite.
        let first_ten = |r: &RunResult| r.commit_s[9];
        assert!(
            first_ten(&peered) <= first_ten(&apart) * 1.05,
            "seed {seed}: the fast site's tenth commit at {} s peered, {} s apart",
            first_ten(&peered),
            first_ten(&apart)
        );
    }
}

#[test]
fn the_peering_link_limits_what_crosses_it() {
    // Site 0's devices ask at 0 s, site 1's at 100 s, when site 0 holds every piece:
    // site 1 takes the whole release over a 4 Mb/s (500 kB/s) peering link, so none of
    // its devices is done before 100 s + 16 MB / 500 kB/s = 132 s, though uplinks and
    // downlinks would allow it in 7 s. Its satellite is never used.
    let late = "\n[arrivals]\ntimes_s = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100]\n";
    let satellite = "\n[[link]]\nname = \"sat\"\nmbps = 0.4\n[[path]]\nsites = [1]\nlinks = [\"sat\"]\n";
    for seed in 1..4 {
        let r = simulate(true, &format!("{late}{satellite}"), &strings(&["link.0.mbps=4"]), seed);
        assert_eq!(r.committed, 20, "seed {seed}");
        assert_eq!((r.wan_bytes, r.peering_bytes), (F, F), "seed {seed}");
        let site1 = &r.commit_s[10..];
        assert!(site1[0] < 100.0 + 32.0 + 5.0, "seed {seed}: the link is used at its rate: {site1:?}");
        for &t in site1 {
            assert!(t >= 132.0 * (1.0 - 1e-9), "seed {seed}: a device of site 1 committed at {t} s");
        }
    }
}

#[test]
fn peered_sites_under_churn_still_complete() {
    // Holders and owners come and go on both sides, cutting transfers over the link in
    // both directions: every device still commits, and the release crosses the WAN at
    // least once and at most a few times.
    for seed in 1..6 {
        let r = simulate(true, "", &strings(&["churn.mean_online_s=20", "churn.mean_offline_s=5"]), seed);
        assert_eq!(r.committed, 20, "seed {seed}");
        assert!(r.wan_bytes >= F && r.wan_bytes < 4.0 * F, "seed {seed}: WAN {}", r.wan_bytes);
        assert!(r.peering_bytes > 0.0, "seed {seed}");
    }
}

#[test]
fn the_shipped_branch_scenario_fetches_less_and_ends_sooner_with_its_peerings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/branch-peering.toml");
    let text = std::fs::read_to_string(&path).expect("the shipped scenario");
    let apart_text = &text[..text.find("\n[[peering]]").expect("the file has peerings")];
    let peered = run(&Scenario::parse("branch-peering.toml", &text, &[]).unwrap(), 7, &mut |_| {});
    let apart = run(&Scenario::parse("apart.toml", apart_text, &[]).unwrap(), 7, &mut |_| {});
    let release = 67_108_864.0;
    assert_eq!((peered.committed, apart.committed), (300, 300));
    assert_eq!(apart.wan_bytes, 6.0 * release, "six branches, six fetches");
    // Three pairs: at least one fetch each, and less than one more between them.
    let times = peered.wan_bytes / release;
    assert!((3.0..4.0).contains(&times), "the release crossed the WANs {times} times");
    // Every branch gets every piece from outside once: over its WAN or its link.
    assert_eq!(peered.wan_bytes + peered.peering_bytes, 6.0 * release);
    // The satellite branches (a third of the fleet) finish with the others.
    for (i, name) in [(1, "t90"), (3, "t100")] {
        let (p, a) = (peered.t_s[i].expect("reached"), apart.t_s[i].expect("reached"));
        assert!(p < 0.9 * a, "{name}: {p} s peered, {a} s apart");
    }
}

/// Two random peered sites.
#[derive(Debug, Clone)]
struct Pair {
    devices: u32,
    pieces: u64,
    down: f64,
    up: f64,
    wans: (f64, f64),
    link: f64,
    slots: u32,
    wan_parallel: u32,
}

fn pair() -> impl Strategy<Value = Pair> {
    (
        2u32..=12,
        1u64..=12,
        (1.0f64..200.0, 0.5f64..100.0),
        (1.0f64..200.0, 1.0f64..200.0, 1.0f64..500.0),
        (1u32..=4, 1u32..=4),
    )
        .prop_map(|(devices, pieces, (down, up), (w0, w1, link), (slots, wan_parallel))| Pair {
            devices,
            pieces,
            down,
            up,
            wans: (w0, w1),
            link,
            slots,
            wan_parallel,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The bound of Kumar and Ross (see `physics.rs`) over the pair: every byte enters
    /// it through the two sites' WANs (together u_s), so no device is done before
    /// max(F / u_s, F / d) and the last not before N * F / (u_s + N * u).
    #[test]
    fn no_peered_device_beats_the_kumar_ross_bound(p in pair(), seed in 0u64..1000) {
        let bytes = 4_000_000u64;
        let sat = format!("\n[[link]]\nname = \"w1\"\nmbps = {}\n[[path]]\nsites = [1]\nlinks = [\"w1\"]\n", p.wans.1);
        let r = simulate(true, &sat, &[
            format!("fleet.devices={}", p.devices),
            format!("release.bytes={bytes}"),
            format!("release.piece_bytes={}", bytes.div_ceil(p.pieces)),
            format!("class.0.downlink_mbps={}", p.down),
            format!("class.0.uplink_mbps={}", p.up),
            format!("network.site_wan_mbps={}", p.wans.0.max(p.wans.1)),
            format!("link.0.mbps={}", p.link),
            format!("network.upload_slots={}", p.slots),
            format!("network.wan_parallel={}", p.wan_parallel),
        ], seed);
        prop_assert_eq!(r.committed, u64::from(p.devices));
        let mbps = |x: f64| x * 1e6 / 8.0;
        let f = bytes as f64;
        let u_s = mbps(p.wans.0.max(p.wans.1)) + mbps(p.wans.1);
        let n = f64::from(p.devices);
        let each = (f / u_s).max(f / mbps(p.down));
        let all = n * f / (u_s + n * mbps(p.up));
        for &t in &r.commit_s {
            prop_assert!(t >= each * (1.0 - 1e-9) - 1e-6, "a device committed at {} s, bound {} s", t, each);
        }
        let last = *r.commit_s.last().expect("commits");
        prop_assert!(last >= all * (1.0 - 1e-9) - 1e-6, "the last committed at {} s, bound {} s", last, all);
    }
}
