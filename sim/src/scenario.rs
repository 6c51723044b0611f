//! Scenarios: what fleet, network and rollout to simulate, as a TOML file.
//!
//! Every section is checked before a run starts, and a bad scenario is rejected with
//! the file, the key and the reason ([`ScenarioError`]); nothing in a scenario can make
//! the simulator panic. The `[rollout]` section *is* the core's
//! [`RolloutPolicy`](otamesh_core::rollout::RolloutPolicy): a policy that the
//! simulator accepts is one a manifest could carry. See `docs/simulator.md` for every
//! key and `scenarios/` for documented examples.
//!
//! Units: times in seconds, bandwidths in megabits per second (`*_mbps`), sizes in
//! bytes, shares in percent, probabilities in [0, 1].

use std::path::Path;

use otamesh_core::UpdateKind;
use otamesh_core::rollout::{PolicyError, RolloutPolicy, TimeOfDay};
use serde::{Deserialize, Serialize};

/// The most pieces a release may be cut into (see [`crate::pieces`]).
pub const MAX_PIECES: u64 = crate::pieces::MAX_PIECES as u64;

/// The largest fleet a scenario may describe.
pub const MAX_DEVICES: u32 = 20_000_000;

/// The most hardware classes.
pub const MAX_CLASSES: usize = 255;

/// No time in a scenario may exceed this many seconds (about 30 years): virtual time is
/// integer microseconds and must not overflow.
pub const MAX_TIME_S: f64 = 1e9;

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Run settings.
    pub sim: Sim,
    /// Sites and devices.
    pub fleet: Fleet,
    /// Hardware classes (`[[class]]`), shares adding up to 100.
    #[serde(rename = "class")]
    pub classes: Vec<Class>,
    /// The release being rolled out.
    pub release: Release,
    /// Links and the distribution mode.
    pub network: Network,
    /// How devices learn of the release.
    #[serde(default)]
    pub announce: Announce,
    /// Devices going offline and coming back; none when absent.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// Reports and operator directives.
    #[serde(default)]
    pub directives: Directives,
    /// The core rollout policy, as a manifest carries it.
    pub rollout: RolloutPolicy,
    /// An open system: devices arrive over time (`[arrivals]`) instead of hearing the
    /// announcement; none when absent.
    #[serde(default)]
    pub arrivals: Option<Arrivals>,
    /// Named links (`[[link]]`) that sites' WAN flows cross on their way from the
    /// origin (see `[[path]]`).
    #[serde(default, rename = "link")]
    pub links: Vec<NamedLink>,
    /// Which sites' WAN flows cross which named links (`[[path]]`).
    #[serde(default, rename = "path")]
    pub paths: Vec<SitePath>,
    /// Pairs of sites joined by a named link (`[[peering]]`), over which p2p-dedup
    /// sites share pieces.
    #[serde(default, rename = "peering")]
    pub peerings: Vec<Peering>,
}

/// `[arrivals]`: when each device arrives and asks for the release (an open system).
/// Exactly one of the three keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    /// A Poisson process: exponential gaps of mean `1 / rate_per_s`, device 0 first.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Device `d` arrives at `times_s[d]` seconds; one time per device.
    #[serde(default)]
    pub times_s: Option<Vec<f64>>,
    /// A file of arrival times in seconds, one per line, one line per device (`#`
    /// starts a comment), relative to the scenario file; read into `times_s`.
    #[serde(default)]
    pub trace: Option<String>,
}

/// `[[link]]`: a named link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedLink {
    /// Its name, used by `[[path]]`.
    pub name: String,
    /// Capacity, Mbit/s.
    pub mbps: f64,
    /// One-way latency, milliseconds.
    #[serde(default)]
    pub latency_ms: f64,
}

/// `[[path]]`: these sites' WAN flows cross these named links, in order, besides the
/// site's own WAN link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePath {
    /// Site indexes (0 to `fleet.sites - 1`).
    pub sites: Vec<u32>,
    /// Link names, at most [`MAX_PATH`].
    pub links: Vec<String>,
}

/// `[[peering]]`: two sites joined by a named link. In p2p-dedup, a piece one of
/// them holds crosses the link to the other (from a holder with a free upload slot to
/// the other site's rendezvous owner of the piece) instead of coming from the origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peering {
    /// The two site indexes.
    pub sites: [u32; 2],
    /// The link's name (a `[[link]]` that no `[[path]]` names).
    pub link: String,
}

/// The most named links one path may cross.
pub const MAX_PATH: usize = 16;

/// `[sim]`: run settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sim {
    /// Name in outputs; the file name without extension when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Master seed; `--seed` overrides it; derived from the file when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop after this much virtual time (seconds) even if devices are still waiting.
    pub duration_s: f64,
    /// Time-series step in seconds; `duration_s / 5000` (at least 1 s) when absent.
    #[serde(default)]
    pub sample_s: Option<f64>,
    /// UTC time of day at which the release is published (virtual time zero).
    #[serde(default = "midnight")]
    pub start_utc: TimeOfDay,
    /// Plays the fleet as this many shards of whole sites, one thread each, in step
    /// windows of `directives.report_delay_s` (the soonest one site can affect
    /// another: a report). 1, the default, plays it as one. Any number of shards plays
    /// the same rollout as one (the same counts, times and bytes, but for the rounding
    /// of sums; `sim/tests/shards.rs`), only faster. Needs sites that only reports
    /// couple: an unlimited origin, no `[[path]]`, a report delay of 1 ms or more.
    #[serde(default = "one_shard")]
    pub shards: u32,
}

fn one_shard() -> u32 {
    1
}

fn midnight() -> TimeOfDay {
    TimeOfDay(0)
}

/// `[fleet]`: sites and devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Devices in the fleet.
    pub devices: u32,
    /// Sites; each device belongs to one.
    pub sites: u32,
    /// How devices spread over sites.
    #[serde(default)]
    pub site_size: SiteSize,
    /// Time zones (minutes from UTC) sites are drawn from, uniformly.
    #[serde(default = "utc_only")]
    pub utc_offsets_min: Vec<i16>,
    /// The devices' ids (hex), site by site, to play a real fleet (its wave positions
    /// are hashes of these and the release id); empty: drawn from the seed.
    #[serde(default)]
    pub device_ids: Vec<otamesh_core::DeviceId>,
}

fn utc_only() -> Vec<i16> {
    vec![0]
}

/// How many devices each site has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteSize {
    /// As equal as integers allow.
    #[default]
    Equal,
    /// Log-normal weights (sigma 1): a few big sites, many small ones.
    Skewed,
}

/// `[[class]]`: a hardware class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Its name.
    pub name: String,
    /// Percent of the fleet.
    pub share: f64,
    /// Install duration, seconds: a number, or `[min, max]` drawn uniformly.
    pub install_s: Span,
    /// Reboot duration (activation and rollback), seconds.
    pub reboot_s: Span,
    /// How long the health check runs, seconds.
    #[serde(default)]
    pub health_check_s: f64,
    /// Device downlink, Mbit/s.
    pub downlink_mbps: f64,
    /// Device uplink (serving peers), Mbit/s.
    pub uplink_mbps: f64,
    /// Probability that this release fails this class's health check (a bad release).
    #[serde(default)]
    pub health_fail: f64,
    /// Probability that an install fails (the inactive slot is discarded).
    #[serde(default)]
    pub install_fail: f64,
    /// Probability that a device loses power mid-install (it reboots and recovers).
    #[serde(default)]
    pub die_during_install: f64,
}

/// A duration: fixed, or uniform between two bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Span {
    /// Always this.
    Fixed(f64),
    /// Uniform in `[min, max]`.
    Range([f64; 2]),
}

impl Span {
    /// (min, max).
    pub fn bounds(&self) -> (f64, f64) {
        match *self {
            Self::Fixed(x) => (x, x),
            Self::Range([a, b]) => (a, b),
        }
    }
}

/// `[release]`: the release being rolled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The release id (hex), to play a real release (wave positions hash it); absent:
    /// derived from the seed and the scenario name.
    #[serde(default)]
    pub id: Option<otamesh_core::ReleaseId>,
    /// Payload size in bytes.
    pub bytes: u64,
    /// The simulator's transfer granularity ("piece"), bytes; at most [`MAX_PIECES`] pieces.
    pub piece_bytes: u64,
    /// Update kind (for `skip_waves` / `skip_window`).
    #[serde(default = "firmware")]
    pub kind: UpdateKind,
    /// Share of pieces devices already hold (a delta update), in [0, 1).
    #[serde(default)]
    pub delta_fraction: f64,
    /// Central mode: each device fetches a release of its own size, drawn from this
    /// distribution with mean `bytes` (a stream of requests of different sizes).
    #[serde(default)]
    pub size: SizeDist,
    /// The shape (alpha, above 1) of the Pareto size distribution.
    #[serde(default = "pareto_shape")]
    pub pareto_shape: f64,
}

fn pareto_shape() -> f64 {
    2.5
}

/// How a device's release size is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeDist {
    /// Always `bytes`.
    #[default]
    Fixed,
    /// Exponential with mean `bytes`.
    Exponential,
    /// Pareto with mean `bytes` and shape `pareto_shape`.
    Pareto,
}

fn firmware() -> UpdateKind {
    UpdateKind::Firmware
}

/// `[network]`: links and how chunks travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Distribution mode.
    pub mode: Mode,
    /// Origin egress, Mbit/s; 0 means unlimited (a CDN).
    pub origin_egress_mbps: f64,
    /// Each site's WAN downlink, Mbit/s (unless `site_wan_mix` draws another).
    pub site_wan_mbps: f64,
    /// Sites with other WAN links: each site draws one entry by `share` (percent of
    /// sites); the sites left over by shares below 100 keep `site_wan_mbps`.
    #[serde(default)]
    pub site_wan_mix: Vec<SiteWan>,
    /// Spread of the WANs of sites that keep `site_wan_mbps`: each draws a log-normal
    /// capacity of median `site_wan_mbps` and this sigma (0, the default: all equal).
    #[serde(default)]
    pub site_wan_sigma: f64,
    /// Each site's LAN capacity, Mbit/s.
    pub site_lan_mbps: f64,
    /// Delay before each transfer starts (a request round trip), milliseconds.
    #[serde(default)]
    pub latency_ms: f64,
    /// p2p-dedup: at most this many pieces cross one site's WAN at once.
    #[serde(default = "four")]
    pub wan_parallel: u32,
    /// p2p modes: each holder of a piece serves at most this many peers at once.
    #[serde(default = "four")]
    pub upload_slots: u32,
    /// p2p-dedup: a piece's owner starts its WAN fetch no sooner than this long after it
    /// began fetching the release (the node planner's settle, so that its site's
    /// members hear of each other first). Default: the node's own
    /// (`otamesh_core::fetch::PlannerConfig::default().settle`).
    #[serde(default = "node_settle_s")]
    pub settle_s: f64,
}

fn node_settle_s() -> f64 {
    otamesh_core::fetch::PlannerConfig::default().settle as f64 / 1000.0
}

fn four() -> u32 {
    4
}

/// One entry of `network.site_wan_mix`: this share of sites has this WAN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteWan {
    /// Percent of sites.
    pub share: f64,
    /// Their WAN downlink, Mbit/s.
    pub mbps: f64,
}

impl Network {
    /// The WAN of a site that drew `u`, uniform in [0, 1), by the shares of
    /// `site_wan_mix`; a site left with `site_wan_mbps` scales it by
    /// `exp(site_wan_sigma z)`, `z` its standard normal draw.
    pub fn site_wan_at(&self, u: f64, z: f64) -> f64 {
        let mut acc = 0.0;
        for w in &self.site_wan_mix {
            acc += w.share / 100.0;
            if u < acc {
                return w.mbps;
            }
        }
        if self.site_wan_sigma == 0.0 {
            return self.site_wan_mbps;
        }
        self.site_wan_mbps * (self.site_wan_sigma * z).exp()
    }
}

/// Where devices get their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every device downloads every byte from the origin.
    Central,
    /// From a site peer that has the piece, else from the origin.
    P2p,
    /// As p2p, and only one site member (rendezvous owner) fetches a piece over the WAN.
    P2pDedup,
}

impl Mode {
    /// As written in scenarios and outputs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Central => "central",
            Self::P2p => "p2p",
            Self::P2pDedup => "p2p-dedup",
        }
    }
}

/// `[announce]`: how the release reaches devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// Gossip or polling.
    #[serde(default)]
    pub mode: AnnounceMode,
    /// Gossip: delay per hop, seconds.
    #[serde(default = "one")]
    pub hop_delay_s: f64,
    /// Gossip: peers each informed device tells per hop.
    #[serde(default = "four")]
    pub fanout: u32,
    /// Polling: each device polls the origin at this interval, seconds.
    #[serde(default = "hour")]
    pub poll_interval_s: f64,
    /// Gossip: the first device of a site to hear tells its whole site on the LAN,
    /// one round later.
    #[serde(default)]
    pub site_relay: bool,
    /// Gossip: push only, or push and pull.
    #[serde(default)]
    pub style: GossipStyle,
}

/// Who talks in a gossip round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GossipStyle {
    /// Informed devices push to random others ([`crate::gossip::push`]).
    #[default]
    Push,
    /// Every device calls random others; informed callers push, uninformed ones pull
    /// ([`crate::gossip::push_pull`]).
    PushPull,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            mode: AnnounceMode::Gossip,
            hop_delay_s: 1.0,
            fanout: 4,
            poll_interval_s: 3600.0,
            site_relay: false,
            style: GossipStyle::Push,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn hour() -> f64 {
    3600.0
}

/// How the announcement travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnounceMode {
    /// Epidemic gossip from the origin.
    #[default]
    Gossip,
    /// Devices poll the origin.
    Poll,
}

/// `[churn]`: devices go offline and come back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Mean online period, seconds (exponential).
    pub mean_online_s: f64,
    /// Mean offline period, seconds (exponential).
    pub mean_offline_s: f64,
}

/// `[directives]`: reports and operator orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directives {
    /// Time for a status report to reach the other nodes' tallies, seconds.
    #[serde(default = "one")]
    pub report_delay_s: f64,
    /// Time for a directive to reach online devices, seconds.
    #[serde(default = "one")]
    pub delay_s: f64,
    /// An operator halts the release at this time.
    #[serde(default)]
    pub halt_at_s: Option<f64>,
    /// An operator resumes it at this time.
    #[serde(default)]
    pub resume_at_s: Option<f64>,
    /// An operator revokes it at this time.
    #[serde(default)]
    pub revoke_at_s: Option<f64>,
    /// An operator revokes it this long after the health gate first halts it.
    #[serde(default)]
    pub revoke_after_halt_s: Option<f64>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            report_delay_s: 1.0,
            delay_s: 1.0,
            halt_at_s: None,
            resume_at_s: None,
            revoke_at_s: None,
            revoke_after_halt_s: None,
        }
    }
}

/// A scenario that cannot run: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{reason}", key_prefix(.key))]
pub struct ScenarioError {
    /// The scenario file.
    pub file: String,
    /// The offending key (`section.key`), or `-` for the file as a whole.
    pub key: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl Scenario {
    /// Reads, overrides (`section.key=value`, as `--set` takes them) and checks a
    /// scenario file.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read the scenario: {e}"),
        })?;
        Self::parse(&file, &text, sets)
    }

    /// As [`Scenario::load`], from text; `file` names it in errors.
    pub fn parse(file: &str, text: &str, sets: &[String]) -> Result<Self, ScenarioError> {
        let err = |key: &str, reason: String| ScenarioError { file: file.into(), key: key.into(), reason };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let key = e.span().map_or("-".to_owned(), |s| line_of(text, s.start));
            err(&key, e.message().trim().to_owned())
        })?;
        for set in sets {
            apply_set(&mut table, set).map_err(|(key, reason)| err(&key, reason))?;
        }
        let mut scenario: Scenario =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let reason = e.inner().message().trim().to_owned();
                let key = match backticked(&reason) {
                    Some(name) if reason.starts_with("missing field") => {
                        if path == "." {
                            name.to_owned()
                        } else {
                            format!("{path}.{name}")
                        }
                    }
                    _ => path,
                };
                let reason = if reason.starts_with("missing field") && !key.contains('.') {
                    format!("{reason}: the [{key}] section is required")
                } else {
                    reason
                };
                err(&key, reason)
            })?;
        if scenario.sim.name.is_none() {
            let stem = Path::new(file).file_stem().map(|s| s.to_string_lossy().into_owned());
            scenario.sim.name = Some(stem.unwrap_or_else(|| "scenario".into()));
        }
        if let Some(a) = &mut scenario.arrivals
            && let Some(trace) = &a.trace
        {
            let dir = Path::new(file).parent().unwrap_or(Path::new("."));
            let times = read_trace(&dir.join(trace)).map_err(|reason| err("arrivals.trace", reason))?;
            if a.times_s.is_some() {
                return Err(err("arrivals.trace", "give times_s or trace, not both".into()));
            }
            a.times_s = Some(times);
        }
        scenario.check().map_err(|(key, reason)| err(&key, reason))?;
        Ok(scenario)
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        self.sim.name.as_deref().unwrap_or("scenario")
    }

    /// Pieces the release is cut into.
    pub fn pieces(&self) -> u32 {
        self.release.bytes.div_ceil(self.release.piece_bytes) as u32
    }

    /// The index in `links` of the `[[link]]` named `name`.
    pub fn link_index(&self, name: &str) -> Option<usize> {
        self.links.iter().position(|l| l.name == name)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        let no_site = |s: u32| format!("site {s} does not exist: sites are 0 to {}", self.fleet.sites - 1);
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(key, &format!("{v} must be a positive number"))
            }
        };
        let non_negative = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 { Ok(()) } else { bad(key, &format!("{v} must be zero or more")) }
        };
        // A duration in seconds: zero or more, and not beyond MAX_TIME_S.
        let time = |key: &str, v: f64| {
            non_negative(key, v)?;
            if v <= MAX_TIME_S { Ok(()) } else { bad(key, &format!("{v} s is longer than {MAX_TIME_S} s")) }
        };
        let probability = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { bad(key, &format!("{v} is a probability: 0 to 1")) }
        };
        positive("sim.duration_s", self.sim.duration_s)?;
        time("sim.duration_s", self.sim.duration_s)?;
        if let Some(s) = self.sim.sample_s {
            positive("sim.sample_s", s)?;
            if s < self.sim.duration_s / 1e6 {
                return bad("sim.sample_s", "more than a million samples: use at least duration_s / 1e6");
            }
        }
        if self.sim.shards == 0 || self.sim.shards > self.fleet.sites {
            return bad("sim.shards", "must be between 1 and fleet.sites");
        }
        let f = &self.fleet;
        if f.devices == 0 || f.devices > MAX_DEVICES {
            return bad("fleet.devices", &format!("must be between 1 and {MAX_DEVICES}"));
        }
        if f.sites == 0 || f.sites > f.devices {
            return bad("fleet.sites", "must be between 1 and the number of devices");
        }
        if !f.device_ids.is_empty() && f.device_ids.len() != f.devices as usize {
            return bad("fleet.device_ids", &format!("list one id per device ({}), or none", f.devices));
        }
        if f.utc_offsets_min.is_empty() {
            return bad("fleet.utc_offsets_min", "list at least one offset, e.g. [0]");
        }
        if let Some(o) = f.utc_offsets_min.iter().find(|o| !(-720..=840).contains(*o)) {
            return bad("fleet.utc_offsets_min", &format!("{o} minutes is not a time zone: use -720 to 840"));
        }
        if self.classes.is_empty() || self.classes.len() > MAX_CLASSES {
            return bad("class", &format!("define 1 to {MAX_CLASSES} [[class]] sections"));
        }
        let mut total = 0.0;
        for (i, c) in self.classes.iter().enumerate() {
            let k = |field: &str| format!("class[{i}].{field}");
            positive(&k("share"), c.share)?;
            total += c.share;
            if self.classes[..i].iter().any(|o| o.name == c.name) {
                return bad(&k("name"), &format!("class {:?} is defined twice", c.name));
            }
            for (field, span) in [("install_s", c.install_s), ("reboot_s", c.reboot_s)] {
                let (lo, hi) = span.bounds();
                time(&k(field), lo)?;
                time(&k(field), hi)?;
                if hi < lo {
                    return bad(&k(field), &format!("[{lo}, {hi}]: the minimum comes first"));
                }
            }
            time(&k("health_check_s"), c.health_check_s)?;
            positive(&k("downlink_mbps"), c.downlink_mbps)?;
            positive(&k("uplink_mbps"), c.uplink_mbps)?;
            probability(&k("health_fail"), c.health_fail)?;
            probability(&k("install_fail"), c.install_fail)?;
            probability(&k("die_during_install"), c.die_during_install)?;
        }
        if (total - 100.0).abs() > 1e-6 {
            return bad("class.share", &format!("class shares add up to {total}%: they must add up to 100"));
        }
        let r = &self.release;
        if r.bytes == 0 {
            return bad("release.bytes", "a release has at least one byte");
        }
        if r.piece_bytes == 0 || r.bytes.div_ceil(r.piece_bytes) > MAX_PIECES {
            return bad(
                "release.piece_bytes",
                &format!(
                    "must cut the release into 1 to {MAX_PIECES} pieces: use at least {}",
                    r.bytes.div_ceil(MAX_PIECES)
                ),
            );
        }
        if !(0.0..1.0).contains(&r.delta_fraction) {
            return bad("release.delta_fraction", &format!("{} must be in [0, 1)", r.delta_fraction));
        }
        let n = &self.network;
        non_negative("network.origin_egress_mbps", n.origin_egress_mbps)?;
        positive("network.site_wan_mbps", n.site_wan_mbps)?;
        let mut shares = 0.0;
        for (i, w) in n.site_wan_mix.iter().enumerate() {
            positive(&format!("network.site_wan_mix[{i}].share"), w.share)?;
            positive(&format!("network.site_wan_mix[{i}].mbps"), w.mbps)?;
            shares += w.share;
        }
        if shares > 100.0 + 1e-6 {
            return bad(
                "network.site_wan_mix",
                &format!("shares add up to {shares}% of sites: they must add up to 100 at most"),
            );
        }
        non_negative("network.site_wan_sigma", n.site_wan_sigma)?;
        if n.site_wan_sigma > 5.0 {
            return bad(
                "network.site_wan_sigma",
                "above 5 spreads WANs over 40 orders of magnitude: use 0 to 5",
            );
        }
        positive("network.site_lan_mbps", n.site_lan_mbps)?;
        time("network.latency_ms", n.latency_ms / 1000.0)?;
        if !(n.settle_s >= 0.0 && n.settle_s.is_finite()) {
            return bad("network.settle_s", "must be a number of seconds, 0 or more");
        }
        if n.wan_parallel == 0 {
            return bad("network.wan_parallel", "0 would never fetch: use at least 1");
        }
        if n.upload_slots == 0 {
            return bad("network.upload_slots", "0 would never share a piece: use at least 1");
        }
        let a = &self.announce;
        time("announce.hop_delay_s", a.hop_delay_s)?;
        positive("announce.poll_interval_s", a.poll_interval_s)?;
        time("announce.poll_interval_s", a.poll_interval_s)?;
        if a.fanout == 0 {
            return bad("announce.fanout", "0 would never spread: use at least 1");
        }
        if let Some(c) = &self.churn {
            positive("churn.mean_online_s", c.mean_online_s)?;
            positive("churn.mean_offline_s", c.mean_offline_s)?;
            // Exponential draws reach about 40 means at most.
            time("churn.mean_online_s", c.mean_online_s * 40.0)?;
            time("churn.mean_offline_s", c.mean_offline_s * 40.0)?;
        }
        let d = &self.directives;
        time("directives.report_delay_s", d.report_delay_s)?;
        time("directives.delay_s", d.delay_s)?;
        if self.sim.shards > 1 {
            let why = if self.network.origin_egress_mbps > 0.0 {
                Some("a finite network.origin_egress_mbps couples every site's WAN flows")
            } else if !self.paths.is_empty() {
                Some("[[path]] links are shared by sites")
            } else if !self.peerings.is_empty() {
                Some("[[peering]] couples its two sites")
            } else if d.report_delay_s < 1e-3 {
                Some("a directives.report_delay_s under 1 ms leaves no window to play sites apart")
            } else {
                None
            };
            if let Some(why) = why {
                return bad("sim.shards", &format!("{why}: use shards = 1"));
            }
        }
        for (key, v) in [
            ("directives.halt_at_s", d.halt_at_s),
            ("directives.resume_at_s", d.resume_at_s),
            ("directives.revoke_at_s", d.revoke_at_s),
            ("directives.revoke_after_halt_s", d.revoke_after_halt_s),
        ] {
            if let Some(v) = v {
                time(key, v)?;
            }
        }
        if r.size != SizeDist::Fixed && n.mode != Mode::Central {
            return bad("release.size", "sizes drawn per device need network.mode = \"central\"");
        }
        if !(r.pareto_shape.is_finite() && r.pareto_shape > 1.0) {
            return bad("release.pareto_shape", "must be above 1 (a finite mean)");
        }
        if let Some(a) = &self.arrivals {
            match (a.rate_per_s, &a.times_s) {
                (Some(rate), None) => positive("arrivals.rate_per_s", rate)?,
                (None, Some(times)) => {
                    let key = if a.trace.is_some() { "arrivals.trace" } else { "arrivals.times_s" };
                    if times.len() != self.fleet.devices as usize {
                        return bad(
                            key,
                            &format!(
                                "{} arrival times for {} devices: give one per device",
                                times.len(),
                                self.fleet.devices
                            ),
                        );
                    }
                    for &t in times {
                        time(key, t)?;
                    }
                }
                _ => return bad("arrivals", "give exactly one of rate_per_s, times_s, trace"),
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            positive(&format!("link[{i}].mbps"), l.mbps)?;
            time(&format!("link[{i}].latency_ms"), l.latency_ms / 1000.0)?;
            if self.links[..i].iter().any(|o| o.name == l.name) {
                return bad(&format!("link[{i}].name"), &format!("link {:?} is defined twice", l.name));
            }
        }
        let mut routed = vec![false; self.fleet.sites as usize];
        for (i, p) in self.paths.iter().enumerate() {
            if p.links.is_empty() || p.links.len() > MAX_PATH {
                return bad(&format!("path[{i}].links"), &format!("name 1 to {MAX_PATH} links"));
            }
            if let Some(name) = p.links.iter().find(|n| self.link_index(n).is_none()) {
                return bad(&format!("path[{i}].links"), &format!("no [[link]] is named {name:?}"));
            }
            for &s in &p.sites {
                match routed.get_mut(s as usize) {
                    None => {
                        return bad(&format!("path[{i}].sites"), &no_site(s));
                    }
                    Some(true) => {
                        return bad(&format!("path[{i}].sites"), &format!("site {s} has two paths"));
                    }
                    Some(r) => *r = true,
                }
            }
        }
        let mut pairs: Vec<[u32; 2]> = Vec::new();
        for (i, p) in self.peerings.iter().enumerate() {
            let key = |k: &str| format!("peering[{i}].{k}");
            if n.mode != Mode::P2pDedup {
                return bad(&key("sites"), "sites share pieces only in network.mode = \"p2p-dedup\"");
            }
            if let Some(s) = p.sites.iter().find(|&&s| s >= self.fleet.sites) {
                return bad(&key("sites"), &no_site(*s));
            }
            let [a, b] = p.sites;
            if a == b {
                return bad(&key("sites"), &format!("site {a} cannot peer with itself: name two sites"));
            }
            let pair = [a.min(b), a.max(b)];
            if pairs.contains(&pair) {
                return bad(&key("sites"), &format!("sites {a} and {b} already peer: one link per pair"));
            }
            pairs.push(pair);
            let Some(link) = self.link_index(&p.link).map(|l| &self.links[l]) else {
                return bad(&key("link"), &format!("no [[link]] is named {:?}", p.link));
            };
            if link.latency_ms != 0.0 {
                let why =
                    "a peering link's latency is not modelled (a fetch over it starts at once): set it to 0";
                return bad(
                    &key("link"),
                    &format!("link {:?} has latency_ms = {}; {why}", p.link, link.latency_ms),
                );
            }
            if self.paths.iter().any(|path| path.links.contains(&p.link)) {
                return bad(
                    &key("link"),
                    &format!("link {:?} is on a [[path]]: give the peering its own link", p.link),
                );
            }
        }
        self.rollout.validate().map_err(|e| (policy_key(&e), e.to_string()))?;
        Ok(())
    }
}

/// Arrival times, seconds, one per line; `#` starts a comment.
fn read_trace(path: &Path) -> Result<Vec<f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut times = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let t: f64 = line
            .parse()
            .map_err(|_| format!("{} line {}: {line:?} is not a time in seconds", path.display(), i + 1))?;
        times.push(t);
    }
    Ok(times)
}

/// `key: `, or nothing for an error about the whole file.
fn key_prefix(key: &str) -> String {
    if key == "-" { String::new() } else { format!("{key}: ") }
}

fn policy_key(e: &PolicyError) -> String {
    match e {
        PolicyError::WavePercent { index, .. } => format!("rollout.waves[{index}].percent"),
        PolicyError::LastWaveNotFull { .. } => "rollout.waves".into(),
        PolicyError::WaveOrder { index, .. } => format!("rollout.waves[{index}].after_s"),
        PolicyError::Ratio { what, .. } => format!("rollout.{what}"),
        PolicyError::Window { .. } => "rollout.window.minutes".into(),
        PolicyError::ZeroConcurrency => "rollout.max_concurrent_per_site".into(),
        _ => "rollout".into(),
    }
}

fn backticked(s: &str) -> Option<&str> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    format!("line {line}")
}

/// Applies one `section.key=value` override. The value is read as TOML (`3`, `0.5`,
/// `"text"`, `[1, 2]`), and as a bare string when it is not valid TOML.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<(), (String, String)> {
    let Some((path, raw)) = set.split_once('=') else {
        return Err((set.to_owned(), "--set takes section.key=value".into()));
    };
    let path = path.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.trim().to_owned()),
    };
    let parts: Vec<&str> = path.split('.').collect();
    let fail = |why: &str| Err((path.to_owned(), why.to_owned()));
    if parts.iter().any(|p| p.is_empty()) {
        return fail("--set needs a section and a key, e.g. network.mode=central");
    }
    if parts.len() == 1 {
        // A whole section or list, e.g. class=[{...}].
        table.insert(path.to_owned(), value);
        return Ok(());
    }
    let mut cur: &mut toml::Value =
        table.entry(parts[0].to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    for part in &parts[1..parts.len() - 1] {
        cur = match cur {
            toml::Value::Table(t) => {
                t.entry((*part).to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            toml::Value::Array(a) => match part.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return fail(&format!("{part} is not an index of this list")),
            },
            _ => return fail(&format!("{part}: the value above it is not a section")),
        };
    }
    let last = parts[parts.len() - 1];
    match cur {
        toml::Value::Table(t) => {
            t.insert(last.to_owned(), value);
        }
        toml::Value::Array(a) => match last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
            Some(v) => *v = value,
            None => return fail(&format!("{last} is not an index of this list")),
        },
        _ => return fail("the value above this key is not a section"),
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid scenario for tests.
    pub(crate) const BASE: &str = r#"
[sim]
duration_s = 3600
[fleet]
devices = 100
sites = 4
[[class]]
name = "gw"
share = 100
install_s = 10
reboot_s = 5
downlink_mbps = 100
uplink_mbps = 20
[release]
bytes = 8_000_000
piece_bytes = 1_000_000
[network]
mode = "p2p-dedup"
origin_egress_mbps = 0
site_wan_mbps = 50
site_lan_mbps = 1000
[rollout]
"#;

    fn rejects(text: &str, sets: &[&str]) -> ScenarioError {
        let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
        Scenario::parse("x.toml", text, &sets).expect_err("should be rejected")
    }

    #[test]
    fn base_parses_and_names_itself_after_the_file() {
        let s = Scenario::parse("dir/small.toml", BASE, &[]).unwrap();
        assert_eq!(s.name(), "small");
        assert_eq!(s.pieces(), 8);
        assert_eq!(s.network.mode, Mode::P2pDedup);
    }

    #[test]
    fn bad_input_names_file_key_and_reason() {
        // (override, expected key, a word of the reason)
        let table: &[(&str, &str, &str)] = &[
            // An unknown key.
            ("network.speed=3", "network.speed", "unknown field"),
            // A negative bandwidth.
            ("network.site_wan_mbps=-1", "network.site_wan_mbps", "positive"),
            // Class shares that do not add up.
            ("class.0.share=60", "class.share", "100"),
            // More than every site.
            ("network.site_wan_mix=[{share=60, mbps=2}, {share=50, mbps=5}]", "network.site_wan_mix", "100"),
            // A site WAN of nothing.
            ("network.site_wan_mix=[{share=10, mbps=0}]", "network.site_wan_mix[0].mbps", "positive"),
            // Waves out of order.
            (
                "rollout.waves=[{percent=10, after_s=600}, {percent=100, after_s=60}]",
                "rollout.waves[1].after_s",
                "in order",
            ),
            // A wave percentage that shrinks.
            ("rollout.waves=[{percent=50}, {percent=20}]", "rollout.waves[1].percent", "above"),
            // A last wave short of the fleet.
            ("rollout.waves=[{percent=50}]", "rollout.waves", "100"),
            // A probability above one.
            ("class.0.health_fail=1.5", "class[0].health_fail", "probability"),
            // Too many pieces.
            ("release.piece_bytes=1000", "release.piece_bytes", "pieces"),
            // A time that would overflow virtual time.
            ("class.0.install_s=1e300", "class[0].install_s", "longer"),
            // A fleet too large to hold.
            ("fleet.devices=4000000000", "fleet.devices", "between"),
            // A wrong type.
            ("fleet.devices=\"many\"", "fleet.devices", "invalid type"),
        ];
        for (set, key, word) in table {
            let e = rejects(BASE, &[set]);
            assert_eq!(e.file, "x.toml");
            assert_eq!(&e.key, key, "{set}: {e}");
            assert!(e.reason.contains(word), "{set}: {e}");
        }
    }

    #[test]
    fn a_bad_peering_is_named() {
        // BASE has 4 sites and is p2p-dedup.
        let link = "\n[[link]]\nname = \"x\"\nmbps = 100\n";
        let peering =
            |sites: &str, link: &str| format!("\n[[peering]]\nsites = {sites}\nlink = \"{link}\"\n");
        // (text after BASE, override, expected key, a word of the reason)
        let table: Vec<(String, &str, &str, &str)> = vec![
            (format!("{link}{}", peering("[0, 9]", "x")), "", "peering[0].sites", "does not exist"),
            (format!("{link}{}", peering("[1, 1]", "x")), "", "peering[0].sites", "itself"),
            (
                format!("{link}{}{}", peering("[0, 1]", "x"), peering("[1, 0]", "x")),
                "",
                "peering[1].sites",
                "already",
            ),
            (peering("[0, 1]", "y"), "", "peering[0].link", "no [[link]]"),
            (
                format!("{link}{}\n[[path]]\nsites = [2]\nlinks = [\"x\"]\n", peering("[0, 1]", "x")),
                "",
                "peering[0].link",
                "[[path]]",
            ),
            (
                format!("{link}{}", peering("[0, 1]", "x")),
                "network.mode=\"p2p\"",
                "peering[0].sites",
                "p2p-dedup",
            ),
            (format!("{link}{}", peering("[0, 1]", "x")), "sim.shards=2", "sim.shards", "[[peering]]"),
            (
                format!("{link}{}", peering("[0, 1]", "x")),
                "link.0.latency_ms=5",
                "peering[0].link",
                "latency",
            ),
        ];
        for (extra, set, key, word) in &table {
            let sets: &[&str] = if set.is_empty() { &[] } else { &[set] };
            let e = rejects(&format!("{BASE}{extra}"), sets);
            assert_eq!(&e.key, key, "{extra} {set}: {e}");
            assert!(e.reason.contains(word), "{extra} {set}: {e}");
        }
        Scenario::parse("x.toml", &format!("{BASE}{link}{}", peering("[0, 1]", "x")), &[])
            .expect("a good peering");
    }

    #[test]
    fn missing_section_is_named() {
        let text = BASE.replace("[network]", "[nothing]");
        let e = rejects(&text, &[]);
        assert_eq!(e.key, "nothing");
        let text: String = BASE.split("[network]").next().unwrap().to_owned() + "[rollout]\n";
        let e = rejects(&text, &[]);
        assert_eq!(e.key, "network");
        assert!(e.reason.contains("required"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = rejects("[sim]\nduration_s = = 3\n", &[]);
        assert_eq!(e.key, "line 2");
    }

    #[test]
    fn set_overrides_values() {
        let sets = vec!["network.mode=central".to_owned(), "fleet.devices=50".to_owned()];
        let s = Scenario::parse("x.toml", BASE, &sets).unwrap();
        assert_eq!(s.network.mode, Mode::Central);
        assert_eq!(s.fleet.devices, 50);
        assert!(rejects(BASE, &["novalue"]).reason.contains("section.key=value"));
    }
}
