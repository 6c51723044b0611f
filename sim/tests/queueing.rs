//! Closed forms from queueing theory, on the scenarios that ship in `scenarios/`.
//!
//! - The parking lot (`scenarios/parking-lot.toml`): one flow over three links of
//!   capacity C, one more flow on each link: max-min fairness gives every flow C/2.
//! - M/G/1 processor sharing (`scenarios/mg1-ps.toml`): Poisson arrivals sharing one
//!   link; the mean transfer time is E[S] / (C (1 - rho)) whatever the size
//!   distribution (insensitivity), here 3.2 s at load 0.75.

use std::path::PathBuf;

use otamesh_sim::report::Summary;
use otamesh_sim::{Scenario, run};

fn scenario(name: &str, sets: &[&str]) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(name);
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    Scenario::load(&path, &sets).expect("the shipped scenario is valid")
}

fn summary(name: &str, sets: &[&str]) -> Summary {
    let sc = scenario(name, sets);
    let seed = sc.sim.seed.expect("the scenario names its seed");
    Summary::of(&run(&sc, seed, &mut |_| {}), None)
}

#[test]
fn the_parking_lot_gives_every_flow_half_of_a_link() {
    // F = 6,250,000 bytes at C/2 = 625,000 B/s: 10 s for every device. The mean and
    // the 99th percentile of four equal values at 10 s mean all four are 10 s.
    let s = summary("parking-lot.toml", &[]);
    assert_eq!(s.committed, 4);
    for (what, t) in [("mean", s.fetch_mean_s), ("p50", s.fetch_p50_s), ("p99", s.fetch_p99_s)] {
        let t = t.expect("every device fetched");
        assert!((t - 10.0).abs() < 1e-3, "fetch {what}: {t} s, closed form 10 s");
    }
    // Without the long flow each short one would have all of C: 5 s.
    let alone = summary("parking-lot.toml", &["path.0.sites=[]"]);
    let t = alone.fetch_p99_s.expect("the three short flows fetched");
    assert!((t - 5.0).abs() < 1e-3, "short flows alone: {t} s, closed form 5 s");
}

#[test]
fn mg1_processor_sharing_is_insensitive_to_the_size_distribution() {
    // E[T] = E[S] / (C (1 - rho)) = 0.8 s / 0.25 = 3.2 s for every size distribution.
    for size in ["exponential", "fixed", "pareto"] {
        let set = format!("release.size=\"{size}\"");
        let s = summary("mg1-ps.toml", &[set.as_str()]);
        let t = s.fetch_mean_s.expect("devices fetched");
        eprintln!("{size}: mean transfer time {t:.3} s (closed form 3.2 s)");
        assert!((t - 3.2).abs() <= 0.05 * 3.2, "{size} sizes: mean transfer time {t} s, closed form 3.2 s");
    }
}

#[test]
fn per_site_wans_follow_their_log_normal_distribution() {
    // 2,000 one-device sites behind their own WAN only (an unlimited origin, fast
    // downlinks, no named links): a fetch of F takes F / W, W the site's WAN. With a
    // log-normal W of median 10 Mb/s and sigma 0.5, the median fetch is F / 10 Mb/s =
    // 5 s and the 90th percentile is exp(0.5 x 1.2816) = 1.90 times the median.
    let sets = [
        "fleet.devices=2000",
        "fleet.sites=2000",
        "path=[]",
        "link=[]",
        "arrivals={rate_per_s=100}",
        "network.site_wan_mbps=10",
        "network.site_wan_sigma=0.5",
    ];
    let s = summary("parking-lot.toml", &sets);
    let (p50, p90) = (s.fetch_p50_s.expect("fetched"), s.fetch_p90_s.expect("fetched"));
    assert!((p50 - 5.0).abs() <= 0.05 * 5.0, "median fetch {p50} s, expected 5 s");
    let ratio = p90 / p50;
    let expected = (0.5f64 * 1.2816).exp();
    assert!((ratio - expected).abs() <= 0.05 * expected, "p90/p50 = {ratio}, expected {expected}");
}
