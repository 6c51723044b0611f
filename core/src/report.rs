//! Signed device status reports.
//!
//! After every outcome a device signs a report with its own key. The device id is the
//! hash of the public key the report carries, and the report carries the publisher's
//! enrolment of that key ([`crate::enrolment`]), so anyone holding the trust root can
//! check it without a directory of devices, and a key nobody enrolled counts for
//! nothing. Which wave a device is in is never taken from the report; readers compute
//! it from the device id.

use serde::{Deserialize, Serialize};

use crate::enrolment::SignedEnrolment;
use crate::gate::Verdict;
use crate::trust::{Domain, PublicKey, SecretKey, SignatureBytes, TrustRoot, VerifyError};
use crate::{DeviceId, Millis, ReleaseId, codec};

/// Longest free text (reason, site, class) a report may carry.
pub const MAX_TEXT: usize = 256;

/// What happened on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Committed after the health check passed on the new version.
    Committed,
    /// The install failed before activation; the active slot was never touched.
    Failed {
        /// Why.
        reason: String,
    },
    /// Activated, then went back to the previous slot.
    RolledBack {
        /// Why.
        reason: String,
        /// True when an operator's revoke caused it (says nothing about health).
        revoked: bool,
    },
}

/// An outcome without its reason: how the fleet view and its readers name it, in one
/// text form (`committed`, `failed`, `rolled_back`, `revoked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// See [`Outcome::Committed`].
    Committed,
    /// See [`Outcome::Failed`].
    Failed,
    /// Rolled back on its own (health check, crash).
    RolledBack,
    /// Rolled back because a revoke ordered it.
    Revoked,
}

impl OutcomeKind {
    /// The name, as `/fleet` and rollout reports write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Revoked => "revoked",
        }
    }

    /// The release failed on the device (not a revoke, not a success).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack)
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Outcome {
    /// The outcome without its reason.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Committed => OutcomeKind::Committed,
            Self::Failed { .. } => OutcomeKind::Failed,
            Self::RolledBack { revoked: true, .. } => OutcomeKind::Revoked,
            Self::RolledBack { .. } => OutcomeKind::RolledBack,
        }
    }

    /// What this outcome means for the health gate.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Committed => Verdict::Success,
            Self::Failed { .. } | Self::RolledBack { revoked: false, .. } => Verdict::Failure,
            Self::RolledBack { revoked: true, .. } => Verdict::Neutral,
        }
    }
}

/// The signed body of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The device's public key; its hash is the device id.
    pub device_key: [u8; 32],
    /// The device's site.
    pub site: String,
    /// The device's class.
    pub class: String,
    /// The release the outcome is about.
    pub release: ReleaseId,
    /// What happened.
    pub outcome: Outcome,
    /// What the device runs now, if anything.
    pub active: Option<ReleaseId>,
    /// Monotonic per device: a newer report replaces an older one.
    pub sequence: u64,
    /// When the device sent it.
    pub sent_at: Millis,
}

/// A report, the device's signature and the device's enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReport {
    /// The body.
    pub report: Report,
    /// By the key in `report.device_key`.
    pub signature: SignatureBytes,
    /// The publisher's enrolment of `report.device_key`; a report without one is refused.
    pub enrolment: Option<SignedEnrolment>,
}

/// Why a report was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The signature does not verify under the key the report carries.
    #[error("report signature does not verify")]
    BadSignature,
    /// The carried key is not a valid ed25519 key.
    #[error("report carries an invalid device key")]
    BadKey,
    /// The report carries no enrolment.
    #[error("report from a device that is not enrolled")]
    NotEnrolled,
    /// The enrolment is not signed by the trust root.
    #[error("report enrolment: {0}")]
    Enrolment(VerifyError),
    /// The enrolment is for another key, site or class than the report says.
    #[error("report {field} differs from its enrolment")]
    EnrolmentMismatch {
        /// Which field.
        field: &'static str,
    },
    /// A text field over [`MAX_TEXT`] bytes.
    #[error("report field {field} is longer than {MAX_TEXT} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
    },
}

impl SignedReport {
    /// Signs `report` with the device key (whose public half must be `report.device_key`)
    /// and attaches the device's enrolment.
    pub fn sign(report: Report, key: &SecretKey, enrolment: Option<SignedEnrolment>) -> Self {
        let signature = key.sign(Domain::Report, &codec::encode(&report)).bytes;
        Self { report, signature, enrolment }
    }

    /// Checks the field limits, the device's signature and its enrolment under `trust`.
    pub fn verify(self, trust: &TrustRoot) -> Result<VerifiedReport, ReportError> {
        let r = &self.report;
        for (field, text) in [("site", &r.site), ("class", &r.class)] {
            if text.len() > MAX_TEXT {
                return Err(ReportError::TooLong { field });
            }
        }
        if let Outcome::Failed { reason } | Outcome::RolledBack { reason, .. } = &r.outcome
            && reason.len() > MAX_TEXT
        {
            return Err(ReportError::TooLong { field: "reason" });
        }
        let key = PublicKey::from_bytes(&r.device_key).map_err(|_| ReportError::BadKey)?;
        if !key.verifies(Domain::Report, &codec::encode(r), &self.signature) {
            return Err(ReportError::BadSignature);
        }
        let enrolment = self.enrolment.clone().ok_or(ReportError::NotEnrolled)?;
        let enrolment = trust.verify_enrolment(enrolment).map_err(ReportError::Enrolment)?;
        if let Some(m) = enrolment.enrolment().mismatch(&r.device_key, &r.site, &r.class) {
            return Err(ReportError::EnrolmentMismatch { field: m.field() });
        }
        Ok(VerifiedReport { device: DeviceId::of_public_key(&r.device_key), signed: self })
    }

    /// The on-wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Parses the on-wire form; does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::decode(bytes)
    }
}

/// A report whose signature was checked. Only [`SignedReport::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReport {
    device: DeviceId,
    signed: SignedReport,
}

impl VerifiedReport {
    /// The reporting device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The body.
    pub fn report(&self) -> &Report {
        &self.signed.report
    }

    /// With signature, to forward.
    pub fn signed(&self) -> &SignedReport {
        &self.signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrolment::Enrolment;
    use crate::trust::tests::key;

    /// Key 1 is the publisher.
    fn trust() -> TrustRoot {
        TrustRoot::single(key(1).public())
    }

    fn enrol(k: &SecretKey, site: &str) -> Option<SignedEnrolment> {
        let e = Enrolment {
            device_key: k.public().to_bytes(),
            site: site.into(),
            class: "gw".into(),
            issued_at: 1,
        };
        Some(SignedEnrolment::sign(e, &key(1)))
    }

    fn report(k: &SecretKey) -> Report {
        Report {
            device_key: k.public().to_bytes(),
            site: "s1".into(),
            class: "gw".into(),
            release: ReleaseId::from_bytes([1; 32]),
            outcome: Outcome::Failed { reason: "health check exit 1".into() },
            active: None,
            sequence: 1,
            sent_at: 5,
        }
    }

    #[test]
    fn signed_report_verifies_and_names_its_device() {
        let k = key(3);
        let v = SignedReport::sign(report(&k), &k, enrol(&k, "s1")).verify(&trust()).unwrap();
        assert_eq!(v.device(), DeviceId::of_public_key(&k.public().to_bytes()));
    }

    #[test]
    fn forged_report_is_rejected() {
        let (victim, forger) = (key(3), key(4));
        let signed = SignedReport::sign(report(&victim), &forger, enrol(&victim, "s1"));
        assert_eq!(signed.verify(&trust()), Err(ReportError::BadSignature));
    }

    #[test]
    fn unenrolled_or_self_enrolled_keys_are_refused() {
        let k = key(3);
        assert_eq!(SignedReport::sign(report(&k), &k, None).verify(&trust()), Err(ReportError::NotEnrolled));
        let e = Enrolment {
            device_key: k.public().to_bytes(),
            site: "s1".into(),
            class: "gw".into(),
            issued_at: 1,
        };
        let self_signed = SignedReport::sign(report(&k), &k, Some(SignedEnrolment::sign(e, &k)));
        assert!(matches!(self_signed.verify(&trust()), Err(ReportError::Enrolment(_))));
    }

    #[test]
    fn another_devices_enrolment_or_another_site_is_refused() {
        let (k, other) = (key(3), key(4));
        let borrowed = SignedReport::sign(report(&k), &k, enrol(&other, "s1"));
        assert_eq!(borrowed.verify(&trust()), Err(ReportError::EnrolmentMismatch { field: "device key" }));
        let elsewhere = SignedReport::sign(report(&k), &k, enrol(&k, "s2"));
        assert_eq!(elsewhere.verify(&trust()), Err(ReportError::EnrolmentMismatch { field: "site" }));
    }

    proptest::proptest! {
        /// Every byte of a report is covered by a signature: flipping any bit either
        /// breaks the decoding or the verification, never a panic, never a report.
        #[test]
        fn a_report_with_any_bit_flipped_never_verifies(pos in proptest::prelude::any::<proptest::sample::Index>(), bit in 0u8..8) {
            let k = key(3);
            let mut bytes = SignedReport::sign(report(&k), &k, enrol(&k, "s1")).to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(signed) = SignedReport::from_bytes(&bytes) {
                proptest::prop_assert!(signed.verify(&trust()).is_err(), "bit {} of byte {} flipped and still verifies", bit, i);
            }
        }
    }

    #[test]
    fn oversized_reason_is_rejected() {
        let k = key(3);
        let mut r = report(&k);
        r.outcome = Outcome::Failed { reason: "x".repeat(MAX_TEXT + 1) };
        let signed = SignedReport::sign(r, &k, enrol(&k, "s1"));
        assert_eq!(signed.verify(&trust()), Err(ReportError::TooLong { field: "reason" }));
    }

    #[test]
    fn revoke_rollbacks_are_neutral() {
        assert_eq!(
            Outcome::RolledBack { reason: "revoked".into(), revoked: true }.verdict(),
            Verdict::Neutral
        );
        assert_eq!(
            Outcome::RolledBack { reason: "health".into(), revoked: false }.verdict(),
            Verdict::Failure
        );
    }
}
