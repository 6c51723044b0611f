//! `otamesh sim` as the binary runs it: files written, byte-identical reruns, errors
//! instead of panics.

use std::path::Path;

use clap::Parser;
use otamesh_sim::cli::{SimArgs, SimError, run};

#[derive(Debug, Parser)]
struct Cmd {
    #[command(flatten)]
    sim: SimArgs,
}

const SCENARIO: &str = r#"
[sim]
duration_s = 7200
seed = 3
[fleet]
devices = 300
sites = 6
[[class]]
name = "gw"
share = 60
install_s = [30, 60]
reboot_s = 10
health_check_s = 10
downlink_mbps = 50
uplink_mbps = 10
[[class]]
name = "cam"
share = 40
install_s = 20
reboot_s = 10
downlink_mbps = 20
uplink_mbps = 5
health_fail = 1.0
[release]
bytes = 8_000_000
piece_bytes = 1_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 500
site_wan_mbps = 20
site_lan_mbps = 500
latency_ms = 10
[directives]
revoke_after_halt_s = 300
[rollout]
waves = [{ percent = 10 }, { percent = 100, after_s = 1800 }]
gate = { max_failure_ratio = 0.2, min_reports = 5 }
"#;

fn sim(args: &[&str]) -> Result<(), SimError> {
    let mut argv = vec!["sim"];
    argv.extend_from_slice(args);
    run(Cmd::try_parse_from(argv).expect("arguments parse").sim)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn run_writes_every_output_and_reruns_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("gate.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        sim(&[scenario.to_str().unwrap(), "--out", out.to_str().unwrap(), "--reproducible", "--quiet"])
            .unwrap();
    }
    assert_eq!(read(&a.join("summary.json")), read(&b.join("summary.json")));
    assert_eq!(read(&a.join("timeseries.csv")), read(&b.join("timeseries.csv")));
    let summary: serde_json::Value = serde_json::from_slice(&read(&a.join("summary.json"))).unwrap();
    for key in [
        "scenario",
        "seed",
        "devices",
        "sites",
        "release_bytes",
        "mode",
        "t50_s",
        "t90_s",
        "t99_s",
        "t100_s",
        "committed",
        "failed",
        "rolled_back",
        "never_started",
        "wan_bytes",
        "lan_bytes",
        "origin_peak_bps",
        "halted_at_s",
        "rollback_done_s",
        "events",
        "wall_s",
    ] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    assert!(summary["halted_at_s"].is_number(), "the gate halts this release");
    assert!(summary["t50_s"].is_null(), "a revoked release never reaches half the fleet");
    for plot in ["convergence.png", "wan.png"] {
        assert_eq!(&read(&a.join(plot))[..4], b"\x89PNG", "{plot}");
    }
    assert!(String::from_utf8(read(&a.join("convergence.svg"))).unwrap().contains("<svg"));
    // Without --reproducible the wall time is measured.
    sim(&[scenario.to_str().unwrap(), "--out", a.to_str().unwrap(), "--quiet"]).unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&read(&a.join("summary.json"))).unwrap();
    assert!(summary["wall_s"].is_number());
}

#[test]
fn seed_flag_overrides_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let out = dir.path().join("o");
    sim(&[scenario.to_str().unwrap(), "--out", out.to_str().unwrap(), "--seed", "99", "--quiet"]).unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&read(&out.join("summary.json"))).unwrap();
    assert_eq!(summary["seed"], 99);
}

#[test]
fn compare_writes_a_table_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let out = dir.path().join("cmp");
    sim(&[
        "compare",
        scenario.to_str().unwrap(),
        "--variant",
        "network.mode=central",
        "--variant",
        "network.mode=p2p-dedup;rollout.waves=[]",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ])
    .unwrap();
    let table: serde_json::Value = serde_json::from_slice(&read(&out.join("compare.json"))).unwrap();
    let runs = table["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let wan = |i: usize| runs[i]["summary"]["wan_bytes"].as_u64().unwrap();
    assert!(wan(0) > wan(1), "central costs more WAN than p2p-dedup");
    assert_eq!(&read(&out.join("compare.png"))[..4], b"\x89PNG");
}

#[test]
fn bad_scenarios_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    // (file text, a word the message must contain)
    let cases: &[(&str, &str)] = &[
        ("not toml at all [", "line"),
        ("[sim]\nduration_s = 1\n", "fleet"),
        (&SCENARIO.replace("site_wan_mbps = 20", "site_wan_mbps = -20"), "network.site_wan_mbps"),
        (&SCENARIO.replace("share = 40", "share = 30"), "class.share"),
        (&SCENARIO.replace("after_s = 1800", "after_s = 1800, surprise = 1"), "surprise"),
    ];
    for (i, (text, word)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let e = sim(&[path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("bad{i}.toml")) && msg.contains(word), "case {i}: {msg}");
    }
    let missing = sim(&["/nonexistent/x.toml", "--out", out.to_str().unwrap()]).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}
