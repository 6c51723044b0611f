//! `otamesh sim sweep` and `sweep merge` as the binary runs them: a sharded and merged
//! sweep equals the unsharded one byte for byte, bad input is refused before anything
//! runs, and a canary's detection rate agrees with 1 - (1 - p)^n.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use otamesh_sim::cli::{SimArgs, SimError, run};

#[derive(Debug, Parser)]
struct Cmd {
    #[command(flatten)]
    sim: SimArgs,
}

/// A small fleet whose release fails the health check on a few devices, so runs differ
/// in whether the gate halts; fast in a debug build.
const SMALL: &str = r#"
[sim]
duration_s = 3600
[fleet]
devices = 60
sites = 3
[[class]]
name = "gw"
share = 100
install_s = [10, 30]
reboot_s = 5
health_check_s = 5
downlink_mbps = 100
uplink_mbps = 20
health_fail = 0.05
[release]
bytes = 1_000_000
piece_bytes = 250_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 50
site_lan_mbps = 1000
[rollout]
waves = [{ percent = 20 }, { percent = 100, after_s = 600 }]
gate = { max_failure_ratio = 0.0, min_reports = 1 }
"#;

/// A canary: the first wave opens at once, the second only after the run ends, so the
/// gate halts exactly when one of the canary devices fails its health check (each with
/// probability `health_fail`, drawn independently per device and seed).
const CANARY: &str = r#"
[sim]
duration_s = 3600
[fleet]
devices = 200
sites = 4
[[class]]
name = "gw"
share = 100
install_s = 10
reboot_s = 5
health_check_s = 5
downlink_mbps = 100
uplink_mbps = 20
health_fail = 0.02
[release]
bytes = 1_000_000
piece_bytes = 250_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 50
site_lan_mbps = 1000
[rollout]
waves = [{ percent = 10 }, { percent = 100, after_s = 86400 }]
gate = { max_failure_ratio = 0.0, min_reports = 1 }
"#;

/// `otamesh sim sweep ARGS...`.
fn sweep(args: &[&str]) -> Result<(), SimError> {
    let mut argv = vec!["sim", "sweep"];
    argv.extend_from_slice(args);
    run(Cmd::try_parse_from(argv).expect("arguments parse").sim)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(path)).unwrap()
}

fn scenario(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `runs.csv` as maps from column to field (the test files hold no quoted fields).
fn rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = String::from_utf8(read(path)).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| header.iter().map(|h| (*h).to_owned()).zip(l.split(',').map(str::to_owned)).collect())
        .collect()
}

#[test]
fn sharded_four_ways_and_merged_equals_the_unsharded_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "small.toml", SMALL);
    let p = |name: &str| dir.path().join(name);
    let grid = ["--grid", "rollout.waves.0.percent=20,50", "--grid", "network.mode=central,p2p-dedup"];
    let whole = p("whole");
    let mut args = vec![s.as_str(), "--out", whole.to_str().unwrap(), "--seeds", "5", "--jobs", "2"];
    args.extend(grid);
    args.extend(["--reproducible", "--quiet"]);
    sweep(&args).unwrap();

    let shards: Vec<PathBuf> = (0..4).map(|i| p(&format!("shard{i}"))).collect();
    for (i, out) in shards.iter().enumerate() {
        let shard = format!("{i}/4");
        let mut args = vec![s.as_str(), "--out", out.to_str().unwrap(), "--seeds", "5", "--shard", &shard];
        args.extend(grid);
        args.extend(["--reproducible", "--quiet"]);
        sweep(&args).unwrap();
        assert!(!out.join("sweep.json").exists(), "a shard writes no study of its own");
        let runs: Vec<u64> = rows(&out.join("runs.csv")).iter().map(|r| r["run"].parse().unwrap()).collect();
        assert_eq!(runs.len(), 5, "20 runs in 4 shards");
        assert!(runs.iter().all(|r| r % 4 == i as u64), "shard {i} holds {runs:?}");
    }
    let merged = p("merged");
    // Any order of the shard directories.
    let mut args = vec!["merge"];
    args.extend(shards.iter().rev().map(|d| d.to_str().unwrap()));
    args.extend(["--out", merged.to_str().unwrap()]);
    sweep(&args).unwrap();

    for file in
        ["runs.csv", "sweep.json", "t90_s.png", "wan_bytes.png", "halted.png", "t90_s-distribution.png"]
    {
        assert!(read(&whole.join(file)) == read(&merged.join(file)), "{file} differs after merging");
    }
    assert_eq!(&read(&whole.join("halted.png"))[..4], b"\x89PNG");

    // The unsharded outputs themselves: one row per run, one entry per grid point.
    let runs = rows(&whole.join("runs.csv"));
    assert_eq!(runs.len(), 20);
    assert_eq!(runs[0]["rollout.waves.0.percent"], "20");
    assert_eq!(runs[5]["network.mode"], "p2p-dedup");
    assert_eq!(runs[6]["seed"], runs[1]["seed"], "every grid point runs the same seeds");
    assert_eq!(runs[19]["mode"], "p2p-dedup");
    assert_eq!(runs[0]["wall_s"], "", "--reproducible writes no wall time");
    let study = json(&whole.join("sweep.json"));
    assert_eq!(study["sweep"]["runs"], 20);
    assert!(study["sweep"]["wall_s"].is_null());
    let points = study["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    assert_eq!(points[3]["grid"]["rollout.waves.0.percent"], 50);
    assert_eq!(points[3]["grid"]["network.mode"], "p2p-dedup");
    let wan = &points[0]["metrics"]["wan_bytes"];
    assert_eq!(wan["n"], 5);
    let (lo, mean, hi) =
        (wan["ci95"][0].as_f64().unwrap(), wan["mean"].as_f64().unwrap(), wan["ci95"][1].as_f64().unwrap());
    assert!(lo <= mean && mean <= hi, "{wan}");
    let halted: u64 = runs[..5].iter().filter(|r| !r["halted_at_s"].is_empty()).count() as u64;
    assert_eq!(points[0]["outcomes"]["halted"]["yes"], halted);
    let committed_all = runs[..5].iter().filter(|r| r["committed"] == r["devices"]).count() as u64;
    assert_eq!(points[0]["outcomes"]["all_committed"]["yes"], committed_all);
    // Central sends every byte over the WAN; p2p-dedup once per site.
    let mean_wan = |p: usize| points[p]["metrics"]["wan_bytes"]["mean"].as_f64().unwrap();
    assert!(mean_wan(0) > mean_wan(1), "central {} vs p2p-dedup {}", mean_wan(0), mean_wan(1));
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "small.toml", SMALL);
    let out = dir.path().join("never");
    // (extra arguments, words the one-line message must contain)
    let table: &[(&[&str], &[&str])] = &[
        // An unknown grid key is named with the scenario's reason.
        (&["--grid", "network.speed=1,2"], &["--grid network.speed", "unknown field"]),
        // An empty value list.
        (&["--grid", "network.latency_ms="], &["--grid network.latency_ms", "empty"]),
        // An empty value inside the list.
        (&["--grid", "network.latency_ms=1,,2"], &["--grid network.latency_ms", "value 2 of 3 is empty"]),
        // A value the scenario refuses.
        (&["--grid", "class.0.health_fail=0.5,1.5"], &["--grid class.0.health_fail", "1.5", "probability"]),
        // A key given twice.
        (&["--grid", "network.mode=central", "--grid", "network.mode=p2p"], &["network.mode", "twice"]),
        // Shards are numbered from 0: 4/4 does not exist.
        (&["--shard", "4/4"], &["--shard 4/4", "out of range", "0 to 3"]),
        // No shards at all.
        (&["--shard", "0/0"], &["--shard 0/0", "at least 1"]),
        // Not I/N.
        (&["--shard", "2"], &["--shard 2", "I/N"]),
        // More shards than runs (3 seeds, no grid).
        (&["--seeds", "3", "--shard", "0/4"], &["--shard 0/4", "at most 3"]),
        // No seeds.
        (&["--seeds", "0"], &["--seeds 0", "at least one"]),
        (&["--seed-range", "5..5"], &["--seed-range 5..5", "empty"]),
        (&["--seed-range", "five"], &["--seed-range five", "A..B"]),
        // No threads.
        (&["--jobs", "0"], &["--jobs 0"]),
        // A plot of something that is not a number.
        (&["--plot", "mode"], &["--plot mode", "t90_s"]),
    ];
    for (extra, words) in table {
        let mut args = vec![s.as_str(), "--out", out.to_str().unwrap(), "--quiet"];
        args.extend(extra.iter());
        let message = sweep(&args).expect_err("refused").to_string();
        assert!(!message.contains('\n'), "{extra:?}: one line: {message}");
        for word in *words {
            assert!(message.contains(word), "{extra:?}: {message:?} lacks {word:?}");
        }
        assert!(!out.exists(), "{extra:?}: nothing may be written");
    }
    // Every value fine alone, but not together: wave percentages must not shrink.
    let message = sweep(&[
        &s,
        "--out",
        out.to_str().unwrap(),
        "--set",
        "rollout.waves=[{percent=10},{percent=50,after_s=600},{percent=100,after_s=1200}]",
        "--grid",
        "rollout.waves.0.percent=10,40",
        "--grid",
        "rollout.waves.1.percent=50,30",
    ])
    .expect_err("refused")
    .to_string();
    assert!(
        message.contains("grid point rollout.waves.0.percent=40, rollout.waves.1.percent=30")
            && message.contains("rollout.waves[1].percent"),
        "{message}"
    );
    assert!(!out.exists());
}

#[test]
fn merge_refuses_shards_of_another_sweep_missing_or_edited_shards() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "small.toml", SMALL);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    for (out, seeds, shard) in [("a0", "0..4", "0/2"), ("a1", "0..4", "1/2"), ("b1", "0..5", "1/2")] {
        sweep(&[&s, "--out", &p(out), "--seed-range", seeds, "--shard", shard, "--reproducible", "--quiet"])
            .unwrap();
    }
    let merged = p("merged");
    let merge = |dirs: &[&str]| {
        let mut args = vec!["merge"];
        args.extend(dirs);
        args.extend(["--out", merged.as_str()]);
        sweep(&args).expect_err("refused").to_string()
    };
    let (a0, a1, b1) = (p("a0"), p("a1"), p("b1"));
    // (directories, words of the message)
    let table: Vec<(Vec<&str>, &[&str])> = vec![
        // Another sweep's shard (other seeds): a different fingerprint.
        (vec![&a0, &b1], &["b1", "another sweep", "seeds"]),
        // A shard missing.
        (vec![&a0], &["shard 1/2 is missing"]),
        // A shard twice.
        (vec![&a0, &a1, &a1], &["shard 1/2 again"]),
        // Not a shard directory.
        (vec![&a0, &merged], &["merged", "shard.json", "cannot read"]),
    ];
    for (dirs, words) in &table {
        let message = merge(dirs);
        assert!(!message.contains('\n'), "{dirs:?}: {message}");
        for word in *words {
            assert!(message.contains(word), "{dirs:?}: {message:?} lacks {word:?}");
        }
    }
    // An edited shard.json: its fingerprint no longer matches what it describes.
    let shard_json = Path::new(&a1).join("shard.json");
    let original = read(&shard_json);
    let edited = String::from_utf8(original.clone()).unwrap().replace("\"to\": 4", "\"to\": 3");
    std::fs::write(&shard_json, edited).unwrap();
    assert!(merge(&[&a0, &a1]).contains("fingerprint does not match"));
    std::fs::write(&shard_json, &original).unwrap();
    // An edited runs.csv: a number that is not one, a row removed.
    let runs_csv = Path::new(&a1).join("runs.csv");
    let text = String::from_utf8(read(&runs_csv)).unwrap();
    let first_row = text.lines().nth(1).unwrap().to_owned();
    let garbled = first_row.replacen(",60,", ",sixty,", 1);
    std::fs::write(&runs_csv, text.replace(&first_row, &garbled)).unwrap();
    let message = merge(&[&a0, &a1]);
    assert!(message.contains("runs.csv: line 2") && message.contains("not a number"), "{message}");
    std::fs::write(&runs_csv, text.replace(&format!("{first_row}\n"), "")).unwrap();
    assert!(merge(&[&a0, &a1]).contains("1 runs, but shard 1/2 has 2"));
    assert!(!Path::new(&merged).exists(), "nothing written by a refused merge");
    // A split into one shard (a Slurm array of one task) still merges.
    let only = p("only");
    sweep(&[&s, "--out", &only, "--seed-range", "0..4", "--shard", "0/1", "--reproducible", "--quiet"])
        .unwrap();
    sweep(&["merge", &only, "--out", &merged]).unwrap();
    assert_eq!(rows(&Path::new(&merged).join("runs.csv")).len(), 4);
}

#[test]
fn canary_detection_agrees_with_one_minus_one_minus_p_to_the_n() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "canary.toml", CANARY);
    let out = dir.path().join("out");
    sweep(&[
        &s,
        "--out",
        out.to_str().unwrap(),
        "--seed-range",
        "1000..1300",
        "--grid",
        "rollout.waves.0.percent=10,25",
        "--reproducible",
        "--quiet",
    ])
    .unwrap();
    let p = 0.02f64;
    let runs = rows(&out.join("runs.csv"));
    let study = json(&out.join("sweep.json"));
    let mut shares = Vec::new();
    for (point, chunk) in runs.chunks(300).enumerate() {
        // The canary's size n is drawn with the fleet (wave membership hashes device
        // ids), so the expected detection rate is the mean of 1 - (1 - p)^n over runs.
        let expected = chunk
            .iter()
            .map(|r| 1.0 - (1.0 - p).powi(r["first_wave_devices"].parse::<i32>().unwrap()))
            .sum::<f64>()
            / chunk.len() as f64;
        let halted = &study["points"][point]["outcomes"]["halted"];
        let detected = chunk.iter().filter(|r| !r["halted_at_s"].is_empty()).count();
        assert_eq!(halted["yes"], detected as u64);
        assert_eq!(halted["runs"], 300);
        let (lo, hi) = (halted["ci95"][0].as_f64().unwrap(), halted["ci95"][1].as_f64().unwrap());
        assert!(
            lo <= expected && expected <= hi,
            "point {point}: expected detection {expected:.3} outside the Wilson interval [{lo:.3}, {hi:.3}]"
        );
        shares.push(halted["proportion"].as_f64().unwrap());
    }
    assert!(shares[1] > shares[0], "a larger canary detects more often: {shares:?}");
}

#[test]
fn a_row_replays_as_a_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path(), "small.toml", SMALL);
    let study = dir.path().join("study");
    sweep(&[
        &s,
        "--out",
        study.to_str().unwrap(),
        "--seed-range",
        "40..43",
        "--grid",
        "network.mode=central,p2p",
        "--reproducible",
        "--quiet",
    ])
    .unwrap();
    let row = &rows(&study.join("runs.csv"))[4];
    assert_eq!((row["network.mode"].as_str(), row["seed"].as_str()), ("p2p", "41"));
    // `otamesh sim` with the row's seed and grid value gives the same summary.
    let one = dir.path().join("one");
    let set = format!("network.mode={}", row["network.mode"]);
    let argv = [
        "sim",
        &s,
        "--out",
        one.to_str().unwrap(),
        "--seed",
        &row["seed"],
        "--set",
        &set,
        "--reproducible",
        "--quiet",
    ];
    run(Cmd::try_parse_from(argv).unwrap().sim).unwrap();
    let summary = json(&one.join("summary.json"));
    for (key, value) in summary.as_object().unwrap() {
        let cell = match value {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(row[key], cell, "{key}");
    }
}
