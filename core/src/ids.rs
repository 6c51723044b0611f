//! Identifiers: newtypes over 32-byte BLAKE3 digests, shown as lowercase hex.
//!
//! A [`ChunkId`] is the BLAKE3 hash of a chunk's bytes, so any holder of the bytes can
//! check them. A [`ReleaseId`] is the hash of a manifest's canonical encoding (see
//! [`crate::manifest::Manifest::release_id`]). A [`DeviceId`] is the hash of a device's
//! public key, so a device's reports are self-certifying.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a hex identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The text is not 64 hex digits; ids are printed by `otamesh publish` and `inspect`.
    #[error("expected 64 hex digits, got {len} characters: copy the id as `otamesh inspect` prints it")]
    Length {
        /// How many characters were given.
        len: usize,
    },
    /// The text holds a character that is not a hex digit.
    #[error("not a hex digit in id: use only 0-9 and a-f")]
    NotHex,
}

/// Reads the 32 bytes of a digest id from the binary codec.
struct DigestVisitor;

impl serde::de::Visitor<'_> for DigestVisitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 digest bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        <[u8; 32]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
    }
}

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        /// Hex text in human-readable formats (JSON, TOML), a 32-byte string in the
        /// binary codec (one length byte and one copy, rather than 32 elements: a
        /// 1,000-chunk manifest encodes about 8 times faster).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() { s.collect_str(self) } else { s.serialize_bytes(&self.0) }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    d.deserialize_bytes(DigestVisitor).map(Self)
                }
            }
        }

        impl $name {
            /// Wraps raw digest bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 bytes as a big-endian integer: a cheap, well-mixed key for
            /// hashing and sharding (the digest is already uniform).
            pub fn prefix_u64(&self) -> u64 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.0[..8]);
                u64::from_be_bytes(b)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Twelve digits are enough to tell ids apart in logs.
                write!(f, concat!(stringify!($name), "({})"), &self.to_hex()[..12])
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self)
            }
        }
    };
}

digest_id!(
    /// The BLAKE3 hash of a chunk's bytes.
    ChunkId
);
digest_id!(
    /// The identity of a release: the BLAKE3 hash of its manifest's canonical encoding.
    ReleaseId
);
digest_id!(
    /// The identity of a device: the BLAKE3 hash of its ed25519 public key.
    DeviceId
);

impl ChunkId {
    /// Hashes chunk bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Whether `bytes` are the chunk this id names.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }
}

impl DeviceId {
    /// The id of the device holding the ed25519 key whose public half is `public_key`.
    pub fn of_public_key(public_key: &[u8; 32]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"otamesh/v1/device-id\0");
        h.update(public_key);
        Self(*h.finalize().as_bytes())
    }
}

fn parse_hex32(s: &str) -> Result<[u8; 32], ParseIdError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(ParseIdError::Length { len: s.len() });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError::NotHex)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
    }

    #[test]
    fn binary_is_a_byte_string_and_text_is_hex() {
        let id = ReleaseId::from_bytes([0xab; 32]);
        let mut binary = vec![32];
        binary.extend_from_slice(&[0xab; 32]);
        assert_eq!(crate::codec::encode(&id), binary, "a length byte, then the 32 bytes");
        assert_eq!(crate::codec::decode::<ReleaseId>(&binary).unwrap(), id);
        binary[0] = 31;
        assert!(crate::codec::decode::<ReleaseId>(&binary).is_err(), "31 bytes are no id");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<ReleaseId>(&json).unwrap(), id);
    }

    #[test]
    fn chunk_id_matches_only_its_bytes() {
        let id = ChunkId::of(b"abc");
        assert!(id.matches(b"abc"));
        assert!(!id.matches(b"abd"));
    }

    #[test]
    fn parse_rejects_bad_text() {
        assert_eq!("abc".parse::<ReleaseId>(), Err(ParseIdError::Length { len: 3 }));
        let not_hex = "g".repeat(64);
        assert_eq!(not_hex.parse::<ReleaseId>(), Err(ParseIdError::NotHex));
    }

    #[test]
    fn device_id_is_domain_separated_from_chunk_id() {
        let key = [7u8; 32];
        assert_ne!(DeviceId::of_public_key(&key).as_bytes(), ChunkId::of(&key).as_bytes());
    }
}
