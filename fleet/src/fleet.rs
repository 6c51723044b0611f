//! A fleet on loopback: real `otamesh node` processes in sites, peered as a site LAN
//! would be, watched through their APIs into a [`Timeline`].
//!
//! **Goals**: start SITES x NODES nodes, each enrolled for its site, peered with every
//! earlier node of its site, the first node of each site also with the first of
//! every earlier site (so reports and directives reach the whole fleet); wait until
//! every node answers and knows its site; sample every node's `/status` (and one
//! node's `/fleet`) at once; sum the fleet's byte counters; stop every node when the
//! [`Fleet`] is dropped (also when its owner is interrupted).
//!
//! **Non-goals**: judging what the samples mean for a story (the demo and the
//! benchmarks do that), and mDNS discovery (nodes run `--no-mdns`, so two fleets on
//! one machine never meet).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use otamesh_core::lifecycle::Phase;
use otamesh_core::report::OutcomeKind;
use otamesh_core::{DeviceId, SecretKey};
use otamesh_node::client::{Client, ClientError, FleetView, StatusView};

use crate::process::{self, Exited, NodeArgs, NodeProcess, StartError, free_port};

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `site-a-0` and so on.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Index of its site.
    pub site_index: usize,
    /// Its health check command, if any.
    pub health_check: Option<String>,
}

/// One running node of a fleet.
#[derive(Debug)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Index of its site.
    pub site_index: usize,
    /// Its device id, once its API answered.
    pub device: Option<DeviceId>,
    /// Its libp2p address.
    pub addr: String,
    /// Its API.
    pub api: Client,
    /// Its process.
    pub process: NodeProcess,
}

/// Every node of a fleet; dropping it stops them all.
#[derive(Debug, Default)]
pub struct Fleet {
    /// The nodes, site by site.
    pub nodes: Vec<Member>,
}

/// What one poll of every node saw.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the watcher started.
    pub t: f64,
    /// Per node (same order as [`Fleet::nodes`]); `None` when its API did not answer.
    pub nodes: Vec<Option<StatusView>>,
    /// The first answering node's `/fleet`, if it serves one.
    pub fleet: Option<FleetView>,
}

/// Every sample taken, with the wall clock (Unix ms) each was taken at.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The samples, oldest first.
    pub samples: Vec<Sample>,
    /// Unix ms at which each sample's answers were all in.
    pub at_ms: Vec<u64>,
}

impl Timeline {
    /// Records `sample`, taken just now.
    pub fn push(&mut self, sample: Sample) {
        self.samples.push(sample);
        self.at_ms.push(otamesh_node::clock::now_ms());
    }

    /// The first sample at or after `from_s` (seconds) in which every node runs
    /// `release`, as seconds after `from_s`.
    pub fn all_running(&self, from_s: f64, release: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.t >= from_s
                    && !s.nodes.is_empty()
                    && (0..s.nodes.len()).all(|i| s.active(i) == Some(release))
            })
            .map(|s| s.t - from_s)
    }
}

/// Fleet-wide byte counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Bytes {
    /// Chunk bytes devices got from the origin (their `source="wan"` counter).
    pub wan: f64,
    /// Chunk bytes devices got from site peers (`source="lan"`).
    pub lan: f64,
    /// Chunk bytes the origin sent.
    pub origin: u64,
}

impl Bytes {
    /// What was added since `before`.
    pub fn since(self, before: Bytes) -> Bytes {
        Bytes { wan: self.wan - before.wan, lan: self.lan - before.lan, origin: self.origin - before.origin }
    }

    /// The share of fetched chunk bytes that came from site peers, 0..=1.
    pub fn lan_share(&self) -> f64 {
        let fetched = self.wan + self.lan;
        if fetched > 0.0 { self.lan / fetched } else { 0.0 }
    }
}

/// Everything needed to start the nodes.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    /// The `otamesh` binary.
    pub exe: &'a Path,
    /// Node data directories go under here.
    pub nodes_dir: &'a Path,
    /// Logs go here.
    pub logs_dir: &'a Path,
    /// The origin URL.
    pub origin: &'a str,
    /// The publisher's `.pub`.
    pub trust: &'a Path,
    /// The publisher's key, to enrol every node.
    pub publisher: &'a SecretKey,
    /// The device class.
    pub class: &'a str,
    /// Origin poll interval, seconds.
    pub poll_interval_s: f64,
    /// The nodes' working directory, where their hooks run.
    pub cwd: &'a Path,
}

/// Why a fleet did not start or did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A node could not be started.
    #[error(transparent)]
    Start(#[from] StartError),
    /// No free port on 127.0.0.1: too many sockets in use; stop other fleets.
    #[error("no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    /// An API address was refused (a bug: the harness makes them).
    #[error(transparent)]
    Api(#[from] ClientError),
    /// A node process ended.
    #[error(transparent)]
    Exited(#[from] Exited),
    /// Nodes did not answer, or did not know their site, in time; their logs say why.
    #[error("nodes not up or not connected to their site after {} s: {}; see their logs in {}", limit.as_secs(), names.join(", "), logs.display())]
    NotReady {
        /// How long was waited.
        limit: Duration,
        /// The nodes that were not ready.
        names: Vec<String>,
        /// Where their logs are.
        logs: PathBuf,
    },
}

impl Fleet {
    /// Starts one node per spec (see the module doc for who peers with whom), all at
    /// once.
    pub fn start(setup: &Setup<'_>, specs: &[NodeSpec]) -> Result<Self, FleetError> {
        let mut fleet = Fleet::default();
        for spec in specs {
            fleet.add(setup, spec)?;
        }
        Ok(fleet)
    }

    /// Enrols and starts one more node, peered with the nodes already started (see the
    /// module doc); does not wait for it to answer.
    pub fn add(&mut self, setup: &Setup<'_>, spec: &NodeSpec) -> Result<(), FleetError> {
        let port = free_port().map_err(FleetError::Port)?;
        let api_addr = format!("127.0.0.1:{}", free_port().map_err(FleetError::Port)?);
        let addr = format!("/ip4/127.0.0.1/tcp/{port}");
        let data = setup.nodes_dir.join(&spec.name);
        let log = setup.logs_dir.join(format!("{}.log", spec.name));
        process::enrol(&spec.name, setup.publisher, &data, &spec.site, setup.class)?;
        let mut extra: Vec<String> = vec!["--origin".into(), setup.origin.into(), "--no-mdns".into()];
        if let Some(check) = &spec.health_check {
            extra.extend(["--health-check".into(), check.clone()]);
        }
        let first_of_site = !self.nodes.iter().any(|n| n.site_index == spec.site_index);
        for other in &self.nodes {
            let same_site = other.site_index == spec.site_index;
            let gateways = first_of_site && is_first_of_site(&self.nodes, other);
            if same_site || gateways {
                extra.extend(["--peer".into(), other.addr.clone()]);
            }
        }
        let args = NodeArgs {
            data: &data,
            site: &spec.site,
            class: setup.class,
            listen: &addr,
            api: &api_addr,
            trust: setup.trust,
            poll_interval_s: setup.poll_interval_s,
            extra: &extra,
        };
        let mut process = NodeProcess::new(&spec.name, setup.exe, args.to_vec(), log);
        process.cwd = Some(setup.cwd.to_owned());
        process.spawn()?;
        self.nodes.push(Member {
            name: spec.name.clone(),
            site: spec.site.clone(),
            site_index: spec.site_index,
            device: None,
            addr,
            api: Client::new(&api_addr)?,
            process,
        });
        Ok(())
    }

    /// Fails, naming the node and the end of its log, when a node process has exited.
    pub fn check_alive(&mut self) -> Result<(), Exited> {
        self.nodes.iter_mut().try_for_each(|n| n.process.check_alive())
    }

    /// Polls every node's `/status` and the first answering node's `/fleet`.
    pub async fn sample(&self, t: f64) -> Sample {
        let nodes =
            futures::future::join_all(self.nodes.iter().map(|n| async { n.api.status().await.ok() })).await;
        let first = nodes.iter().position(Option::is_some);
        let fleet = match first {
            Some(i) => self.nodes[i].api.fleet().await.ok(),
            None => None,
        };
        Sample { t, nodes, fleet }
    }

    /// Waits until every node answers, knows its site peers and is connected, polling
    /// every `every`; `progress(ready, total)` after each poll. Learns each node's
    /// device id.
    pub async fn wait_ready(
        &mut self,
        limit: Duration,
        every: Duration,
        logs: &Path,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(), FleetError> {
        let deadline = Instant::now() + limit;
        let n = self.nodes.len();
        loop {
            self.check_alive()?;
            let sample = self.sample(0.0).await;
            let ready: Vec<bool> = sample
                .nodes
                .iter()
                .zip(&self.nodes)
                .map(|(s, node)| {
                    let site_size = self.nodes.iter().filter(|m| m.site_index == node.site_index).count();
                    s.as_ref().is_some_and(|s| {
                        s.device_id.is_some()
                            && (s.peers.unwrap_or(0) >= 1 || n == 1)
                            && s.site_members.as_ref().is_none_or(|m| m.len() + 1 >= site_size)
                    })
                })
                .collect();
            let up = ready.iter().filter(|r| **r).count();
            progress(up, n);
            if up == n {
                for (node, s) in self.nodes.iter_mut().zip(&sample.nodes) {
                    node.device =
                        s.as_ref().and_then(|s| s.device_id.as_deref()).and_then(|id| id.parse().ok());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let names = ready
                    .iter()
                    .zip(&self.nodes)
                    .filter(|(r, _)| !**r)
                    .map(|(_, n)| n.name.clone())
                    .collect();
                return Err(FleetError::NotReady { limit, names, logs: logs.to_owned() });
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The fleet's byte counters now: every node's chunk bytes by source, and what
    /// `origin_chunk_bytes` says the origin sent.
    pub async fn bytes(&self, origin_chunk_bytes: u64) -> Bytes {
        let metrics = futures::future::join_all(self.nodes.iter().map(|n| n.api.metrics())).await;
        let mut b = Bytes { origin: origin_chunk_bytes, ..Bytes::default() };
        for m in metrics.into_iter().flatten() {
            b.wan += m.sum("otamesh_chunk_bytes_total", &["source=\"wan\""]);
            b.lan += m.sum("otamesh_chunk_bytes_total", &["source=\"lan\""]);
        }
        b
    }

    /// The device ids, in fleet order (`None` before [`Fleet::wait_ready`]).
    pub fn devices(&self) -> Vec<Option<DeviceId>> {
        self.nodes.iter().map(|n| n.device).collect()
    }

    /// Stops every node: SIGTERM, a grace period to close their databases, then SIGKILL.
    pub fn stop(&mut self) {
        process::stop_all(self.nodes.iter_mut().map(|n| &mut n.process));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a sample says of one node and one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// Its `/status` (or, when it runs the release, `committed`).
    Phase(Phase),
    /// Its newest report about the release, from `/fleet`.
    Reported(OutcomeKind),
    /// Its API did not answer.
    Down,
}

impl Seen {
    /// Installed or past it: the device has the release or tried it.
    pub fn installed(self) -> bool {
        matches!(self, Self::Reported(_))
            || matches!(self, Self::Phase(p) if p.holds_site_slot() || p == Phase::Committed)
    }

    /// The release failed on the device.
    pub fn failed(self) -> bool {
        matches!(self, Self::Reported(k) if k.is_failure()) || self == Self::Phase(Phase::RolledBack)
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Phase(p) => p.fmt(f),
            Self::Reported(k) => k.fmt(f),
            Self::Down => f.write_str("down"),
        }
    }
}

impl Sample {
    /// Node `i`'s active release id. While a new release is on trial (its health check
    /// runs), that is the one before it, which the device goes back to if the check fails.
    pub fn active(&self, i: usize) -> Option<&str> {
        let s = self.nodes.get(i)?.as_ref()?;
        let on_trial = matches!(s.state, Some(Phase::Activated | Phase::Checking));
        let slot = if on_trial { s.previous.as_ref() } else { s.active.as_ref() };
        slot?.release_id.as_deref()
    }

    /// Node `i`'s state for `release`: committed when it runs it, else its newest report
    /// about it, else what its `/status` says of the release, else waiting.
    pub fn phase(&self, i: usize, device: Option<DeviceId>, release: &str) -> Seen {
        if self.active(i) == Some(release) {
            return Seen::Phase(Phase::Committed);
        }
        if let Some(outcome) = self.outcome(device, release) {
            return Seen::Reported(outcome);
        }
        let Some(status) = self.nodes.get(i).and_then(Option::as_ref) else { return Seen::Down };
        let state = status.releases.iter().find(|r| r.release_id == release).and_then(|r| r.state);
        Seen::Phase(state.unwrap_or(Phase::Waiting))
    }

    /// The newest report `device` sent about `release`, by the sampled `/fleet`.
    pub fn outcome(&self, device: Option<DeviceId>, release: &str) -> Option<OutcomeKind> {
        let device = device?.to_string();
        let d = self.fleet.as_ref()?.devices.iter().find(|d| d.device_id == device)?;
        (d.release.as_deref() == Some(release)).then_some(d.state).flatten()
    }

    /// How many nodes are in each phase for `release`.
    pub fn phases(&self, devices: &[Option<DeviceId>], release: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            *out.entry(self.phase(i, *d, release).to_string()).or_insert(0) += 1;
        }
        out
    }
}

fn is_first_of_site(nodes: &[Member], node: &Member) -> bool {
    nodes.iter().find(|n| n.site_index == node.site_index).is_some_and(|n| n.name == node.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_on_trial_is_not_yet_the_active_one() {
        let (old, new) = ("aa".repeat(32), "bb".repeat(32));
        let status = |state: &str| -> StatusView {
            serde_json::from_str(&format!(
                r#"{{"state":"{state}","active":{{"release_id":"{new}"}},"previous":{{"release_id":"{old}"}},
                    "releases":[{{"release_id":"{new}","state":"{state}"}}]}}"#
            ))
            .unwrap()
        };
        let sample =
            Sample { t: 0.0, nodes: vec![Some(status("checking")), Some(status("committed"))], fleet: None };
        assert_eq!(sample.active(0), Some(old.as_str()), "checking: still on the previous release");
        assert_eq!(sample.phase(0, None, &new), Seen::Phase(Phase::Checking));
        assert_eq!(sample.active(1), Some(new.as_str()));
        assert_eq!(sample.phase(1, None, &new), Seen::Phase(Phase::Committed));
    }
}
