//! The rollout policy and the pure decision of when a device may go.
//!
//! The policy travels inside the signed manifest, so every device reads the same one
//! and no coordinator is needed: a device's place in the waves is a stable hash of
//! (release id, device id) ([`position`]), and each device decides for itself with
//! [`decide`] from the policy, the time, and the reports it has heard ([`Tally`]).
//!
//! Waves are cumulative: `percent = 5` then `percent = 25` means the first 5% of
//! positions start at the first wave's offset and the next 20% at the second's. A policy
//! with no waves sends the release to every device at once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gate::{HealthGate, Tally};
use crate::manifest::UpdateKind;
use crate::{DeviceId, Millis, ReleaseId};

/// Positions are in parts per million of the fleet.
pub const POSITIONS: u32 = 1_000_000;

/// How a release is staged across the fleet.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Cumulative waves in order; empty means everyone at once.
    #[serde(default)]
    pub waves: Vec<Wave>,
    /// Devices install only inside this window of their local time.
    #[serde(default)]
    pub window: Option<MaintenanceWindow>,
    /// Stop adopting the release when too many devices report failure.
    #[serde(default)]
    pub gate: Option<HealthGate>,
    /// At most this many devices of one site install at once (downtime per site).
    #[serde(default)]
    pub max_concurrent_per_site: Option<u32>,
    /// Update kinds that ignore the waves (and their success requirements).
    #[serde(default)]
    pub skip_waves: Vec<UpdateKind>,
    /// Update kinds that ignore the maintenance window.
    #[serde(default)]
    pub skip_window: Vec<UpdateKind>,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Cumulative share of the fleet, in percent (0, 100].
    pub percent: f64,
    /// Seconds after the release's `created_at` at which this wave may start.
    #[serde(default)]
    pub after_s: u64,
    /// Before this wave starts, the devices of earlier waves must have reported success
    /// at this ratio at least (successes over all their outcome reports).
    #[serde(default)]
    pub require_success: Option<f64>,
    /// ... counted over at least this many reports from earlier waves.
    #[serde(default)]
    pub require_reports: u32,
}

/// A daily window of device-local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Local time of day the window opens, `"HH:MM"`.
    pub start: TimeOfDay,
    /// How long it stays open, in minutes (1 to 1440).
    pub minutes: u16,
}

/// Minutes since local midnight; `"HH:MM"` in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub u16);

/// Why a policy is inconsistent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Wave percentages must grow and end at 100.
    #[error("wave {index}: percent {percent} must be above the previous wave's and at most 100")]
    WavePercent {
        /// Wave index.
        index: usize,
        /// Its percent.
        percent: f64,
    },
    /// The last wave must reach the whole fleet.
    #[error("the last wave reaches {percent}% of the fleet: it must be 100")]
    LastWaveNotFull {
        /// Its percent.
        percent: f64,
    },
    /// Offsets may not go backwards.
    #[error("wave {index} starts at {after_s} s, before the previous wave: waves must be in order")]
    WaveOrder {
        /// Wave index.
        index: usize,
        /// Its offset.
        after_s: u64,
    },
    /// A ratio outside [0, 1].
    #[error("{what} = {value} must be between 0 and 1")]
    Ratio {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// The window is empty or longer than a day.
    #[error("maintenance window of {minutes} minutes: must be 1 to 1440")]
    Window {
        /// Its length.
        minutes: u16,
    },
    /// A per-site install limit of zero would stop every install.
    #[error("max_concurrent_per_site = 0 would never install: omit it or set at least 1")]
    ZeroConcurrency,
}

impl RolloutPolicy {
    /// Checks the policy is consistent; run before publishing and on every manifest.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut prev_percent = 0.0;
        let mut prev_after = 0;
        for (index, w) in self.waves.iter().enumerate() {
            if !(w.percent.is_finite() && w.percent > prev_percent && w.percent <= 100.0) {
                return Err(PolicyError::WavePercent { index, percent: w.percent });
            }
            if w.after_s < prev_after {
                return Err(PolicyError::WaveOrder { index, after_s: w.after_s });
            }
            if let Some(r) = w.require_success {
                ratio("require_success", r)?;
            }
            prev_percent = w.percent;
            prev_after = w.after_s;
        }
        if let Some(last) = self.waves.last()
            && last.percent != 100.0
        {
            return Err(PolicyError::LastWaveNotFull { percent: last.percent });
        }
        if let Some(w) = self.window
            && !(1..=1440).contains(&w.minutes)
        {
            return Err(PolicyError::Window { minutes: w.minutes });
        }
        if let Some(g) = &self.gate {
            ratio("gate.max_failure_ratio", g.max_failure_ratio)?;
        }
        if self.max_concurrent_per_site == Some(0) {
            return Err(PolicyError::ZeroConcurrency);
        }
        Ok(())
    }

    /// The wave a device at `position` belongs to, or `None` when the kind skips waves
    /// or there are no waves.
    pub fn wave_of(&self, kind: UpdateKind, position: u32) -> Option<usize> {
        if self.waves.is_empty() || self.skip_waves.contains(&kind) {
            return None;
        }
        let wave =
            self.waves.iter().position(|w| f64::from(position) < w.percent * f64::from(POSITIONS) / 100.0);
        // Invariant: validate() makes the last wave 100%, which covers every position.
        Some(wave.unwrap_or(self.waves.len() - 1))
    }

    /// Whether one more device of a site may start installing, given how many of the
    /// site's devices are installing now.
    pub fn may_install(&self, site_installing: u32) -> bool {
        self.max_concurrent_per_site.is_none_or(|max| site_installing < max)
    }
}

fn ratio(what: &'static str, value: f64) -> Result<(), PolicyError> {
    if (0.0..=1.0).contains(&value) { Ok(()) } else { Err(PolicyError::Ratio { what, value }) }
}

/// A device's stable place in the rollout of one release, in `0..POSITIONS`. Different
/// releases shuffle the fleet differently, so the same devices are not always first.
pub fn position(release: ReleaseId, device: DeviceId) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(b"otamesh/v1/wave-position\0");
    h.update(release.as_bytes());
    h.update(device.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    (u64::from_be_bytes(b) % u64::from(POSITIONS)) as u32
}

/// What a device needs to know about a release to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// The release.
    pub id: ReleaseId,
    /// Its kind (some kinds skip waves or the window).
    pub kind: UpdateKind,
    /// Its `created_at`; wave offsets count from here.
    pub created_at: Millis,
}

/// What the policy needs to know about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its place: [`position`] of (release, device).
    pub position: u32,
    /// Its clock's offset from UTC in minutes, for the maintenance window.
    pub utc_offset_min: i16,
}

/// The answer of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Start now.
    Go,
    /// Nothing can change before this time; ask again then.
    WaitUntil(Millis),
    /// The wave's success requirement is not met; ask again when reports arrive.
    WaitForReports,
    /// The health gate is breached: do not adopt this release.
    Halted,
}

/// Decides whether a device may start on a release now.
pub fn decide(
    policy: &RolloutPolicy,
    release: &ReleaseInfo,
    device: &DeviceInfo,
    now: Millis,
    tally: &Tally,
) -> Decision {
    if policy.gate.as_ref().is_some_and(|g| g.breached(tally)) {
        return Decision::Halted;
    }
    if let Some(index) = policy.wave_of(release.kind, device.position) {
        let wave = &policy.waves[index];
        let start = release.created_at.saturating_add(wave.after_s.saturating_mul(1000));
        if now < start {
            return Decision::WaitUntil(start);
        }
        if let Some(required) = wave.require_success {
            let (successes, outcomes) = tally.outcomes_before(index);
            let met = outcomes >= u64::from(wave.require_reports.max(1))
                && successes as f64 >= required * outcomes as f64;
            if !met {
                return Decision::WaitForReports;
            }
        }
    }
    match policy.window {
        Some(window) if !policy.skip_window.contains(&release.kind) => {
            window.next_open(now, device.utc_offset_min).map_or(Decision::Go, Decision::WaitUntil)
        }
        _ => Decision::Go,
    }
}

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 1440 * MINUTE_MS;

impl MaintenanceWindow {
    /// `None` when the window is open at `now`, else the UTC time it next opens.
    pub fn next_open(&self, now: Millis, utc_offset_min: i16) -> Option<Millis> {
        let offset_ms = i64::from(utc_offset_min) * MINUTE_MS as i64;
        let local = (now as i64 + offset_ms).rem_euclid(DAY_MS as i64) as u64;
        let start = u64::from(self.start.0) * MINUTE_MS;
        let len = u64::from(self.minutes) * MINUTE_MS;
        // Time since the window last opened, wrapping at midnight.
        let since_open = (local + DAY_MS - start) % DAY_MS;
        if since_open < len {
            return None;
        }
        Some(now + (DAY_MS - since_open))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("time of day {s:?}: write it as HH:MM, 00:00 to 23:59");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(Self(h * 60 + m))
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Verdict;

    const T0: Millis = 1_700_000_000_000;

    fn waves() -> RolloutPolicy {
        RolloutPolicy {
            waves: vec![
                Wave { percent: 25.0, after_s: 0, require_success: None, require_reports: 0 },
                Wave { percent: 100.0, after_s: 3600, require_success: Some(0.9), require_reports: 4 },
            ],
            ..Default::default()
        }
    }

    fn release() -> ReleaseInfo {
        ReleaseInfo { id: ReleaseId::from_bytes([1; 32]), kind: UpdateKind::Firmware, created_at: T0 }
    }

    fn device(position: u32) -> DeviceInfo {
        DeviceInfo { position, utc_offset_min: 0 }
    }

    #[test]
    fn no_waves_means_everyone_now() {
        let p = RolloutPolicy::default();
        assert_eq!(decide(&p, &release(), &device(999_999), T0, &Tally::default()), Decision::Go);
    }

    #[test]
    fn second_wave_waits_for_offset_then_reports() {
        let p = waves();
        p.validate().unwrap();
        let early = device(100_000);
        let late = device(600_000);
        let mut tally = Tally::default();
        assert_eq!(decide(&p, &release(), &early, T0, &tally), Decision::Go);
        assert_eq!(decide(&p, &release(), &late, T0, &tally), Decision::WaitUntil(T0 + 3_600_000));
        let t1 = T0 + 3_600_000;
        assert_eq!(decide(&p, &release(), &late, t1, &tally), Decision::WaitForReports);
        for d in 0..4u8 {
            let _ = tally.record(DeviceId::from_bytes([d; 32]), 1, Verdict::Success, 0);
        }
        assert_eq!(decide(&p, &release(), &late, t1, &tally), Decision::Go);
    }

    #[test]
    fn successes_below_the_ratio_hold_the_wave() {
        let p = waves();
        let mut tally = Tally::default();
        for d in 0..9u8 {
            let _ = tally.record(DeviceId::from_bytes([d; 32]), 1, Verdict::Success, 0);
        }
        let _ = tally.record(DeviceId::from_bytes([99; 32]), 1, Verdict::Failure, 0);
        // 9 of 10 = 0.9 meets 0.9; a second failure breaks it.
        assert_eq!(decide(&p, &release(), &device(600_000), T0 + 3_600_000, &tally), Decision::Go);
        let _ = tally.record(DeviceId::from_bytes([98; 32]), 1, Verdict::Failure, 0);
        assert_eq!(
            decide(&p, &release(), &device(600_000), T0 + 3_600_000, &tally),
            Decision::WaitForReports
        );
    }

    #[test]
    fn emergency_skips_waves() {
        let mut p = waves();
        p.skip_waves = vec![UpdateKind::Emergency];
        let r = ReleaseInfo { kind: UpdateKind::Emergency, ..release() };
        assert_eq!(decide(&p, &r, &device(900_000), T0, &Tally::default()), Decision::Go);
    }

    #[test]
    fn breached_gate_halts() {
        let p = RolloutPolicy {
            gate: Some(HealthGate { max_failure_ratio: 0.2, min_reports: 4 }),
            ..Default::default()
        };
        let mut tally = Tally::default();
        for d in 0..4u8 {
            let _ = tally.record(DeviceId::from_bytes([d; 32]), 1, Verdict::Failure, 0);
        }
        assert_eq!(decide(&p, &release(), &device(1), T0, &tally), Decision::Halted);
    }

    #[test]
    fn window_in_local_time() {
        // 02:00 for 60 minutes local; the device is UTC+120.
        let w = MaintenanceWindow { start: "02:00".parse().unwrap(), minutes: 60 };
        let midnight_utc = 1_700_006_400_000 - (1_700_006_400_000 % DAY_MS);
        // 00:30 UTC = 02:30 local: open.
        assert_eq!(w.next_open(midnight_utc + 30 * MINUTE_MS, 120), None);
        // 01:30 UTC = 03:30 local: next opens 22:30 later.
        let t = midnight_utc + 90 * MINUTE_MS;
        assert_eq!(w.next_open(t, 120), Some(t + (22 * 60 + 30) * MINUTE_MS));
        // A window across midnight: 23:00 for 120 minutes, at 00:30 local is open.
        let w = MaintenanceWindow { start: "23:00".parse().unwrap(), minutes: 120 };
        assert_eq!(w.next_open(midnight_utc + 30 * MINUTE_MS, 0), None);
    }

    #[test]
    fn waves_assign_about_their_share() {
        let p = waves();
        let r = ReleaseId::from_bytes([3; 32]);
        let n = 20_000u32;
        let first = (0..n)
            .filter(|i| {
                let d = DeviceId::of_public_key(&{
                    let mut k = [0u8; 32];
                    k[..4].copy_from_slice(&i.to_le_bytes());
                    k
                });
                p.wave_of(UpdateKind::Firmware, position(r, d)) == Some(0)
            })
            .count() as f64;
        let share = first / f64::from(n);
        assert!((share - 0.25).abs() < 0.02, "first wave share {share}");
    }

    #[test]
    fn invalid_policies_are_named() {
        let mut p = waves();
        p.waves[1].percent = 90.0;
        assert!(matches!(p.validate(), Err(PolicyError::LastWaveNotFull { .. })));
        let mut p = waves();
        p.waves[1].after_s = 0;
        p.waves[0].after_s = 10;
        assert!(matches!(p.validate(), Err(PolicyError::WaveOrder { index: 1, .. })));
        let mut p = waves();
        p.waves[0].percent = 0.0;
        assert!(matches!(p.validate(), Err(PolicyError::WavePercent { index: 0, .. })));
        let p = RolloutPolicy { max_concurrent_per_site: Some(0), ..Default::default() };
        assert_eq!(p.validate(), Err(PolicyError::ZeroConcurrency));
    }

    #[test]
    fn time_of_day_parses() {
        assert_eq!("07:05".parse::<TimeOfDay>().unwrap(), TimeOfDay(425));
        assert!("24:00".parse::<TimeOfDay>().is_err());
        assert!("7".parse::<TimeOfDay>().is_err());
    }
}
