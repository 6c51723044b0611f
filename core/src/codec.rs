//! The one module that turns types into bytes and back.
//!
//! **Goals:** a single fixed binary configuration for everything otamesh signs, stores
//! or sends; explicit size limits so a hostile length prefix cannot make the decoder
//! allocate gigabytes; one value, one encoding: trailing bytes, non-minimal integers and
//! any other byte string that is not exactly what [`encode`] writes are refused, so a
//! signed message cannot be re-encoded into different bytes that still verify.
//!
//! **Non-goals:** self-description or schema evolution; a format change bumps
//! [`crate::manifest::FORMAT_VERSION`].
//!
//! bincode 2 is marked unmaintained (RUSTSEC-2025-0141). It is used here and nowhere
//! else, so swapping it means changing this file only.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};

/// The largest message the decoder accepts: 8 MiB. A manifest for a 4 GiB payload at
/// the default 64 KiB average chunk size is about 2.6 MB, well under this.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// A `deserialize_with` for a sequence of at most `N` elements: a longer one is refused
/// at its length prefix, before any element is decoded, so a list of 50,000 signatures
/// or releases costs a receiver nothing to refuse.
pub fn bounded<'de, D, T, const N: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a sequence of at most {N} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > N {
                return Err(de::Error::invalid_length(hint, &self));
            }
            let mut out = Vec::with_capacity(hint);
            while let Some(x) = seq.next_element()? {
                if out.len() == N {
                    return Err(de::Error::invalid_length(N + 1, &self));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<T, N>(PhantomData))
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_MESSAGE_BYTES>()
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than [`MAX_MESSAGE_BYTES`]; it is not something otamesh wrote.
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge {
        /// The input length.
        len: usize,
    },
    /// The bytes are not a valid encoding (truncated, corrupted, or another format).
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// The bytes decode, but are not the canonical encoding of what they decode to (a
    /// non-minimal integer, for example): re-encoded by someone other than otamesh.
    #[error("not the canonical encoding of the value it decodes to (re-encoded or tampered with)")]
    NonCanonical,
    /// A valid value was followed by extra bytes; the file or message was tampered
    /// with or concatenated.
    #[error("{extra} unexpected trailing bytes after the encoded value")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
}

/// Encodes `value` in the canonical form. Encoding an in-memory value cannot fail for
/// otamesh's types (no maps with non-string keys, no unsized sequences).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: every type otamesh encodes is plain data that bincode can always
    // serialize, and none approaches MAX_MESSAGE_BYTES when built by otamesh itself.
    bincode::serde::encode_to_vec(value, config()).expect("otamesh types always encode")
}

/// Decodes exactly one value from `bytes`; anything left over, or any encoding other
/// than the one [`encode`] writes for that value, is an error.
pub fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes { extra: bytes.len() - used });
    }
    // One encoding per value: whatever the decoder tolerated, only the bytes encode
    // writes are accepted.
    if encode(&value) != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
        c: Vec<u8>,
    }

    #[test]
    fn round_trip() {
        let s = Sample { a: 7, b: "x".into(), c: vec![1, 2, 3] };
        assert_eq!(decode::<Sample>(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Sample { a: 1, b: String::new(), c: vec![] });
        bytes.push(0);
        assert!(matches!(decode::<Sample>(&bytes), Err(DecodeError::TrailingBytes { extra: 1 })));
    }

    #[test]
    fn truncation_is_rejected() {
        let bytes = encode(&Sample { a: 1, b: "hello".into(), c: vec![9; 10] });
        for cut in 0..bytes.len() {
            assert!(decode::<Sample>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_non_minimal_integer_is_refused() {
        let s = Sample { a: 7, b: "x".into(), c: vec![] };
        let mut bytes = encode(&s);
        assert_eq!(bytes[0], 7);
        // 7 again, as the 251 marker and a u16: the same value, another encoding.
        bytes.splice(0..1, [251, 7, 0]);
        assert!(matches!(decode::<Sample>(&bytes), Err(DecodeError::NonCanonical)));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A Vec<u8> length prefix claiming ~2^62 bytes: must fail, not abort.
        let mut bytes = vec![0x01, 0x00];
        bytes.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(decode::<Sample>(&bytes).is_err());
    }
}
