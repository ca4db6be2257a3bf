//! Evaluation of binary RBMs: exact and AIS partition functions, log-likelihoods, scikit-learn's
//! pseudo-likelihood, free-energy statistics and the intractability timing exercise.
//!
//! - [`exact_log_z`]: enumerate the smaller layer (≤ 30 units by default), exact in f64.
//! - [`ais_log_z`]: annealed importance sampling (Salakhutdinov & Murray 2008) for large models.
//! - [`log_likelihoods`] / [`average_log_likelihood`]: `log p(v) = −F(v) − log Z`, of binary data.
//! - [`pseudo_likelihood`]: scikit-learn's `BernoulliRBM.score_samples`, so figures compare directly.
//! - [`free_energy_stats`], [`free_energy_gap`]: Hinton's overfitting monitor.
//! - [`time_enumeration`]: how long the naive double sum over (v, h) would take (the second source's
//!   "Intractability" exercise), against the smaller-layer enumeration.

mod ais;
mod exact;
pub(crate) mod kernels;

pub use ais::{
    AisEstimate, AisParams, BetaSchedule, ValidAisParams, ais_log_z, ais_log_z_with_base,
    base_rates,
};
pub use exact::{DEFAULT_EXACT_LIMIT, exact_log_z, exact_log_z_with_limit, free_energies};

use crate::binary::BinaryRbm;
use crate::error::{RbmError, Result};
use crate::linalg::{Matrix, softplus};
use crate::random::{Purpose, Stream};
use std::time::Instant;

/// Whether every value is exactly 0 or 1 (log-likelihoods are only defined for such data).
pub fn is_binary(data: &Matrix) -> bool {
    data.as_slice().iter().all(|&x| x == 0.0 || x == 1.0)
}

fn require_binary(data: &Matrix) -> Result<()> {
    if let Some(pos) = data.as_slice().iter().position(|&x| x != 0.0 && x != 1.0) {
        let rows = data.rows().max(1);
        return Err(RbmError::param(
            "data",
            format!(
                "log-likelihoods are of binary data, but example {} has value {} at position {}; \
                 binarize it first",
                pos / rows,
                data.as_slice()[pos],
                pos % rows
            ),
        ));
    }
    Ok(())
}

/// `log p(v) = −F(v) − log Z` for each example (column) of binary `data`.
pub fn log_likelihoods(rbm: &BinaryRbm, data: &Matrix, log_z: f64) -> Result<Vec<f64>> {
    require_binary(data)?;
    Ok(free_energies(rbm, data)?
        .into_iter()
        .map(|f| -f - log_z)
        .collect())
}

/// Average `log p(v)` over the examples of binary `data`, in nats per example.
pub fn average_log_likelihood(rbm: &BinaryRbm, data: &Matrix, log_z: f64) -> Result<f64> {
    let ll = log_likelihoods(rbm, data, log_z)?;
    if ll.is_empty() {
        return Err(RbmError::Shape("no examples to evaluate".into()));
    }
    Ok(ll.iter().sum::<f64>() / ll.len() as f64)
}

/// AIS log Z (base rates from `base_data`, typically a training subset) and the resulting average
/// log-likelihood of binary `data`: the one call a training loop needs to log held-out
/// log-likelihood every N epochs (with [`AisParams::monitoring`] to keep it cheap).
pub fn ais_log_likelihood(
    rbm: &BinaryRbm,
    base_data: &Matrix,
    data: &Matrix,
    params: &ValidAisParams,
) -> Result<(AisEstimate, f64)> {
    require_binary(data)?;
    let est = ais_log_z(rbm, base_data, params)?;
    let ll = average_log_likelihood(rbm, data, est.log_z)?;
    Ok((est, ll))
}

/// scikit-learn's pseudo-likelihood (`BernoulliRBM.score_samples`): for each example flip one
/// random unit (`ṽ_i = 1 − v_i`) and return `D · log σ(F(ṽ) − F(v))`. The unit flipped in
/// example `j` is drawn from the stream `(seed, PseudoLikelihood, 0, 0, j)`.
pub fn pseudo_likelihood(rbm: &BinaryRbm, data: &Matrix, seed: u64) -> Result<Vec<f64>> {
    let d = rbm.visible();
    let flips: Vec<usize> = (0..data.cols())
        .map(|j| Stream::new(seed, Purpose::PseudoLikelihood, 0, 0, j as u64).below(d))
        .collect();
    pseudo_likelihood_at(rbm, data, &flips)
}

/// [`pseudo_likelihood`] with the flipped unit of each example given, to reproduce scikit-learn's
/// figures exactly from its random indices.
pub fn pseudo_likelihood_at(rbm: &BinaryRbm, data: &Matrix, flips: &[usize]) -> Result<Vec<f64>> {
    let d = rbm.visible();
    if flips.len() != data.cols() {
        return Err(RbmError::Shape(format!(
            "{} flip indices for {} examples",
            flips.len(),
            data.cols()
        )));
    }
    if let Some(&bad) = flips.iter().find(|&&i| i >= d) {
        return Err(RbmError::param(
            "flips",
            format!("index {bad} ≥ {d} visible units"),
        ));
    }
    let fe = free_energies(rbm, data)?;
    let mut corrupted = data.clone();
    for (j, &i) in flips.iter().enumerate() {
        let x = &mut corrupted.col_mut(j)[i];
        *x = 1.0 - *x;
    }
    let fe_c = free_energies(rbm, &corrupted)?;
    // sklearn: -n_features * logaddexp(0, -(fe_ - fe)).
    Ok(fe
        .iter()
        .zip(&fe_c)
        .map(|(&f, &fc)| -(d as f64) * softplus(-(fc - f)))
        .collect())
}

/// Summary of the free energies of a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreeEnergyStats {
    /// Number of examples.
    pub count: usize,
    /// Mean free energy.
    pub mean: f64,
    /// Standard deviation (population).
    pub std: f64,
    /// Smallest free energy.
    pub min: f64,
    /// Largest free energy.
    pub max: f64,
}

/// Mean, spread and range of `F(v)` over the examples of `data`.
pub fn free_energy_stats(rbm: &BinaryRbm, data: &Matrix) -> Result<FreeEnergyStats> {
    let f = free_energies(rbm, data)?;
    if f.is_empty() {
        return Err(RbmError::Shape("no examples to evaluate".into()));
    }
    let n = f.len() as f64;
    let mean = f.iter().sum::<f64>() / n;
    let var = f.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Ok(FreeEnergyStats {
        count: f.len(),
        mean,
        std: var.sqrt(),
        min: f.iter().copied().fold(f64::INFINITY, f64::min),
        max: f.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Hinton's overfitting monitor: mean `F` on held-out data minus mean `F` on (a same-sized subset
/// of) the training data. Near zero while the model generalizes; it grows when the model starts
/// to fit the training set better than unseen data. Z cancels, so it is cheap every epoch.
pub fn free_energy_gap(rbm: &BinaryRbm, train_subset: &Matrix, heldout: &Matrix) -> Result<f64> {
    Ok(free_energy_stats(rbm, heldout)?.mean - free_energy_stats(rbm, train_subset)?.mean)
}

/// The intractability exercise: measured cost of summing `e^{−E(v,h)}` pair by pair over a few
/// steps, extrapolated to all `2^{D+M}` pairs, and of enumerating the smaller layer, extrapolated
/// to its `2^{min(D,M)}` states. Durations are kept as log10 seconds: 2^{D+M} overflows f64.
#[derive(Clone, Debug, PartialEq)]
pub struct EnumerationTiming {
    /// Visible units D.
    pub visible: usize,
    /// Hidden units M.
    pub hidden: usize,
    /// (v, h) pairs summed in the timed prefix of the naive double loop.
    pub naive_pairs_timed: u64,
    /// Seconds the timed naive prefix took.
    pub naive_seconds: f64,
    /// log10 of the number of pairs, `(D + M) log10 2`.
    pub naive_log10_pairs: f64,
    /// log10 of the extrapolated seconds for the full naive sum.
    pub naive_log10_seconds: f64,
    /// States of the smaller layer summed in the timed prefix of the smart enumeration.
    pub smart_states_timed: u64,
    /// Seconds the timed smart prefix took (all threads).
    pub smart_seconds: f64,
    /// Size K of the enumerated (smaller) layer: there are 2^K states.
    pub smart_units: usize,
    /// log10 of the extrapolated seconds for the full smart enumeration.
    pub smart_log10_seconds: f64,
}

/// Times `naive_pairs` steps of the naive double sum and about `smart_states` states of the
/// smaller-layer enumeration (rounded to whole blocks), and extrapolates both.
pub fn time_enumeration(rbm: &BinaryRbm, naive_pairs: u64, smart_states: u64) -> EnumerationTiming {
    let (d, m) = (rbm.visible(), rbm.hidden());
    // The second source's loop: z += exp(−(vᵀWh + bᵀv + cᵀh)) for consecutive (v, h) pairs, with
    // every product computed densely as `v.T.dot(W).dot(h)` does.
    let naive_pairs = naive_pairs.max(1);
    let w = rbm.weights();
    let (b, c) = (rbm.visible_bias(), rbm.hidden_bias());
    let mut v = vec![0.0f64; d];
    let mut h = vec![0.0f64; m];
    let mut vw = vec![0.0f64; m];
    let start = Instant::now();
    let mut z = 0.0f64;
    for p in 0..naive_pairs {
        // Pair p: h holds the low M bits of p, v the rest (as nested loops over v then h).
        for (j, x) in h.iter_mut().enumerate() {
            *x = if j < 64 { ((p >> j) & 1) as f64 } else { 0.0 };
        }
        let vbits = if m < 64 { p >> m } else { 0 };
        for (i, x) in v.iter_mut().enumerate() {
            *x = if i < 64 {
                ((vbits >> i) & 1) as f64
            } else {
                0.0
            };
        }
        vw.fill(0.0);
        for i in 0..d {
            let row = &w[i * m..(i + 1) * m];
            for (acc, &wij) in vw.iter_mut().zip(row) {
                *acc += v[i] * f64::from(wij);
            }
        }
        let vwh: f64 = vw.iter().zip(&h).map(|(a, b)| a * b).sum();
        let bv: f64 = v.iter().zip(b).map(|(x, &y)| x * f64::from(y)).sum();
        let ch: f64 = h.iter().zip(c).map(|(x, &y)| x * f64::from(y)).sum();
        z += (vwh + bv + ch).exp();
    }
    std::hint::black_box(z);
    let naive_seconds = start.elapsed().as_secs_f64().max(1e-9);
    let log2 = std::f64::consts::LOG10_2;
    let naive_log10_pairs = (d + m) as f64 * log2;
    let naive_log10_seconds = (naive_seconds / naive_pairs as f64).log10() + naive_log10_pairs;

    let e = exact::Enumeration::new(rbm);
    let lo = e.low_bits(exact::LOW_BITS);
    let total_blocks_log2 = e.k - lo;
    let want_blocks = (smart_states >> lo).max(1);
    let blocks = if total_blocks_log2 < 63 {
        want_blocks.min(1u64 << total_blocks_log2)
    } else {
        want_blocks
    };
    let start = Instant::now();
    std::hint::black_box(e.partial_log_z(lo, blocks));
    let smart_seconds = start.elapsed().as_secs_f64().max(1e-9);
    let smart_states_timed = blocks << lo;
    let smart_log10_seconds =
        (smart_seconds / smart_states_timed as f64).log10() + e.k as f64 * log2;
    EnumerationTiming {
        visible: d,
        hidden: m,
        naive_pairs_timed: naive_pairs,
        naive_seconds,
        naive_log10_pairs,
        naive_log10_seconds,
        smart_states_timed,
        smart_seconds,
        smart_units: e.k,
        smart_log10_seconds,
    }
}

/// A duration given as log10 seconds in words: "3.2 s", "4.1 hours", "2.0e250 years".
pub fn describe_duration(log10_seconds: f64) -> String {
    const YEAR: f64 = 365.25 * 86_400.0;
    if log10_seconds < 7.5 {
        let s = 10f64.powf(log10_seconds);
        return if s < 1e-3 {
            format!("{:.1} µs", s * 1e6)
        } else if s < 1.0 {
            format!("{:.1} ms", s * 1e3)
        } else if s < 120.0 {
            format!("{s:.1} s")
        } else if s < 7200.0 {
            format!("{:.1} minutes", s / 60.0)
        } else if s < 2.0 * 86_400.0 {
            format!("{:.1} hours", s / 3600.0)
        } else {
            format!("{:.1} days", s / 86_400.0)
        };
    }
    let log10_years = log10_seconds - YEAR.log10();
    if log10_years < 6.0 {
        format!("{:.1} years", 10f64.powf(log10_years))
    } else {
        let exp = log10_years.floor();
        format!("{:.1}e{} years", 10f64.powf(log10_years - exp), exp as i64)
    }
}

impl std::fmt::Display for EnumerationTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The universe is about 1.38e10 years old: log10 of that in seconds.
        let universe = (1.38e10f64 * 365.25 * 86_400.0).log10();
        writeln!(
            f,
            "Naive sum over all (v, h): 2^{} ≈ {} pairs; {} pairs took {} ({:.3e} s per pair)",
            self.visible + self.hidden,
            pow10(self.naive_log10_pairs),
            self.naive_pairs_timed,
            describe_duration(self.naive_seconds.log10()),
            self.naive_seconds / self.naive_pairs_timed as f64
        )?;
        writeln!(
            f,
            "  → the full sum would take {} ({} times the age of the universe)",
            describe_duration(self.naive_log10_seconds),
            pow10(self.naive_log10_seconds - universe)
        )?;
        write!(
            f,
            "Summing out the larger layer, enumerating the {} units of the smaller: 2^{} ≈ {} \
             states; {} states took {}\n  → the full enumeration would take {}",
            self.smart_units,
            self.smart_units,
            pow10(self.smart_units as f64 * std::f64::consts::LOG10_2),
            self.smart_states_timed,
            describe_duration(self.smart_seconds.log10()),
            describe_duration(self.smart_log10_seconds)
        )
    }
}

/// `10^x` in scientific notation, for exponents beyond f64.
fn pow10(x: f64) -> String {
    let e = x.floor();
    format!("{:.2}e{}", 10f64.powf(x - e), e as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BinaryRbm {
        // D = 3, M = 2: W = [[1, -1], [0.5, 2], [-2, 0.25]], b = (0.1, -0.2, 0.3), c = (-0.5, 0.4).
        BinaryRbm::from_parts(
            3,
            2,
            vec![1.0, -1.0, 0.5, 2.0, -2.0, 0.25],
            vec![0.1, -0.2, 0.3],
            vec![-0.5, 0.4],
        )
        .unwrap()
    }

    fn ln1pexp(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    #[test]
    fn pseudo_likelihood_matches_hand_computation() {
        let rbm = tiny();
        // v = (1, 0, 1), flip unit 1 → ṽ = (1, 1, 1).
        // F(v) = −(0.1 + 0.3) − ln(1+e^{−0.5+1−2}) − ln(1+e^{0.4−1+0.25}).
        let fv = -0.4 - ln1pexp(-1.5) - ln1pexp(-0.35);
        // F(ṽ) = −(0.1 − 0.2 + 0.3) − ln(1+e^{−0.5+1+0.5−2}) − ln(1+e^{0.4−1+2+0.25}).
        let fvt = -0.2 - ln1pexp(-1.0) - ln1pexp(1.65);
        // D · log σ(F(ṽ) − F(v)) = −3 ln(1 + e^{−(F(ṽ) − F(v))}).
        let want0 = -3.0 * (1.0 + (-(fvt - fv)).exp()).ln();
        // v = (0, 0, 0), flip unit 2 → ṽ = (0, 0, 1).
        let fz = -ln1pexp(-0.5) - ln1pexp(0.4);
        let fzt = -0.3 - ln1pexp(-2.5) - ln1pexp(0.65);
        let want1 = -3.0 * (1.0 + (-(fzt - fz)).exp()).ln();
        let data = Matrix::from_vec(3, 2, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
        let got = pseudo_likelihood_at(&rbm, &data, &[1, 2]).unwrap();
        assert!((got[0] - want0).abs() < 1e-6, "{} vs {want0}", got[0]);
        assert!((got[1] - want1).abs() < 1e-6, "{} vs {want1}", got[1]);
        // Grey data is flipped as 1 − x, as scikit-learn does.
        let grey = Matrix::from_vec(3, 1, vec![0.25, 0.0, 0.0]).unwrap();
        let fg = -0.025 - ln1pexp(-0.25) - ln1pexp(0.15);
        let fgt = -0.075 - ln1pexp(0.25) - ln1pexp(-0.35);
        let want = -3.0 * (1.0 + (-(fgt - fg)).exp()).ln();
        let got = pseudo_likelihood_at(&rbm, &grey, &[0]).unwrap()[0];
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(pseudo_likelihood_at(&rbm, &data, &[0]).is_err());
        assert!(pseudo_likelihood_at(&rbm, &data, &[0, 3]).is_err());
    }

    #[test]
    fn random_pseudo_likelihood_is_seeded_and_flips_every_unit() {
        let rbm = tiny();
        let data = Matrix::from_fn(3, 300, |i, j| f32::from(u8::from((i + j) % 2 == 0)));
        let a = pseudo_likelihood(&rbm, &data, 4).unwrap();
        assert_eq!(a, pseudo_likelihood(&rbm, &data, 4).unwrap());
        assert_ne!(a, pseudo_likelihood(&rbm, &data, 5).unwrap());
        // Every value must equal the formula for one of the three possible flips.
        for (j, &pl) in a.iter().enumerate() {
            let col = data.select_cols(&[j]);
            let options: Vec<f64> = (0..3)
                .map(|i| pseudo_likelihood_at(&rbm, &col, &[i]).unwrap()[0])
                .collect();
            assert!(options.iter().any(|o| (o - pl).abs() < 1e-12));
        }
    }

    #[test]
    fn exact_log_likelihoods_sum_to_one() {
        // Σ_v p(v) = 1 over all 2^D visible vectors.
        let rbm = tiny();
        let all = Matrix::from_fn(3, 8, |i, x| ((x >> i) & 1) as f32);
        let log_z = exact_log_z(&rbm).unwrap();
        let ll = log_likelihoods(&rbm, &all, log_z).unwrap();
        let total: f64 = ll.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        let avg = average_log_likelihood(&rbm, &all, log_z).unwrap();
        assert!((avg - ll.iter().sum::<f64>() / 8.0).abs() < 1e-12);
        let grey = Matrix::from_vec(3, 1, vec![0.5, 0.0, 1.0]).unwrap();
        let err = log_likelihoods(&rbm, &grey, log_z).unwrap_err().to_string();
        assert!(err.contains("binary") && err.contains("0.5"), "{err}");
    }

    #[test]
    fn ais_log_likelihood_matches_exact_on_a_tiny_model() {
        let rbm = tiny();
        let all = Matrix::from_fn(3, 8, |i, x| ((x >> i) & 1) as f32);
        let exact = average_log_likelihood(&rbm, &all, exact_log_z(&rbm).unwrap()).unwrap();
        let p = AisParams::new()
            .schedule(BetaSchedule::Linear(500))
            .runs(50)
            .check()
            .unwrap();
        let (est, ll) = ais_log_likelihood(&rbm, &all, &all, &p).unwrap();
        // 3 visible units: AIS with 500 steps is accurate to well under 0.05 nat here.
        assert!((ll - exact).abs() < 0.05, "{ll} vs {exact}");
        assert!((ll - average_log_likelihood(&rbm, &all, est.log_z).unwrap()).abs() < 1e-12);
        let grey = Matrix::from_vec(3, 1, vec![0.5, 0.0, 1.0]).unwrap();
        assert!(ais_log_likelihood(&rbm, &all, &grey, &p).is_err());
    }

    #[test]
    fn free_energy_statistics_and_gap() {
        let rbm = tiny();
        let a = Matrix::from_vec(3, 2, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
        let f = free_energies(&rbm, &a).unwrap();
        let s = free_energy_stats(&rbm, &a).unwrap();
        assert_eq!(s.count, 2);
        assert!((s.mean - (f[0] + f[1]) / 2.0).abs() < 1e-12);
        assert!((s.std - (f[0] - f[1]).abs() / 2.0).abs() < 1e-12);
        assert_eq!((s.min, s.max), (f[0].min(f[1]), f[0].max(f[1])));
        let b = a.select_cols(&[1]);
        let gap = free_energy_gap(&rbm, &a, &b).unwrap();
        assert!((gap - (f[1] - s.mean)).abs() < 1e-12);
    }

    #[test]
    fn timing_extrapolates_to_the_state_counts() {
        let rbm = BinaryRbm::zeros(30, 12);
        let t = time_enumeration(&rbm, 200, 1000);
        assert_eq!(t.naive_pairs_timed, 200);
        assert!((t.naive_log10_pairs - 42.0 * 2f64.log10()).abs() < 1e-12);
        let per_pair = t.naive_seconds / 200.0;
        assert!((t.naive_log10_seconds - (per_pair.log10() + t.naive_log10_pairs)).abs() < 1e-9);
        // 1000 states rounded down to whole blocks of 128.
        assert_eq!((t.smart_states_timed, t.smart_units), (896, 12));
        let text = t.to_string();
        assert!(text.contains("2^42") && text.contains("2^12"), "{text}");
        assert_eq!(describe_duration(0.5f64.log10()), "500.0 ms");
        assert_eq!(describe_duration(3600f64.log10() * 1.0 + 1.0), "10.0 hours");
        let y = describe_duration(300.0);
        assert!(y.ends_with("e292 years"), "{y}");
    }
}
