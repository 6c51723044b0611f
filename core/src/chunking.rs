//! Content-defined chunking (FastCDC).
//!
//! Chunk boundaries follow the content, not fixed offsets, so inserting bytes in the
//! middle of an image changes only the chunks around the edit: version N+1 costs only
//! its changed chunks, the way casync and desync get delta updates for free.

use serde::{Deserialize, Serialize};

use crate::ChunkId;

/// One chunk of a payload: its id and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub id: ChunkId,
    /// Length in bytes; at most [`ChunkerConfig::max`] of the config that made it.
    pub len: u32,
}

/// FastCDC size bounds in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerConfig {
    /// No chunk but the last is shorter.
    pub min: u32,
    /// The size boundaries aim for.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

impl Default for ChunkerConfig {
    /// 16 KiB / 64 KiB / 256 KiB.
    fn default() -> Self {
        Self { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

/// Why a chunker configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkerConfigError {
    /// The sizes are outside what FastCDC supports or not ordered min <= avg <= max.
    #[error(
        "chunk sizes must satisfy 64 <= min <= avg <= max <= 16 MiB with avg >= 256 (got {min}/{avg}/{max})"
    )]
    OutOfRange {
        /// Given minimum.
        min: u32,
        /// Given average.
        avg: u32,
        /// Given maximum.
        max: u32,
    },
}

impl ChunkerConfig {
    /// Checks the bounds against what FastCDC (2020) accepts.
    pub fn validate(&self) -> Result<(), ChunkerConfigError> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let Self { min, avg, max } = *self;
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if ok { Ok(()) } else { Err(ChunkerConfigError::OutOfRange { min, avg, max }) }
    }
}

/// Splits `data` into content-defined chunks and hashes each one. The chunks, in order,
/// concatenate to `data`; empty input yields no chunks.
pub fn chunk(data: &[u8], config: ChunkerConfig) -> Result<Vec<ChunkRef>, ChunkerConfigError> {
    Ok(boundaries(data, config)?
        .map(|(offset, len)| ChunkRef {
            id: ChunkId::of(&data[offset..offset + len]),
            // Invariant: validate() bounds max at 16 MiB, so a length fits u32.
            len: len as u32,
        })
        .collect())
}

/// The (offset, length) of each chunk of `data`, without hashing.
pub fn boundaries(
    data: &[u8],
    config: ChunkerConfig,
) -> Result<impl Iterator<Item = (usize, usize)> + '_, ChunkerConfigError> {
    config.validate()?;
    Ok(fastcdc::v2020::FastCDC::new(data, config.min, config.avg, config.max).map(|c| (c.offset, c.length)))
}

/// Chunk bytes that were checked against their id. Only [`VerifiedChunk::new`] makes
/// one, so a store that takes only `VerifiedChunk`s never holds an unverified byte.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedChunk {
    id: ChunkId,
    bytes: Vec<u8>,
}

/// Bytes that do not hash to the id they were fetched or stored under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {expected} does not match its bytes (they hash to {actual})")]
pub struct ChunkMismatch {
    /// The id asked for.
    pub expected: ChunkId,
    /// What the bytes hash to.
    pub actual: ChunkId,
}

impl VerifiedChunk {
    /// Checks `bytes` against `id`.
    pub fn new(id: ChunkId, bytes: Vec<u8>) -> Result<Self, ChunkMismatch> {
        let actual = ChunkId::of(&bytes);
        if actual != id {
            return Err(ChunkMismatch { expected: id, actual });
        }
        Ok(Self { id, bytes })
    }

    /// Its id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl std::fmt::Debug for VerifiedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedChunk({:?}, {} bytes)", self.id, self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerConfig {
        ChunkerConfig { min: 256, avg: 1024, max: 4096 }
    }

    /// Pseudo-random bytes from a seed (xorshift), so tests need no RNG crate.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn boundary_sizes() {
        let cfg = small();
        // (input length, what it exercises)
        let cases: &[(usize, &str)] = &[
            (0, "empty input: no chunks"),
            (1, "one byte: one short chunk"),
            (256, "exactly the minimum"),
            (4096, "exactly the maximum"),
            (4097, "one byte over the maximum: at least two chunks"),
            (100_000, "many chunks"),
        ];
        for &(len, what) in cases {
            let data = noise(len as u64 + 1, len);
            let chunks = chunk(&data, cfg).unwrap();
            let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
            assert_eq!(total, len as u64, "{what}");
            assert!(chunks.iter().all(|c| c.len <= cfg.max), "{what}");
            if len == 0 {
                assert!(chunks.is_empty(), "{what}");
            }
            if len > cfg.max as usize {
                assert!(chunks.len() >= 2, "{what}");
            }
        }
    }

    #[test]
    fn verified_chunk_checks_its_bytes() {
        let id = ChunkId::of(b"data");
        assert!(VerifiedChunk::new(id, b"data".to_vec()).is_ok());
        assert_eq!(VerifiedChunk::new(id, b"dat4".to_vec()).unwrap_err().expected, id);
    }

    #[test]
    fn bad_config_is_refused() {
        let cfg = ChunkerConfig { min: 4096, avg: 1024, max: 8192 };
        assert!(chunk(b"x", cfg).is_err());
    }

    #[test]
    fn default_config_is_valid() {
        ChunkerConfig::default().validate().unwrap();
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_input(seed in any::<u64>(), len in 0usize..50_000) {
            let data = noise(seed, len);
            let mut rebuilt = Vec::with_capacity(len);
            for (off, l) in boundaries(&data, small()).unwrap() {
                rebuilt.extend_from_slice(&data[off..off + l]);
            }
            prop_assert_eq!(rebuilt, data);
        }

        #[test]
        fn insertion_leaves_far_chunks_unchanged(seed in any::<u64>(), at in 10_000usize..20_000, ins in 1usize..3000) {
            let data = noise(seed, 80_000);
            let mut edited = data[..at].to_vec();
            edited.extend(noise(seed ^ 0xdead, ins));
            edited.extend_from_slice(&data[at..]);
            let before = chunk(&data, small()).unwrap();
            let after = chunk(&edited, small()).unwrap();
            // Chunks ending well before the edit are identical and in place.
            let mut off = 0usize;
            for (a, b) in before.iter().zip(&after) {
                if off + (a.len as usize) + (small().max as usize) >= at { break; }
                prop_assert_eq!(a, b);
                off += a.len as usize;
            }
            // Chunks starting well after the edit reappear in the edited chunk list.
            let after_ids: std::collections::HashSet<_> = after.iter().map(|c| c.id).collect();
            let mut off = 0usize;
            for c in &before {
                if off > at + 4 * small().max as usize {
                    prop_assert!(after_ids.contains(&c.id), "chunk at {} lost", off);
                }
                off += c.len as usize;
            }
        }
    }
}
