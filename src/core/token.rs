//! Resume tokens without a randomness source: a keyed hash of a counter.
//!
//! The core may not draw random numbers, so the engine draws one secret seed at server start
//! (from the OS) and passes it in; the hub then derives the token of the n-th positioned
//! join as SipHash-2-4 keyed with the seed over `n`. Tokens are distinct per join, and
//! guessing one is as hard as guessing the seed's output without the seed: SipHash is a
//! pseudo-random function for a secret key. With the default seed (0, as in tests) tokens
//! are predictable: engines that accept resumes from the network must pass a random seed.

use crate::core::wire::{ResumeToken, TOKEN_LEN};

/// The resume token number `counter` under `seed`: [`TOKEN_LEN`] characters `[0-9a-z]`.
pub fn derive(seed: u128, counter: u64) -> ResumeToken {
    let (k0, k1) = (seed as u64, (seed >> 64) as u64);
    let mut msg = [0u8; 9];
    msg[..8].copy_from_slice(&counter.to_le_bytes());
    // Two outputs, told apart by the last byte, give 128 bits for 16 base-36 digits (82.7
    // bits; the bias of reducing 128 bits modulo 36^16 is below 2^-45).
    let lo = siphash24(k0, k1, &msg);
    msg[8] = 1;
    let hi = siphash24(k0, k1, &msg);
    let mut v = (u128::from(hi) << 64) | u128::from(lo);
    let mut s = String::with_capacity(TOKEN_LEN);
    for _ in 0..TOKEN_LEN {
        let d = (v % 36) as u32;
        v /= 36;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
    }
    ResumeToken::new(&s).unwrap_or_else(|| unreachable!("16 base-36 digits"))
}

/// SipHash-2-4 of `msg` under the key `(k0, k1)`: std's implementation (deprecated only
/// because it is not the algorithm `HashMap` uses; it is kept and stable), rather than a copy.
#[allow(deprecated)]
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
    h.write(msg);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's test vectors (key 00 01 .. 0f, message 00 01 .. n-1).
    #[test]
    fn siphash_matches_the_reference_vectors() {
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(siphash24(k0, k1, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash24(k0, k1, &msg[..8]), 0x93f5_f579_9a93_2462);
        assert_eq!(siphash24(k0, k1, &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn tokens_are_well_formed_distinct_and_depend_on_the_seed() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..10_000 {
            let t = derive(42, n);
            assert_eq!(t.as_str().len(), TOKEN_LEN);
            assert!(seen.insert(t.as_str().to_owned()), "token {n} repeats");
        }
        assert_eq!(derive(42, 7), derive(42, 7), "no hidden state");
        assert_ne!(derive(42, 7), derive(43, 7));
        assert_ne!(
            derive(1 << 64, 7),
            derive(1, 7),
            "both halves of the seed count"
        );
    }
}
