//! Random streams. Every random draw in the crate comes from a Xoshiro256++ stream keyed by
//! `(seed, epoch, batch, row)`, so a run's randomness does not depend on how work is split across
//! threads: the same seed gives the same draws whatever the scheduling.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

/// SplitMix64's finalizer: a bijective mix used to derive stream seeds from keys.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Purposes for streams, so draws for different jobs under the same seed never coincide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Weight initialization.
    Init = 1,
    /// Per-epoch shuffling.
    Shuffle = 2,
    /// Gibbs sampling inside training.
    Train = 3,
    /// Gibbs sampling for generation and evaluation.
    Sample = 4,
    /// Annealed importance sampling.
    Ais = 5,
    /// Data preparation (stochastic binarization, splits).
    Data = 6,
    /// Pseudo-likelihood bit flips.
    PseudoLikelihood = 7,
}

/// A Xoshiro256++ stream with the draws the models need.
#[derive(Clone, Debug)]
pub struct Stream {
    rng: Xoshiro256PlusPlus,
}

/// 2^-24: scales a 24-bit integer to a uniform float in [0, 1).
const INV_2_24: f32 = 1.0 / (1u32 << 24) as f32;

/// The `(seed, purpose, epoch, batch)` part of a stream's key, for loops that open one stream
/// per row: mixing it once instead of per row saves a chain of dependent multiplications
/// each time. `key.stream(row)` is the same stream as `Stream::new(.., row)`.
#[derive(Clone, Copy, Debug)]
pub struct StreamKey(u64);

impl StreamKey {
    /// The key shared by the streams of `(seed, purpose, epoch, batch)`.
    pub fn new(seed: u64, purpose: Purpose, epoch: u64, batch: u64) -> Self {
        let k = mix(seed ^ mix(purpose as u64));
        let k = mix(k ^ epoch);
        StreamKey(mix(k ^ batch.wrapping_mul(0xD6E8_FEB8_6659_FD93)))
    }

    /// The stream of one row.
    pub fn stream(self, row: u64) -> Stream {
        let k = mix(self.0 ^ row.wrapping_mul(0xA076_1D64_78BD_642F));
        Stream {
            rng: Xoshiro256PlusPlus::seed_from_u64(k),
        }
    }
}

impl Stream {
    /// The stream for `(seed, purpose, epoch, batch, row)`.
    pub fn new(seed: u64, purpose: Purpose, epoch: u64, batch: u64, row: u64) -> Self {
        StreamKey::new(seed, purpose, epoch, batch).stream(row)
    }

    /// A raw 64-bit draw.
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A uniform draw in [0, 1) with 24 bits of resolution (exactly representable in f32).
    #[inline(always)]
    pub fn uniform(&mut self) -> f32 {
        (self.rng.next_u64() >> 40) as f32 * INV_2_24
    }

    /// A uniform draw in [0, 1) as f64 with 53 bits.
    #[inline(always)]
    pub fn uniform64(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2^-32 · n).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.rng.next_u64()) * n as u128) >> 64) as usize
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform64(); // (0, 1]
        let u2 = self.uniform64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Two uniforms in [0, 1) with 24 bits each from one 64-bit draw.
    #[inline(always)]
    fn uniform_pair(&mut self) -> (f32, f32) {
        let r = self.rng.next_u64();
        (
            ((r >> 8) & 0xFF_FFFF) as f32 * INV_2_24,
            (r >> 40) as f32 * INV_2_24,
        )
    }

    /// Replaces each probability in `p` by a Bernoulli sample (1.0 or 0.0).
    ///
    /// Branch-free: each 64-bit draw gives two 24-bit uniforms compared against the probability,
    /// so `p = 0` never fires and `p = 1` always does.
    #[inline]
    pub fn bernoulli_in_place(&mut self, p: &mut [f32]) {
        let mut pairs = p.chunks_exact_mut(2);
        for pair in &mut pairs {
            let (u0, u1) = self.uniform_pair();
            pair[0] = f32::from(u8::from(u0 < pair[0]));
            pair[1] = f32::from(u8::from(u1 < pair[1]));
        }
        for x in pairs.into_remainder() {
            let u = self.uniform();
            *x = f32::from(u8::from(u < *x));
        }
    }

    /// Bernoulli samples of the probabilities `p` into `out` (same length): the same draws as
    /// [`Stream::bernoulli_in_place`] without copying the probabilities first.
    #[inline]
    pub fn bernoulli_into(&mut self, p: &[f32], out: &mut [f32]) {
        assert_eq!(p.len(), out.len(), "bernoulli_into: lengths differ");
        let mut outs = out.chunks_exact_mut(2);
        let mut ps = p.chunks_exact(2);
        for (o, q) in (&mut outs).zip(&mut ps) {
            let (u0, u1) = self.uniform_pair();
            o[0] = f32::from(u8::from(u0 < q[0]));
            o[1] = f32::from(u8::from(u1 < q[1]));
        }
        for (o, &q) in outs.into_remainder().iter_mut().zip(ps.remainder()) {
            let u = self.uniform();
            *o = f32::from(u8::from(u < q));
        }
    }

    /// Fisher–Yates shuffle of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            idx.swap(i, j);
        }
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| Stream::new(7, Purpose::Train, 1, 2, 3).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut keys = std::collections::HashSet::new();
        for e in 0..10 {
            for b in 0..10 {
                for r in 0..10 {
                    keys.insert(Stream::new(7, Purpose::Train, e, b, r).next_u64());
                }
            }
        }
        assert_eq!(keys.len(), 1000);
        assert_ne!(
            Stream::new(7, Purpose::Train, 0, 0, 0).next_u64(),
            Stream::new(7, Purpose::Sample, 0, 0, 0).next_u64()
        );
    }

    #[test]
    fn bernoulli_frequencies_match_probabilities() {
        // 200k draws per probability: binomial sd <= 0.0011, so 0.006 is > 5 sd.
        let mut s = Stream::new(1, Purpose::Sample, 0, 0, 0);
        for &p in &[0.0f32, 0.03, 0.5, 0.9, 1.0] {
            let n = 200_000;
            let mut v = vec![p; n];
            s.bernoulli_in_place(&mut v);
            let freq = v.iter().sum::<f32>() as f64 / n as f64;
            assert!(
                (freq - f64::from(p)).abs() < 0.006,
                "p = {p}, freq = {freq}"
            );
            if p == 0.0 || p == 1.0 {
                assert_eq!(freq, f64::from(p));
            }
        }
    }

    #[test]
    fn bernoulli_into_draws_what_in_place_draws() {
        let p: Vec<f32> = (0..101).map(|i| (i as f32 * 0.37) % 1.0).collect();
        let mut a = p.clone();
        Stream::new(5, Purpose::Train, 1, 2, 3).bernoulli_in_place(&mut a);
        let mut b = vec![0.5; p.len()];
        Stream::new(5, Purpose::Train, 1, 2, 3).bernoulli_into(&p, &mut b);
        assert_eq!(a, b);
        assert!(a.contains(&1.0) && a.contains(&0.0));
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut s = Stream::new(3, Purpose::Init, 0, 0, 0);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| s.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut s = Stream::new(0, Purpose::Shuffle, 0, 0, 0);
        let mut p = s.permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
