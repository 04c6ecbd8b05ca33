//! A cheap hasher for the maps a received frame looks up (amqp-agent: PATCHES.md 12).
//!
//! The connection's channels (keyed by the frame's channel number) and a channel's consumers
//! (keyed by the delivery's consumer tag) are looked up for every frame and every delivery.
//! With std's `RandomState` (SipHash-1-3) those lookups cost about 3 % of amqp-agent's
//! instructions per message outside SHA-256. Their keys are a handful of channel numbers the
//! client allocates and the consumer tags it registered itself, so no peer can fill them with
//! colliding keys: the resistance to hash flooding that SipHash buys is not needed there. This is FxHash (rustc's), one multiply
//! per machine word.

use std::hash::{BuildHasherDefault, Hasher};

/// rustc's FxHasher: `hash = (hash.rotate_left(5) ^ word) * K` for each word of the input.
#[derive(Clone, Copy, Default)]
pub(crate) struct FxHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((word, rest)) = bytes.split_first_chunk::<8>() {
            self.add(u64::from_le_bytes(*word));
            bytes = rest;
        }
        if let Some((word, rest)) = bytes.split_first_chunk::<4>() {
            self.add(u64::from(u32::from_le_bytes(*word)));
            bytes = rest;
        }
        for &byte in bytes {
            self.add(u64::from(byte));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The `BuildHasher` of those maps.
pub(crate) type FxBuildHasher = BuildHasherDefault<FxHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_channel_number_and_tag_is_found_again() {
        let mut channels: HashMap<u16, u16, FxBuildHasher> = HashMap::default();
        for id in 0..=u16::MAX {
            channels.insert(id, id);
        }
        assert!((0..=u16::MAX).all(|id| channels.get(&id) == Some(&id)));

        let mut tags: HashMap<String, usize, FxBuildHasher> = HashMap::default();
        for n in 0..10_000 {
            tags.insert(format!("amq.ctag-{n:x}"), n);
        }
        assert!((0..10_000).all(|n| tags.get(&format!("amq.ctag-{n:x}")) == Some(&n)));
        assert_eq!(tags.get("amq.ctag-"), None);
    }

    #[test]
    fn the_bytes_of_a_key_change_its_hash() {
        let hash = |bytes: &[u8]| {
            let mut h = FxHasher::default();
            h.write(bytes);
            h.finish()
        };
        // Every length from 0 to 17 (the word, half-word and byte paths), one byte changed.
        for len in 0..18 {
            let a = vec![b'a'; len];
            let mut b = a.clone();
            b.push(b'b');
            assert_ne!(hash(&a), hash(&b), "len {len}");
            if len > 0 {
                let mut c = a.clone();
                c[len - 1] = b'c';
                assert_ne!(hash(&a), hash(&c), "len {len}");
            }
        }
    }
}
