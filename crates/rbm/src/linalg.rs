//! The linear-algebra wrapper: a plain column-major [`Matrix`], the faer matrix products the models
//! need (with the parallelism passed explicitly), and numerically stable scalar functions.
//!
//! Convention used throughout the crate: a set of examples is a `D × N` matrix with one example
//! per column, so each example is contiguous in memory. That is the layout of the data files
//! (row-major `N × D`, as numpy writes it), and it lets per-example work run without strides.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A dense column-major `f32` matrix that owns its storage (no padding between columns).
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

/// The empty `0 × 0` matrix, a placeholder for buffers sized on first use.
impl Default for Matrix {
    fn default() -> Self {
        Matrix::zeros(0, 0)
    }
}

/// `n` zeros in memory the system has already mapped, for buffers the training epochs read
/// and write from their first step (optimizer state). `vec![0.0; n]` gets fresh pages that the
/// system maps only when they are first touched: ML-100K's 3.4 MB of velocity, first read and
/// written by both team members in the first momentum step, made that epoch's step 9–12 ms
/// longer (16–21 ms instead of 5–7 for the epoch); written here, on one thread, it took 1.8 ms.
pub(crate) fn zeros_now(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    // A write every 4 KiB and one at the end (the buffer need not start on a page), volatile:
    // the compiler may drop a plain store of zero into memory it knows was allocated zeroed.
    for i in (0..n).step_by(1024).chain(n.checked_sub(1)) {
        // SAFETY: i < n = v.len().
        unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0.0) };
    }
    v
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps column-major data; `None` if the length is not `rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Option<Self> {
        (data.len() == rows * cols).then_some(Matrix { rows, cols, data })
    }

    /// Builds a matrix from a function of (row, column).
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for j in 0..cols {
            for i in 0..rows {
                data.push(f(i, j));
            }
        }
        Matrix { rows, cols, data }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The column-major storage.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The column-major storage, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the matrix, returning its column-major storage.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Element `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.data[j * self.rows + i]
    }

    /// Sets element `(i, j)`.
    pub fn set(&mut self, i: usize, j: usize, x: f32) {
        self.data[j * self.rows + i] = x;
    }

    /// Column `j` (one example, in the crate's convention).
    pub fn col(&self, j: usize) -> &[f32] {
        &self.data[j * self.rows..(j + 1) * self.rows]
    }

    /// Column `j`, mutable.
    pub fn col_mut(&mut self, j: usize) -> &mut [f32] {
        &mut self.data[j * self.rows..(j + 1) * self.rows]
    }

    /// Iterates over the columns.
    pub fn cols_iter(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.data.chunks_exact(self.rows.max(1)).take(self.cols)
    }

    /// Columns `start..end` as a new matrix.
    pub fn cols_range(&self, start: usize, end: usize) -> Matrix {
        Matrix {
            rows: self.rows,
            cols: end - start,
            data: self.data[start * self.rows..end * self.rows].to_vec(),
        }
    }

    /// Gathers the given columns, in order, into a new matrix.
    pub fn select_cols(&self, idx: &[usize]) -> Matrix {
        let mut out = Matrix::zeros(self.rows, idx.len());
        for (k, &j) in idx.iter().enumerate() {
            out.col_mut(k).copy_from_slice(self.col(j));
        }
        out
    }

    /// Resizes to `rows × cols`, reusing the allocation; contents become unspecified.
    pub fn resize(&mut self, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.data.resize(rows * cols, 0.0);
    }

    /// A faer view.
    pub fn view(&self) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(&self.data, self.rows, self.cols)
    }

    /// A mutable faer view.
    pub fn view_mut(&mut self) -> MatMut<'_, f32> {
        MatMut::from_column_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    /// Mean of squared differences with another matrix of the same shape.
    pub fn mse(&self, other: &Matrix) -> f64 {
        assert_eq!(self.data.len(), other.data.len());
        let s: f64 = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| {
                let d = f64::from(a - b);
                d * d
            })
            .sum();
        s / self.data.len().max(1) as f64
    }
}

/// The faer parallelism for `threads` worker threads (1 means sequential).
pub fn par(threads: usize) -> Par {
    if threads <= 1 {
        Par::Seq
    } else {
        Par::rayon(threads)
    }
}

/// The faer parallelism matching the current rayon pool, so the caller's pool decides.
pub fn current_par() -> Par {
    par(rayon::current_num_threads())
}

/// `dst = alpha · a · b` (`beta = Replace`) or `dst += alpha · a · b` (`beta = Add`).
///
/// With several threads, the RBM's short-and-wide products (few columns: a mini-batch) are split
/// by rows of `a` into one sequential product per thread: measured 1.39× faster on 2 threads
/// than faer's own partitioning for 500 × 784 × 100 (faer: 1.15×). Large square products use
/// faer's parallel kernel.
pub fn gemm(
    dst: MatMut<'_, f32>,
    beta: Accum,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
) {
    match par {
        Par::Rayon(t) if b.ncols() <= 1024 && a.nrows() >= 64 * t.get() => {
            gemm_rows_split(dst, beta, a, b, alpha, t.get())
        }
        _ => faer::linalg::matmul::matmul(dst, beta, a, b, alpha, par),
    }
}

/// Splits the rows of `a` (and `dst`) into `parts` blocks multiplied sequentially on their own
/// rayon tasks. Each output element is still one sequential dot product.
fn gemm_rows_split(
    dst: MatMut<'_, f32>,
    beta: Accum,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    parts: usize,
) {
    let none = MatMut::from_column_major_slice_mut(&mut [], a.nrows(), 0);
    split_rows(dst, none, a, parts, 1)
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(|(_, d, _, a)| faer::linalg::matmul::matmul(d, beta, a, b, alpha, Par::Seq));
}

/// `dst = a · b`, split by rows of `a` into one sequential product per member of `team`, each
/// followed at once by `then(first_row, dst_rows, side_rows)` on its own rows while they are
/// still in cache (`side` is a second matrix with the same rows, e.g. for samples; it may have
/// no columns). This saves the separate parallel pass, and its synchronization, that an
/// elementwise step after the product would cost. Split points fall on multiples of `align`
/// rows, so an epilogue that keys its work by `align`-row blocks does exactly the same work
/// for any thread count.
pub fn gemm_rows_then<F>(
    dst: MatMut<'_, f32>,
    side: MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    align: usize,
    team: &crate::team::Team<'_>,
    then: &F,
) where
    F: Fn(usize, MatMut<'_, f32>, MatMut<'_, f32>) + Sync,
{
    team.for_each(
        split_rows(dst, side, a, team.threads(), align.max(1)),
        |(r0, mut d, s, a)| {
            faer::linalg::matmul::matmul(d.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
            then(r0, d, s);
        },
    );
}

/// `dst = a · b` split by rows over `team`, with nothing after (see [`gemm_rows_then`]): for
/// products inside a training epoch, where the team already holds the cores.
pub fn gemm_team(
    dst: MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    team: &crate::team::Team<'_>,
) {
    let none = MatMut::from_column_major_slice_mut(&mut [], a.nrows(), 0);
    gemm_rows_then(dst, none, a, b, 1, team, &|_, _, _| {});
}

/// One part of a product split by rows: (first row, rows of dst, rows of side, rows of a).
type RowPart<'a> = (usize, MatMut<'a, f32>, MatMut<'a, f32>, MatRef<'a, f32>);

/// `dst`, `side` and `a` cut into `parts` runs of whole `align`-row blocks, as even as the
/// blocks allow (fewer parts when there are fewer blocks). Each output row is still one
/// sequential dot product per column, so the split never changes the results.
fn split_rows<'a>(
    dst: MatMut<'a, f32>,
    side: MatMut<'a, f32>,
    a: MatRef<'a, f32>,
    parts: usize,
    align: usize,
) -> impl Iterator<Item = RowPart<'a>> {
    let rows = a.nrows();
    let blocks = rows.div_ceil(align);
    let parts = parts.clamp(1, blocks.max(1));
    let mut rest = Some((dst, side, a, 0));
    (1..=parts).map_while(move |p| {
        let (dst, side, a, r0) = rest.take()?;
        let r1 = (blocks * p / parts * align).min(rows);
        let (d0, d1) = dst.split_at_row_mut(r1 - r0);
        let (s0, s1) = side.split_at_row_mut(r1 - r0);
        let (a0, a1) = a.split_at_row(r1 - r0);
        rest = Some((d1, s1, a1, r1));
        Some((r0, d0, s0, a0))
    })
}

/// Whether every element is finite (no NaN, no ±∞). Checked a block at a time without an
/// early exit inside the block, so it vectorizes: the element-by-element `all` it replaces
/// was a few per cent of a MovieLens-100K training run.
pub fn all_finite(x: &[f32]) -> bool {
    x.chunks(1024)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// The logistic function, written so neither branch overflows: the input is clamped to ±80,
/// where σ is within f32 rounding of 0 or 1 and `e^80` is still a normal float.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x.clamp(-80.0, 80.0)))
}

/// `e^x` for f32 with about 2 ulp of error, written without branches or calls so loops using
/// it vectorize (the libm call was 40 % of a training run). Inputs are clamped to
/// [−87, 88], the range where the result is a normal float.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting rounds to nearest.
    let x = x.clamp(-87.0, 88.0);
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    let f = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial for e^f on [−ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4f32;
    p = p * f + 1.398_199_9e-3;
    p = p * f + 8.333_452e-3;
    p = p * f + 4.166_579_6e-2;
    p = p * f + 0.166_666_65;
    p = p * f + 0.5;
    let y = p * f * f + f + 1.0;
    // `k`'s low mantissa bits hold the integer n (k = 1.5·2^23 + n exactly), so the scale 2^n is
    // built with integer operations only: an `n as i32` conversion is saturating in Rust and
    // compiled to a scalar loop, which made the whole sigmoid 6× slower.
    let n_bits = k.to_bits().wrapping_sub(0x4B40_0000);
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Asks the CPU to bring the `len` bytes at `p` into its caches, one request per 64-byte line:
/// a hint only (results never depend on it; nothing happens off x86-64).
#[inline(always)]
pub(crate) fn prefetch_bytes(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..len).step_by(64) {
        // SAFETY: a prefetch never faults, and `wrapping_add` only computes an address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(off).cast(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Stores lanes `0..n` of `v` at `p` (all 16 when `n ≥ 16`) with plain 256-, 128-, 64- and
/// 32-bit stores: AVX-512 masked stores (`vmovups m512{k}`) are slow on AMD Zen 4. A 4-lane
/// masked tail store per 100-float row made a momentum step over rows twice as slow (104
/// against 51–56 ns per 5-row unit) as the same step with a 128-bit tail store; masked loads
/// cost nothing extra.
///
/// # Safety
/// AVX-512F and VL must be available and `p` valid for writes of `min(n, 16)` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
pub(crate) unsafe fn store_lanes(p: *mut f32, v: std::arch::x86_64::__m512, n: usize) {
    use std::arch::x86_64::*;
    if n >= 16 {
        // SAFETY: 16 floats at p (caller).
        return unsafe { _mm512_storeu_ps(p, v) };
    }
    let (mut p, mut n) = (p, n);
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let mut x = lo;
    // SAFETY (every store): the lanes stored are the next of the first n, within p's n floats.
    if n >= 8 {
        unsafe { _mm256_storeu_ps(p, lo) };
        (p, n, x) = (unsafe { p.add(8) }, n - 8, hi);
    }
    let mut y = _mm256_castps256_ps128(x);
    if n >= 4 {
        unsafe { _mm_storeu_ps(p, y) };
        (p, n, y) = (unsafe { p.add(4) }, n - 4, _mm256_extractf128_ps::<1>(x));
    }
    if n >= 2 {
        unsafe { _mm_storel_epi64(p.cast(), _mm_castps_si128(y)) };
        (p, n, y) = (unsafe { p.add(2) }, n - 2, _mm_movehl_ps(y, y));
    }
    if n == 1 {
        unsafe { _mm_store_ss(p, y) };
    }
}

/// Instruction sets the vectorized kernels dispatch on at run time, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Portable code (what the compiler emits for the baseline target).
    Scalar,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F and AVX-512VL (with AVX2 and FMA).
    Avx512,
}

impl Simd {
    /// The level's name as `RBM_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// The widest [`Simd`] level the kernels may use: what the CPU has, capped by the environment
/// variable `RBM_SIMD` (`avx512`, `avx2` or `scalar`), so the narrower code paths can be run and
/// compared on any machine. Read once per process.
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("RBM_SIMD").as_deref() {
            Ok("scalar") => Simd::Scalar,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        cpu_simd().min(cap)
    })
}

fn cpu_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        // AVX-512VL too (every AVX-512 CPU but the Xeon Phi has it): without it, 256-bit
        // operations can only name registers 0..15, and vectors that meet one are confined
        // there, so the rating kernels' multiply-add chains spilled to the stack.
        if avx2
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Simd::Avx512;
        }
        if avx2 {
            return Simd::Avx2;
        }
    }
    Simd::Scalar
}

/// `x[i] ← σ(x[i] + bias[i])` over one example, compiled for the widest SIMD the CPU has
/// (chosen at run time by [`simd`], so the binary stays portable).
pub fn sigmoid_bias_in_place(x: &mut [f32], bias: &[f32]) {
    #[inline(always)]
    fn body(x: &mut [f32], bias: &[f32]) {
        for (v, &b) in x.iter_mut().zip(bias) {
            *v = sigmoid(*v + b);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl")]
        fn avx512(x: &mut [f32], bias: &[f32]) {
            body(x, bias)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(x: &mut [f32], bias: &[f32]) {
            body(x, bias)
        }
        match simd() {
            // SAFETY: `simd()` reports only what the CPU supports.
            Simd::Avx512 => return unsafe { avx512(x, bias) },
            // SAFETY: as above (AVX2 and FMA).
            Simd::Avx2 => return unsafe { avx2(x, bias) },
            Simd::Scalar => {}
        }
    }
    body(x, bias)
}

/// The logistic function in f64.
#[inline(always)]
pub fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + e^x)` without overflow for large `x` or loss of precision for very negative `x`.
#[inline(always)]
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// `log Σ exp(xᵢ)`, stable for any finite inputs; `-inf` for an empty slice.
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + xs.iter().map(|&x| (x - max).exp()).sum::<f64>().ln()
}

/// `log(mean(exp(xᵢ)))`, stable.
pub fn log_mean_exp(xs: &[f64]) -> f64 {
    log_sum_exp(xs) - (xs.len() as f64).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every page of `v` is in memory (`mincore`).
    #[cfg(target_os = "linux")]
    fn resident(v: &[f32]) -> bool {
        // SAFETY: sysconf takes no pointers; mincore gets a page-aligned start within the
        // mapping that holds `v`, its length, and a vector with a byte per page.
        unsafe {
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap();
            let start = v.as_ptr() as usize / page * page;
            let len = v.as_ptr() as usize + std::mem::size_of_val(v) - start;
            let mut pages = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(start as *mut _, len, pages.as_mut_ptr()), 0);
            pages.iter().all(|&p| p & 1 == 1)
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn zeros_now_are_zeros_in_memory() {
        // 64 MiB: above glibc's largest mmap threshold, so fresh pages from the system (which
        // `vec!` would leave unmapped until touched).
        let n = 16 << 20;
        let v = zeros_now(n);
        assert_eq!(v.len(), n);
        assert!(resident(&v), "some pages were never touched");
        assert!(v.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn sigmoid_is_finite_and_symmetric() {
        for &x in &[-1000.0f32, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0] {
            let s = sigmoid(x);
            assert!(
                s.is_finite() && (0.0..=1.0).contains(&s),
                "sigmoid({x}) = {s}"
            );
            assert!((s + sigmoid(-x) - 1.0).abs() < 1e-6);
        }
        assert!((sigmoid64(-800.0) - 0.0).abs() < 1e-300 && sigmoid64(800.0) == 1.0);
    }

    #[test]
    fn fast_exp_is_accurate_over_its_range() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(1000.0).is_finite());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn store_lanes_writes_exactly_the_first_n_lanes() {
        if simd() != Simd::Avx512 {
            return;
        }
        use std::arch::x86_64::*;
        let src: Vec<f32> = (0..16).map(|i| i as f32 + 0.5).collect();
        for n in 0..=20 {
            // Sentinels on both sides of the 16 lanes, so a write before, past or short of
            // lane n shows.
            let mut buf = vec![-1.0f32; 40];
            // SAFETY: AVX-512F and VL are present (`simd()`); lanes 8..8 + min(n, 16) of `buf`.
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr());
                store_lanes(buf.as_mut_ptr().add(8), v, n);
            }
            let k = n.min(16);
            assert!(buf[..8].iter().all(|&x| x == -1.0), "n {n}");
            assert_eq!(&buf[8..8 + k], &src[..k], "n {n}");
            assert!(buf[8 + k..].iter().all(|&x| x == -1.0), "n {n}");
        }
    }

    #[test]
    fn all_finite_finds_one_bad_element_anywhere() {
        let mut x = vec![1.0f32; 3000];
        assert!(all_finite(&x) && all_finite(&[]));
        for at in [0, 1023, 1024, 2999] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                x[at] = bad;
                assert!(!all_finite(&x), "{bad} at {at}");
                x[at] = f32::MAX;
                assert!(all_finite(&x));
            }
        }
    }

    #[test]
    fn simd_sigmoid_matches_scalar_definition() {
        let mut x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let bias: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 * 0.1).collect();
        let want: Vec<f64> = x
            .iter()
            .zip(&bias)
            .map(|(&v, &b)| sigmoid64(f64::from(v + b)))
            .collect();
        sigmoid_bias_in_place(&mut x, &bias);
        for (g, w) in x.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn softplus_matches_naive_where_naive_is_accurate() {
        for &x in &[-20.0f64, -2.0, 0.0, 0.5, 3.0, 20.0] {
            let naive = (1.0 + x.exp()).ln();
            assert!((softplus(x) - naive).abs() < 1e-12, "x = {x}");
        }
        assert_eq!(softplus(1000.0), 1000.0);
        assert!(softplus(-1000.0) >= 0.0 && softplus(-1000.0) < 1e-300);
    }

    #[test]
    fn log_sum_exp_is_stable() {
        let v = [1000.0, 1000.0];
        assert!((log_sum_exp(&v) - (1000.0 + 2f64.ln())).abs() < 1e-12);
        assert!((log_sum_exp(&[0.0, (3f64).ln()]) - 4f64.ln()).abs() < 1e-12);
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
    }

    #[test]
    fn gemm_matches_naive_product() {
        let a = Matrix::from_fn(3, 4, |i, j| (i * 4 + j) as f32 * 0.5 - 2.0);
        let b = Matrix::from_fn(4, 2, |i, j| (i as f32) - (j as f32) * 1.5);
        let mut c = Matrix::zeros(3, 2);
        gemm(
            c.view_mut(),
            Accum::Replace,
            a.view(),
            b.view(),
            1.0,
            Par::Seq,
        );
        for i in 0..3 {
            for j in 0..2 {
                let want: f32 = (0..4).map(|k| a.get(i, k) * b.get(k, j)).sum();
                assert!((c.get(i, j) - want).abs() < 1e-5);
            }
        }
    }
}
