//! Exact partition function by enumerating the smaller layer, and exact free energies in f64.
//!
//! `log Z = logsumexp_s −F(s)` over the `2^K` states of the smaller layer (K ≤ ~30), with `F` the
//! free energy that sums the other layer out analytically. The `2^K` states are split into a low
//! part (the first [`LOW_BITS`] units: their contribution to the other layer's input is tabulated
//! once, an `N × 2^LOW_BITS` table) and a high part that is constant within a block, so each state
//! costs only `N` additions and softplus evaluations. Blocks run in parallel; partial sums are
//! merged in block order, so the result does not depend on the number of threads.

use super::kernels::{add_assign64, softplus_sum_shifted};
use crate::binary::BinaryRbm;
use crate::error::{RbmError, Result};
use crate::linalg::Matrix;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

/// Default limit on the size of the enumerated layer: 2^30 states.
pub const DEFAULT_EXACT_LIMIT: usize = 30;

/// Units enumerated inside one block (a block is 2^7 = 128 states; its table fits in L2 cache).
pub(crate) const LOW_BITS: usize = 7;

/// Blocks merged sequentially by one task: large enough to amortize scheduling, small enough
/// to balance two threads on 2^13 blocks.
const BLOCKS_PER_TASK: u64 = 64;

/// Running `log Σ e^x` merged in a fixed order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OnlineLse {
    max: f64,
    sum: f64,
}

impl OnlineLse {
    pub(crate) fn new() -> Self {
        OnlineLse {
            max: f64::NEG_INFINITY,
            sum: 0.0,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, x: f64) {
        if x > self.max {
            self.sum = self.sum * (self.max - x).exp() + 1.0;
            self.max = x;
        } else {
            self.sum += (x - self.max).exp();
        }
    }

    pub(crate) fn value(&self) -> f64 {
        if self.max == f64::NEG_INFINITY {
            f64::NEG_INFINITY
        } else {
            self.max + self.sum.ln()
        }
    }
}

/// The smaller layer of a model, set up for enumeration (everything in f64).
pub(crate) struct Enumeration {
    /// Number of enumerated units K.
    pub(crate) k: usize,
    /// Size of the summed-out layer N.
    pub(crate) n: usize,
    /// `K × N`: row `j` holds the weights from enumerated unit `j` to every unit of the other layer.
    wrows: Vec<f64>,
    own_bias: Vec<f64>,
    other_bias: Vec<f64>,
}

impl Enumeration {
    /// Chooses the smaller layer (hidden on a tie, the usual case for square toy models).
    pub(crate) fn new(rbm: &BinaryRbm) -> Self {
        let (d, m) = (rbm.visible(), rbm.hidden());
        let w = rbm.weights();
        let to64 = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        if m <= d {
            // Enumerate h: row j is column j of the row-major D × M W.
            let mut wrows = vec![0.0; m * d];
            for i in 0..d {
                for j in 0..m {
                    wrows[j * d + i] = f64::from(w[i * m + j]);
                }
            }
            Enumeration {
                k: m,
                n: d,
                wrows,
                own_bias: to64(rbm.hidden_bias()),
                other_bias: to64(rbm.visible_bias()),
            }
        } else {
            Enumeration {
                k: d,
                n: m,
                wrows: to64(w),
                own_bias: to64(rbm.visible_bias()),
                other_bias: to64(rbm.hidden_bias()),
            }
        }
    }

    fn row(&self, j: usize) -> &[f64] {
        &self.wrows[j * self.n..(j + 1) * self.n]
    }

    /// Number of low bits per block for this layer.
    pub(crate) fn low_bits(&self, low_bits: usize) -> usize {
        self.k.min(low_bits)
    }

    /// The table of the low units' input to the other layer (`N × 2^lo`) and their own bias terms.
    pub(crate) fn low_table(&self, lo: usize) -> (Vec<f64>, Vec<f64>) {
        let (n, states) = (self.n, 1usize << lo);
        let mut table = vec![0.0f64; n * states];
        let mut own = vec![0.0f64; states];
        for t in 1..states {
            // State t = state (t with its lowest set bit cleared) plus that unit.
            let j = t.trailing_zeros() as usize;
            let prev = t & (t - 1);
            let (done, rest) = table.split_at_mut(t * n);
            let src = &done[prev * n..(prev + 1) * n];
            for ((dst, &s), &w) in rest[..n].iter_mut().zip(src).zip(self.row(j)) {
                *dst = s + w;
            }
            own[t] = own[prev] + self.own_bias[j];
        }
        (table, own)
    }

    /// `log Σ e^{−F(s)}` over the states of block `u` (high bits = `u`), pushed into `acc`.
    pub(crate) fn push_block(
        &self,
        lo: usize,
        u: u64,
        table: &[f64],
        own_lo: &[f64],
        shift: &mut [f64],
        acc: &mut OnlineLse,
    ) {
        shift.copy_from_slice(&self.other_bias);
        let mut own_hi = 0.0;
        let mut bits = u;
        while bits != 0 {
            let j = lo + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            add_assign64(shift, self.row(j));
            own_hi += self.own_bias[j];
        }
        for (t, col) in table.chunks_exact(self.n).enumerate() {
            acc.push(own_lo[t] + own_hi + softplus_sum_shifted(col, shift));
        }
    }

    /// `log Z`, enumerating with blocks of `2^low_bits` states.
    pub(crate) fn log_z(&self, low_bits: usize) -> f64 {
        let lo = self.low_bits(low_bits);
        self.partial_log_z(lo, 1u64 << (self.k - lo))
    }

    /// `log Σ e^{−F(s)}` over the first `blocks` blocks of `2^lo` states (all of them when
    /// `blocks = 2^(K − lo)`); the timing exercise runs a prefix and extrapolates.
    pub(crate) fn partial_log_z(&self, lo: usize, blocks: u64) -> f64 {
        let (table, own_lo) = self.low_table(lo);
        let tasks = blocks.div_ceil(BLOCKS_PER_TASK);
        let parts: Vec<f64> = (0..tasks)
            .into_par_iter()
            .map(|task| {
                let mut shift = vec![0.0f64; self.n];
                let mut acc = OnlineLse::new();
                let end = ((task + 1) * BLOCKS_PER_TASK).min(blocks);
                for u in task * BLOCKS_PER_TASK..end {
                    self.push_block(lo, u, &table, &own_lo, &mut shift, &mut acc);
                }
                acc.value()
            })
            .collect();
        let mut total = OnlineLse::new();
        for p in parts {
            total.push(p);
        }
        total.value()
    }
}

/// Exact `log Z` of a binary RBM by enumerating its smaller layer; refuses (with
/// [`RbmError::TooLarge`]) when that layer has more than [`DEFAULT_EXACT_LIMIT`] units.
pub fn exact_log_z(rbm: &BinaryRbm) -> Result<f64> {
    exact_log_z_with_limit(rbm, DEFAULT_EXACT_LIMIT)
}

/// Exact `log Z` with a caller-chosen limit on the number of enumerated units.
///
/// The cost is `2^K · N` softplus evaluations (K the smaller layer, N the other): about a second
/// per 10^9 on two cores, so K = 20 with N = 784 takes well under a second and K = 30 minutes.
pub fn exact_log_z_with_limit(rbm: &BinaryRbm, max_units: usize) -> Result<f64> {
    check_enumerable(rbm, max_units)?;
    Ok(Enumeration::new(rbm).log_z(LOW_BITS))
}

/// The refusal message for models whose smaller layer is too large to enumerate.
pub(crate) fn check_enumerable(rbm: &BinaryRbm, max_units: usize) -> Result<()> {
    let (d, m) = (rbm.visible(), rbm.hidden());
    let k = d.min(m);
    if k > max_units.min(62) {
        let layer = if m <= d { "hidden" } else { "visible" };
        return Err(RbmError::TooLarge(format!(
            "exact log Z would enumerate the {k} {layer} units: 2^{k} ≈ {:.3e} states × {} \
             softplus each; the limit is {max_units} units — use AIS (`--log-z ais`)",
            2f64.powi(k as i32),
            d.max(m)
        )));
    }
    Ok(())
}

/// Free energies `F(v)` of the columns of `data`, computed in f64 (products and softplus), in
/// chunks so memory stays bounded. Used by every likelihood-type measure here so that exact and
/// AIS log-likelihoods share one definition of `F`.
pub fn free_energies(rbm: &BinaryRbm, data: &Matrix) -> Result<Vec<f64>> {
    let (d, m) = (rbm.visible(), rbm.hidden());
    if data.rows() != d {
        return Err(RbmError::Shape(format!(
            "examples have {} values each, the model has {d} visible units",
            data.rows()
        )));
    }
    // Wᵀ as an M × D column-major f64 matrix: the row-major D × M storage read the other way.
    let wt: Vec<f64> = rbm.weights().iter().map(|&x| f64::from(x)).collect();
    let wt = MatRef::from_column_major_slice(&wt, m, d);
    let b: Vec<f64> = rbm.visible_bias().iter().map(|&x| f64::from(x)).collect();
    let c: Vec<f64> = rbm.hidden_bias().iter().map(|&x| f64::from(x)).collect();
    let chunk = 1024;
    let mut out = Vec::with_capacity(data.cols());
    let mut v64 = Vec::new();
    let mut pre = Vec::new();
    for start in (0..data.cols()).step_by(chunk) {
        let end = (start + chunk).min(data.cols());
        let cols = end - start;
        v64.clear();
        v64.extend(
            data.as_slice()[start * d..end * d]
                .iter()
                .map(|&x| f64::from(x)),
        );
        pre.resize(m * cols, 0.0);
        faer::linalg::matmul::matmul(
            MatMut::from_column_major_slice_mut(&mut pre, m, cols),
            Accum::Replace,
            wt,
            MatRef::from_column_major_slice(&v64, d, cols),
            1.0,
            crate::linalg::current_par(),
        );
        let part: Vec<f64> = pre
            .par_chunks(m)
            .zip(v64.par_chunks(d))
            .map(|(p, v)| {
                let lin: f64 = v.iter().zip(&b).map(|(x, b)| x * b).sum();
                -lin - softplus_sum_shifted(p, &c)
            })
            .collect();
        out.extend(part);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::linalg::log_sum_exp;
    use crate::random::{Purpose, Stream};

    pub(crate) fn random_rbm(d: usize, m: usize, scale: f64, seed: u64) -> BinaryRbm {
        let mut s = Stream::new(seed, Purpose::Init, 7, 7, 7);
        let w = (0..d * m).map(|_| (s.normal() * scale) as f32).collect();
        let b = (0..d).map(|_| (s.normal() * 0.5) as f32).collect();
        let c = (0..m).map(|_| (s.normal() * 0.5) as f32).collect();
        BinaryRbm::from_parts(d, m, w, b, c).unwrap()
    }

    fn bits(x: usize, n: usize) -> Vec<f32> {
        (0..n).map(|i| ((x >> i) & 1) as f32).collect()
    }

    /// The definition: log Σ_v Σ_h e^{−E(v,h)} over all 2^{D+M} joint states.
    fn naive_log_z(rbm: &BinaryRbm) -> f64 {
        let (d, m) = (rbm.visible(), rbm.hidden());
        let mut terms = Vec::with_capacity(1 << (d + m));
        for x in 0..1usize << d {
            let v = bits(x, d);
            for y in 0..1usize << m {
                terms.push(-rbm.energy(&v, &bits(y, m)));
            }
        }
        log_sum_exp(&terms)
    }

    #[test]
    fn exact_log_z_matches_naive_joint_enumeration() {
        // Hidden smaller, visible smaller, square, a single unit, and layers wider than one block.
        for &(d, m, scale, seed) in &[
            (5, 3, 1.0, 1),
            (3, 6, 1.5, 2),
            (4, 4, 0.7, 3),
            (1, 5, 2.0, 4),
            (8, 9, 0.5, 5),
            (10, 8, 1.0, 6),
        ] {
            let rbm = random_rbm(d, m, scale, seed);
            let want = naive_log_z(&rbm);
            let got = exact_log_z(&rbm).unwrap();
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{d}×{m}: {got} vs naive {want}"
            );
        }
    }

    #[test]
    fn block_size_does_not_change_the_result() {
        // 2^12 states: blocks of 1, 8 and 128 states give the same sum (different merge orders).
        let rbm = random_rbm(30, 12, 0.3, 8);
        let e = Enumeration::new(&rbm);
        let a = e.log_z(0);
        let b = e.log_z(3);
        let c = e.log_z(LOW_BITS);
        assert!(
            (a - b).abs() < 1e-10 && (a - c).abs() < 1e-10,
            "{a} {b} {c}"
        );
    }

    #[test]
    fn both_layers_give_the_same_log_z() {
        // Transposing the model swaps which layer is enumerated; Z is the same.
        let rbm = random_rbm(11, 13, 0.8, 9);
        let (d, m) = (11, 13);
        let mut wt = vec![0.0f32; d * m];
        for i in 0..d {
            for j in 0..m {
                wt[j * d + i] = rbm.weight(i, j);
            }
        }
        let flipped = BinaryRbm::from_parts(
            m,
            d,
            wt,
            rbm.hidden_bias().to_vec(),
            rbm.visible_bias().to_vec(),
        )
        .unwrap();
        let a = exact_log_z(&rbm).unwrap(); // enumerates 11 visible units
        let b = exact_log_z(&flipped).unwrap(); // enumerates 11 hidden units
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let rbm = random_rbm(40, 16, 0.5, 10);
        let one = crate::team::test_pool(1).install(|| exact_log_z(&rbm).unwrap());
        let three = crate::team::test_pool(3).install(|| exact_log_z(&rbm).unwrap());
        assert_eq!(one.to_bits(), three.to_bits());
    }

    #[test]
    fn refuses_large_layers_with_the_state_count() {
        let rbm = BinaryRbm::zeros(40, 35);
        let err = exact_log_z(&rbm).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RbmError::TooLarge(_)), "{msg}");
        assert!(msg.contains("2^35") && msg.contains("limit is 30"), "{msg}");
        assert!(exact_log_z_with_limit(&BinaryRbm::zeros(40, 5), 4).is_err());
        // Zero model: Z = 2^{D+M}.
        let z = exact_log_z_with_limit(&BinaryRbm::zeros(40, 5), 5).unwrap();
        assert!((z - 45.0 * 2f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn free_energies_match_the_f32_model_code() {
        let rbm = random_rbm(20, 7, 1.0, 11);
        let data = Matrix::from_fn(20, 2100, |i, j| {
            f32::from(u8::from((i * 7 + j * 3) % 5 < 2))
        });
        let ours = free_energies(&rbm, &data).unwrap();
        let theirs = rbm.free_energy(&data);
        assert_eq!(ours.len(), 2100);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert!(free_energies(&rbm, &Matrix::zeros(3, 2)).is_err());
    }
}
