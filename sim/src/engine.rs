//! The event engine: virtual time, the fleet, and the core lifecycle of every device.
//!
//! One [`World`] holds the whole simulated fleet as struct-of-arrays indexed by a `u32`
//! device index, with each site a contiguous range of indexes. Virtual time is an
//! integer count of microseconds; events are ordered by (time, insertion sequence), so
//! ties break the same way on every run. Each device runs the real core device machine
//! ([`otamesh_core::device::Device`], the one the node runs): the engine feeds it what
//! happened (the release heard, signed directives, reports, site slot counts, timeouts,
//! and the results of fetches, installs and health checks), drains its outputs after
//! every input (the core's drain rule) and executes them against the modelled network
//! and hardware. The fleet shares one [`Heard`]: every device hears the same gossip.
//!
//! Pending events stay proportional to sites and active devices rather than to the
//! fleet: device timeouts that fall on the same millisecond (a wave opening, a
//! maintenance window) share one calendar entry, and each flow group has one timer.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use otamesh_core::device::{Device, Heard, Installed, Output, Release, Slots};
use otamesh_core::directive::{
    DEFAULT_LIFETIME, Directive, DirectiveBook, Order, SignedDirective, VerifiedDirective,
};
use otamesh_core::gate::Verdict;
use otamesh_core::lifecycle::{Phase, Reason, State};
use otamesh_core::rollout::{ReleaseInfo, RolloutPolicy};
use otamesh_core::{ChunkId, DeviceId, Millis, ReleaseId, SecretKey, TrustRoot};

use crate::churn;
use crate::gossip::{self, Spread};
use crate::net::{Ended, FlowId, Flushed, LinkId, Micros, NO_LINK, NO_ROUTE, Net, Path, RouteId, Timer};
use crate::owner::Owners;
use crate::pieces::{Pieces, Wide};
use crate::queue::RadixQueue;
use crate::rng::{self, Purpose};
use crate::scenario::{AnnounceMode, GossipStyle, Mode, Scenario, SiteSize, SizeDist};
use crate::trace::{Input, Trace, TraceSetup};

/// Virtual time zero in the core's clock: 2023-11-15 00:00 UTC (a midnight), plus the
/// scenario's `start_utc`.
const MIDNIGHT_MS: Millis = 1_700_006_400_000;

const NONE: u32 = u32::MAX;
/// The first event's insertion sequence: above every report's (device << 32 | its
/// sequence), so that reports due in an instant go first (see `World::push_report`).
const FIRST_SEQ: u64 = 1 << 63;

/// One value per device of a shard, indexed by the device's fleet-wide index: a shard
/// keeps only its own devices' state, so two shards of a fleet take the memory of one.
#[derive(Debug, Clone)]
struct PerDevice<T> {
    first: u32,
    values: Vec<T>,
}

impl<T> PerDevice<T> {
    fn from_fn(devices: &Range<u32>, f: impl FnMut(u32) -> T) -> Self {
        Self { first: devices.start, values: devices.clone().map(f).collect() }
    }

    /// None at all, for state a scenario's mode never reads.
    fn none() -> Self {
        Self { first: 0, values: Vec::new() }
    }
}

impl<T: Clone> PerDevice<T> {
    fn new(devices: &Range<u32>, value: T) -> Self {
        Self { first: devices.start, values: vec![value; (devices.end - devices.start) as usize] }
    }
}

impl<T> std::ops::Index<usize> for PerDevice<T> {
    type Output = T;

    fn index(&self, d: usize) -> &T {
        &self.values[d - self.first as usize]
    }
}

impl<T> std::ops::IndexMut<usize> for PerDevice<T> {
    fn index_mut(&mut self, d: usize) -> &mut T {
        &mut self.values[d - self.first as usize]
    }
}

/// The device class of the simulated release and fleet (hardware profiles are the
/// scenario's `classes`; every device takes the release).
const SIM_CLASS: &str = "sim";

/// Lifecycle states as indexes, in [`State`] order (the core's [`Phase::NAMES`]), plus
/// "not yet heard of the release".
pub const STATE_NAMES: [&str; 10] = {
    let mut names = ["unannounced"; 10];
    let mut i = 0;
    while i < Phase::NAMES.len() {
        names[i] = Phase::NAMES[i];
        i += 1;
    }
    names
};
const WAITING: u8 = Phase::Waiting as u8;
const FETCHING: u8 = Phase::Fetching as u8;
const STAGED: u8 = Phase::Staged as u8;
const INSTALLING: u8 = Phase::Installing as u8;
const CHECKING: u8 = Phase::Checking as u8;
const COMMITTED: u8 = Phase::Committed as u8;
const ROLLED_BACK: u8 = Phase::RolledBack as u8;
const UNANNOUNCED: u8 = 9;

/// One row of the time series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Virtual seconds since the release was published.
    pub t_s: f64,
    /// Devices per state, indexed like [`STATE_NAMES`].
    pub states: [u64; 10],
    /// Devices offline.
    pub offline: u64,
    /// Cumulative bytes over site WAN links, counted as they flow.
    pub wan_bytes: f64,
    /// Cumulative bytes between devices (site LANs and `[[peering]]` links), counted
    /// as they flow.
    pub lan_bytes: f64,
}

/// Everything a run measured; [`crate::report`] turns it into files.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The scenario's name.
    pub scenario: String,
    /// The master seed.
    pub seed: u64,
    /// Devices in the fleet.
    pub devices: u64,
    /// Sites.
    pub sites: u64,
    /// Release size.
    pub release_bytes: u64,
    /// Distribution mode.
    pub mode: &'static str,
    /// Times (s) at which 50, 90, 99 and 100% of the eligible devices had committed.
    pub t_s: [Option<f64>; 4],
    /// Devices that heard of the release: the denominator of the `t*` shares.
    pub eligible: u64,
    /// Devices committed at the end.
    pub committed: u64,
    /// Devices whose install or health check failed.
    pub failed: u64,
    /// Devices that had started and were rolled back by a revoke.
    pub rolled_back: u64,
    /// Devices that never started fetching.
    pub never_started: u64,
    /// Bytes over site WAN links (finished, aborted and, at the end, in flight).
    pub wan_bytes: f64,
    /// Bytes between devices (the same): over site LANs and `[[peering]]` links.
    pub lan_bytes: f64,
    /// Of those, bytes over `[[peering]]` links.
    pub peering_bytes: f64,
    /// Every commit, seconds since publication, in time order.
    pub commit_s: Vec<f64>,
    /// Peak origin egress, bytes per second.
    pub origin_peak: f64,
    /// When the release was first halted (health gate or operator).
    pub halted_at_s: Option<f64>,
    /// When a revoke reached the fleet.
    pub revoked_at_s: Option<f64>,
    /// When the last rollback (of any reason) finished.
    pub rollback_done_s: Option<f64>,
    /// Devices in the first wave.
    pub first_wave_devices: u64,
    /// Devices between fetching and health check when the halt came.
    pub in_flight_at_halt: u64,
    /// Per-device fetch durations (from starting to fetch to having every byte),
    /// seconds: mean, median, 90th and 99th percentiles; `None` when none finished.
    pub fetch_s: [Option<f64>; 4],
    /// Per-device install durations, seconds, the same way.
    pub install_s: [Option<f64>; 4],
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end.
    pub end_s: f64,
    /// Wave start times, seconds (for plots).
    pub wave_starts_s: Vec<f64>,
    /// The time series.
    pub series: Vec<Sample>,
}

/// Progress, reported every few thousand events.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Virtual seconds simulated.
    pub t_s: f64,
    /// The scenario's duration.
    pub duration_s: f64,
    /// Devices committed so far.
    pub committed: u64,
    /// Events so far.
    pub events: u64,
}

/// Runs a scenario with a master seed. `progress` is called every few thousand events.
pub fn run(sc: &Scenario, seed: u64, progress: &mut dyn FnMut(Progress)) -> RunResult {
    play(sc, seed, None, progress).0
}

/// Plays a scenario, tracing the devices `setup` names (as one shard, whatever
/// `sim.shards` says), with the narrowest piece sets that hold its release.
fn play(
    sc: &Scenario,
    seed: u64,
    setup: Option<&TraceSetup>,
    progress: &mut dyn FnMut(Progress),
) -> (RunResult, Vec<Trace>) {
    if sc.pieces() <= u64::CAPACITY {
        play_with::<u64>(sc, seed, setup, progress)
    } else {
        play_with::<Wide>(sc, seed, setup, progress)
    }
}

fn play_with<P: Pieces>(
    sc: &Scenario,
    seed: u64,
    setup: Option<&TraceSetup>,
    progress: &mut dyn FnMut(Progress),
) -> (RunResult, Vec<Trace>) {
    if sc.sim.shards > 1 && setup.is_none() {
        return (run_sharded::<P>(sc, seed, progress), Vec::new());
    }
    let mut w = World::<P>::new(sc, seed, setup, 0, 1);
    w.run(progress);
    let traces = std::mem::take(&mut w.traces);
    (assemble(vec![w.part()]), traces)
}

/// Plays the fleet as `sim.shards` shards of whole sites, one thread each. Sites are
/// coupled only by reports (the scenario check makes sure), and a report reaches the
/// tally `report_delay_s` after it is sent, so every shard can play the events due
/// before the soonest pending event anywhere plus that delay without hearing from the
/// others (conservative synchronization with that lookahead); then the reports each
/// sent in the window are delivered to the others, and the next window starts. Every
/// shard keeps the whole fleet's tally, fed the same reports at the same times.
fn run_sharded<P: Pieces>(sc: &Scenario, seed: u64, progress: &mut dyn FnMut(Progress)) -> RunResult {
    let shards = sc.sim.shards;
    let mut worlds: Vec<World<'_, P>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..shards).map(|i| s.spawn(move || World::new(sc, seed, None, i, shards))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    for w in &mut worlds {
        w.start();
        w.note_idle();
    }
    let window = ((sc.directives.report_delay_s * 1e6).round() as Micros).max(1);
    let end_us = worlds[0].end_us;
    // The run stops where one world would have stopped it: at the first instant when
    // nothing important is pending and no transfer is live anywhere, or at the
    // scenario's end. A shard with nothing important left keeps playing its churn and
    // samples meanwhile (a device coming back online may still send a report), noting
    // since when it has been idle.
    let end = loop {
        let next = worlds.iter().filter_map(|w| w.heap.peek()).map(|(t, _)| t).min();
        let Some(next) = next.filter(|&t| t <= end_us) else {
            break idle_since(&worlds).unwrap_or(end_us);
        };
        let until = next.saturating_add(window);
        std::thread::scope(|s| {
            let (first, rest) = worlds.split_first_mut().expect("at least one shard");
            let handles: Vec<_> =
                rest.iter_mut().map(|w| s.spawn(move || w.run_until(until, None))).collect();
            first.run_until(until, None);
            for h in handles {
                h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            }
        });
        let mail: Vec<Vec<Mail>> = worlds.iter_mut().map(|w| std::mem::take(&mut w.outbox)).collect();
        for (i, w) in worlds.iter_mut().enumerate() {
            for (j, letters) in mail.iter().enumerate() {
                if i != j {
                    w.receive(letters);
                }
            }
        }
        progress(Progress {
            t_s: worlds.iter().map(|w| w.now).max().unwrap_or(0) as f64 / 1e6,
            duration_s: sc.sim.duration_s,
            committed: worlds.iter().map(|w| w.counts[COMMITTED as usize]).sum(),
            events: worlds.iter().map(|w| w.events).sum(),
        });
        if let Some(end) = idle_since(&worlds).filter(|_| mail.iter().all(Vec::is_empty)) {
            break end;
        }
    };
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = worlds
            .iter_mut()
            .map(|w| {
                s.spawn(move || {
                    if w.idle_from.is_some_and(|t| t <= end) && end < end_us {
                        w.stop_at(end);
                    } else {
                        w.finish(end);
                    }
                    w.part()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    assemble(parts)
}

/// The instant since which every shard has been idle (nothing important pending, no
/// transfer live); `None` while one is not.
fn idle_since<P: Pieces>(worlds: &[World<'_, P>]) -> Option<Micros> {
    worlds.iter().map(|w| w.idle_from).try_fold(0, |end, idle| idle.map(|t| end.max(t)))
}

/// Why [`World::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The next event is at or after the window's end.
    Window,
    /// Nothing important is pending and no transfer is live.
    Idle,
    /// The next event is after the scenario's end.
    Beyond,
}

/// A report sent by a device of one shard, for the tallies of the others.
#[derive(Debug, Clone, Copy)]
struct Mail {
    at: Micros,
    d: u32,
    verdict: Verdict,
    seq: u32,
}

/// Runs a scenario and records, for the devices `setup` names, every input their
/// machine was fed and every output it gave (see [`crate::trace`]).
/// Traced runs play the fleet as one shard, whatever `sim.shards` says.
pub fn run_traced(sc: &Scenario, seed: u64, setup: &TraceSetup) -> (RunResult, Vec<Trace>) {
    play(sc, seed, Some(setup), &mut |_| {})
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Announce(u8),
    Admit(u32),
    Wake,
    Net(Timer),
    FetchSteps,
    Installed { d: u32, epoch: u32 },
    Activated { d: u32, epoch: u32 },
    Health { d: u32, epoch: u32 },
    RollbackDone,
    Crash { d: u32, epoch: u32 },
    Recover { d: u32, epoch: u32 },
    Online(u32),
    Offline(u32),
    Report { d: u32, verdict: Verdict, seq: u32 },
    Halt,
    Resume,
    Revoke,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowKind {
    /// A device's whole remaining release from the origin (central mode).
    Central,
    /// A device fetching a piece from the origin for itself (p2p mode).
    Wan,
    /// A site's rendezvous owner fetching a piece over the WAN (p2p-dedup).
    WanPiece,
    /// A site's rendezvous owner fetching a piece from a holder at a peered site, over
    /// their `[[peering]]` link (p2p-dedup).
    PeerPiece,
    /// A device fetching a piece from a site peer.
    Lan,
}

impl FlowKind {
    /// Whether a device sends it (holding one of its upload slots); the others come
    /// from the origin.
    fn sent_by_device(self) -> bool {
        matches!(self, Self::Lan | Self::PeerPiece)
    }

    /// Whether a site's owner fetches it for the whole site (a piece the site has in
    /// flight), rather than its receiver for itself (the receiver's download).
    fn for_site(self) -> bool {
        matches!(self, Self::WanPiece | Self::PeerPiece)
    }
}

/// Bytes moved, by where they went.
#[derive(Debug, Clone, Copy, Default)]
struct Moved {
    /// From the origin, over site WANs.
    wan: f64,
    /// Between devices: on site LANs and over `[[peering]]` links.
    lan: f64,
    /// Of `lan`, over `[[peering]]` links.
    peering: f64,
}

impl Moved {
    fn add(&mut self, kind: FlowKind, bytes: f64) {
        if kind.sent_by_device() {
            self.lan += bytes;
        } else {
            self.wan += bytes;
        }
        if kind == FlowKind::PeerPiece {
            self.peering += bytes;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FlowMeta {
    kind: FlowKind,
    dst: u32,
    /// The sending device of a LAN or peer-piece flow (`NONE` for the origin).
    src: u32,
    piece: u16,
}

#[derive(Debug)]
struct World<'a, P: Pieces> {
    sc: &'a Scenario,
    seed: u64,
    n: u32,
    sites: u32,
    k: u32,
    mode: Mode,
    piece_len: Vec<f64>,
    need_mask: P,
    chunk_ids: Vec<ChunkId>,
    release: ReleaseInfo,
    policy: RolloutPolicy,
    /// What every device heard: the release, the directives, the reports.
    heard: Heard,
    /// Signs the scenario's directives, so devices apply real verified directives.
    publisher: SecretKey,
    trust: TrustRoot,
    /// The release every device runs before this one: what a revoke returns to.
    previous: Installed,
    latency_us: Micros,
    end_us: Micros,
    sample_us: Micros,

    // Devices (struct of arrays).
    site: PerDevice<u32>,
    class: PerDevice<u8>,
    ids: PerDevice<DeviceId>,
    online: PerDevice<bool>,
    machine: PerDevice<Option<Device>>,
    state: PerDevice<u8>,
    started: PerDevice<bool>,
    /// When each device last began fetching (the start of its planner's settle).
    fetching_since: PerDevice<Micros>,
    life_epoch: PerDevice<u32>,
    net_epoch: PerDevice<u32>,
    attempts: PerDevice<u8>,
    churn_n: PerDevice<u32>,
    have: PerDevice<P>,
    download: PerDevice<FlowId>,
    /// Flows the device receives (its LAN or origin download, and WAN pieces it owns).
    receiving: PerDevice<u16>,
    /// Flows the device serves to site peers.
    uploads: PerDevice<u16>,
    /// Its place in its site's `servers`, or `NONE`.
    server_pos: PerDevice<u32>,
    /// Central mode: bytes of the release a device already has from an interrupted
    /// download (HTTP range requests resume there). Empty in the other modes.
    got: PerDevice<f64>,
    /// Who hears the release in which gossip round.
    spread: Spread,
    /// An open system (`[arrivals]`): when each device arrives; empty otherwise.
    arrive_at: Vec<Micros>,
    /// When each device entered its current state, and the finished fetches' and
    /// installs' durations (seconds).
    state_at: PerDevice<Micros>,
    fetch_durations: Vec<f64>,
    install_durations: Vec<f64>,
    requesting: PerDevice<bool>,
    report_seq: PerDevice<u32>,
    in_blocked: PerDevice<bool>,
    in_waiters: PerDevice<bool>,
    queued_reports: BTreeMap<u32, Vec<(Verdict, u32)>>,

    // Sites.
    site_start: Vec<u32>,
    site_zone: Vec<i16>,
    holders: Vec<u32>,
    /// Per site, its online holders with a free upload slot.
    servers: Vec<Vec<u32>>,
    slots: u16,
    /// Per class, the downlink in bytes per second.
    downlink: Vec<f64>,
    /// Per site, the named links its WAN flows cross ([`NO_ROUTE`] for none), and the
    /// delay before a fetch starts (empty when no site has a path: `latency_us`).
    site_route: Vec<RouteId>,
    site_latency: Vec<Micros>,
    /// Whether a site's WAN flows share its group (the origin is unlimited), so every
    /// flow a device receives is in one group and its downlink is one shared link.
    merged: bool,
    /// Each site's flow group: the site itself, or with `[[peering]]` the lowest site
    /// its peerings join it to (their links couple their flows). Empty without.
    site_group: Vec<u32>,
    /// Per site, the sites it peers with (empty without `[[peering]]`).
    peers: Vec<Vec<Peer>>,
    inflight: Vec<P>,
    wan_count: Vec<u32>,
    wan_flow: Vec<FlowId>,
    /// p2p-dedup: each piece's rendezvous owner on each site, kept as members change.
    owners: Owners,
    waiters: Vec<Vec<u32>>,
    staged: Vec<Vec<u32>>,
    installing: Vec<u32>,
    site_dirty: Vec<bool>,
    dirty_sites: Vec<u32>,

    // Network.
    net: Net,
    flow_meta: Vec<FlowMeta>,
    live_flows: u64,
    timers: Vec<Flushed>,
    ended: Vec<Ended>,
    /// Scratch for [`World::retune`]: the flows one device receives.
    retuned: Vec<FlowId>,

    // Rollout state.
    blocked: BTreeMap<u16, VecDeque<u32>>,
    gate_breached: bool,
    op_halted: bool,
    halted_at: Option<Micros>,
    revoked_at: Option<Micros>,
    in_flight_at_halt: u64,

    // Queue.
    heap: RadixQueue<(bool, Ev)>,
    seq: u64,
    important: u64,
    calendar: BTreeMap<Micros, Vec<u32>>,
    /// Pending fetch steps by time: (device, its fetch epoch when scheduled).
    steps: BTreeMap<Micros, Vec<(u32, u32)>>,
    now: Micros,

    // Metrics.
    counts: [u64; 10],
    offline_count: u64,
    commit_times: Vec<Micros>,
    /// Bytes of finished and aborted transfers.
    moved: Moved,
    /// Bytes moved so far by the flows' rates (the time series), and when last updated.
    wan_flowed: f64,
    lan_flowed: f64,
    flowed_at: Micros,
    origin_rate: f64,
    lan_rate: f64,
    origin_peak: f64,
    last_rollback: Option<Micros>,
    events: u64,
    series: Vec<Sample>,

    // Traced devices: index into `traces`, and the site count last recorded.
    traced: BTreeMap<u32, usize>,
    traces: Vec<Trace>,
    traced_site: Vec<Option<u32>>,

    // Shards (see `run_sharded`): the sites this world plays and their devices (every
    // one with one shard), reports for the other shards, and (sharded) the origin's
    // egress after each change, for the fleet's peak.
    site_range: Range<u32>,
    devices: Range<u32>,
    sharded: bool,
    outbox: Vec<Mail>,
    origin_log: Vec<(Micros, f64)>,
    /// Sharded: since when nothing important is pending here, and the devices offline
    /// after each change since then (see `World::note_idle`).
    idle_from: Option<Micros>,
    idle_offline: Vec<(Micros, u64)>,
}

/// A site's peering (`[[peering]]`), seen from one of its two sites.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// The other site.
    site: u32,
    /// Their link.
    link: LinkId,
    /// Whether a piece the other site is fetching from the origin is worth waiting
    /// for: its way to the origin is no slower than this site's.
    awaits: bool,
}

/// Each site's flow group and peers, from the scenario's `[[peering]]`s (both empty
/// without), given each site's WAN capacity (`wan`) and where the named links start.
fn peerings(sc: &Scenario, wan: &[f64], first_named: LinkId) -> (Vec<u32>, Vec<Vec<Peer>>) {
    if sc.peerings.is_empty() {
        return (Vec::new(), Vec::new());
    }
    // Invariant: `Scenario::check` found every name.
    let named = |name: &str| sc.link_index(name).expect("a checked link name");
    // The slowest link on a site's way to the origin: its WAN, or a [[path]] link.
    let mut way = wan.to_vec();
    for p in &sc.paths {
        let slowest =
            p.links.iter().map(|n| sc.links[named(n)].mbps * 1e6 / 8.0).fold(f64::INFINITY, f64::min);
        for &s in &p.sites {
            way[s as usize] = way[s as usize].min(slowest);
        }
    }
    // Groups: sites joined by peerings (or by peerings over one shared link) share one,
    // named by its lowest site.
    let mut group: Vec<u32> = (0..wan.len() as u32).collect();
    fn root(group: &mut [u32], s: u32) -> u32 {
        let mut r = s;
        while group[r as usize] != r {
            r = group[r as usize];
        }
        group[s as usize] = r;
        r
    }
    let mut join = |a: u32, b: u32| {
        let (ra, rb) = (root(&mut group, a), root(&mut group, b));
        group[ra.max(rb) as usize] = ra.min(rb);
    };
    let mut peers = vec![Vec::new(); wan.len()];
    for (i, p) in sc.peerings.iter().enumerate() {
        let [a, b] = p.sites;
        join(a, b);
        if let Some(o) = sc.peerings[..i].iter().find(|o| o.link == p.link) {
            join(a, o.sites[0]);
        }
        let link = first_named + named(&p.link) as LinkId;
        let (wa, wb) = (way[a as usize], way[b as usize]);
        peers[a as usize].push(Peer { site: b, link, awaits: wb >= wa });
        peers[b as usize].push(Peer { site: a, link, awaits: wa >= wb });
    }
    let site_group = (0..wan.len() as u32).map(|s| root(&mut group, s)).collect();
    (site_group, peers)
}

/// What one shard measured, for [`assemble`].
struct Part {
    result: RunResult,
    commit_times: Vec<Micros>,
    fetch_durations: Vec<f64>,
    install_durations: Vec<f64>,
    origin_log: Vec<(Micros, f64)>,
}

/// Device `d`'s identity: the scenario's, or drawn from the seed.
fn device_id(sc: &Scenario, seed: u64, d: u32) -> DeviceId {
    if let Some(&id) = sc.fleet.device_ids.get(d as usize) {
        return id;
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&rng::draw(seed, u64::from(d), Purpose::Identity, 0).to_le_bytes());
    key[8..16].copy_from_slice(&rng::draw(seed, u64::from(d), Purpose::Identity, 1).to_le_bytes());
    key[16..20].copy_from_slice(&d.to_le_bytes());
    DeviceId::of_public_key(&key)
}

impl<'a, P: Pieces> World<'a, P> {
    /// Shard `shard` of `shards` of the fleet (0 of 1: all of it).
    fn new(sc: &'a Scenario, seed: u64, setup: Option<&TraceSetup>, shard: u32, shards: u32) -> Self {
        let n = sc.fleet.devices;
        let sites = sc.fleet.sites;
        let k = sc.pieces();
        let release_id = sc.release.id.unwrap_or_else(|| {
            let mut h = blake3::Hasher::new();
            h.update(b"otamesh-sim/release\0");
            h.update(&seed.to_le_bytes());
            h.update(sc.name().as_bytes());
            ReleaseId::from_bytes(*h.finalize().as_bytes())
        });
        let created_at = MIDNIGHT_MS + u64::from(sc.sim.start_utc.0) * 60_000;
        let sim_release = Release {
            info: ReleaseInfo { id: release_id, kind: sc.release.kind, created_at },
            class: SIM_CLASS.to_owned(),
            sequence: 1,
            precursor: None,
            expires_at: None,
            policy: sc.rollout.clone(),
        };
        let sim_release = setup.map_or(sim_release, |s| s.release.clone());
        let release = sim_release.info;
        let release_id = release.id;
        let policy = sim_release.policy.clone();
        let mut heard = Heard::new(sim_release.class.clone(), DirectiveBook::default());
        let added = heard.add_release(sim_release);
        debug_assert_eq!(added, Ok(true));
        let previous = setup.map_or_else(
            || {
                let mut h = blake3::Hasher::new();
                h.update(b"otamesh-sim/previous\0");
                h.update(release_id.as_bytes());
                Installed { release: ReleaseId::from_bytes(*h.finalize().as_bytes()), sequence: 0 }
            },
            |s| s.previous,
        );
        let publisher = {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_le_bytes());
            SecretKey::from_seed(*blake3::hash(&s).as_bytes())
        };
        let trust = TrustRoot::single(publisher.public());
        let piece_len: Vec<f64> = (0..u64::from(k))
            .map(|p| {
                let start = p * sc.release.piece_bytes;
                (sc.release.bytes.min(start + sc.release.piece_bytes) - start) as f64
            })
            .collect();
        let chunk_ids = (0..k)
            .map(|p| {
                let mut h = blake3::Hasher::new();
                h.update(release_id.as_bytes());
                h.update(&p.to_le_bytes());
                ChunkId::from_bytes(*h.finalize().as_bytes())
            })
            .collect();
        // A delta: the same pieces are already on every device (they all run the
        // previous release); which ones is drawn once per run.
        let full = P::below(k);
        let present = ((sc.release.delta_fraction * f64::from(k)).round() as u32).min(k);
        let mut order: Vec<u32> = (0..k).collect();
        order.sort_by_key(|&p| rng::draw(seed, u64::from(p), Purpose::Delta, 0));
        let mut delta = P::default();
        for &p in &order[..present as usize] {
            delta.insert(p);
        }
        let need_mask = full.minus(delta);

        // Sites: contiguous ranges of device indexes.
        let weights: Vec<f64> = (0..sites)
            .map(|s| match sc.fleet.site_size {
                SiteSize::Equal => 1.0,
                SiteSize::Skewed => {
                    // Box-Muller on two draws: log-normal, sigma 1.
                    let u1 = rng::unit(seed, u64::from(s), Purpose::SiteSize, 0).max(1e-12);
                    let u2 = rng::unit(seed, u64::from(s), Purpose::SiteSize, 1);
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()).exp()
                }
            })
            .collect();
        let site_start = partition(n, &weights);
        // Shards of whole sites, cut where a site's first device passes a share of the
        // fleet.
        let first_site = |i: u32| {
            let share = u64::from(i) * u64::from(n);
            site_start[..sites as usize].partition_point(|&d| u64::from(d) * u64::from(shards) < share) as u32
        };
        let site_range = first_site(shard)..if shard + 1 == shards { sites } else { first_site(shard + 1) };
        let devices = site_start[site_range.start as usize]..site_start[site_range.end as usize];
        let mut site = vec![0u32; n as usize];
        for s in 0..sites as usize {
            for d in site_start[s]..site_start[s + 1] {
                site[d as usize] = s as u32;
            }
        }
        let zones = &sc.fleet.utc_offsets_min;
        let site_zone = (0..sites)
            .map(|s| {
                zones[(rng::draw(seed, u64::from(s), Purpose::SiteZone, 0) % zones.len() as u64) as usize]
            })
            .collect();
        let class = PerDevice::from_fn(&devices, |d| {
            let u = rng::unit(seed, u64::from(d), Purpose::Class, 0) * 100.0;
            let mut acc = 0.0;
            let mut pick = sc.classes.len() - 1;
            for (i, c) in sc.classes.iter().enumerate() {
                acc += c.share;
                if u < acc {
                    pick = i;
                    break;
                }
            }
            pick as u8
        });
        let mut ids = PerDevice::from_fn(&devices, |d| device_id(sc, seed, d));
        let mut traced = BTreeMap::new();
        let mut traces = Vec::new();
        for &(d, id) in setup.map_or(&[][..], |s| &s.devices[..]) {
            if devices.contains(&d) {
                ids[d as usize] = id;
                traced.insert(d, traces.len());
                traces.push(Trace { device: d, ..Trace::default() });
            }
        }

        // Links (see `World::lan_link` and the others): site LANs, site WANs, the
        // origin, then every device's downlink and uplink. All of a device's flows
        // share its two links, so nothing moves faster than a device can send or take.
        let mbps = |x: f64| x * 1e6 / 8.0;
        let origin = sc.network.origin_egress_mbps;
        let mut caps = Vec::with_capacity(2 * sites as usize + 1 + 2 * devices.len());
        caps.extend((0..sites).map(|_| mbps(sc.network.site_lan_mbps)));
        caps.extend((0..sites).map(|s| {
            let u = rng::unit(seed, u64::from(s), Purpose::SiteWan, 0);
            // Box-Muller on two more draws, made only when a spread asks for them.
            let z = if sc.network.site_wan_sigma > 0.0 {
                let u1 = rng::unit(seed, u64::from(s), Purpose::SiteWan, 1).max(1e-300);
                let u2 = rng::unit(seed, u64::from(s), Purpose::SiteWan, 2);
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            } else {
                0.0
            };
            mbps(sc.network.site_wan_at(u, z))
        }));
        caps.push(if origin > 0.0 { mbps(origin) } else { f64::INFINITY });
        caps.extend(class.values.iter().map(|&c| mbps(sc.classes[c as usize].downlink_mbps)));
        caps.extend(class.values.iter().map(|&c| mbps(sc.classes[c as usize].uplink_mbps)));
        // Named links, after every device's; a site's path crosses them in order.
        let first_named = caps.len() as LinkId;
        caps.extend(sc.links.iter().map(|l| mbps(l.mbps)));
        let (site_group, peers) = peerings(sc, &caps[sites as usize..2 * sites as usize], first_named);
        // One group per site, and one for every WAN flow when a finite origin couples
        // them (or named links may: they are shared by the sites on their paths).
        let mut net = Net::new(caps, sites as usize + 1);
        let latency_us = (sc.network.latency_ms * 1000.0).round() as Micros;
        let mut site_route = vec![NO_ROUTE; sites as usize];
        let mut site_latency = Vec::new();
        if !sc.paths.is_empty() {
            site_latency = vec![latency_us; sites as usize];
            for p in &sc.paths {
                let named: Vec<usize> = p
                    .links
                    .iter()
                    // Invariant: `Scenario::check` found every name.
                    .map(|n| sc.link_index(n).expect("a checked link name"))
                    .collect();
                let links: Vec<LinkId> = named.iter().map(|&i| first_named + i as LinkId).collect();
                let route = net.add_route(&links);
                // The first request is a round trip over the path.
                let one_way: f64 = named.iter().map(|&i| sc.links[i].latency_ms).sum();
                for &s in &p.sites {
                    site_route[s as usize] = route;
                    site_latency[s as usize] = latency_us + (2.0 * one_way * 1000.0).round() as Micros;
                }
            }
        }
        let arrive_at: Vec<Micros> = match &sc.arrivals {
            None => Vec::new(),
            Some(a) => match (&a.times_s, a.rate_per_s) {
                (Some(times), _) => times.iter().map(|&t| (t * 1e6).round() as Micros).collect(),
                (None, Some(rate)) => {
                    // A Poisson process: exponential gaps, device 0 first.
                    let mut t = 0.0;
                    (0..n)
                        .map(|d| {
                            t += rng::exponential(seed, u64::from(d), Purpose::Arrival, 0, 1.0 / rate);
                            (t * 1e6).round() as Micros
                        })
                        .collect()
                }
                // Invariant: `Scenario::check` requires one of them.
                (None, None) => unreachable!("checked: arrivals have a rate or times"),
            },
        };
        let spread = match sc.announce.mode {
            _ if sc.arrivals.is_some() => Spread::default(),
            AnnounceMode::Gossip => {
                let lan = gossip::Sites { site: &site, start: &site_start };
                let relay = sc.announce.site_relay.then_some(lan);
                let (fanout, hop_delay_s) = (sc.announce.fanout, sc.announce.hop_delay_s);
                // Devices offline at a round's time neither push nor hear in it.
                let churned = sc.churn.as_ref().map(|c| churn::Schedule::new(seed, c));
                let mut churned = churned.map(|s| gossip::Churned::new(s, n, hop_delay_s));
                match (sc.announce.style, &mut churned) {
                    (GossipStyle::Push, None) => gossip::push(seed, n, fanout, relay),
                    (GossipStyle::Push, Some(c)) => gossip::push_with(seed, n, fanout, relay, c),
                    (GossipStyle::PushPull, None) => gossip::push_pull(seed, n, fanout, relay),
                    (GossipStyle::PushPull, Some(c)) => gossip::push_pull_with(seed, n, fanout, relay, c),
                }
            }
            AnnounceMode::Poll => Spread::default(),
        };
        let spread = if shards > 1 { spread.only(devices.clone()) } else { spread };

        let sample_s = sc.sim.sample_s.unwrap_or((sc.sim.duration_s / 5000.0).max(1.0));
        Self {
            sc,
            seed,
            n,
            sites,
            k,
            mode: sc.network.mode,
            piece_len,
            need_mask,
            chunk_ids,
            release,
            policy,
            heard,
            publisher,
            trust,
            previous,
            latency_us,
            end_us: (sc.sim.duration_s * 1e6).round() as Micros,
            sample_us: ((sample_s * 1e6).round() as Micros).max(1),
            site: PerDevice::from_fn(&devices, |d| site[d as usize]),
            class,
            ids,
            online: PerDevice::new(&devices, true),
            machine: PerDevice::new(&devices, None),
            state: PerDevice::new(&devices, UNANNOUNCED),
            started: PerDevice::new(&devices, false),
            fetching_since: PerDevice::new(&devices, 0),
            life_epoch: PerDevice::new(&devices, 0),
            net_epoch: PerDevice::new(&devices, 0),
            attempts: PerDevice::new(&devices, 0),
            churn_n: PerDevice::new(&devices, 0),
            have: PerDevice::new(&devices, P::default()),
            download: PerDevice::new(&devices, NONE),
            receiving: PerDevice::new(&devices, 0),
            uploads: PerDevice::new(&devices, 0),
            server_pos: PerDevice::new(&devices, NONE),
            got: if sc.network.mode == Mode::Central {
                PerDevice::new(&devices, 0.0)
            } else {
                PerDevice::none()
            },
            spread,
            arrive_at,
            state_at: PerDevice::new(&devices, 0),
            fetch_durations: Vec::new(),
            install_durations: Vec::new(),
            requesting: PerDevice::new(&devices, false),
            report_seq: PerDevice::new(&devices, 0),
            in_blocked: PerDevice::new(&devices, false),
            in_waiters: PerDevice::new(&devices, false),
            queued_reports: BTreeMap::new(),
            site_start,
            site_zone,
            holders: vec![0; sites as usize * k as usize],
            servers: vec![Vec::new(); sites as usize],
            downlink: sc.classes.iter().map(|c| mbps(c.downlink_mbps)).collect(),
            merged: origin <= 0.0 && sc.paths.is_empty(),
            site_group,
            peers,
            site_route,
            site_latency,
            slots: sc.network.upload_slots.min(u32::from(u16::MAX)) as u16,
            inflight: vec![P::default(); sites as usize],
            wan_count: vec![0; sites as usize],
            wan_flow: vec![NONE; sites as usize * k as usize],
            owners: Owners::new(sites, k),
            waiters: vec![Vec::new(); sites as usize],
            staged: vec![Vec::new(); sites as usize],
            installing: vec![0; sites as usize],
            site_dirty: vec![false; sites as usize],
            dirty_sites: Vec::new(),
            net,
            flow_meta: Vec::new(),
            live_flows: 0,
            timers: Vec::new(),
            ended: Vec::new(),
            retuned: Vec::new(),
            blocked: BTreeMap::new(),
            gate_breached: false,
            op_halted: false,
            halted_at: None,
            revoked_at: None,
            in_flight_at_halt: 0,
            heap: RadixQueue::default(),
            seq: FIRST_SEQ,
            important: 0,
            calendar: BTreeMap::new(),
            steps: BTreeMap::new(),
            now: 0,
            counts: [0, 0, 0, 0, 0, 0, 0, 0, 0, u64::from(devices.end - devices.start)],
            offline_count: 0,
            commit_times: Vec::new(),
            moved: Moved::default(),
            wan_flowed: 0.0,
            lan_flowed: 0.0,
            flowed_at: 0,
            origin_rate: 0.0,
            lan_rate: 0.0,
            origin_peak: 0.0,
            last_rollback: None,
            events: 0,
            series: Vec::new(),
            traced_site: vec![None; traces.len()],
            traced,
            traces,
            site_range,
            devices,
            sharded: shards > 1,
            outbox: Vec::new(),
            origin_log: Vec::new(),
            idle_from: None,
            idle_offline: Vec::new(),
        }
    }

    /// Device `d`'s place among this shard's devices.
    fn local(&self, d: u32) -> u32 {
        d - self.devices.start
    }

    /// Device `d`'s identity, whichever shard plays it.
    fn id(&self, d: u32) -> DeviceId {
        if self.devices.contains(&d) { self.ids[d as usize] } else { device_id(self.sc, self.seed, d) }
    }

    /// Device `d`'s report reaches the tally at `t`: this shard's, and (sharded) every
    /// other's.
    fn send_report(&mut self, t: Micros, d: u32, verdict: Verdict, seq: u32) {
        self.push_report(t, d, verdict, seq);
        if self.sharded {
            self.outbox.push(Mail { at: t, d, verdict, seq });
        }
    }

    /// Reports another shard's devices sent.
    fn receive(&mut self, mail: &[Mail]) {
        for m in mail {
            self.push_report(m.at, m.d, m.verdict, m.seq);
        }
    }

    /// Device `d`'s report `seq` reaches the tally at `t`. Reports due in one instant
    /// are taken before anything else due then, in order of device and sequence: the
    /// same order whether the fleet plays as one world or as shards, whose reports
    /// arrive by mail at the end of a window. (A report due now, with no delay, takes
    /// its turn like any event: the queue cannot go back within the instant.)
    fn push_report(&mut self, t: Micros, d: u32, verdict: Verdict, seq: u32) {
        if t == self.now {
            self.push(t, Ev::Report { d, verdict, seq }, true);
            return;
        }
        self.important += 1;
        self.heap.push((t, u64::from(d) << 32 | u64::from(seq)), (true, Ev::Report { d, verdict, seq }));
    }

    /// Records what happened to device `d`, if it is traced.
    fn record(&mut self, d: u32, input: impl FnOnce() -> Input) {
        if let Some(&t) = self.traced.get(&d) {
            let now = self.now_ms();
            self.traces[t].inputs.push((now, input()));
        }
    }

    /// Records the site count `d`'s machine is about to be told, when it changed.
    fn record_site(&mut self, d: u32, others: u32) {
        if let Some(&t) = self.traced.get(&d)
            && self.traced_site[t] != Some(others)
        {
            self.traced_site[t] = Some(others);
            self.record(d, || Input::Site(others));
        }
    }

    fn push(&mut self, t: Micros, ev: Ev, important: bool) {
        self.seq += 1;
        if important {
            self.important += 1;
        }
        self.heap.push((t, self.seq), (important, ev));
    }

    fn now_ms(&self) -> Millis {
        self.release.created_at + self.now / 1000
    }

    fn secs(&self, s: f64) -> Micros {
        (s * 1e6).round() as Micros
    }

    fn run(&mut self, progress: &mut dyn FnMut(Progress)) {
        self.start();
        let end = match self.run_until(Micros::MAX, Some(progress)) {
            Pause::Beyond => self.end_us,
            _ => self.now,
        };
        self.finish(end);
    }

    /// Plays the events due before `until`, up to the scenario's end, and stops early
    /// when nothing important is pending and no transfer is live.
    fn run_until(&mut self, until: Micros, mut progress: Option<&mut dyn FnMut(Progress)>) -> Pause {
        loop {
            if !self.sharded && self.important == 0 && self.live_flows == 0 {
                return Pause::Idle;
            }
            let Some((t, _)) = self.heap.peek() else { return Pause::Idle };
            if t > self.end_us {
                return Pause::Beyond;
            }
            if t >= until {
                return Pause::Window;
            }
            self.step();
            if self.sharded {
                self.note_idle();
            }
            if self.events & 0xFFFF == 0
                && let Some(progress) = progress.as_mut()
            {
                progress(Progress {
                    t_s: self.now as f64 / 1e6,
                    duration_s: self.sc.sim.duration_s,
                    committed: self.counts[COMMITTED as usize],
                    events: self.events,
                });
            }
        }
    }

    /// Plays the next event.
    fn step(&mut self) {
        let Some(((t, _), (important, ev))) = self.heap.pop() else { return };
        self.now = t;
        if important {
            self.important -= 1;
        }
        self.events += 1;
        self.handle(ev);
        self.after_event();
    }

    /// A shard: notes since when nothing important is pending and no transfer is live
    /// here (none: something is), and how many devices were offline after each event
    /// since then, so the run can end at the instant every shard was idle.
    fn note_idle(&mut self) {
        if self.important == 0 && self.live_flows == 0 {
            if self.idle_from.is_none() {
                self.idle_from = Some(self.now);
                self.idle_offline.clear();
            }
            if self.idle_offline.last().is_none_or(|&(_, n)| n != self.offline_count) {
                self.idle_offline.push((self.now, self.offline_count));
            }
        } else {
            self.idle_from = None;
        }
    }

    /// Ends a shard's run at `end`, an instant since which it has been idle, though it
    /// went on playing churn and samples after it: takes back the samples after `end`
    /// and counts the devices offline as at `end`, then takes the last sample.
    fn stop_at(&mut self, end: Micros) {
        let t_end = end as f64 / 1e6;
        while self.series.last().is_some_and(|s| s.t_s > t_end) {
            self.series.pop();
        }
        let at = self.idle_offline.partition_point(|&(t, _)| t <= end);
        if let Some(&(_, offline)) = at.checked_sub(1).and_then(|i| self.idle_offline.get(i)) {
            self.offline_count = offline;
        }
        // Nothing flowed since the shard went idle.
        self.flowed_at = self.flowed_at.min(end);
        self.now = end;
        self.sample();
    }

    /// Ends the run at `end`: plays what is left before it (in a shard that went idle
    /// sooner than the fleet: samples and churn), then takes the last sample.
    fn finish(&mut self, end: Micros) {
        while self.heap.peek().is_some_and(|(t, _)| t < end) {
            self.step();
        }
        self.now = end;
        self.sample();
    }

    fn start(&mut self) {
        let sc = self.sc;
        if let Some(churn) = &sc.churn {
            let schedule = churn::Schedule::new(self.seed, churn);
            for d in self.devices.clone() {
                let on = schedule.starts_online(d);
                self.churn_n[d as usize] = 1;
                if !on {
                    self.online[d as usize] = false;
                    self.offline_count += 1;
                }
                self.schedule_toggle(d);
            }
        }
        match sc.announce.mode {
            _ if sc.arrivals.is_some() => {
                for d in self.devices.clone() {
                    self.push(self.arrive_at[d as usize], Ev::Admit(d), true);
                }
            }
            AnnounceMode::Gossip => {
                for round in 1..=self.spread.last_round() {
                    if !self.spread.heard_in(round).is_empty() {
                        let t = gossip::round_at(round, sc.announce.hop_delay_s);
                        self.push(t, Ev::Announce(round), true);
                    }
                }
            }
            AnnounceMode::Poll => {
                for d in self.devices.clone() {
                    let t = self.announce_at(d);
                    self.push(t, Ev::Admit(d), true);
                }
            }
        }
        let d = &sc.directives;
        let delay = d.delay_s;
        for (at, ev) in [(d.halt_at_s, Ev::Halt), (d.resume_at_s, Ev::Resume), (d.revoke_at_s, Ev::Revoke)] {
            if let Some(at) = at {
                let t = self.secs(at + delay);
                self.push(t, ev, true);
            }
        }
        self.push(0, Ev::Sample, false);
    }

    fn announce_at(&self, d: u32) -> Micros {
        let a = &self.sc.announce;
        if let Some(&t) = self.arrive_at.get(d as usize) {
            return t;
        }
        match a.mode {
            AnnounceMode::Gossip => match self.spread.round[d as usize] {
                gossip::UNHEARD => Micros::MAX,
                round => gossip::round_at(round, a.hop_delay_s),
            },
            AnnounceMode::Poll => {
                self.secs(rng::unit(self.seed, u64::from(d), Purpose::Announce, 0) * a.poll_interval_s)
            }
        }
    }

    fn schedule_toggle(&mut self, d: u32) {
        let Some(churn) = &self.sc.churn else { return };
        let i = d as usize;
        let n = self.churn_n[i];
        self.churn_n[i] += 1;
        let t = self.now + churn::Schedule::new(self.seed, churn).period_us(d, n, self.online[i]);
        if self.online[i] {
            self.push(t, Ev::Offline(d), false);
        } else {
            let important = !matches!(self.state[i], COMMITTED | ROLLED_BACK);
            self.push(t, Ev::Online(d), important);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Announce(round) => {
                // Only this round's devices: the work follows the gossip, not the fleet.
                let (a, b) =
                    (self.spread.starts[usize::from(round)], self.spread.starts[usize::from(round) + 1]);
                for at in a..b {
                    let d = self.spread.order[at as usize];
                    if self.devices.contains(&d)
                        && self.online[d as usize]
                        && self.state[d as usize] == UNANNOUNCED
                    {
                        self.admit(d);
                    }
                }
            }
            Ev::Admit(d) => {
                if self.online[d as usize] && self.state[d as usize] == UNANNOUNCED {
                    self.admit(d);
                }
            }
            Ev::Wake => {
                let bucket = self.calendar.remove(&self.now).unwrap_or_default();
                let ms = self.now_ms();
                for d in bucket {
                    let due = self.machine[d as usize].as_ref().is_some_and(|m| m.poll_timeout() == Some(ms));
                    if due {
                        self.timeout(d);
                    }
                }
            }
            Ev::Net(timer) => {
                let mut ended = std::mem::take(&mut self.ended);
                self.net.complete(self.now, timer, &mut ended);
                for e in ended.drain(..) {
                    self.flow_done(e);
                }
                self.ended = ended;
            }
            Ev::FetchSteps => {
                let bucket = self.steps.remove(&self.now).unwrap_or_default();
                for (d, epoch) in bucket {
                    let i = d as usize;
                    if epoch == self.net_epoch[i] && self.requesting[i] {
                        self.requesting[i] = false;
                        if self.online[i] && self.state[i] == FETCHING && self.download[i] == NONE {
                            self.fetch_select(d);
                        }
                    }
                }
            }
            Ev::Installed { d, epoch } => {
                if epoch == self.life_epoch[d as usize] {
                    let c = &self.sc.classes[self.class[d as usize] as usize];
                    let attempt = u64::from(self.attempts[d as usize]);
                    let fails =
                        rng::unit(self.seed, u64::from(d), Purpose::InstallFail, attempt) < c.install_fail;
                    let result = if fails { Err("simulated install failure".to_owned()) } else { Ok(()) };
                    self.record(d, || Input::Installed(result.clone()));
                    let r = self.release.id;
                    self.feed(d, |dev, heard, now| dev.handle_installed(now, heard, r, result));
                }
            }
            Ev::Activated { d, epoch } => {
                if epoch == self.life_epoch[d as usize] {
                    self.record(d, || Input::Activated);
                    let r = self.release.id;
                    self.feed(d, |dev, heard, now| dev.handle_activated(now, heard, r));
                }
            }
            Ev::Health { d, epoch } => {
                if epoch == self.life_epoch[d as usize] {
                    let c = &self.sc.classes[self.class[d as usize] as usize];
                    // One draw per device, whatever the strategy: a device fails the same
                    // way under every rollout policy.
                    let fails = rng::unit(self.seed, u64::from(d), Purpose::HealthFail, 0) < c.health_fail;
                    let result =
                        if fails { Err("simulated health check failure".to_owned()) } else { Ok(()) };
                    self.record(d, || Input::Health(result.clone()));
                    let r = self.release.id;
                    self.feed(d, |dev, heard, now| dev.handle_health(now, heard, r, result));
                }
            }
            Ev::RollbackDone => {
                self.last_rollback = Some(self.now);
            }
            Ev::Crash { d, epoch } => {
                if epoch == self.life_epoch[d as usize] {
                    // Power lost mid-install: nothing runs until the device is back.
                    self.record(d, || Input::Crash);
                    self.life_epoch[d as usize] += 1;
                    let reboot = self.draw_reboot(d, 2 + u64::from(self.attempts[d as usize]));
                    let epoch = self.life_epoch[d as usize];
                    self.push(self.now + reboot, Ev::Recover { d, epoch }, true);
                }
            }
            Ev::Recover { d, epoch } => {
                if epoch == self.life_epoch[d as usize] {
                    self.record(d, || Input::Restart);
                    self.recover(d);
                }
            }
            Ev::Online(d) => self.go_online(d),
            Ev::Offline(d) => self.go_offline(d),
            Ev::Report { d, verdict, seq } => {
                let reporter = self.id(d);
                let _ = self.heard.record_report(reporter, self.release.id, u64::from(seq), verdict);
                let traced: Vec<u32> = self.traced.keys().copied().collect();
                for t in traced {
                    let sequence = u64::from(seq);
                    self.record(t, || Input::Report { reporter, sequence, verdict });
                }
                self.tally_changed();
            }
            Ev::Halt => {
                self.op_halted = true;
                self.mark_halted();
                self.direct(Order::Halt);
            }
            Ev::Resume => {
                self.op_halted = false;
                self.direct(Order::Resume);
            }
            Ev::Revoke => {
                if self.revoked_at.is_none() {
                    self.revoked_at = Some(self.now);
                }
                self.direct(Order::Revoke { to: self.previous.release });
            }
            Ev::Sample => {
                self.sample();
                let next = self.now + self.sample_us;
                if next <= self.end_us {
                    self.push(next, Ev::Sample, false);
                }
            }
        }
    }

    /// A signed directive reaches the fleet: applied once to what the fleet heard (a
    /// repeat is refused there, as on a node), then every online device that took the
    /// release up acts on it; the others catch up when they come online.
    fn direct(&mut self, order: Order) {
        let sequence = self.heard.standing(self.release.id).sequence + 1;
        let issued_at = self.now_ms();
        let expires_at = issued_at + DEFAULT_LIFETIME;
        let directive = Directive { release: self.release.id, order, sequence, issued_at, expires_at };
        let signed = SignedDirective::sign(directive, &self.publisher);
        // Invariant: signed just now with the key `trust` holds.
        let verified: VerifiedDirective =
            self.trust.verify_directive(signed, issued_at).expect("signed by the sim's key");
        if self.heard.apply_directive(&verified).is_err() {
            return;
        }
        for d in self.devices.clone() {
            // A device that has not heard of the release yet hears the directive too: it
            // refuses the release when it arrives.
            if self.online[d as usize] {
                self.ensure_machine(d);
                self.record(d, || Input::Directive(verified.clone()));
                self.feed(d, |dev, heard, now| dev.handle_directive(now, heard, &verified));
            }
        }
    }

    /// Feeds device `d`'s machine one input, then executes what it wants ([`World::sync`]).
    fn feed(&mut self, d: u32, f: impl FnOnce(&mut Device, &Heard, Millis)) {
        let now = self.now_ms();
        let Self { machine, heard, .. } = self;
        if let Some(dev) = machine[d as usize].as_mut() {
            f(dev, heard, now);
        }
        self.sync(d);
    }

    fn after_event(&mut self) {
        while let Some(s) = self.dirty_sites.pop() {
            self.site_dirty[s as usize] = false;
            self.wake_staged(s);
        }
        let mut timers = std::mem::take(&mut self.timers);
        self.net.flush(self.now, &mut timers);
        // Rates change only here: count what flowed at the old rates up to now first.
        let dt = (self.now - self.flowed_at) as f64 / 1e6;
        self.wan_flowed += self.origin_rate * dt;
        self.lan_flowed += self.lan_rate * dt;
        self.flowed_at = self.now;
        for f in timers.drain(..) {
            // Every WAN flow comes from the origin: the metered rates are its egress.
            self.origin_rate = (self.origin_rate + f.metered_delta).max(0.0);
            self.lan_rate = (self.lan_rate + f.delta - f.metered_delta).max(0.0);
            if self.origin_rate > self.origin_peak {
                self.origin_peak = self.origin_rate;
            }
            if self.sharded && f.metered_delta != 0.0 {
                self.origin_log.push((self.now, self.origin_rate));
            }
            if let Some(timer) = f.timer
                && timer.at != Micros::MAX
            {
                self.push(timer.at, Ev::Net(timer), false);
            }
        }
        self.timers = timers;
    }

    fn sample(&mut self) {
        let t_s = self.now as f64 / 1e6;
        if self.series.last().is_some_and(|s| s.t_s == t_s) {
            self.series.pop();
        }
        let dt = (self.now - self.flowed_at) as f64 / 1e6;
        self.series.push(Sample {
            t_s,
            states: self.counts,
            offline: self.offline_count,
            wan_bytes: self.wan_flowed + self.origin_rate * dt,
            lan_bytes: self.lan_flowed + self.lan_rate * dt,
        });
    }

    // ---- Devices and their lifecycle -------------------------------------------

    /// Device `d`'s machine, made when it first hears anything.
    fn ensure_machine(&mut self, d: u32) {
        let i = d as usize;
        if self.machine[i].is_none() {
            let zone = self.site_zone[self.site[i] as usize];
            let slots = Slots { active: Some(self.previous), inactive: None };
            self.machine[i] = Some(Device::new(self.ids[i], zone, slots));
        }
    }

    fn admit(&mut self, d: u32) {
        self.ensure_machine(d);
        self.record(d, || Input::Release);
        let r = self.release.id;
        self.feed(d, |dev, heard, now| dev.handle_release(now, heard, r));
        self.timeout(d);
    }

    /// The device is back after a crash: its machine is rebuilt from what it had
    /// persisted, as a node rebuilds it from its database.
    fn recover(&mut self, d: u32) {
        let i = d as usize;
        let now = self.now_ms();
        let Some(old) = self.machine[i].as_ref() else { return };
        let last = old.current().map(|(r, s)| (r, s.clone()));
        let zone = self.site_zone[self.site[i] as usize];
        self.machine[i] = Some(Device::restore(now, &self.heard, self.ids[i], zone, old.slots(), [], last));
        self.sync(d);
    }

    /// Other members of `d`'s site holding an install slot.
    fn site_others(&self, d: u32) -> u32 {
        let s = self.site[d as usize] as usize;
        self.installing[s] - u32::from(holds_site_slot(self.state[d as usize]))
    }

    /// Feeds the machine a timeout (or a re-evaluation) now, with the site's slot count.
    fn timeout(&mut self, d: u32) {
        let others = self.site_others(d);
        self.record_site(d, others);
        self.feed(d, |dev, heard, now| {
            dev.handle_site(now, heard, others);
            dev.handle_timeout(now, heard);
        });
    }

    fn set_state(&mut self, d: u32, new: u8) {
        let i = d as usize;
        let old = self.state[i];
        if old == new {
            return;
        }
        self.counts[old as usize] -= 1;
        self.counts[new as usize] += 1;
        self.state[i] = new;
        if self.online[i] && (old == FETCHING) != (new == FETCHING) {
            self.member_changed(d, new == FETCHING);
        }
        let spent = (self.now - self.state_at[i]) as f64 / 1e6;
        self.state_at[i] = self.now;
        match old {
            FETCHING => self.fetch_durations.push(spent),
            INSTALLING => self.install_durations.push(spent),
            _ => {}
        }
        let s = self.site[i] as usize;
        if holds_site_slot(old) && !holds_site_slot(new) {
            self.installing[s] -= 1;
            self.mark_site(s as u32);
        }
        if holds_site_slot(new) && !holds_site_slot(old) {
            self.installing[s] += 1;
        }
        if new == STAGED {
            self.staged[s].push(d);
        }
        if new == FETCHING {
            self.started[i] = true;
            self.fetching_since[i] = self.now;
        }
        if new == COMMITTED {
            self.commit_times.push(self.now);
        }
        if old == FETCHING {
            // Fetching ended (all here, or stopped): cancel what is in progress.
            self.net_epoch[i] += 1;
            self.requesting[i] = false;
            if self.download[i] != NONE {
                self.abort_flow(self.download[i]);
            }
        }
        if old == INSTALLING && new == ROLLED_BACK {
            // A revoke mid-install: the install timer must not fire into a later state.
            self.life_epoch[i] += 1;
        }
    }

    /// After any input to device `d`: record its state, schedule its timeout, execute
    /// its actions (the drain rule), and note it when only reports can move it.
    fn sync(&mut self, d: u32) {
        let i = d as usize;
        let Some(m) = self.machine[i].as_ref() else { return };
        // A device that refused the release (revoked before it heard of it) has none.
        let new = m.current().map_or(UNANNOUNCED, |(_, s)| state_index(s));
        let wake = m.poll_timeout();
        self.set_state(d, new);
        if let Some(ms) = wake {
            let t = (ms.saturating_sub(self.release.created_at)).saturating_mul(1000).max(self.now);
            match self.calendar.get_mut(&t) {
                Some(bucket) => bucket.push(d),
                None => {
                    self.calendar.insert(t, vec![d]);
                    self.push(t, Ev::Wake, true);
                }
            }
        }
        while let Some(output) = self.machine[i].as_mut().and_then(|m| m.poll_output()) {
            if let Some(&t) = self.traced.get(&d) {
                let now = self.now_ms();
                self.traces[t].outputs.push((now, output.clone()));
            }
            self.execute(d, output);
        }
        let Some(m) = self.machine[i].as_ref() else { return };
        if self.state[i] == WAITING && m.poll_timeout().is_none() && !m.is_halted() && !self.in_blocked[i] {
            self.in_blocked[i] = true;
            let key = m.wave(&self.heard).map_or(u16::MAX, |w| w as u16);
            self.blocked.entry(key).or_default().push_back(d);
        }
    }

    fn execute(&mut self, d: u32, output: Output) {
        let i = d as usize;
        let c = &self.sc.classes[self.class[i] as usize];
        let epoch = self.life_epoch[i];
        match output {
            Output::Fetch(_) => {
                if self.online[i] {
                    self.fetch_begin(d);
                }
            }
            // State, audit rows, slot bookkeeping: a node's disk, not modelled here.
            Output::Persist { .. }
            | Output::Directive { .. }
            | Output::Audit(_)
            | Output::StopFetch(_)
            | Output::DiscardInactive
            | Output::Commit(_) => {}
            Output::Install(_) => {
                let attempt = u64::from(self.attempts[i]);
                self.attempts[i] = self.attempts[i].saturating_add(1);
                let (lo, hi) = c.install_s.bounds();
                let dur = rng::uniform(self.seed, u64::from(d), Purpose::Install, attempt, lo, hi);
                let dies =
                    rng::unit(self.seed, u64::from(d), Purpose::Death, 2 * attempt) < c.die_during_install;
                if dies {
                    let at = rng::unit(self.seed, u64::from(d), Purpose::Death, 2 * attempt + 1) * dur;
                    self.push(self.now + self.secs(at), Ev::Crash { d, epoch }, true);
                } else {
                    self.push(self.now + self.secs(dur), Ev::Installed { d, epoch }, true);
                }
            }
            Output::Activate(_) => {
                let reboot = self.draw_reboot(d, 0);
                self.push(self.now + reboot, Ev::Activated { d, epoch }, true);
            }
            Output::RunHealthCheck(_) => {
                let t = self.now + self.secs(c.health_check_s);
                self.push(t, Ev::Health { d, epoch }, true);
            }
            Output::Rollback(_) => {
                let reboot = self.draw_reboot(d, 1);
                self.push(self.now + reboot, Ev::RollbackDone, true);
            }
            Output::Report { outcome, .. } => {
                self.report_seq[i] += 1;
                let seq = self.report_seq[i];
                let verdict = outcome.verdict();
                if self.online[i] {
                    let t = self.now + self.secs(self.sc.directives.report_delay_s);
                    self.send_report(t, d, verdict, seq);
                } else {
                    self.queued_reports.entry(d).or_default().push((verdict, seq));
                }
            }
        }
    }

    fn draw_reboot(&self, d: u32, n: u64) -> Micros {
        let c = &self.sc.classes[self.class[d as usize] as usize];
        let (lo, hi) = c.reboot_s.bounds();
        self.secs(rng::uniform(self.seed, u64::from(d), Purpose::Reboot, n, lo, hi))
    }

    fn mark_halted(&mut self) {
        if self.halted_at.is_none() {
            self.halted_at = Some(self.now);
            self.in_flight_at_halt = self.counts[FETCHING as usize..=CHECKING as usize].iter().sum();
            if let Some(after) = self.sc.directives.revoke_after_halt_s {
                let t = self.now + self.secs(after + self.sc.directives.delay_s);
                self.push(t, Ev::Revoke, true);
            }
        }
    }

    fn tally_changed(&mut self) {
        let breached = self.heard.gate_breached(self.release.id);
        if breached && !self.gate_breached {
            self.mark_halted();
        }
        if !breached && self.gate_breached {
            for s in self.site_range.clone() {
                if !self.staged[s as usize].is_empty() {
                    self.mark_site(s);
                }
            }
        }
        self.gate_breached = breached;
        // Devices waiting on reports: ask one of each wave; if it moves, ask them all.
        let keys: Vec<u16> = self.blocked.keys().copied().collect();
        for key in keys {
            let rep = loop {
                let Some(list) = self.blocked.get_mut(&key) else { break None };
                let Some(&d) = list.front() else { break None };
                if self.still_blocked(d) {
                    break Some(d);
                }
                let list = self.blocked.get_mut(&key).expect("key exists: just read");
                list.pop_front();
                self.in_blocked[d as usize] = false;
            };
            let Some(rep) = rep else {
                self.blocked.remove(&key);
                continue;
            };
            self.timeout(rep);
            if self.still_blocked(rep) {
                continue;
            }
            let list = self.blocked.remove(&key).unwrap_or_default();
            for &d in &list {
                self.in_blocked[d as usize] = false;
            }
            for d in list {
                if self.still_blocked(d) {
                    self.timeout(d);
                }
            }
        }
    }

    fn still_blocked(&self, d: u32) -> bool {
        self.state[d as usize] == WAITING
            && self.machine[d as usize].as_ref().is_some_and(|m| m.poll_timeout().is_none() && !m.is_halted())
    }

    fn mark_site(&mut self, s: u32) {
        if !self.site_dirty[s as usize] {
            self.site_dirty[s as usize] = true;
            self.dirty_sites.push(s);
        }
    }

    /// A site's install count dropped or the gate lifted: staged devices may go.
    fn wake_staged(&mut self, s: u32) {
        let list = std::mem::take(&mut self.staged[s as usize]);
        let mut keep = Vec::new();
        for d in list {
            if self.state[d as usize] != STAGED {
                continue;
            }
            self.timeout(d);
            if self.state[d as usize] == STAGED {
                keep.push(d);
            }
        }
        let added = std::mem::take(&mut self.staged[s as usize]);
        keep.extend(added.into_iter().filter(|&d| self.state[d as usize] == STAGED));
        keep.dedup();
        self.staged[s as usize] = keep;
    }

    fn go_online(&mut self, d: u32) {
        let i = d as usize;
        self.online[i] = true;
        if self.state[i] == FETCHING {
            self.member_changed(d, true);
        }
        self.offline_count -= 1;
        self.schedule_toggle(d);
        let s = self.site[i];
        self.add_holdings(d, s);
        if let Some(reports) = self.queued_reports.remove(&d) {
            let t = self.now + self.secs(self.sc.directives.report_delay_s);
            for (verdict, seq) in reports {
                self.send_report(t, d, verdict, seq);
            }
        }
        if self.state[i] == UNANNOUNCED {
            if self.announce_at(d) <= self.now {
                self.admit(d);
            }
            return;
        }
        // Directives that came while it was away.
        let r = self.release.id;
        self.feed(d, |dev, heard, now| dev.catch_up(now, heard, r));
        if self.state[i] == FETCHING && self.download[i] == NONE {
            self.fetch_begin(d);
        }
    }

    fn go_offline(&mut self, d: u32) {
        let i = d as usize;
        self.online[i] = false;
        if self.state[i] == FETCHING {
            self.member_changed(d, false);
        }
        self.offline_count += 1;
        self.schedule_toggle(d);
        self.net_epoch[i] += 1;
        self.requesting[i] = false;
        if self.download[i] != NONE {
            self.abort_flow(self.download[i]);
        }
        let s = self.site[i];
        if self.mode == Mode::P2pDedup {
            for p in 0..self.k {
                let f = self.wan_flow[(s * self.k + p) as usize];
                if f != NONE && self.flow_meta[f as usize].dst == d {
                    self.abort_flow(f);
                }
            }
        }
        // What it was serving stops; its receivers choose again (another holder, or
        // they wait).
        let serving: Vec<FlowId> = self
            .net
            .group_flows(self.group_of(s))
            .iter()
            .copied()
            .filter(|&f| {
                let m = self.flow_meta[f as usize];
                m.kind.sent_by_device() && m.src == d
            })
            .collect();
        let mut receivers = Vec::with_capacity(serving.len());
        for f in serving {
            receivers.push(self.flow_meta[f as usize].dst);
            self.abort_flow(f);
        }
        for p in self.have[i].iter() {
            self.holders[(s * self.k + p) as usize] -= 1;
        }
        self.update_server(d);
        for r in receivers {
            if self.online[r as usize]
                && self.state[r as usize] == FETCHING
                && self.download[r as usize] == NONE
            {
                self.fetch_step(r);
            }
        }
    }

    /// The site LAN link of site `s`.
    fn lan_link(&self, s: u32) -> LinkId {
        s
    }

    /// The WAN link of site `s`.
    fn wan_link(&self, s: u32) -> LinkId {
        self.sites + s
    }

    /// The origin's egress link.
    fn origin_link(&self) -> LinkId {
        2 * self.sites
    }

    /// Device `d`'s downlink.
    fn down_link(&self, d: u32) -> LinkId {
        2 * self.sites + 1 + self.local(d)
    }

    /// Device `d`'s uplink.
    fn up_link(&self, d: u32) -> LinkId {
        2 * self.sites + 1 + (self.devices.end - self.devices.start) + self.local(d)
    }

    /// Keeps device `d` in its site's list of servers exactly when it is online, holds
    /// a piece and has a free upload slot.
    fn update_server(&mut self, d: u32) {
        let i = d as usize;
        let s = self.site[i] as usize;
        let serves = self.online[i] && !self.have[i].is_empty() && self.uploads[i] < self.slots;
        let pos = self.server_pos[i];
        if serves && pos == NONE {
            self.server_pos[i] = self.servers[s].len() as u32;
            self.servers[s].push(d);
        } else if !serves && pos != NONE {
            self.servers[s].swap_remove(pos as usize);
            if let Some(&moved) = self.servers[s].get(pos as usize) {
                self.server_pos[moved as usize] = pos;
            }
            self.server_pos[i] = NONE;
        }
    }

    /// An online device of site `s` now holds piece `p`; returns whether it is the
    /// site's first online holder.
    fn add_holder(&mut self, s: u32, p: u32) -> bool {
        let slot = (s * self.k + p) as usize;
        self.holders[slot] += 1;
        self.holders[slot] == 1
    }

    fn add_holdings(&mut self, d: u32, s: u32) {
        let have = self.have[d as usize];
        for p in have.iter() {
            self.add_holder(s, p);
        }
        self.update_server(d);
        if !have.is_empty() {
            // A server is back: up to `slots` waiting peers may fetch from it.
            self.wake_waiters(s, usize::from(self.slots));
        }
    }

    // ---- Fetching ---------------------------------------------------------------

    /// Starts or resumes fetching after a connection set-up of one request latency;
    /// later requests are pipelined behind transfers, so they add no further delay.
    fn fetch_begin(&mut self, d: u32) {
        let i = d as usize;
        let latency = self.site_latency.get(self.site[i] as usize).copied().unwrap_or(self.latency_us);
        if latency == 0 {
            self.fetch_select(d);
        } else if !self.requesting[i] {
            self.requesting[i] = true;
            let epoch = self.net_epoch[i];
            self.schedule_step(self.now + latency, d, epoch);
        }
    }

    /// Device `d` takes its next fetch step at `t` (unless its fetch was cut meanwhile:
    /// `epoch`). Steps due at the same microsecond share one event: a gossip round's
    /// devices all finish their connection set-up together, and a site's all wait for
    /// the same owner to settle, so the queue holds one entry for each, and each site's
    /// flows are re-solved once for all its devices' steps.
    fn schedule_step(&mut self, t: Micros, d: u32, epoch: u32) {
        match self.steps.get_mut(&t) {
            Some(bucket) => bucket.push((d, epoch)),
            None => {
                self.steps.insert(t, vec![(d, epoch)]);
                self.push(t, Ev::FetchSteps, true);
            }
        }
    }

    fn fetch_step(&mut self, d: u32) {
        if !self.requesting[d as usize] {
            self.fetch_select(d);
        }
    }

    /// Chooses and starts device `d`'s next transfer, or declares its fetch done.
    fn fetch_select(&mut self, d: u32) {
        let i = d as usize;
        if self.download[i] != NONE || self.state[i] != FETCHING {
            return;
        }
        let s = self.site[i];
        let need = self.need_mask.minus(self.have[i]);
        if need.is_empty() {
            let (r, others) = (self.release.id, self.site_others(d));
            self.record_site(d, others);
            self.record(d, || Input::Fetched);
            self.feed(d, |dev, heard, now| {
                dev.handle_site(now, heard, others);
                dev.handle_fetched(now, heard, r);
            });
            return;
        }
        if self.mode == Mode::Central {
            // An interrupted download resumes where it stopped (an HTTP range request).
            let total = need.iter().map(|p| self.piece_len[p as usize]).sum::<f64>() * self.size_factor(d);
            let bytes = (total - self.got[i]).max(0.0);
            self.start_flow(FlowMeta { kind: FlowKind::Central, dst: d, src: NONE, piece: u16::MAX }, bytes);
            return;
        }
        let rot = (rng::draw(self.seed, u64::from(d), Purpose::PieceOrder, 0) % u64::from(self.k)) as u32;
        // Pieces a site peer with a free upload slot can serve now (each holder serves
        // `upload_slots` peers at once, whatever pieces they ask for, as swarming
        // clients do).
        let mut unheld = P::default();
        for p in need.iter() {
            if self.holders[(s * self.k + p) as usize] == 0 {
                unheld.insert(p);
            }
        }
        let wanted = need.minus(unheld);
        let mut servable = P::default();
        if !wanted.is_empty() {
            for &e in &self.servers[s as usize] {
                servable = servable.union(self.have[e as usize]);
                if wanted.minus(servable).is_empty() {
                    break;
                }
            }
        }
        // Rarest first among them.
        let mut best: Option<(u32, u32, u32)> = None;
        for p in wanted.iter() {
            let h = self.holders[(s * self.k + p) as usize];
            if !servable.contains(p) {
                continue;
            }
            let key = (h, (p + self.k - rot) % self.k, p);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        if let Some((_, _, p)) = best {
            let src = self.server_of(s, p);
            let meta = FlowMeta { kind: FlowKind::Lan, dst: d, src, piece: p as u16 };
            self.start_flow(meta, self.piece_len[p as usize]);
            return;
        }
        let first_in = |set: P| (0..self.k).map(|j| (rot + j) % self.k).find(|&p| set.contains(p));
        if self.mode == Mode::P2p {
            // A piece nobody on the site holds comes from the origin; one that peers
            // hold but cannot serve yet is worth waiting for.
            if let Some(p) = first_in(unheld) {
                let meta = FlowMeta { kind: FlowKind::Wan, dst: d, src: NONE, piece: p as u16 };
                self.start_flow(meta, self.piece_len[p as usize]);
                return;
            }
        }
        // p2p-dedup: the piece's rendezvous owner among the site's live fetching
        // members brings it over the WAN; everyone else waits for it on the LAN.
        let absent = unheld.minus(self.inflight[s as usize]);
        if self.mode == Mode::P2pDedup
            && !absent.is_empty()
            && self.wan_count[s as usize] < self.sc.network.wan_parallel
            && let Some((p, from)) = self.first_source(s, absent, rot)
        {
            let owner = self.wan_owner(s, p);
            // As on the node: no origin fetch before the owner's planner has settled.
            let settled =
                self.fetching_since[owner as usize].saturating_add(self.secs(self.sc.network.settle_s));
            if self.now >= settled {
                let kind = if from == NONE { FlowKind::WanPiece } else { FlowKind::PeerPiece };
                let meta = FlowMeta { kind, dst: owner, src: from, piece: p as u16 };
                self.start_flow(meta, self.piece_len[p as usize]);
            } else if !self.requesting[i] {
                self.requesting[i] = true;
                let epoch = self.net_epoch[i];
                self.schedule_step(settled, d, epoch);
            }
        }
        if !self.in_waiters[i] {
            self.in_waiters[i] = true;
            self.waiters[s as usize].push(d);
        }
    }

    /// p2p-dedup: the first piece of `absent` (none of site `s` holds or fetches them),
    /// from piece `rot` on, that site `s` should fetch now, and from where: a holder at
    /// a peered site with a free upload slot, or the origin ([`NONE`]). A piece a peered
    /// site holds but cannot serve yet, or is fetching over a way to the origin no slower
    /// than this site's, is waited for; `None` when every piece is.
    fn first_source(&self, s: u32, absent: P, rot: u32) -> Option<(u32, u32)> {
        let pieces = (0..self.k).map(|j| (rot + j) % self.k).filter(|&p| absent.contains(p));
        let Some(peers) = self.peers.get(s as usize) else {
            return pieces.map(|p| (p, NONE)).next();
        };
        'pieces: for p in pieces {
            for peer in peers {
                let t = peer.site;
                if self.holders[(t * self.k + p) as usize] > 0 {
                    match self.server_holding(t, p) {
                        NONE => continue 'pieces,
                        e => return Some((p, e)),
                    }
                }
                if peer.awaits && self.inflight[t as usize].contains(p) {
                    continue 'pieces;
                }
            }
            return Some((p, NONE));
        }
        None
    }

    /// Central mode: device `d`'s release size over the scenario's `bytes`
    /// (`release.size`).
    fn size_factor(&self, d: u32) -> f64 {
        let r = &self.sc.release;
        match r.size {
            SizeDist::Fixed => 1.0,
            SizeDist::Exponential => rng::exponential(self.seed, u64::from(d), Purpose::Size, 0, 1.0),
            SizeDist::Pareto => rng::pareto(self.seed, u64::from(d), Purpose::Size, 0, 1.0, r.pareto_shape),
        }
    }

    /// The server of site `s` that holds piece `p` and serves the fewest peers (the
    /// first in the list on a tie). The caller saw one.
    fn server_of(&self, s: u32, p: u32) -> u32 {
        let best = self.server_holding(s, p);
        debug_assert_ne!(best, NONE, "a server of the piece was seen");
        best
    }

    /// The server of site `s` that holds piece `p` and serves the fewest peers (the
    /// first in the list on a tie), or [`NONE`].
    fn server_holding(&self, s: u32, p: u32) -> u32 {
        let mut best = NONE;
        for &e in &self.servers[s as usize] {
            if !self.have[e as usize].contains(p) {
                continue;
            }
            if best == NONE || self.uploads[e as usize] < self.uploads[best as usize] {
                best = e;
                if self.uploads[e as usize] == 0 {
                    break;
                }
            }
        }
        best
    }

    fn wan_owner(&mut self, s: u32, p: u32) -> u32 {
        let range = self.site_start[s as usize]..self.site_start[s as usize + 1];
        let (online, state) = (&self.online, &self.state);
        let members = range.filter(|&e| online[e as usize] && state[e as usize] == FETCHING);
        let owner = self.owners.owner(s, p, self.chunk_ids[p as usize], &self.ids, members);
        // Invariant: the caller is an online fetching member, so there is an owner.
        owner.expect("the asking device is a member")
    }

    /// Device `d` joined or left its site's members (online and fetching), whom the
    /// WAN owners are chosen among.
    fn member_changed(&mut self, d: u32, joined: bool) {
        if self.mode != Mode::P2pDedup {
            return;
        }
        let s = self.site[d as usize];
        if joined {
            self.owners.joined(s, d, &self.ids, &self.chunk_ids);
        } else {
            self.owners.left(s, d);
        }
    }

    /// A flow's group, path and ceiling. A receiver's downlink is its flow's ceiling
    /// while it receives one flow; with more, they share it as a link when all of them
    /// are in one group, or else each gets an equal share of it as its ceiling (the
    /// origin couples the WAN flows of every site, and a p2p-dedup owner also fetches on
    /// its LAN: splitting keeps the sum at the downlink without merging every site into
    /// one group).
    fn route(&self, kind: FlowKind, dst: u32, src: u32) -> (u32, Path, f64) {
        let s = self.site[dst as usize];
        let (down, cap) = self.receiver_bound(dst);
        match kind {
            FlowKind::Lan => (self.group_of(s), [self.up_link(src), self.lan_link(s), down], cap),
            FlowKind::PeerPiece => {
                let t = self.site[src as usize];
                // Invariant: a peer piece comes from a peered site.
                let link = self.peers[s as usize].iter().find(|p| p.site == t).expect("a peered site").link;
                (self.group_of(s), [self.up_link(src), link, down], cap)
            }
            FlowKind::Central | FlowKind::Wan | FlowKind::WanPiece => {
                let group = if self.merged { self.group_of(s) } else { self.sites };
                (group, [self.wan_link(s), self.origin_link(), down], cap)
            }
        }
    }

    /// The flow group of site `s`'s LAN flows (see `site_group`).
    fn group_of(&self, s: u32) -> u32 {
        self.site_group.get(s as usize).copied().unwrap_or(s)
    }

    /// The downlink as a link (or none) and the ceiling of each of `dst`'s flows.
    fn receiver_bound(&self, dst: u32) -> (LinkId, f64) {
        let i = dst as usize;
        let downlink = self.downlink[self.class[i] as usize];
        let rx = self.receiving[i].max(1);
        match (rx, self.merged) {
            (1, _) => (NO_LINK, downlink),
            (_, true) => (self.down_link(dst), downlink),
            (_, false) => (NO_LINK, downlink / f64::from(rx)),
        }
    }

    /// After the number of flows `dst` receives changed: share its downlink among them
    /// anew (only a p2p-dedup owner receives more than one).
    fn retune(&mut self, dst: u32) {
        if self.mode != Mode::P2pDedup {
            return;
        }
        let (down, cap) = self.receiver_bound(dst);
        let i = dst as usize;
        let s = self.site[i];
        // Its LAN or origin download and the pieces it fetches for its site (as many as
        // `network.wan_parallel` allows).
        let mut mine = std::mem::take(&mut self.retuned);
        mine.clear();
        let own = (0..self.k).map(|p| self.wan_flow[(s * self.k + p) as usize]);
        mine.extend(
            std::iter::once(self.download[i])
                .chain(own)
                .filter(|&f| f != NONE && self.flow_meta[f as usize].dst == dst),
        );
        for &f in &mine {
            let m = self.flow_meta[f as usize];
            let (_, mut path, _) = self.route(m.kind, dst, m.src);
            path[2] = down;
            self.net.set_path(self.now, f, path);
            self.net.set_flow_cap(self.now, f, cap);
        }
        self.retuned = mine;
    }

    fn start_flow(&mut self, meta: FlowMeta, bytes: f64) {
        let s = self.site[meta.dst as usize];
        self.receiving[meta.dst as usize] += 1;
        let (group, path, cap) = self.route(meta.kind, meta.dst, meta.src);
        let metered = !meta.kind.sent_by_device();
        let route = if metered { self.site_route[s as usize] } else { NO_ROUTE };
        let id = self.net.start_routed(self.now, group, path, route, cap, bytes, metered);
        if self.flow_meta.len() <= id as usize {
            self.flow_meta.resize(id as usize + 1, meta);
        }
        self.flow_meta[id as usize] = meta;
        self.live_flows += 1;
        if meta.kind.for_site() {
            let slot = (s * self.k + u32::from(meta.piece)) as usize;
            self.wan_flow[slot] = id;
            self.inflight[s as usize].insert(u32::from(meta.piece));
            self.wan_count[s as usize] += 1;
        } else {
            self.download[meta.dst as usize] = id;
        }
        if meta.kind.sent_by_device() {
            self.uploads[meta.src as usize] += 1;
            self.update_server(meta.src);
        }
        if self.receiving[meta.dst as usize] > 1 {
            self.retune(meta.dst);
        }
    }

    /// Bookkeeping common to a completed and an aborted flow.
    fn release_flow(&mut self, id: FlowId, bytes: f64) -> FlowMeta {
        let meta = self.flow_meta[id as usize];
        self.live_flows -= 1;
        let s = self.site[meta.dst as usize];
        self.moved.add(meta.kind, bytes);
        if meta.kind.for_site() {
            self.wan_flow[(s * self.k + u32::from(meta.piece)) as usize] = NONE;
            self.inflight[s as usize].remove(u32::from(meta.piece));
            self.wan_count[s as usize] -= 1;
        } else {
            self.download[meta.dst as usize] = NONE;
        }
        if meta.kind.sent_by_device() {
            self.uploads[meta.src as usize] -= 1;
            self.update_server(meta.src);
        }
        self.receiving[meta.dst as usize] -= 1;
        if self.receiving[meta.dst as usize] > 0 {
            self.retune(meta.dst);
        }
        meta
    }

    fn abort_flow(&mut self, id: FlowId) {
        let bytes = self.net.stop(self.now, id);
        let meta = self.release_flow(id, bytes);
        match meta.kind {
            // The origin serves ranges: the bytes it got are kept.
            FlowKind::Central => self.got[meta.dst as usize] += bytes,
            // Someone else must bring this piece now, or a serving slot is free (at a
            // peered site too: waking a site wakes its peers).
            FlowKind::WanPiece | FlowKind::PeerPiece | FlowKind::Lan => {
                self.wake_waiters(self.site[meta.dst as usize], 1);
            }
            FlowKind::Wan => {}
        }
    }

    fn flow_done(&mut self, e: Ended) {
        let meta = self.release_flow(e.flow, e.bytes);
        let d = meta.dst;
        let i = d as usize;
        let s = self.site[i];
        if meta.kind == FlowKind::Central {
            self.have[i] = self.have[i].union(self.need_mask);
            self.got[i] = 0.0;
        } else {
            let p = u32::from(meta.piece);
            if !self.have[i].contains(p) {
                self.have[i].insert(p);
                if self.online[i] {
                    self.add_holder(s, p);
                    self.update_server(d);
                }
                // A new holder serves `slots` more peers; a LAN transfer also freed its
                // slot, a WAN one a WAN fetch.
                self.wake_waiters(s, usize::from(self.slots) + 1);
            } else if meta.kind == FlowKind::Lan {
                self.wake_waiters(s, 1);
            }
        }
        if meta.kind == FlowKind::PeerPiece {
            // Its sender's upload slot is free.
            self.wake_waiters(self.site[meta.src as usize], 1);
        }
        if !meta.kind.for_site() && self.online[i] && self.state[i] == FETCHING {
            self.fetch_step(d);
        }
    }

    /// Lets waiting devices of site `s`, and then of each site it peers with (what
    /// changed at `s` may let them fetch over the peering), choose again; see
    /// [`World::wake_site`].
    fn wake_waiters(&mut self, s: u32, budget: usize) {
        self.wake_site(s, budget);
        for j in 0..self.peers.get(s as usize).map_or(0, Vec::len) {
            self.wake_site(self.peers[s as usize][j].site, budget);
        }
    }

    /// Lets waiting devices of site `s` choose again, until `budget` of them started a
    /// transfer; the others keep waiting in order.
    fn wake_site(&mut self, s: u32, budget: usize) {
        let list = std::mem::take(&mut self.waiters[s as usize]);
        let mut started = 0;
        let mut done = 0;
        for &d in &list {
            if started >= budget {
                break;
            }
            done += 1;
            let i = d as usize;
            self.in_waiters[i] = false;
            if self.online[i] && self.state[i] == FETCHING && self.download[i] == NONE {
                self.fetch_step(d);
                if self.download[i] != NONE || self.state[i] != FETCHING {
                    started += 1;
                }
            }
        }
        let readded = std::mem::take(&mut self.waiters[s as usize]);
        let mut rest = list;
        rest.drain(..done);
        rest.extend(readded);
        self.waiters[s as usize] = rest;
    }

    // ---- Results ----------------------------------------------------------------

    /// What this shard measured (the whole run's figures with one shard).
    fn part(&mut self) -> Part {
        let sc = self.sc;
        let eligible = u64::from(self.devices.end - self.devices.start) - self.counts[UNANNOUNCED as usize];
        let (mut failed, mut rolled_back, mut never_started, mut first_wave) = (0, 0, 0, 0);
        for d in self.devices.clone() {
            let i = d as usize;
            if !self.started[i] {
                never_started += 1;
            }
            let Some(m) = self.machine[i].as_ref() else { continue };
            let Some((_, state)) = m.current() else { continue };
            match state {
                State::RolledBack(Reason::Revoked) if self.started[i] => rolled_back += 1,
                State::RolledBack(Reason::Revoked) => {}
                State::RolledBack(_) => failed += 1,
                _ => {}
            }
            if m.wave(&self.heard) == Some(0) {
                first_wave += 1;
            }
        }
        // Transfers cut by the end of the run count what they moved.
        let mut in_flight = Moved::default();
        for (f, meta) in self.flow_meta.iter().enumerate() {
            if self.net.is_live(f as FlowId) {
                in_flight.add(meta.kind, self.net.moved(self.now, f as FlowId));
            }
        }
        let wave_starts_s = if self.policy.skip_waves.contains(&self.release.kind) {
            Vec::new()
        } else {
            self.policy.waves.iter().map(|w| w.after_s as f64).collect()
        };
        let result = RunResult {
            scenario: sc.name().to_owned(),
            seed: self.seed,
            devices: u64::from(self.n),
            sites: u64::from(self.sites),
            release_bytes: sc.release.bytes,
            mode: self.mode.as_str(),
            t_s: [None; 4],
            eligible,
            committed: self.counts[COMMITTED as usize],
            failed,
            rolled_back,
            never_started,
            wan_bytes: self.moved.wan + in_flight.wan,
            lan_bytes: self.moved.lan + in_flight.lan,
            peering_bytes: self.moved.peering + in_flight.peering,
            commit_s: self.commit_times.iter().map(|&t| t as f64 / 1e6).collect(),
            origin_peak: self.origin_peak,
            halted_at_s: self.halted_at.map(|t| t as f64 / 1e6),
            revoked_at_s: self.revoked_at.map(|t| t as f64 / 1e6),
            rollback_done_s: self.last_rollback.map(|t| t as f64 / 1e6),
            first_wave_devices: first_wave,
            in_flight_at_halt: self.in_flight_at_halt,
            fetch_s: [None; 4],
            install_s: [None; 4],
            events: self.events,
            end_s: self.now as f64 / 1e6,
            wave_starts_s,
            series: std::mem::take(&mut self.series),
        };
        Part {
            result,
            commit_times: std::mem::take(&mut self.commit_times),
            fetch_durations: std::mem::take(&mut self.fetch_durations),
            install_durations: std::mem::take(&mut self.install_durations),
            origin_log: std::mem::take(&mut self.origin_log),
        }
    }
}

/// The run's figures from its shards' (one, or several played side by side).
fn assemble(mut parts: Vec<Part>) -> RunResult {
    let mut commit_times: Vec<Micros> = parts.iter().flat_map(|p| p.commit_times.iter().copied()).collect();
    let mut fetch: Vec<f64> = parts.iter().flat_map(|p| p.fetch_durations.iter().copied()).collect();
    let mut install: Vec<f64> = parts.iter().flat_map(|p| p.install_durations.iter().copied()).collect();
    if parts.len() > 1 {
        commit_times.sort_unstable();
        fetch.sort_by(f64::total_cmp);
        install.sort_by(f64::total_cmp);
    }
    let origin_peak = if parts.len() > 1 {
        fleet_peak(parts.iter().map(|p| &p.origin_log[..]).collect())
    } else {
        parts[0].result.origin_peak
    };
    let series = merge_series(parts.iter().map(|p| &p.result.series[..]).collect());
    let first = parts.swap_remove(0);
    let mut r = first.result;
    for p in &parts {
        let q = &p.result;
        r.eligible += q.eligible;
        r.committed += q.committed;
        r.failed += q.failed;
        r.rolled_back += q.rolled_back;
        r.never_started += q.never_started;
        r.first_wave_devices += q.first_wave_devices;
        r.in_flight_at_halt += q.in_flight_at_halt;
        r.events += q.events;
        r.wan_bytes += q.wan_bytes;
        r.lan_bytes += q.lan_bytes;
        r.peering_bytes += q.peering_bytes;
        r.end_s = r.end_s.max(q.end_s);
        r.halted_at_s = earliest(r.halted_at_s, q.halted_at_s);
        r.revoked_at_s = earliest(r.revoked_at_s, q.revoked_at_s);
        r.rollback_done_s = match (r.rollback_done_s, q.rollback_done_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let eligible = r.eligible;
    let t_at = |share: f64| {
        let needed = (share * eligible as f64).ceil() as usize;
        if eligible == 0 || needed == 0 {
            return None;
        }
        commit_times.get(needed - 1).map(|&t| t as f64 / 1e6)
    };
    r.t_s = [t_at(0.5), t_at(0.9), t_at(0.99), t_at(1.0)];
    r.commit_s = commit_times.iter().map(|&t| t as f64 / 1e6).collect();
    r.origin_peak = origin_peak;
    r.fetch_s = summarize(&fetch);
    r.install_s = summarize(&install);
    r.series = series;
    r
}

fn earliest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The peak of the fleet's origin egress from each shard's egress after every change:
/// the shards' rates summed at the end of every instant at which one changed.
fn fleet_peak(logs: Vec<&[(Micros, f64)]>) -> f64 {
    let mut changes: Vec<(Micros, usize, f64)> =
        logs.iter().enumerate().flat_map(|(i, log)| log.iter().map(move |&(t, r)| (t, i, r))).collect();
    // Stable: a shard's changes within one instant stay in order, the last one counts.
    changes.sort_by_key(|&(t, i, _)| (t, i));
    let mut rates = vec![0.0; logs.len()];
    let mut peak: f64 = 0.0;
    for (k, &(t, i, r)) in changes.iter().enumerate() {
        rates[i] = r;
        if changes.get(k + 1).is_none_or(|&(next, _, _)| next != t) {
            peak = peak.max(rates.iter().sum());
        }
    }
    peak
}

/// The fleet's time series from its shards': at every sample time, each shard's
/// latest sample at or before it, summed.
fn merge_series(parts: Vec<&[Sample]>) -> Vec<Sample> {
    if parts.len() == 1 {
        return parts[0].to_vec();
    }
    let mut times: Vec<f64> = parts.iter().flat_map(|p| p.iter().map(|s| s.t_s)).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let mut at = vec![0usize; parts.len()];
    times
        .iter()
        .map(|&t| {
            let mut sum = Sample { t_s: t, states: [0; 10], offline: 0, wan_bytes: 0.0, lan_bytes: 0.0 };
            for (p, i) in parts.iter().zip(&mut at) {
                while *i + 1 < p.len() && p[*i + 1].t_s <= t {
                    *i += 1;
                }
                let Some(s) = p.get(*i) else { continue };
                for (a, b) in sum.states.iter_mut().zip(&s.states) {
                    *a += b;
                }
                sum.offline += s.offline;
                sum.wan_bytes += s.wan_bytes;
                sum.lan_bytes += s.lan_bytes;
            }
            sum
        })
        .collect()
}

/// Mean, median, 90th and 99th percentiles of durations; `None` when there are none.
fn summarize(durations: &[f64]) -> [Option<f64>; 4] {
    if durations.is_empty() {
        return [None; 4];
    }
    let mut sorted = durations.to_vec();
    sorted.sort_by(f64::total_cmp);
    // To the microsecond, as every other time: a short decimal reads back exactly.
    let us = |x: f64| Some((x * 1e6).round() / 1e6);
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    let q = |p| us(crate::stats::percentile(&sorted, p));
    [us(mean), q(0.5), q(0.9), q(0.99)]
}

/// Whether a device in state `index` holds one of its site's install slots: the core's
/// rule ([`State::holds_site_slot`]), on the engine's state indexes.
fn holds_site_slot(index: u8) -> bool {
    Phase::ALL.get(usize::from(index)).is_some_and(|p| p.holds_site_slot())
}

fn state_index(s: &State) -> u8 {
    s.phase() as u8
}

/// Splits `n` devices over sites in proportion to `weights`, each site at least one
/// device; returns the `sites + 1` range boundaries.
fn partition(n: u32, weights: &[f64]) -> Vec<u32> {
    let sites = weights.len() as u32;
    let spare = f64::from(n - sites);
    let total: f64 = weights.iter().sum();
    let mut bounds = Vec::with_capacity(weights.len() + 1);
    bounds.push(0u32);
    let mut acc = 0.0;
    for (s, w) in weights.iter().enumerate() {
        acc += w;
        let extra = if s + 1 == weights.len() { spare } else { (spare * acc / total).floor() };
        bounds.push(s as u32 + 1 + extra as u32);
    }
    bounds
}
