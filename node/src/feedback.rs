//! Fleet feedback from the mesh (reports and directives) before anything counts it:
//! why one is refused, and the per-device budget that stops one device's flood.
//!
//! Nothing refused here reaches a health gate, the fleet view or the device, and
//! nothing refused is forwarded: malformed, forged and unenrolled messages are
//! rejected (gossipsub scores down the peer that sent them), the rest are ignored.

use std::collections::HashMap;

use libp2p::gossipsub::MessageAcceptance;
use otamesh_core::report::ReportError;
use otamesh_core::{DeviceId, Millis};

/// Why a report or directive from the mesh was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not decodable, or a field over its limit.
    Malformed,
    /// A signature that does not verify, or a directive by a key outside the trust root.
    Forged,
    /// A report whose device carries no valid enrolment for its key, site and class.
    NotEnrolled,
    /// A report for a release of this class that this node has not heard of. Held
    /// (newest per device) and counted once the release is known.
    UnknownRelease,
    /// Not newer than what was already taken from that device (or for that release).
    Replayed,
    /// More reports from one device than [`ReportBudget`] allows.
    Flood,
    /// The device's disk worker is far behind: refused now, taken when heard again.
    Busy,
}

impl Refusal {
    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Forged => "forged",
            Self::NotEnrolled => "not_enrolled",
            Self::UnknownRelease => "unknown_release",
            Self::Replayed => "replayed",
            Self::Flood => "flood",
            Self::Busy => "busy",
        }
    }

    /// What gossipsub is told: invalid messages penalise their sender, the others are
    /// only not forwarded.
    pub fn acceptance(self) -> MessageAcceptance {
        match self {
            Self::Malformed | Self::Forged | Self::NotEnrolled => MessageAcceptance::Reject,
            Self::UnknownRelease | Self::Replayed | Self::Flood | Self::Busy => MessageAcceptance::Ignore,
        }
    }

    /// The refusal a report verification error stands for.
    pub fn of_report(e: &ReportError) -> Self {
        match e {
            ReportError::BadSignature | ReportError::BadKey => Self::Forged,
            ReportError::NotEnrolled | ReportError::Enrolment(_) | ReportError::EnrolmentMismatch { .. } => {
                Self::NotEnrolled
            }
            _ => Self::Malformed,
        }
    }
}

/// Reports a device may send at once; a device reports once per install outcome.
pub const REPORT_BURST: u32 = 8;
/// One more report is allowed per this many milliseconds.
pub const REPORT_REFILL_MS: Millis = 5_000;
/// Devices tracked at most; idle ones are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// A token bucket per device: [`REPORT_BURST`] reports at once, then one per
/// [`REPORT_REFILL_MS`].
#[derive(Debug, Default)]
pub struct ReportBudget {
    devices: HashMap<DeviceId, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    refilled_at: Millis,
}

impl Bucket {
    fn refill(&mut self, now: Millis) {
        let earned = now.saturating_sub(self.refilled_at) / REPORT_REFILL_MS;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(REPORT_BURST)) as u32;
            self.refilled_at =
                if self.tokens == REPORT_BURST { now } else { self.refilled_at + earned * REPORT_REFILL_MS };
        }
    }
}

impl ReportBudget {
    /// Spends one of `device`'s reports at `now`; false when it has none left.
    pub fn spend(&mut self, device: DeviceId, now: Millis) -> bool {
        if self.devices.len() >= MAX_TRACKED && !self.devices.contains_key(&device) {
            self.devices.retain(|_, b| {
                b.refill(now);
                b.tokens < REPORT_BURST
            });
        }
        let bucket = self.devices.entry(device).or_insert(Bucket { tokens: REPORT_BURST, refilled_at: now });
        bucket.refill(now);
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_per_refill() {
        let mut budget = ReportBudget::default();
        let (d, other) = (DeviceId::of_public_key(&[1; 32]), DeviceId::of_public_key(&[2; 32]));
        for _ in 0..REPORT_BURST {
            assert!(budget.spend(d, 0));
        }
        assert!(!budget.spend(d, 10), "the ninth report at once is a flood");
        assert!(budget.spend(other, 10), "another device has its own budget");
        assert!(budget.spend(d, REPORT_REFILL_MS));
        assert!(!budget.spend(d, REPORT_REFILL_MS + 1));
        assert!(budget.spend(d, 100 * REPORT_REFILL_MS), "an idle device earns its burst back");
    }
}
