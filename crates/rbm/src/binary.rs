//! The binary (Bernoulli–Bernoulli) RBM: parameters, conditionals, sampling, energy, free energy,
//! features, reconstruction and Gibbs chains.
//!
//! Sets of examples are `D × N` [`Matrix`]es with one example per column (see [`crate::linalg`]).
//! `W` is stored row-major `D × M` (row `i` holds the weights of visible unit `i`), which is also
//! numpy's C order for an array of shape `[D, M]`, so model files need no transposition.

use crate::error::{RbmError, Result};
use crate::linalg::{self, Matrix, current_par, sigmoid};
use crate::random::{Purpose, Stream};
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

/// A binary RBM with `visible` units `v`, `hidden` units `h`, weights `W` (D×M), visible bias `b`
/// and hidden bias `c`; energy `E(v,h) = −vᵀWh − bᵀv − cᵀh`.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryRbm {
    visible: usize,
    hidden: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

/// Where a generating Gibbs chain starts.
#[derive(Clone, Copy, Debug)]
pub enum ChainStart<'a> {
    /// Each visible unit on with probability ½.
    Random,
    /// Visible units drawn from σ(b), the model's bias-only marginals.
    Biases,
    /// These examples (one per column), used as they are.
    Data(&'a Matrix),
}

impl BinaryRbm {
    /// A model with all parameters zero.
    pub fn zeros(visible: usize, hidden: usize) -> Self {
        BinaryRbm {
            visible,
            hidden,
            w: vec![0.0; visible * hidden],
            b: vec![0.0; visible],
            c: vec![0.0; hidden],
        }
    }

    /// A model from its parameters; `w` is row-major `visible × hidden`.
    pub fn from_parts(
        visible: usize,
        hidden: usize,
        w: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
    ) -> Result<Self> {
        if visible == 0 || hidden == 0 {
            return Err(RbmError::Shape(format!(
                "a model needs at least one visible and one hidden unit (got {visible} × {hidden})"
            )));
        }
        if w.len() != visible * hidden || b.len() != visible || c.len() != hidden {
            return Err(RbmError::Shape(format!(
                "W has {} values, b {}, c {}; a {visible} × {hidden} model needs {}, {visible}, {hidden}",
                w.len(),
                b.len(),
                c.len(),
                visible * hidden
            )));
        }
        if w.iter().chain(&b).chain(&c).any(|x| !x.is_finite()) {
            return Err(RbmError::Shape("parameters contain NaN or infinity".into()));
        }
        Ok(BinaryRbm {
            visible,
            hidden,
            w,
            b,
            c,
        })
    }

    /// Initialization from Hinton's practical guide: `W ~ N(0, std²)`, `c = 0`, and
    /// `b_i = log(p_i / (1 − p_i))` from the data's mean activations (clamped away from 0 and 1),
    /// or `b = 0` without data.
    pub fn init(visible: usize, hidden: usize, std: f32, data: Option<&Matrix>, seed: u64) -> Self {
        let mut m = BinaryRbm::zeros(visible, hidden);
        m.w.par_chunks_mut(hidden).enumerate().for_each(|(i, row)| {
            let mut s = Stream::new(seed, Purpose::Init, 0, 0, i as u64);
            for x in row {
                *x = (s.normal() * f64::from(std)) as f32;
            }
        });
        if let Some(data) = data {
            let means = column_means(data);
            for (b, p) in m.b.iter_mut().zip(means) {
                let p = p.clamp(1e-3, 1.0 - 1e-3);
                *b = (p / (1.0 - p)).ln() as f32;
            }
        }
        m
    }

    /// Number of visible units D.
    pub fn visible(&self) -> usize {
        self.visible
    }

    /// Number of hidden units M.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The weights, row-major `D × M`.
    pub fn weights(&self) -> &[f32] {
        &self.w
    }

    /// The weights, mutable.
    pub fn weights_mut(&mut self) -> &mut [f32] {
        &mut self.w
    }

    /// `W_ij`.
    pub fn weight(&self, i: usize, j: usize) -> f32 {
        self.w[i * self.hidden + j]
    }

    /// Visible bias b.
    pub fn visible_bias(&self) -> &[f32] {
        &self.b
    }

    /// Visible bias, mutable.
    pub fn visible_bias_mut(&mut self) -> &mut [f32] {
        &mut self.b
    }

    /// Hidden bias c.
    pub fn hidden_bias(&self) -> &[f32] {
        &self.c
    }

    /// Hidden bias, mutable.
    pub fn hidden_bias_mut(&mut self) -> &mut [f32] {
        &mut self.c
    }

    /// All three parameter arrays, mutable at once (for optimizers).
    pub fn params_mut(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        (&mut self.w, &mut self.b, &mut self.c)
    }

    /// `Wᵀ` as an `M × D` column-major view (the row-major `D × M` storage read the other way).
    pub fn wt_view(&self) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(&self.w, self.hidden, self.visible)
    }

    /// `Wᵀ` as a mutable `M × D` view.
    pub fn wt_view_mut(&mut self) -> MatMut<'_, f32> {
        MatMut::from_column_major_slice_mut(&mut self.w, self.hidden, self.visible)
    }

    fn check_visible(&self, v: &Matrix) {
        assert_eq!(
            v.rows(),
            self.visible,
            "examples have {} rows, the model has {} visible units",
            v.rows(),
            self.visible
        );
    }

    fn check_hidden(&self, h: &Matrix) {
        assert_eq!(
            h.rows(),
            self.hidden,
            "hidden states have {} rows, the model has {} hidden units",
            h.rows(),
            self.hidden
        );
    }

    /// Hidden pre-activations `c + Wᵀv` into `out` (`M × N`), reusing its allocation.
    pub fn hidden_input_into(&self, v: &Matrix, out: &mut Matrix) {
        self.check_visible(v);
        affine_into(out, self.wt_view(), v, &self.c, false);
    }

    /// Visible pre-activations `b + Wh` into `out` (`D × N`), reusing its allocation.
    pub fn visible_input_into(&self, h: &Matrix, out: &mut Matrix) {
        self.check_hidden(h);
        affine_into(out, self.wt_view().transpose(), h, &self.b, false);
    }

    /// `p(h = 1 | v)` into `out`: σ(c + Wᵀv).
    pub fn hidden_probs_into(&self, v: &Matrix, out: &mut Matrix) {
        self.check_visible(v);
        affine_into(out, self.wt_view(), v, &self.c, true);
    }

    /// `p(v = 1 | h)` into `out`: σ(b + Wh).
    pub fn visible_probs_into(&self, h: &Matrix, out: &mut Matrix) {
        self.check_hidden(h);
        affine_into(out, self.wt_view().transpose(), h, &self.b, true);
    }

    /// `p(h = 1 | v)` for each example (column) of `v`: the `M × N` hidden probabilities.
    pub fn hidden_probs(&self, v: &Matrix) -> Matrix {
        let mut out = Matrix::default();
        self.hidden_probs_into(v, &mut out);
        out
    }

    /// `p(v = 1 | h)` for each column of `h`: the `D × N` visible probabilities.
    pub fn visible_probs(&self, h: &Matrix) -> Matrix {
        let mut out = Matrix::default();
        self.visible_probs_into(h, &mut out);
        out
    }

    /// Features for downstream models: the hidden probabilities `p(h = 1 | v)` (as scikit-learn's
    /// `transform`).
    pub fn transform(&self, v: &Matrix) -> Matrix {
        self.hidden_probs(v)
    }

    /// Mean-field reconstruction `p(v | p(h | v))`, the quantity reconstruction error is measured on.
    pub fn reconstruct(&self, v: &Matrix) -> Matrix {
        self.visible_probs(&self.hidden_probs(v))
    }

    /// Mean squared error between `v` and its mean-field reconstruction.
    pub fn reconstruction_mse(&self, v: &Matrix) -> f64 {
        // Chunked so memory stays bounded on large data sets.
        let chunk = 1000;
        let mut total = 0.0;
        for start in (0..v.cols()).step_by(chunk) {
            let part = v.cols_range(start, (start + chunk).min(v.cols()));
            total += self.reconstruct(&part).mse(&part) * part.as_slice().len() as f64;
        }
        total / v.as_slice().len().max(1) as f64
    }

    /// Energy `E(v, h) = −vᵀWh − bᵀv − cᵀh` of one configuration.
    pub fn energy(&self, v: &[f32], h: &[f32]) -> f64 {
        assert_eq!(v.len(), self.visible);
        assert_eq!(h.len(), self.hidden);
        let mut e = 0.0f64;
        for (i, &vi) in v.iter().enumerate() {
            if vi == 0.0 {
                continue;
            }
            let row = &self.w[i * self.hidden..(i + 1) * self.hidden];
            let wh: f64 = row
                .iter()
                .zip(h)
                .map(|(&w, &hj)| f64::from(w) * f64::from(hj))
                .sum();
            e -= f64::from(vi) * (wh + f64::from(self.b[i]));
        }
        e - self
            .c
            .iter()
            .zip(h)
            .map(|(&c, &hj)| f64::from(c) * f64::from(hj))
            .sum::<f64>()
    }

    /// Free energy `F(v) = −bᵀv − Σ_j softplus(c_j + (vᵀW)_j)` of each column of `v`, so that
    /// `p(v) = e^{−F(v)} / Z`.
    pub fn free_energy(&self, v: &Matrix) -> Vec<f64> {
        let mut pre = Matrix::default();
        self.hidden_input_into(v, &mut pre);
        dual_free_energy(v, &pre, &self.b)
    }

    /// The dual free energy `F_h(h) = −cᵀh − Σ_i softplus(b_i + (Wh)_i)`, summing out `v`.
    pub fn free_energy_hidden(&self, h: &Matrix) -> Vec<f64> {
        let mut pre = Matrix::default();
        self.visible_input_into(h, &mut pre);
        dual_free_energy(h, &pre, &self.c)
    }

    /// Samples `h ~ p(h | v)` for each column, drawing from the stream `(seed, Sample, step, 0, column)`.
    pub fn sample_hidden(&self, v: &Matrix, seed: u64, step: u64) -> Matrix {
        let mut h = self.hidden_probs(v);
        sample_columns(&mut h, seed, Purpose::Sample, step, 0);
        h
    }

    /// Samples `v ~ p(v | h)` for each column, drawing from the stream `(seed, Sample, step, 1, column)`.
    pub fn sample_visible(&self, h: &Matrix, seed: u64, step: u64) -> Matrix {
        let mut v = self.visible_probs(h);
        sample_columns(&mut v, seed, Purpose::Sample, step, 1);
        v
    }

    /// Runs `k` full Gibbs steps (v → h → v) from `v0`, returning the sampled visible states.
    pub fn gibbs(&self, v0: &Matrix, k: usize, seed: u64) -> Matrix {
        let mut v = v0.clone();
        for step in 0..k as u64 {
            let h = self.sample_hidden(&v, seed, step);
            v = self.sample_visible(&h, seed, step);
        }
        v
    }

    /// Generates `n` samples by running `k` Gibbs steps from `start`; returns the final visible
    /// probabilities `p(v | h_k)` (smoother to look at than binary samples) and the binary states.
    pub fn generate(
        &self,
        n: usize,
        k: usize,
        start: ChainStart<'_>,
        seed: u64,
    ) -> Result<(Matrix, Matrix)> {
        let v0 = match start {
            ChainStart::Data(d) => {
                if d.rows() != self.visible {
                    return Err(RbmError::Shape(format!(
                        "start examples have {} values each, the model has {} visible units",
                        d.rows(),
                        self.visible
                    )));
                }
                if d.cols() == 0 && n > 0 {
                    return Err(RbmError::Shape(
                        "no start examples to begin the chains from".into(),
                    ));
                }
                d.select_cols(&(0..n).map(|i| i % d.cols()).collect::<Vec<_>>())
            }
            ChainStart::Random | ChainStart::Biases => {
                let mut v = Matrix::zeros(self.visible, n);
                let bias_probs: Vec<f32> = self.b.iter().map(|&b| sigmoid(b)).collect();
                for j in 0..n {
                    let col = v.col_mut(j);
                    match start {
                        ChainStart::Random => col.fill(0.5),
                        _ => col.copy_from_slice(&bias_probs),
                    }
                }
                sample_columns(&mut v, seed, Purpose::Sample, u64::MAX, 0);
                v
            }
        };
        if k == 0 {
            return Ok((v0.clone(), v0));
        }
        let v = self.gibbs(&v0, k - 1, seed);
        let h = self.sample_hidden(&v, seed, k as u64 - 1);
        let probs = self.visible_probs(&h);
        let mut states = probs.clone();
        sample_columns(&mut states, seed, Purpose::Sample, k as u64 - 1, 1);
        Ok((probs, states))
    }
}

/// `out = a·x + bias` column by column, passed through σ when `sigmoid` (one pass over `out`).
fn affine_into(out: &mut Matrix, a: MatRef<'_, f32>, x: &Matrix, bias: &[f32], sigmoid: bool) {
    out.resize(a.nrows(), x.cols());
    linalg::gemm(
        out.view_mut(),
        Accum::Replace,
        a,
        x.view(),
        1.0,
        current_par(),
    );
    if bias.is_empty() {
        return;
    }
    out.as_mut_slice()
        .par_chunks_mut(bias.len())
        .for_each(|col| {
            if sigmoid {
                linalg::sigmoid_bias_in_place(col, bias);
            } else {
                col.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
            }
        });
}

/// `−biasᵀx − Σ softplus(pre)` per column: the free energy given the other layer's pre-activations.
fn dual_free_energy(x: &Matrix, pre: &Matrix, bias: &[f32]) -> Vec<f64> {
    (0..x.cols())
        .into_par_iter()
        .map(|j| {
            let lin: f64 = x
                .col(j)
                .iter()
                .zip(bias)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            // Vectorized (the libm exp/log1p pair was a fifth of a training run's monitoring).
            let sp = crate::eval::kernels::softplus_sum32(pre.col(j));
            -lin - sp
        })
        .collect()
}

/// Replaces probabilities with Bernoulli samples, column `j` drawing from the stream
/// `(seed, purpose, epoch, batch, j)`; parallel over columns, identical for any thread count.
pub fn sample_columns(m: &mut Matrix, seed: u64, purpose: Purpose, epoch: u64, batch: u64) {
    let rows = m.rows();
    if rows == 0 {
        return;
    }
    m.as_mut_slice()
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(j, col)| {
            Stream::new(seed, purpose, epoch, batch, j as u64).bernoulli_in_place(col);
        });
}

/// Mean of each row over the columns (the per-unit mean activation of a data set).
pub fn column_means(data: &Matrix) -> Vec<f64> {
    let mut sums = vec![0.0f64; data.rows()];
    for col in data.cols_iter() {
        for (s, &x) in sums.iter_mut().zip(col) {
            *s += f64::from(x);
        }
    }
    let n = data.cols().max(1) as f64;
    sums.iter_mut().for_each(|s| *s /= n);
    sums
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index loops mirror the formulas being checked
mod tests {
    use super::*;

    /// A small model with varied parameters.
    pub(crate) fn tiny(d: usize, m: usize, seed: u64) -> BinaryRbm {
        let mut s = Stream::new(seed, Purpose::Init, 9, 9, 9);
        let mut r = |scale: f64| (s.normal() * scale) as f32;
        let w = (0..d * m).map(|_| r(1.0)).collect();
        let b = (0..d).map(|_| r(0.5)).collect();
        let c = (0..m).map(|_| r(0.5)).collect();
        BinaryRbm::from_parts(d, m, w, b, c).unwrap()
    }

    fn bits(x: usize, n: usize) -> Vec<f32> {
        (0..n).map(|i| ((x >> i) & 1) as f32).collect()
    }

    #[test]
    fn conditionals_match_brute_force_enumeration() {
        let (d, m) = (4, 3);
        let rbm = tiny(d, m, 1);
        // p(h_j = 1 | v) = Σ_h h_j e^{−E(v,h)} / Σ_h e^{−E(v,h)}.
        for x in 0..1 << d {
            let v = bits(x, d);
            let mut num = vec![0.0f64; m];
            let mut den = 0.0;
            for y in 0..1 << m {
                let h = bits(y, m);
                let p = (-rbm.energy(&v, &h)).exp();
                den += p;
                for j in 0..m {
                    num[j] += p * f64::from(h[j]);
                }
            }
            let ph = rbm.hidden_probs(&Matrix::from_vec(d, 1, v.clone()).unwrap());
            for j in 0..m {
                assert!((f64::from(ph.get(j, 0)) - num[j] / den).abs() < 1e-5);
            }
        }
        for y in 0..1 << m {
            let h = bits(y, m);
            let mut num = vec![0.0f64; d];
            let mut den = 0.0;
            for x in 0..1 << d {
                let v = bits(x, d);
                let p = (-rbm.energy(&v, &h)).exp();
                den += p;
                for i in 0..d {
                    num[i] += p * f64::from(v[i]);
                }
            }
            let pv = rbm.visible_probs(&Matrix::from_vec(m, 1, h).unwrap());
            for i in 0..d {
                assert!((f64::from(pv.get(i, 0)) - num[i] / den).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn free_energies_match_brute_force_enumeration() {
        let (d, m) = (5, 4);
        let rbm = tiny(d, m, 2);
        let all_v = Matrix::from_fn(d, 1 << d, |i, x| ((x >> i) & 1) as f32);
        let all_h = Matrix::from_fn(m, 1 << m, |j, y| ((y >> j) & 1) as f32);
        let fv = rbm.free_energy(&all_v);
        let fh = rbm.free_energy_hidden(&all_h);
        for x in 0..1 << d {
            let brute = -linalg::log_sum_exp(
                &(0..1 << m)
                    .map(|y| -rbm.energy(all_v.col(x), all_h.col(y)))
                    .collect::<Vec<_>>(),
            );
            assert!((fv[x] - brute).abs() < 1e-4, "F(v) {} vs {}", fv[x], brute);
        }
        for y in 0..1 << m {
            let brute = -linalg::log_sum_exp(
                &(0..1 << d)
                    .map(|x| -rbm.energy(all_v.col(x), all_h.col(y)))
                    .collect::<Vec<_>>(),
            );
            assert!((fh[y] - brute).abs() < 1e-4);
        }
        // Both duals give the same partition function.
        let z_v = linalg::log_sum_exp(&fv.iter().map(|f| -f).collect::<Vec<_>>());
        let z_h = linalg::log_sum_exp(&fh.iter().map(|f| -f).collect::<Vec<_>>());
        assert!((z_v - z_h).abs() < 1e-4);
    }

    #[test]
    fn energy_matches_hand_computation() {
        let rbm = BinaryRbm::from_parts(
            2,
            2,
            vec![1.0, -2.0, 0.5, 3.0],
            vec![0.1, -0.2],
            vec![0.3, 0.4],
        )
        .unwrap();
        // v = (1,1), h = (1,0): −(W00 + W10) − (b0 + b1) − c0 = −1.5 + 0.1 − 0.3.
        let e = rbm.energy(&[1.0, 1.0], &[1.0, 0.0]);
        assert!((e - (-1.5 + 0.1 - 0.3)).abs() < 1e-6);
    }

    #[test]
    fn generate_from_data_cycles_the_examples_and_rejects_none() {
        let rbm = tiny(4, 3, 3);
        let start = Matrix::from_fn(4, 2, |i, j| ((i + j) % 2) as f32);
        // Zero Gibbs steps return the start states: examples 0, 1, 0.
        let (_, v) = rbm.generate(3, 0, ChainStart::Data(&start), 1).unwrap();
        let cols: Vec<Vec<f32>> = v.cols_iter().map(|c| c.to_vec()).collect();
        assert_eq!(
            cols,
            [start.col(0), start.col(1), start.col(0)].map(|c| c.to_vec())
        );
        let empty = Matrix::zeros(4, 0);
        assert!(matches!(
            rbm.generate(3, 5, ChainStart::Data(&empty), 1),
            Err(RbmError::Shape(_))
        ));
    }

    #[test]
    fn gibbs_chain_matches_exact_marginal_chi_squared() {
        // 4 visible × 3 hidden: run many independent chains for a burn-in, then count the 16 states.
        let (d, m) = (4, 3);
        let rbm = tiny(d, m, 3);
        let all_v = Matrix::from_fn(d, 1 << d, |i, x| ((x >> i) & 1) as f32);
        let neg_f: Vec<f64> = rbm.free_energy(&all_v).iter().map(|f| -f).collect();
        let log_z = linalg::log_sum_exp(&neg_f);
        let exact: Vec<f64> = neg_f.iter().map(|x| (x - log_z).exp()).collect();
        let chains = 20_000;
        let (_, states) = rbm.generate(chains, 50, ChainStart::Random, 11).unwrap();
        let mut counts = vec![0.0f64; 1 << d];
        for col in states.cols_iter() {
            let x: usize = col
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as usize) << i)
                .sum();
            counts[x] += 1.0;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&exact)
            .map(|(&o, &p)| {
                let e = p * chains as f64;
                (o - e).powi(2) / e
            })
            .sum();
        // 15 degrees of freedom: the 0.999 quantile of χ²(15) is 37.7.
        assert!(
            chi2 < 37.7,
            "chi² = {chi2}, counts {counts:?}, exact {exact:?}"
        );
    }

    #[test]
    fn init_follows_hintons_guide() {
        let data = Matrix::from_fn(3, 4, |i, j| {
            if i == 0 || (i == 1 && j == 0) {
                1.0
            } else {
                0.0
            }
        });
        let rbm = BinaryRbm::init(3, 2000, 0.01, Some(&data), 0);
        let w = rbm.weights();
        let mean = w.iter().map(|&x| f64::from(x)).sum::<f64>() / w.len() as f64;
        let sd = (w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!(mean.abs() < 5e-4 && (sd - 0.01).abs() < 5e-4, "{mean} {sd}");
        assert!(rbm.hidden_bias().iter().all(|&c| c == 0.0));
        let b = rbm.visible_bias();
        assert!((b[1] - (0.25f32 / 0.75).ln()).abs() < 1e-6);
        assert!((b[0] - (0.999f32 / 0.001).ln()).abs() < 1e-3 && b[2] < -6.0);
    }

    #[test]
    fn from_parts_rejects_bad_shapes() {
        assert!(BinaryRbm::from_parts(2, 2, vec![0.0; 3], vec![0.0; 2], vec![0.0; 2]).is_err());
        assert!(
            BinaryRbm::from_parts(2, 2, vec![f32::NAN; 4], vec![0.0; 2], vec![0.0; 2]).is_err()
        );
    }
}
