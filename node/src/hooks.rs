//! Running the operator's install hook and health check.
//!
//! A hook is a shell command line, run as `sh -c CMD otamesh-hook SLOT`, so `$1` is the
//! slot directory; it also gets `OTAMESH_PHASE` (`install` or `health`),
//! `OTAMESH_SLOT`, `OTAMESH_RELEASE`, `OTAMESH_VERSION` and `OTAMESH_SEQUENCE`. It runs
//! in its own process group with a timeout; on timeout the whole group is killed, so a
//! hook that forks cannot outlive its deadline. Exit 0 is success; anything else, a
//! signal, a timeout or a command that cannot start is a failure with a one-line reason.
//!
//! **Hooks die with their node.** A node killed with `kill -9` cannot kill its hook, and
//! a hook in its own process group outlives it. So the group of the running hook is
//! recorded beside the slots (`DATA/slots/hook.pgid`: group id, boot id and the
//! leader's start time, fsynced) *before the hook command starts*: the hook is spawned
//! behind a gate (it waits for a line on its stdin) that opens only once the record is
//! on disk; a node dying before that closes the pipe and the gate exits without running
//! the hook. A starting node calls [`reap_previous`], which kills a recorded group left
//! by its previous run (only if it is still that group: same boot, same leader start
//! time) and waits for it to be gone before anything touches a slot.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A configured hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The command line, run by `sh -c`.
    pub command: String,
    /// How long it may run.
    pub timeout: Duration,
}

/// What a hook is told about the release.
#[derive(Debug, Clone, Copy)]
pub struct HookEnv<'a> {
    /// `install` or `health`.
    pub phase: &'a str,
    /// The slot directory holding the release.
    pub slot: &'a Path,
    /// Release id, hex.
    pub release: &'a str,
    /// Human version.
    pub version: &'a str,
    /// Sequence.
    pub sequence: u64,
}

/// Why a hook failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The hook's process group could not be recorded, so it was not started (a node
    /// killed during it could not kill it later). Check the slots directory is writable.
    #[error("`{command}` not started: cannot record its process group: {reason}")]
    Record {
        /// The command.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// `sh` itself could not start.
    #[error("cannot start `sh -c {command}`: {reason}")]
    Spawn {
        /// The command.
        command: String,
        /// The OS error.
        reason: String,
    },
    /// The hook ran past its timeout and was killed.
    #[error("`{command}` did not finish within {secs} s and was killed")]
    Timeout {
        /// The command.
        command: String,
        /// The timeout.
        secs: u64,
    },
    /// The hook exited non-zero or was killed by a signal.
    #[error("`{command}` {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed {
        /// The command.
        command: String,
        /// "exited with 3" or "was killed by a signal".
        status: String,
        /// The end of what it wrote to stderr, on one line.
        stderr: String,
    },
}

/// The record of the running hook's process group, in the slots directory.
pub const RECORD: &str = "hook.pgid";

/// The gate a hook waits behind until its process group is recorded: reads one line,
/// runs the hook only if it is `start` (EOF, from a node that died, runs nothing), and
/// `exec`s so the hook keeps the group leader's pid.
const GATE: &str = r#"IFS= read -r go && [ "$go" = start ] || exit 125; exec </dev/null; exec sh -c "$OTAMESH_HOOK_COMMAND" "$0" "$@""#;

/// How long [`reap_previous`] waits for a killed group to disappear.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// Why the previous run's hook could not be reaped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReapError {
    /// The record could not be read or removed.
    #[error("{path}: {source}")]
    Io {
        /// The record file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The group was killed but some member survived; the slot is not safe to touch.
    #[error(
        "the previous run's hook (process group {pgid}) is still running after SIGKILL: stop it by hand (kill -KILL -{pgid}), then start the node again"
    )]
    Survived {
        /// The process group.
        pgid: i32,
    },
}

/// Kills the process group of a hook that the previous run of the node on `data_dir`
/// left running, and waits until it is gone. Returns its group id when there was one
/// to kill. Call it at start, before anything touches a slot.
pub fn reap_previous(data_dir: &Path) -> Result<Option<i32>, ReapError> {
    let path = data_dir.join("slots").join(RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReapError::Io { path, source }),
    };
    let killed = match GroupRecord::parse(&text) {
        Some(record) if record.still_running() => {
            tracing::warn!(pgid = record.pgid, "killing the hook the previous run of this node left running");
            kill_pgid(record.pgid);
            let deadline = Instant::now() + REAP_WAIT;
            while group_exists(record.pgid) {
                if Instant::now() >= deadline {
                    return Err(ReapError::Survived { pgid: record.pgid });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(record.pgid)
        }
        // Unreadable, from another boot, or its group is gone or reused: nothing of
        // ours to kill.
        _ => None,
    };
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ReapError::Io { path, source: e }),
        _ => Ok(killed),
    }
}

/// Which process group a running hook has, and how to tell it from a later group that
/// reuses the id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupRecord {
    pgid: i32,
    boot_id: String,
    /// The leader's start time in clock ticks since boot (/proc/PID/stat field 22).
    start_time: u64,
}

impl GroupRecord {
    fn of(pgid: i32) -> Option<Self> {
        Some(Self { pgid, boot_id: boot_id()?, start_time: start_time(pgid)? })
    }

    fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        let record = Self {
            pgid: it.next()?.parse().ok()?,
            boot_id: it.next()?.to_owned(),
            start_time: it.next()?.parse().ok()?,
        };
        (record.pgid > 1).then_some(record)
    }

    fn to_text(&self) -> String {
        format!("{} {} {}\n", self.pgid, self.boot_id, self.start_time)
    }

    /// Whether the recorded group still exists and is the one recorded. A pid is not
    /// reused while a group of that id exists, so if the leader is gone but the group
    /// is not, the members are the hook's children.
    fn still_running(&self) -> bool {
        if boot_id().as_deref() != Some(self.boot_id.as_str()) || !group_exists(self.pgid) {
            return false;
        }
        match start_time(self.pgid) {
            Some(t) => t == self.start_time,
            None => true,
        }
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; fields count on
    // from the last ')': state is field 3, start time field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether a live (not zombie) process is in group `pgid`. Zombies are not counted:
/// a killed hook reparented to an init that does not reap them would otherwise look
/// alive forever.
fn group_exists(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.filter_map(Result::ok).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        // Fields after the command name: state (3), ppid (4), pgrp (5).
        let Some(close) = stat.rfind(')') else { return false };
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

fn kill_pgid(pgid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// Writes the record of `pgid` into `dir` (temporary file, fsync, rename, fsync dir).
fn write_record(dir: &Path, pgid: i32) -> Result<PathBuf, String> {
    let record = GroupRecord::of(pgid).ok_or("cannot read /proc for the hook's process group")?;
    let path = dir.join(RECORD);
    crate::store::write_atomic(&path, record.to_text().as_bytes()).map_err(|e| e.to_string())?;
    Ok(path)
}

/// How much of a failing hook's stderr is kept for the reason.
const STDERR_TAIL: usize = 200;

impl Hook {
    /// Runs the hook to completion or timeout. Blocking: call it off the event loop.
    /// Its process group is recorded in the directory holding `env.slot` while it runs.
    pub fn run(&self, env: HookEnv<'_>) -> Result<(), HookError> {
        let record_dir = env.slot.parent().unwrap_or(env.slot).to_owned();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(GATE)
            .arg("otamesh-hook")
            .arg(env.slot)
            .env("OTAMESH_PHASE", env.phase)
            .env("OTAMESH_SLOT", env.slot)
            .env("OTAMESH_RELEASE", env.release)
            .env("OTAMESH_VERSION", env.version)
            .env("OTAMESH_SEQUENCE", env.sequence.to_string())
            .env("OTAMESH_HOOK_COMMAND", &self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let spawn_err =
            |e: std::io::Error| HookError::Spawn { command: self.command.clone(), reason: e.to_string() };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // Invariant: stdin was set to a pipe above.
        let mut gate = child.stdin.take().expect("the hook's stdin is piped");
        let record = match write_record(&record_dir, child.id() as i32) {
            Ok(path) => path,
            Err(reason) => {
                // Closing the pipe makes the gate exit without running the hook.
                drop(gate);
                let _ = child.wait();
                return Err(HookError::Record { command: self.command.clone(), reason });
            }
        };
        // The record is on disk: open the gate. A write error means the gate shell is
        // gone already, which its exit status reports below.
        let _ = gate.write_all(b"start\n");
        drop(gate);
        let result = self.wait(child);
        let _ = std::fs::remove_file(record);
        result
    }

    fn wait(&self, mut child: std::process::Child) -> Result<(), HookError> {
        let spawn_err =
            |e: std::io::Error| HookError::Spawn { command: self.command.clone(), reason: e.to_string() };
        // Drain stderr on a thread so a chatty hook never blocks on a full pipe.
        let stderr = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                buf
            })
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait().map_err(spawn_err)? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    kill_group(&child);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HookError::Timeout {
                        command: self.command.clone(),
                        secs: self.timeout.as_secs(),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if status.success() {
            return Ok(());
        }
        let tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        let text = String::from_utf8_lossy(&tail);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        let status = match status.code() {
            Some(code) => format!("exited with {code}"),
            None => "was killed by a signal".to_owned(),
        };
        Err(HookError::Failed { command: self.command.clone(), status, stderr: text[start..].to_owned() })
    }
}

#[cfg(unix)]
fn kill_group(child: &std::process::Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_child: &std::process::Child) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(command: &str, timeout_ms: u64) -> Hook {
        Hook { command: command.to_owned(), timeout: Duration::from_millis(timeout_ms) }
    }

    fn env(slot: &Path) -> HookEnv<'_> {
        HookEnv { phase: "health", slot, release: "ab", version: "1.2", sequence: 7 }
    }

    /// A data directory with a slot `a`, as a node lays it out.
    fn data_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slots").join("a");
        std::fs::create_dir_all(&slot).unwrap();
        (dir, slot)
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_group_is_recorded_while_the_hook_runs_and_forgotten_after() {
        let (dir, slot) = data_dir();
        let record = dir.path().join("slots").join(RECORD);
        let seen = dir.path().join("seen");
        // The hook copies the record it finds: it exists before the hook's command runs.
        let cmd = format!("cp {} {}", record.display(), seen.display());
        hook(&cmd, 5000).run(env(&slot)).unwrap();
        let copied = GroupRecord::parse(&std::fs::read_to_string(&seen).unwrap()).unwrap();
        assert_eq!(copied.boot_id, boot_id().unwrap());
        assert!(!record.exists(), "the record is removed when the hook ends");
    }

    #[test]
    fn a_starting_node_kills_the_hook_its_previous_run_left() {
        let (dir, slot) = data_dir();
        let marker = dir.path().join("survived");
        // A hook that forks a child and sleeps: both must go.
        let cmd = format!("(sleep 3; touch {}) & sleep 60", marker.display());
        let h = hook(&cmd, 120_000);
        let run = std::thread::spawn(move || h.run(env(&slot)));
        let record = dir.path().join("slots").join(RECORD);
        wait_for("the hook's record", || record.exists());
        let pgid = GroupRecord::parse(&std::fs::read_to_string(&record).unwrap()).unwrap().pgid;
        assert!(group_exists(pgid));
        // What a restarted node does before touching a slot.
        assert_eq!(reap_previous(dir.path()).unwrap(), Some(pgid));
        assert!(!group_exists(pgid), "the whole group is gone when reap_previous returns");
        assert!(!record.exists());
        let err = run.join().unwrap().unwrap_err();
        assert!(matches!(&err, HookError::Failed { status, .. } if status.contains("signal")), "{err}");
        std::thread::sleep(Duration::from_millis(3500));
        assert!(!marker.exists(), "the hook's child outlived the reaping");
        assert_eq!(reap_previous(dir.path()).unwrap(), None, "nothing left to reap");
    }

    #[test]
    fn a_record_of_another_process_is_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("slots")).unwrap();
        // An unrelated group whose id the record names, but with another start time:
        // the id was reused after the hook's group died.
        let mut other = Command::new("sleep");
        other.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut other, 0);
        let mut other = other.spawn().unwrap();
        let pgid = other.id() as i32;
        let stale =
            GroupRecord { start_time: start_time(pgid).unwrap() + 1, ..GroupRecord::of(pgid).unwrap() };
        std::fs::write(dir.path().join("slots").join(RECORD), stale.to_text()).unwrap();
        assert_eq!(reap_previous(dir.path()).unwrap(), None);
        assert!(other.try_wait().unwrap().is_none(), "an unrelated process was killed");
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn success_sees_its_environment() {
        let (_dir, slot) = data_dir();
        let h = hook(
            r#"test "$1" = "$OTAMESH_SLOT" && test "$OTAMESH_SEQUENCE" = 7 && test "$OTAMESH_PHASE" = health && test "$0" = otamesh-hook"#,
            5000,
        );
        h.run(env(&slot)).unwrap();
    }

    #[test]
    fn failure_carries_exit_code_and_stderr() {
        let (_dir, slot) = data_dir();
        let err = hook("echo service down >&2; exit 3", 5000).run(env(&slot)).unwrap_err();
        assert_eq!(err.to_string(), "`echo service down >&2; exit 3` exited with 3: service down");
    }

    #[test]
    fn missing_command_fails_cleanly() {
        let (_dir, slot) = data_dir();
        let err = hook("/nonexistent/health-check", 5000).run(env(&slot)).unwrap_err();
        assert!(matches!(&err, HookError::Failed { status, .. } if status == "exited with 127"), "{err}");
    }

    #[test]
    fn hanging_hook_and_its_children_are_killed() {
        let (dir, slot) = data_dir();
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let err = hook(&cmd, 300).run(env(&slot)).unwrap_err();
        assert!(matches!(err, HookError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a child of the hook outlived the timeout");
    }
}
