//! Vectorizable transcendental kernels for the evaluation hot loops (exact enumeration and AIS).
//!
//! Exact log Z on a 784 × 20 model needs 2^20 · 784 ≈ 8·10^8 softplus evaluations and AIS with
//! the default schedule about 3·10^9, so libm's scalar `exp`/`ln_1p` would dominate the run time.
//! These kernels are branch-free polynomial approximations (accurate to ~1e-15 relative in f64, ~2e-7
//! in f32) written so LLVM auto-vectorizes them; each public entry point dispatches at run time to
//! an AVX-512 or AVX2+FMA instantiation of the same code when the CPU has it, so the generic
//! `x86-64` build still uses the wide units. Results are identical whichever path runs up to the
//! last bit only within one path; all paths agree to the stated accuracy.

/// `1.5 · 2^52`: adding it rounds an f64 of magnitude < 2^51 to an integer held in the low mantissa bits.
const MAGIC64: f64 = 6_755_399_441_055_744.0;
/// `1.5 · 2^23`: the same trick for f32.
const MAGIC32: f32 = 12_582_912.0;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// ln 2 split into a high part with trailing zero bits (so `k · LN2_HI` is exact) and the rest.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
const LN2: f64 = std::f64::consts::LN_2;

/// Multiply-add: fused (one rounding, one instruction) in the wide instantiations, plain in the
/// generic one, where `mul_add` would be a slow library call on CPUs without FMA.
pub(crate) trait Mad {
    /// `a · b + c`.
    fn mad(a: f64, b: f64, c: f64) -> f64;
}

/// Plain `a · b + c`.
pub(crate) struct Plain;
/// Fused `a · b + c`.
pub(crate) struct Fused;

impl Mad for Plain {
    #[inline(always)]
    fn mad(a: f64, b: f64, c: f64) -> f64 {
        a * b + c
    }
}

impl Mad for Fused {
    #[inline(always)]
    fn mad(a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }
}

/// `e^z` for `z ≤ 0` (inputs below −708 are clamped there; the result is then ~1e-308 instead of
/// something smaller, an absolute error no sum of softplus terms can notice).
#[inline(always)]
fn exp_neg64<F: Mad>(z: f64) -> f64 {
    let z = if z < -708.0 { -708.0 } else { z };
    let t = z * LOG2E + MAGIC64;
    let kf = t - MAGIC64;
    let r = F::mad(-kf, LN2_LO, F::mad(-kf, LN2_HI, z)); // |r| ≤ ln2/2
    // Taylor series to r^11: truncation error ≤ 0.347^12 / 12! ≈ 6e-15 (relative).
    let mut p = 1.0 / 39_916_800.0;
    p = F::mad(p, r, 1.0 / 3_628_800.0);
    p = F::mad(p, r, 1.0 / 362_880.0);
    p = F::mad(p, r, 1.0 / 40_320.0);
    p = F::mad(p, r, 1.0 / 5_040.0);
    p = F::mad(p, r, 1.0 / 720.0);
    p = F::mad(p, r, 1.0 / 120.0);
    p = F::mad(p, r, 1.0 / 24.0);
    p = F::mad(p, r, 1.0 / 6.0);
    p = F::mad(p, r, 0.5);
    p = F::mad(p, r, 1.0);
    p = F::mad(p, r, 1.0);
    let k = (t.to_bits() as i64).wrapping_sub(MAGIC64.to_bits() as i64);
    let scale = f64::from_bits((k.wrapping_add(1023) << 52) as u64);
    p * scale
}

/// `ln(1 + t)` for `t ∈ [0, 1]`, via `ln(1+t) = 2 atanh(s)` with `|s| ≤ 0.1716` after halving
/// the argument when `1 + t > √2`.
#[inline(always)]
fn log1p_unit64<F: Mad>(t: f64) -> f64 {
    let big = t > std::f64::consts::SQRT_2 - 1.0;
    // For big t: ln(1+t) = ln 2 + ln((1+t)/2) and s = ((1+t)/2 − 1)/((1+t)/2 + 1) = (t−1)/(t+3).
    let num = if big { t - 1.0 } else { t };
    let den = if big { t + 3.0 } else { t + 2.0 };
    let s = num / den;
    let s2 = s * s;
    // 2·(s + s³/3 + … + s^17/17): truncation ≤ 2·0.1716^19/19 ≈ 3e-16.
    let mut p = 1.0 / 17.0;
    p = F::mad(p, s2, 1.0 / 15.0);
    p = F::mad(p, s2, 1.0 / 13.0);
    p = F::mad(p, s2, 1.0 / 11.0);
    p = F::mad(p, s2, 1.0 / 9.0);
    p = F::mad(p, s2, 1.0 / 7.0);
    p = F::mad(p, s2, 1.0 / 5.0);
    p = F::mad(p, s2, 1.0 / 3.0);
    p = F::mad(p, s2, 1.0);
    let base = if big { LN2 } else { 0.0 };
    F::mad(2.0 * s, p, base)
}

/// `softplus(x) = ln(1 + e^x)`, stable for any finite `x`.
#[inline(always)]
pub(crate) fn softplus64<F: Mad>(x: f64) -> f64 {
    let ax = if x < 0.0 { -x } else { x };
    let pos = if x > 0.0 { x } else { 0.0 };
    pos + log1p_unit64::<F>(exp_neg64::<F>(-ax))
}

/// `e^z` for `z ≤ 0` in f32 (clamped at −87 so the scale stays a normal number).
#[inline(always)]
fn exp_neg32(z: f32) -> f32 {
    let z = if z < -87.0 { -87.0 } else { z };
    let t = z * std::f32::consts::LOG2_E + MAGIC32;
    let kf = t - MAGIC32;
    let r = (z - kf * 0.693_359_4) + kf * 2.121_944_4e-4; // Cody–Waite split of ln 2
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(MAGIC32.to_bits() as i32);
    p * f32::from_bits((k.wrapping_add(127) << 23) as u32)
}

/// The logistic function in f32, branch-free so it vectorizes (`e^{−|x|}` never overflows).
#[inline(always)]
pub(crate) fn sigmoid32(x: f32) -> f32 {
    let ax = if x < 0.0 { -x } else { x };
    let e = exp_neg32(-ax);
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

/// Eight f64 lanes: a fixed-order reduction LLVM can keep in vector registers (plain `sum()` over
/// f64 is a sequential dependency chain that cannot vectorize without reassociation).
const LANES: usize = 8;

#[inline(always)]
fn reduce(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Generates a function that runs `$body` through the widest instantiation the CPU supports.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) -> $ret:ty => $generic:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma,bmi2")]
                unsafe fn wide512($($arg: $ty),*) -> $ret { $generic::<Fused>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide256($($arg: $ty),*) -> $ret { $generic::<Fused>($($arg),*) }
                if crate::linalg::simd() == crate::linalg::Simd::Avx512
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("bmi2")
                {
                    // SAFETY: the features the function was compiled for were detected above.
                    return unsafe { wide512($($arg),*) };
                }
                if crate::linalg::simd() >= crate::linalg::Simd::Avx2 {
                    // SAFETY: as above.
                    return unsafe { wide256($($arg),*) };
                }
            }
            $generic::<Plain>($($arg),*)
        }
    };
}

#[inline(always)]
fn softplus_sum_shifted_generic<F: Mad>(pre: &[f64], shift: &[f64]) -> f64 {
    assert_eq!(pre.len(), shift.len());
    let mut acc = [0.0f64; LANES];
    let mut a = pre.chunks_exact(LANES);
    let mut s = shift.chunks_exact(LANES);
    for (x, o) in (&mut a).zip(&mut s) {
        for l in 0..LANES {
            acc[l] += softplus64::<F>(x[l] + o[l]);
        }
    }
    for (l, (x, o)) in a.remainder().iter().zip(s.remainder()).enumerate() {
        acc[l] += softplus64::<F>(x + o);
    }
    reduce(acc)
}

dispatch! {
    /// `Σ_i softplus(pre_i + shift_i)` in f64.
    pub(crate) fn softplus_sum_shifted(pre: &[f64], shift: &[f64]) -> f64 => softplus_sum_shifted_generic
}

#[inline(always)]
fn softplus_sum32_generic<F: Mad>(pre: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut a = pre.chunks_exact(LANES);
    for x in &mut a {
        for l in 0..LANES {
            acc[l] += softplus64::<F>(f64::from(x[l]));
        }
    }
    for (l, x) in a.remainder().iter().enumerate() {
        acc[l] += softplus64::<F>(f64::from(*x));
    }
    reduce(acc)
}

dispatch! {
    /// `Σ_i softplus(pre_i)` in f64 of f32 inputs (the free energy's hidden term).
    pub(crate) fn softplus_sum32(pre: &[f32]) -> f64 => softplus_sum32_generic
}

/// One hidden-layer step of AIS for one run: with `a = x + c` (the hidden input at the current
/// visible state), returns `Σ_j softplus(β₁ a_j) − softplus(β₀ a_j)` and overwrites `x` with the
/// probabilities `σ(β₁ a_j)` for the transition's hidden sample.
#[inline(always)]
fn ais_hidden_generic<F: Mad>(x: &mut [f32], c: &[f32], beta0: f64, beta1: f64) -> f64 {
    assert_eq!(x.len(), c.len());
    let (b0, b1, b1f) = (beta0, beta1, beta1 as f32);
    let mut acc = [0.0f64; LANES];
    let mut xs = x.chunks_exact_mut(LANES);
    let mut cs = c.chunks_exact(LANES);
    for (xv, cv) in (&mut xs).zip(&mut cs) {
        for l in 0..LANES {
            let a = xv[l] + cv[l];
            let a64 = f64::from(a);
            acc[l] += softplus64::<F>(b1 * a64) - softplus64::<F>(b0 * a64);
            xv[l] = sigmoid32(b1f * a);
        }
    }
    for (l, (xv, cv)) in xs
        .into_remainder()
        .iter_mut()
        .zip(cs.remainder())
        .enumerate()
    {
        let a = *xv + cv;
        let a64 = f64::from(a);
        acc[l] += softplus64::<F>(b1 * a64) - softplus64::<F>(b0 * a64);
        *xv = sigmoid32(b1f * a);
    }
    reduce(acc)
}

dispatch! {
    /// See `ais_hidden_generic`.
    pub(crate) fn ais_hidden(x: &mut [f32], c: &[f32], beta0: f64, beta1: f64) -> f64 => ais_hidden_generic
}

/// Accumulated hidden-layer term only (no probabilities): the last AIS step, where no transition follows.
#[inline(always)]
fn ais_hidden_last_generic<F: Mad>(x: &[f32], c: &[f32], beta0: f64, beta1: f64) -> f64 {
    assert_eq!(x.len(), c.len());
    let mut acc = [0.0f64; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut cs = c.chunks_exact(LANES);
    for (xv, cv) in (&mut xs).zip(&mut cs) {
        for l in 0..LANES {
            let a64 = f64::from(xv[l] + cv[l]);
            acc[l] += softplus64::<F>(beta1 * a64) - softplus64::<F>(beta0 * a64);
        }
    }
    for (l, (xv, cv)) in xs.remainder().iter().zip(cs.remainder()).enumerate() {
        let a64 = f64::from(xv + cv);
        acc[l] += softplus64::<F>(beta1 * a64) - softplus64::<F>(beta0 * a64);
    }
    reduce(acc)
}

dispatch! {
    /// See `ais_hidden_last_generic`.
    pub(crate) fn ais_hidden_last(x: &[f32], c: &[f32], beta0: f64, beta1: f64) -> f64 => ais_hidden_last_generic
}

/// Visible probabilities of the AIS transition: `p_i ← σ((1−β) bA_i + β(b_i + p_i))`.
#[inline(always)]
fn ais_visible_generic<F: Mad>(p: &mut [f32], b: &[f32], base: &[f32], beta: f32) {
    assert!(p.len() == b.len() && p.len() == base.len());
    let ob = 1.0 - beta;
    for ((x, &bi), &ai) in p.iter_mut().zip(b).zip(base) {
        *x = sigmoid32(ob * ai + beta * (bi + *x));
    }
}

dispatch! {
    /// See `ais_visible_generic`.
    pub(crate) fn ais_visible(p: &mut [f32], b: &[f32], base: &[f32], beta: f32) -> () => ais_visible_generic
}

/// `dst += src`, in f64.
#[inline(always)]
fn add_assign64_generic<F: Mad>(dst: &mut [f64], src: &[f64]) {
    for (x, &y) in dst.iter_mut().zip(src) {
        *x += y;
    }
}

dispatch! {
    /// See `add_assign64_generic`.
    pub(crate) fn add_assign64(dst: &mut [f64], src: &[f64]) -> () => add_assign64_generic
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{sigmoid64, softplus};

    #[test]
    fn softplus64_matches_libm() {
        // Dense sweep, including the branch point of log1p and the clamped tail.
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = f64::from(i) * 0.004_123_1;
            let want = softplus(x);
            let got = softplus64::<Plain>(x);
            let fused = softplus64::<Fused>(x);
            assert!((fused - got).abs() <= 1e-13 * got.max(1e-290), "x = {x}");
            if want > 1e-290 {
                worst = worst.max((got - want).abs() / want);
            } else {
                // Below the clamp at e^-708 only the absolute error is small.
                assert!((got - want).abs() < 1e-300, "x = {x}");
            }
        }
        assert!(worst < 1e-13, "worst relative error {worst}");
        for &x in &[-1e4, -745.0, -700.0, 0.0, 1e-12, -1e-12, 700.0, 1e4] {
            let (got, want) = (softplus64::<Plain>(x), softplus(x));
            assert!(got.is_finite());
            assert!(
                (got - want).abs() <= 1e-14 * want + 1e-300,
                "x = {x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn sigmoid32_matches_f64_reference() {
        let mut worst = 0.0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 0.001_7;
            let err = (f64::from(sigmoid32(x)) - sigmoid64(f64::from(x))).abs();
            worst = worst.max(err);
        }
        assert!(worst < 3e-7, "worst absolute error {worst}");
        assert_eq!(sigmoid32(-1000.0), sigmoid32(-1000.0).clamp(0.0, 1e-30));
        assert_eq!(sigmoid32(1000.0), 1.0);
    }

    #[test]
    fn dispatched_sums_match_scalar_reference() {
        let xs: Vec<f64> = (0..1003)
            .map(|i| (f64::from(i) * 0.37).sin() * 40.0)
            .collect();
        let sh: Vec<f64> = (0..1003).map(|i| f64::from(i % 7) - 3.0).collect();
        let want: f64 = xs.iter().zip(&sh).map(|(x, s)| softplus(x + s)).sum();
        assert!((softplus_sum_shifted(&xs, &sh) - want).abs() < 1e-9 * want);
        // AIS hidden step against the definition.
        let x0: Vec<f32> = (0..37).map(|i| ((i as f32) * 0.7).cos() * 5.0).collect();
        let c: Vec<f32> = (0..37).map(|i| (i as f32) * 0.1 - 2.0).collect();
        let (b0, b1) = (0.3, 0.31);
        let mut x = x0.clone();
        let got = ais_hidden(&mut x, &c, b0, b1);
        let want: f64 = x0
            .iter()
            .zip(&c)
            .map(|(&a, &c)| {
                let a = f64::from(a + c);
                softplus(b1 * a) - softplus(b0 * a)
            })
            .sum();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!((ais_hidden_last(&x0, &c, b0, b1) - want).abs() < 1e-12);
        for ((&p, &a), &c) in x.iter().zip(&x0).zip(&c) {
            assert!((f64::from(p) - sigmoid64(b1 * f64::from(a + c))).abs() < 1e-6);
        }
        let mut p = vec![0.5f32, -3.0, 2.0];
        ais_visible(&mut p, &[0.1, 0.2, 0.3], &[-1.0, 0.0, 1.0], 0.25);
        for (k, (&x, (&b, &a))) in [0.5f32, -3.0, 2.0]
            .iter()
            .zip([0.1f32, 0.2, 0.3].iter().zip(&[-1.0f32, 0.0, 1.0]))
            .enumerate()
        {
            let want = sigmoid64(0.75 * f64::from(a) + 0.25 * f64::from(b + x));
            assert!((f64::from(p[k]) - want).abs() < 1e-6);
        }
    }
}
