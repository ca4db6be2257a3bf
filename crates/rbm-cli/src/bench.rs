//! `rbm bench`: throughput of the training loops next to the machine's measured f32 GEMM peak,
//! so figures are comparable across machines and runs (the fraction of peak is the honest one).

use crate::common::{Common, print_json};
use anyhow::{Context, Result, bail};
use faer::Accum;
use rbm::Matrix;
use rbm::linalg::{self, current_par};
use rbm::random::{Purpose, Stream};
use rbm::rating::{CdSchedule, EpochReport, PredictMethod, RatingRbm, RatingRbmParams, TrainData};
use rbm::ratings::{Csr, IdMap, RatingFormat, RatingMatrix, RatingScale, read_ratings};
use rbm::synthetic::{PlantedSpec, generate_planted};
use rbm::team::{training_threads, with_team};
use rbm::train::{Momentum, TrainParams, Trainer};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `rbm bench`: measure training throughput against the GEMM peak.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Epochs timed per binary case (the median epoch is reported).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Also sweep hidden sizes 100..4096 and batch sizes 10..1000 for binary CD-1, and batch
    /// sizes 25..1000 for the MovieLens-100K epoch (with each mini-batch's fixed cost, fitted).
    #[arg(long)]
    sweep: bool,
    /// MovieLens-100K ratings for the rating-RBM case (default: the `rbm cf fetch` cache,
    /// $RBM_CACHE or ~/.cache/rbm; the case is skipped with a note if neither exists).
    #[arg(long)]
    ratings: Option<PathBuf>,
    /// Epochs timed for each MovieLens-100K configuration (the median epoch is reported), taken
    /// five at a time from fresh fits of the configurations in turn.
    #[arg(long, default_value_t = 5)]
    cf_epochs: usize,
    /// Netflix-shaped binary rating file (`rbm cf generate`); default: generate it in memory.
    #[arg(long)]
    netflix: Option<PathBuf>,
    /// Epochs timed for the Netflix-shaped case (the median epoch is reported; each is about
    /// 10 s, and on a shared machine one epoch can be 20 % off either way).
    #[arg(long, default_value_t = 1)]
    netflix_epochs: usize,
    /// Skip the Netflix-scale case (10⁸ ratings, about a minute and 1 GiB).
    #[arg(long)]
    skip_netflix: bool,
    /// Skip the binary-RBM cases.
    #[arg(long)]
    skip_binary: bool,
    /// Also time the GEMM peak, binary CD-1 and the MovieLens-100K epoch on one thread, and
    /// report the speed-up of the full thread count over it (the GEMM's own speed-up is the
    /// machine's ceiling).
    #[arg(long)]
    scaling: bool,
}

/// Where the MovieLens-100K ratings are, if anywhere.
fn ml100k_path(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let cache = std::env::var_os("RBM_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("rbm"))
        })?;
    let p = cache.join("ml-100k").join("ml-100k.inter");
    p.is_file().then_some(p)
}

/// Trains the default rating RBM (M = 100, CD-1) for `epochs` epochs on `cases`; returns the
/// per-epoch reports and the model.
fn rating_fit(
    cases: &Csr,
    d: usize,
    values: &[f32],
    batch: usize,
    epochs: usize,
) -> Result<(Vec<EpochReport>, RatingRbm)> {
    let params = RatingRbmParams::new()
        .hidden(100)
        .epochs(epochs)
        .batch_size(batch)
        .cd(CdSchedule::constant(1))
        .check()?;
    let data = TrainData::new(cases, d, values);
    let mut reports = Vec::new();
    let (model, _) = RatingRbm::fit(&params, &data, &mut |r: &EpochReport| {
        reports.push(r.clone())
    })?;
    Ok((reports, model))
}

/// Prints [`phases_per_batch`]'s figures on one line.
fn print_phases(what: &str, p: &Value) {
    let f = |k: &str| p[k].as_f64().unwrap_or(0.0);
    println!(
        "{what}, per mini-batch: {:.0} µs = p(h|v) passes {:.0} + negative pass {:.0} (members apart {:.0}) + step {:.0} (apart {:.0}) + index {:.0} + other {:.0}",
        f("batch_us"),
        f("hidden_us"),
        f("negative_us"),
        f("negative_spread_us"),
        f("step_us"),
        f("step_spread_us"),
        f("index_us"),
        f("other_us")
    );
}

/// Mini-batches per epoch of a fit (each of its epochs has the same number).
fn batches_per_epoch(reports: &[EpochReport]) -> usize {
    reports.first().map_or(0, |r| r.phases.batches)
}

/// The epochs' training seconds.
fn epoch_seconds(reports: &[EpochReport]) -> Vec<f64> {
    reports.iter().map(|r| r.seconds).collect()
}

/// Where the epochs' time went, per mini-batch and in microseconds: each phase's wall time, and
/// for the two item-major passes how long the first team member to finish waited for the last
/// (summed over all epochs, the first included).
fn phases_per_batch(reports: &[EpochReport]) -> Value {
    let batches = reports
        .iter()
        .map(|r| r.phases.batches)
        .sum::<usize>()
        .max(1) as f64;
    let us = |f: &dyn Fn(&EpochReport) -> f64| 1e6 * reports.iter().map(f).sum::<f64>() / batches;
    let total = us(&|r| r.seconds);
    let parts = [
        us(&|r| r.phases.hidden.seconds),
        us(&|r| r.phases.negative.seconds),
        us(&|r| r.phases.step.seconds),
        us(&|r| r.phases.index.seconds),
    ];
    json!({
        "batch_us": total,
        "hidden_us": parts[0],
        "negative_us": parts[1],
        "negative_spread_us": us(&|r| r.phases.negative.spread_seconds),
        "step_us": parts[2],
        "step_spread_us": us(&|r| r.phases.step.spread_seconds),
        "index_us": parts[3],
        "other_us": total - parts.iter().sum::<f64>(),
    })
}

/// Mini-batch sizes of the MovieLens-100K sweep (`--sweep`).
const ML100K_SWEEP_BATCHES: [usize; 6] = [25, 50, 100, 256, 500, 1000];

/// The least-squares line `y = slope·x + intercept` through the points, if the x are not all
/// the same.
fn line_fit(xs: &[f64], ys: &[f64]) -> Option<(f64, f64)> {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (xs.len() == ys.len() && sxx > 0.0).then(|| (sxy / sxx, my - sxy / sxx * mx))
}

/// The user-based epoch at several mini-batch sizes (`runs`: batch size and its epochs, one row
/// each in that order), and
/// the line through the fastest epochs against the number of mini-batches: its slope is what
/// each mini-batch costs whatever its size (the momentum step sweeps all of W and its velocity,
/// and the team synchronizes a few times), its intercept the work that scales with the ratings.
fn batch_sweep(runs: &[(usize, Vec<EpochReport>)]) -> Value {
    let mut rows: Vec<Value> = Vec::new();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (batch, reports) in runs {
        let secs = epoch_seconds(reports);
        let batches = batches_per_epoch(reports);
        let fastest = fastest(&secs);
        xs.push(batches as f64);
        ys.push(fastest);
        rows.push(json!({
            "batch": batch, "batches": batches, "epoch_seconds": median(secs.clone()),
            "fastest_epoch_seconds": fastest, "phases_per_batch": phases_per_batch(reports),
        }));
    }
    let fit = line_fit(&xs, &ys);
    json!({
        "runs": rows,
        "per_batch_seconds": fit.map(|f| f.0),
        "batch_independent_seconds": fit.map(|f| f.1),
    })
}

/// Floating-point operations of one CD-1 epoch of the rating RBM as this crate runs it (sampled
/// negative phase, momentum), a multiply-add counting as two. Per rating: its positive and
/// negative rows into the hidden inputs (M additions each), the K logits of its negative step
/// (K·M additions: h is binary, so each logit adds up the weights of the hidden units that are
/// on) and its two gradient rows, +p⁰ and −p¹ (M multiply-adds each): KM + 6M. Per visible unit
/// and mini-batch, the momentum step of its K×M weights and K biases (6 each: decay, scaling,
/// velocity, weight). The per-case work (σ, draws, the hidden biases) is left out (under 1 % at
/// M = 100). Only rated units are worked on: a dense masked implementation of the same epoch
/// does about D·K / |R(u)| times more.
fn rating_epoch_flops(ratings: usize, units: usize, batches: usize, k: usize, m: usize) -> f64 {
    let (k, m) = (k as f64, m as f64);
    ratings as f64 * (k * m + 6.0 * m) + (batches * units) as f64 * 6.0 * (k * m + k)
}

/// `epochs` timed epochs of each configuration (cases, visible units, mini-batch size), taken
/// round after round: in each round a fresh fit of every configuration in turn, of `per_fit`
/// timed epochs after one untimed (which also pays for the fresh model's page faults and its
/// first index). On a shared host the configurations then meet the same minutes: run one after
/// another, 30 epochs of one took a third of a second, and the same binary's medians ranged
/// 6–12 ms with whatever the other tenants did in it (interleaved: 6.1–7.1 ms).
fn interleaved_fits(
    configs: &[(&Csr, usize, usize)],
    values: &[f32],
    epochs: usize,
    per_fit: usize,
) -> Result<Vec<Vec<EpochReport>>> {
    let mut out = vec![Vec::new(); configs.len()];
    while let Some(done) = out.first().map(Vec::len).filter(|&n| n < epochs) {
        let take = per_fit.clamp(1, epochs - done);
        for (&(cases, d, batch), reports) in configs.iter().zip(&mut out) {
            let fit = rating_fit(cases, d, values, batch, take + 1)?.0;
            reports.extend(fit.into_iter().skip(1));
        }
    }
    Ok(out)
}

/// The MovieLens-100K epoch, user- and item-based (and with `sweep`, user-based at more
/// mini-batch sizes).
fn ml100k_case(path: &Path, epochs: usize, sweep: bool) -> Result<Value> {
    let (mut users, mut items) = (IdMap::new(), IdMap::new());
    let ratings = read_ratings(path, RatingFormat::Auto, &mut users, &mut items)?;
    let scale = RatingScale::infer(&ratings)?;
    let n_ratings = ratings.len();
    let m = RatingMatrix::from_ratings(users.len(), items.len(), ratings, &scale)?;
    let values = scale.values();
    // User-based at batch 100 (the headline), item-based, and user-based at the dense reference
    // code's own mini-batch (its `fit` defaults to batch_sz=256), for a like-for-like comparison
    // with its epoch time.
    let configs = [
        (&m.by_user, m.n_items, 100),
        (&m.by_item, m.n_users, 100),
        (&m.by_user, m.n_items, 256),
    ];
    let [user_reports, item_reports, user256_reports] =
        <[_; 3]>::try_from(interleaved_fits(&configs, values, epochs, 5)?)
            .expect("one list of reports per configuration");
    let user = epoch_seconds(&user_reports);
    let item = epoch_seconds(&item_reports);
    let user256 = epoch_seconds(&user256_reports);
    let (us, is) = (median(user.clone()), median(item.clone()));
    let k = values.len();
    let flops = |reports: &[EpochReport]| {
        rating_epoch_flops(n_ratings, m.n_items, batches_per_epoch(reports), k, 100)
    };
    let (uf, f256) = (flops(&user_reports), flops(&user256_reports));
    let s256 = median(user256.clone());
    let mut out = json!({
        "path": path.display().to_string(), "ratings": n_ratings, "hidden": 100, "cd": 1,
        "k": k, "units": m.n_items, "batches": batches_per_epoch(&user_reports),
        "flops_per_epoch": uf, "gflops": uf / us / 1e9,
        "batch256_flops_per_epoch": f256,
        "batch256_gflops": f256 / s256 / 1e9,
        "batch": 100, "user_epoch_seconds": us, "item_epoch_seconds": is,
        "ratings_per_sec": n_ratings as f64 / us, "item_ratings_per_sec": n_ratings as f64 / is,
        "user_epochs": user, "item_epochs": item,
        "user_fastest_epoch_seconds": fastest(&user),
        "batch256_user_epoch_seconds": s256,
        "batch256_user_fastest_epoch_seconds": fastest(&user256), "batch256_user_epochs": user256,
        "user_phases_per_batch": phases_per_batch(&user_reports),
    });
    if sweep {
        // One timed epoch per fit: timed one size after another, the fastest of 40 epochs of
        // one size had varied by 2× between runs.
        let configs = ML100K_SWEEP_BATCHES.map(|b| (&m.by_user, m.n_items, b));
        let reports = interleaved_fits(&configs, values, epochs, 1)?;
        let runs: Vec<_> = ML100K_SWEEP_BATCHES.into_iter().zip(reports).collect();
        out["batch_sweep"] = batch_sweep(&runs);
    }
    Ok(out)
}

/// The Netflix-shaped epoch: generated in memory (or loaded), `epochs` epochs at M = 100, K = 5,
/// CD-1, mini-batches of 1000 users (the paper's); the median is reported. The peak-memory
/// counter is reset first (Linux `clear_refs`), so the figure belongs to this case.
fn netflix_case(file: Option<&Path>, epochs: usize) -> Result<Value> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut out = serde_json::Map::new();
    let t = Instant::now();
    let set = match file {
        Some(p) => {
            let s = rbm::synthetic::read_binary(p)?;
            out.insert(
                "netflix_load_seconds".into(),
                json!(t.elapsed().as_secs_f64()),
            );
            s
        }
        None => {
            let s = generate_planted(&PlantedSpec::netflix(0))?;
            out.insert(
                "netflix_generate_seconds".into(),
                json!(t.elapsed().as_secs_f64()),
            );
            s
        }
    };
    let (reports, model) = rating_fit(&set.by_user, set.n_items, &set.values, 1000, epochs)?;
    let secs = epoch_seconds(&reports);
    // The epoch's peak, before prediction adds its own buffers.
    let train_peak = peak_rss_bytes();
    let s = median(secs.clone());
    let batches = batches_per_epoch(&reports);
    let flops = rating_epoch_flops(
        set.by_user.nnz(),
        set.n_items,
        batches,
        set.values.len(),
        100,
    );
    out.insert("netflix_units".into(), json!(set.n_items));
    out.insert("netflix_batches".into(), json!(batches));
    out.insert("netflix_flops_per_epoch".into(), json!(flops));
    out.insert("netflix_gflops".into(), json!(flops / s / 1e9));
    // Prediction with the trained model (mean field, as `rbm cf train` evaluates): random
    // (user, item) pairs, a tenth of the ratings up to a million.
    let n_pairs = (set.by_user.nnz() / 10).clamp(1, 1_000_000);
    let mut draw = Stream::new(0, Purpose::Data, 0x9e7, 0, 0);
    let pairs: Vec<(u32, u32)> = (0..n_pairs)
        .map(|_| {
            (
                draw.below(set.n_users) as u32,
                draw.below(set.n_items) as u32,
            )
        })
        .collect();
    let t = Instant::now();
    let dist = model.predict_pairs(&set.by_user, None, &pairs, PredictMethod::MeanField);
    let predict_secs = t.elapsed().as_secs_f64();
    debug_assert_eq!(dist.len(), n_pairs * set.values.len());
    out.insert("netflix_predict_pairs".into(), json!(n_pairs));
    out.insert("netflix_predict_seconds".into(), json!(predict_secs));
    out.insert(
        "netflix_predict_pairs_per_sec".into(),
        json!(n_pairs as f64 / predict_secs),
    );
    out.insert("netflix_epoch_seconds".into(), json!(s));
    out.insert("netflix_epochs".into(), json!(secs));
    out.insert(
        "netflix_phases_per_batch".into(),
        phases_per_batch(&reports),
    );
    out.insert(
        "netflix_ratings_per_sec".into(),
        json!(set.by_user.nnz() as f64 / s),
    );
    out.insert("netflix_ratings".into(), json!(set.by_user.nnz()));
    out.insert("netflix_peak_rss_bytes".into(), json!(train_peak));
    out.insert(
        "netflix_predict_peak_rss_bytes".into(),
        json!(peak_rss_bytes()),
    );
    Ok(Value::Object(out))
}

/// Peak resident memory of this process so far, in bytes (Linux; 0 elsewhere).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The f32 GEMM peak: GFLOP/s of a 2048³ product with the same matrix library, run both as
/// faer's own parallel product and as training runs its products (split by rows, one
/// sequential product per thread: about 25 % faster on two cores here). Returns (the higher
/// figure, faer's own), so the fractions are taken against what the machine can really do.
fn gemm_peak() -> (f64, f64) {
    let n = 2048;
    let faer_own = product_gflops(n, n, n, false);
    (product_gflops(n, n, n, true).max(faer_own), faer_own)
}

/// GFLOP/s of the `m × k × n` product `Wᵀ·V` as training runs it.
fn shape_gflops(m: usize, k: usize, n: usize) -> f64 {
    product_gflops(m, k, n, true)
}

/// GFLOP/s of an `m × k × n` product, best of five timings of a few repetitions: with `split`
/// cut by rows over the training team (8 row blocks, as the Gibbs passes do), else faer's own
/// parallel product.
fn product_gflops(m: usize, k: usize, n: usize, split: bool) -> f64 {
    let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 17) as f32 * 0.01);
    let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j) % 13) as f32 * 0.01);
    let mut c = Matrix::zeros(m, n);
    let reps = (2e8 / (2.0 * (m * k * n) as f64)).ceil().max(1.0) as usize;
    let mut best = f64::INFINITY;
    with_team(training_threads(), |team| {
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                if split {
                    let side = faer::MatMut::from_column_major_slice_mut(&mut [], m, 0);
                    linalg::gemm_rows_then(
                        c.view_mut(),
                        side,
                        a.view(),
                        b.view(),
                        m.div_ceil(8),
                        team,
                        &|_, _, _| {},
                    );
                } else {
                    let (a, b) = (a.view(), b.view());
                    faer::linalg::matmul::matmul(
                        c.view_mut(),
                        Accum::Replace,
                        a,
                        b,
                        1.0,
                        current_par(),
                    );
                }
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
    });
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// The fastest epoch, beside the median: on a shared host other tenants slow some epochs down
/// and none up, so the fastest is the code's own speed and the median what a run got.
fn fastest(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Times one binary configuration: the seconds of each of `epochs` epochs, and the floating-point
/// operations of one epoch.
fn binary_case(
    data: &Matrix,
    hidden: usize,
    batch: usize,
    cd: usize,
    pcd: bool,
    epochs: usize,
) -> Result<(Vec<f64>, f64)> {
    let cfg = TrainParams::new()
        .hidden(hidden)
        .epochs(epochs)
        .batch_size(batch)
        .lr(0.05)
        .cd_k(cd)
        .persistent(pcd)
        .momentum(Momentum::constant(0.0))
        .weight_decay(0.0)
        .monitor_examples(1)
        .check()?;
    let mut secs = Vec::new();
    Trainer::fit_new(cfg, data, None, &mut |s, _| {
        secs.push(s.seconds);
        ControlFlow::Continue(())
    })?;
    let (d, m, n) = (data.rows() as f64, hidden as f64, data.cols() as f64);
    // Per example: positive pass, k×(down + up) passes, and the fused gradient (2 products).
    let flops =
        2.0 * d * m * n * (1.0 + 2.0 * cd as f64 + 2.0) + if pcd { 2.0 * d * m * n } else { 0.0 };
    Ok((secs, flops))
}

/// Runs `rbm bench`.
pub fn bench(args: BenchArgs, common: &Common) -> Result<()> {
    for (flag, n) in [
        ("--epochs", args.epochs),
        ("--cf-epochs", args.cf_epochs),
        ("--netflix-epochs", args.netflix_epochs),
    ] {
        if n == 0 {
            bail!("{flag} must be at least 1 (the median of the timed epochs is reported)");
        }
    }
    // A file named on the command line must be there; only the default cache may be absent.
    if let Some(p) = &args.ratings
        && !p.is_file()
    {
        bail!("--ratings {}: no such file", p.display());
    }
    let ml_path = ml100k_path(args.ratings.as_deref());
    let report = common.in_pool(|| -> Result<Value> {
        let mut report = serde_json::Map::new();
        report.insert("threads".into(), json!(rayon::current_num_threads()));
        // The vector kernels this run used (`RBM_SIMD` caps them), since figures depend on it.
        report.insert("simd".into(), json!(rbm::linalg::simd().name()));
        let mut cases = Vec::new();
        if !args.skip_binary {
            let digits = rbm::data::digits()?;
            // The peak is measured before and after the cases and the higher figure is used, so
            // a busy moment during one measurement cannot flatter the fractions.
            let (peak_before, faer_before) = gemm_peak();
            let data = &digits.examples;
            let n = data.cols() as f64;
            let mut add = |name: String, hidden, batch, cd, pcd| -> Result<(f64, f64)> {
                let (secs, flops) = binary_case(data, hidden, batch, cd, pcd, args.epochs)?;
                let s = median(secs.clone());
                // The speed of this case's own product shape (Wᵀ·V, M × D × B), so a sweep can
                // tell the training loop's overhead from what the GEMM does at that size.
                let shape = shape_gflops(hidden, data.rows(), batch);
                cases.push(json!({
                    "case": name, "hidden": hidden, "batch": batch, "cd_k": cd, "persistent": pcd,
                    "seconds_per_epoch": s, "examples_per_sec": n / s, "gflops": flops / s / 1e9,
                    "shape_gemm_gflops": shape, "shape_fraction": flops / s / 1e9 / shape,
                    "epoch_seconds": secs,
                }));
                Ok((s, flops / s / 1e9))
            };
            let (s1, gf1) = add("binary CD-1 784→500 batch 100".into(), 500, 100, 1, false)?;
            add("binary PCD-1 784→500 batch 100".into(), 500, 100, 1, true)?;
            add("binary CD-10 784→500 batch 100".into(), 500, 100, 10, false)?;
            if args.sweep {
                for h in [100, 250, 1000, 2048, 4096] {
                    add(format!("binary CD-1 784→{h} batch 100"), h, 100, 1, false)?;
                }
                for b in [10, 50, 200, 500, 1000] {
                    add(format!("binary CD-1 784→500 batch {b}"), 500, b, 1, false)?;
                }
            }
            let (peak_after, faer_after) = gemm_peak();
            let peak = peak_before.max(peak_after);
            for c in &mut cases {
                let gf = c["gflops"].as_f64().unwrap_or(0.0);
                c["peak_fraction"] = json!(gf / peak);
            }
            report.insert("gemm_peak_gflops".into(), json!(peak));
            report.insert(
                "gemm_peak_gflops_faer_parallel".into(),
                json!(faer_before.max(faer_after)),
            );
            report.insert("binary_examples_per_sec".into(), json!(n / s1));
            report.insert("binary_seconds_per_epoch".into(), json!(s1));
            report.insert("binary_gflops".into(), json!(gf1));
            report.insert("binary_peak_fraction".into(), json!(gf1 / peak));
        }
        report.insert("cases".into(), json!(cases));
        let mut notes = Vec::new();
        match &ml_path {
            Some(p) => match ml100k_case(p, args.cf_epochs, args.sweep) {
                Ok(c) => {
                    // The headline figures at the top level, under the names the issue gives.
                    for (key, from) in [
                        ("ml100k_epoch_seconds", "user_epoch_seconds"),
                        ("ml100k_item_epoch_seconds", "item_epoch_seconds"),
                        (
                            "ml100k_epoch_seconds_batch256",
                            "batch256_user_epoch_seconds",
                        ),
                        ("ml100k_fastest_epoch_seconds", "user_fastest_epoch_seconds"),
                        (
                            "ml100k_fastest_epoch_seconds_batch256",
                            "batch256_user_fastest_epoch_seconds",
                        ),
                    ] {
                        report.insert(key.into(), c[from].clone());
                    }
                    report.insert("ml100k".into(), c);
                }
                // A file the user named must be usable; a broken cache is only noted.
                Err(e) if args.ratings.is_some() => return Err(e),
                Err(e) => {
                    report.insert("ml100k_epoch_seconds".into(), Value::Null);
                    notes.push(format!("MovieLens-100K case skipped: {e:#}"));
                }
            },
            None => {
                report.insert("ml100k_epoch_seconds".into(), Value::Null);
                notes.push(
                    "MovieLens-100K case skipped: pass --ratings PATH or run `rbm cf fetch`"
                        .to_string(),
                );
            }
        }
        // Peak memory of everything before the Netflix case (which resets the counter).
        report.insert("peak_rss_bytes".into(), json!(peak_rss_bytes()));
        if args.skip_netflix {
            report.insert("netflix_epoch_seconds".into(), Value::Null);
            notes.push("Netflix-scale case skipped (--skip-netflix)".to_string());
        } else {
            let c = netflix_case(args.netflix.as_deref(), args.netflix_epochs)?;
            for (k, v) in c.as_object().into_iter().flatten() {
                report.insert(k.clone(), v.clone());
            }
        }
        // The rating cases against the GEMM peak too (measured now if the binary cases, which
        // measure it, were skipped).
        let rating_ran = report.get("ml100k").is_some_and(Value::is_object)
            || report.contains_key("netflix_gflops");
        if rating_ran && !report.contains_key("gemm_peak_gflops") {
            report.insert("gemm_peak_gflops".into(), json!(gemm_peak().0));
        }
        if let Some(peak) = report.get("gemm_peak_gflops").and_then(Value::as_f64) {
            if let Some(ml) = report.get_mut("ml100k") {
                let (a, b) = (ml["gflops"].as_f64(), ml["batch256_gflops"].as_f64());
                ml["peak_fraction"] = json!(a.map(|g| g / peak));
                ml["batch256_peak_fraction"] = json!(b.map(|g| g / peak));
                let (g, f) = (ml["gflops"].clone(), ml["peak_fraction"].clone());
                report.insert("ml100k_gflops".into(), g);
                report.insert("ml100k_peak_fraction".into(), f);
            }
            if let Some(g) = report.get("netflix_gflops").and_then(Value::as_f64) {
                report.insert("netflix_peak_fraction".into(), json!(g / peak));
            }
        }
        report.insert("notes".into(), json!(notes));
        Ok(Value::Object(report))
    })??;
    let mut report = report;
    if args.scaling {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .context("could not start a one-thread pool")?;
        let single = one.install(|| -> Result<Value> {
            let mut out = serde_json::Map::new();
            if !args.skip_binary {
                let digits = rbm::data::digits()?;
                let (secs, _) = binary_case(&digits.examples, 500, 100, 1, false, args.epochs)?;
                let s1 = median(secs);
                out.insert("gemm_peak_gflops_1thread".into(), json!(gemm_peak().0));
                out.insert("binary_seconds_per_epoch_1thread".into(), json!(s1));
            }
            if let Some(p) = &ml_path {
                let c = ml100k_case(p, args.cf_epochs, false)?;
                out.insert(
                    "ml100k_epoch_seconds_1thread".into(),
                    c["user_epoch_seconds"].clone(),
                );
                out.insert(
                    "ml100k_fastest_epoch_seconds_1thread".into(),
                    c["user_fastest_epoch_seconds"].clone(),
                );
            }
            Ok(Value::Object(out))
        })?;
        let ratio = |many: &str, one: &str| match (report[many].as_f64(), single[one].as_f64()) {
            (Some(a), Some(b)) if a > 0.0 => json!(b / a),
            _ => Value::Null,
        };
        let speedups = json!({
            "gemm": match (report["gemm_peak_gflops"].as_f64(), single["gemm_peak_gflops_1thread"].as_f64()) {
                (Some(a), Some(b)) if b > 0.0 => json!(a / b),
                _ => Value::Null,
            },
            "binary_cd1": ratio("binary_seconds_per_epoch", "binary_seconds_per_epoch_1thread"),
            "ml100k": ratio("ml100k_epoch_seconds", "ml100k_epoch_seconds_1thread"),
            // The same from the fastest epochs: the median epochs of a shared host carry its
            // other tenants' load, which comes and goes between the two runs.
            "ml100k_fastest": ratio("ml100k_fastest_epoch_seconds", "ml100k_fastest_epoch_seconds_1thread"),
        });
        for (k, v) in single.as_object().into_iter().flatten() {
            report[k] = v.clone();
        }
        report["speedup_over_1thread"] = speedups;
    }
    if common.json {
        print_json(&report);
    } else {
        let simd = report["simd"].as_str().unwrap_or_default();
        println!("threads {}, SIMD {simd}", report["threads"]);
        if let Some(peak) = report.get("gemm_peak_gflops").and_then(Value::as_f64) {
            println!(
                "f32 GEMM peak (2048³, faer, the better of its own parallel product and a row split): {peak:.1} GFLOP/s"
            );
        }
        let cases = report["cases"].as_array().filter(|c| !c.is_empty());
        if let Some(cases) = cases {
            println!(
                "{:<36} {:>10} {:>12} {:>9} {:>7} {:>7}",
                "case", "s/epoch", "examples/s", "GFLOP/s", "peak", "shape"
            );
            for c in cases {
                println!(
                    "{:<36} {:>10.4} {:>12.0} {:>9.1} {:>6.0}% {:>6.0}%",
                    c["case"].as_str().unwrap_or(""),
                    c["seconds_per_epoch"].as_f64().unwrap_or(0.0),
                    c["examples_per_sec"].as_f64().unwrap_or(0.0),
                    c["gflops"].as_f64().unwrap_or(0.0),
                    100.0 * c["peak_fraction"].as_f64().unwrap_or(0.0),
                    100.0 * c["shape_fraction"].as_f64().unwrap_or(0.0)
                );
            }
            println!(
                "(peak: share of the 2048³ GEMM peak; shape: share of the speed of a lone Wᵀ·V product of the case's M × D × B shape)"
            );
        }
        if let Some(s) = report["ml100k_epoch_seconds"].as_f64() {
            let ms = |key: &str| report[key].as_f64().unwrap_or(0.0) * 1e3;
            let ml = &report["ml100k"];
            println!(
                "rating RBM, MovieLens-100K (M=100, K=5, CD-1, batch 100): {:.2} ms/epoch user-based ({:.1} M ratings/s, {:.1} GFLOP/s, {:.0}% of peak; fastest epoch {:.2} ms), {:.2} ms/epoch item-based",
                s * 1e3,
                ml["ratings_per_sec"].as_f64().unwrap_or(0.0) / 1e6,
                ml["gflops"].as_f64().unwrap_or(0.0),
                100.0 * ml["peak_fraction"].as_f64().unwrap_or(0.0),
                ms("ml100k_fastest_epoch_seconds"),
                ms("ml100k_item_epoch_seconds")
            );
            println!(
                "  at the dense reference code's batch of 256: {:.2} ms/epoch user-based (fastest {:.2} ms)",
                ms("ml100k_epoch_seconds_batch256"),
                ms("ml100k_fastest_epoch_seconds_batch256")
            );
            print_phases(
                "  user-based, batch 100",
                &report["ml100k"]["user_phases_per_batch"],
            );
            let sw = &report["ml100k"]["batch_sweep"];
            if let Some(runs) = sw["runs"].as_array() {
                let each = runs
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {:.2} ms ({} batches)",
                            r["batch"],
                            r["fastest_epoch_seconds"].as_f64().unwrap_or(0.0) * 1e3,
                            r["batches"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("  by batch size, user-based, fastest epochs: {each}");
                if let (Some(a), Some(c)) = (
                    sw["per_batch_seconds"].as_f64(),
                    sw["batch_independent_seconds"].as_f64(),
                ) {
                    println!(
                        "  fitted: {:.0} µs per mini-batch, whatever its size, + {:.2} ms per epoch for the ratings",
                        a * 1e6,
                        c * 1e3
                    );
                }
            }
        }
        if let Some(s) = report["netflix_epoch_seconds"].as_f64() {
            let prep = report
                .get("netflix_load_seconds")
                .map(|v| format!("loaded in {:.2} s", v.as_f64().unwrap_or(0.0)))
                .or_else(|| {
                    report
                        .get("netflix_generate_seconds")
                        .map(|v| format!("generated in {:.2} s", v.as_f64().unwrap_or(0.0)))
                })
                .unwrap_or_default();
            println!(
                "rating RBM, Netflix-shaped ({} ratings, {prep}; M=100, K=5, CD-1, batch 1000): {:.2} s/epoch ({:.1} M ratings/s, {:.1} GFLOP/s, {:.0}% of peak), peak memory {:.0} MiB",
                report["netflix_ratings"],
                s,
                report["netflix_ratings_per_sec"].as_f64().unwrap_or(0.0) / 1e6,
                report["netflix_gflops"].as_f64().unwrap_or(0.0),
                100.0 * report["netflix_peak_fraction"].as_f64().unwrap_or(0.0),
                report["netflix_peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
            println!(
                "  predicting {} random pairs (mean field): {:.2} s ({:.2} M pairs/s), peak memory then {:.0} MiB",
                report["netflix_predict_pairs"],
                report["netflix_predict_seconds"].as_f64().unwrap_or(0.0),
                report["netflix_predict_pairs_per_sec"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1e6,
                report["netflix_predict_peak_rss_bytes"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1048576.0
            );
            print_phases("  training", &report["netflix_phases_per_batch"]);
        }
        for n in report["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or(""));
        }
        println!(
            "peak memory: {:.1} MiB",
            report["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        if let Some(sp) = report.get("speedup_over_1thread") {
            let f = |k: &str| {
                sp[k]
                    .as_f64()
                    .map_or("n/a".to_string(), |x| format!("{x:.2}×"))
            };
            println!(
                "speed-up over 1 thread: GEMM peak {} (the machine's ceiling), binary CD-1 {}, MovieLens-100K epoch {} (fastest epochs {})",
                f("gemm"),
                f("binary_cd1"),
                f("ml100k"),
                f("ml100k_fastest")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit_recovers_a_line_and_the_least_squares_one() {
        // Exactly on y = 2x + 1.
        let (a, b) = line_fit(&[1.0, 2.0, 4.0], &[3.0, 5.0, 9.0]).unwrap();
        assert!((a - 2.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12);
        // (0,0), (1,1), (2,1): by hand, slope 1/2, intercept 1/6.
        let (a, b) = line_fit(&[0.0, 1.0, 2.0], &[0.0, 1.0, 1.0]).unwrap();
        assert!((a - 0.5).abs() < 1e-12 && (b - 1.0 / 6.0).abs() < 1e-12);
        // No spread in x: no line.
        assert!(line_fit(&[3.0, 3.0], &[1.0, 2.0]).is_none());
    }
}
