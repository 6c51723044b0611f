//! Device enrolment: the publisher vouches for a device key, its site and its class.
//!
//! A report is signed by the device's own key, which proves who wrote it but not that
//! the writer belongs to the fleet: anyone can make a key. An enrolment is the
//! publisher's signature (the same trust root and threshold as manifests) over a
//! device's public key, site and class. A report counts only when it carries an
//! enrolment for the key that signed it, with the same site and class, so a stranger
//! cannot vote in a health gate, appear in the inventory or claim another site.

use serde::{Deserialize, Serialize};

use crate::trust::{Domain, Signature, TrustRoot, VerifyError};
use crate::{DeviceId, Millis, codec};

/// What the publisher vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The device's public key.
    pub device_key: [u8; 32],
    /// The site the device belongs to.
    pub site: String,
    /// The device's hardware class.
    pub class: String,
    /// When it was signed.
    pub issued_at: Millis,
}

impl Enrolment {
    /// The enrolled device.
    pub fn device(&self) -> DeviceId {
        DeviceId::of_public_key(&self.device_key)
    }

    /// The first field in which this enrolment differs from the given device key, site
    /// and class; `None` when it vouches for exactly that device.
    pub fn mismatch(&self, device_key: &[u8; 32], site: &str, class: &str) -> Option<Mismatch> {
        if self.device_key != *device_key {
            Some(Mismatch::DeviceKey)
        } else if self.site != site {
            Some(Mismatch::Site)
        } else if self.class != class {
            Some(Mismatch::Class)
        } else {
            None
        }
    }
}

/// Where an enrolment differs from the device it is held up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// It enrols another key.
    DeviceKey,
    /// It enrols the key for another site.
    Site,
    /// It enrols the key for another class.
    Class,
}

impl Mismatch {
    /// The field's name in messages.
    pub fn field(self) -> &'static str {
        match self {
            Self::DeviceKey => "device key",
            Self::Site => "site",
            Self::Class => "class",
        }
    }
}

/// An enrolment and its publisher signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnrolment {
    /// The signed body.
    pub enrolment: Enrolment,
    /// Verified against the same trust root as manifests.
    #[serde(deserialize_with = "crate::trust::bounded_signatures")]
    pub signatures: Vec<Signature>,
}

impl SignedEnrolment {
    /// Signs `enrolment` with `key`; more signers can append their signatures.
    pub fn sign(enrolment: Enrolment, key: &crate::SecretKey) -> Self {
        let signature = key.sign(Domain::Enrolment, &codec::encode(&enrolment));
        Self { enrolment, signatures: vec![signature] }
    }

    /// The on-disk and on-wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Parses the on-disk and on-wire form; does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::decode(bytes)
    }
}

/// An enrolment whose signatures were checked. Only [`TrustRoot::verify_enrolment`]
/// makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnrolment(SignedEnrolment);

impl VerifiedEnrolment {
    /// The body.
    pub fn enrolment(&self) -> &Enrolment {
        &self.0.enrolment
    }

    /// With signatures, to attach to reports.
    pub fn signed(&self) -> &SignedEnrolment {
        &self.0
    }
}

impl TrustRoot {
    /// Checks an enrolment's signatures against this root.
    pub fn verify_enrolment(&self, signed: SignedEnrolment) -> Result<VerifiedEnrolment, VerifyError> {
        self.check_signatures(Domain::Enrolment, &codec::encode(&signed.enrolment), &signed.signatures)?;
        Ok(VerifiedEnrolment(signed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::tests::key;

    fn enrolment(device: u8) -> Enrolment {
        Enrolment {
            device_key: key(device).public().to_bytes(),
            site: "s1".into(),
            class: "gw".into(),
            issued_at: 1,
        }
    }

    #[test]
    fn publisher_enrolment_verifies() {
        let root = TrustRoot::single(key(1).public());
        let v = root.verify_enrolment(SignedEnrolment::sign(enrolment(9), &key(1))).unwrap();
        assert_eq!(v.enrolment().device(), DeviceId::of_public_key(&key(9).public().to_bytes()));
    }

    #[test]
    fn enrolment_by_another_key_or_edited_is_refused() {
        let root = TrustRoot::single(key(1).public());
        assert!(root.verify_enrolment(SignedEnrolment::sign(enrolment(9), &key(2))).is_err());
        let mut edited = SignedEnrolment::sign(enrolment(9), &key(1));
        edited.enrolment.site = "s2".into();
        assert!(root.verify_enrolment(edited).is_err());
    }

    #[test]
    fn a_directive_signature_cannot_enrol() {
        let k = key(1);
        let e = enrolment(9);
        let forged =
            SignedEnrolment { signatures: vec![k.sign(Domain::Directive, &codec::encode(&e))], enrolment: e };
        assert!(TrustRoot::single(k.public()).verify_enrolment(forged).is_err());
    }
}
