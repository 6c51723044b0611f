//! The demo's fleet: real `otamesh node` child processes on 127.0.0.1, stopped when the
//! [`Fleet`] is dropped (also when the demo is interrupted), and sampled through their
//! APIs.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use otamesh_core::DeviceId;
use otamesh_node::client::{Client, FleetView, StatusView};

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `site-a-0` and so on.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Index of its site.
    pub site_index: usize,
    /// Its health check command.
    pub health_check: String,
}

/// One running node.
#[derive(Debug)]
pub struct Node {
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
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

/// Every node of the demo; dropping it stops them all.
#[derive(Debug, Default)]
pub struct Fleet {
    /// The nodes, site by site.
    pub nodes: Vec<Node>,
}

/// What one poll of every node saw.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the demo started.
    pub t: f64,
    /// Per node (same order as [`Fleet::nodes`]); `None` when its API did not answer.
    pub nodes: Vec<Option<StatusView>>,
    /// The first answering node's `/fleet`, if it serves one.
    pub fleet: Option<FleetView>,
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
    pub publisher: &'a otamesh_core::SecretKey,
    /// The device class.
    pub class: &'a str,
    /// Origin poll interval, seconds.
    pub poll_interval_s: f64,
    /// The nodes' working directory, where their hooks run.
    pub cwd: &'a Path,
}

impl Fleet {
    /// Starts one node per spec. Each node peers with every earlier node of its site;
    /// the first node of each site also with the first of every earlier site, so
    /// reports and directives reach the whole fleet.
    pub fn start(setup: &Setup<'_>, specs: &[NodeSpec]) -> anyhow::Result<Self> {
        let mut fleet = Fleet::default();
        for spec in specs {
            let port = free_port()?;
            let api_addr = format!("127.0.0.1:{}", free_port()?);
            let addr = format!("/ip4/127.0.0.1/tcp/{port}");
            let data = setup.nodes_dir.join(&spec.name);
            let log = setup.logs_dir.join(format!("{}.log", spec.name));
            crate::commands::enroll::enrol(
                std::slice::from_ref(setup.publisher),
                &data,
                &spec.site,
                setup.class,
            )
            .with_context(|| format!("cannot enrol node {}", spec.name))?;
            let mut args: Vec<String> = vec![
                "node".into(),
                "--data".into(),
                data.display().to_string(),
                "--site".into(),
                spec.site.clone(),
                "--class".into(),
                setup.class.into(),
                "--listen".into(),
                addr.clone(),
                "--api".into(),
                api_addr.clone(),
                "--origin".into(),
                setup.origin.into(),
                "--trust".into(),
                setup.trust.display().to_string(),
                "--poll-interval".into(),
                setup.poll_interval_s.to_string(),
                "--no-mdns".into(),
                "--health-check".into(),
                spec.health_check.clone(),
            ];
            let first_of_site = !fleet.nodes.iter().any(|n| n.site_index == spec.site_index);
            for other in &fleet.nodes {
                let same_site = other.site_index == spec.site_index;
                let gateways = first_of_site && is_first_of_site(&fleet.nodes, other);
                if same_site || gateways {
                    args.extend(["--peer".into(), other.addr.clone()]);
                }
            }
            let log_file =
                fs::File::create(&log).with_context(|| format!("cannot create the log {}", log.display()))?;
            let child = Command::new(setup.exe)
                .args(&args)
                .current_dir(setup.cwd)
                .env("RUST_LOG", "info,libp2p_gossipsub=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("cannot start {} node", setup.exe.display()))?;
            fleet.nodes.push(Node {
                name: spec.name.clone(),
                site: spec.site.clone(),
                site_index: spec.site_index,
                device: None,
                addr,
                api: Client::new(&api_addr)?,
                log,
                child: Some(child),
            });
        }
        Ok(fleet)
    }

    /// Fails, naming the node and the end of its log, when a node process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            let Some(child) = n.child.as_mut() else { continue };
            if let Some(status) = child.try_wait().context("waiting for a node")? {
                n.child = None;
                bail!(
                    "node {} exited ({status}); its log {} ends with:\n{}",
                    n.name,
                    n.log.display(),
                    tail(&n.log)
                );
            }
        }
        Ok(())
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

    /// Stops every node: SIGTERM, a grace period to close their databases, then SIGKILL.
    pub fn stop(&mut self) {
        let mut children: Vec<Child> = self.nodes.iter_mut().filter_map(|n| n.child.take()).collect();
        for c in &children {
            terminate(c);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            if children.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Sample {
    /// Node `i`'s active release id. While a new release is on trial (its health check
    /// runs), that is the one before it, which the device goes back to if the check fails.
    pub fn active(&self, i: usize) -> Option<&str> {
        let s = self.nodes.get(i)?.as_ref()?;
        let on_trial = matches!(s.state.as_deref(), Some("activated" | "checking"));
        let slot = if on_trial { s.previous.as_ref() } else { s.active.as_ref() };
        slot?.release_id.as_deref()
    }

    /// Node `i`'s state for `release`: `committed` when it runs it, else what its
    /// `/status` says of the release, else its newest report about it, else `waiting`.
    pub fn phase(&self, i: usize, device: Option<DeviceId>, release: &str) -> String {
        if self.active(i) == Some(release) {
            return "committed".into();
        }
        let status = self.nodes.get(i).and_then(Option::as_ref);
        if let Some(state) = self.outcome(device, release) {
            return state.to_owned();
        }
        let Some(status) = status else { return "down".into() };
        status
            .releases
            .iter()
            .find(|r| r.release_id == release)
            .and_then(|r| r.state.clone())
            .unwrap_or_else(|| "waiting".into())
    }

    /// The newest report `device` sent about `release`, by the sampled `/fleet`.
    pub fn outcome(&self, device: Option<DeviceId>, release: &str) -> Option<&str> {
        let device = device?.to_string();
        let d = self.fleet.as_ref()?.devices.iter().find(|d| d.device_id == device)?;
        (d.release.as_deref() == Some(release)).then_some(d.state.as_deref()).flatten()
    }

    /// How many nodes are in each phase for `release`.
    pub fn phases(&self, devices: &[Option<DeviceId>], release: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            *out.entry(self.phase(i, *d, release)).or_insert(0) += 1;
        }
        out
    }
}

fn is_first_of_site(nodes: &[Node], node: &Node) -> bool {
    nodes.iter().find(|n| n.site_index == node.site_index).is_some_and(|n| n.name == node.name)
}

/// A free TCP port on 127.0.0.1 (another process could take it before the node
/// binds; the node then exits and the demo says so).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?.local_addr()?.port())
}

#[cfg(unix)]
fn terminate(child: &Child) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
}

#[cfg(not(unix))]
fn terminate(_child: &Child) {}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
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
        assert_eq!(sample.phase(0, None, &new), "checking");
        assert_eq!(sample.active(1), Some(new.as_str()));
        assert_eq!(sample.phase(1, None, &new), "committed");
    }
}
