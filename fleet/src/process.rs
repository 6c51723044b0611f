//! The process manager: real `otamesh node` processes (and the other programs a fleet
//! harness runs: simulator runs, an HTTPS server), each with its log file.
//!
//! **Goals**: start a node with its enrolment in place, tell when it has exited (with
//! the end of its log), restart it with changed flags, kill it hard (a power cut) or
//! stop it gently (SIGTERM, a grace period to close its database, then SIGKILL), and
//! stop every node of a fleet together.
//!
//! **Non-goals**: waiting for a node's API (the caller polls the API its own way:
//! async in the demo and the benchmarks, blocking in the tests), supervision or
//! restarts on failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use otamesh_core::{DeviceId, SecretKey};
use otamesh_node::datadir::{self, DataDirError};

/// How long [`stop_all`] waits after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// Why a node could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Its data directory could not be enrolled (not writable, locked by a running
    /// node, or holding a different identity's enrolment).
    #[error("cannot enrol node {name}: {source}")]
    Enrol {
        /// The node.
        name: String,
        /// What the data directory said.
        source: DataDirError,
    },
    /// The log file could not be opened; check that its directory exists and is writable.
    #[error("cannot open the log {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program could not be run; check the path of the `otamesh` binary.
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        /// The program.
        exe: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A node process ended while it should have been running.
#[derive(Debug, thiserror::Error)]
#[error("node {name} exited ({status}); its log {} ends with:\n{tail}", log.display())]
#[non_exhaustive]
pub struct Exited {
    /// The node.
    pub name: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Its log file.
    pub log: PathBuf,
    /// The last lines of its log.
    pub tail: String,
}

/// One `otamesh node` process (or none, between a stop and the next spawn).
#[derive(Debug)]
pub struct NodeProcess {
    /// Its name, for messages.
    pub name: String,
    /// The `otamesh` binary.
    pub exe: PathBuf,
    /// The arguments after `otamesh`, starting with `node`. Edit them and
    /// [`NodeProcess::spawn`] again to restart with other flags.
    pub args: Vec<String>,
    /// What the command runs under, e.g. `ip netns exec NS`; empty for nothing.
    pub wrapper: Vec<String>,
    /// Its working directory (where its hooks run); `None`: the caller's.
    pub cwd: Option<PathBuf>,
    /// Its log (stderr), appended to by every spawn.
    pub log: PathBuf,
    /// Its `RUST_LOG`.
    pub rust_log: String,
    child: Option<Child>,
}

/// The flags of `otamesh node` that every fleet node takes.
#[derive(Debug, Clone)]
pub struct NodeArgs<'a> {
    /// `--data`.
    pub data: &'a Path,
    /// `--site`.
    pub site: &'a str,
    /// `--class`.
    pub class: &'a str,
    /// `--listen`.
    pub listen: &'a str,
    /// `--api`.
    pub api: &'a str,
    /// `--trust`.
    pub trust: &'a Path,
    /// `--poll-interval`, seconds.
    pub poll_interval_s: f64,
    /// Any further flags, last (`--origin`, `--peer`, hooks, `--no-mdns`).
    pub extra: &'a [String],
}

impl NodeArgs<'_> {
    /// The argument list, `node` first.
    pub fn to_vec(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "node".into(),
            "--data".into(),
            self.data.display().to_string(),
            "--site".into(),
            self.site.into(),
            "--class".into(),
            self.class.into(),
            "--listen".into(),
            self.listen.into(),
            "--api".into(),
            self.api.into(),
            "--trust".into(),
            self.trust.display().to_string(),
            "--poll-interval".into(),
            self.poll_interval_s.to_string(),
        ];
        args.extend_from_slice(self.extra);
        args
    }
}

/// Enrols the device of data directory `data` for `site` and `class`, signed by the
/// publisher `key`, unless it already holds an enrolment.
pub fn enrol(
    name: &str,
    key: &SecretKey,
    data: &Path,
    site: &str,
    class: &str,
) -> Result<Option<DeviceId>, StartError> {
    if data.join("enrolment").exists() {
        return Ok(None);
    }
    let now = otamesh_node::clock::now_ms();
    datadir::enrol(std::slice::from_ref(key), data, site, class, now)
        .map(|(id, _)| Some(id))
        .map_err(|source| StartError::Enrol { name: name.to_owned(), source })
}

impl NodeProcess {
    /// A node to be run as `exe ARGS` with its stderr in `log`; not started yet.
    pub fn new(name: &str, exe: &Path, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            exe: exe.to_owned(),
            args,
            wrapper: Vec::new(),
            cwd: None,
            log,
            // `OTAMESH_NODE_LOG` (a `RUST_LOG` filter) turns up the nodes' logs for a
            // look into a benchmark or demo run.
            rust_log: std::env::var("OTAMESH_NODE_LOG")
                .unwrap_or_else(|_| "info,libp2p_gossipsub=warn".into()),
            child: None,
        }
    }

    /// Starts the process (again, after a stop or a kill).
    pub fn spawn(&mut self) -> Result<(), StartError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| StartError::Log { path: self.log.clone(), source })?;
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let child = command
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| StartError::Spawn { exe: self.exe.clone(), source })?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether a process was started and has not been seen to end.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How it ended, once it has (and then it is no longer running); `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Fails, naming the node and the end of its log, when its process has exited.
    pub fn check_alive(&mut self) -> Result<(), Exited> {
        let Some(status) = self.exited() else { return Ok(()) };
        Err(Exited { name: self.name.clone(), status, log: self.log.clone(), tail: tail(&self.log, 15) })
    }

    /// SIGKILL now, as a power cut would, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, up to a grace period to close its database, then SIGKILL.
    pub fn stop(&mut self) {
        stop_all(std::iter::once(self));
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops every process together: SIGTERM to all, a shared grace period, then SIGKILL
/// to what is left.
pub fn stop_all<'a>(nodes: impl IntoIterator<Item = &'a mut NodeProcess>) {
    let mut children: Vec<Child> = nodes.into_iter().filter_map(|n| n.child.take()).collect();
    for c in &children {
        terminate(c);
    }
    let deadline = Instant::now() + GRACE;
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

#[cfg(unix)]
fn terminate(child: &Child) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
}

#[cfg(not(unix))]
fn terminate(_child: &Child) {}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on 127.0.0.1. Another process could take it before the node binds;
/// the node then exits, and [`NodeProcess::check_alive`] says so.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("n.log");
        let mut p = NodeProcess::new(
            "n",
            Path::new("/bin/sh"),
            vec!["-c".into(), "echo boom >&2; exit 3".into()],
            log,
        );
        p.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = loop {
            if let Err(e) = p.check_alive() {
                break e;
            }
            assert!(Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(exited.status.code(), Some(3));
        assert!(exited.tail.contains("boom"), "{}", exited.tail);
        assert!(!p.running());
    }

    #[test]
    fn stop_ends_a_process_that_ignores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = NodeProcess::new(
            "sleeper",
            Path::new("/bin/sh"),
            vec!["-c".into(), "sleep 30".into()],
            dir.path().join("s.log"),
        );
        p.spawn().unwrap();
        assert!(p.running());
        p.stop();
        assert!(!p.running());
    }
}
