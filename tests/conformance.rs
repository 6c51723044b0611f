//! Conformance: the node and the simulator execute one device machine
//! (`otamesh_core::device`) and decide nothing on their own.
//!
//! Each trace is a small simulated rollout. The simulator records, for a few devices,
//! what happened to them (the release heard, directives, reports, their site's install
//! slots, fetch/install/health results, a crash) and what their machine answered. The
//! same happenings are then fed, at the same times, through the node's driver: the
//! node's `Device` in front of its real `Disk` (SQLite, A/B slots, a store with the
//! real chunks), restarting from that disk after a crash. Both must give identical
//! outputs. A driver that filtered, reordered or decided an input by itself, or
//! recovered differently after a crash, shows up as a difference.

mod common;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{Receiver, sync_channel};

use otamesh_core::chunking::{ChunkerConfig, VerifiedChunk, chunk};
use otamesh_core::device::{Installed, Output, Release};
use otamesh_core::directive::Order;
use otamesh_core::manifest::{FORMAT_VERSION, Manifest, Payload};
use otamesh_core::rollout::RolloutPolicy;
use otamesh_core::{DeviceId, Millis, SecretKey, TrustRoot, VerifiedManifest};
use otamesh_node::device::{Device, DeviceConfig};
use otamesh_node::disk::{Disk, Done, Effect, Hooks};
use otamesh_node::store::Store;
use otamesh_sim::Scenario;
use otamesh_sim::engine::run_traced;
use otamesh_sim::trace::{Input, Trace, TraceSetup};

use common::noise;

/// The simulator's virtual time zero (a midnight UTC): the releases' `created_at`.
const T0: Millis = 1_700_006_400_000;

/// A small fleet on one site, one class that never fails; traces add what they test.
const BASE: &str = r#"
[sim]
duration_s = 20000
[fleet]
devices = 4
sites = 1
utc_offsets_min = [0]
[[class]]
name = "gateway"
share = 100
install_s = 20
reboot_s = 5
health_check_s = 10
downlink_mbps = 100
uplink_mbps = 20
[release]
bytes = 4_000_000
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

fn publisher() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

fn device_key(d: u32) -> SecretKey {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&d.to_le_bytes());
    SecretKey::from_seed(seed)
}

fn device_id(d: u32) -> DeviceId {
    DeviceId::of_public_key(&device_key(d).public().to_bytes())
}

/// A real release of `data`, signed by [`publisher`], for class `gw`.
fn release(data: &[u8], sequence: u64, sc: &Scenario, expires_at: Option<Millis>) -> VerifiedManifest {
    let chunks = chunk(data, ChunkerConfig::default()).expect("default chunker config is valid");
    let manifest = Manifest {
        format: FORMAT_VERSION,
        vendor: "acme".into(),
        product: "gw".into(),
        class: "gw".into(),
        sequence,
        version: format!("1.{sequence}"),
        kind: sc.release.kind,
        payload: Payload { size: data.len() as u64, digest: *blake3::hash(data).as_bytes(), chunks },
        precursor: None,
        created_at: T0,
        expires_at,
        rollout: if sequence == 1 { RolloutPolicy::default() } else { sc.rollout.clone() },
    };
    let trust = TrustRoot::single(publisher().public());
    trust.verify_manifest(publisher().sign_manifest(manifest), T0).expect("test manifest verifies")
}

fn put_chunks(store: &Store, data: &[u8]) {
    let mut off = 0;
    for c in chunk(data, ChunkerConfig::default()).expect("valid config") {
        let bytes = data[off..off + c.len as usize].to_vec();
        off += c.len as usize;
        store.put_chunk(&VerifiedChunk::new(c.id, bytes).expect("chunk of data")).expect("store writable");
    }
}

/// One trace: a scenario, the devices to follow, and what the release looks like.
struct Case<'a> {
    sets: &'a [&'a str],
    traced: &'a [u32],
    expires_in_s: Option<u64>,
}

/// Runs the case in the simulator, replays each traced device through the node's
/// driver, and asserts identical outputs. Returns the traces for further checks.
fn conform(case: Case<'_>) -> Vec<Trace> {
    let sets: Vec<String> = case.sets.iter().map(|s| (*s).to_owned()).collect();
    let sc = Scenario::parse("conformance.toml", BASE, &sets).expect("test scenario is valid");
    let scratch = tempfile::tempdir().unwrap();
    let (v0_data, v1_data) = (noise(1, 120_000), noise(2, 150_000));
    let v0 = release(&v0_data, 1, &sc, None);
    let v1 = release(&v1_data, 2, &sc, case.expires_in_s.map(|s| T0 + s * 1000));
    let setup = TraceSetup {
        release: Release::of(v1.id(), v1.manifest()),
        previous: Installed { release: v0.id(), sequence: 1 },
        devices: case.traced.iter().map(|&d| (d, device_id(d))).collect(),
    };
    let (_, traces) = run_traced(&sc, 1, &setup);
    assert_eq!(traces.len(), case.traced.len());
    for trace in &traces {
        assert!(!trace.inputs.is_empty(), "device {} saw nothing: the trace tests nothing", trace.device);
        let dir = scratch.path().join(format!("device-{}", trace.device));
        let node = replay(&dir, trace, &[(&v0, &v0_data), (&v1, &v1_data)]);
        let sim: Vec<Output> = trace.outputs.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(
            node, sim,
            "device {}: the node's driver and the simulator's got different outputs for the inputs {:#?}",
            trace.device, trace.inputs
        );
    }
    traces
}

/// The node's driver: its `Device` and a real `Disk`, with the worker's effects run
/// inline and the results the device waits for handed back when the trace says they
/// came (with the trace's result: the simulated hardware decided it).
struct NodeRig<'a> {
    dir: &'a Path,
    d: u32,
    device: Option<Device>,
    disk: Option<Disk>,
    effects: Option<Receiver<Effect>>,
    store: Store,
    manifests: Vec<VerifiedManifest>,
    /// Results the disk produced that the trace has not delivered yet.
    held: VecDeque<Done>,
    outputs: Vec<Output>,
}

impl<'a> NodeRig<'a> {
    fn new(dir: &'a Path, d: u32, releases: &[(&VerifiedManifest, &Vec<u8>)]) -> Self {
        let store = Store::create(dir.join("store")).unwrap();
        for (_, data) in releases {
            put_chunks(&store, data);
        }
        let manifests = releases.iter().map(|(m, _)| (*m).clone()).collect();
        Self {
            dir,
            d,
            device: None,
            disk: None,
            effects: None,
            store,
            manifests,
            held: VecDeque::new(),
            outputs: Vec::new(),
        }
    }

    /// Starts (or restarts) the node from its disk, keeping the machine's outputs.
    fn start(&mut self, now: Millis, keep: bool) {
        let (disk, restored) = Disk::open(self.dir, self.store.clone(), Hooks::default(), now).unwrap();
        let (tx, rx) = sync_channel(8);
        let config = DeviceConfig {
            class: "gw".into(),
            site: "s".into(),
            utc_offset_min: 0,
            install_hook: None,
            health_check: None,
            enrolment: None,
        };
        // The node saves every manifest it took; after a restart it knows them again.
        let saved = if self.device.is_some() || self.disk.is_some() { self.known() } else { Vec::new() };
        let mut device = Device::new(now, config, device_key(self.d), restored, saved, tx);
        if keep {
            device.keep_outputs();
        }
        device.resume(now);
        self.device = Some(device);
        self.disk = Some(disk);
        self.effects = Some(rx);
        self.held.clear();
        self.settle(now);
    }

    fn known(&self) -> Vec<VerifiedManifest> {
        let device = self.device.as_ref().expect("running");
        self.manifests.iter().filter(|m| device.manifest(m.id()).is_some()).cloned().collect()
    }

    fn device(&mut self) -> &mut Device {
        self.device.as_mut().expect("the node is running")
    }

    /// Runs the disk's effects until nothing is left; results wait in `held`.
    fn settle(&mut self, now: Millis) {
        loop {
            let device = self.device.as_mut().expect("running");
            // Fetches are answered by the trace; reports are not part of the comparison.
            while device.poll_event().is_some() {}
            device.flush();
            self.outputs.extend(device.take_outputs());
            let mut moved = false;
            while let Ok(effect) = self.effects.as_ref().expect("running").try_recv() {
                moved = true;
                let disk = self.disk.as_mut().expect("running");
                if let Some(done) = disk.execute(now, effect).unwrap() {
                    self.held.push_back(done);
                }
                let slots = disk.contents().unwrap();
                self.device().done(now, Done::Slots(slots));
                self.device().flush();
            }
            if !moved {
                let outputs = self.device().take_outputs();
                self.outputs.extend(outputs);
                return;
            }
        }
    }

    /// Hands over the held result of the kind the trace says came now.
    fn deliver(&mut self, now: Millis, pick: impl Fn(&Done) -> Option<Done>) {
        let at = self.held.iter().position(|d| pick(d).is_some());
        let at = at
            .unwrap_or_else(|| panic!("device {}: the trace has a result the node never asked for", self.d));
        let done = self.held.remove(at).and_then(|d| pick(&d)).expect("picked above");
        self.device().done(now, done);
    }
}

fn replay(dir: &Path, trace: &Trace, releases: &[(&VerifiedManifest, &Vec<u8>)]) -> Vec<Output> {
    std::fs::create_dir_all(dir).unwrap();
    let (v0, v1) = (releases[0].0.clone(), releases[1].0.clone());
    let r = v1.id();
    let mut rig = NodeRig::new(dir, trace.device, releases);
    // Like every simulated device, the node runs the previous release already.
    rig.start(T0 - 1, false);
    let v0_id = v0.id();
    rig.device().offer(T0 - 1, v0).unwrap();
    rig.device().fetched(T0 - 1, v0_id);
    rig.settle(T0 - 1);
    while !rig.held.is_empty() {
        match rig.held.pop_front() {
            Some(done) => rig.device().done(T0 - 1, done),
            None => break,
        }
        rig.settle(T0 - 1);
    }
    assert_eq!(rig.device().slots().0.map(|s| s.release_id), Some(releases[0].0.id()), "v0 runs");
    rig.device().keep_outputs();
    let _ = rig.device().take_outputs();
    rig.outputs.clear();
    let mut crashed = false;
    let mut held_reports = Vec::new();
    for (t, input) in &trace.inputs {
        let t = *t;
        // The node's loop wakes the device at the times it asked for.
        while !crashed && let Some(due) = rig.device().poll_timeout().filter(|&due| due <= t) {
            rig.device().timeout(due);
            rig.settle(due);
        }
        match input {
            Input::Release => {
                rig.device().offer(t, v1.clone()).unwrap();
                for (reporter, sequence, verdict) in held_reports.drain(..) {
                    rig.device().verdict(t, reporter, r, sequence, verdict);
                }
            }
            Input::Directive(d) => {
                let _ = rig.device().directive(t, d);
            }
            Input::Report { reporter, sequence, verdict } => {
                // As the node's loop does: a report for a release not heard of yet is
                // held and counted when the release arrives.
                if !rig.device().verdict(t, *reporter, r, *sequence, *verdict) {
                    held_reports.push((*reporter, *sequence, *verdict));
                }
            }
            Input::Site(others) => rig.device().site(t, *others),
            Input::Fetched => rig.device().fetched(t, r),
            Input::Installed(result) => rig.deliver(t, |d| match d {
                Done::Installed(release, _) => Some(Done::Installed(*release, result.clone())),
                _ => None,
            }),
            Input::Activated => rig.deliver(t, |d| matches!(d, Done::Activated(_)).then(|| d.clone())),
            Input::Health(result) => rig.deliver(t, |d| match d {
                Done::Health(release, _) => Some(Done::Health(*release, result.clone())),
                _ => None,
            }),
            Input::Crash => {
                // Power lost: the process is gone, the disk stays as it was.
                crashed = true;
                continue;
            }
            Input::Restart => {
                crashed = false;
                rig.start(t, true);
                continue;
            }
        }
        rig.settle(t);
    }
    // Whatever the node still wanted to do on time (until the simulated run ended).
    let end = trace.inputs.last().map_or(T0, |(t, _)| *t);
    let last_out = trace.outputs.last().map_or(end, |(t, _)| *t);
    while !crashed && let Some(due) = rig.device().poll_timeout().filter(|&due| due <= last_out) {
        rig.device().timeout(due);
        rig.settle(due);
    }
    rig.outputs
}

fn has(trace: &Trace, f: impl Fn(&Output) -> bool) -> bool {
    trace.outputs.iter().any(|(_, o)| f(o))
}

#[test]
fn a_release_arrives_and_is_committed() {
    let traces = conform(Case { sets: &[], traced: &[0, 1], expires_in_s: None });
    assert!(traces.iter().all(|t| has(t, |o| matches!(o, Output::Commit(_)))));
}

#[test]
fn a_revoke_heard_before_its_release_is_honoured() {
    // Devices learn of the release by polling, long after the revoke went out.
    let sets = ["announce.mode=\"poll\"", "announce.poll_interval_s=600", "directives.revoke_at_s=1"];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2], expires_in_s: None });
    for t in &traces {
        assert!(!has(t, |o| matches!(o, Output::Activate(_) | Output::Fetch(_))), "revoked before heard of");
    }
}

#[test]
fn halt_then_resume_holds_a_later_wave_and_lets_it_go() {
    let sets = [
        "rollout.waves=[{percent=25}, {percent=100, after_s=600}]",
        "directives.halt_at_s=300",
        "directives.resume_at_s=2000",
        "fleet.devices=8",
    ];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3, 4, 5, 6, 7], expires_in_s: None });
    assert!(traces.iter().any(|t| has(t, |o| matches!(o, Output::Commit(_)))));
}

#[test]
fn a_revoke_after_commit_rolls_every_device_back_to_the_named_release() {
    let sets = ["directives.revoke_at_s=5000"];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3], expires_in_s: None });
    for t in &traces {
        assert!(has(t, |o| matches!(o, Output::Rollback(_))), "device {} rolled back", t.device);
    }
}

#[test]
fn a_breached_gate_stops_the_next_wave() {
    let sets = [
        "class.0.health_fail=1.0",
        "rollout.waves=[{percent=50}, {percent=100, after_s=3000}]",
        "rollout.gate={max_failure_ratio=0.0, min_reports=1}",
        "fleet.devices=6",
    ];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3, 4, 5], expires_in_s: None });
    assert!(
        traces.iter().any(|t| !has(t, |o| matches!(o, Output::Install(_)))),
        "someone was held by the gate"
    );
    assert!(traces.iter().any(|t| has(t, |o| matches!(o, Output::Report { .. }))), "reports were sent");
}

#[test]
fn a_crash_during_install_recovers_from_disk_the_same_way() {
    let sets = ["class.0.die_during_install=0.6"];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3], expires_in_s: None });
    assert!(
        traces.iter().any(|t| t.inputs.iter().any(|(_, i)| *i == Input::Crash)),
        "at least one traced device crashed mid-install"
    );
}

#[test]
fn one_install_slot_per_site_is_held_from_install_to_the_end_of_the_check() {
    let sets = ["rollout.max_concurrent_per_site=1"];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3], expires_in_s: None });
    assert!(traces.iter().any(|t| t.inputs.iter().any(|(_, i)| matches!(i, Input::Site(n) if *n > 0))));
}

#[test]
fn a_manifest_that_expires_while_waiting_for_its_wave_is_never_fetched() {
    let sets = ["rollout.waves=[{percent=25}, {percent=100, after_s=600}]", "fleet.devices=8"];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3, 4, 5, 6, 7], expires_in_s: Some(300) });
    assert!(traces.iter().any(|t| !has(t, |o| matches!(o, Output::Fetch(_)))), "a late wave never fetched");
}

#[test]
fn later_waves_wait_for_the_reports_of_earlier_ones() {
    let sets = [
        "rollout.waves=[{percent=25}, {percent=100, after_s=60, require_success=1.0, require_reports=2}]",
        "fleet.devices=8",
    ];
    let traces = conform(Case { sets: &sets, traced: &[0, 1, 2, 3, 4, 5, 6, 7], expires_in_s: None });
    assert!(traces.iter().all(|t| has(t, |o| matches!(o, Output::Commit(_)))));
}

/// The comparison is not vacuous: a node driver that decided on its own (here: it
/// ignores a revoke) is caught.
#[test]
fn a_driver_that_drops_an_input_is_caught() {
    let sets = ["directives.revoke_at_s=5000"];
    let sc = Scenario::parse("x.toml", BASE, &sets.map(str::to_owned)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (v0_data, v1_data) = (noise(1, 120_000), noise(2, 150_000));
    let v0 = release(&v0_data, 1, &sc, None);
    let v1 = release(&v1_data, 2, &sc, None);
    let setup = TraceSetup {
        release: Release::of(v1.id(), v1.manifest()),
        previous: Installed { release: v0.id(), sequence: 1 },
        devices: vec![(0, device_id(0))],
    };
    let (_, mut traces) = run_traced(&sc, 1, &setup);
    let mut trace = traces.remove(0);
    trace.inputs.retain(
        |(_, i)| !matches!(i, Input::Directive(d) if matches!(d.directive().order, Order::Revoke { .. })),
    );
    let node = replay(scratch.path(), &trace, &[(&v0, &v0_data), (&v1, &v1_data)]);
    let sim: Vec<Output> = trace.outputs.iter().map(|(_, o)| o.clone()).collect();
    assert_ne!(node, sim);
}
