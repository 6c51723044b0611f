//! The event queue: a monotone radix heap over (time, insertion sequence).
//!
//! A discrete-event simulation only ever schedules at or after the present, and the
//! insertion sequence grows, so every key pushed is above the last key popped. A radix
//! heap exploits that: an entry sits in the bucket of the highest bit in which its key
//! differs from the last popped key, and moves down only when that bucket is split. Push
//! is O(1) and a pop amortized O(log key range), with vectors instead of a binary
//! heap's cache-missing sift over a million pending events. Ties in time break on the
//! insertion sequence, exactly as a heap ordered by (time, sequence) would.

/// The key: virtual time, then insertion order.
pub type Key = (u64, u64);

/// A monotone priority queue: a pushed key must not be below the last popped one.
#[derive(Debug)]
pub struct RadixQueue<T> {
    last: Key,
    buckets: Vec<Vec<(Key, T)>>,
    len: usize,
}

impl<T> Default for RadixQueue<T> {
    fn default() -> Self {
        Self { last: (0, 0), buckets: (0..129).map(|_| Vec::new()).collect(), len: 0 }
    }
}

impl<T> RadixQueue<T> {
    /// Entries pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an entry; `key` must be at or above the last popped key.
    pub fn push(&mut self, key: Key, value: T) {
        debug_assert!(key >= self.last, "radix queue keys must not go back in time");
        let b = bucket(key, self.last);
        self.buckets[b].push((key, value));
        self.len += 1;
    }

    /// The smallest key pending. It does not move entries (so keys at or above the last
    /// popped one may still be pushed): it reads the first bucket that holds any, which
    /// the next pop would split anyway.
    pub fn peek(&self) -> Option<Key> {
        let bucket = self.buckets.iter().find(|b| !b.is_empty())?;
        bucket.iter().map(|(k, _)| *k).min()
    }

    /// Removes the entry with the smallest key.
    pub fn pop(&mut self) -> Option<(Key, T)> {
        self.settle();
        // Bucket 0 holds only keys equal to `last`, and keys are unique (the sequence
        // grows), so it holds exactly one entry.
        let entry = self.buckets[0].pop();
        if entry.is_some() {
            self.len -= 1;
        }
        entry
    }

    /// Brings the smallest key pending into bucket 0.
    fn settle(&mut self) {
        if self.len == 0 {
            return;
        }
        if self.buckets[0].is_empty() {
            // Invariant: len > 0, so some bucket is non-empty.
            let i = self.buckets.iter().position(|b| !b.is_empty()).expect("len > 0");
            let entries = std::mem::take(&mut self.buckets[i]);
            // Invariant: the bucket is non-empty.
            self.last = entries.iter().map(|(k, _)| *k).min().expect("non-empty");
            for (key, value) in entries {
                let b = bucket(key, self.last);
                self.buckets[b].push((key, value));
            }
        }
    }
}

/// 0 for equal keys, else 1 + the index of the highest differing bit of the 128-bit key.
fn bucket(key: Key, last: Key) -> usize {
    let t = key.0 ^ last.0;
    if t != 0 {
        return 65 + (63 - t.leading_zeros() as usize);
    }
    let s = key.1 ^ last.1;
    if s != 0 { 1 + (63 - s.leading_zeros() as usize) } else { 0 }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;
    use crate::rng::{Purpose, draw};

    #[test]
    fn pops_in_the_order_of_a_binary_heap() {
        // Interleaved pushes (at or after the present) and pops, some at equal times.
        let mut radix = RadixQueue::default();
        let mut heap = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for i in 0..20_000u64 {
            let r = draw(5, i, Purpose::Churn, 0);
            if !r.is_multiple_of(3) || heap.is_empty() {
                seq += 1;
                let t = now + [0, 1, 7, 1_000, 1 << 40][(r >> 8) as usize % 5] * (r >> 20 & 3);
                radix.push((t, seq), i);
                heap.push(Reverse(((t, seq), i)));
            } else {
                assert_eq!(radix.peek(), heap.peek().map(|Reverse((k, _))| *k));
                let a = radix.pop().unwrap();
                let Reverse(b) = heap.pop().unwrap();
                assert_eq!(a, b);
                now = a.0.0;
            }
            assert_eq!(radix.len(), heap.len());
        }
        while let Some(Reverse(b)) = heap.pop() {
            assert_eq!(radix.pop(), Some(b));
        }
        assert!(radix.is_empty() && radix.pop().is_none());
    }
}
