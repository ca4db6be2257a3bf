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

#![allow(clippy::needless_range_loop)] // index loops over K and M read clearer here

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
            .rfind(|(e, _)| *e <= epoch)
            .map(|&(_, t)| t)
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
            epochs: 30,
            batch_size: 100,
            learning_rate: 0.1,
            bias_learning_rate: 0.1,
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
                Err(RbmError::param(
                    name,
                    format!("must be finite and > 0, got {v}"),
                ))
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

/// Buffers and gradients of one mini-batch, allocated once per training run.
pub(crate) struct BatchGrad {
    p0: Vec<f32>,
    p1: Vec<f32>,
    base: Vec<f32>,
    /// Negative-phase visible units, K per rating of the batch.
    pub(crate) vneg: Vec<f32>,
    rec_off: Vec<usize>,
    err_per_case: Vec<f64>,
    by_item_ptr: Vec<usize>,
    by_item: Vec<(u32, u32, u8)>,
    imp_ptr: Vec<usize>,
    imp_ent: Vec<u32>,
    /// Gradient of W.
    pub(crate) gw: Vec<f32>,
    /// Gradient of b.
    pub(crate) gb: Vec<f32>,
    /// Gradient of c.
    pub(crate) gc: Vec<f32>,
    /// Gradient of D (conditional), else empty.
    pub(crate) gd: Vec<f32>,
}

impl BatchGrad {
    pub(crate) fn new(d: usize, k: usize, m: usize, bs: usize, conditional: bool) -> Self {
        BatchGrad {
            p0: vec![0.0; bs * m],
            p1: vec![0.0; bs * m],
            base: vec![0.0; bs * m],
            vneg: Vec::new(),
            rec_off: Vec::with_capacity(bs + 1),
            err_per_case: vec![0.0; bs],
            by_item_ptr: vec![0; d + 1],
            by_item: Vec::new(),
            imp_ptr: vec![0; d + 1],
            imp_ent: Vec::new(),
            gw: vec![0.0; d * k * m],
            gb: vec![0.0; d * k],
            gc: vec![0.0; m],
            gd: if conditional {
                vec![0.0; d * m]
            } else {
                Vec::new()
            },
        }
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
    /// `implicit`, for the conditional model); a pair the row already holds is predicted from
    /// the row's other ratings. Cases are processed in parallel; output order
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
                let (mut x2, mut ph2) = (vec![0.0f32; self.m], vec![0.0f32; self.m]);
                for (n, &p) in g.iter().enumerate() {
                    let q = pairs[p].1 as usize;
                    let out = &mut res[n * k..(n + 1) * k];
                    match items.binary_search(&(q as u32)) {
                        // Already rated: predict it from the case's other ratings.
                        Ok(pos) => {
                            let o = (q * k + classes[pos] as usize) * self.m;
                            for j in 0..self.m {
                                x2[j] = x[j] - self.w[o + j];
                                ph2[j] = sigmoid(x2[j]);
                            }
                            self.predict_dist(&x2, &ph2, q, method, out);
                        }
                        Err(_) => self.predict_dist(&x, &ph, q, method, out),
                    }
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
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |a, (n, &p)| if p > a.1 { (n, p) } else { a },
                    );
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

    /// One mini-batch's CD-T gradient (ascent direction, averaged over the batch) into `g`:
    /// phase 1 runs each case's chain in parallel, phase 2 sums each visible unit's statistics
    /// over the batch in a fixed order. `key` = (seed, epoch, batch) keys the random streams.
    /// Returns (squared reconstruction error, ratings in the batch).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_gradient(
        &self,
        cases: &Csr,
        implicit: &Csr,
        batch: &[usize],
        t_steps: usize,
        negative: NegativePhase,
        key: (u64, u64, u64),
        g: &mut BatchGrad,
    ) -> (f64, usize) {
        let (d, k, m) = (self.d, self.k, self.m);
        let BatchGrad {
            p0,
            p1,
            base,
            vneg,
            rec_off,
            err_per_case,
            by_item_ptr,
            by_item,
            imp_ptr,
            imp_ent,
            gw,
            gb,
            gc,
            gd,
        } = g;
        if p0.len() < batch.len() * m {
            p0.resize(batch.len() * m, 0.0);
            p1.resize(batch.len() * m, 0.0);
            base.resize(batch.len() * m, 0.0);
            err_per_case.resize(batch.len(), 0.0);
        }
        let nb = batch.len();
        rec_off.clear();
        rec_off.push(0);
        for &r in batch {
            rec_off.push(rec_off.last().unwrap() + cases.offsets[r + 1] - cases.offsets[r]);
        }
        let nr = *rec_off.last().unwrap();
        vneg.resize(nr * k, 0.0);

        // Phase 1: the chains, in parallel over cases, each in its own slots.
        {
            let mut work: Vec<CaseWork<'_>> = Vec::with_capacity(nb);
            let mut rest_v: &mut [f32] = &mut vneg[..];
            for ((((&p, a), b), c), n) in batch
                .iter()
                .zip(p0.chunks_mut(m))
                .zip(p1.chunks_mut(m))
                .zip(base.chunks_mut(m))
                .zip(0..)
            {
                let len = (rec_off[n + 1] - rec_off[n]) * k;
                let (v, r) = std::mem::take(&mut rest_v).split_at_mut(len);
                rest_v = r;
                work.push(CaseWork {
                    case: p,
                    p0: a,
                    p1: b,
                    base: c,
                    vneg: v,
                });
            }
            let model = &self;
            work.par_iter_mut()
                .zip(err_per_case[..nb].par_iter_mut())
                .for_each(|(w, e)| {
                    let (items, classes) = cases.row(w.case);
                    let imp = implicit.row(w.case).0;
                    let mut rng = Stream::new(key.0, Purpose::Train, key.1, key.2, w.case as u64);
                    *e = model.chain(items, classes, imp, t_steps, negative, &mut rng, w);
                });
        }
        let err = err_per_case[..nb].iter().sum::<f64>();

        // Index the batch's ratings by visible unit (counting sort, fixed order).
        by_item_ptr.fill(0);
        for &p in batch {
            for &i in cases.row(p).0 {
                by_item_ptr[i as usize + 1] += 1;
            }
        }
        for i in 0..d {
            by_item_ptr[i + 1] += by_item_ptr[i];
        }
        by_item.resize(nr, (0, 0, 0));
        {
            let mut fill = by_item_ptr.clone();
            for (n, &p) in batch.iter().enumerate() {
                let (its, cls) = cases.row(p);
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
            for &p in batch {
                for &i in implicit.row(p).0 {
                    imp_ptr[i as usize + 1] += 1;
                }
            }
            for i in 0..d {
                imp_ptr[i + 1] += imp_ptr[i];
            }
            imp_ent.resize(imp_ptr[d], 0);
            let mut fill = imp_ptr.clone();
            for (n, &p) in batch.iter().enumerate() {
                for &i in implicit.row(p).0 {
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

        (err, nr)
    }

    /// Trains a model from scratch with CD-T; calls `progress` after every epoch.
    pub fn fit(
        params: &ValidRatingRbmParams,
        data: &TrainData<'_>,
        progress: &mut dyn FnMut(&EpochReport),
    ) -> Result<(RatingRbm, FitSummary)> {
        let k = data.values.len();
        if !(2..=255).contains(&k) {
            return Err(RbmError::param("scale", "need 2 to 255 rating classes"));
        }
        if data.cases.cols.iter().any(|&i| i as usize >= data.d)
            || data.cases.classes.iter().any(|&c| c as usize >= k)
        {
            return Err(RbmError::Shape("training data outside D × K".into()));
        }
        let implicit = data.implicit.unwrap_or(data.cases);
        if implicit.rows() != data.cases.rows()
            || implicit.cols.iter().any(|&i| i as usize >= data.d)
        {
            return Err(RbmError::Shape(
                "implicit data does not match the cases".into(),
            ));
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

        let mut g = BatchGrad::new(d, k, m, bs, self.dmat.is_some());
        let mut batch_cases: Vec<usize> = Vec::with_capacity(bs);
        let (mut gfa, mut gfb) = match &self.factors {
            Some((cf, _, _)) => (vec![0.0f32; d * k * cf], vec![0.0f32; cf * m]),
            None => (Vec::new(), Vec::new()),
        };
        let mut s_w = Slot::new(if self.factors.is_some() { 0 } else { d * k * m }, adam);
        let mut s_b = Slot::new(d * k, adam);
        let mut s_c = Slot::new(m, adam);
        let mut s_d = Slot::new(g.gd.len(), adam);
        let mut s_fa = Slot::new(gfa.len(), adam);
        let mut s_fb = Slot::new(gfb.len(), adam);

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
                batch_cases.clear();
                batch_cases.extend(chunk.iter().map(|&p| active[p]));
                let (err, nr) = self.batch_gradient(
                    cases,
                    implicit,
                    &batch_cases,
                    t_steps,
                    params.negative,
                    (params.seed, epoch as u64, bi as u64),
                    &mut g,
                );
                err_sum += err;
                n_rated += nr;
                let (gw, gb, gc, gd) = (&g.gw, &g.gb, &g.gc, &g.gd);

                // Optimizer steps.
                adam_t += 1;
                let wcfg = StepCfg {
                    lr: params.learning_rate,
                    decay: params.weight_decay,
                    momentum,
                    adam_t,
                };
                let bcfg = StepCfg {
                    lr: params.bias_learning_rate,
                    decay: 0.0,
                    momentum,
                    adam_t,
                };
                match &mut self.factors {
                    None => opt_step(&mut self.w, gw, &mut s_w, &wcfg, adam),
                    Some((cf, a, bf)) => {
                        let cf = *cf;
                        // gA (C×DK, column-major) = Bᵀ gW ; gB (M×C) = gW Aᵀ.
                        let gw_ref = MatRef::from_column_major_slice(gw, m, d * k);
                        let b_ref = MatRef::from_column_major_slice(bf, m, cf);
                        let a_ref = MatRef::from_column_major_slice(a, cf, d * k);
                        let par = crate::linalg::current_par();
                        gemm(
                            MatMut::from_column_major_slice_mut(&mut gfa, cf, d * k),
                            Accum::Replace,
                            b_ref.transpose(),
                            gw_ref,
                            1.0,
                            par,
                        );
                        gemm(
                            MatMut::from_column_major_slice_mut(&mut gfb, m, cf),
                            Accum::Replace,
                            gw_ref,
                            a_ref.transpose(),
                            1.0,
                            par,
                        );
                        opt_step(a, &gfa, &mut s_fa, &wcfg, adam);
                        opt_step(bf, &gfb, &mut s_fb, &wcfg, adam);
                        factor_product(&mut self.w, a, bf, d * k, cf, m);
                    }
                }
                opt_step(&mut self.b, gb, &mut s_b, &bcfg, adam);
                opt_step(&mut self.c, gc, &mut s_c, &bcfg, adam);
                if let Some(dm) = &mut self.dmat {
                    opt_step(dm, gd, &mut s_d, &wcfg, adam);
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            secs_total += secs;
            if !(self.w.iter().all(|x| x.is_finite())
                && self.b.iter().all(|x| x.is_finite())
                && self.c.iter().all(|x| x.is_finite()))
            {
                return Err(RbmError::param(
                    "learning-rate",
                    format!(
                        "training diverged (non-finite weights) in epoch {}; lower the learning rate",
                        epoch + 1
                    ),
                ));
            }
            epochs_run = epoch + 1;
            let valid_rmse = (!data.validation.is_empty()).then(|| {
                self.validation_rmse(
                    cases,
                    data.implicit,
                    data.validation,
                    data.values,
                    params.predict,
                )
            });
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ratings::{Rating, RatingMatrix, RatingScale, holdout};

    fn random_model(d: usize, k: usize, m: usize, conditional: bool, seed: u64) -> RatingRbm {
        let mut s = Stream::new(seed, Purpose::Init, 9, 9, 9);
        let mut g =
            |n: usize, sd: f64| -> Vec<f32> { (0..n).map(|_| (s.normal() * sd) as f32).collect() };
        RatingRbm {
            d,
            k,
            m,
            w: g(d * k * m, 0.7),
            b: g(d * k, 0.5),
            c: g(m, 0.5),
            dmat: conditional.then(|| g(d * m, 0.5)),
            factors: None,
        }
    }

    /// Exact p(v_q | V) by enumerating every hidden configuration (f64).
    fn brute_force(
        model: &RatingRbm,
        items: &[u32],
        classes: &[u8],
        implicit: &[u32],
        q: usize,
    ) -> Vec<f64> {
        let (k, m) = (model.k, model.m);
        let mut x = vec![0.0f64; m];
        for j in 0..m {
            x[j] = f64::from(model.c[j]);
            for (&i, &cl) in items.iter().zip(classes) {
                x[j] += f64::from(model.w[(i as usize * k + cl as usize) * m + j]);
            }
            if let Some(dm) = &model.dmat {
                for &i in implicit {
                    x[j] += f64::from(dm[i as usize * m + j]);
                }
            }
        }
        let mut p = vec![0.0f64; k];
        for (kk, pk) in p.iter_mut().enumerate() {
            for h in 0..(1u32 << m) {
                let mut e = f64::from(model.b[q * k + kk]);
                for j in 0..m {
                    if h >> j & 1 == 1 {
                        e += x[j] + f64::from(model.w[(q * k + kk) * m + j]);
                    }
                }
                *pk += e.exp();
            }
        }
        let z: f64 = p.iter().sum();
        p.iter().map(|v| v / z).collect()
    }

    #[test]
    fn exact_prediction_matches_enumeration_over_h() {
        for conditional in [false, true] {
            let model = random_model(6, 3, 8, conditional, 1 + conditional as u64);
            let (items, classes) = ([0u32, 2, 3], [2u8, 0, 1]);
            let implicit = [0u32, 2, 3, 4];
            let mut x = vec![0.0f32; 8];
            model.hidden_input(&items, &classes, &implicit, &mut x);
            let ph: Vec<f32> = x.iter().map(|&v| sigmoid(v)).collect();
            for q in [1usize, 4, 5] {
                let want = brute_force(&model, &items, &classes, &implicit, q);
                let mut got = vec![0.0f32; 3];
                model.predict_dist(&x, &ph, q, PredictMethod::Exact, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-5,
                        "q={q}: {got:?} vs {want:?}"
                    );
                }
                // Mean field by hand: softmax_k(b + Σ_j σ(x_j) W_qj^k).
                let mut mf = vec![0.0f32; 3];
                model.predict_dist(&x, &ph, q, PredictMethod::MeanField, &mut mf);
                let logits: Vec<f64> = (0..3)
                    .map(|kk| {
                        f64::from(model.b[q * 3 + kk])
                            + (0..8)
                                .map(|j| {
                                    f64::from(ph[j]) * f64::from(model.w[(q * 3 + kk) * 8 + j])
                                })
                                .sum::<f64>()
                    })
                    .collect();
                let z: f64 = logits.iter().map(|l| l.exp()).sum();
                for (g, l) in mf.iter().zip(&logits) {
                    assert!((f64::from(*g) - l.exp() / z).abs() < 1e-5);
                }
            }
        }
    }

    /// Random sparse ratings: `n` cases over `d` visible units, about half rated.
    fn random_cases(n: usize, d: usize, k: usize, seed: u64) -> Csr {
        let mut s = Stream::new(seed, Purpose::Data, 0, 0, 0);
        let mut t = Vec::new();
        for u in 0..n {
            for i in 0..d {
                if s.uniform() < 0.5 || i == u % d {
                    t.push((u as u32, i as u32, s.below(k) as u8));
                }
            }
        }
        Csr::from_triples(n, t.into_iter())
    }

    /// The second source's computation: dense one-hot N×D×K tensors with a mask, hidden
    /// probabilities from the full double sum over D and K, and the gradient of the "fake loss"
    /// mean F(v⁰) − mean F(v¹) with ∂F/∂W_ij^k = −v_i^k σ(x_j), ∂F/∂b_i^k = −v_i^k,
    /// ∂F/∂c_j = −σ(x_j) (and ∂F/∂D_ij = −r_i σ(x_j)). Returns the negated gradient.
    fn dense_reference(
        model: &RatingRbm,
        v0: &[f64],
        v1: &[f64],
        r: &[f64],
        n: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (d, k, m) = (model.d, model.k, model.m);
        let mut gw = vec![0.0; d * k * m];
        let mut gb = vec![0.0; d * k];
        let mut gc = vec![0.0; m];
        let mut gd = vec![0.0; d * m];
        let hidden = |v: &[f64], u: usize| -> Vec<f64> {
            (0..m)
                .map(|j| {
                    let mut x = f64::from(model.c[j]);
                    for i in 0..d {
                        for kk in 0..k {
                            x += v[(u * d + i) * k + kk] * f64::from(model.w[(i * k + kk) * m + j]);
                        }
                        if let Some(dm) = &model.dmat {
                            x += r[u * d + i] * f64::from(dm[i * m + j]);
                        }
                    }
                    1.0 / (1.0 + (-x).exp())
                })
                .collect()
        };
        let nf = n as f64;
        for u in 0..n {
            let (h0, h1) = (hidden(v0, u), hidden(v1, u));
            for i in 0..d {
                for kk in 0..k {
                    let (a, b) = (v0[(u * d + i) * k + kk], v1[(u * d + i) * k + kk]);
                    gb[i * k + kk] += (a - b) / nf;
                    for j in 0..m {
                        gw[(i * k + kk) * m + j] += (a * h0[j] - b * h1[j]) / nf;
                    }
                }
                for j in 0..m {
                    gd[i * m + j] += r[u * d + i] * (h0[j] - h1[j]) / nf;
                }
            }
            for j in 0..m {
                gc[j] += (h0[j] - h1[j]) / nf;
            }
        }
        (gw, gb, gc, gd)
    }

    #[test]
    fn rated_pairs_are_predicted_from_the_other_ratings() {
        let model = random_model(5, 3, 6, false, 8);
        let cases = Csr::from_triples(1, [(0u32, 1u32, 2u8), (0, 3, 0), (0, 4, 1)].into_iter());
        let without = Csr::from_triples(1, [(0u32, 1u32, 2u8), (0, 4, 1)].into_iter());
        let a = model.predict_pairs(&cases, None, &[(0, 3)], PredictMethod::Exact);
        let b = model.predict_pairs(&without, None, &[(0, 3)], PredictMethod::Exact);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sparse_cd_gradient_equals_dense_masked_computation() {
        let (n, d, k, m) = (7, 6, 4, 5);
        for negative in [NegativePhase::Sample, NegativePhase::MeanField] {
            let cases = random_cases(n, d, k, 5);
            let model = random_model(d, k, m, true, 11);
            let mut g = BatchGrad::new(d, k, m, n, true);
            // Batch in a shuffled order, to exercise the per-visible-unit index.
            let batch = [3usize, 0, 6, 1, 5, 2, 4];
            model.batch_gradient(&cases, &cases, &batch, 1, negative, (1, 2, 3), &mut g);
            // Dense one-hot tensors, mask applied to the reconstruction (v¹ · mask).
            let mut v0 = vec![0.0f64; n * d * k];
            let mut v1 = vec![0.0f64; n * d * k];
            let mut mask = vec![0.0f64; n * d];
            let mut pos = 0;
            for (u, &case) in batch.iter().enumerate() {
                let (items, classes) = cases.row(case);
                for (&i, &cl) in items.iter().zip(classes) {
                    let i = i as usize;
                    v0[(u * d + i) * k + cl as usize] = 1.0;
                    mask[u * d + i] = 1.0;
                    for kk in 0..k {
                        v1[(u * d + i) * k + kk] = f64::from(g.vneg[pos * k + kk]);
                    }
                    pos += 1;
                }
            }
            for u in 0..n {
                for i in 0..d {
                    for kk in 0..k {
                        v1[(u * d + i) * k + kk] *= mask[u * d + i];
                    }
                }
            }
            if negative == NegativePhase::Sample {
                assert!(g.vneg.iter().all(|&v| v == 0.0 || v == 1.0));
            }
            let (gw, gb, gc, gd) = dense_reference(&model, &v0, &v1, &mask, n);
            let close = |a: &[f32], b: &[f64], what: &str| {
                assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b) {
                    assert!((f64::from(*x) - y).abs() < 1e-5, "{what}: {x} vs {y}");
                }
            };
            close(&g.gw, &gw, "W");
            close(&g.gb, &gb, "b");
            close(&g.gc, &gc, "c");
            close(&g.gd, &gd, "D");
            assert!(
                gw.iter().any(|v| v.abs() > 1e-3),
                "gradient should not vanish"
            );
        }
    }

    #[test]
    fn dense_fake_loss_gradient_matches_finite_differences() {
        // Guards the reference above: F(v) = −Σ b·v − Σ_j softplus(c_j + Σ v W), differentiated
        // numerically at one weight in f64.
        let (d, k, m) = (3, 2, 2);
        let model = random_model(d, k, m, false, 3);
        let v: Vec<f64> = vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let free = |w: &[f64]| -> f64 {
            let mut f = 0.0;
            for i in 0..d * k {
                f -= f64::from(model.b[i]) * v[i];
            }
            for j in 0..m {
                let mut x = f64::from(model.c[j]);
                for i in 0..d * k {
                    x += v[i] * w[i * m + j];
                }
                f -= crate::linalg::softplus(x);
            }
            f
        };
        let w: Vec<f64> = model.w.iter().map(|&x| f64::from(x)).collect();
        let zero = vec![0.0f64; d * k * 2];
        let (gw, _, _, _) = dense_reference(&model, &v, &zero, &[0.0; 3], 1);
        for idx in [0usize, 5, 11] {
            let mut wp = w.clone();
            wp[idx] += 1e-6;
            let mut wm = w.clone();
            wm[idx] -= 1e-6;
            let num = -(free(&wp) - free(&wm)) / 2e-6;
            assert!((num - gw[idx]).abs() < 1e-5, "{idx}: {num} vs {}", gw[idx]);
        }
    }

    /// A planted data set: users in `groups` taste groups, each group with its own rating of
    /// each item; observed ratings are the group's rating, 15% of the time off by one.
    pub(crate) fn planted(
        users: usize,
        items: usize,
        groups: usize,
        density: f32,
        seed: u64,
    ) -> Vec<Rating> {
        let mut s = Stream::new(seed, Purpose::Data, 5, 0, 0);
        let taste: Vec<u32> = (0..groups * items).map(|_| 1 + s.below(5) as u32).collect();
        let mut out = Vec::new();
        for u in 0..users {
            let gidx = u % groups;
            for i in 0..items {
                if s.uniform() < density {
                    let mut r = taste[gidx * items + i] as i32;
                    if s.uniform() < 0.15 {
                        r += if s.uniform() < 0.5 { -1 } else { 1 };
                    }
                    out.push(Rating {
                        user: u as u32,
                        item: i as u32,
                        value: r.clamp(1, 5) as f32,
                    });
                }
            }
        }
        out
    }

    fn fit_planted(threads: usize, seed: u64) -> RatingRbm {
        let ratings = planted(120, 40, 3, 0.5, 1);
        let scale = RatingScale::infer(&ratings).unwrap();
        let mat = RatingMatrix::from_ratings(120, 40, &ratings, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(16)
            .epochs(3)
            .batch_size(16)
            .conditional(true)
            .seed(seed)
            .check()
            .unwrap();
        let data = TrainData {
            cases: &mat.by_user,
            d: 40,
            values: scale.values(),
            implicit: None,
            validation: &[],
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| RatingRbm::fit(&params, &data, &mut |_| {}).unwrap().0)
    }

    #[test]
    fn training_is_deterministic_for_any_thread_count() {
        let a = fit_planted(1, 4);
        let b = fit_planted(3, 4);
        let c = fit_planted(3, 4);
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_ne!(a.w, fit_planted(2, 5).w);
    }

    #[test]
    fn rbm_beats_bias_baseline_on_planted_data() {
        let ratings = planted(300, 60, 4, 0.4, 2);
        let (train, test) = holdout(&ratings, 0.1, 3).unwrap();
        let scale = RatingScale::infer(&train).unwrap();
        let mat = RatingMatrix::from_ratings(300, 60, &train, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(30)
            .epochs(30)
            .learning_rate(0.1)
            .bias_learning_rate(0.1)
            .check()
            .unwrap();
        let data = TrainData {
            cases: &mat.by_user,
            d: 60,
            values: scale.values(),
            implicit: None,
            validation: &[],
        };
        let (model, _) = RatingRbm::fit(&params, &data, &mut |_| {}).unwrap();
        let pairs: Vec<(u32, u32)> = test.iter().map(|r| (r.user, r.item)).collect();
        let dist = model.predict_pairs(&mat.by_user, None, &pairs, PredictMethod::MeanField);
        let pred: Vec<f32> = dist
            .chunks(5)
            .map(|p| RatingRbm::readout(p, scale.values(), RatingReadout::Expected))
            .collect();
        let truth: Vec<f32> = test.iter().map(|r| r.value).collect();
        let base = crate::cf_eval::BiasBaseline::fit_default(300, 60, &train, scale.range());
        let bpred: Vec<f32> = pairs.iter().map(|&(u, i)| base.predict(u, i)).collect();
        let (r_rbm, r_base) = (
            crate::cf_eval::rmse(&pred, &truth),
            crate::cf_eval::rmse(&bpred, &truth),
        );
        // Taste groups are invisible to user and item biases; an RBM should find them.
        assert!(r_rbm < 0.75 * r_base, "RBM {r_rbm} vs baseline {r_base}");
    }

    #[test]
    fn factored_weights_stay_the_product_of_factors() {
        let ratings = planted(60, 20, 2, 0.5, 3);
        let scale = RatingScale::infer(&ratings).unwrap();
        let mat = RatingMatrix::from_ratings(60, 20, &ratings, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(7)
            .factors(Some(3))
            .epochs(2)
            .batch_size(10)
            .check()
            .unwrap();
        let data = TrainData {
            cases: &mat.by_user,
            d: 20,
            values: scale.values(),
            implicit: None,
            validation: &[],
        };
        let (model, _) = RatingRbm::fit(&params, &data, &mut |_| {}).unwrap();
        let (cf, a, b) = model.factors.as_ref().unwrap();
        let init = RatingRbm::init(&params, &mat.by_user, 20, scale.k());
        assert_ne!(init.factors.as_ref().unwrap().1, *a, "factors should move");
        for row in 0..20 * scale.k() {
            for j in 0..7 {
                let want: f32 = (0..*cf).map(|c| a[row * cf + c] * b[c * 7 + j]).sum();
                assert!((model.w[row * 7 + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn schedules_and_params() {
        let s = CdSchedule::paper(50);
        assert_eq!(
            (s.t_at(0), s.t_at(19), s.t_at(20), s.t_at(30), s.t_at(49)),
            (1, 1, 3, 5, 9)
        );
        let p = CdSchedule::parse("0:1,10:3", 20).unwrap();
        assert_eq!((p.t_at(9), p.t_at(10)), (1, 3));
        assert!(CdSchedule::parse("x", 5).is_err());
        assert!(RatingRbmParams::new().hidden(0).check().is_err());
        assert!(RatingRbmParams::new().learning_rate(-1.0).check().is_err());
        assert!(RatingRbmParams::new().momentum(1.0).check().is_err());
        assert!(
            RatingRbmParams::new()
                .cd(CdSchedule(vec![(0, 0)]))
                .check()
                .is_err()
        );
        assert!(
            RatingRbmParams::new()
                .cd(CdSchedule(vec![(5, 1), (2, 3)]))
                .check()
                .is_err()
        );
        assert!(RatingRbmParams::new().factors(Some(0)).check().is_err());
        assert!(RatingRbmParams::new().check().is_ok());
    }
}
