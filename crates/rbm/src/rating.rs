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
//!
//! Speed: the chains work item-major over fixed chunks of visible units (balanced by ratings
//! plus a per-unit weight), each chunk with its own per-case accumulator. With momentum SGD,
//! each unit's gradient, momentum step and the *next* batch's positive-phase rows are done
//! while its K×M block is in cache. On CPUs with AVX-512 the negative phase keeps a rating's K
//! logits, softmax and sampled class in registers, two ratings per register (K ≤ 8), and a unit
//! with many ratings in the batch has them done 16 at a time, one per lane (its last 5–8 in
//! one 8-lane block), from the sampled h kept as bit masks (`block_negative`); the unit step
//! sums each class's gradient row in registers. Without AVX-512, the softmax and draw go eight
//! ratings at a time, one per lane (`softmax_sample_lanes`). The elementwise loops are compiled
//! for the widest SIMD available at run time (the AVX2 variants with FMA, so `mul_add` is one
//! instruction). The dot products' summation order depends on the SIMD level (never on the
//! thread count).

#![allow(clippy::needless_range_loop)]
// index loops over K and M read clearer here
// The AVX-512 intrinsics are stable since Rust 1.89, the workspace's `rust-version`.

use crate::error::{RbmError, Result};
#[cfg(target_arch = "x86_64")]
use crate::linalg::store_lanes;
use crate::linalg::{all_finite, gemm_team, prefetch_bytes, sigmoid, zeros_now};
use crate::random::{Purpose, Stream, StreamKey};
use crate::ratings::Csr;
use crate::team::{
    PHASES, STACK_SLOTS, StepTimes, Team, claim, pack, training_threads, unpack, with_team,
};
use faer::{MatMut, MatRef};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

crate::error::spelled!(PredictMethod, "predict", { Exact => "exact", MeanField => "mean-field" });
crate::error::spelled!(RatingReadout, "readout", { Expected => "expected", Argmax => "argmax" });

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

    /// The paper's 1 → 3 → 5 → 9, switching at 40%, 60% and 80% of the epochs (rounded
    /// down). The first epoch is always T = 1; in runs too short for every step, switches that
    /// fall on the same epoch keep the last T, so the schedule stays strictly increasing.
    pub fn paper(epochs: usize) -> Self {
        let mut steps = vec![(0, 1)];
        for (e, t) in [
            (epochs * 2 / 5, 3),
            (epochs * 3 / 5, 5),
            (epochs * 4 / 5, 9),
        ] {
            match steps.last_mut() {
                _ if e == 0 => {}
                Some(last) if last.0 == e => last.1 = t,
                _ => steps.push((e, t)),
            }
        }
        CdSchedule(steps)
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
    /// Where the epoch's training time went, phase by phase.
    pub phases: PhaseTimes,
}

/// An epoch's training time by phase of the mini-batches (the team's [`StepTimes`]): each
/// phase's wall time, and how long the first team member to finish its part waited for the
/// last (the cost of an uneven split, which a sampling profiler shows as work).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Mini-batches in the epoch.
    pub batches: usize,
    /// The passes computing p(h|v) from the per-chunk sums (two per CD step).
    pub hidden: StepTimes,
    /// The negative visible pass (reconstructions, and their sums for p(h|vᵀ)); the serial
    /// index of the next batch rides on it.
    pub negative: StepTimes,
    /// The parameter update: gradients, the momentum (or Adam) step, and the fused sums of the
    /// next batch's positive phase.
    pub step: StepTimes,
    /// Indexing a batch's ratings by unit and summing its positive phase when neither rides
    /// on another phase (the first batch, and batches too big for the serial index).
    pub index: StepTimes,
}

/// The team phases of [`PhaseTimes`].
const _: () = assert!(PHASES == 4);
const PHASE_HIDDEN: usize = 0;
const PHASE_NEGATIVE: usize = 1;
const PHASE_STEP: usize = 2;
const PHASE_INDEX: usize = 3;

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

impl<'a> TrainData<'a> {
    /// The plain case: `cases` over `d` visible units with rating `values`, no implicit sets
    /// (the conditional variant then uses `cases`), no validation.
    pub fn new(cases: &'a Csr, d: usize, values: &'a [f32]) -> Self {
        TrainData {
            cases,
            d,
            values,
            implicit: None,
            validation: &[],
        }
    }
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
            m1: zeros_now(n),
            m2: if adam { zeros_now(n) } else { Vec::new() },
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

/// Fixed number of visible-unit chunks in the item-major sweeps (independent of the thread
/// count, so results are too). Each chunk has its own per-case accumulator, zeroed and folded
/// every pass; four instead of eight took 1.4 % off the MovieLens-100K epoch on two threads
/// (session 21). Members beyond four still share the units' work (`UnitClaims`).
const N_CHUNKS: usize = 4;

/// Chunks per group: the per-case sums of a group's chunks are folded into its first chunk's
/// block by the member that finishes the group's last chunk ([`ChunkFolds`]), so a p(h|v)
/// pass reads one row per group and case instead of one per chunk. With two threads each
/// member runs one group, so it folds its own rows (in its own caches) and the pass reads one
/// row written on the other core instead of two.
const CHUNK_GROUP: usize = 2;
const _: () = assert!(N_CHUNKS.is_multiple_of(CHUNK_GROUP));

/// Counts the finished chunks of each group of [`CHUNK_GROUP`] in one item-major pass; the
/// member that finishes a group's last chunk folds the group's per-case sums (N_CHUNKS blocks
/// of `len` floats from `acc`) into the group's first block, always in chunk order,
/// ((a₀ + a₁) + a₂) + … per element: the same bits whichever member gets there, and for any thread count.
struct ChunkFolds {
    done: [AtomicUsize; N_CHUNKS / CHUNK_GROUP],
    acc: SyncPtr<f32>,
    len: usize,
}

impl ChunkFolds {
    /// Folds for a pass whose chunk `c` sums into `acc[c·len..(c + 1)·len]`.
    fn new(acc: &mut [f32], len: usize) -> Self {
        assert!(acc.len() >= N_CHUNKS * len, "a block per chunk");
        ChunkFolds {
            done: std::array::from_fn(|_| AtomicUsize::new(0)),
            acc: SyncPtr(acc.as_mut_ptr()),
            len,
        }
    }

    /// Chunk `c`'s block, for the member running chunk `c`.
    ///
    /// # Safety
    /// Only the member running chunk `c` may hold it, and only until it calls
    /// [`Self::finished`] for `c`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn block(&self, c: usize) -> &mut [f32] {
        assert!(c < N_CHUNKS);
        // SAFETY: within `acc` (asserted in `new`); exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.acc.0.add(c * self.len), self.len) }
    }

    /// Chunk `c` is done; the last of its group folds the group.
    ///
    /// # Safety
    /// Called once per chunk and pass, after every write to chunk `c`'s block, with no
    /// reference to any block of the group left.
    unsafe fn finished(&self, c: usize) {
        let g = c / CHUNK_GROUP;
        // AcqRel: each chunk's runner publishes its block; the last one sees them all.
        if self.done[g].fetch_add(1, Ordering::AcqRel) + 1 == CHUNK_GROUP {
            let len = self.len;
            // SAFETY: every block of the group is complete and no longer referenced (the
            // callers' contract), so this member alone reaches them now.
            let (first, rest) = unsafe {
                let p = self.acc.0.add(g * CHUNK_GROUP * len);
                (
                    std::slice::from_raw_parts_mut(p, len),
                    std::slice::from_raw_parts(p.add(len), (CHUNK_GROUP - 1) * len),
                )
            };
            fold_group(first, rest);
        }
    }
}

/// `first[x] = ((first[x] + rest₀[x]) + rest₁[x]) + …` over the group's other blocks (`rest`
/// holds them one after another), element by element, so the bits do not depend on the SIMD
/// width.
#[inline(always)]
fn fold_group_body(first: &mut [f32], rest: &[f32]) {
    let len = first.len();
    // In strips, so a strip of `first` stays in L1 while the group's blocks are added to it.
    // (An empty block has no strips: `chunks_exact(0)` is never reached.)
    const STRIP: usize = 256;
    for s in (0..len).step_by(STRIP) {
        let e = (s + STRIP).min(len);
        for r in rest.chunks_exact(len) {
            add(&mut first[s..e], &r[s..e]);
        }
    }
}

/// Defines `fn $name(args) -> ret` that calls `$body(args)` compiled for AVX-512, for AVX2 or
/// as plain code, whichever [`crate::linalg::simd`] allows: `$body` must be `#[inline(always)]`
/// so its loops are compiled inside each variant.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident : $t:ty),*) -> $ret:ty => $body:path) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        #[inline]
        fn $name($($arg: $t),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $t),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $t),*) -> $ret {
                    $body($($arg),*)
                }
                match crate::linalg::simd() {
                    // SAFETY: `simd()` reports only instruction sets the CPU has.
                    crate::linalg::Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    crate::linalg::Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    crate::linalg::Simd::Scalar => {}
                }
            }
            $body($($arg),*)
        }
    };
}

simd_fn!(
    /// [`RatingRbm::chunk_positive`] at the widest SIMD allowed.
    fn simd_chunk_positive(model: &RatingRbm, i0: usize, i1: usize, by_item: &[(u32, u8)],
        by_item_ptr: &[usize], acc: &mut [f32]) -> () => RatingRbm::chunk_positive);
simd_fn!(
    /// [`RatingRbm::chunk_negative`] at the widest SIMD allowed.
    fn simd_chunk_negative(model: &RatingRbm, i0: usize, i1: usize, by_item: &[(u32, u8)],
        by_item_ptr: &[usize], h: &[f32], negative: NegativePhase, last: bool,
        rngkey: (StreamKey, usize), z: &mut [f32], acc: &mut [f32],
        bits: Option<(&[u32], usize)>, err: &mut f64) -> ()
        => RatingRbm::chunk_negative);

/// The fused momentum step of one visible unit: parameters, velocities and their configs.
pub(crate) struct ItemMomentum<'a> {
    w: &'a mut [f32],
    vw: &'a mut [f32],
    b: &'a mut [f32],
    vb: &'a mut [f32],
    wcfg: &'a StepCfg,
    bcfg: &'a StepCfg,
}

/// The per-case hidden rows a unit step reads (M floats per case of the batch): p(h|v⁰),
/// p(h|vᵀ) and their difference, so that a rating whose sampled class is its own adds one row
/// to that class's gradient instead of two.
#[derive(Clone, Copy)]
pub(crate) struct CaseRows<'a> {
    p0: &'a [f32],
    p1: &'a [f32],
    pd: &'a [f32],
}

/// Case `n`'s row of a per-case buffer of M-float rows.
#[inline(always)]
fn case_row(p: &[f32], n: usize, m: usize) -> &[f32] {
    &p[n * m..(n + 1) * m]
}

/// Phase 2 for one visible unit: its W and b gradient (ascent direction, averaged over the
/// batch) from its ratings `ents` and their negative visible units `zi` (K each) into `gwi`/`gbi`, summed in a fixed order; with `step`, the
/// momentum update of that unit follows at once while the block is in cache (the same
/// arithmetic as [`opt_step`], so the result is bit-identical to the unfused path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn item_step_body(
    ents: &[(u32, u8)],
    rows: CaseRows<'_>,
    zi: &[f32],
    inv_b: f32,
    sampled: bool,
    gwi: &mut [f32],
    gbi: &mut [f32],
    step: Option<ItemMomentum<'_>>,
    next: Option<NextPositive<'_>>,
) {
    let (k, m) = (gbi.len(), gwi.len() / gbi.len());
    gwi.fill(0.0);
    gbi.fill(0.0);
    for (e, &(n, cl)) in ents.iter().enumerate() {
        let (n, cl) = (n as usize, cl as usize);
        let row = |p| case_row(p, n, m);
        let (a, bneg) = (row(rows.p0), row(rows.p1));
        let ze = &zi[e * k..(e + 1) * k];
        if sampled {
            // One-hot: the sampled class's index, without a data-dependent branch.
            let pick = ze
                .iter()
                .enumerate()
                .map(|(kk, &v)| kk * usize::from(v != 0.0))
                .sum::<usize>();
            if pick == cl {
                // +p⁰ and −p¹ on the same class: one row, p⁰ − p¹; the bias terms cancel.
                axpy(&mut gwi[cl * m..(cl + 1) * m], inv_b, row(rows.pd));
            } else {
                axpy(&mut gwi[cl * m..(cl + 1) * m], inv_b, a);
                gbi[cl] += 1.0;
                axpy(&mut gwi[pick * m..(pick + 1) * m], -inv_b, bneg);
                gbi[pick] -= 1.0;
            }
        } else {
            axpy(&mut gwi[cl * m..(cl + 1) * m], inv_b, a);
            gbi[cl] += inv_b;
            for (kk, &v) in ze.iter().enumerate() {
                axpy(&mut gwi[kk * m..(kk + 1) * m], -v * inv_b, bneg);
                gbi[kk] -= v * inv_b;
            }
        }
    }
    if sampled {
        // The bias gradient of a sampled negative phase is inv_b times a whole number, the
        // class's ratings less its samples: counted exactly (a whole f32 while the unit has
        // fewer than 2²⁴ ratings in the batch) and scaled once. That is the exact average up
        // to one rounding, and cheaper than adding ±inv_b event by event: that serial chain
        // of rounded additions cost the AVX-512 step 3 % of the epoch.
        for g in gbi.iter_mut() {
            *g *= inv_b;
        }
    }
    if let Some(st) = step {
        for n in 0..gwi.len() {
            momentum_update(&mut st.w[n], &mut st.vw[n], gwi[n], st.wcfg);
        }
        for n in 0..gbi.len() {
            momentum_update(&mut st.b[n], &mut st.vb[n], gbi[n], st.bcfg);
        }
        if let Some(nx) = next {
            // The same additions, in the same order, as `chunk_positive` on the updated W.
            next_positive_body(nx.ents, st.w, nx.acc, m);
        }
    }
}

/// [`NextPositive`]'s additions for a unit stepped elsewhere: its updated rows `wi` (K×M)
/// into the chunk's per-case accumulator, rating by rating (elementwise adds: the same bits as
/// in either step kernel).
fn next_positive(ents: &[(u32, u8)], wi: &[f32], acc: &mut [f32], m: usize) {
    with_simd(|| next_positive_body(ents, wi, acc, m))
}

#[inline(always)]
fn next_positive_body(ents: &[(u32, u8)], wi: &[f32], acc: &mut [f32], m: usize) {
    for &(n, cl) in ents {
        let (n, cl) = (n as usize, cl as usize);
        add(&mut acc[n * m..(n + 1) * m], &wi[cl * m..(cl + 1) * m]);
    }
}

/// The negative pass's additions for a unit done by another member: each rating's sampled
/// row of `wi` (K×M), or its K rows weighted by the probabilities in `z`, into its case's
/// per-case sum, in rating order, with the same elementwise operations as the negative
/// kernels (so the same bits).
fn negative_sums(
    ents: &[(u32, u8)],
    z: &[f32],
    wi: &[f32],
    acc: &mut [f32],
    m: usize,
    negative: NegativePhase,
) {
    let k = wi.len() / m;
    with_simd(|| {
        for (e, &(n, _)) in ents.iter().enumerate() {
            let (zr, an) = (
                &z[e * k..(e + 1) * k],
                &mut acc[n as usize * m..(n as usize + 1) * m],
            );
            if negative == NegativePhase::Sample {
                // The one class set (as the step finds it).
                let pick = zr
                    .iter()
                    .enumerate()
                    .map(|(kk, &v)| kk * usize::from(v != 0.0))
                    .sum::<usize>();
                add(an, &wi[pick * m..(pick + 1) * m]);
            } else {
                for (kk, &pz) in zr.iter().enumerate() {
                    axpy(an, pz, &wi[kk * m..(kk + 1) * m]);
                }
            }
        }
    })
}

/// Units a member claims at a time in the item-major passes (see [`UnitClaims`]).
const CLAIM_UNITS: usize = 8;

/// Claims on the units of the item-major passes' chunks, so that a member done with its own
/// chunks can take over part of one still running. A chunk's runner takes units from its
/// front, [`CLAIM_UNITS`] at a time; a member with nothing left takes them from its back
/// (never the last two claims' worth) and does the part of their work that lands in per-unit
/// outputs (the momentum step; the negative units and their squared errors); the runner then
/// adds their rows to its chunk's per-case sums, in unit order, so the sums (and the model)
/// are the same whoever did a unit. With whole chunks only, the members' finishing times
/// differed by 10–20 % of each pass on this shared host.
struct UnitClaims {
    /// Per chunk, its units nobody has taken, `front..back` ([`pack`]ed).
    spans: Vec<AtomicU64>,
    /// Per chunk, units other members have finished.
    helped: Vec<AtomicUsize>,
}

impl UnitClaims {
    fn new() -> Self {
        UnitClaims {
            spans: (0..N_CHUNKS).map(|_| AtomicU64::new(0)).collect(),
            helped: (0..N_CHUNKS).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Every chunk's units free again (before the team step that uses them publishes them).
    fn reset(&self, bounds: &[usize]) {
        for (c, (span, helped)) in self.spans.iter().zip(&self.helped).enumerate() {
            span.store(pack(bounds[c], bounds[c + 1]), Ordering::Relaxed);
            helped.store(0, Ordering::Relaxed);
        }
    }

    /// The runner's next units of chunk `c`.
    fn front(&self, c: usize) -> Option<std::ops::Range<usize>> {
        claim(&self.spans[c], |front, back| {
            let end = back.min(front + CLAIM_UNITS);
            (front < back).then_some((front..end, (end, back)))
        })
    }

    /// Units of chunk `c` for a member that is not its runner, if it has enough left.
    fn back(&self, c: usize) -> Option<std::ops::Range<usize>> {
        claim(&self.spans[c], |front, back| {
            (back >= front + 2 * CLAIM_UNITS)
                .then_some((back - CLAIM_UNITS..back, (front, back - CLAIM_UNITS)))
        })
    }

    /// Runs `f` on units of chunk `c` taken with [`Self::back`], then marks them done (their
    /// outputs written before: the runner reads them after [`Self::wait_for_helpers`]). They
    /// are marked done even if `f` panics, so the runner does not wait forever (the team then
    /// reports the panic).
    fn help(&self, c: usize, units: std::ops::Range<usize>, f: impl FnMut(usize)) {
        struct Done<'a>(&'a AtomicUsize, usize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                #[cfg(test)]
                UNITS_HELPED.fetch_add(self.1, Ordering::Relaxed);
                self.0.fetch_add(self.1, Ordering::Release);
            }
        }
        let _done = Done(&self.helped[c], units.len());
        units.for_each(f);
    }

    /// For the runner, once [`Self::front`] has nothing left: the first unit of chunk `c`
    /// others took (its `end` if none), returned when they have all been done. Spins, then
    /// yields (a helper that lost its core must get it back).
    fn wait_for_helpers(&self, c: usize, end: usize) -> usize {
        let top = unpack(self.spans[c].load(Ordering::Acquire)).1;
        let mut spins = 0u32;
        while self.helped[c].load(Ordering::Acquire) < end - top {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        top
    }
}

/// Test hooks for [`UnitClaims`]: the runner of this chunk sleeps after each claim (so others
/// take its units), and the units others did are counted.
#[cfg(test)]
static SLOW_CHUNK: AtomicUsize = AtomicUsize::new(usize::MAX);
#[cfg(test)]
static UNITS_HELPED: AtomicUsize = AtomicUsize::new(0);

/// The next batch's positive phase for one visible unit, run right after the unit's momentum
/// step while its updated K×M block is in cache: the unit's ratings in that batch and the
/// per-case accumulator of the unit's chunk.
pub(crate) struct NextPositive<'a> {
    ents: &'a [(u32, u8)],
    acc: &'a mut [f32],
}

simd_fn!(
    /// [`item_step_body`] at the widest SIMD allowed.
    fn item_step_simd(ents: &[(u32, u8)], rows: CaseRows<'_>, zi: &[f32], inv_b: f32,
        sampled: bool, gwi: &mut [f32], gbi: &mut [f32], step: Option<ItemMomentum<'_>>,
        next: Option<NextPositive<'_>>) -> () => item_step_body);

/// Most ratings of one unit in one batch that [`item_step_avx512`] sorts by class on its
/// stack (more go the portable way).
const STEP_MAX_ENTS: usize = 256;

/// Phase 2 for one visible unit (see [`item_step_body`]), the fastest way the CPU allows.
#[allow(clippy::too_many_arguments)]
#[inline]
fn item_step(
    ents: &[(u32, u8)],
    rows: CaseRows<'_>,
    zi: &[f32],
    inv_b: f32,
    sampled: bool,
    gwi: &mut [f32],
    gbi: &mut [f32],
    step: Option<ItemMomentum<'_>>,
    next: Option<NextPositive<'_>>,
) {
    #[cfg(target_arch = "x86_64")]
    if sampled && has_avx512() && gbi.len() <= 16 && ents.len() <= STEP_MAX_ENTS {
        // SAFETY: AVX-512F and VL, AVX2 and FMA are present (checked by `has_avx512`).
        return unsafe { item_step_avx512(ents, rows, zi, inv_b, gwi, gbi, step, next) };
    }
    item_step_simd(ents, rows, zi, inv_b, sampled, gwi, gbi, step, next)
}

/// [`item_step_body`] for a sampled negative phase, with each class's gradient row summed in
/// registers and stepped at once: the unit's ratings are first sorted by class (stably, the
/// positive term of a rating before its negative one), so every element sees the same
/// additions in the same order as in [`item_step_body`] and the result is bit-identical, but
/// no K×M gradient block goes through memory. Columns are taken 128 at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn item_step_avx512(
    ents: &[(u32, u8)],
    rows: CaseRows<'_>,
    zi: &[f32],
    inv_b: f32,
    gwi: &mut [f32],
    gbi: &mut [f32],
    mut step: Option<ItemMomentum<'_>>,
    next: Option<NextPositive<'_>>,
) {
    let (k, m) = (gbi.len(), gwi.len() / gbi.len());
    let n = ents.len();
    assert!(k <= 16 && n <= STEP_MAX_ENTS && zi.len() >= n * k);
    // Events per class, 4e + type: rating e adds its p0 row to its class (type 0) and
    // subtracts its p1 row from its sampled class (type 1), or, when the two are the same
    // class, adds its p0 − p1 row there (type 2). Appending in rating order gives each class's
    // events in the order of `item_step_body`; class c's list starts at c·2n (no class gets
    // more than n events), and only the slots counted are read, so the buffer is not zeroed.
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    let stride = 2 * n;
    let mut buf = [MaybeUninit::<u16>::uninit(); 16 * 2 * STEP_MAX_ENTS];
    let mut cnt = [0usize; 16];
    let (mut rated, mut drawn, one) = (
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
        _mm512_set1_epi32(1),
    );
    let kmask = ((1u32 << k) - 1) as u16;
    for (e, &(_, cl)) in ents.iter().enumerate() {
        // One-hot: the sampled class is the one lane that is not zero (lane 0 if none,
        // like the portable body's Σ k·[z_k ≠ 0]).
        // SAFETY: lanes 0..k of rating e's K values, within `zi` (asserted above).
        let z = unsafe { _mm512_maskz_loadu_ps(kmask, zi.as_ptr().add(e * k)) };
        let nz = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(kmask, z, _mm512_setzero_ps());
        let pk = (u32::from(nz).trailing_zeros() & 15) as usize;
        let (cl, same) = (usize::from(cl), usize::from(pk == usize::from(cl)));
        // Without a branch: the second event is always written but only counted when the
        // classes differ (else it lands past the end of class cl's list, and is not read).
        buf[cl * stride + cnt[cl]] = MaybeUninit::new((4 * e + 2 * same) as u16);
        cnt[cl] += 1;
        buf[pk * stride + cnt[pk]] = MaybeUninit::new((4 * e + 1) as u16);
        cnt[pk] += 1 - same;
        // The bias gradient's counts, per class in vector lanes (a count in memory would be
        // another store-to-load chain beside `cnt`): the ratings, and the samples.
        rated = _mm512_mask_add_epi32(rated, 1 << cl, rated, one);
        drawn = _mm512_mask_add_epi32(drawn, 1 << pk, drawn, one);
    }
    let mut net = [0i32; 16];
    // SAFETY: 16 lanes into 16 i32s.
    unsafe { _mm512_storeu_si512(net.as_mut_ptr().cast(), _mm512_sub_epi32(rated, drawn)) };
    // A loop, not `std::array::from_fn`: that was compiled as an out-of-line call per class.
    let mut class_events: [&[u16]; 16] = [&[]; 16];
    for (c, ev) in class_events[..k].iter_mut().enumerate() {
        // SAFETY: slots c·2n .. c·2n + cnt[c] were written above (cnt[c] ≤ 2n).
        *ev = unsafe { std::slice::from_raw_parts(buf.as_ptr().add(c * stride).cast(), cnt[c]) };
    }
    let class_events = &class_events[..k];
    let mut j0 = 0;
    while j0 < m {
        let nv = (m - j0).div_ceil(16).min(8);
        let args = (j0, m, ents, class_events, rows, inv_b);
        let (gw, st) = (&mut *gwi, step.as_mut());
        match nv {
            1 => step_cols_avx512::<1>(args, gw, st),
            2 => step_cols_avx512::<2>(args, gw, st),
            3 => step_cols_avx512::<3>(args, gw, st),
            4 => step_cols_avx512::<4>(args, gw, st),
            5 => step_cols_avx512::<5>(args, gw, st),
            6 => step_cols_avx512::<6>(args, gw, st),
            7 => step_cols_avx512::<7>(args, gw, st),
            _ => step_cols_avx512::<8>(args, gw, st),
        }
        j0 += 16 * nv;
    }
    // As in `item_step_body`: the exact count, scaled once.
    for (g, &c) in gbi.iter_mut().zip(&net[..k]) {
        *g = c as f32 * inv_b;
    }
    let Some(st) = step else { return };
    for n in 0..k {
        momentum_update(&mut st.b[n], &mut st.vb[n], gbi[n], st.bcfg);
    }
    if let Some(nx) = next {
        // The same additions as `chunk_positive` on the updated W.
        for &(n, cl) in nx.ents {
            let (n, cl) = (n as usize, cl as usize);
            add_row_avx512(&mut nx.acc[n * m..(n + 1) * m], &st.w[cl * m..(cl + 1) * m]);
        }
    }
}

/// Runs `$body` for `$v` = 0, 1, … below `$nv` (a constant, at most 8), written out: the
/// compiler left such loops rolled in the large step kernel, with the accumulators on the
/// stack and each vector's lane mask computed at run time.
macro_rules! unroll_vectors {
    ($v:ident, $nv:expr, $body:block) => {{
        const { assert!($nv >= 1 && $nv <= 8) };
        unroll_vectors!(@ $v, $nv, $body, 0 1 2 3 4 5 6 7);
    }};
    (@ $v:ident, $nv:expr, $body:block, $($i:literal)*) => {
        $(
            if $i < $nv {
                let $v: usize = $i;
                $body
            }
        )*
    };
}

/// Columns `j0..j0 + 16·NV` (cut at M) of [`item_step_avx512`]: per class, the gradient
/// (Σ ±inv_b·row over its events) in NV registers, then the momentum step on that row of W
/// (or the gradient stored into `gwi` without `step`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::type_complexity)]
fn step_cols_avx512<const NV: usize>(
    (j0, m, ents, class_events, rows, inv_b): (
        usize,
        usize,
        &[(u32, u8)],
        &[&[u16]],
        CaseRows<'_>,
        f32,
    ),
    gwi: &mut [f32],
    mut step: Option<&mut ItemMomentum<'_>>,
) {
    use std::arch::x86_64::*;
    let width = (m - j0).min(16 * NV);
    // Event types alternate unpredictably within a class: the source row and the sign are
    // picked by indexing, not by a branch (a mispredicted branch per event also stopped the
    // next rows' loads from starting early).
    let srcs = [rows.p0, rows.p1, rows.pd, rows.pd];
    let signs = [inv_b, -inv_b, inv_b, inv_b];
    let tail = width - 16 * (NV - 1);
    let tail_mask = block_lane_mask(NV - 1, NV, width);
    for (c, events) in class_events.iter().enumerate() {
        let mut acc = [_mm512_setzero_ps(); NV];
        for &ev in *events {
            let (e, t) = (usize::from(ev >> 2), usize::from(ev & 3));
            let n = ents[e].0 as usize;
            let row = &srcs[t][n * m + j0..n * m + j0 + width];
            let s = _mm512_set1_ps(signs[t]);
            unroll_vectors!(v, NV, {
                // SAFETY: vectors before the last are whole within `row` (width = 16·(NV−1)
                // + tail); the last is read under its mask.
                let x = unsafe {
                    if v + 1 < NV {
                        _mm512_loadu_ps(row.as_ptr().add(16 * v))
                    } else {
                        _mm512_maskz_loadu_ps(tail_mask, row.as_ptr().add(16 * v))
                    }
                };
                acc[v] = _mm512_fmadd_ps(s, x, acc[v]);
            });
        }
        let o = c * m + j0;
        match step.as_deref_mut() {
            Some(st) => {
                let (w, vw) = (&mut st.w[o..o + width], &mut st.vw[o..o + width]);
                let cfg = st.wcfg;
                let (mu, lr, dec) = (
                    _mm512_set1_ps(cfg.momentum),
                    _mm512_set1_ps(cfg.lr),
                    _mm512_set1_ps(cfg.decay),
                );
                let (wp, vp) = (w.as_mut_ptr(), vw.as_mut_ptr());
                unroll_vectors!(v, NV, {
                    // SAFETY: as above, within `w` and `vw` (length `width`); the last
                    // vector is stored lane by lane (`store_lanes`: no masked store).
                    unsafe {
                        let (wp, vp) = (wp.add(16 * v), vp.add(16 * v));
                        let (x, u) = if v + 1 < NV {
                            (_mm512_loadu_ps(wp), _mm512_loadu_ps(vp))
                        } else {
                            (
                                _mm512_maskz_loadu_ps(tail_mask, wp),
                                _mm512_maskz_loadu_ps(tail_mask, vp),
                            )
                        };
                        // The same operations as `momentum_update`: μ·v + lr·(g − λ·w).
                        let t = _mm512_fnmadd_ps(dec, x, acc[v]);
                        let u = _mm512_fmadd_ps(mu, u, _mm512_mul_ps(lr, t));
                        let lanes = if v + 1 < NV { 16 } else { tail };
                        store_lanes(vp, u, lanes);
                        store_lanes(wp, _mm512_add_ps(x, u), lanes);
                    }
                });
            }
            None => {
                let out = &mut gwi[o..o + width];
                for (v, &g) in acc.iter().enumerate() {
                    // SAFETY: lanes 16v.. of `out`, at most `width − 16v` of them.
                    unsafe { store_lanes(out.as_mut_ptr().add(16 * v), g, width - 16 * v) };
                }
            }
        }
    }
}

/// The lanes of vector `v` of a block of `nv` vectors covering `width` columns: all 16 but in
/// the last vector, which covers what is left.
#[inline(always)]
fn block_lane_mask(v: usize, nv: usize, width: usize) -> u16 {
    let tail = width - 16 * (nv - 1);
    if v + 1 < nv || tail == 16 {
        0xffff
    } else {
        ((1u32 << tail) - 1) as u16
    }
}

/// `out[j] += Σ_r term(r, j)` for r in `0..rows`, summed in row order (the same additions as
/// a loop adding one row at a time into `out`), with up to 128 columns of `out` held in
/// registers across all the rows instead of going through memory for each row. `term(r, j0,
/// mask)` gives lanes `j0..j0 + 16` of row r's term (lanes outside `mask` may be anything).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn sum_rows_avx512<F>(out: &mut [f32], rows: usize, term: F)
where
    F: Fn(usize, usize, std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512,
{
    let m = out.len();
    let mut j0 = 0;
    while j0 < m {
        let nv = (m - j0).div_ceil(16).min(8);
        let block = &mut out[j0..(j0 + 16 * nv).min(m)];
        match nv {
            1 => sum_rows_block_avx512::<1, F>(block, j0, rows, &term),
            2 => sum_rows_block_avx512::<2, F>(block, j0, rows, &term),
            3 => sum_rows_block_avx512::<3, F>(block, j0, rows, &term),
            4 => sum_rows_block_avx512::<4, F>(block, j0, rows, &term),
            5 => sum_rows_block_avx512::<5, F>(block, j0, rows, &term),
            6 => sum_rows_block_avx512::<6, F>(block, j0, rows, &term),
            7 => sum_rows_block_avx512::<7, F>(block, j0, rows, &term),
            _ => sum_rows_block_avx512::<8, F>(block, j0, rows, &term),
        }
        j0 += 16 * nv;
    }
}

/// One block of [`sum_rows_avx512`]: `block` is `out[j0..]`, NV vectors wide (the last one
/// possibly partial).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn sum_rows_block_avx512<const NV: usize, F>(block: &mut [f32], j0: usize, rows: usize, term: &F)
where
    F: Fn(usize, usize, std::arch::x86_64::__mmask16) -> std::arch::x86_64::__m512,
{
    use std::arch::x86_64::*;
    let width = block.len();
    let mask = |v: usize| block_lane_mask(v, NV, width);
    let p = block.as_mut_ptr();
    // SAFETY: the masked lanes of vector v lie within `block` (16·(NV−1) + tail long).
    let mut acc: [__m512; NV] =
        std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(mask(v), p.add(16 * v)) });
    for r in 0..rows {
        for (v, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, term(r, j0 + 16 * v, mask(v)));
        }
    }
    for (v, a) in acc.iter().enumerate() {
        // SAFETY: as above.
        unsafe { store_lanes(p.add(16 * v), *a, width - 16 * v) };
    }
}

/// `y += x` over one row (x at least as long), 16 lanes at a time; the tail is read under a
/// mask and stored with [`store_lanes`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn add_row_avx512(y: &mut [f32], x: &[f32]) {
    use std::arch::x86_64::*;
    let m = y.len();
    let x = &x[..m];
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut j = 0;
    while j + 16 <= m {
        // SAFETY: j + 16 <= m = len(x) = len(y).
        unsafe {
            let s = _mm512_add_ps(_mm512_loadu_ps(yp.add(j)), _mm512_loadu_ps(xp.add(j)));
            _mm512_storeu_ps(yp.add(j), s);
        }
        j += 16;
    }
    if j < m {
        let mk: __mmask16 = ((1u32 << (m - j)) - 1) as u16;
        // SAFETY: the masked lanes j..m lie within x and y.
        unsafe {
            let s = _mm512_add_ps(
                _mm512_maskz_loadu_ps(mk, yp.add(j)),
                _mm512_maskz_loadu_ps(mk, xp.add(j)),
            );
            store_lanes(yp.add(j), s, m - j);
        }
    }
}

/// Runs `f` compiled for AVX2 when the CPU has it, so the `#[inline(always)]` loops over M
/// inside it use 8-wide vectors (without FMA contraction the results are bit-identical to the
/// baseline SSE2 build; only the speed changes).
#[inline(always)]
fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match crate::linalg::simd() {
            // SAFETY: `simd()` reports only instruction sets the CPU has.
            crate::linalg::Simd::Avx512 => return unsafe { avx512(f) },
            // SAFETY: as above.
            crate::linalg::Simd::Avx2 => return unsafe { avx2(f) },
            crate::linalg::Simd::Scalar => {}
        }
    }
    f()
}

/// The length of the pieces a team splits an elementwise pass over `len` values into: a few
/// per member so uneven pieces balance out, at most [`STACK_SLOTS`] of them (so a training
/// step allocates nothing), none shorter than `min`.
fn piece_len(len: usize, min: usize, team: &Team<'_>) -> usize {
    len.div_ceil((4 * team.threads()).min(STACK_SLOTS))
        .max(min)
        .max(1)
}

/// One optimizer step on `p` with ascent direction `g` (already averaged over the batch), in
/// pieces over the team (elementwise, so the result does not depend on the split).
fn opt_step(p: &mut [f32], g: &[f32], s: &mut Slot, cfg: &StepCfg, adam: bool, team: &Team<'_>) {
    let piece = piece_len(p.len(), OPT_CHUNK, team);
    if adam {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(cfg.adam_t);
        let c2 = 1.0 - b2.powi(cfg.adam_t);
        let lr = cfg.lr * c2.sqrt() / c1;
        let pieces = p
            .chunks_mut(piece)
            .zip(g.chunks(piece))
            .zip(s.m1.chunks_mut(piece))
            .zip(s.m2.chunks_mut(piece));
        team.for_each(pieces, |(((p, g), m1), m2)| {
            with_simd(|| {
                for n in 0..p.len() {
                    let gr = g[n] - cfg.decay * p[n];
                    m1[n] = b1 * m1[n] + (1.0 - b1) * gr;
                    m2[n] = b2 * m2[n] + (1.0 - b2) * gr * gr;
                    p[n] += lr * m1[n] / (m2[n].sqrt() + eps);
                }
            })
        });
    } else {
        let pieces = p
            .chunks_mut(piece)
            .zip(g.chunks(piece))
            .zip(s.m1.chunks_mut(piece));
        team.for_each(pieces, |((p, g), v)| {
            with_simd(|| {
                for n in 0..p.len() {
                    momentum_update(&mut p[n], &mut v[n], g[n], cfg);
                }
            })
        });
    }
}

/// `p = σ(base + Σ_g acc[g·CHUNK_GROUP][n])`: case `n`'s hidden probabilities from the fixed
/// chunks' accumulators (`acc` is N_CHUNKS × nb × M), each group of chunks already folded into
/// its first block ([`ChunkFolds`]), added in group order.
#[inline(always)]
fn hidden_probs_body(p: &mut [f32], base: &[f32], acc: &[f32], n: usize, nb: usize) {
    let m = p.len();
    p.copy_from_slice(base);
    for c in (0..N_CHUNKS).step_by(CHUNK_GROUP) {
        add(p, &acc[(c * nb + n) * m..(c * nb + n + 1) * m]);
    }
    for x in p.iter_mut() {
        *x = sigmoid(*x);
    }
}

simd_fn!(
    /// [`fold_group_body`] at the widest SIMD allowed.
    fn fold_group(first: &mut [f32], rest: &[f32]) -> () => fold_group_body);

simd_fn!(
    /// [`hidden_probs_body`] at the widest SIMD allowed (a closure passed to [`with_simd`] is
    /// not always inlined into it).
    fn hidden_probs_from_chunks(p: &mut [f32], base: &[f32], acc: &[f32], n: usize, nb: usize)
        -> () => hidden_probs_body);

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = a.mul_add(x, *y);
    }
}

/// One momentum step of one parameter: v ← μ·v + lr·(g − λ·p), then p ← p + v. The
/// multiply-adds are fused (one rounding each), as in the AVX-512 step kernel, so every path
/// (vector kernels, portable loops, fused with the gradient or not) gives the same bits; on
/// CPUs with FMA each is one instruction.
#[inline(always)]
fn momentum_update(p: &mut f32, v: &mut f32, g: f32, c: &StepCfg) {
    let t = (-c.decay).mul_add(*p, g);
    *v = c.momentum.mul_add(*v, c.lr * t);
    *p += *v;
}

#[inline(always)]
fn add(y: &mut [f32], x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// `out[q] = h · w[q*m..(q+1)*m]` for each row q of `w`, four rows per pass over `h`.
#[inline(always)]
fn dot_rows_portable(h: &[f32], w: &[f32], out: &mut [f32]) {
    let (k, m) = (out.len(), h.len());
    let mut kk = 0;
    while kk + 4 <= k {
        dot4(h, &w[kk * m..(kk + 4) * m], &mut out[kk..kk + 4]);
        kk += 4;
    }
    for kk in kk..k {
        out[kk] = dot(h, &w[kk * m..(kk + 1) * m]);
    }
}

/// Dot product with 16 independent accumulators so it vectorizes and hides add latency.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0.0;
    for l in 0..8 {
        acc[l] += acc[l + 8];
    }
    for v in acc[..8].iter() {
        s += v;
    }
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Four dot products of `h` with the consecutive rows of `w` (4 × len(h)) in one pass, so `h`
/// is loaded once and the four accumulator chains overlap.
#[inline(always)]
fn dot4(h: &[f32], w: &[f32], out: &mut [f32]) {
    let m = h.len();
    let (w0, w1, w2, w3) = (&w[..m], &w[m..2 * m], &w[2 * m..3 * m], &w[3 * m..4 * m]);
    let (mut c0, mut c1, mut c2, mut c3) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    for ((((x, a0), a1), a2), a3) in h
        .chunks_exact(8)
        .zip(w0.chunks_exact(8))
        .zip(w1.chunks_exact(8))
        .zip(w2.chunks_exact(8))
        .zip(w3.chunks_exact(8))
    {
        for l in 0..8 {
            c0[l] += x[l] * a0[l];
            c1[l] += x[l] * a1[l];
            c2[l] += x[l] * a2[l];
            c3[l] += x[l] * a3[l];
        }
    }
    let n8 = m / 8 * 8;
    let acc = [c0, c1, c2, c3];
    for (r, wr) in [w0, w1, w2, w3].iter().enumerate() {
        let mut s = 0.0;
        for v in acc[r].iter() {
            s += v;
        }
        for jj in n8..m {
            s += h[jj] * wr[jj];
        }
        out[r] = s;
    }
}

/// True when the kernels may use AVX-512F and VL (with AVX2 and FMA; see [`crate::linalg::simd`]).
/// The elementwise loops give the same bits at any vector width (no FMA contraction); only the
/// dot products' summation order depends on it, and never on the thread count.
#[inline(always)]
fn has_avx512() -> bool {
    crate::linalg::simd() == crate::linalg::Simd::Avx512
}

/// `out[q] = h · w[q*m..(q+1)*m]` for each row q of `w`, up to five rows per pass over `h`
/// (16-wide fused multiply-adds, the tail of M under a mask; the caller checks
/// [`has_avx512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn dot_rows_avx512(h: &[f32], w: &[f32], out: &mut [f32]) {
    let rows = out.len();
    assert!(w.len() >= rows * h.len());
    let mut r = 0;
    while r < rows {
        // SAFETY (all arms): AVX-512F is enabled in this function; rows r..r+R lie in `w`.
        r += match rows - r {
            1 => dot_rows_n::<1>(h, w, r, out),
            2 => dot_rows_n::<2>(h, w, r, out),
            3 => dot_rows_n::<3>(h, w, r, out),
            4 => dot_rows_n::<4>(h, w, r, out),
            _ => dot_rows_n::<5>(h, w, r, out),
        };
    }
}

/// R rows of [`dot_rows_avx512`] starting at row `r`; returns R.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn dot_rows_n<const R: usize>(h: &[f32], w: &[f32], r: usize, out: &mut [f32]) -> usize {
    let acc = dot_acc_avx512::<R>(h, &w[r * h.len()..]);
    for (q, a) in acc.iter().enumerate() {
        out[r + q] = std::arch::x86_64::_mm512_reduce_add_ps(*a);
    }
    R
}

/// The 16-lane partial sums of `h · w_q` for the R consecutive rows `w_q` (length `h.len()`)
/// at the start of `w`: R independent multiply-add chains, the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn dot_acc_avx512<const R: usize>(h: &[f32], w: &[f32]) -> [std::arch::x86_64::__m512; R] {
    use std::arch::x86_64::*;
    let m = h.len();
    assert!(w.len() >= R * m);
    let (hp, wp) = (h.as_ptr(), w.as_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    let mut j = 0;
    while j + 16 <= m {
        // SAFETY: j + 16 <= m, and the R rows of length m lie within w (asserted above).
        unsafe {
            let x = _mm512_loadu_ps(hp.add(j));
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(x, _mm512_loadu_ps(wp.add(q * m + j)), *a);
            }
        }
        j += 16;
    }
    if j < m {
        let mask: __mmask16 = ((1u32 << (m - j)) - 1) as u16;
        // SAFETY: masked loads touch only lanes j..m of h and of each row.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, hp.add(j));
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(mask, wp.add(q * m + j)), *a);
            }
        }
    }
    acc
}

/// True when the kernels may use AVX2 and FMA (see [`crate::linalg::simd`]).
#[inline(always)]
fn avx2_fma() -> bool {
    crate::linalg::simd() >= crate::linalg::Simd::Avx2
}

/// `out[q] = h · w[q*m..(q+1)*m]` for each row q of `w`, up to six rows per pass over `h`
/// with fused multiply-adds (AVX2 + FMA; the caller checks [`avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_rows_avx2(h: &[f32], w: &[f32], out: &mut [f32]) {
    let (m, rows) = (h.len(), out.len());
    assert!(w.len() >= rows * m);
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(6);
        let (wr, o) = (&w[r * m..(r + n) * m], &mut out[r..r + n]);
        match n {
            1 => dot_rows_block_avx2::<1>(h, wr, o),
            2 => dot_rows_block_avx2::<2>(h, wr, o),
            3 => dot_rows_block_avx2::<3>(h, wr, o),
            4 => dot_rows_block_avx2::<4>(h, wr, o),
            5 => dot_rows_block_avx2::<5>(h, wr, o),
            _ => dot_rows_block_avx2::<6>(h, wr, o),
        }
        r += n;
    }
}

/// R rows of [`dot_rows_avx2`] in one pass over `h`, each with two sums (even and odd blocks
/// of eight columns) so that 2R multiply-add chains run side by side: with one chain per row,
/// an item's K = 5 logits waited on the FMA latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn dot_rows_block_avx2<const R: usize>(h: &[f32], w: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let m = h.len();
    assert!(w.len() >= R * m && out.len() >= R);
    let n8 = m / 8 * 8;
    let (hp, wp) = (h.as_ptr(), w.as_ptr());
    let mut a = [[_mm256_setzero_ps(); R]; 2];
    let mut j = 0;
    while j + 16 <= n8 {
        // SAFETY: j + 16 <= m, and rows 0..R of length m lie within w (asserted above).
        unsafe {
            let (x0, x1) = (_mm256_loadu_ps(hp.add(j)), _mm256_loadu_ps(hp.add(j + 8)));
            for q in 0..R {
                a[0][q] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wp.add(q * m + j)), a[0][q]);
                a[1][q] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(wp.add(q * m + j + 8)), a[1][q]);
            }
        }
        j += 16;
    }
    if j < n8 {
        // SAFETY: j + 8 <= m, as above.
        unsafe {
            let x0 = _mm256_loadu_ps(hp.add(j));
            for q in 0..R {
                a[0][q] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wp.add(q * m + j)), a[0][q]);
            }
        }
    }
    for q in 0..R {
        let mut v = [0.0f32; 8];
        // SAFETY: `v` holds 8 floats.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), _mm256_add_ps(a[0][q], a[1][q])) };
        let mut s = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
        let row = &w[q * m..(q + 1) * m];
        for jj in n8..m {
            s += h[jj] * row[jj];
        }
        out[q] = s;
    }
}

/// Softmax of `z + bias` in place for K ≤ 16 in one 16-lane register (the lanes past K are
/// masked off); returns Σ_k (onehot(cl)_k − p_k)², the reconstruction error. e^x is
/// [`crate::linalg::exp_f32`]'s algorithm in vector form.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn softmax_avx512(z: &mut [f32], bias: &[f32], cl: usize, u: Option<f32>) -> (f32, usize) {
    use std::arch::x86_64::*;
    let k = z.len();
    assert!(k <= 16 && bias.len() >= k && cl < k);
    let mask = ((1u32 << k) - 1) as u16;
    // SAFETY: masked loads and stores touch lanes 0..k only, within `z` and `bias`.
    let t = unsafe {
        _mm512_add_ps(
            _mm512_maskz_loadu_ps(mask, z.as_ptr()),
            _mm512_maskz_loadu_ps(mask, bias.as_ptr()),
        )
    };
    softmax_reg(t, z, cl, u)
}

/// `e^x` per lane on AVX-512 with [`crate::linalg::exp_f32`]'s algorithm (inputs ≤ 0 here:
/// logits minus their maximum, clamped at −87); lanes outside `mask` are 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn exp_masked_avx512(x: std::arch::x86_64::__m512, mask: u16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let round = _mm512_set1_ps(12_582_912.0);
    let kk = _mm512_add_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        round,
    );
    let n = _mm512_sub_ps(kk, round);
    let f = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693_359_4))),
        _mm512_mul_ps(n, _mm512_set1_ps(-2.121_944_4e-4)),
    );
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_mul_ps(p, f), f, f),
        _mm512_set1_ps(1.0),
    );
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_sub_epi32(_mm512_castps_si512(kk), _mm512_set1_epi32(0x4B40_0000)),
        _mm512_set1_epi32(127),
    ));
    _mm512_maskz_mul_ps(mask, y, _mm512_castsi512_ps(bits))
}

/// [`softmax_avx512`] on logits already in a register (lanes 0..K of `t`, K = `z.len()`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn softmax_reg(
    t: std::arch::x86_64::__m512,
    z: &mut [f32],
    cl: usize,
    u: Option<f32>,
) -> (f32, usize) {
    use std::arch::x86_64::*;
    let k = z.len();
    assert!(k <= 16 && cl < k);
    let mask = ((1u32 << k) - 1) as u16;
    let t = _mm512_mask_blend_ps(mask, _mm512_set1_ps(-1e30), t);
    let x = _mm512_sub_ps(t, _mm512_set1_ps(_mm512_reduce_max_ps(t)));
    let e = exp_masked_avx512(x, mask);
    let pr = _mm512_mul_ps(e, _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(e)));
    let one = _mm512_set1_ps(1.0);
    let target = _mm512_maskz_mov_ps((1u32 << cl) as u16, one);
    let d = _mm512_sub_ps(target, pr);
    let err = _mm512_reduce_add_ps(_mm512_maskz_mul_ps(mask, d, d));
    let (out, pick) = match u {
        Some(u) => {
            // Inclusive prefix sums in four shift-and-add steps; the pick is the number of
            // the first K−1 sums that are ≤ u (see `softmax_sample`).
            let zero = _mm512_setzero_ps();
            let mut cum = pr;
            cum = _mm512_add_ps(cum, shift_up::<15>(cum, zero));
            cum = _mm512_add_ps(cum, shift_up::<14>(cum, zero));
            cum = _mm512_add_ps(cum, shift_up::<12>(cum, zero));
            cum = _mm512_add_ps(cum, shift_up::<8>(cum, zero));
            let le = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(mask >> 1, cum, _mm512_set1_ps(u));
            let pick = le.count_ones() as usize;
            (_mm512_maskz_mov_ps((1u32 << pick) as u16, one), pick)
        }
        None => (pr, 0),
    };
    // SAFETY: as above.
    unsafe { store_lanes(z.as_mut_ptr(), out, k) };
    (err, pick)
}

/// The K ≤ 8 logits `b_k + h_r · W_k` of R ratings, rating r's in lanes 0..K of register r
/// (W_k the K rows of `wi`, each of length M), so the softmax that follows never goes through
/// memory: K × R 16-wide multiply-add chains, each W load shared by the R ratings, then one
/// transposing horizontal sum per rating. Every rating gets the same operations whatever R,
/// so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn logits_rows_avx512<const K: usize, const R: usize>(
    hs: [&[f32]; R],
    wi: &[f32],
    bi: &[f32],
) -> [std::arch::x86_64::__m512; R] {
    use std::arch::x86_64::*;
    let m = hs[0].len();
    assert!(K <= 8 && hs.iter().all(|h| h.len() == m) && wi.len() >= K * m && bi.len() >= K);
    let wp = wi.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); K]; R];
    let mut j = 0;
    while j + 16 <= m {
        // SAFETY: j + 16 <= m, and the K rows of length m lie within wi (asserted above).
        unsafe {
            let x: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(hs[r].as_ptr().add(j)));
            for q in 0..K {
                let w = _mm512_loadu_ps(wp.add(q * m + j));
                for r in 0..R {
                    acc[r][q] = _mm512_fmadd_ps(x[r], w, acc[r][q]);
                }
            }
        }
        j += 16;
    }
    if j < m {
        let mask: __mmask16 = ((1u32 << (m - j)) - 1) as u16;
        // SAFETY: masked loads touch only lanes j..m of the h rows and of each W row.
        unsafe {
            let x: [__m512; R] =
                std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, hs[r].as_ptr().add(j)));
            for q in 0..K {
                let w = _mm512_maskz_loadu_ps(mask, wp.add(q * m + j));
                for r in 0..R {
                    acc[r][q] = _mm512_fmadd_ps(x[r], w, acc[r][q]);
                }
            }
        }
    }
    // A loop, not `std::array::from_fn`: its closure was compiled out of line, and the K×R
    // accumulators went through the stack to reach it.
    let mut out = [_mm512_setzero_ps(); R];
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = reduce_logits(a, bi);
    }
    out
}

/// Lane q of the result = Σ lanes of `acc[q]` + `bi[q]` (q < K ≤ 8): 16 → 8 lanes each, then
/// an 8 × 8 transposing sum with horizontal adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn reduce_logits<const K: usize>(
    acc: &[std::arch::x86_64::__m512; K],
    bi: &[f32],
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    assert!(K <= 8 && bi.len() >= K);
    let mut v = [_mm256_setzero_ps(); 8];
    for (q, a) in acc.iter().enumerate() {
        v[q] = _mm256_add_ps(
            _mm512_castps512_ps256(*a),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a))),
        );
    }
    let t01 = _mm256_hadd_ps(v[0], v[1]);
    let t23 = _mm256_hadd_ps(v[2], v[3]);
    let t45 = _mm256_hadd_ps(v[4], v[5]);
    let t67 = _mm256_hadd_ps(v[6], v[7]);
    let u0 = _mm256_hadd_ps(t01, t23);
    let u1 = _mm256_hadd_ps(t45, t67);
    let r = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(u0, u1),
        _mm256_permute2f128_ps::<0x31>(u0, u1),
    );
    // SAFETY: the masked load reads bi[0..K] only.
    let b = unsafe { _mm256_maskload_ps(bi.as_ptr(), lane_mask8(K)) };
    _mm512_castps256_ps512(_mm256_add_ps(r, b))
}

/// The negative visible step of one item (see `RatingRbm::item_negative`) for K ≤ 8 with
/// AVX-512: logits, softmax and sampling stay in registers, two ratings at a time so their
/// dependency chains overlap (the same operations per rating as one at a time, and the same
/// order of random draws).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn item_negative_avx512<const K: usize>(
    wi: &[f32],
    bi: &[f32],
    ents: &[(u32, u8)],
    h: &[f32],
    sample: bool,
    last: bool,
    rng: &mut Stream,
    z: &mut [f32],
    acc: &mut [f32],
    bits: Option<(&[u32], usize)>,
) -> f64 {
    let m = wi.len() / K;
    let mut err = 0.0f64;
    // A macro, not a closure: a closure would not inherit this function's target features.
    macro_rules! rest {
        ($e:expr, $zz:expr, $sm:expr) => {{
            let (zz, sm): (&mut [f32], (f32, usize)) = ($zz, $sm);
            let n = ents[$e].0 as usize;
            if last {
                err += f64::from(sm.0);
            }
            let an = &mut acc[n * m..(n + 1) * m];
            if sample {
                add_row_avx512(an, &wi[sm.1 * m..(sm.1 + 1) * m]);
            } else {
                for (kk, &pz) in zz.iter().enumerate() {
                    axpy(an, pz, &wi[kk * m..(kk + 1) * m]);
                }
            }
        }};
    }
    let row = |e: usize| {
        let n = ents[e].0 as usize;
        &h[n * m..(n + 1) * m]
    };
    let mut e = 0;
    // Sixteen ratings at a time across SIMD lanes while the item has enough of them left (see
    // `block_negative`); its random draws come first, in rating order, like the others'.
    if let (true, Some((hbits, hb))) = (sample, bits) {
        loop {
            let rest = ents.len() - e;
            if rest < NARROW_BLOCK_MIN {
                break;
            }
            // Sixteen lanes while at least BLOCK_MIN are left, then one block of the rest in
            // eight lanes (`block_negative` runs blocks of up to 8 in 256-bit registers).
            let take = if rest >= BLOCK_MIN {
                rest.min(16)
            } else {
                rest.min(8)
            };
            let blk = &ents[e..e + take];
            let mut u = [0.0f32; 16];
            for x in &mut u[..blk.len()] {
                *x = rng.uniform();
            }
            let (picks, blk_err) = block_negative::<K>(wi, bi, blk, hbits, hb, &u, last);
            for (l, &(n, _)) in blk.iter().enumerate() {
                let (n, p) = (n as usize, picks[l] as usize);
                let zz = &mut z[(e + l) * K..(e + l + 1) * K];
                zz.fill(0.0);
                zz[p] = 1.0;
                add_row_avx512(&mut acc[n * m..(n + 1) * m], &wi[p * m..(p + 1) * m]);
            }
            err += blk_err;
            e += blk.len();
        }
    }
    // Four ratings at a time (two independent softmax pairs in flight), then pairs, then one;
    // the random draws are taken in rating order either way.
    while e + 4 <= ents.len() {
        let [t0, t1, t2, t3] =
            logits_rows_avx512::<K, 4>([row(e), row(e + 1), row(e + 2), row(e + 3)], wi, bi);
        let (u01, u23) = if sample {
            let u = [rng.uniform(), rng.uniform(), rng.uniform(), rng.uniform()];
            (Some((u[0], u[1])), Some((u[2], u[3])))
        } else {
            (None, None)
        };
        let (z01, z23) = z[e * K..(e + 4) * K].split_at_mut(2 * K);
        let ((z0, z1), (z2, z3)) = (z01.split_at_mut(K), z23.split_at_mut(K));
        let cl = |q: usize| ents[e + q].1 as usize;
        let (err01, p0, p1) = softmax_pair::<K>(t0, t1, z0, z1, cl(0), cl(1), u01);
        let (err23, p2, p3) = softmax_pair::<K>(t2, t3, z2, z3, cl(2), cl(3), u23);
        rest!(e, z0, (err01, p0));
        rest!(e + 1, z1, (0.0, p1));
        rest!(e + 2, z2, (err23, p2));
        rest!(e + 3, z3, (0.0, p3));
        e += 4;
    }
    if e + 2 <= ents.len() {
        let [ta, tb] = logits_rows_avx512::<K, 2>([row(e), row(e + 1)], wi, bi);
        // Not `bool::then`: its closure is a call out of this AVX-512 function, which spills
        // every vector register around it.
        let u = if sample {
            Some((rng.uniform(), rng.uniform()))
        } else {
            None
        };
        let (za, zb) = z[e * K..(e + 2) * K].split_at_mut(K);
        let (ca, cb) = (ents[e].1 as usize, ents[e + 1].1 as usize);
        let (pair_err, pa, pb) = softmax_pair::<K>(ta, tb, za, zb, ca, cb, u);
        rest!(e, za, (pair_err, pa));
        rest!(e + 1, zb, (0.0, pb));
        e += 2;
    }
    if e < ents.len() {
        let [t] = logits_rows_avx512::<K, 1>([row(e)], wi, bi);
        let u = if sample { Some(rng.uniform()) } else { None };
        let zz = &mut z[e * K..(e + 1) * K];
        let sm = softmax_reg(t, zz, ents[e].1 as usize, u);
        rest!(e, zz, sm);
    }
    err
}

/// Fewest ratings of one item left for a 16-lane [`block_negative`]: a block costs about the
/// same whatever its number of ratings, and up to 8 go in a narrower, cheaper block.
const BLOCK_MIN: usize = 9;

/// Fewest ratings of one item left for an 8-lane [`block_negative`] (fewer go the per-rating
/// way). Per unit, 8-lane block against per-rating path (a timing probe over 1,682 units, W in
/// L3): 4 ratings 228 against 193 ns, 5: 240 / 269, 6: 251 / 286, 7: 261 / 370; and 8 ratings
/// 272 ns against 326 in a 16-lane block.
const NARROW_BLOCK_MIN: usize = 5;

/// The sampled negative visible step of up to 16 ratings of one item, one rating per SIMD
/// lane, for a sampled (binary) h given as bit masks (`hbits`, `hb` 16-bit words per case,
/// one per u32): each logit b_k + Σ_j h_j W_kj is a sum of the W_kj whose h_j is 1, so it is
/// built lane-wise from the mask bits and broadcast weights (no horizontal sums), and the
/// softmax, the squared error and the cumulative-sum draw (the number of the first K−1
/// cumulative probabilities ≤ u, as in [`softmax_sample`]) run lane-wise. Up to 8 ratings
/// are summed in 256-bit registers (Zen 4 runs two such masked adds at a time, and one
/// 512-bit one), with the same additions per lane. Returns the sampled class of each rating
/// and, with `last`, the block's summed squared reconstruction error.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn block_negative<const K: usize>(
    wi: &[f32],
    bi: &[f32],
    blk: &[(u32, u8)],
    hbits: &[u32],
    hb: usize,
    u: &[f32; 16],
    last: bool,
) -> ([u32; 16], f64) {
    use std::arch::x86_64::*;
    let (cnt, m) = (blk.len(), wi.len() / K);
    assert!((1..=16).contains(&cnt) && K <= 16 && bi.len() >= K && m <= 16 * hb);
    let lanes = ((1u32 << cnt) - 1) as u16;
    let mut idx = [0i32; 16];
    let mut cls = [0i32; 16];
    for (l, &(n, c)) in blk.iter().enumerate() {
        assert!((n as usize + 1) * hb <= hbits.len());
        idx[l] = (n as usize * hb) as i32;
        cls[l] = i32::from(c);
    }
    // SAFETY: reads of the two 16-element arrays above.
    let (idx, cls) = unsafe {
        (
            _mm512_loadu_si512(idx.as_ptr().cast()),
            _mm512_loadu_si512(cls.as_ptr().cast()),
        )
    };
    // Two sets of K sums (even and odd hidden units) so the chains are half as long. Each
    // h_j is 0 or 1 per lane, so lane l adds W_kj when its bit j is set and nothing otherwise:
    // one masked add per weight, the weight broadcast from memory. (Two 8-lane multiply-adds
    // of 0/1 vectors per weight were 12 % slower here; zero-masked broadcasts with plain adds,
    // and a 16-lane block as two 8-lane halves, were slower too.) `$zero`, `$gather`, `$test`,
    // `$set1`, `$bcst` and `$reg` pick the vector width; `$d` is `$`, for the inner macros.
    let wp = wi.as_ptr();
    let one = _mm512_set1_ps(1.0);
    macro_rules! sums {
        (
            $d:tt, $zero:expr, $gather:ident, $test:ident, $set1:ident, $bcst:literal, $reg:ident
        ) => {{
            let mut acc = [[$zero; K]; 2];
            // Word w of every lane's hidden bits, gathered one word ahead: the loop used to
            // stall right after each gather. (Macros, not closures: a closure would not
            // inherit this function's target features.)
            let mut next = $gather!(0);
            for w in 0..hb {
                let g = next;
                if w + 1 < hb {
                    next = $gather!(w + 1);
                }
                let j0 = 16 * w;
                let nbits = (m - j0).min(16);
                macro_rules! bit {
                    ($d b:expr, $d s:expr) => {{
                        let hk = $test(g, $set1(1 << $d b));
                        for (q, a) in acc[$d s].iter_mut().enumerate() {
                            // One masked add with the weight broadcast from memory: written
                            // out, since LLVM turns `_mm512_mask_add_ps` here into an add and
                            // a masked move.
                            // SAFETY: q < K and j0 + b < m: the load stays within the K×M
                            // block `wi`; AVX-512F and VL are enabled for this function.
                            unsafe {
                                std::arch::asm!(
                                    concat!("vaddps {a}{{{k}}}, {a}, dword ptr [{p}]", $bcst),
                                    a = inout($reg) *a,
                                    k = in(kreg) hk,
                                    p = in(reg) wp.add(q * m + j0 + $d b),
                                    options(pure, readonly, nostack, preserves_flags),
                                );
                            }
                        }
                    }};
                }
                if nbits == 16 {
                    bit!(0, 0);
                    bit!(1, 1);
                    bit!(2, 0);
                    bit!(3, 1);
                    bit!(4, 0);
                    bit!(5, 1);
                    bit!(6, 0);
                    bit!(7, 1);
                    bit!(8, 0);
                    bit!(9, 1);
                    bit!(10, 0);
                    bit!(11, 1);
                    bit!(12, 0);
                    bit!(13, 1);
                    bit!(14, 0);
                    bit!(15, 1);
                } else {
                    // The last, partial word: written out too (a loop indexing the two sets of
                    // sums by `b & 1` kept all of them on the stack for the whole block).
                    macro_rules! bits_below {
                        ($d ($d b:literal)*) => {$d (
                            if $d b < nbits {
                                bit!($d b, $d b & 1);
                            }
                        )*};
                    }
                    bits_below!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
                }
            }
            acc
        }};
    }
    // SAFETY (both gathers): every active lane's index n·hb + w < (n + 1)·hb ≤ hbits.len()
    // (asserted above).
    macro_rules! gather16 {
        ($w:expr) => {
            unsafe {
                _mm512_mask_i32gather_epi32::<4>(
                    _mm512_setzero_si512(),
                    lanes,
                    idx,
                    hbits.as_ptr().add($w).cast(),
                )
            }
        };
    }
    macro_rules! gather8 {
        ($w:expr) => {
            unsafe {
                _mm256_mmask_i32gather_epi32::<4>(
                    _mm256_setzero_si256(),
                    lanes as u8,
                    _mm512_castsi512_si256(idx),
                    hbits.as_ptr().add($w).cast(),
                )
            }
        };
    }
    let t: [__m512; K] = if cnt <= 8 {
        // Eight lanes or fewer: the same additions in 256-bit registers, which this CPU runs
        // two at a time (a C replica: 95–107 against 205–228 ns for the adds of a block).
        let acc = sums!(
            $,
            _mm256_setzero_ps(),
            gather8,
            _mm256_test_epi32_mask,
            _mm256_set1_epi32,
            "{{1to8}}",
            ymm_reg
        );
        std::array::from_fn(|q| {
            let x = _mm256_add_ps(_mm256_add_ps(acc[0][q], acc[1][q]), _mm256_set1_ps(bi[q]));
            _mm512_zextps256_ps512(x)
        })
    } else {
        let acc = sums!(
            $,
            _mm512_setzero_ps(),
            gather16,
            _mm512_test_epi32_mask,
            _mm512_set1_epi32,
            "{{1to16}}",
            zmm_reg
        );
        std::array::from_fn(|q| {
            _mm512_add_ps(_mm512_add_ps(acc[0][q], acc[1][q]), _mm512_set1_ps(bi[q]))
        })
    };
    let mut mx = t[0];
    for &x in &t[1..] {
        mx = _mm512_max_ps(mx, x);
    }
    let e: [__m512; K] =
        std::array::from_fn(|q| exp_masked_avx512(_mm512_sub_ps(t[q], mx), 0xFFFF));
    let mut sum = e[0];
    for &x in &e[1..] {
        sum = _mm512_add_ps(sum, x);
    }
    let inv = _mm512_div_ps(_mm512_set1_ps(1.0), sum);
    let p: [__m512; K] = std::array::from_fn(|q| _mm512_mul_ps(e[q], inv));
    let mut err = 0.0f64;
    if last {
        let mut sq = _mm512_setzero_ps();
        for (q, &pq) in p.iter().enumerate() {
            let hot = _mm512_cmpeq_epi32_mask(cls, _mm512_set1_epi32(q as i32));
            let d = _mm512_sub_ps(_mm512_maskz_mov_ps(hot, one), pq);
            sq = _mm512_add_ps(sq, _mm512_mul_ps(d, d));
        }
        err = f64::from(_mm512_mask_reduce_add_ps(lanes, sq));
    }
    // SAFETY: an unaligned read of the 16 draws.
    let uv = unsafe { _mm512_loadu_ps(u.as_ptr()) };
    let mut pick = _mm512_setzero_si512();
    let mut cum = _mm512_setzero_ps();
    for &pq in &p[..K - 1] {
        cum = _mm512_add_ps(cum, pq);
        let le = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(cum, uv);
        pick = _mm512_mask_add_epi32(pick, le, pick, _mm512_set1_epi32(1));
    }
    let mut out = [0u32; 16];
    // SAFETY: an unaligned write of 16 lanes into `out`.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), pick) };
    (out, err)
}

/// [`softmax_reg`] for two ratings at once, K ≤ 8: rating a in lanes 0..K, rating b in lanes
/// 8..8+K of one register, every reduction a butterfly within each 256-bit half. With `u`,
/// samples both classes. Returns (both ratings' squared reconstruction errors summed, pick a,
/// pick b).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn softmax_pair<const K: usize>(
    ta: std::arch::x86_64::__m512,
    tb: std::arch::x86_64::__m512,
    za: &mut [f32],
    zb: &mut [f32],
    ca: usize,
    cb: usize,
    u: Option<(f32, f32)>,
) -> (f32, usize, usize) {
    use std::arch::x86_64::*;
    assert!((2..=8).contains(&K) && za.len() == K && zb.len() == K && ca < K && cb < K);
    let half = ((1u32 << K) - 1) as u16;
    let mask = half | (half << 8);
    let t = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castps_pd(ta),
        _mm256_castps_pd(_mm512_castps512_ps256(tb)),
    ));
    let t = _mm512_mask_blend_ps(mask, _mm512_set1_ps(-1e30), t);
    // Butterflies within each 256-bit half: swap 128-bit blocks, then pairs, then neighbours.
    macro_rules! butterfly {
        ($x:expr, $op:ident) => {{
            let x = $x;
            let x = $op(x, _mm512_shuffle_f32x4::<0b10_11_00_01>(x, x));
            let x = $op(x, _mm512_permute_ps::<0b01_00_11_10>(x));
            $op(x, _mm512_permute_ps::<0b10_11_00_01>(x))
        }};
    }
    let x = _mm512_sub_ps(t, butterfly!(t, _mm512_max_ps));
    let e = exp_masked_avx512(x, mask);
    let one = _mm512_set1_ps(1.0);
    let pr = _mm512_mul_ps(e, _mm512_div_ps(one, butterfly!(e, _mm512_add_ps)));
    let target = _mm512_maskz_mov_ps(((1u32 << ca) | (1u32 << (8 + cb))) as u16, one);
    let d = _mm512_sub_ps(target, pr);
    let err = _mm512_reduce_add_ps(_mm512_maskz_mul_ps(mask, d, d));
    let (out, pa, pb) = match u {
        Some((ua, ub)) => {
            // Inclusive prefix sums within each half (shifts by 1, 2, 4 lanes, the lanes
            // that would take from the other half kept as they are); the pick is the number
            // of the first K−1 sums that are ≤ u (see `softmax_sample`).
            let zero = _mm512_setzero_ps();
            let mut cum = pr;
            cum = _mm512_mask_add_ps(cum, 0xFEFE, cum, shift_up::<15>(cum, zero));
            cum = _mm512_mask_add_ps(cum, 0xFCFC, cum, shift_up::<14>(cum, zero));
            cum = _mm512_mask_add_ps(cum, 0xF0F0, cum, shift_up::<12>(cum, zero));
            let uv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(ua), _mm512_set1_ps(ub));
            let first = half >> 1;
            let le = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(first | (first << 8), cum, uv);
            let (pa, pb) = (
                (le & 0xFF).count_ones() as usize,
                (le >> 8).count_ones() as usize,
            );
            let hot = ((1u32 << pa) | (1u32 << (8 + pb))) as u16;
            (_mm512_maskz_mov_ps(hot, one), pa, pb)
        }
        None => (pr, 0, 0),
    };
    // SAFETY: lanes 0..K (rating a) and 8..8+K (rating b, moved down) fill `za` and `zb`.
    unsafe {
        store_lanes(za.as_mut_ptr(), out, K);
        store_lanes(
            zb.as_mut_ptr(),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(out, out),
            K,
        );
    }
    (err, pa, pb)
}

/// An AVX2 lane mask with the first `k` (≤ 8) lanes set.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lane_mask8(k: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(k as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Lanes moved up by 16 − S (lane i gets lane i − (16 − S), zeros below).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn shift_up<const S: i32>(
    x: std::arch::x86_64::__m512,
    zero: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_castsi512_ps(_mm512_alignr_epi32::<S>(
        _mm512_castps_si512(x),
        _mm512_castps_si512(zero),
    ))
}

/// Softmax of `z + bias` in place, and with `u` a class sampled from it (z becomes its
/// one-hot vector): the first class whose cumulative probability exceeds `u`, else the last,
/// i.e. the number of the first K−1 cumulative sums that are ≤ `u`, counted without branches.
/// Returns (Σ_k (onehot(cl)_k − p_k)², sampled class or 0).
#[inline(always)]
fn softmax_sample(z: &mut [f32], bias: &[f32], cl: usize, u: Option<f32>) -> (f32, usize) {
    let k = z.len();
    for kk in 0..k {
        z[kk] += bias[kk];
    }
    softmax(z);
    let mut err = 0.0;
    for (kk, &p) in z.iter().enumerate() {
        let target = if kk == cl { 1.0 } else { 0.0 };
        err += (target - p) * (target - p);
    }
    let Some(u) = u else { return (err, 0) };
    let mut cum = 0.0;
    let mut pick = 0usize;
    for &p in &z[..k - 1] {
        cum += p;
        pick += usize::from(cum <= u);
    }
    z.fill(0.0);
    z[pick] = 1.0;
    (err, pick)
}

/// Ratings whose softmax and draw [`softmax_sample_lanes`] does at once (eight f32 lanes of a
/// 256-bit register).
const SOFTMAX_LANES: usize = 8;

/// Most rating classes [`softmax_sample_lanes`] takes (half stars need 10).
const SOFTMAX_MAX_K: usize = 16;

/// [`softmax_sample`] for up to [`SOFTMAX_LANES`] ratings at once (`z`: K logits per rating,
/// K ≤ [`SOFTMAX_MAX_K`]; `cls`: their rated classes; `u`: their draws), written over the ratings so that it
/// vectorizes: every rating sees the same operations in the same order as in
/// [`softmax_sample`], so the probabilities, errors and picks are bit-identical. `z` becomes
/// the one-hot vectors; returns each rating's squared error and sampled class.
#[inline(always)]
fn softmax_sample_lanes(
    z: &mut [f32],
    bias: &[f32],
    cls: &[usize; SOFTMAX_LANES],
    u: &[f32; SOFTMAX_LANES],
) -> ([f32; SOFTMAX_LANES], [usize; SOFTMAX_LANES]) {
    const L: usize = SOFTMAX_LANES;
    let k = bias.len();
    let g = z.len() / k;
    assert!(k <= SOFTMAX_MAX_K && g <= L && z.len() == g * k);
    // Class-major copies: t[c][l] = z_c + b_c of rating l (unused lanes stay 0).
    let mut t = [[0.0f32; L]; SOFTMAX_MAX_K];
    for l in 0..g {
        for c in 0..k {
            t[c][l] = z[l * k + c] + bias[c];
        }
    }
    let mut mx = [f32::NEG_INFINITY; L];
    for row in &t[..k] {
        for (m, &v) in mx.iter_mut().zip(row) {
            if v > *m {
                *m = v;
            }
        }
    }
    let mut s = [0.0f32; L];
    for row in &mut t[..k] {
        for l in 0..L {
            row[l] = crate::linalg::exp_f32(row[l] - mx[l]);
            s[l] += row[l];
        }
    }
    let mut inv = [0.0f32; L];
    for l in 0..L {
        inv[l] = 1.0 / s[l];
    }
    let (mut err, mut cum, mut pick) = ([0.0f32; L], [0.0f32; L], [0usize; L]);
    for (c, row) in t[..k].iter_mut().enumerate() {
        for l in 0..L {
            let p = row[l] * inv[l];
            let target = if cls[l] == c { 1.0 } else { 0.0 };
            err[l] += (target - p) * (target - p);
            if c + 1 < k {
                cum[l] += p;
                pick[l] += usize::from(cum[l] <= u[l]);
            }
        }
    }
    z.fill(0.0);
    for l in 0..g {
        z[l * k + pick[l]] = 1.0;
    }
    (err, pick)
}

/// In-place softmax; returns nothing, `z` holds probabilities after.
#[inline]
fn softmax(z: &mut [f32]) {
    // A plain comparison chain (no NaN-aware `f32::max`, whose blend serializes the loop).
    let mut mx = f32::NEG_INFINITY;
    for &v in z.iter() {
        if v > mx {
            mx = v;
        }
    }
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = crate::linalg::exp_f32(*v - mx);
        s += *v;
    }
    let inv = 1.0 / s;
    for v in z.iter_mut() {
        *v *= inv;
    }
}

/// Weight, in ratings, of a rated visible unit in the negative pass when cutting units into
/// chunks of equal work: its random stream and logits setup cost about four ratings' worth
/// (per-chunk timings on MovieLens-100K, user- and item-based: ≈ 40 ns a rating, ≈ 160 ns a
/// rated unit; an unrated unit costs nothing there).
const NEG_RATED_UNIT_WEIGHT: usize = 4;

/// How much less than half of the negative pass's work (per mille of the whole) its first
/// half of the chunks gets in a batch small enough to be indexed serially: in training the
/// next batch's index rides on that pass (`Team::for_each_static_and`), and the member running
/// the lighter half is then the first done, takes the index, and ends with the other instead
/// of making it wait. Of 0, 30 and 50 ‰ on MovieLens-100K (user-based at batches 100 and 256,
/// and item-based), 30 was the fastest: 1.6–2.5 % faster than 0.
const RIDE_LIGHTER: usize = 30;

/// Relative costs of a unit (its K×M momentum step, rated or not) and of a rating in the
/// fused momentum step, for cutting units into chunks of equal work. Per-chunk timings on
/// MovieLens-100K gave ≈ 118 ns a unit, and 15 ns per rating of the batch stepped for plus
/// 10 ns per rating of the next batch (its positive phase); the cut is made from one batch's
/// ratings, so a rating counts for both (the two batches' ratings spread over the units
/// alike). With an older kernel's unit weight of 9 ratings, the member holding the popular
/// units took 25 % longer (258 against 207 µs a batch) and the other waited.
const STEP_COST_UNIT: usize = 24;
/// The cost of a rating in the fused momentum step, on [`STEP_COST_UNIT`]'s scale.
const STEP_COST_RATING: usize = 5;

/// Cuts units `0..d` into [`N_CHUNKS`] runs of about equal work into `bounds` (N_CHUNKS + 1
/// entries, from 0 to d): `work(i)` is the work of units `0..i` (increasing, from 0).
///
/// With `lighter` (per mille) the first half of the chunks gets that much less than half the
/// work, and the second half that much more (each half cut evenly).
fn balanced_bounds(
    d: usize,
    work: impl Fn(usize) -> usize,
    lighter: usize,
    bounds: &mut Vec<usize>,
) {
    bounds.clear();
    bounds.push(0);
    let total = work(d);
    let half = N_CHUNKS / 2;
    let first = total * (500 - lighter) / 1000;
    for c in 1..N_CHUNKS {
        let target = if c <= half {
            first * c / half
        } else {
            first + (total - first) * (c - half) / (N_CHUNKS - half)
        };
        // The first unit whose cumulative work reaches the target.
        let (mut lo, mut hi) = (0usize, d);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if work(mid) < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        bounds.push(lo.max(*bounds.last().unwrap()));
    }
    bounds.push(d);
}

/// How many cases ahead the batch index prefetches case rows (see [`RatingRbm::batch_index`]):
/// a case row is ~100 ratings, and three rows ahead cover the time one takes to count.
const INDEX_PREFETCH_AHEAD: usize = 3;

/// How many units ahead the negative pass asks for a unit's K×M block of W. The pass reads each
/// rated unit's block once per batch, between reads of scattered case rows, and the hardware
/// prefetcher does not follow it: at Netflix scale (W is 35 MB, in DRAM) asking two units ahead
/// made the pass 14–23 % faster (one unit ahead and four did as well or a little worse), and at
/// MovieLens-100K scale (W in L3) it changed nothing. The momentum step got 9–29 % *slower*
/// with the same request for its W and velocity blocks (or with `prefetchw`), and asking for
/// its events' case rows a few events ahead changed nothing, so it has neither.
const NEG_PREFETCH_AHEAD: usize = 2;

/// How many ratings ahead unit-major prediction asks for the hidden-input row it will add W to
/// next, and how many pairs ahead for the rows it predicts from: a group's rows are tens of MB
/// at Netflix scale and reached at random; asking ahead made prediction ~30 % faster there.
const PREDICT_PREFETCH_RATINGS: usize = 6;
/// See [`PREDICT_PREFETCH_RATINGS`].
const PREDICT_PREFETCH_PAIRS: usize = 4;

/// Batches with at least this many ratings are indexed in parallel (below it, the parallel
/// version's per-part counts over all units cost more than they save: 0.5 → 0.9 ms per
/// MovieLens-100K epoch at 4,096; the result is the same either way).
const PAR_INDEX_MIN: usize = 1 << 15;

/// A raw pointer that may cross threads, for writes the caller proves disjoint (and, in
/// [`ChunkFolds`], reads of blocks whose writers are done, ordered by its counters).
struct SyncPtr<T>(*mut T);
// SAFETY: only used for writes to disjoint elements, and reads ordered after them (see the
// use sites).
unsafe impl<T: Send> Sync for SyncPtr<T> {}

/// Runs `f` on every item, on the team if there is one, else in order here.
fn for_each_maybe_par<T: Send>(
    team: Option<&Team<'_>>,
    items: impl IntoIterator<Item = T>,
    f: impl Fn(T) + Sync,
) {
    match team {
        Some(team) => team.for_each(items, f),
        None => items.into_iter().for_each(f),
    }
}

/// Whether a batch with `ratings` ratings is indexed in parallel (see [`PAR_INDEX_MIN`]).
fn parallel_index(ratings: usize) -> bool {
    ratings >= PAR_INDEX_MIN
}

/// Ratings in a batch of cases.
fn batch_ratings(cases: &Csr, batch: &[usize]) -> usize {
    batch
        .iter()
        .map(|&r| cases.offsets[r + 1] - cases.offsets[r])
        .sum()
}

/// The per-case rows `0..nb` (M floats each) of `bufs` cut into one run of cases per team
/// member: (first case, its rows of each buffer).
fn case_runs<'a, T, const B: usize>(
    team: &Team<'_>,
    nb: usize,
    m: usize,
    bufs: [&'a mut [T]; B],
) -> impl Iterator<Item = (usize, [&'a mut [T]; B])> + 'a {
    let per = nb.div_ceil(team.threads()).max(1);
    let mut rows = bufs.map(|b| b[..nb * m].chunks_mut(per * m));
    (0..nb.div_ceil(per)).map(move |r| {
        let run = rows
            .each_mut()
            .map(|it| it.next().expect("one run per chunk"));
        (r * per, run)
    })
}

/// [`case_runs`] case by case, with each case's bit-mask words of the sampled h
/// ([`BatchGrad::hbits`], `hb` per case) beside its rows: one run per team member, each
/// yielding (case, its row of each buffer, its words).
fn case_runs_with_bits<'a, const B: usize>(
    team: &Team<'_>,
    nb: usize,
    m: usize,
    bufs: [&'a mut [f32]; B],
    hbits: &'a mut [u32],
    hb: usize,
) -> impl Iterator<Item = impl Iterator<Item = (usize, [&'a mut [f32]; B], &'a mut [u32])> + Send> + 'a
{
    case_runs(team, nb, m, bufs)
        .zip(case_runs(team, nb, hb, [hbits]))
        .map(move |((n0, run), (_, [bits]))| {
            let mut rows = run.map(|b| b.chunks_mut(m));
            (n0..).zip(bits.chunks_mut(hb)).map(move |(n, bits)| {
                let rows = rows.each_mut().map(|it| it.next().expect("a row per case"));
                (n, rows, bits)
            })
        })
}

/// Buffers and gradients of one mini-batch, allocated once per training run.
pub(crate) struct BatchGrad {
    p0: Vec<f32>,
    p1: Vec<f32>,
    /// p0 − p1 per case (see [`CaseRows`]).
    pd: Vec<f32>,
    base: Vec<f32>,
    /// Negative-phase visible units, K per rating of the batch.
    pub(crate) vneg: Vec<f32>,
    /// Per unit, the next of its slots in the batch's index (scratch for
    /// [`RatingRbm::batch_gradient`]).
    cursor: Vec<usize>,
    /// Negative visible units in the batch's item-major order, K per rating.
    pub(crate) zbi: Vec<f32>,
    err_item: Vec<f64>,
    /// The negative pass's chunks of visible units ([`N_CHUNKS`] + 1 bounds).
    chunk_bounds: Vec<usize>,
    /// The momentum step's and positive phase's chunks of visible units.
    step_bounds: Vec<usize>,
    /// Per unit i, how many units before i the batch rated.
    rated_before: Vec<usize>,
    acc: Vec<f32>,
    by_item_ptr: Vec<usize>,
    by_item: Vec<(u32, u8)>,
    part_cnt: Vec<u32>,
    imp_ptr: Vec<usize>,
    imp_ent: Vec<u32>,
    imp_fill: Vec<usize>,
    /// Gradient of W.
    pub(crate) gw: Vec<f32>,
    /// Gradient of b.
    pub(crate) gb: Vec<f32>,
    /// Gradient of c.
    pub(crate) gc: Vec<f32>,
    /// Gradient of D (conditional), else empty.
    pub(crate) gd: Vec<f32>,
    /// One K×M + K gradient block per chunk for the fused momentum step.
    step_scratch: Vec<f32>,
    /// Claims on the chunks' units in the negative pass and the step run on this batch.
    claims: UnitClaims,
    /// Per team member, per-case sums for the units it does in others' chunks in the
    /// negative pass (written, never read: the chunk's runner adds those rows itself).
    help_acc: Vec<f32>,
    /// Per visible unit, the squared reconstruction error of a unit done by a member other than
    /// its chunk's runner in the negative pass.
    unit_err: Vec<f64>,
    /// The sampled h of each case as bit masks, [`hidden_words`] u32 per case (16 bits each),
    /// for the negative pass's lane-parallel blocks.
    hbits: Vec<u32>,
}

/// u32 words per case in [`BatchGrad::hbits`]: one per 16 hidden units.
fn hidden_words(m: usize) -> usize {
    m.div_ceil(16)
}

/// `out[w]` bit b = (h[16·w + b] ≠ 0), for a sampled (0/1) h.
#[inline(always)]
fn hidden_bits(h: &[f32], out: &mut [u32]) {
    for (w, part) in out.iter_mut().zip(h.chunks(16)) {
        *w = part
            .iter()
            .enumerate()
            .fold(0u32, |acc, (b, &x)| acc | (u32::from(x != 0.0) << b));
    }
}

impl BatchGrad {
    pub(crate) fn new(d: usize, k: usize, m: usize, bs: usize, conditional: bool) -> Self {
        BatchGrad {
            p0: vec![0.0; bs * m],
            p1: vec![0.0; bs * m],
            pd: vec![0.0; bs * m],
            base: vec![0.0; bs * m],
            vneg: Vec::new(),
            cursor: Vec::new(),
            zbi: Vec::new(),
            err_item: Vec::new(),
            chunk_bounds: Vec::new(),
            step_bounds: Vec::new(),
            rated_before: Vec::new(),
            acc: Vec::new(),
            by_item_ptr: vec![0; d + 1],
            by_item: Vec::new(),
            part_cnt: Vec::new(),
            imp_ptr: vec![0; d + 1],
            imp_ent: Vec::new(),
            imp_fill: Vec::new(),
            gw: vec![0.0; d * k * m],
            gb: vec![0.0; d * k],
            gc: vec![0.0; m],
            gd: if conditional {
                vec![0.0; d * m]
            } else {
                Vec::new()
            },
            step_scratch: vec![0.0; N_CHUNKS * (k * m + k)],
            claims: UnitClaims::new(),
            help_acc: Vec::new(),
            unit_err: vec![0.0; d],
            hbits: vec![0; bs * hidden_words(m)],
        }
    }
}

/// The conditional weights' gradient: row i of `gd` (M wide) is Σ (p0 − p1)·inv_b over the
/// cases `case(e)` of the entries `ents[ptr[i]..ptr[i + 1]]`, summed in entry order, in runs
/// of units over the team.
#[allow(clippy::too_many_arguments)]
fn d_gradient<E: Sync>(
    gd: &mut [f32],
    p0: &[f32],
    p1: &[f32],
    inv_b: f32,
    m: usize,
    team: &Team<'_>,
    ptr: &[usize],
    ents: &[E],
    case: impl Fn(&E) -> usize + Sync,
) {
    let d = gd.len() / m;
    let per = piece_len(d, 1, team);
    team.for_each(gd.chunks_mut(per * m).enumerate(), |(r, gd)| {
        for (i, g) in (r * per..).zip(gd.chunks_mut(m)) {
            g.fill(0.0);
            let ents = &ents[ptr[i]..ptr[i + 1]];
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                use std::arch::x86_64::*;
                let s = inv_b;
                let term = |e: usize, j: usize, mk: __mmask16| {
                    let n = case(&ents[e]);
                    let (a, b) = (&p0[n * m..(n + 1) * m], &p1[n * m..(n + 1) * m]);
                    // SAFETY: the masked lanes lie within the rows (j < m), and this runs
                    // only inside `sum_rows_avx512`, so AVX-512F is present.
                    unsafe {
                        let a = _mm512_maskz_loadu_ps(mk, a.as_ptr().add(j));
                        let b = _mm512_maskz_loadu_ps(mk, b.as_ptr().add(j));
                        _mm512_mul_ps(_mm512_sub_ps(a, b), _mm512_set1_ps(s))
                    }
                };
                // SAFETY: AVX-512F and VL are present (checked by `has_avx512`).
                unsafe { sum_rows_avx512(g, ents.len(), term) };
                continue;
            }
            with_simd(|| {
                for e in ents {
                    let n = case(e);
                    let (a, b) = (&p0[n * m..(n + 1) * m], &p1[n * m..(n + 1) * m]);
                    for ((g, &a), &b) in g.iter_mut().zip(a).zip(b) {
                        *g += (a - b) * inv_b;
                    }
                }
            })
        }
    });
}

/// `base += Σ dm[i]` over the rows `items` of `dm` (M wide), in order.
#[inline(always)]
fn add_rows(base: &mut [f32], dm: &[f32], items: &[u32]) {
    let m = base.len();
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        use std::arch::x86_64::*;
        let term = |r: usize, j: usize, mk: __mmask16| {
            let row = &dm[items[r] as usize * m..(items[r] as usize + 1) * m];
            // SAFETY: the masked lanes lie within the row (j < m).
            unsafe { _mm512_maskz_loadu_ps(mk, row.as_ptr().add(j)) }
        };
        // SAFETY: AVX-512F and VL are present (checked by `has_avx512`).
        unsafe { sum_rows_avx512(base, items.len(), term) };
        return;
    }
    for &i in items {
        add(base, &dm[i as usize * m..(i as usize + 1) * m]);
    }
}

/// `implicit` when it differs from `cases` (`None`: the implicit sets are the rated units).
fn own_sets<'a>(cases: &Csr, implicit: &'a Csr) -> Option<&'a Csr> {
    (!std::ptr::eq(cases, implicit)).then_some(implicit)
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
                with_team(1, |team| {
                    factor_product(&mut w, &a, &bf, d * k, cf, m, team)
                });
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
    #[inline(always)]
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
    /// the row's other ratings. Returns class distributions, K per pair, in the order of
    /// `pairs`.
    ///
    /// The pairs' cases are taken in groups (in parallel), each **unit-major**: the group's
    /// ratings are indexed by visible unit, W is read once in unit order to sum every case's
    /// hidden input, then the group's pairs are predicted in unit order, so each unit's K×M
    /// block is read once per group. Reading W row by row for each case instead was most of
    /// the evaluation at Netflix scale (a random 400-byte read per rating from a W of up to
    /// 1 GB). Each case's rows are still added in its row's order, so the result is that of
    /// [`Self::hidden_input`] and [`Self::predict_dist`] pair by pair, bit for bit (tested).
    pub fn predict_pairs(
        &self,
        cases: &Csr,
        implicit: Option<&Csr>,
        pairs: &[(u32, u32)],
        method: PredictMethod,
    ) -> Vec<f32> {
        let k = self.k;
        // Pair indices by case (then by index: the keys are distinct, so an unstable sort
        // gives that order).
        let mut keyed: Vec<(u32, usize)> =
            pairs.iter().enumerate().map(|(n, p)| (p.0, n)).collect();
        keyed.par_sort_unstable();
        let order: Vec<usize> = keyed.into_iter().map(|(_, n)| n).collect();
        // Runs of pairs of one case, packed into groups of about `budget` ratings (one per
        // case without any), a few groups per thread.
        let runs: Vec<&[usize]> = order.chunk_by(|&a, &b| pairs[a].0 == pairs[b].0).collect();
        let load = |run: &[usize]| cases.row_or_empty(pairs[run[0]].0 as usize).0.len() + 1;
        let rated: usize = runs.iter().map(|r| load(r)).sum();
        let budget = (rated / (4 * rayon::current_num_threads())).clamp(1 << 12, 1 << 23);
        let mut groups: Vec<&[usize]> = Vec::new();
        let (mut start, mut end, mut held) = (0, 0, 0);
        for run in runs {
            end += run.len();
            held += load(run);
            if held >= budget {
                groups.push(&order[start..end]);
                (start, held) = (end, 0);
            }
        }
        if start < end {
            groups.push(&order[start..end]);
        }
        let results: Vec<Vec<f32>> = groups
            .par_iter()
            .map(|g| predict_group(self, g, pairs, cases, implicit, method))
            .collect();
        let mut out = vec![0.0f32; pairs.len() * k];
        for (g, res) in groups.iter().zip(results) {
            for (n, &p) in g.iter().enumerate() {
                out[p * k..(p + 1) * k].copy_from_slice(&res[n * k..(n + 1) * k]);
            }
        }
        out
    }

    /// σ of each case's hidden input ([`Self::hidden_input`] from its row of `cases` and, for
    /// the conditional model, of `implicit`), M per case in the order of `ids`: the hidden
    /// probabilities that mean-field prediction conditions on. A case past the rows has none.
    pub fn case_hidden_probs(&self, cases: &Csr, implicit: Option<&Csr>, ids: &[u32]) -> Vec<f32> {
        let m = self.m;
        let mut ph = vec![0.0f32; ids.len() * m];
        ph.par_chunks_mut(m).zip(ids).for_each(|(x, &case)| {
            let (items, classes) = cases.row_or_empty(case as usize);
            let imp = implicit_row(implicit, case as usize, items);
            self.hidden_input(items, classes, imp, x);
            for v in x.iter_mut() {
                *v = sigmoid(*v);
            }
        });
        ph
    }

    /// Mean-field ratings of every pair of the cases whose hidden probabilities are `ph` (M
    /// per case, from [`Self::case_hidden_probs`]) and the visible units `visible`, *added* to
    /// `out` (row by case, `ph.len() / M × visible.len()`: the caller's buffer, so that an
    /// ensemble sums its members' ratings there and a top-N pass reuses it). The class logits come from matrix products (W's
    /// rows of `visible` times the cases' probabilities, per class and block of units), where
    /// [`Self::predict_pairs`] takes K dot products per pair, so scoring every item for many
    /// users (top-N lists) runs at the matrix library's speed. The sums run in another order
    /// than `predict_pairs`', so the ratings agree with it to rounding, not bit for bit; they
    /// are the same for any thread count. A pair whose case has rated its unit is *not* predicted from the case's
    /// other ratings, as `predict_pairs` does; use that for such pairs.
    pub fn mean_field_grid(
        &self,
        ph: &[f32],
        visible: &[u32],
        values: &[f32],
        readout: RatingReadout,
        out: &mut [f32],
    ) {
        let (k, m) = (self.k, self.m);
        let (nc, nv) = (ph.len() / m, visible.len());
        assert_eq!(out.len(), nc * nv, "one rating per case and unit");
        if nc == 0 || nv == 0 {
            return;
        }
        // Each block of units adds into its own columns of every row.
        let shared = SyncPtr(out.as_mut_ptr());
        // Blocks of units in parallel, each with one product per class into a buffer kept by
        // its thread, then the softmax while that is in cache: W is read once, and each
        // element is one sequential dot product whatever the block or thread. A block's
        // logits are class-major (K runs of GRID_UNITS × nc, each column-major), so the
        // softmax reads 16 units' logits of a class as one vector.
        let ph = MatRef::from_column_major_slice(ph, m, nc);
        visible.par_chunks(GRID_UNITS).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(logits, r): &mut (Vec<f32>, Vec<f32>), (nb, units)| {
                let ub = units.len();
                logits.resize(k * ub * nc, 0.0);
                let first = units[0] as usize;
                let run = units.windows(2).all(|p| p[1] == p[0] + 1);
                for kk in 0..k {
                    // Class kk's rows: every K-th row of W from unit `first`'s when the units
                    // are one run; otherwise gathered.
                    let gathered: Vec<f32>;
                    let rows = if run {
                        let o = (first * k + kk) * m;
                        MatRef::from_row_major_slice_with_stride(
                            &self.w[o..o + (ub - 1) * k * m + m],
                            ub,
                            m,
                            k * m,
                        )
                    } else {
                        gathered = units
                            .iter()
                            .flat_map(|&v| {
                                let o = (v as usize * k + kk) * m;
                                &self.w[o..o + m]
                            })
                            .copied()
                            .collect();
                        MatRef::from_row_major_slice(&gathered, ub, m)
                    };
                    faer::linalg::matmul::matmul(
                        MatMut::from_column_major_slice_mut(
                            &mut logits[kk * ub * nc..(kk + 1) * ub * nc],
                            ub,
                            nc,
                        ),
                        faer::Accum::Replace,
                        rows,
                        ph,
                        1.0,
                        faer::Par::Seq,
                    );
                }
                let bias: Vec<f32> = (0..k)
                    .flat_map(|kk| units.iter().map(move |&v| self.b[v as usize * k + kk]))
                    .collect();
                r.resize(ub, 0.0);
                let u0 = nb * GRID_UNITS;
                let shared = &shared;
                for c in 0..nc {
                    grid_readout(&logits[c * ub..], ub * nc, &bias, ub, values, readout, r);
                    // SAFETY: columns u0..u0 + ub of row c lie within `out` (asserted size),
                    // and no other block touches them.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(shared.0.add(c * nv + u0), ub) };
                    for (o, &x) in row.iter_mut().zip(r.iter()) {
                        *o += x;
                    }
                }
            },
        );
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

    /// Positive pass over one chunk of visible units (item-major, so W is read as a stream):
    /// adds W[i, class] into the chunk's per-case accumulator `acc` (nb × M) for every rating.
    #[inline(always)]
    fn chunk_positive(
        &self,
        i0: usize,
        i1: usize,
        by_item: &[(u32, u8)],
        by_item_ptr: &[usize],
        acc: &mut [f32],
    ) {
        let (k, m) = (self.k, self.m);
        acc.fill(0.0);
        for i in i0..i1 {
            for &(n, cl) in &by_item[by_item_ptr[i]..by_item_ptr[i + 1]] {
                let o = (i * k + cl as usize) * m;
                let n = n as usize;
                add(&mut acc[n * m..(n + 1) * m], &self.w[o..o + m]);
            }
        }
    }

    /// Negative pass over one chunk of visible units: each rating's softmax reconstruction
    /// from h (sampled or kept as probabilities) into `z` (item-major, K per rating), and its
    /// contribution Σ_k z_k W[i, k] to the case's hidden input, accumulated in `acc` while the
    /// item's block is in cache. Returns the squared reconstruction error when `last`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn chunk_negative(
        &self,
        i0: usize,
        i1: usize,
        by_item: &[(u32, u8)],
        by_item_ptr: &[usize],
        h: &[f32],
        negative: NegativePhase,
        last: bool,
        rngkey: (StreamKey, usize),
        z: &mut [f32],
        acc: &mut [f32],
        bits: Option<(&[u32], usize)>,
        err: &mut f64,
    ) {
        let k = self.k;
        let base_pos = by_item_ptr[i0];
        let block = k * self.m;
        for i in i0..i1 {
            if i + NEG_PREFETCH_AHEAD < self.d {
                let ahead = &self.w[(i + NEG_PREFETCH_AHEAD) * block..];
                prefetch_bytes(ahead.as_ptr().cast(), block * 4);
            }
            let (a, b) = (by_item_ptr[i], by_item_ptr[i + 1]);
            if a == b {
                continue;
            }
            let ents = &by_item[a..b];
            let zi = &mut z[(a - base_pos) * k..(b - base_pos) * k];
            let mut rng = rngkey
                .0
                .stream((1u64 << 62) | ((i as u64) << 16) | rngkey.1 as u64);
            *err += self.item_negative(i, ents, h, negative, last, &mut rng, zi, acc, bits);
        }
    }

    /// Negative visible step of one item for all its ratings in the batch (item-major, so the
    /// item's K×M block is read once per batch, not once per rating): softmax over K of
    /// b + W·h for each rating's case, sampled (or kept as probabilities) into `z`.
    /// Returns the squared reconstruction error when `last`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn item_negative(
        &self,
        i: usize,
        ents: &[(u32, u8)],
        h: &[f32],
        negative: NegativePhase,
        last: bool,
        rng: &mut Stream,
        z: &mut [f32],
        acc: &mut [f32],
        bits: Option<(&[u32], usize)>,
    ) -> f64 {
        let (k, m) = (self.k, self.m);
        let wi = &self.w[i * k * m..(i + 1) * k * m];
        let bi = &self.b[i * k..(i + 1) * k];
        let fast = avx2_fma();
        let wide = has_avx512();
        #[cfg(not(target_arch = "x86_64"))]
        let _ = fast;
        #[cfg(target_arch = "x86_64")]
        if wide && (2..=8).contains(&k) {
            let sample = negative == NegativePhase::Sample;
            macro_rules! go {
                ($kk:literal) => {
                    // SAFETY: AVX-512F and VL, AVX2 and FMA are present (checked by `has_avx512`).
                    unsafe {
                        item_negative_avx512::<$kk>(
                            wi, bi, ents, h, sample, last, rng, z, acc, bits,
                        )
                    }
                };
            }
            return match k {
                2 => go!(2),
                3 => go!(3),
                4 => go!(4),
                5 => go!(5),
                6 => go!(6),
                7 => go!(7),
                _ => go!(8),
            };
        }
        // A rating's K logits without the bias, the widest way the CPU allows.
        // A macro, not a closure: the closure was compiled as a call per rating.
        macro_rules! logits {
            ($hn:expr, $z:expr) => {{
                let (hn, z): (&[f32], &mut [f32]) = ($hn, $z);
                #[cfg(target_arch = "x86_64")]
                if wide {
                    // SAFETY: AVX-512F and VL are present (checked by `has_avx512`).
                    unsafe { dot_rows_avx512(hn, wi, z) }
                } else if fast {
                    // SAFETY: AVX2 and FMA are present (checked by `avx2_fma`).
                    unsafe { dot_rows_avx2(hn, wi, z) }
                } else {
                    dot_rows_portable(hn, wi, z)
                }
                #[cfg(not(target_arch = "x86_64"))]
                dot_rows_portable(hn, wi, z)
            }};
        }
        let mut err = 0.0f64;
        if negative == NegativePhase::Sample && !wide && k <= SOFTMAX_MAX_K {
            // Without AVX-512: each rating's logits as below, then the softmax and the draw of
            // up to eight ratings at once, one per lane (the same arithmetic per rating as
            // `softmax_sample`, whose scalar exp was the largest cost here).
            for (g, group) in ents.chunks(SOFTMAX_LANES).enumerate() {
                let e0 = g * SOFTMAX_LANES;
                let zg = &mut z[e0 * k..(e0 + group.len()) * k];
                let mut u = [0.0f32; SOFTMAX_LANES];
                let mut cls = [0usize; SOFTMAX_LANES];
                for (l, &(n, cl)) in group.iter().enumerate() {
                    let hn = &h[n as usize * m..(n as usize + 1) * m];
                    logits!(hn, &mut zg[l * k..(l + 1) * k]);
                    u[l] = rng.uniform();
                    cls[l] = usize::from(cl);
                }
                let (errs, picks) = softmax_sample_lanes(zg, bi, &cls, &u);
                for (l, &(n, _)) in group.iter().enumerate() {
                    if last {
                        err += f64::from(errs[l]);
                    }
                    let an = &mut acc[n as usize * m..(n as usize + 1) * m];
                    add(an, &wi[picks[l] * m..(picks[l] + 1) * m]);
                }
            }
            return err;
        }
        for (e, &(n, cl)) in ents.iter().enumerate() {
            let hn = &h[n as usize * m..(n as usize + 1) * m];
            let z = &mut z[e * k..(e + 1) * k];
            logits!(hn, z);
            let sample = negative == NegativePhase::Sample;
            let u = if sample { rng.uniform() } else { 0.0 };
            #[cfg(target_arch = "x86_64")]
            let fast_softmax = wide && k <= 16;
            #[cfg(not(target_arch = "x86_64"))]
            let fast_softmax = false;
            let (e, pick) = if fast_softmax {
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: AVX-512F and VL are present (checked by `has_avx512`).
                    unsafe { softmax_avx512(z, bi, cl as usize, sample.then_some(u)) }
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!()
            } else {
                softmax_sample(z, bi, cl as usize, sample.then_some(u))
            };
            if last {
                err += f64::from(e);
            }
            let an = &mut acc[n as usize * m..(n as usize + 1) * m];
            if sample {
                add(an, &wi[pick * m..(pick + 1) * m]);
            } else {
                for (kk, &pz) in z.iter().enumerate() {
                    axpy(an, pz, &wi[kk * m..(kk + 1) * m]);
                }
            }
        }
        err
    }

    /// The per-visible-unit index of a batch's ratings, its fixed chunks of units, and buffers
    /// sized for it (everything the positive phase and [`Self::batch_chains`] need).
    fn batch_index(
        &self,
        cases: &Csr,
        batch: &[usize],
        g: &mut BatchGrad,
        team: Option<&Team<'_>>,
    ) {
        let (d, k, m) = (self.d, self.k, self.m);
        let BatchGrad {
            p0,
            p1,
            pd,
            base,
            part_cnt,
            zbi,
            err_item,
            chunk_bounds,
            step_bounds,
            rated_before,
            acc,
            by_item_ptr,
            by_item,
            ..
        } = g;
        if p0.len() < batch.len() * m {
            p0.resize(batch.len() * m, 0.0);
            p1.resize(batch.len() * m, 0.0);
            pd.resize(batch.len() * m, 0.0);
            base.resize(batch.len() * m, 0.0);
        }
        let nb = batch.len();
        let nr = batch_ratings(cases, batch);

        // Index the batch's ratings by visible unit (counting sort, fixed order: by unit, then
        // by place in the batch). Big batches are cut into one part of cases per team member, each
        // counting its own ratings per unit and filling its own slots of every unit's range,
        // so they are indexed in parallel with the same result as in one part.
        by_item.resize(nr, (0, 0));
        let team = team.filter(|_| parallel_index(nr));
        // One part per team member (the index comes out the same for any number of parts).
        let parts = team.map_or(1, |t| t.threads());
        part_cnt.resize(parts * d, 0);
        let part = |c: usize| (nb * c / parts, nb * (c + 1) / parts);
        let counts = part_cnt[..parts * d].chunks_mut(d).enumerate();
        for_each_maybe_par(team, counts, |(c, cnt)| {
            cnt.fill(0);
            let (n0, n1) = part(c);
            let rows = &batch[n0..n1];
            for (q, &p) in rows.iter().enumerate() {
                // The batch's case rows are scattered over the whole rating matrix, which the
                // epoch's sweeps have pushed out of this core's caches: ask for a row a few
                // cases ahead (the fill below finds them cached).
                if let Some(&ahead) = rows.get(q + INDEX_PREFETCH_AHEAD) {
                    let (its, cls) = cases.row(ahead);
                    prefetch_bytes(its.as_ptr().cast(), its.len() * 4);
                    prefetch_bytes(cls.as_ptr(), cls.len());
                }
                for &i in cases.row(p).0 {
                    cnt[i as usize] += 1;
                }
            }
        });
        // Unit offsets, and each part's first slot within every unit.
        by_item_ptr[0] = 0;
        for i in 0..d {
            let mut run = by_item_ptr[i] as u32;
            for c in 0..parts {
                let cnt = &mut part_cnt[c * d + i];
                let here = *cnt;
                *cnt = run;
                run += here;
            }
            by_item_ptr[i + 1] = run as usize;
        }
        {
            let slots = SyncPtr(by_item.as_mut_ptr());
            let jobs = part_cnt[..parts * d].chunks_mut(d).enumerate();
            for_each_maybe_par(team, jobs, |(c, cnt)| {
                let slots = &slots;
                let (n0, n1) = part(c);
                for n in n0..n1 {
                    let (its, cls) = cases.row(batch[n]);
                    for (&i, &cl) in its.iter().zip(cls) {
                        let slot = &mut cnt[i as usize];
                        // SAFETY: slot < nr, and every part owns a disjoint set of slots (its
                        // own sub-range of each unit's range), so no two writes alias.
                        unsafe { *slots.0.add(*slot as usize) = (n as u32, cl) };
                        *slot += 1;
                    }
                }
            });
        }
        zbi.resize(nr * k, 0.0);
        err_item.resize(N_CHUNKS, 0.0);
        // Fixed chunks of visible units with about equal work: each chunk sums into its own
        // per-case accumulator, and the chunks are added in order, so the result does not
        // depend on the thread count. The two item-major passes cost differently per unit
        // (popular units can cluster in the id range, as in MovieLens), so each has its own
        // cut: the negative pass's by ratings and rated units, the momentum step's (which also
        // sums the batch's positive phase) by ratings and units, rated or not. A batch small
        // enough to be indexed serially has the next batch's index ride on its negative pass
        // (in training; the cut is the same without it, so that the unfused path gives the
        // same bits), so its first half of chunks is made lighter (`RIDE_LIGHTER`).
        rated_before.clear();
        rated_before.push(0);
        for i in 0..d {
            let r = rated_before[i] + usize::from(by_item_ptr[i + 1] > by_item_ptr[i]);
            rated_before.push(r);
        }
        let neg_work = |i: usize| by_item_ptr[i] + NEG_RATED_UNIT_WEIGHT * rated_before[i];
        let lighter = if parallel_index(nr) { 0 } else { RIDE_LIGHTER };
        balanced_bounds(d, neg_work, lighter, chunk_bounds);
        let step_work = |i: usize| STEP_COST_UNIT * i + STEP_COST_RATING * by_item_ptr[i];
        balanced_bounds(d, step_work, 0, step_bounds);
        acc.resize(N_CHUNKS * nb * m, 0.0);
    }

    /// The positive phase of an indexed batch: each chunk of units adds its rated rows of W
    /// into its own per-case accumulator (item-major, so W is read as a stream).
    fn batch_positive(&self, batch_len: usize, g: &mut BatchGrad, team: &Team<'_>) {
        let (nb, m) = (batch_len, self.m);
        let model = self;
        let BatchGrad {
            acc,
            by_item,
            by_item_ptr,
            step_bounds,
            ..
        } = g;
        {
            // The momentum step's chunks: it sums the positive phase of the batch after it.
            let (by_item, by_item_ptr, bounds) = (&by_item[..], &by_item_ptr[..], &step_bounds[..]);
            let folds = ChunkFolds::new(acc, nb * m);
            team.for_each(0..N_CHUNKS, |c| {
                // SAFETY: chunk c runs once, on this member, and is finished after its sums.
                let acc = unsafe { folds.block(c) };
                simd_chunk_positive(model, bounds[c], bounds[c + 1], by_item, by_item_ptr, acc);
                // SAFETY: its block is complete and `acc` is not used after this.
                unsafe { folds.finished(c) };
            });
        }
    }

    /// Phase 1 of a mini-batch: the CD-T chains, leaving p(h|v⁰), p(h|vᵀ), the negative
    /// visible units and the per-unit index of the batch's ratings in `g`. Returns (squared
    /// reconstruction error, ratings in the batch).
    ///
    /// With `prepared`, the batch was already indexed and its positive phase already summed
    /// into the chunk accumulators (by [`Self::batch_index`] and the previous batch's fused
    /// momentum step). `extra` (a serial job that needs nothing from this batch: indexing the
    /// next one) runs during the first negative pass, on the last team member after its chunks.
    #[allow(clippy::too_many_arguments)]
    fn batch_chains<E: FnOnce() + Send>(
        &self,
        cases: &Csr,
        implicit: &Csr,
        batch: &[usize],
        t_steps: usize,
        negative: NegativePhase,
        key: (u64, u64, u64),
        g: &mut BatchGrad,
        prepared: bool,
        extra: Option<E>,
        team: &Team<'_>,
    ) -> (f64, usize) {
        if !prepared {
            team.timed(PHASE_INDEX, || {
                self.batch_index(cases, batch, g, Some(team));
                self.batch_positive(batch.len(), g, team);
            });
        }
        let (k, m) = (self.k, self.m);
        let BatchGrad {
            p0,
            p1,
            pd,
            base,
            zbi,
            err_item,
            chunk_bounds,
            acc,
            by_item_ptr,
            by_item,
            hbits,
            claims,
            help_acc,
            unit_err,
            ..
        } = g;
        let nb = batch.len();
        // The index holds every rating of the batch.
        let nr = by_item.len();
        let hb = hidden_words(m);
        if hbits.len() < nb * hb {
            hbits.resize(nb * hb, 0);
        }
        let model = &self;
        let skey = StreamKey::new(key.0, Purpose::Train, key.1, key.2);
        let case_rng = |n: usize, t: usize| skey.stream(((batch[n] as u64) << 16) | t as u64);
        {
            let accr = &acc[..];
            let bufs = [&mut p0[..], &mut p1[..], &mut base[..]];
            let runs = case_runs_with_bits(team, nb, m, bufs, &mut hbits[..], hb);
            team.timed(PHASE_HIDDEN, || {
                team.for_each(runs, |run| {
                    for (n, [p0, h, base], bits) in run {
                        with_simd(|| {
                            base.copy_from_slice(&model.c);
                            if let Some(dm) = &model.dmat {
                                add_rows(base, dm, implicit.row(batch[n]).0);
                            }
                            hidden_probs_from_chunks(p0, base, accr, n, nb);
                            h.copy_from_slice(p0);
                            case_rng(n, 0).bernoulli_in_place(h);
                            hidden_bits(h, bits);
                        })
                    }
                })
            });
        }
        let mut err = 0.0f64;
        let mut extra = extra;
        for t in 0..t_steps {
            let last = t + 1 == t_steps;
            {
                let folds = ChunkFolds::new(acc, nb * m);
                let folds = &folds;
                let jobs = err_item[..N_CHUNKS].iter_mut().enumerate();
                let (h, by_item, by_item_ptr, chunk_bounds) = (
                    &p1[..nb * m],
                    &by_item[..],
                    &by_item_ptr[..],
                    &chunk_bounds[..],
                );
                // h was just sampled (0/1), and its bit masks written beside it.
                let bits = Some((&hbits[..nb * hb], hb));
                // Chunk c on the same member (here and in the momentum step) unless that member
                // falls behind, so its part of W, its accumulator and its reconstructions stay
                // in that core's caches: with members taking chunks as they came free, the step
                // ran at half speed on two threads. Its units are claimed (`UnitClaims`), so
                // their negative units and errors are reached through pointers.
                claims.reset(chunk_bounds);
                // Grown only (`train` allocates it at full size before the first epoch), so a
                // short last batch does not shrink it for the next to zero again.
                let need = team.threads() * nb * m;
                if help_acc.len() < need {
                    help_acc.resize(need, 0.0);
                }
                // One slot per unit (allocated with the buffers): written through a pointer.
                assert!(unit_err.len() >= self.d, "BatchGrad made for fewer units");
                let (zp, ep, hp) = (
                    SyncPtr(zbi.as_mut_ptr()),
                    SyncPtr(unit_err.as_mut_ptr()),
                    SyncPtr(help_acc.as_mut_ptr()),
                );
                let (zp, ep, hp, claims) = (&zp, &ep, &hp, &*claims);
                // SAFETY (callers): units i0..i1 are claimed by the calling member alone in
                // this team step, so their negative units (K per rating) are its alone.
                let z_of = |i0: usize, i1: usize| unsafe {
                    let (a, b) = (by_item_ptr[i0], by_item_ptr[i1]);
                    std::slice::from_raw_parts_mut(zp.0.add(a * k), (b - a) * k)
                };
                let extra = extra.take();
                let chunk_job = |(c, e): (usize, &mut f64)| {
                    // SAFETY: chunk c runs once in this pass, on this member, and is finished
                    // at the end of this job.
                    let a = unsafe { folds.block(c) };
                    a.fill(0.0);
                    let mut err = 0.0f64;
                    while let Some(r) = claims.front(c) {
                        simd_chunk_negative(
                            model,
                            r.start,
                            r.end,
                            by_item,
                            by_item_ptr,
                            h,
                            negative,
                            last,
                            (skey, t),
                            z_of(r.start, r.end),
                            a,
                            bits,
                            &mut err,
                        );
                        #[cfg(test)]
                        if SLOW_CHUNK.load(Ordering::Relaxed) == c {
                            std::thread::sleep(std::time::Duration::from_micros(300));
                        }
                    }
                    // Units from `top` on were done by others: their errors and rows, in
                    // unit order.
                    let end = chunk_bounds[c + 1];
                    let top = claims.wait_for_helpers(c, end);
                    for i in top..end {
                        // SAFETY: unit i is done (`wait_for_helpers` read its count with
                        // Acquire) and nobody writes its error or negative units any more in
                        // this step; these are reads.
                        let (ue, zi) = unsafe { (*ep.0.add(i), &*z_of(i, i + 1)) };
                        err += ue;
                        let (lo, hi) = (by_item_ptr[i], by_item_ptr[i + 1]);
                        let wi = &model.w[i * k * m..(i + 1) * k * m];
                        negative_sums(&by_item[lo..hi], zi, wi, a, m, negative);
                    }
                    *e = err;
                    // SAFETY: chunk c's sums are complete and `a` is not used after this.
                    unsafe { folds.finished(c) };
                };
                // A member with no chunk left does units from the back of the others': their
                // negative units and errors; its own sums of their rows are thrown away (the
                // chunk's runner adds them to its own).
                let idle = |member: usize| {
                    // SAFETY: block `member` of `help_acc` (one per team member) is this
                    // member's alone.
                    let dump = unsafe {
                        std::slice::from_raw_parts_mut(hp.0.add(member * nb * m), nb * m)
                    };
                    for c in 0..N_CHUNKS {
                        while let Some(r) = claims.back(c) {
                            claims.help(c, r, |i| {
                                let mut ue = 0.0f64;
                                simd_chunk_negative(
                                    model,
                                    i,
                                    i + 1,
                                    by_item,
                                    by_item_ptr,
                                    h,
                                    negative,
                                    last,
                                    (skey, t),
                                    z_of(i, i + 1),
                                    dump,
                                    bits,
                                    &mut ue,
                                );
                                // SAFETY: unit i was claimed by this member alone.
                                unsafe { *ep.0.add(i) = ue };
                            });
                        }
                    }
                };
                team.timed(PHASE_NEGATIVE, || {
                    team.for_each_static_and(
                        jobs,
                        chunk_job,
                        || {
                            if let Some(extra) = extra {
                                extra();
                            }
                        },
                        &idle,
                    )
                });
            }
            if last {
                err = err_item[..N_CHUNKS].iter().sum::<f64>();
            }
            let accr = &acc[..];
            let bufs = [&mut p1[..], &mut base[..], &mut pd[..]];
            let runs = case_runs_with_bits(team, nb, m, bufs, &mut hbits[..], hb);
            let p0 = &p0[..];
            team.timed(PHASE_HIDDEN, || {
                team.for_each(runs, |run| {
                    for (n, [p1, base, pd], bits) in run {
                        with_simd(|| {
                            hidden_probs_from_chunks(p1, base, accr, n, nb);
                            if last {
                                let p0 = case_row(p0, n, m);
                                for ((d, &a), &b) in pd.iter_mut().zip(p0).zip(&*p1) {
                                    *d = a - b;
                                }
                            } else {
                                case_rng(n, t + 1).bernoulli_in_place(p1);
                                hidden_bits(p1, bits);
                            }
                        })
                    }
                })
            });
        }

        (err, nr)
    }

    /// The hidden-bias gradient (and the conditional D's) from the slots [`Self::batch_chains`]
    /// filled.
    fn hidden_grads(
        &self,
        implicit: Option<&Csr>,
        batch: &[usize],
        g: &mut BatchGrad,
        team: &Team<'_>,
    ) {
        let (d, m, nb) = (self.d, self.m, batch.len());
        let inv_b = 1.0 / nb as f32;
        let BatchGrad {
            p0,
            p1,
            imp_ptr,
            imp_ent,
            imp_fill,
            by_item,
            by_item_ptr,
            gc,
            gd,
            ..
        } = g;
        gc.fill(0.0);
        with_simd(|| {
            for (a, b) in p0[..nb * m].chunks(m).zip(p1.chunks(m)) {
                for ((g, &a), &b) in gc.iter_mut().zip(a).zip(b) {
                    *g += (a - b) * inv_b;
                }
            }
        });
        if self.dmat.is_none() {
            return;
        }
        let (p0, p1) = (&p0[..], &p1[..]);
        let Some(implicit) = implicit else {
            // The implicit sets are the rated units: the batch's index lists them per unit,
            // in batch order, as the index below would.
            let (ptr, ents) = (&by_item_ptr[..], &by_item[..]);
            d_gradient(gd, p0, p1, inv_b, m, team, ptr, ents, |e| e.0 as usize);
            return;
        };
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
        imp_fill.clone_from(imp_ptr);
        let fill = imp_fill;
        for (n, &p) in batch.iter().enumerate() {
            for &i in implicit.row(p).0 {
                imp_ent[fill[i as usize]] = n as u32;
                fill[i as usize] += 1;
            }
        }
        d_gradient(gd, p0, p1, inv_b, m, team, imp_ptr, imp_ent, |&n| {
            n as usize
        });
    }

    /// One mini-batch's CD-T gradient (ascent direction, averaged over the batch) into `g`:
    /// the chains ([`Self::batch_chains`]), then each visible unit's statistics summed over
    /// the batch in a fixed order, in parallel over units. `key` = (seed, epoch, batch) keys
    /// the random streams. Returns (squared reconstruction error, ratings in the batch).
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
        team: &Team<'_>,
    ) -> (f64, usize) {
        let out = self.batch_chains(
            cases,
            implicit,
            batch,
            t_steps,
            negative,
            key,
            g,
            false,
            None::<fn()>,
            team,
        );
        let (k, m) = (self.k, self.m);
        let inv_b = 1.0 / batch.len() as f32;
        let BatchGrad {
            p0,
            p1,
            pd,
            vneg,
            zbi,
            cursor,
            by_item,
            by_item_ptr,
            gw,
            gb,
            ..
        } = g;
        // The negative visible units case by case too (for inspection): each unit's slots
        // hold its ratings in batch order, so replaying the batch finds every rating's slot.
        vneg.resize(by_item.len() * k, 0.0);
        cursor.clone_from(by_item_ptr);
        let mut r = 0;
        for &p in batch {
            for &i in cases.row(p).0 {
                let slot = cursor[i as usize];
                cursor[i as usize] += 1;
                vneg[r * k..(r + 1) * k].copy_from_slice(&zbi[slot * k..(slot + 1) * k]);
                r += 1;
            }
        }
        let rows = CaseRows { p0, p1, pd };
        let (zbi, by_item, by_item_ptr) = (&zbi, &by_item, &by_item_ptr);
        // Runs of units, a few per team member so uneven runs balance out.
        let per = piece_len(self.d, 1, team);
        let runs = gw
            .chunks_mut(per * k * m)
            .zip(gb.chunks_mut(per * k))
            .enumerate();
        team.timed(PHASE_STEP, || {
            team.for_each(runs, |(r, (gw, gb))| {
                for (i, (gwi, gbi)) in (r * per..).zip(gw.chunks_mut(k * m).zip(gb.chunks_mut(k))) {
                    let (a, b) = (by_item_ptr[i], by_item_ptr[i + 1]);
                    item_step(
                        &by_item[a..b],
                        rows,
                        &zbi[a * k..b * k],
                        inv_b,
                        negative == NegativePhase::Sample,
                        gwi,
                        gbi,
                        None,
                        None,
                    );
                }
            })
        });
        team.timed(PHASE_STEP, || {
            self.hidden_grads(own_sets(cases, implicit), batch, g, team)
        });
        out
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
        // The fused momentum path prepares the next batch in a second set of buffers.
        let fused = !adam && self.factors.is_none();
        let mut gn = BatchGrad::new(
            if fused { d } else { 0 },
            k,
            m,
            if fused { bs } else { 0 },
            fused && self.dmat.is_some(),
        );
        let mut batch_cases: Vec<usize> = Vec::with_capacity(bs);
        let mut next_cases: Vec<usize> = Vec::with_capacity(bs);
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
        // One team for the whole run, sized by the caller's pool (at most one member per core):
        // starting its helper threads cost ~0.1 ms per epoch. Between epochs they wait
        // (spinning briefly, then parked) while validation and `progress` run here.
        with_team(training_threads(), |team| -> Result<()> {
            // A gradient block per member for the units it steps for others (`UnitClaims`).
            let mut help_scratch = vec![0.0f32; team.threads() * (k * m + k)];
            // The members' throwaway sums of the negative pass, at full size and mapped now
            // (`zeros_now`): grown in the first pass that used each set of buffers, they cost a
            // big batch ~0.4 ms of page faults inside a timed epoch (the second, at one batch
            // per epoch).
            for buffers in [&mut g, &mut gn] {
                buffers.help_acc = zeros_now(team.threads() * buffers.p0.len());
            }
            let order = |epoch: usize| {
                Stream::new(params.seed, Purpose::Shuffle, epoch as u64, 0, 0)
                    .permutation(active.len())
            };
            let mut perm = order(0);
            // The fused path's last step of an epoch also prepares (indexes, and sums the
            // positive phase of) the first batch of the next one: its order is known already.
            let mut first_prepared = false;
            for epoch in 0..params.epochs {
                let t0 = Instant::now();
                let t_steps = params.cd.t_at(epoch);
                let momentum = if epoch < params.momentum_warmup {
                    params.initial_momentum
                } else {
                    params.momentum
                };
                let next_perm = (epoch + 1 < params.epochs).then(|| order(epoch + 1));
                let mut err_sum = 0.0f64;
                let mut n_rated = 0usize;
                team.forget_contention();
                let batches_run = perm.chunks(bs).len();
                for (bi, chunk) in perm.chunks(bs).enumerate() {
                    batch_cases.clear();
                    batch_cases.extend(chunk.iter().map(|&p| active[p]));
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
                    let key = (params.seed, epoch as u64, bi as u64);
                    if fused {
                        // Fused: each visible unit's gradient goes straight into its momentum
                        // step while its K×M block is in cache (no D×K×M gradient pass), and the
                        // next batch's positive phase reads the updated block there too.
                        let next = perm
                            .chunks(bs)
                            .nth(bi + 1)
                            .or_else(|| next_perm.as_ref().and_then(|p| p.chunks(bs).next()));
                        next_cases.clear();
                        if let Some(next) = next {
                            next_cases.extend(next.iter().map(|&p| active[p]));
                        }
                        // The next batch's index needs nothing from this one: a small one is
                        // built serially during the negative pass by the member that has less
                        // to do there (the team would otherwise wait for it after); a big one
                        // is built in parallel afterwards.
                        let serial_index =
                            next.is_some() && !parallel_index(batch_ratings(cases, &next_cases));
                        let (err, nr) = {
                            let (gn, next_cases) = (&mut gn, &next_cases);
                            let model = &self;
                            self.batch_chains(
                                cases,
                                implicit,
                                &batch_cases,
                                t_steps,
                                params.negative,
                                key,
                                &mut g,
                                bi > 0 || first_prepared,
                                serial_index.then_some(move || {
                                    model.batch_index(cases, next_cases, gn, None)
                                }),
                                team,
                            )
                        };
                        if next.is_some() && !serial_index {
                            team.timed(PHASE_INDEX, || {
                                self.batch_index(cases, &next_cases, &mut gn, Some(team))
                            });
                        }
                        err_sum += err;
                        n_rated += nr;
                        let inv_b = 1.0 / batch_cases.len() as f32;
                        let (wc, bc) = (&wcfg, &bcfg);
                        let sampled = params.negative == NegativePhase::Sample;
                        let rows = CaseRows {
                            p0: &g.p0,
                            p1: &g.p1,
                            pd: &g.pd,
                        };
                        let (zbi, by_item, by_item_ptr) = (&g.zbi, &g.by_item, &g.by_item_ptr);
                        // One job per chunk of units: their steps, then (when there is a next batch)
                        // their rows into that chunk's accumulator for the next positive phase, in
                        // unit order. The chunks are the next batch's, or this batch's at the end of
                        // an epoch.
                        let nbn = if next.is_some() { next_cases.len() } else { 0 };
                        let BatchGrad {
                            acc: nacc,
                            by_item: nents,
                            by_item_ptr: nptr,
                            step_bounds: nbounds,
                            step_scratch,
                            ..
                        } = &mut gn;
                        let bounds = if next.is_some() {
                            &nbounds[..]
                        } else {
                            &g.step_bounds[..]
                        };
                        let folds = ChunkFolds::new(nacc, nbn * m);
                        let folds = &folds;
                        let mut scratch = step_scratch.chunks_mut(k * m + k);
                        let jobs = (0..N_CHUNKS).map(|c| {
                            let (gwi, gbi) = scratch
                                .next()
                                .expect("a block per chunk")
                                .split_at_mut(k * m);
                            (c, gwi, gbi)
                        });
                        let claims = &g.claims;
                        claims.reset(bounds);
                        let (nents, nptr) = (&nents[..], &nptr[..]);
                        let has_next = next.is_some();
                        // Units are claimed (see `UnitClaims`), so W, its velocity and the
                        // biases are reached through pointers: a unit's rows belong to whichever
                        // member claimed it.
                        let (wp, vp) = (SyncPtr(self.w.as_mut_ptr()), SyncPtr(s_w.m1.as_mut_ptr()));
                        let (bp, vbp) =
                            (SyncPtr(self.b.as_mut_ptr()), SyncPtr(s_b.m1.as_mut_ptr()));
                        let (wp, vp, bp, vbp) = (&wp, &vp, &bp, &vbp);
                        // Unit i's fused step (gradient, momentum, and the next batch's positive
                        // rows when `nx` is given), with `gwi`/`gbi` as scratch.
                        let step_unit =
                            |i: usize,
                             gwi: &mut [f32],
                             gbi: &mut [f32],
                             nx: Option<NextPositive<'_>>| {
                                let (lo, hi) = (by_item_ptr[i], by_item_ptr[i + 1]);
                                // SAFETY: unit i < d was claimed by this member alone in this step
                                // (each unit of a chunk's span goes to exactly one claim), so these
                                // rows are not reached by any other member until the step ends.
                                let step = unsafe {
                                    ItemMomentum {
                                        w: std::slice::from_raw_parts_mut(
                                            wp.0.add(i * k * m),
                                            k * m,
                                        ),
                                        vw: std::slice::from_raw_parts_mut(
                                            vp.0.add(i * k * m),
                                            k * m,
                                        ),
                                        b: std::slice::from_raw_parts_mut(bp.0.add(i * k), k),
                                        vb: std::slice::from_raw_parts_mut(vbp.0.add(i * k), k),
                                        wcfg: wc,
                                        bcfg: bc,
                                    }
                                };
                                let (ents, zi) = (&by_item[lo..hi], &zbi[lo * k..hi * k]);
                                item_step(ents, rows, zi, inv_b, sampled, gwi, gbi, Some(step), nx);
                            };
                        let hs = SyncPtr(help_scratch.as_mut_ptr());
                        let hs = &hs;
                        // A member with no chunk left steps units from the back of the others'
                        // (their momentum step only); the chunk's runner adds their rows to the
                        // next batch's positive sums afterwards.
                        let idle = |member: usize| {
                            // SAFETY: block `member` of `help_scratch` (one per team member) is
                            // this member's alone.
                            let (gwi, gbi) = unsafe {
                                std::slice::from_raw_parts_mut(
                                    hs.0.add(member * (k * m + k)),
                                    k * m + k,
                                )
                            }
                            .split_at_mut(k * m);
                            for c in 0..N_CHUNKS {
                                while let Some(r) = claims.back(c) {
                                    claims.help(c, r, |i| step_unit(i, gwi, gbi, None));
                                }
                            }
                        };
                        team.timed(PHASE_STEP, || {
                            team.for_each_static_and(
                                jobs,
                                |(c, gwi, gbi)| {
                                    // SAFETY: chunk c runs once in this step, on this member,
                                    // and is finished at the end of this job.
                                    let a = unsafe { folds.block(c) };
                                    a.fill(0.0);
                                    while let Some(r) = claims.front(c) {
                                        for i in r {
                                            let nx = has_next.then(|| NextPositive {
                                                ents: &nents[nptr[i]..nptr[i + 1]],
                                                acc: &mut *a,
                                            });
                                            step_unit(i, gwi, gbi, nx);
                                        }
                                        #[cfg(test)]
                                        if SLOW_CHUNK.load(Ordering::Relaxed) == c {
                                            std::thread::sleep(std::time::Duration::from_micros(
                                                300,
                                            ));
                                        }
                                    }
                                    // Units from `top` on were stepped by others: once they are
                                    // all done, their rows go into the sums, in unit order.
                                    let end = bounds[c + 1];
                                    let top = claims.wait_for_helpers(c, end);
                                    if has_next {
                                        for i in top..end {
                                            // SAFETY: unit i's step is done (counted in `helped`,
                                            // read with Acquire) and nobody writes W in this step
                                            // any more for it; these are reads of its rows.
                                            let wi = unsafe {
                                                std::slice::from_raw_parts(
                                                    wp.0.add(i * k * m),
                                                    k * m,
                                                )
                                            };
                                            next_positive(&nents[nptr[i]..nptr[i + 1]], wi, a, m);
                                        }
                                    }
                                    // SAFETY: chunk c's sums are complete and `a` is not used
                                    // after this.
                                    unsafe { folds.finished(c) };
                                },
                                || {},
                                &idle,
                            )
                        });
                        team.timed(PHASE_STEP, || {
                            self.hidden_grads(
                                own_sets(cases, implicit),
                                &batch_cases,
                                &mut g,
                                team,
                            );
                            opt_step(&mut self.c, &g.gc, &mut s_c, &bcfg, adam, team);
                            if let Some(dm) = &mut self.dmat {
                                opt_step(dm, &g.gd, &mut s_d, &wcfg, adam, team);
                            }
                        });
                        // The next batch (indexed, positive phase done) becomes the current one.
                        std::mem::swap(&mut g, &mut gn);
                        continue;
                    }
                    let (err, nr) = self.batch_gradient(
                        cases,
                        implicit,
                        &batch_cases,
                        t_steps,
                        params.negative,
                        key,
                        &mut g,
                        team,
                    );
                    err_sum += err;
                    n_rated += nr;
                    let (gw, gb, gc, gd) = (&g.gw, &g.gb, &g.gc, &g.gd);

                    // Optimizer steps.
                    team.timed(PHASE_STEP, || {
                        match &mut self.factors {
                            None => opt_step(&mut self.w, gw, &mut s_w, &wcfg, adam, team),
                            Some((cf, a, bf)) => {
                                let cf = *cf;
                                // gA (C×DK, column-major) = Bᵀ gW, computed as gAᵀ = gWᵀ B (DK
                                // rows to split over the team); gB (M×C) = gW Aᵀ.
                                let gw_ref = MatRef::from_column_major_slice(gw, m, d * k);
                                let b_ref = MatRef::from_column_major_slice(bf, m, cf);
                                let a_ref = MatRef::from_column_major_slice(a, cf, d * k);
                                gemm_team(
                                    MatMut::from_column_major_slice_mut(&mut gfa, cf, d * k)
                                        .transpose_mut(),
                                    gw_ref.transpose(),
                                    b_ref,
                                    team,
                                );
                                gemm_team(
                                    MatMut::from_column_major_slice_mut(&mut gfb, m, cf),
                                    gw_ref,
                                    a_ref.transpose(),
                                    team,
                                );
                                opt_step(a, &gfa, &mut s_fa, &wcfg, adam, team);
                                opt_step(bf, &gfb, &mut s_fb, &wcfg, adam, team);
                                factor_product(&mut self.w, a, bf, d * k, cf, m, team);
                            }
                        }
                        opt_step(&mut self.b, gb, &mut s_b, &bcfg, adam, team);
                        opt_step(&mut self.c, gc, &mut s_c, &bcfg, adam, team);
                        if let Some(dm) = &mut self.dmat {
                            opt_step(dm, gd, &mut s_d, &wcfg, adam, team);
                        }
                    });
                }
                first_prepared = fused && next_perm.is_some();
                if let Some(p) = next_perm {
                    perm = p;
                }
                let secs = t0.elapsed().as_secs_f64();
                secs_total += secs;
                if !(all_finite(&self.w) && all_finite(&self.b) && all_finite(&self.c)) {
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
                let [hidden, negative, step, index] = team.take_times();
                progress(&EpochReport {
                    epoch: epoch + 1,
                    t: t_steps,
                    seconds: secs,
                    recon_error: err_sum / n_rated.max(1) as f64,
                    valid_rmse,
                    phases: PhaseTimes {
                        batches: batches_run,
                        hidden,
                        negative,
                        step,
                        index,
                    },
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
            Ok(())
        })?;
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

/// [`RatingRbm::predict_pairs`] for one group: `g` lists pair indices sorted by case; returns
/// K values per entry of `g`.
#[inline(always)]
fn predict_group_body(
    model: &RatingRbm,
    g: &[usize],
    pairs: &[(u32, u32)],
    cases: &Csr,
    implicit: Option<&Csr>,
    method: PredictMethod,
) -> Vec<f32> {
    let row = |case: usize| cases.row_or_empty(case);
    let (d, k, m) = (model.d, model.k, model.m);
    // The group's cases, and each pair's case slot.
    let mut slot_of = Vec::with_capacity(g.len());
    let mut case_ids: Vec<usize> = Vec::new();
    for &p in g {
        let case = pairs[p].0 as usize;
        if case_ids.last() != Some(&case) {
            case_ids.push(case);
        }
        slot_of.push(case_ids.len() - 1);
    }
    // Hidden inputs: c and the implicit rows per case, then W unit-major.
    let mut x = vec![0.0f32; case_ids.len() * m];
    let mut ptr = vec![0usize; d + 1];
    for (xs, &case) in x.chunks_mut(m).zip(&case_ids) {
        xs.copy_from_slice(&model.c);
        let items = row(case).0;
        if let Some(dm) = &model.dmat {
            let imp = implicit_row(implicit, case, items);
            for &i in imp {
                add(xs, &dm[i as usize * m..(i as usize + 1) * m]);
            }
        }
        for &i in items {
            ptr[i as usize + 1] += 1;
        }
    }
    for i in 0..d {
        ptr[i + 1] += ptr[i];
    }
    let mut fill = ptr.clone();
    let mut ents = vec![(0u32, 0u8); ptr[d]];
    for (s, &case) in case_ids.iter().enumerate() {
        let (items, classes) = row(case);
        for (&i, &cl) in items.iter().zip(classes) {
            ents[fill[i as usize]] = (s as u32, cl);
            fill[i as usize] += 1;
        }
    }
    drop(fill);
    for i in 0..d {
        for (e, &(s, cl)) in (ptr[i]..).zip(&ents[ptr[i]..ptr[i + 1]]) {
            if let Some(&(ahead, _)) = ents.get(e + PREDICT_PREFETCH_RATINGS) {
                prefetch_bytes(x[ahead as usize * m..].as_ptr().cast(), m * 4);
            }
            let o = (i * k + cl as usize) * m;
            let s = s as usize;
            add(&mut x[s * m..(s + 1) * m], &model.w[o..o + m]);
        }
    }
    let ph: Vec<f32> = x.iter().map(|&v| sigmoid(v)).collect();
    // The pairs in unit order (each pair's result stands alone, so ties may go any way).
    let mut by_unit: Vec<(u32, u32)> = (0..g.len()).map(|n| (pairs[g[n]].1, n as u32)).collect();
    by_unit.sort_unstable();
    let mut res = vec![0.0f32; g.len() * k];
    let (mut x2, mut ph2) = (vec![0.0f32; m], vec![0.0f32; m]);
    for (e, &(q, n)) in by_unit.iter().enumerate() {
        if let Some(&(_, ahead)) = by_unit.get(e + PREDICT_PREFETCH_PAIRS) {
            let s = slot_of[ahead as usize] * m;
            prefetch_bytes(x[s..].as_ptr().cast(), m * 4);
            prefetch_bytes(ph[s..].as_ptr().cast(), m * 4);
        }
        let (q, n) = (q as usize, n as usize);
        let s = slot_of[n];
        let (xs, phs) = (&x[s * m..(s + 1) * m], &ph[s * m..(s + 1) * m]);
        let out = &mut res[n * k..(n + 1) * k];
        // The unit's ratings in this group are in slot order.
        let unit = &ents[ptr[q]..ptr[q + 1]];
        match unit.binary_search_by_key(&(s as u32), |e| e.0) {
            // Already rated: predict it from the case's other ratings.
            Ok(pos) => {
                let o = (q * k + unit[pos].1 as usize) * m;
                for j in 0..m {
                    x2[j] = xs[j] - model.w[o + j];
                    ph2[j] = sigmoid(x2[j]);
                }
                model.predict_dist(&x2, &ph2, q, method, out);
            }
            Err(_) => model.predict_dist(xs, phs, q, method, out),
        }
    }
    res
}

simd_fn!(
    /// [`predict_group_body`] at the widest SIMD allowed (same bits at every level: the
    /// sums are written out in a fixed order).
    fn predict_group(model: &RatingRbm, g: &[usize], pairs: &[(u32, u32)],
        cases: &Csr, implicit: Option<&Csr>, method: PredictMethod) -> Vec<f32>
        => predict_group_body);

/// The conditional model's implicit set of `case`: its row of `implicit`, or the case's own
/// rated `items` when there is no such row (no separate sets, or a case past their end).
fn implicit_row<'a>(implicit: Option<&'a Csr>, case: usize, items: &'a [u32]) -> &'a [u32] {
    implicit
        .filter(|c| case < c.rows())
        .map_or(items, |c| c.row(case).0)
}

/// Units per block of [`RatingRbm::mean_field_grid`]: a block's logits for 200 cases at
/// K = 5 take 2 MB.
const GRID_UNITS: usize = 512;

/// [`RatingRbm::mean_field_grid`]'s last step for one case: the class logits of its `nv`
/// visible units in `z` (class kk's from `kk * zs`) and their biases `bias` (class kk's from
/// `kk * nv`) to the rating `readout` makes of each unit's softmax, into `out` (one per unit).
/// Sixteen units at a time, each class's logits one vector, so the exponentials vectorize
/// (the softmax pair by pair was three quarters of a top-N scoring).
#[inline(always)]
fn grid_readout_body(
    z: &[f32],
    zs: usize,
    bias: &[f32],
    nv: usize,
    values: &[f32],
    readout: RatingReadout,
    out: &mut [f32],
) {
    const L: usize = 16;
    let full = nv / L * L;
    for u0 in (0..full).step_by(L) {
        readout_lanes::<L>(
            (z, zs),
            (bias, nv),
            u0,
            values,
            readout,
            &mut out[u0..u0 + L],
        );
    }
    for u0 in full..nv {
        readout_lanes::<1>(
            (z, zs),
            (bias, nv),
            u0,
            values,
            readout,
            &mut out[u0..u0 + 1],
        );
    }
}

/// [`grid_readout_body`] for the `N` units from `u0`; `z` and `bias` come with their class
/// strides.
#[inline(always)]
fn readout_lanes<const N: usize>(
    (z, zs): (&[f32], usize),
    (bias, bs): (&[f32], usize),
    u0: usize,
    values: &[f32],
    readout: RatingReadout,
    out: &mut [f32],
) {
    // Class kk's N logits and biases, as arrays (so the loops over them vectorize).
    let class = |kk: usize| -> (&[f32; N], &[f32; N]) {
        (
            z[kk * zs + u0..kk * zs + u0 + N]
                .try_into()
                .expect("N logits"),
            bias[kk * bs + u0..kk * bs + u0 + N]
                .try_into()
                .expect("N biases"),
        )
    };
    let mut mx = [f32::NEG_INFINITY; N];
    for kk in 0..values.len() {
        let (zk, bk) = class(kk);
        for l in 0..N {
            let v = zk[l] + bk[l];
            if v > mx[l] {
                mx[l] = v;
            }
        }
    }
    match readout {
        RatingReadout::Expected => {
            let (mut sum, mut num) = ([0.0f32; N], [0.0f32; N]);
            for (kk, &value) in values.iter().enumerate() {
                let (zk, bk) = class(kk);
                for l in 0..N {
                    let e = crate::linalg::exp_f32(zk[l] + bk[l] - mx[l]);
                    sum[l] += e;
                    num[l] += e * value;
                }
            }
            for l in 0..N {
                out[l] = num[l] / sum[l];
            }
        }
        // The largest logit is the most probable class (the first of equals).
        RatingReadout::Argmax => {
            for l in 0..N {
                let best = (0..values.len())
                    .find(|&kk| {
                        let (zk, bk) = class(kk);
                        zk[l] + bk[l] == mx[l]
                    })
                    .unwrap_or(0);
                out[l] = values[best];
            }
        }
    }
}

simd_fn!(
    /// [`grid_readout_body`] at the widest SIMD allowed.
    fn grid_readout(z: &[f32], zs: usize, bias: &[f32], nv: usize, values: &[f32],
        readout: RatingReadout, out: &mut [f32]) -> () => grid_readout_body);

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
/// W = A·B for the factored model (`rows` = D·K rows of A, C factors, M hidden units), split
/// over `team`.
fn factor_product(
    w: &mut [f32],
    a: &[f32],
    b: &[f32],
    rows: usize,
    c: usize,
    m: usize,
    team: &Team<'_>,
) {
    let a_ref = MatRef::from_column_major_slice(a, c, rows);
    let b_ref = MatRef::from_column_major_slice(b, m, c);
    // Column-major: Wc (m × rows) = Bc (m × c) · Ac (c × rows).
    gemm_team(
        MatMut::from_column_major_slice_mut(w, m, rows),
        b_ref,
        a_ref,
        team,
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

    /// Pair-by-pair prediction, case by case: each case's hidden input from
    /// [`RatingRbm::hidden_input`] (its rows of W in row order), then [`RatingRbm::predict_dist`].
    fn predict_pairs_per_case(
        model: &RatingRbm,
        cases: &Csr,
        implicit: Option<&Csr>,
        pairs: &[(u32, u32)],
        method: PredictMethod,
    ) -> Vec<f32> {
        let (k, m) = (model.k, model.m);
        let mut out = vec![0.0f32; pairs.len() * k];
        let (mut x, mut ph) = (vec![0.0f32; m], vec![0.0f32; m]);
        for (&(case, q), out) in pairs.iter().zip(out.chunks_mut(k)) {
            let (case, q) = (case as usize, q as usize);
            let (items, classes) = cases.row_or_empty(case);
            let imp = implicit_row(implicit, case, items);
            model.hidden_input(items, classes, imp, &mut x);
            // A rated pair is predicted from the row's other ratings: x without its own row.
            if let Ok(pos) = items.binary_search(&(q as u32)) {
                let o = (q * k + classes[pos] as usize) * m;
                for j in 0..m {
                    x[j] -= model.w[o + j];
                }
            }
            for (p, &v) in ph.iter_mut().zip(&x) {
                *p = sigmoid(v);
            }
            model.predict_dist(&x, &ph, q, method, out);
        }
        out
    }

    #[test]
    fn unit_major_prediction_equals_case_by_case() {
        // Enough ratings for several groups; pairs in random order, repeated pairs, rated
        // pairs, cases without a row, and the conditional model's implicit sets.
        let (n, d, k, m) = (800, 60, 5, 9);
        let cases = random_cases(n, d, k, 21);
        let implicit = random_cases(n + 20, d, 2, 22);
        let mut s = Stream::new(23, Purpose::Data, 0, 0, 0);
        let mut pairs: Vec<(u32, u32)> = (0..3000)
            .map(|_| (s.below(n + 10) as u32, s.below(d) as u32))
            .collect();
        pairs.extend_from_within(..50);
        assert!(cases.nnz() > 4 * (1 << 12), "several groups");
        let rated = pairs
            .iter()
            .filter(|&&(c, q)| (c as usize) < n && cases.row(c as usize).0.contains(&q))
            .count();
        assert!(rated > 500, "{rated} rated pairs");
        for conditional in [false, true] {
            let model = random_model(d, k, m, conditional, 24);
            let imp = conditional.then_some(&implicit);
            for method in [PredictMethod::MeanField, PredictMethod::Exact] {
                let got = model.predict_pairs(&cases, imp, &pairs, method);
                let want = predict_pairs_per_case(&model, &cases, imp, &pairs, method);
                assert_eq!(got, want, "conditional {conditional}, {method:?}");
            }
        }
    }

    #[test]
    fn mean_field_grid_matches_pair_by_pair_prediction() {
        // More units than one block holds (512), in one run and as a shuffled subset.
        let (d, k, m) = (1100, 5, 9);
        let cases = random_cases(6, d, k, 31);
        let implicit = random_cases(6, d, 1, 32);
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        let ids = [0u32, 3, 5, 1];
        let mut s = Stream::new(33, Purpose::Data, 0, 0, 0);
        let mut subset: Vec<u32> = (0..d as u32).filter(|_| s.uniform() < 0.6).collect();
        for n in (1..subset.len()).rev() {
            subset.swap(n, s.below(n + 1));
        }
        let all: Vec<u32> = (0..d as u32).collect();
        for conditional in [false, true] {
            let model = random_model(d, k, m, conditional, 34);
            let imp = conditional.then_some(&implicit);
            let ph = model.case_hidden_probs(&cases, imp, &ids);
            for visible in [&all, &subset] {
                let pairs: Vec<(u32, u32)> = ids
                    .iter()
                    .flat_map(|&c| visible.iter().map(move |&v| (c, v)))
                    .collect();
                let dist = model.predict_pairs(&cases, imp, &pairs, PredictMethod::MeanField);
                for readout in [RatingReadout::Expected, RatingReadout::Argmax] {
                    let mut got = vec![0.0f32; pairs.len()];
                    model.mean_field_grid(&ph, visible, &values, readout, &mut got);
                    assert_eq!(got.len(), pairs.len());
                    let mut compared = 0;
                    for (n, &(c, v)) in pairs.iter().enumerate() {
                        if cases.row(c as usize).0.contains(&v) {
                            continue;
                        }
                        let want = RatingRbm::readout(&dist[n * k..(n + 1) * k], &values, readout);
                        assert!(
                            (got[n] - want).abs() < 2e-4,
                            "case {c}, unit {v}, {readout:?}: {} against {want}",
                            got[n]
                        );
                        compared += 1;
                    }
                    assert!(compared > 1000, "{compared}");
                }
            }
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
            with_team(2, |team| {
                model.batch_gradient(&cases, &cases, &batch, 1, negative, (1, 2, 3), &mut g, team)
            });
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
            if negative == NegativePhase::Sample {
                // A whole count (ratings of the class less samples of it) scaled once by
                // 1/B: exactly, not a sum of rounded ±1/B terms.
                let inv_b = 1.0 / n as f32;
                for (x, y) in g.gb.iter().zip(&gb) {
                    assert_eq!(*x, (y * n as f64).round() as f32 * inv_b, "b: {x} vs {y}");
                }
            }
            close(&g.gc, &gc, "c");
            close(&g.gd, &gd, "D");
            assert!(
                gw.iter().any(|v| v.abs() > 1e-3),
                "gradient should not vanish"
            );
            // Implicit sets given as their own matrix (indexed separately, not read off the
            // batch's rating index): the same bits.
            let own = cases.clone();
            let mut g2 = BatchGrad::new(d, k, m, n, true);
            with_team(2, |team| {
                model.batch_gradient(&cases, &own, &batch, 1, negative, (1, 2, 3), &mut g2, team)
            });
            assert!(g2.gd == g.gd && g2.gw == g.gw && g2.gc == g.gc);
        }
    }

    #[test]
    fn row_sums_match_adding_one_row_at_a_time() {
        // `add_rows` (the conditional input, Σ D rows) and `d_gradient` (Σ (p0 − p1)/B per
        // unit) keep up to 128 columns in registers across rows (where the CPU has AVX-512):
        // the same additions in the same order as adding one row at a time, so the same bits;
        // widths with and without a tail and over one column block.
        for m in [1usize, 15, 16, 17, 100, 130, 300] {
            let mut s = Stream::new(21, Purpose::Data, m as u64, 0, 0);
            let rows = 9;
            let dm: Vec<f32> = (0..rows * m).map(|_| s.uniform() - 0.5).collect();
            let items: Vec<u32> = vec![4, 0, 8, 8, 2, 7];
            let base0: Vec<f32> = (0..m).map(|_| s.uniform()).collect();
            let mut got = base0.clone();
            add_rows(&mut got, &dm, &items);
            let mut want = base0.clone();
            for &i in &items {
                for j in 0..m {
                    want[j] += dm[i as usize * m + j];
                }
            }
            assert!(got == want, "add_rows M={m}");

            let (p0, p1) = (&dm[..], &dm.iter().map(|v| v * 0.7).collect::<Vec<f32>>());
            let ptr = [0usize, 3, 3, 6];
            let ents: Vec<u32> = vec![1, 5, 2, 8, 0, 1];
            let inv_b = 1.0 / 7.0;
            let mut gd = vec![f32::NAN; 3 * m];
            with_team(2, |team| {
                d_gradient(&mut gd, p0, p1, inv_b, m, team, &ptr, &ents, |&n| {
                    n as usize
                })
            });
            for i in 0..3 {
                let mut g = vec![0.0f32; m];
                for &n in &ents[ptr[i]..ptr[i + 1]] {
                    for j in 0..m {
                        g[j] += (p0[n as usize * m + j] - p1[n as usize * m + j]) * inv_b;
                    }
                }
                assert!(g[..] == gd[i * m..(i + 1) * m], "d_gradient M={m} unit {i}");
            }
        }
    }

    #[test]
    fn unit_step_kernel_matches_the_portable_body_bit_for_bit() {
        // `item_step` (the AVX-512 kernel that sorts a unit's ratings by class and keeps each
        // gradient row in registers, where the CPU has it) against `item_step_body`, the
        // reference loops: gradient only, fused momentum step, and the next batch's positive
        // rows; M with and without a tail, more than one column block, K up to 10, and more
        // ratings than the kernel sorts on its stack.
        for (k, m, n) in [
            (5, 100, 13),
            (2, 16, 1),
            (10, 17, 40),
            (5, 130, 9),
            (3, 300, 0),
            (5, 7, STEP_MAX_ENTS + 3),
        ] {
            let nb = 300;
            let mut s = Stream::new(11, Purpose::Data, k as u64, m as u64, n as u64);
            let mut vals =
                |len: usize| -> Vec<f32> { (0..len).map(|_| s.uniform() - 0.3).collect() };
            let (p0, p1) = (vals(nb * m), vals(nb * m));
            let pd: Vec<f32> = p0.iter().zip(&p1).map(|(a, b)| a - b).collect();
            let rows = CaseRows {
                p0: &p0,
                p1: &p1,
                pd: &pd,
            };
            let (w0, vw0, b0, vb0) = (vals(k * m), vals(k * m), vals(k), vals(k));
            let acc0 = vals(nb * m);
            let mut s = Stream::new(12, Purpose::Data, k as u64, m as u64, n as u64);
            let mut pick = |r: usize| (s.uniform() * r as f32) as usize % r;
            let ents: Vec<(u32, u8)> = (0..n)
                .map(|e| ((e * 7 % nb) as u32, pick(k) as u8))
                .collect();
            let mut zi = vec![0.0f32; n * k];
            for e in 0..n {
                zi[e * k + pick(k)] = 1.0;
            }
            let next: Vec<(u32, u8)> = (0..n.min(50))
                .map(|e| ((e * 3) as u32, pick(k) as u8))
                .collect();
            let wcfg = StepCfg {
                lr: 0.07,
                decay: 0.001,
                momentum: 0.9,
                adam_t: 1,
            };
            let bcfg = StepCfg {
                lr: 0.05,
                decay: 0.0,
                momentum: 0.9,
                adam_t: 1,
            };
            for (stepped, with_next) in [(false, false), (true, false), (true, true)] {
                let run = |reference: bool| {
                    let (mut w, mut vw, mut b, mut vb) =
                        (w0.clone(), vw0.clone(), b0.clone(), vb0.clone());
                    let (mut gwi, mut gbi) = (vec![f32::NAN; k * m], vec![f32::NAN; k]);
                    let mut acc = acc0.clone();
                    let step = stepped.then(|| ItemMomentum {
                        w: &mut w,
                        vw: &mut vw,
                        b: &mut b,
                        vb: &mut vb,
                        wcfg: &wcfg,
                        bcfg: &bcfg,
                    });
                    let nx = with_next.then(|| NextPositive {
                        ents: &next,
                        acc: &mut acc,
                    });
                    let inv_b = 1.0 / 37.0;
                    if reference {
                        item_step_body(&ents, rows, &zi, inv_b, true, &mut gwi, &mut gbi, step, nx);
                    } else {
                        item_step(&ents, rows, &zi, inv_b, true, &mut gwi, &mut gbi, step, nx);
                    }
                    let grad = if stepped {
                        Vec::new()
                    } else {
                        [gwi, gbi].concat()
                    };
                    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                    bits([grad, w, vw, b, vb, acc].concat())
                };
                assert!(
                    run(true) == run(false),
                    "K={k} M={m} n={n} step {stepped} next {with_next}"
                );
            }
        }
    }

    #[test]
    fn negative_kernels_match_f64_softmax_and_cumulative_sampling() {
        // The per-rating kernels (AVX-512 fused logits + softmax + sampling where the CPU has
        // it, the portable loops otherwise) against an f64 softmax of b + W·h, for K with and
        // without the fused path and M with and without a SIMD tail. With a sampled (0/1) h
        // and its bit masks, items with ≥ BLOCK_MIN ratings go 16 at a time across lanes, and
        // NARROW_BLOCK_MIN..=8 left over in one 8-lane block.
        // 11 ratings: two groups of four, a pair and a single one in the AVX-512 kernel (or a
        // part block when binary); 28: a full and a part block; 37: two full blocks and an
        // 8-lane one of five; 6 and 8: an 8-lane block; 20: a full block and four the
        // per-rating way; 3: per rating.
        let shapes = [
            (2, 7),
            (5, 100),
            (5, 16),
            (8, 33),
            (10, 100),
            (3, 1),
            (5, 17),
            (4, 64),
        ];
        for ((k, m), (nb, binary)) in shapes.into_iter().flat_map(|km| {
            [
                (11, false),
                (11, true),
                (28, true),
                (37, true),
                (6, true),
                (8, true),
                (20, true),
                (3, true),
            ]
            .map(|c| (km, c))
        }) {
            let model = random_model(3, k, m, false, 40 + k as u64);
            let mut s = Stream::new(7, Purpose::Data, k as u64, m as u64, 0);
            let h: Vec<f32> = (0..nb * m)
                .map(|_| {
                    let x = s.uniform();
                    if binary {
                        f32::from(u8::from(x < 0.5))
                    } else {
                        x * 6.0 - 3.0
                    }
                })
                .collect();
            let hb = hidden_words(m);
            let mut hbits = vec![0u32; nb * hb];
            for (row, out) in h.chunks(m).zip(hbits.chunks_mut(hb)) {
                hidden_bits(row, out);
            }
            let bits = binary.then_some((&hbits[..], hb));
            let ents: Vec<(u32, u8)> = (0..nb).map(|n| (n as u32, (n % k) as u8)).collect();
            let item = 1;
            let reference = |n: usize| -> Vec<f64> {
                let mut z: Vec<f64> = (0..k)
                    .map(|kk| {
                        let o = (item * k + kk) * m;
                        f64::from(model.b[item * k + kk])
                            + (0..m)
                                .map(|j| f64::from(h[n * m + j]) * f64::from(model.w[o + j]))
                                .sum::<f64>()
                    })
                    .collect();
                let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let tot: f64 = z.iter().map(|v| (v - mx).exp()).sum();
                for v in z.iter_mut() {
                    *v = (*v - mx).exp() / tot;
                }
                z
            };
            for negative in [NegativePhase::MeanField, NegativePhase::Sample] {
                let mut z = vec![0.0f32; nb * k];
                let mut acc = vec![0.0f32; nb * m];
                let rng0 = Stream::new(3, Purpose::Train, 1, 2, 3);
                let mut rng = rng0.clone();
                let err = model.item_negative(
                    item, &ents, &h, negative, true, &mut rng, &mut z, &mut acc, bits,
                );
                let mut draws = rng0.clone();
                let mut want_err = 0.0;
                for n in 0..nb {
                    let p = reference(n);
                    for kk in 0..k {
                        let t = if kk == n % k { 1.0 } else { 0.0 };
                        want_err += (t - p[kk]) * (t - p[kk]);
                    }
                    let wrow = |kk: usize| &model.w[(item * k + kk) * m..(item * k + kk + 1) * m];
                    let an = &acc[n * m..(n + 1) * m];
                    if negative == NegativePhase::MeanField {
                        for kk in 0..k {
                            let got = f64::from(z[n * k + kk]);
                            assert!(
                                (got - p[kk]).abs() < 2e-6,
                                "K={k} M={m} nb={nb}: {got} vs {}",
                                p[kk]
                            );
                        }
                        for j in 0..m {
                            let want: f64 = (0..k).map(|kk| p[kk] * f64::from(wrow(kk)[j])).sum();
                            assert!((f64::from(an[j]) - want).abs() < 1e-5);
                        }
                    } else {
                        let u = f64::from(draws.uniform());
                        let mut cum = 0.0;
                        let mut pick = k - 1;
                        let mut near = false;
                        for kk in 0..k - 1 {
                            cum += p[kk];
                            near |= (cum - u).abs() < 1e-5;
                            if u < cum {
                                pick = kk;
                                break;
                            }
                        }
                        let zn = &z[n * k..(n + 1) * k];
                        assert_eq!(zn.iter().sum::<f32>(), 1.0);
                        assert!(zn.iter().all(|&v| v == 0.0 || v == 1.0));
                        if !near {
                            assert_eq!(zn[pick], 1.0, "K={k} M={m} nb={nb} u={u} p={p:?}");
                            assert_eq!(an, wrow(pick));
                        }
                    }
                }
                assert!(
                    (err - want_err).abs() < 1e-5,
                    "K={k} M={m} nb={nb}: {err} vs {want_err}"
                );
            }
        }
    }

    #[test]
    fn portable_softmax_sample_matches_f64() {
        // The portable path (used without AVX-512 or for K > 16), tested on any CPU.
        let mut s = Stream::new(8, Purpose::Data, 0, 0, 0);
        for k in [2usize, 5, 10, 20] {
            for _ in 0..50 {
                let z0: Vec<f32> = (0..k).map(|_| s.uniform() * 8.0 - 4.0).collect();
                let bias: Vec<f32> = (0..k).map(|_| s.uniform() - 0.5).collect();
                let x: Vec<f64> = z0
                    .iter()
                    .zip(&bias)
                    .map(|(a, b)| f64::from(a + b))
                    .collect();
                let mx = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let tot: f64 = x.iter().map(|v| (v - mx).exp()).sum();
                let p: Vec<f64> = x.iter().map(|v| (v - mx).exp() / tot).collect();
                let mut z = z0.clone();
                let (err, _) = softmax_sample(&mut z, &bias, 1, None);
                for kk in 0..k {
                    assert!((f64::from(z[kk]) - p[kk]).abs() < 2e-6);
                }
                let want: f64 = (0..k)
                    .map(|kk| (if kk == 1 { 1.0 } else { 0.0 } - p[kk]).powi(2))
                    .sum();
                assert!((f64::from(err) - want).abs() < 1e-5);
                let u = s.uniform();
                let mut z = z0.clone();
                let (_, pick) = softmax_sample(&mut z, &bias, 1, Some(u));
                let cum: f64 = p[..pick].iter().sum();
                // u falls in the picked class's interval (up to rounding).
                assert!(f64::from(u) >= cum - 1e-5, "{u} {cum}");
                assert!(pick == k - 1 || f64::from(u) < cum + p[pick] + 1e-5);
                assert_eq!(z.iter().sum::<f32>(), 1.0);
                assert_eq!(z[pick], 1.0);
            }
        }
    }

    #[test]
    fn softmax_lanes_match_softmax_sample_bit_for_bit() {
        // The lane-wise softmax and draw (the negative pass without AVX-512) against
        // `softmax_sample` (itself tested against f64 above), rating by rating: probabilities
        // written back, squared errors and picks must agree to the bit. Full and part groups,
        // K from 2 to 16, logits from ordinary to extreme (exp's clamp, ties for the maximum),
        // and draws that land exactly on a cumulative probability.
        let mut s = Stream::new(9, Purpose::Data, 0, 0, 0);
        for k in (2..=8usize).chain([10, 16]) {
            for g in [1usize, 3, 7, 8] {
                for round in 0..40 {
                    let scale = [0.5, 8.0, 200.0][round % 3];
                    let mut z0: Vec<f32> =
                        (0..g * k).map(|_| (s.uniform() - 0.5) * scale).collect();
                    if round % 5 == 4 {
                        z0[0] = z0[k - 1]; // a tie for the maximum in rating 0
                    }
                    let bias: Vec<f32> = (0..k).map(|_| s.uniform() - 0.5).collect();
                    let mut cls = [0usize; SOFTMAX_LANES];
                    let mut u = [0.0f32; SOFTMAX_LANES];
                    for l in 0..g {
                        cls[l] = (s.uniform() * k as f32) as usize % k;
                        u[l] = s.uniform();
                    }
                    let mut want = z0.clone();
                    let mut want_out = Vec::new();
                    for l in 0..g {
                        let zl = &mut want[l * k..(l + 1) * k];
                        if round % 7 == 6 {
                            // u exactly on the first cumulative probability.
                            let mut p = zl.to_vec();
                            softmax_sample(&mut p, &bias, cls[l], None);
                            u[l] = p[0];
                        }
                        want_out.push(softmax_sample(zl, &bias, cls[l], Some(u[l])));
                    }
                    let mut got = z0.clone();
                    let (errs, picks) = softmax_sample_lanes(&mut got, &bias, &cls, &u);
                    for l in 0..g {
                        assert_eq!(errs[l].to_bits(), want_out[l].0.to_bits(), "K={k} g={g}");
                        assert_eq!(picks[l], want_out[l].1, "K={k} g={g} lane {l}");
                    }
                    assert_eq!(got, want, "K={k} g={g}: one-hot rows");
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_dot_rows_match_f64() {
        // Every block size of `dot_rows_avx2` (1..=6 rows, and 7..13 rows as blocks of six
        // and a rest) with M below, at and across the 8- and 16-column steps.
        if !avx2_fma() {
            return;
        }
        let mut s = Stream::new(10, Purpose::Data, 0, 0, 0);
        for rows in 1..=13usize {
            for m in [1usize, 7, 8, 9, 16, 17, 24, 33, 100] {
                let h: Vec<f32> = (0..m).map(|_| s.uniform() - 0.5).collect();
                let w: Vec<f32> = (0..rows * m).map(|_| s.uniform() * 2.0 - 1.0).collect();
                let mut out = vec![f32::NAN; rows];
                // SAFETY: AVX2 and FMA are present (checked above).
                unsafe { dot_rows_avx2(&h, &w, &mut out) };
                for q in 0..rows {
                    let want: f64 = (0..m)
                        .map(|j| f64::from(h[j]) * f64::from(w[q * m + j]))
                        .sum();
                    assert!(
                        (f64::from(out[q]) - want).abs() < 1e-5,
                        "rows {rows} M {m} row {q}: {} vs {want}",
                        out[q]
                    );
                }
            }
        }
    }

    #[test]
    fn big_batch_index_is_unit_major_in_batch_order() {
        // Big enough for the parallel indexing path; checked against a stable sort, on 1 and
        // 2 threads.
        let (n, d, k) = (300usize, 400usize, 5usize);
        assert!(n * 120 >= PAR_INDEX_MIN);
        let mut s = Stream::new(2, Purpose::Data, 0, 0, 0);
        let mut triples = Vec::new();
        for u in 0..n {
            for i in 0..d {
                if s.uniform() < 0.3 {
                    triples.push((u as u32, i as u32, s.below(k) as u8));
                }
            }
        }
        let cases = Csr::from_triples(n, triples.into_iter());
        let batch: Vec<usize> = Stream::new(3, Purpose::Shuffle, 0, 0, 0).permutation(n);
        let mut want = Vec::new();
        for (b, &p) in batch.iter().enumerate() {
            let (its, cls) = cases.row(p);
            for (&i, &cl) in its.iter().zip(cls) {
                want.push((i, b as u32, cl));
            }
        }
        assert!(want.len() >= PAR_INDEX_MIN);
        want.sort_by_key(|e| e.0); // stable: batch order within a unit
        let model = random_model(d, k, 8, false, 1);
        for threads in [1, 2, 3] {
            let mut g = BatchGrad::new(d, k, 8, n, false);
            with_team(threads, |team| {
                model.batch_chains(
                    &cases,
                    &cases,
                    &batch,
                    1,
                    NegativePhase::Sample,
                    (1, 2, 3),
                    &mut g,
                    false,
                    None::<fn()>,
                    team,
                )
            });
            let got: Vec<(u32, u32, u8)> = (0..d)
                .flat_map(|i| {
                    g.by_item[g.by_item_ptr[i]..g.by_item_ptr[i + 1]]
                        .iter()
                        .map(move |&(b, cl)| (i as u32, b, cl))
                })
                .collect();
            assert_eq!(got, want);
            // Built serially (as during a negative pass), the index is the same.
            let mut serial = BatchGrad::new(d, k, 8, n, false);
            model.batch_index(&cases, &batch, &mut serial, None);
            assert_eq!(serial.by_item[..want.len()], g.by_item[..want.len()]);
            assert_eq!(serial.by_item_ptr, g.by_item_ptr);
            assert_eq!(serial.chunk_bounds, g.chunk_bounds);
            assert_eq!(serial.step_bounds, g.step_bounds);
        }
    }

    #[test]
    fn balanced_bounds_cut_equal_work() {
        // Units with uneven work (a few heavy ones, runs of empty ones): every chunk's work is
        // within one unit's of the even share, and the bounds run from 0 to d in order.
        let mut s = Stream::new(5, Purpose::Data, 0, 0, 0);
        for d in [1usize, 7, 8, 9, 100, 1682] {
            let unit: Vec<usize> = (0..d)
                .map(|i| match i % 13 {
                    0 => 200 + s.below(100),
                    1..=4 => 0,
                    _ => s.below(20),
                })
                .collect();
            let mut before = vec![0usize];
            for &u in &unit {
                before.push(before.last().unwrap() + u);
            }
            let heaviest = *unit.iter().max().unwrap() as f64;
            let total = before[d] as f64;
            for lighter in [0, RIDE_LIGHTER, 200] {
                let mut bounds = Vec::new();
                balanced_bounds(d, |i| before[i], lighter, &mut bounds);
                assert_eq!(bounds.len(), N_CHUNKS + 1);
                assert_eq!((bounds[0], bounds[N_CHUNKS]), (0, d));
                assert!(bounds.windows(2).all(|w| w[0] <= w[1]));
                // Each half is cut evenly, the first half's share `lighter` ‰ below half.
                let half = N_CHUNKS / 2;
                let first = total * (500 - lighter) as f64 / 1000.0;
                for (c, w) in bounds.windows(2).enumerate() {
                    let work = (before[w[1]] - before[w[0]]) as f64;
                    let share = if c < half {
                        first / half as f64
                    } else {
                        (total - first) / (N_CHUNKS - half) as f64
                    };
                    assert!(work <= share + heaviest + 1.0, "d={d}: {work} vs {share}");
                }
                let front = before[bounds[half]] as f64;
                assert!(
                    (front - first).abs() <= heaviest + 1.0,
                    "d={d}: {front} vs {first}"
                );
            }
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
        fit_planted_with(threads, seed, |p| p)
    }

    fn fit_planted_with(
        threads: usize,
        seed: u64,
        tweak: fn(RatingRbmParams) -> RatingRbmParams,
    ) -> RatingRbm {
        let ratings = planted(120, 40, 3, 0.5, 1);
        let scale = RatingScale::infer(&ratings).unwrap();
        let mat = RatingMatrix::from_ratings(120, 40, ratings, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(16)
            .epochs(3)
            .batch_size(16)
            .conditional(true)
            .seed(seed);
        let params = tweak(params).check().unwrap();
        let data = TrainData::new(&mat.by_user, 40, scale.values());
        let pool = crate::team::test_pool(threads);
        pool.install(|| RatingRbm::fit(&params, &data, &mut |_| {}).unwrap().0)
    }

    #[test]
    fn fused_momentum_step_equals_gradient_then_step() {
        // The training loop fuses each visible unit's gradient with its momentum update; the
        // unfused reference below (full gradient, then `opt_step` on every tensor) must give
        // the same bits, through the momentum warm-up switch and several batches.
        let ratings = planted(60, 30, 3, 0.5, 4);
        let scale = RatingScale::infer(&ratings).unwrap();
        let mat = RatingMatrix::from_ratings(60, 30, ratings, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(12)
            .epochs(3)
            .batch_size(16)
            .momentum_warmup(1)
            .conditional(true)
            .seed(9)
            .check()
            .unwrap();
        let data = TrainData::new(&mat.by_user, 30, scale.values());
        let init = RatingRbm::init(&params, &mat.by_user, 30, 5);
        let fused = init.clone().train(&params, &data, &mut |_| {}).unwrap().0;

        let mut m = init.clone();
        let (d, k, mm) = (30, 5, 12);
        let mut g = BatchGrad::new(d, k, mm, 16, true);
        let (mut s_w, mut s_b, mut s_c, mut s_d) = (
            Slot::new(d * k * mm, false),
            Slot::new(d * k, false),
            Slot::new(mm, false),
            Slot::new(d * mm, false),
        );
        let active: Vec<usize> = (0..60)
            .filter(|&r| !mat.by_user.row(r).0.is_empty())
            .collect();
        for epoch in 0..3 {
            let momentum = if epoch < 1 {
                params.initial_momentum
            } else {
                params.momentum
            };
            let perm =
                Stream::new(9, Purpose::Shuffle, epoch as u64, 0, 0).permutation(active.len());
            for (bi, chunk) in perm.chunks(16).enumerate() {
                let batch: Vec<usize> = chunk.iter().map(|&p| active[p]).collect();
                let by_user = &mat.by_user;
                with_team(2, |team| {
                    m.batch_gradient(
                        by_user,
                        by_user,
                        &batch,
                        1,
                        NegativePhase::Sample,
                        (9, epoch as u64, bi as u64),
                        &mut g,
                        team,
                    )
                });
                let wcfg = StepCfg {
                    lr: params.learning_rate,
                    decay: params.weight_decay,
                    momentum,
                    adam_t: 0,
                };
                let bcfg = StepCfg {
                    lr: params.bias_learning_rate,
                    decay: 0.0,
                    momentum,
                    adam_t: 0,
                };
                with_team(2, |team| {
                    opt_step(&mut m.w, &g.gw, &mut s_w, &wcfg, false, team);
                    opt_step(&mut m.b, &g.gb, &mut s_b, &bcfg, false, team);
                    opt_step(&mut m.c, &g.gc, &mut s_c, &bcfg, false, team);
                    let d = m.dmat.as_mut().unwrap();
                    opt_step(d, &g.gd, &mut s_d, &wcfg, false, team);
                });
            }
        }
        assert_ne!(fused.w, init.w, "training moved the weights");
        assert_eq!(m, fused);
    }

    #[test]
    fn training_is_deterministic_for_any_thread_count() {
        let a = fit_planted(1, 4);
        let b = fit_planted(3, 4);
        let c = fit_planted(3, 4);
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_ne!(a.w, fit_planted(2, 5).w);
        // The factored model (its products split over the team) and Adam (unfused steps).
        for tweak in [
            |p: RatingRbmParams| p.factors(Some(5)),
            |p: RatingRbmParams| p.optimizer(Optimizer::Adam),
        ] {
            let one = fit_planted_with(1, 4, tweak);
            assert_eq!(one, fit_planted_with(2, 4, tweak));
            assert_eq!(one, fit_planted_with(3, 4, tweak));
            assert_ne!(one.w, a.w);
        }
    }

    #[test]
    fn epoch_reports_account_for_every_phase() {
        // 120 planted cases, batches of 16: each epoch's phases are timed once per batch (the
        // p(h|v) passes twice, the step in two parts), the first batch of the run is indexed
        // on its own, and the phases fit inside the epoch's time.
        let ratings = planted(120, 40, 3, 0.5, 1);
        let scale = RatingScale::infer(&ratings).unwrap();
        let mat = RatingMatrix::from_ratings(120, 40, ratings, &scale).unwrap();
        let active = (0..120)
            .filter(|&r| !mat.by_user.row(r).0.is_empty())
            .count();
        let params = RatingRbmParams::new()
            .hidden(16)
            .epochs(3)
            .batch_size(16)
            .check()
            .unwrap();
        let data = TrainData::new(&mat.by_user, 40, scale.values());
        for threads in [1, 2] {
            let pool = crate::team::test_pool(threads);
            let mut reports = Vec::new();
            pool.install(|| {
                RatingRbm::fit(&params, &data, &mut |r: &EpochReport| {
                    reports.push(r.clone())
                })
            })
            .unwrap();
            assert_eq!(reports.len(), 3);
            for (e, r) in reports.iter().enumerate() {
                let p = &r.phases;
                let nb = active.div_ceil(16) as u64;
                assert_eq!(p.batches as u64, nb);
                assert_eq!(p.hidden.calls, 2 * nb, "epoch {e}");
                assert_eq!(p.negative.calls, nb, "epoch {e}");
                assert_eq!(p.step.calls, 2 * nb, "epoch {e}");
                assert_eq!(p.index.calls, u64::from(e == 0), "epoch {e}");
                let parts = [p.hidden, p.negative, p.step, p.index];
                let sum: f64 = parts.iter().map(|t| t.seconds).sum();
                assert!(
                    sum > 0.0 && sum <= r.seconds,
                    "epoch {e}: {sum} vs {}",
                    r.seconds
                );
                for t in parts {
                    assert!(t.spread_seconds >= 0.0 && t.spread_seconds <= t.seconds);
                    if training_threads_for(threads) == 1 {
                        assert_eq!(t.spread_seconds, 0.0);
                    }
                }
            }
        }
    }

    /// The team size a pool of `threads` gets ([`training_threads`] inside it).
    fn training_threads_for(threads: usize) -> usize {
        crate::team::test_pool(threads).install(training_threads)
    }

    #[test]
    fn chunk_groups_are_folded_once_after_their_last_chunk_in_any_order() {
        // Chunks finish in shuffled orders on three threads; each group must end up folded
        // exactly once, from complete blocks, as ((a₀ + a₁) + a₂) + a₃ element by element (the
        // expected sums are computed here one element at a time), and the other blocks left.
        let len = 301; // not a multiple of any SIMD width, nor of the fold's strip
        let orig: Vec<f32> = (0..N_CHUNKS * len)
            .map(|x| ((x * 7919) % 1013) as f32 * 1.3e-3 - 0.61)
            .collect();
        let mut want = orig.clone();
        for g in (0..N_CHUNKS).step_by(CHUNK_GROUP) {
            for x in 0..len {
                let mut s = orig[g * len + x];
                for c in g + 1..g + CHUNK_GROUP {
                    s += orig[c * len + x];
                }
                want[g * len + x] = s;
            }
        }
        for seed in 0..24u64 {
            let order = Stream::new(seed, Purpose::Data, 0, 0, 0).permutation(N_CHUNKS);
            let mut acc = vec![f32::NAN; N_CHUNKS * len];
            let folds = ChunkFolds::new(&mut acc, len);
            let next = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        loop {
                            let q = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&c) = order.get(q) else { break };
                            // SAFETY: chunk c is taken once, by this thread.
                            let b = unsafe { folds.block(c) };
                            b.copy_from_slice(&orig[c * len..(c + 1) * len]);
                            // SAFETY: its block is complete and `b` is not used after this.
                            unsafe { folds.finished(c) };
                        }
                    });
                }
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&acc), bits(&want), "order {order:?}");
        }
    }

    #[test]
    fn units_stepped_by_another_member_give_the_same_model() {
        // One chunk's runner is slowed down, so the other member steps the back of that
        // chunk: the model must be the same, bit for bit, as with nobody helping (one thread).
        let ratings = planted(200, 600, 4, 0.3, 3);
        let scale = RatingScale::infer(&ratings).unwrap();
        let mat = RatingMatrix::from_ratings(200, 600, ratings, &scale).unwrap();
        let data = TrainData::new(&mat.by_user, 600, scale.values());
        // Sampled and mean-field negative units, and CD-3 (three negative passes a batch).
        for (negative, t) in [
            (NegativePhase::Sample, 1),
            (NegativePhase::MeanField, 1),
            (NegativePhase::Sample, 3),
        ] {
            let params = RatingRbmParams::new()
                .hidden(24)
                .epochs(2)
                .batch_size(50)
                .negative(negative)
                .cd(CdSchedule::constant(t))
                .check()
                .unwrap();
            let fit = |threads: usize| {
                crate::team::test_pool(threads).install(|| {
                    let mut errs = Vec::new();
                    let progress = &mut |r: &EpochReport| errs.push(r.recon_error);
                    (RatingRbm::fit(&params, &data, progress).unwrap().0, errs)
                })
            };
            let alone = fit(1);
            SLOW_CHUNK.store(N_CHUNKS - 1, Ordering::Relaxed);
            UNITS_HELPED.store(0, Ordering::Relaxed);
            let helped = fit(2);
            let n_helped = UNITS_HELPED.load(Ordering::Relaxed);
            SLOW_CHUNK.store(usize::MAX, Ordering::Relaxed);
            assert_eq!(alone.0, helped.0, "{negative:?}, CD-{t}");
            // The reconstruction errors too (summed in the same order).
            assert_eq!(alone.1, helped.1, "{negative:?}, CD-{t}");
            if training_threads_for(2) == 2 {
                assert!(n_helped > 0, "nobody took units from the slowed chunk");
            }
        }
    }

    #[test]
    fn rbm_beats_bias_baseline_on_planted_data() {
        let ratings = planted(300, 60, 4, 0.4, 2);
        let (train, test) = holdout(ratings, 0.1, 3).unwrap();
        let scale = RatingScale::infer(&train).unwrap();
        let mat = RatingMatrix::from_ratings(300, 60, train, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(30)
            .epochs(30)
            .learning_rate(0.1)
            .bias_learning_rate(0.1)
            .check()
            .unwrap();
        let data = TrainData::new(&mat.by_user, 60, scale.values());
        let (model, _) = RatingRbm::fit(&params, &data, &mut |_| {}).unwrap();
        let pairs: Vec<(u32, u32)> = test.iter().map(|r| (r.user, r.item)).collect();
        let dist = model.predict_pairs(&mat.by_user, None, &pairs, PredictMethod::MeanField);
        let pred: Vec<f32> = dist
            .chunks(5)
            .map(|p| RatingRbm::readout(p, scale.values(), RatingReadout::Expected))
            .collect();
        let truth: Vec<f32> = test.iter().map(|r| r.value).collect();
        let base = crate::cf_eval::BiasBaseline::fit_default(&mat, &scale);
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
        let mat = RatingMatrix::from_ratings(60, 20, ratings, &scale).unwrap();
        let params = RatingRbmParams::new()
            .hidden(7)
            .factors(Some(3))
            .epochs(2)
            .batch_size(10)
            .check()
            .unwrap();
        let data = TrainData::new(&mat.by_user, 20, scale.values());
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
        // Short runs: switches on the same epoch collapse to the last T, none lands on epoch 0.
        assert_eq!(CdSchedule::paper(1).0, vec![(0, 1)]);
        assert_eq!(CdSchedule::paper(2).0, vec![(0, 1), (1, 9)]);
        assert_eq!(CdSchedule::paper(3).0, vec![(0, 1), (1, 5), (2, 9)]);
        assert_eq!(
            CdSchedule::paper(30).0,
            vec![(0, 1), (12, 3), (18, 5), (24, 9)]
        );
        for epochs in 1..=80 {
            let cd = CdSchedule::paper(epochs);
            let params = RatingRbmParams::new().epochs(epochs).cd(cd.clone()).check();
            assert!(params.is_ok(), "paper({epochs}) = {cd:?} is rejected");
        }
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
