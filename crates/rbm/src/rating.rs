//! The rating RBM for collaborative filtering (Salakhutdinov, Mnih & Hinton 2007): K-way softmax
//! visible units for the rated items only, binary hidden units, CD-T training with a schedule of
//! T, momentum or Adam, weight decay, the conditional variant (implicit "which items were rated")
//! and the factored variant (W = A·B); exact and mean-field prediction.
//!
//! The model is orientation-agnostic: rows of the training [`Csr`] are *cases* (users for the
//! user-based model, items for the item-based one) and columns are *visible units*.
//!
//! Layout, chosen for the training loop: `W[(i*K + k)*M + j]`, so a rated item's K×M block is
//! contiguous and a case costs |R(u)|×K×M, never D×K×M. A mini-batch runs in two parallel phases:
//! (1) over cases, the Gibbs chain writes each case's p(h|v⁰), p(h|vᵀ) and reconstruction into
//! its own slots; (2) over visible units, each unit's gradient is summed over the batch's cases
//! in a fixed order. Nothing is reduced across threads, so the result is bit-identical for any
//! thread count; every random draw comes from a stream keyed by (seed, epoch, batch, case).

use crate::error::{RbmError, Result};
use crate::linalg::{gemm, sigmoid};
use crate::random::{Purpose, Stream};
use crate::ratings::Csr;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;
use std::time::Instant;

/// How the visible units are reconstructed in the negative phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegativePhase {
    /// Sample one class per rated item from its softmax (as in the paper and the second source).
    Sample,
    /// Use the softmax probabilities themselves (less noise, K× more work in the last steps).
    MeanField,
}

/// How a rating is predicted from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictMethod {
    /// Exact: p(v_q^k|V) ∝ exp(b_q^k) Π_j (1 + exp(x_j + W_qj^k)).
    Exact,
    /// One pass of mean field: softmax_k(b_q^k + Σ_j σ(x_j) W_qj^k).
    MeanField,
}

/// How a class distribution becomes a rating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatingReadout {
    /// Σ_k value_k · p_k (the paper's choice; best for RMSE).
    Expected,
    /// The most probable class's value.
    Argmax,
}

/// The optimizer applied to the CD gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// SGD with momentum (the paper's choice).
    Momentum,
    /// Adam (Kingma & Ba) with the usual β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    Adam,
}

/// CD-T schedule: `(first_epoch, T)` steps, e.g. the paper's `[(0,1), (15,3), (25,5), (35,9)]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CdSchedule(pub Vec<(usize, usize)>);

impl CdSchedule {
    /// T fixed for all epochs.
    pub fn constant(t: usize) -> Self {
        CdSchedule(vec![(0, t)])
    }

    /// The paper's 1 → 3 → 5 → 9, switching at 40%, 60% and 80% of the epochs.
    pub fn paper(epochs: usize) -> Self {
        CdSchedule(vec![
            (0, 1),
            (epochs * 2 / 5, 3),
            (epochs * 3 / 5, 5),
            (epochs * 4 / 5, 9),
        ])
    }

    /// T for `epoch` (0-based).
    pub fn t_at(&self, epoch: usize) -> usize {
        self.0
            .iter()
            .filter(|(e, _)| *e <= epoch)
            .map(|&(_, t)| t)
            .last()
            .unwrap_or(1)
    }

    /// Parses `"1"` (constant), `"paper"`, or `"0:1,15:3,25:5"` (epoch:T pairs).
    pub fn parse(s: &str, epochs: usize) -> Result<Self> {
        let s = s.trim();
        if s == "paper" {
            return Ok(Self::paper(epochs));
        }
        if let Ok(t) = s.parse::<usize>() {
            return Ok(Self::constant(t));
        }
        let mut steps = Vec::new();
        for part in s.split(',') {
            let (e, t) = part
                .split_once(':')
                .and_then(|(e, t)| Some((e.trim().parse().ok()?, t.trim().parse().ok()?)))
                .ok_or_else(|| {
                    RbmError::param("cd", format!("`{part}` is not epoch:T (e.g. 0:1,15:3)"))
                })?;
            steps.push((e, t));
        }
        Ok(CdSchedule(steps))
    }
}

/// Hyperparameters of the rating RBM, unchecked; [`RatingRbmParams::check`] validates them.
/// Defaults follow the paper (M = 100, momentum 0.9, weight decay 0.001, mini-batches of users)
/// with the learning rate tuned on a validation split of MovieLens-100K.
#[derive(Clone, Debug, PartialEq)]
pub struct RatingRbmParams {
    /// Hidden units M.
    pub hidden: usize,
    /// Training epochs (upper bound when early stopping is on).
    pub epochs: usize,
    /// Cases per mini-batch.
    pub batch_size: usize,
    /// Learning rate for W (and D, A, B); the gradient is averaged over the mini-batch.
    pub learning_rate: f32,
    /// Learning rate for the biases.
    pub bias_learning_rate: f32,
    /// Momentum after the warm-up epochs.
    pub momentum: f32,
    /// Momentum during the first `momentum_warmup` epochs.
    pub initial_momentum: f32,
    /// Epochs at `initial_momentum`.
    pub momentum_warmup: usize,
    /// L2 weight decay on W (and D, A, B), not on biases.
    pub weight_decay: f32,
    /// CD-T schedule.
    pub cd: CdSchedule,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Negative-phase visible reconstruction.
    pub negative: NegativePhase,
    /// Conditional RBM: add the implicit "which items were rated" input D.
    pub conditional: bool,
    /// Factored RBM with this many factors C (W = A·B), or `None`.
    pub factors: Option<usize>,
    /// Standard deviation of the initial weights.
    pub init_std: f32,
    /// Stop when validation RMSE has not improved for this many epochs (needs validation data);
    /// the best epoch's parameters are kept.
    pub patience: Option<usize>,
    /// Prediction method used for validation (and stored as the model's default).
    pub predict: PredictMethod,
    /// Seed for every random stream.
    pub seed: u64,
}

impl Default for RatingRbmParams {
    fn default() -> Self {
        RatingRbmParams {
            hidden: 100,
            epochs: 40,
            batch_size: 100,
            learning_rate: 0.05,
            bias_learning_rate: 0.05,
            momentum: 0.9,
            initial_momentum: 0.5,
            momentum_warmup: 5,
            weight_decay: 0.001,
            cd: CdSchedule::constant(1),
            optimizer: Optimizer::Momentum,
            negative: NegativePhase::Sample,
            conditional: false,
            factors: None,
            init_std: 0.01,
            patience: None,
            predict: PredictMethod::MeanField,
            seed: 0,
        }
    }
}

/// Validated [`RatingRbmParams`]; only [`RatingRbmParams::check`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidRatingRbmParams(RatingRbmParams);

impl std::ops::Deref for ValidRatingRbmParams {
    type Target = RatingRbmParams;
    fn deref(&self) -> &RatingRbmParams {
        &self.0
    }
}

macro_rules! setter {
    ($name:ident, $t:ty) => {
        #[doc = concat!("Sets `", stringify!($name), "`.")]
        pub fn $name(mut self, v: $t) -> Self {
            self.$name = v;
            self
        }
    };
}

impl RatingRbmParams {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    setter!(hidden, usize);
    setter!(epochs, usize);
    setter!(batch_size, usize);
    setter!(learning_rate, f32);
    setter!(bias_learning_rate, f32);
    setter!(momentum, f32);
    setter!(initial_momentum, f32);
    setter!(momentum_warmup, usize);
    setter!(weight_decay, f32);
    setter!(cd, CdSchedule);
    setter!(optimizer, Optimizer);
    setter!(negative, NegativePhase);
    setter!(conditional, bool);
    setter!(factors, Option<usize>);
    setter!(init_std, f32);
    setter!(patience, Option<usize>);
    setter!(predict, PredictMethod);
    setter!(seed, u64);

    /// Validates every field.
    pub fn check(self) -> Result<ValidRatingRbmParams> {
        let pos = |name, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(RbmError::param(name, format!("must be finite and > 0, got {v}")))
            }
        };
        if self.hidden == 0 || self.hidden > 1 << 16 {
            return Err(RbmError::param("hidden", "must be in 1..=65536"));
        }
        if self.epochs == 0 {
            return Err(RbmError::param("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(RbmError::param("batch-size", "must be at least 1"));
        }
        pos("learning-rate", self.learning_rate)?;
        pos("bias-learning-rate", self.bias_learning_rate)?;
        pos("init-std", self.init_std)?;
        for (name, m) in [
            ("momentum", self.momentum),
            ("initial-momentum", self.initial_momentum),
        ] {
            if !(0.0..1.0).contains(&m) {
                return Err(RbmError::param(name, format!("must be in [0, 1), got {m}")));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(RbmError::param("weight-decay", "must be finite and >= 0"));
        }
        if self.cd.0.is_empty() || self.cd.0.iter().any(|&(_, t)| t == 0 || t > 1000) {
            return Err(RbmError::param("cd", "every T must be in 1..=1000"));
        }
        if !self.cd.0.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(RbmError::param("cd", "schedule epochs must increase"));
        }
        if let Some(c) = self.factors
            && (c == 0 || c > 4096)
        {
            return Err(RbmError::param("factors", "must be in 1..=4096"));
        }
        if self.patience == Some(0) {
            return Err(RbmError::param("patience", "must be at least 1"));
        }
        Ok(ValidRatingRbmParams(self))
    }
}

/// A trained (or initialized) rating RBM.
#[derive(Clone, Debug, PartialEq)]
pub struct RatingRbm {
    /// Visible units D (items for the user-based model).
    pub d: usize,
    /// Rating classes K.
    pub k: usize,
    /// Hidden units M.
    pub m: usize,
    /// Weights, `W[(i*K + k)*M + j]`. For the factored model this is A·B, kept in sync.
    pub w: Vec<f32>,
    /// Visible biases, `b[i*K + k]`.
    pub b: Vec<f32>,
    /// Hidden biases, `c[j]`.
    pub c: Vec<f32>,
    /// Conditional weights `D[i*M + j]` (implicit "rated" input), if conditional.
    pub dmat: Option<Vec<f32>>,
    /// Factors `(C, A[(i*K + k)*C + c], B[c*M + j])`, if factored.
    pub factors: Option<(usize, Vec<f32>, Vec<f32>)>,
}

/// One epoch's report for the progress callback.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// CD steps used.
    pub t: usize,
    /// Wall time of the training part of the epoch.
    pub seconds: f64,
    /// Mean squared difference between data and reconstruction probabilities (a rough monitor).
    pub recon_error: f64,
    /// Validation RMSE, when validation data was given.
    pub valid_rmse: Option<f64>,
}

/// What [`RatingRbm::fit`] learns from.
pub struct TrainData<'a> {
    /// Rows = cases, columns = visible units, with rating classes.
    pub cases: &'a Csr,
    /// Number of visible units D.
    pub d: usize,
    /// Rating values per class (K = len).
    pub values: &'a [f32],
    /// Conditional RBM: which visible units each case is known to have rated (classes ignored);
    /// defaults to `cases` when `None`.
    pub implicit: Option<&'a Csr>,
    /// Validation triples `(case, visible, value)` for early stopping and monitoring.
    pub validation: &'a [(u32, u32, f32)],
}

/// Summary of a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct FitSummary {
    /// Epochs run.
    pub epochs: usize,
    /// The epoch whose parameters were kept (1-based).
    pub best_epoch: usize,
    /// Best validation RMSE, if validation data was given.
    pub best_valid_rmse: Option<f64>,
    /// Mean training seconds per epoch (excluding validation).
    pub seconds_per_epoch: f64,
}

/// Optimizer state for one parameter tensor.
struct Slot {
    m1: Vec<f32>,
    m2: Vec<f32>,
}

impl Slot {
    fn new(n: usize, adam: bool) -> Self {
        Slot {
            m1: vec![0.0; n],
            m2: if adam { vec![0.0; n] } else { Vec::new() },
        }
    }
}

struct StepCfg {
    lr: f32,
    decay: f32,
    momentum: f32,
    adam_t: i32,
}

const OPT_CHUNK: usize = 4096;

/// One optimizer step on `p` with ascent direction `g` (already averaged over the batch).
fn opt_step(p: &mut [f32], g: &[f32], s: &mut Slot, cfg: &StepCfg, adam: bool) {
    if adam {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(cfg.adam_t);
        let c2 = 1.0 - b2.powi(cfg.adam_t);
        let lr = cfg.lr * c2.sqrt() / c1;
        p.par_chunks_mut(OPT_CHUNK)
            .zip(g.par_chunks(OPT_CHUNK))
            .zip(s.m1.par_chunks_mut(OPT_CHUNK))
            .zip(s.m2.par_chunks_mut(OPT_CHUNK))
            .for_each(|(((p, g), m1), m2)| {
                for n in 0..p.len() {
                    let gr = g[n] - cfg.decay * p[n];
                    m1[n] = b1 * m1[n] + (1.0 - b1) * gr;
                    m2[n] = b2 * m2[n] + (1.0 - b2) * gr * gr;
                    p[n] += lr * m1[n] / (m2[n].sqrt() + eps);
                }
            });
    } else {
        p.par_chunks_mut(OPT_CHUNK)
            .zip(g.par_chunks(OPT_CHUNK))
            .zip(s.m1.par_chunks_mut(OPT_CHUNK))
            .for_each(|((p, g), v)| {
                for n in 0..p.len() {
                    v[n] = cfg.momentum * v[n] + cfg.lr * (g[n] - cfg.decay * p[n]);
                    p[n] += v[n];
                }
            });
    }
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[inline(always)]
fn add(y: &mut [f32], x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// Dot product with 8 independent accumulators so it vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// In-place softmax; returns nothing, `z` holds probabilities after.
#[inline]
fn softmax(z: &mut [f32]) {
    let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - mx).exp();
        s += *v;
    }
    let inv = 1.0 / s;
    for v in z.iter_mut() {
        *v *= inv;
    }
}

/// Per-case slots of one mini-batch (phase 1 writes them, phase 2 reads them).
struct CaseWork<'a> {
    case: usize,
    p0: &'a mut [f32],
    p1: &'a mut [f32],
    base: &'a mut [f32],
    vneg: &'a mut [f32],
}

impl RatingRbm {
    /// A model with W ~ N(0, init_std²) (or A, B so that W has about that spread), c = 0,
    /// conditional D = 0, and b from the log-frequencies of each visible unit's classes in
    /// `cases` (add-one smoothed, so never-seen classes get a finite bias).
    pub fn init(params: &ValidRatingRbmParams, cases: &Csr, d: usize, k: usize) -> Self {
        let m = params.hidden;
        let mut counts = vec![1.0f32; d * k];
        for (&i, &cl) in cases.cols.iter().zip(&cases.classes) {
            counts[i as usize * k + cl as usize] += 1.0;
        }
        let mut b = vec![0.0f32; d * k];
        for i in 0..d {
            let tot: f32 = counts[i * k..(i + 1) * k].iter().sum();
            for kk in 0..k {
                b[i * k + kk] = (counts[i * k + kk] / tot).ln();
            }
        }
        let normal_vec = |n: usize, std: f32, row: u64| -> Vec<f32> {
            let mut s = Stream::new(params.seed, Purpose::Init, 0, 0, row);
            (0..n).map(|_| s.normal() as f32 * std).collect()
        };
        let (w, factors) = match params.factors {
            None => (normal_vec(d * k * m, params.init_std, 0), None),
            Some(cf) => {
                // Var(Σ_c A B) = C σ_A² σ_B²: pick σ_A = σ_B = sqrt(init_std / sqrt(C)).
                let s = (params.init_std / (cf as f32).sqrt()).sqrt();
                let a = normal_vec(d * k * cf, s, 1);
                let bf = normal_vec(cf * m, s, 2);
                let mut w = vec![0.0; d * k * m];
                factor_product(&mut w, &a, &bf, d * k, cf, m);
                (w, Some((cf, a, bf)))
            }
        };
        RatingRbm {
            d,
            k,
            m,
            w,
            b,
            c: vec![0.0; m],
            dmat: params.conditional.then(|| vec![0.0; d * m]),
            factors,
        }
    }

    /// Checks that the arrays have consistent sizes (after loading from a file).
    pub fn validate(&self) -> Result<()> {
        let (d, k, m) = (self.d, self.k, self.m);
        let ok = self.w.len() == d * k * m
            && self.b.len() == d * k
            && self.c.len() == m
            && self.dmat.as_ref().is_none_or(|x| x.len() == d * m)
            && self
                .factors
                .as_ref()
                .is_none_or(|(cf, a, b)| a.len() == d * k * cf && b.len() == cf * m);
        if !ok {
            return Err(RbmError::Shape(format!(
                "rating RBM arrays do not match D={d}, K={k}, M={m}"
            )));
        }
        Ok(())
    }

    /// Hidden input x = c + Σ_{i∈R} W_i^{k_i} + Σ_{i∈implicit} D_i, written into `x`.
    pub fn hidden_input(&self, items: &[u32], classes: &[u8], implicit: &[u32], x: &mut [f32]) {
        let (k, m) = (self.k, self.m);
        x.copy_from_slice(&self.c);
        if let Some(dm) = &self.dmat {
            for &i in implicit {
                add(x, &dm[i as usize * m..(i as usize + 1) * m]);
            }
        }
        for (&i, &cl) in items.iter().zip(classes) {
            let o = (i as usize * k + cl as usize) * m;
            add(x, &self.w[o..o + m]);
        }
    }

    /// The class distribution of visible unit `q` given hidden input `x` (which must not
    /// include `q`'s own rating) and `ph` = σ(x), into `out` (length K).
    pub fn predict_dist(
        &self,
        x: &[f32],
        ph: &[f32],
        q: usize,
        method: PredictMethod,
        out: &mut [f32],
    ) {
        let (k, m) = (self.k, self.m);
        match method {
            PredictMethod::Exact => {
                for kk in 0..k {
                    let wq = &self.w[(q * k + kk) * m..(q * k + kk + 1) * m];
                    let mut s = self.b[q * k + kk] as f64;
                    for (&xj, &wj) in x.iter().zip(wq) {
                        s += softplus32(xj + wj) as f64 - softplus32(xj) as f64;
                    }
                    out[kk] = s as f32;
                }
            }
            PredictMethod::MeanField => {
                for kk in 0..k {
                    let wq = &self.w[(q * k + kk) * m..(q * k + kk + 1) * m];
                    out[kk] = self.b[q * k + kk] + dot(ph, wq);
                }
            }
        }
        softmax(&mut out[..k]);
    }

    /// Predicts `(case, visible)` pairs, conditioning each case on its row of `cases` (and
    /// `implicit`, for the conditional model). Cases are processed in parallel; output order
    /// follows `pairs`. Returns class distributions, K per pair.
    pub fn predict_pairs(
        &self,
        cases: &Csr,
        implicit: Option<&Csr>,
        pairs: &[(u32, u32)],
        method: PredictMethod,
    ) -> Vec<f32> {
        let k = self.k;
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&n| pairs[n].0);
        let mut out = vec![0.0f32; pairs.len() * k];
        // Group by case; each group writes its own outputs, gathered afterwards.
        let groups: Vec<&[usize]> = order.chunk_by(|&a, &b| pairs[a].0 == pairs[b].0).collect();
        let results: Vec<Vec<f32>> = groups
            .par_iter()
            .map(|g| {
                let case = pairs[g[0]].0 as usize;
                let mut x = vec![0.0f32; self.m];
                let mut ph = vec![0.0f32; self.m];
                let (items, classes) = if case < cases.rows() {
                    cases.row(case)
                } else {
                    (&[][..], &[][..])
                };
                let imp = implicit
                    .filter(|c| case < c.rows())
                    .map_or(items, |c| c.row(case).0);
                self.hidden_input(items, classes, imp, &mut x);
                for (p, &xj) in ph.iter_mut().zip(&x) {
                    *p = sigmoid(xj);
                }
                let mut res = vec![0.0f32; g.len() * k];
                for (n, &p) in g.iter().enumerate() {
                    self.predict_dist(&x, &ph, pairs[p].1 as usize, method, &mut res[n * k..(n + 1) * k]);
                }
                res
            })
            .collect();
        for (g, res) in groups.iter().zip(results) {
            for (n, &p) in g.iter().enumerate() {
                out[p * k..(p + 1) * k].copy_from_slice(&res[n * k..(n + 1) * k]);
            }
        }
        out
    }

    /// Turns a class distribution into a rating.
    pub fn readout(dist: &[f32], values: &[f32], how: RatingReadout) -> f32 {
        match how {
            RatingReadout::Expected => dist.iter().zip(values).map(|(p, v)| p * v).sum(),
            RatingReadout::Argmax => {
                let best = dist
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |a, (n, &p)| if p > a.1 { (n, p) } else { a });
                values[best.0]
            }
        }
    }

    /// Phase 1 for one case: the CD-T chain. Writes p(h|v⁰) into `p0`, p(h|vᵀ) into `p1`, the
    /// negative visible (one-hot samples or probabilities, K per rated item) into `vneg`, and
    /// c + implicit input into `base`. Returns the squared reconstruction error.
    #[allow(clippy::too_many_arguments)]
    fn chain(
        &self,
        items: &[u32],
        classes: &[u8],
        implicit: &[u32],
        t_steps: usize,
        negative: NegativePhase,
        rng: &mut Stream,
        w: &mut CaseWork<'_>,
    ) -> f64 {
        let (k, m) = (self.k, self.m);
        w.base.copy_from_slice(&self.c);
        if let Some(dm) = &self.dmat {
            for &i in implicit {
                add(w.base, &dm[i as usize * m..(i as usize + 1) * m]);
            }
        }
        w.p0.copy_from_slice(w.base);
        for (&i, &cl) in items.iter().zip(classes) {
            let o = (i as usize * k + cl as usize) * m;
            add(w.p0, &self.w[o..o + m]);
        }
        for x in w.p0.iter_mut() {
            *x = sigmoid(*x);
        }
        // h⁰ ~ p0, held in the p1 slot while the visible layer is reconstructed.
        w.p1.copy_from_slice(w.p0);
        rng.bernoulli_in_place(w.p1);
        let mut err = 0.0f64;
        for t in 0..t_steps {
            for (r, &i) in items.iter().enumerate() {
                let z = &mut w.vneg[r * k..(r + 1) * k];
                for (kk, zk) in z.iter_mut().enumerate() {
                    let o = (i as usize * k + kk) * m;
                    *zk = self.b[i as usize * k + kk] + dot(w.p1, &self.w[o..o + m]);
                }
                softmax(z);
                if t + 1 == t_steps {
                    let cl = classes[r] as usize;
                    for (kk, &p) in z.iter().enumerate() {
                        let target = if kk == cl { 1.0 } else { 0.0 };
                        err += f64::from((target - p) * (target - p));
                    }
                }
                if negative == NegativePhase::Sample {
                    let u = rng.uniform();
                    let mut acc = 0.0;
                    let mut pick = k - 1;
                    for (kk, &p) in z.iter().enumerate() {
                        acc += p;
                        if u < acc {
                            pick = kk;
                            break;
                        }
                    }
                    z.fill(0.0);
                    z[pick] = 1.0;
                }
            }
            w.p1.copy_from_slice(w.base);
            for (r, &i) in items.iter().enumerate() {
                let z = &w.vneg[r * k..(r + 1) * k];
                for (kk, &p) in z.iter().enumerate() {
                    if p != 0.0 {
                        let o = (i as usize * k + kk) * m;
                        axpy(w.p1, p, &self.w[o..o + m]);
                    }
                }
            }
            for x in w.p1.iter_mut() {
                *x = sigmoid(*x);
            }
            if t + 1 < t_steps {
                rng.bernoulli_in_place(w.p1);
            }
        }
        err
    }

    /// Trains a model from scratch with CD-T; calls `progress` after every epoch.
    pub fn fit(
        params: &ValidRatingRbmParams,
        data: &TrainData<'_>,
        progress: &mut dyn FnMut(&EpochReport),
    ) -> Result<(RatingRbm, FitSummary)> {
        let k = data.values.len();
        if k < 2 || k > 255 {
            return Err(RbmError::param("scale", "need 2 to 255 rating classes"));
        }
        if data.cases.cols.iter().any(|&i| i as usize >= data.d)
            || data.cases.classes.iter().any(|&c| c as usize >= k)
        {
            return Err(RbmError::Shape("training data outside D × K".into()));
        }
        let implicit = data.implicit.unwrap_or(data.cases);
        if implicit.rows() != data.cases.rows() || implicit.cols.iter().any(|&i| i as usize >= data.d) {
            return Err(RbmError::Shape("implicit data does not match the cases".into()));
        }
        let model = RatingRbm::init(params, data.cases, data.d, k);
        model.train(params, data, progress)
    }

    /// Continues training `self` (the parameters are updated in place; the returned model is
    /// the best epoch's when early stopping is on, else the last).
    pub fn train(
        mut self,
        params: &ValidRatingRbmParams,
        data: &TrainData<'_>,
        progress: &mut dyn FnMut(&EpochReport),
    ) -> Result<(RatingRbm, FitSummary)> {
        let (d, k, m) = (self.d, self.k, self.m);
        let cases = data.cases;
        let implicit = data.implicit.unwrap_or(cases);
        let adam = params.optimizer == Optimizer::Adam;
        let active: Vec<usize> = (0..cases.rows())
            .filter(|&r| cases.offsets[r + 1] > cases.offsets[r])
            .collect();
        let bs = params.batch_size;

        let mut gw = vec![0.0f32; d * k * m];
        let mut gb = vec![0.0f32; d * k];
        let mut gc = vec![0.0f32; m];
        let mut gd = if self.dmat.is_some() { vec![0.0f32; d * m] } else { Vec::new() };
        let (mut gfa, mut gfb) = match &self.factors {
            Some((cf, _, _)) => (vec![0.0f32; d * k * cf], vec![0.0f32; cf * m]),
            None => (Vec::new(), Vec::new()),
        };
        let mut s_w = Slot::new(if self.factors.is_some() { 0 } else { d * k * m }, adam);
        let mut s_b = Slot::new(d * k, adam);
        let mut s_c = Slot::new(m, adam);
        let mut s_d = Slot::new(gd.len(), adam);
        let mut s_fa = Slot::new(gfa.len(), adam);
        let mut s_fb = Slot::new(gfb.len(), adam);

        // Per-batch buffers, grown once to the largest batch.
        let mut p0 = vec![0.0f32; bs * m];
        let mut p1 = vec![0.0f32; bs * m];
        let mut base = vec![0.0f32; bs * m];
        let mut vneg: Vec<f32> = Vec::new();
        let mut rec_off: Vec<usize> = Vec::with_capacity(bs + 1);
        let mut err_per_case = vec![0.0f64; bs];
        // Batch index by visible unit: (local case, position in the batch's ratings).
        let mut by_item_ptr = vec![0usize; d + 1];
        let mut by_item: Vec<(u32, u32, u8)> = Vec::new();
        let mut imp_ptr = vec![0usize; d + 1];
        let mut imp_ent: Vec<u32> = Vec::new();

        let mut best: Option<(f64, usize, Option<RatingRbm>)> = None;
        let mut secs_total = 0.0;
        let mut epochs_run = 0;
        let mut adam_t = 0i32;
        for epoch in 0..params.epochs {
            let t0 = Instant::now();
            let t_steps = params.cd.t_at(epoch);
            let momentum = if epoch < params.momentum_warmup {
                params.initial_momentum
            } else {
                params.momentum
            };
            let perm = Stream::new(params.seed, Purpose::Shuffle, epoch as u64, 0, 0)
                .permutation(active.len());
            let mut err_sum = 0.0f64;
            let mut n_rated = 0usize;
            for (bi, chunk) in perm.chunks(bs).enumerate() {
                let nb = chunk.len();
                rec_off.clear();
                rec_off.push(0);
                for &p in chunk {
                    let r = active[p];
                    rec_off.push(rec_off.last().unwrap() + cases.offsets[r + 1] - cases.offsets[r]);
                }
                let nr = *rec_off.last().unwrap();
                n_rated += nr;
                vneg.resize(nr * k, 0.0);

                // Phase 1: the chains, in parallel over cases, each in its own slots.
                {
                    let mut work: Vec<CaseWork<'_>> = Vec::with_capacity(nb);
                    let mut rest_v: &mut [f32] = &mut vneg[..];
                    for ((((&p, a), b), c), n) in chunk
                        .iter()
                        .zip(p0.chunks_mut(m))
                        .zip(p1.chunks_mut(m))
                        .zip(base.chunks_mut(m))
                        .zip(0..)
                    {
                        let len = (rec_off[n + 1] - rec_off[n]) * k;
                        let (v, r) = std::mem::take(&mut rest_v).split_at_mut(len);
                        rest_v = r;
                        work.push(CaseWork { case: active[p], p0: a, p1: b, base: c, vneg: v });
                    }
                    let model = &self;
                    work.par_iter_mut()
                        .zip(err_per_case[..nb].par_iter_mut())
                        .for_each(|(w, e)| {
                            let (items, classes) = cases.row(w.case);
                            let imp = implicit.row(w.case).0;
                            let mut rng = Stream::new(
                                params.seed,
                                Purpose::Train,
                                epoch as u64,
                                bi as u64,
                                w.case as u64,
                            );
                            *e = model.chain(items, classes, imp, t_steps, params.negative, &mut rng, w);
                        });
                }
                err_sum += err_per_case[..nb].iter().sum::<f64>();

                // Index the batch's ratings by visible unit (counting sort, fixed order).
                by_item_ptr.fill(0);
                for &p in chunk {
                    for &i in cases.row(active[p]).0 {
                        by_item_ptr[i as usize + 1] += 1;
                    }
                }
                for i in 0..d {
                    by_item_ptr[i + 1] += by_item_ptr[i];
                }
                by_item.resize(nr, (0, 0, 0));
                {
                    let mut fill = by_item_ptr.clone();
                    for (n, &p) in chunk.iter().enumerate() {
                        let (its, cls) = cases.row(active[p]);
                        for (r, (&i, &cl)) in its.iter().zip(cls).enumerate() {
                            let slot = &mut fill[i as usize];
                            by_item[*slot] = (n as u32, (rec_off[n] + r) as u32, cl);
                            *slot += 1;
                        }
                    }
                }

                // Phase 2: gradients, in parallel over visible units.
                let inv_b = 1.0 / nb as f32;
                {
                    let (p0, p1, vneg, by_item, by_item_ptr) = (&p0, &p1, &vneg, &by_item, &by_item_ptr);
                    gw.par_chunks_mut(k * m)
                        .zip(gb.par_chunks_mut(k))
                        .enumerate()
                        .for_each(|(i, (gwi, gbi))| {
                            gwi.fill(0.0);
                            gbi.fill(0.0);
                            for &(n, r, cl) in &by_item[by_item_ptr[i]..by_item_ptr[i + 1]] {
                                let (n, r, cl) = (n as usize, r as usize, cl as usize);
                                let a = &p0[n * m..(n + 1) * m];
                                let bneg = &p1[n * m..(n + 1) * m];
                                axpy(&mut gwi[cl * m..(cl + 1) * m], inv_b, a);
                                gbi[cl] += inv_b;
                                for (kk, &v) in vneg[r * k..(r + 1) * k].iter().enumerate() {
                                    if v != 0.0 {
                                        axpy(&mut gwi[kk * m..(kk + 1) * m], -v * inv_b, bneg);
                                        gbi[kk] -= v * inv_b;
                                    }
                                }
                            }
                        });
                }
                gc.fill(0.0);
                for n in 0..nb {
                    for j in 0..m {
                        gc[j] += (p0[n * m + j] - p1[n * m + j]) * inv_b;
                    }
                }
                if self.dmat.is_some() {
                    imp_ptr.fill(0);
                    for &p in chunk {
                        for &i in implicit.row(active[p]).0 {
                            imp_ptr[i as usize + 1] += 1;
                        }
                    }
                    for i in 0..d {
                        imp_ptr[i + 1] += imp_ptr[i];
                    }
                    imp_ent.resize(imp_ptr[d], 0);
                    let mut fill = imp_ptr.clone();
                    for (n, &p) in chunk.iter().enumerate() {
                        for &i in implicit.row(active[p]).0 {
                            imp_ent[fill[i as usize]] = n as u32;
                            fill[i as usize] += 1;
                        }
                    }
                    let (p0, p1, imp_ent, imp_ptr) = (&p0, &p1, &imp_ent, &imp_ptr);
                    gd.par_chunks_mut(m).enumerate().for_each(|(i, g)| {
                        g.fill(0.0);
                        for &n in &imp_ent[imp_ptr[i]..imp_ptr[i + 1]] {
                            let n = n as usize;
                            for j in 0..m {
                                g[j] += (p0[n * m + j] - p1[n * m + j]) * inv_b;
                            }
                        }
                    });
                }

                // Optimizer steps.
                adam_t += 1;
                let wcfg = StepCfg { lr: params.learning_rate, decay: params.weight_decay, momentum, adam_t };
                let bcfg = StepCfg { lr: params.bias_learning_rate, decay: 0.0, momentum, adam_t };
                match &mut self.factors {
                    None => opt_step(&mut self.w, &gw, &mut s_w, &wcfg, adam),
                    Some((cf, a, bf)) => {
                        let cf = *cf;
                        // gA (C×DK, column-major) = Bᵀ gW ; gB (M×C) = gW Aᵀ.
                        let gw_ref = MatRef::from_column_major_slice(&gw, m, d * k);
                        let b_ref = MatRef::from_column_major_slice(bf, m, cf);
                        let a_ref = MatRef::from_column_major_slice(a, cf, d * k);
                        let par = crate::linalg::current_par();
                        gemm(MatMut::from_column_major_slice_mut(&mut gfa, cf, d * k), Accum::Replace, b_ref.transpose(), gw_ref, 1.0, par);
                        gemm(MatMut::from_column_major_slice_mut(&mut gfb, m, cf), Accum::Replace, gw_ref, a_ref.transpose(), 1.0, par);
                        opt_step(a, &gfa, &mut s_fa, &wcfg, adam);
                        opt_step(bf, &gfb, &mut s_fb, &wcfg, adam);
                        factor_product(&mut self.w, a, bf, d * k, cf, m);
                    }
                }
                opt_step(&mut self.b, &gb, &mut s_b, &bcfg, adam);
                opt_step(&mut self.c, &gc, &mut s_c, &bcfg, adam);
                if let Some(dm) = &mut self.dmat {
                    opt_step(dm, &gd, &mut s_d, &wcfg, adam);
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            secs_total += secs;
            epochs_run = epoch + 1;
            let valid_rmse = (!data.validation.is_empty())
                .then(|| self.validation_rmse(cases, data.implicit, data.validation, data.values, params.predict));
            progress(&EpochReport {
                epoch: epoch + 1,
                t: t_steps,
                seconds: secs,
                recon_error: err_sum / n_rated.max(1) as f64,
                valid_rmse,
            });
            if let Some(v) = valid_rmse
                && best.as_ref().is_none_or(|b| v < b.0)
            {
                let snapshot = params.patience.map(|_| self.clone());
                best = Some((v, epoch + 1, snapshot));
            }
            if let (Some(pat), Some(b)) = (params.patience, &best)
                && epoch + 1 - b.1 >= pat
            {
                break;
            }
        }
        let best_valid_rmse = best.as_ref().map(|b| b.0);
        let (model, best_epoch) = match best {
            Some((_, e, Some(snap))) => (snap, e),
            _ => (self, epochs_run),
        };
        Ok((
            model,
            FitSummary {
                epochs: epochs_run,
                best_epoch,
                best_valid_rmse,
                seconds_per_epoch: secs_total / epochs_run.max(1) as f64,
            },
        ))
    }

    /// RMSE of expected-value predictions on `(case, visible, value)` triples whose case has
    /// ratings in `cases` and whose visible unit is within D.
    pub fn validation_rmse(
        &self,
        cases: &Csr,
        implicit: Option<&Csr>,
        triples: &[(u32, u32, f32)],
        values: &[f32],
        method: PredictMethod,
    ) -> f64 {
        let pairs: Vec<(u32, u32)> = triples
            .iter()
            .filter(|t| (t.0 as usize) < cases.rows() && (t.1 as usize) < self.d)
            .map(|t| (t.0, t.1))
            .collect();
        let truth: Vec<f32> = triples
            .iter()
            .filter(|t| (t.0 as usize) < cases.rows() && (t.1 as usize) < self.d)
            .map(|t| t.2)
            .collect();
        let dist = self.predict_pairs(cases, implicit, &pairs, method);
        let k = self.k;
        let se: f64 = truth
            .iter()
            .enumerate()
            .map(|(n, &y)| {
                let p = Self::readout(&dist[n * k..(n + 1) * k], values, RatingReadout::Expected);
                f64::from((p - y) * (p - y))
            })
            .sum();
        (se / truth.len().max(1) as f64).sqrt()
    }
}

/// `softplus` in f32 (stable).
#[inline(always)]
fn softplus32(x: f32) -> f32 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// W (rows × m, row-major) = A (rows × c, row-major) · B (c × m, row-major).
fn factor_product(w: &mut [f32], a: &[f32], b: &[f32], rows: usize, c: usize, m: usize) {
    let a_ref = MatRef::from_column_major_slice(a, c, rows);
    let b_ref = MatRef::from_column_major_slice(b, m, c);
    // Column-major: Wc (m × rows) = Bc (m × c) · Ac (c × rows).
    gemm(
        MatMut::from_column_major_slice_mut(w, m, rows),
        Accum::Replace,
        b_ref,
        a_ref,
        1.0,
        crate::linalg::current_par(),
    );
}
