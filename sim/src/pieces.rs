//! Sets of a release's pieces (by number): what a device holds, what it still needs,
//! what a site is bringing over its WAN.
//!
//! A release of at most 64 pieces (every shipped scale scenario) uses one `u64` per set,
//! so a million devices pay 8 bytes each; a finer one uses [`Wide`], up to
//! [`MAX_PIECES`]. The engine is generic over the two and picks by the scenario's piece
//! count, so the common case pays nothing for the rare one.

/// The most pieces a release may be cut into.
pub const MAX_PIECES: u32 = Wide::CAPACITY;

/// A set of piece numbers below `CAPACITY`.
pub trait Pieces: Copy + Default + PartialEq + std::fmt::Debug + Send {
    /// One more than the highest piece number a set can hold.
    const CAPACITY: u32;

    /// Pieces `0..k`.
    fn below(k: u32) -> Self;

    fn insert(&mut self, p: u32);

    fn remove(&mut self, p: u32);

    fn contains(&self, p: u32) -> bool;

    fn is_empty(&self) -> bool;

    /// The pieces in either set.
    fn union(self, other: Self) -> Self;

    /// The pieces in `self` and not in `other`.
    fn minus(self, other: Self) -> Self;

    /// The pieces, lowest first.
    fn iter(self) -> impl Iterator<Item = u32>;
}

impl Pieces for u64 {
    const CAPACITY: u32 = 64;

    fn below(k: u32) -> Self {
        if k >= 64 { u64::MAX } else { (1 << k) - 1 }
    }

    fn insert(&mut self, p: u32) {
        *self |= 1 << p;
    }

    fn remove(&mut self, p: u32) {
        *self &= !(1 << p);
    }

    fn contains(&self, p: u32) -> bool {
        *self & (1 << p) != 0
    }

    fn is_empty(&self) -> bool {
        *self == 0
    }

    fn union(self, other: Self) -> Self {
        self | other
    }

    fn minus(self, other: Self) -> Self {
        self & !other
    }

    fn iter(self) -> impl Iterator<Item = u32> {
        let mut mask = self;
        std::iter::from_fn(move || {
            if mask == 0 {
                return None;
            }
            let p = mask.trailing_zeros();
            mask &= mask - 1;
            Some(p)
        })
    }
}

/// Up to 1,024 pieces: 64 KiB pieces of a 64 MiB release.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Wide([u64; 16]);

impl Pieces for Wide {
    const CAPACITY: u32 = 1024;

    fn below(k: u32) -> Self {
        let mut w = [0; 16];
        for (i, word) in w.iter_mut().enumerate() {
            *word = u64::below(k.saturating_sub(64 * i as u32));
        }
        Wide(w)
    }

    fn insert(&mut self, p: u32) {
        self.0[(p / 64) as usize].insert(p % 64);
    }

    fn remove(&mut self, p: u32) {
        self.0[(p / 64) as usize].remove(p % 64);
    }

    fn contains(&self, p: u32) -> bool {
        self.0[(p / 64) as usize].contains(p % 64)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    fn union(self, other: Self) -> Self {
        Wide(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }

    fn minus(self, other: Self) -> Self {
        Wide(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    fn iter(self) -> impl Iterator<Item = u32> {
        (0..16u32).flat_map(move |i| self.0[i as usize].iter().map(move |p| 64 * i + p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds of set, asked the same things, as a sorted list of piece numbers.
    fn agree<P: Pieces>(ops: &[(u8, u32)], k: u32) -> Vec<u32> {
        let mut a = P::below(k);
        let mut b = P::default();
        for &(op, p) in ops {
            match op {
                0 => a.remove(p),
                1 => b.insert(p),
                _ => a = a.union(b).minus(P::below(p.min(P::CAPACITY))),
            }
        }
        let both: Vec<u32> = a.minus(b).iter().collect();
        assert!(both.iter().all(|&p| a.contains(p) && !b.contains(p)));
        assert_eq!(a.minus(b).is_empty(), both.is_empty());
        both
    }

    #[test]
    fn a_wide_set_agrees_with_one_word_below_64() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..500 {
            let ops: Vec<(u8, u32)> = (0..20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x % 3) as u8, ((x >> 8) % 64) as u32)
                })
                .collect();
            let k = ((x >> 20) % 65) as u32;
            assert_eq!(agree::<u64>(&ops, k), agree::<Wide>(&ops, k), "{ops:?} below {k}");
        }
    }

    #[test]
    fn a_wide_set_holds_every_piece_up_to_its_capacity() {
        let all = Wide::below(MAX_PIECES);
        assert_eq!(all.iter().count(), MAX_PIECES as usize);
        assert_eq!(all.iter().last(), Some(MAX_PIECES - 1));
        let mut some = Wide::default();
        for p in [0, 63, 64, 65, 511, 1023] {
            some.insert(p);
        }
        assert_eq!(some.iter().collect::<Vec<_>>(), [0, 63, 64, 65, 511, 1023]);
        assert_eq!(Wide::below(130).minus(some).iter().count(), 130 - 4);
        some.remove(64);
        assert!(!some.contains(64) && some.contains(65));
    }
}
