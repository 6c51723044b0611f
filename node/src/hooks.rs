//! Running the operator's install hook and health check.
//!
//! A hook is a shell command line, run as `sh -c CMD otamesh-hook SLOT`, so `$1` is the
//! slot directory; it also gets `OTAMESH_PHASE` (`install` or `health`),
//! `OTAMESH_SLOT`, `OTAMESH_RELEASE`, `OTAMESH_VERSION` and `OTAMESH_SEQUENCE`. It runs
//! in its own process group with a timeout; on timeout the whole group is killed, so a
//! hook that forks cannot outlive its deadline. Exit 0 is success; anything else, a
//! signal, a timeout or a command that cannot start is a failure with a one-line reason.

use std::io::Read;
use std::path::Path;
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

/// How much of a failing hook's stderr is kept for the reason.
const STDERR_TAIL: usize = 200;

impl Hook {
    /// Runs the hook to completion or timeout. Blocking: call it off the event loop.
    pub fn run(&self, env: HookEnv<'_>) -> Result<(), HookError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .arg("otamesh-hook")
            .arg(env.slot)
            .env("OTAMESH_PHASE", env.phase)
            .env("OTAMESH_SLOT", env.slot)
            .env("OTAMESH_RELEASE", env.release)
            .env("OTAMESH_VERSION", env.version)
            .env("OTAMESH_SEQUENCE", env.sequence.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let spawn_err =
            |e: std::io::Error| HookError::Spawn { command: self.command.clone(), reason: e.to_string() };
        let mut child = cmd.spawn().map_err(spawn_err)?;
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

    #[test]
    fn success_sees_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook(
            r#"test "$1" = "$OTAMESH_SLOT" && test "$OTAMESH_SEQUENCE" = 7 && test "$OTAMESH_PHASE" = health"#,
            5000,
        );
        h.run(env(dir.path())).unwrap();
    }

    #[test]
    fn failure_carries_exit_code_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let err = hook("echo service down >&2; exit 3", 5000).run(env(dir.path())).unwrap_err();
        assert_eq!(err.to_string(), "`echo service down >&2; exit 3` exited with 3: service down");
    }

    #[test]
    fn missing_command_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let err = hook("/nonexistent/health-check", 5000).run(env(dir.path())).unwrap_err();
        assert!(matches!(&err, HookError::Failed { status, .. } if status == "exited with 127"), "{err}");
    }

    #[test]
    fn hanging_hook_and_its_children_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let err = hook(&cmd, 300).run(env(dir.path())).unwrap_err();
        assert!(matches!(err, HookError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a child of the hook outlived the timeout");
    }
}
