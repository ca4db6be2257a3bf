//! Annealed importance sampling of `log Z` (Salakhutdinov & Murray 2008), as REFERENCE §2 states it.
//!
//! Base model A: `W = 0`, `c = 0`, visible biases fitted to the data's marginals (smoothed), with
//! as many hidden units as the target so that `log Z_A = Σ_i softplus(b_A,i) + M ln 2`. Intermediate
//! distributions `p*_β(v) = exp((1−β) b_Aᵀv + β bᵀv) Π_j (1 + e^{β(c_j + (vᵀW)_j)})`; the transition
//! at β samples `h ~ σ(β(c + Wᵀv))` then `v ~ σ((1−β) b_A + β(b + Wh))`.
//!
//! All runs advance together as the columns of one `D × R` matrix, so each β step is two matrix
//! products (`Wᵀ V`, `W H`) that reuse W from cache across runs, followed by fused per-run kernels
//! (log-weight increment, sigmoid, Bernoulli sampling) in parallel over runs. (Summing only the
//! rows of W selected by the units that are on was tried: ~8× fewer operations, but every run
//! streams W from memory, and it measured 3× slower.) Run `r` at step `k` draws from the streams
//! `(seed, Ais, k, 0, r)` (hidden) and `(seed, Ais, k, 1, r)` (visible): a seed gives the same
//! estimate every time for a given thread count.

use super::kernels::{ais_hidden, ais_hidden_last, ais_visible};
use crate::binary::{BinaryRbm, column_means};
use crate::error::{RbmError, Result};
use crate::linalg::{Matrix, current_par, gemm, log_mean_exp, sigmoid, softplus};
use crate::random::{Purpose, Stream};
use faer::Accum;
use rayon::prelude::*;
use std::cmp::Ordering;

/// The sequence of inverse temperatures β₀ = 0 < … < β_K = 1.
#[derive(Clone, Debug, PartialEq)]
pub enum BetaSchedule {
    /// Salakhutdinov & Murray's: steps of 1e-3 up to 0.5, 1e-4 up to 0.9, 1e-5 up to 1
    /// (14,500 steps). Fine steps near β = 1, where a trained model's distributions change fastest.
    SalakhutdinovMurray,
    /// The same three phases with their proportions (500 : 4,000 : 10,000) scaled to this many steps
    /// in total: the cheap variant for monitoring during training.
    SmShaped(usize),
    /// This many equal steps.
    Linear(usize),
    /// β = 0, then this many βs spaced geometrically from 10^-4 to 1.
    Geometric(usize),
    /// Explicit βs: must start at 0, end at 1 and never decrease.
    Custom(Vec<f64>),
}

impl BetaSchedule {
    /// The βs, from 0 to 1 inclusive.
    pub fn betas(&self) -> Vec<f64> {
        match self {
            BetaSchedule::SalakhutdinovMurray => phases(500, 4000, 10_000),
            BetaSchedule::SmShaped(n) => {
                let n = (*n).max(3);
                let a = ((n as f64) * 500.0 / 14_500.0).round().max(1.0) as usize;
                let b = ((n as f64) * 4000.0 / 14_500.0).round().max(1.0) as usize;
                phases(a, b, n.saturating_sub(a + b).max(1))
            }
            BetaSchedule::Linear(n) => (0..=*n).map(|k| k as f64 / *n as f64).collect(),
            BetaSchedule::Geometric(n) => {
                let mut b = vec![0.0];
                let n = *n;
                b.extend((0..n).map(|k| {
                    if n == 1 {
                        1.0
                    } else {
                        10f64.powf(-4.0 * (1.0 - k as f64 / (n - 1) as f64))
                    }
                }));
                b
            }
            BetaSchedule::Custom(b) => b.clone(),
        }
    }

    /// Parses `sm`, `sm:N`, `linear:N`, `geometric:N` (the CLI's spelling).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            RbmError::param(
                "schedule",
                format!("`{s}`: expected sm, sm:STEPS, linear:STEPS or geometric:STEPS"),
            )
        };
        let (kind, count) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.trim().parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        if let Some(n) = count
            && !(1..=MAX_AIS_STEPS).contains(&n)
        {
            return Err(RbmError::param(
                "schedule",
                format!("`{s}`: STEPS must be in 1..={MAX_AIS_STEPS}"),
            ));
        }
        match (kind.trim(), count) {
            ("sm", None) => Ok(BetaSchedule::SalakhutdinovMurray),
            ("sm", Some(n)) => Ok(BetaSchedule::SmShaped(n)),
            ("linear", Some(n)) => Ok(BetaSchedule::Linear(n)),
            ("geometric", Some(n)) => Ok(BetaSchedule::Geometric(n)),
            _ => Err(bad()),
        }
    }
}

/// Most steps a parsed schedule may have: 700 times Salakhutdinov & Murray's 14,500, already
/// hours per run at MNIST size; more would only exhaust memory for the β list.
const MAX_AIS_STEPS: usize = 10_000_000;

/// `a` steps of equal size up to 0.5, `b` up to 0.9, `c` up to 1.
fn phases(a: usize, b: usize, c: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(a + b + c + 1);
    out.extend((0..=a).map(|k| 0.5 * k as f64 / a as f64));
    out.extend((1..=b).map(|k| 0.5 + 0.4 * k as f64 / b as f64));
    out.extend((1..=c).map(|k| 0.9 + 0.1 * k as f64 / c as f64));
    *out.last_mut().expect("non-empty") = 1.0;
    out
}

/// AIS hyperparameters (unchecked; [`AisParams::check`] validates them).
#[derive(Clone, Debug, PartialEq)]
pub struct AisParams {
    schedule: BetaSchedule,
    runs: usize,
    seed: u64,
    base_smoothing: f64,
}

impl Default for AisParams {
    /// Salakhutdinov & Murray's setting: their schedule and 100 runs.
    fn default() -> Self {
        AisParams {
            schedule: BetaSchedule::SalakhutdinovMurray,
            runs: 100,
            seed: 0,
            base_smoothing: 0.05,
        }
    }
}

impl AisParams {
    /// The defaults (S&M schedule, 100 runs, seed 0, smoothing 0.05).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cheap setting for monitoring during training: 1,000 S&M-shaped steps, 32 runs.
    /// Noisier (and more biased low) than the default; for trends during training, not for reporting.
    pub fn monitoring() -> Self {
        AisParams {
            schedule: BetaSchedule::SmShaped(1000),
            runs: 32,
            ..Self::default()
        }
    }

    /// The β schedule.
    pub fn schedule(mut self, s: BetaSchedule) -> Self {
        self.schedule = s;
        self
    }

    /// Number of independent AIS runs (chains).
    pub fn runs(mut self, n: usize) -> Self {
        self.runs = n;
        self
    }

    /// Seed of the random streams.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Smoothing λ of the base rates: `p_i = (mean_i + λ) / (1 + 2λ)`, which keeps the base's
    /// biases finite for pixels that are always off in the data.
    pub fn base_smoothing(mut self, l: f64) -> Self {
        self.base_smoothing = l;
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<ValidAisParams> {
        if self.runs < 2 {
            return Err(RbmError::param(
                "runs",
                format!(
                    "{} — at least 2 runs are needed to estimate the spread",
                    self.runs
                ),
            ));
        }
        if !(self.base_smoothing > 0.0 && self.base_smoothing < 0.5) {
            return Err(RbmError::param(
                "base_smoothing",
                format!("{} — must lie in (0, 0.5)", self.base_smoothing),
            ));
        }
        match self.schedule {
            BetaSchedule::SmShaped(n) if n < 3 => {
                return Err(RbmError::param(
                    "schedule",
                    format!("sm:{n} — needs at least 3 steps (one per phase)"),
                ));
            }
            BetaSchedule::Linear(0) | BetaSchedule::Geometric(0) => {
                return Err(RbmError::param("schedule", "needs at least 1 step"));
            }
            _ => {}
        }
        let betas = self.schedule.betas();
        if betas.len() < 2
            || betas[0] != 0.0
            || *betas.last().expect("non-empty") != 1.0
            || betas.windows(2).any(|w| {
                !matches!(
                    w[1].partial_cmp(&w[0]),
                    Some(Ordering::Greater | Ordering::Equal)
                )
            })
        {
            return Err(RbmError::param(
                "schedule",
                "βs must start at 0, end at 1 and never decrease",
            ));
        }
        Ok(ValidAisParams {
            betas,
            runs: self.runs,
            seed: self.seed,
            base_smoothing: self.base_smoothing,
        })
    }
}

/// Validated AIS parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidAisParams {
    betas: Vec<f64>,
    runs: usize,
    seed: u64,
    base_smoothing: f64,
}

impl ValidAisParams {
    /// The βs, 0 to 1.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// Number of runs.
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// Seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Base-rate smoothing λ.
    pub fn base_smoothing(&self) -> f64 {
        self.base_smoothing
    }
}

/// An AIS estimate of `log Z`.
#[derive(Clone, Debug, PartialEq)]
pub struct AisEstimate {
    /// `log Ẑ = log Z_A + log mean_r w_r`.
    pub log_z: f64,
    /// Standard deviation of `log Ẑ` by the delta method: `sd(w) / (√R · mean(w))`.
    pub log_z_std: f64,
    /// `log(Ẑ − 3σ_Ẑ)` with `σ_Ẑ = Z_A · sd(w)/√R` (S&M's interval); `-inf` when 3σ exceeds Ẑ.
    pub log_z_lo: f64,
    /// `log(Ẑ + 3σ_Ẑ)`.
    pub log_z_hi: f64,
    /// Number of runs R.
    pub runs: usize,
    /// Number of βs (intermediate distributions, including both ends).
    pub betas: usize,
    /// `log Z_A` of the base model.
    pub log_z_base: f64,
    /// The log importance weights `log w_r`, one per run.
    pub log_weights: Vec<f64>,
}

impl AisEstimate {
    /// Effective sample size of the importance weights, `(Σw)² / Σw²` (R when all weights agree).
    pub fn effective_runs(&self) -> f64 {
        let m = self
            .log_weights
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let (s1, s2) = self.log_weights.iter().fold((0.0, 0.0), |(a, b), &l| {
            let w = (l - m).exp();
            (a + w, b + w * w)
        });
        s1 * s1 / s2
    }
}

/// Base-rate biases `b_A,i = log(p_i / (1 − p_i))` with `p_i = (mean_i + λ)/(1 + 2λ)`.
pub fn base_rates(data: &Matrix, smoothing: f64) -> Vec<f32> {
    column_means(data)
        .into_iter()
        .map(|p| {
            let p = (p + smoothing) / (1.0 + 2.0 * smoothing);
            (p / (1.0 - p)).ln() as f32
        })
        .collect()
}

/// AIS estimate of `log Z` with the base model fitted to `data` (one example per column).
pub fn ais_log_z(rbm: &BinaryRbm, data: &Matrix, params: &ValidAisParams) -> Result<AisEstimate> {
    if data.rows() != rbm.visible() {
        return Err(RbmError::Shape(format!(
            "AIS base data has {} values per example, the model has {} visible units",
            data.rows(),
            rbm.visible()
        )));
    }
    if data.cols() == 0 {
        return Err(RbmError::Shape(
            "AIS needs at least one example to fit the base rates".into(),
        ));
    }
    ais_log_z_with_base(rbm, &base_rates(data, params.base_smoothing), params)
}

/// AIS estimate of `log Z` from a given base model (its visible biases `b_A`).
pub fn ais_log_z_with_base(
    rbm: &BinaryRbm,
    base: &[f32],
    params: &ValidAisParams,
) -> Result<AisEstimate> {
    let (d, m) = (rbm.visible(), rbm.hidden());
    if base.len() != d || base.iter().any(|x| !x.is_finite()) {
        return Err(RbmError::Shape(format!(
            "AIS base has {} biases (need {d}, all finite)",
            base.len()
        )));
    }
    let betas = &params.betas;
    let log_z_base = base.iter().map(|&x| softplus(f64::from(x))).sum::<f64>()
        + m as f64 * std::f64::consts::LN_2;
    let log_weights = run_chains(rbm, base, betas, params.runs, params.seed);
    Ok(summarize(log_weights, log_z_base, betas.len()))
}

/// Combines log weights into the estimate and its ±3σ interval.
fn summarize(log_weights: Vec<f64>, log_z_base: f64, betas: usize) -> AisEstimate {
    let r = log_weights.len() as f64;
    let log_mean = log_mean_exp(&log_weights);
    let max = log_weights
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    // Weights scaled by e^{−max} so the largest is 1; sd with the n − 1 denominator.
    let scaled: Vec<f64> = log_weights.iter().map(|&l| (l - max).exp()).collect();
    let mean = scaled.iter().sum::<f64>() / r;
    let var = scaled.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / (r - 1.0);
    let rel = var.sqrt() / (r.sqrt() * mean); // σ_Ẑ / Ẑ
    let log_z = log_z_base + log_mean;
    AisEstimate {
        log_z,
        log_z_std: rel,
        log_z_lo: if 3.0 * rel < 1.0 {
            log_z + (-3.0 * rel).ln_1p()
        } else {
            f64::NEG_INFINITY
        },
        log_z_hi: log_z + (3.0 * rel).ln_1p(),
        runs: log_weights.len(),
        betas,
        log_z_base,
        log_weights,
    }
}

/// Runs all chains together, one column of a `D × R` (or `M × R`) matrix per run, so each β
/// step is two matrix products over all runs followed by fused per-run sampling kernels. All
/// buffers are allocated before the β loop.
fn run_chains(rbm: &BinaryRbm, base: &[f32], betas: &[f64], runs: usize, seed: u64) -> Vec<f64> {
    let (d, m) = (rbm.visible(), rbm.hidden());
    let (b, c) = (rbm.visible_bias(), rbm.hidden_bias());
    // b − b_A in f64, for the visible part of each step's log-weight increment.
    let db: Vec<f64> = b
        .iter()
        .zip(base)
        .map(|(&b, &a)| f64::from(b) - f64::from(a))
        .collect();
    let dot_db = |v: &[f32]| -> f64 {
        v.iter()
            .zip(&db)
            .filter(|(x, _)| **x != 0.0)
            .map(|(_, d)| d)
            .sum()
    };
    let base_probs: Vec<f32> = base.iter().map(|&a| sigmoid(a)).collect();
    let mut v = Matrix::zeros(d, runs);
    let mut hx = Matrix::zeros(m, runs);
    let mut lin = vec![0.0f64; runs];
    let mut log_w = vec![0.0f64; runs];
    v.as_mut_slice()
        .par_chunks_mut(d)
        .zip(lin.par_iter_mut())
        .enumerate()
        .for_each(|(r, (col, l))| {
            col.copy_from_slice(&base_probs);
            Stream::new(seed, Purpose::Ais, 0, 1, r as u64).bernoulli_in_place(col);
            *l = dot_db(col);
        });
    let par = current_par();
    let k_last = betas.len() - 1;
    for k in 1..=k_last {
        let (b0, b1) = (betas[k - 1], betas[k]);
        let last = k == k_last;
        // Hidden inputs Wᵀv for every run (c is added inside the kernel).
        gemm(
            hx.view_mut(),
            Accum::Replace,
            rbm.wt_view(),
            v.view(),
            1.0,
            par,
        );
        hx.as_mut_slice()
            .par_chunks_mut(m)
            .zip(log_w.par_iter_mut())
            .zip(lin.par_iter())
            .enumerate()
            .for_each(|(r, ((col, lw), &l))| {
                let mut t = (b1 - b0) * l;
                if last {
                    t += ais_hidden_last(col, c, b0, b1);
                } else {
                    t += ais_hidden(col, c, b0, b1);
                    Stream::new(seed, Purpose::Ais, k as u64, 0, r as u64).bernoulli_in_place(col);
                }
                *lw += t;
            });
        if last {
            break;
        }
        // Visible inputs Wh, then v ~ σ((1−β) b_A + β(b + Wh)) written over v.
        gemm(
            v.view_mut(),
            Accum::Replace,
            rbm.wt_view().transpose(),
            hx.view(),
            1.0,
            par,
        );
        v.as_mut_slice()
            .par_chunks_mut(d)
            .zip(lin.par_iter_mut())
            .enumerate()
            .for_each(|(r, (col, l))| {
                ais_visible(col, b, base, b1 as f32);
                Stream::new(seed, Purpose::Ais, k as u64, 1, r as u64).bernoulli_in_place(col);
                *l = dot_db(col);
            });
    }
    log_w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::exact::exact_log_z;
    use crate::eval::exact::tests::random_rbm;

    #[test]
    fn schedules_have_the_documented_shape() {
        let sm = BetaSchedule::SalakhutdinovMurray.betas();
        assert_eq!(sm.len(), 14_501);
        assert_eq!((sm[0], sm[500], sm[4500], sm[14_500]), (0.0, 0.5, 0.9, 1.0));
        assert!((sm[1] - 1e-3).abs() < 1e-15 && (sm[501] - sm[500] - 1e-4).abs() < 1e-12);
        assert!((sm[14_500] - sm[14_499] - 1e-5).abs() < 1e-12);
        let s = BetaSchedule::SmShaped(1000).betas();
        assert_eq!(s.len(), 1001);
        let lin = BetaSchedule::Linear(4).betas();
        assert_eq!(lin, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let g = BetaSchedule::Geometric(5).betas();
        assert_eq!(g.len(), 6);
        assert!((g[1] - 1e-4).abs() < 1e-18 && (g[3] - 1e-2).abs() < 1e-15 && g[5] == 1.0);
        assert_eq!(
            BetaSchedule::parse("sm:300").unwrap(),
            BetaSchedule::SmShaped(300)
        );
        assert!(BetaSchedule::parse("linear").is_err() && BetaSchedule::parse("x:3").is_err());
        // A step count that would only exhaust memory is refused; the largest allowed parses.
        assert!(BetaSchedule::parse("linear:99999999999999").is_err());
        assert!(BetaSchedule::parse("geometric:0").is_err());
        assert_eq!(
            BetaSchedule::parse("linear:10000000").unwrap(),
            BetaSchedule::Linear(MAX_AIS_STEPS)
        );
    }

    #[test]
    fn params_are_validated() {
        assert!(AisParams::new().runs(1).check().is_err());
        assert!(AisParams::new().base_smoothing(0.0).check().is_err());
        assert!(AisParams::new().base_smoothing(f64::NAN).check().is_err());
        assert!(
            AisParams::new()
                .schedule(BetaSchedule::Custom(vec![0.0, 0.7, 0.5, 1.0]))
                .check()
                .is_err()
        );
        assert!(
            AisParams::new()
                .schedule(BetaSchedule::Custom(vec![0.1, 1.0]))
                .check()
                .is_err()
        );
        assert!(
            AisParams::new()
                .schedule(BetaSchedule::Linear(0))
                .check()
                .is_err()
        );
        let p = AisParams::new().check().unwrap();
        assert_eq!((p.runs(), p.betas().len()), (100, 14_501));
    }

    #[test]
    fn zero_variance_when_the_base_is_the_target_visible_part() {
        // W = 0 and b_A = b: every run's weight is Σ_j softplus(c_j) − M ln 2 exactly, so the
        // estimate is exact and its spread is zero.
        let (d, m) = (6, 4);
        let b = vec![0.3f32, -1.0, 2.0, 0.0, -0.5, 1.2];
        let c = vec![1.0f32, -2.0, 0.5, 3.0];
        let rbm = BinaryRbm::from_parts(d, m, vec![0.0; d * m], b.clone(), c).unwrap();
        let p = AisParams::new()
            .schedule(BetaSchedule::Linear(50))
            .runs(8)
            .check()
            .unwrap();
        let est = ais_log_z_with_base(&rbm, &b, &p).unwrap();
        let exact = exact_log_z(&rbm).unwrap();
        assert!((est.log_z - exact).abs() < 1e-5, "{} vs {exact}", est.log_z);
        assert!(est.log_z_std < 1e-6 && (est.effective_runs() - 8.0).abs() < 1e-6);
    }

    #[test]
    fn ais_agrees_with_exact_log_z_on_random_models() {
        // 20 × 12 models with strong weights (sd 0.5 — energies spread over tens of nats). With
        // 2,000 βs and 100 runs AIS is far more precise than 0.1 nat on models this small; the
        // estimate must also lie inside its own ±3σ interval (widened by 0.02 for bias).
        for seed in 0..3 {
            let rbm = random_rbm(20, 12, 0.5, 100 + seed);
            let data = Matrix::from_fn(20, 50, |i, j| f32::from(u8::from((i + j) % 3 == 0)));
            let p = AisParams::new()
                .schedule(BetaSchedule::SmShaped(2000))
                .runs(100)
                .seed(seed)
                .check()
                .unwrap();
            let est = ais_log_z(&rbm, &data, &p).unwrap();
            let exact = exact_log_z(&rbm).unwrap();
            assert!(
                (est.log_z - exact).abs() < 0.1,
                "seed {seed}: AIS {} vs exact {exact}",
                est.log_z
            );
            assert!(
                est.log_z_lo - 0.02 <= exact && exact <= est.log_z_hi + 0.02,
                "seed {seed}: exact {exact} outside [{}, {}]",
                est.log_z_lo,
                est.log_z_hi
            );
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        // Products this small run sequentially inside faer, so here even the thread count does
        // not change the bits; for large models the guarantee is per thread count.
        let rbm = random_rbm(15, 9, 0.4, 7);
        let data = Matrix::from_fn(15, 10, |i, j| f32::from(u8::from((i * j) % 4 == 1)));
        let p = AisParams::new()
            .schedule(BetaSchedule::SmShaped(300))
            .runs(12)
            .seed(5)
            .check()
            .unwrap();
        let run = |threads| {
            crate::team::test_pool(threads).install(|| ais_log_z(&rbm, &data, &p).unwrap())
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a, b);
        let other = ais_log_z(&rbm, &data, &p.clone()).unwrap();
        assert_eq!(a.log_weights, other.log_weights);
        let p2 = AisParams::new()
            .schedule(BetaSchedule::SmShaped(300))
            .runs(12)
            .seed(6)
            .check()
            .unwrap();
        assert_ne!(
            ais_log_z(&rbm, &data, &p2).unwrap().log_weights,
            a.log_weights
        );
    }

    #[test]
    fn interval_follows_the_weights() {
        // Two runs with weights 1 and 3 (relative): mean 2, sd √2, σ_Ẑ/Ẑ = √2/(√2·2) = 0.5.
        let est = summarize(vec![0.0, 3f64.ln()], 1.0, 10);
        assert!((est.log_z - (1.0 + 2f64.ln())).abs() < 1e-12);
        assert!((est.log_z_std - 0.5).abs() < 1e-12);
        assert!((est.log_z_hi - (est.log_z + 2.5f64.ln())).abs() < 1e-12);
        assert_eq!(est.log_z_lo, f64::NEG_INFINITY);
    }
}
