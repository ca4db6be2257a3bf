//! The binary-RBM subcommands: `train`, `sample`, `transform`, `filters` and `walkthrough`.

use crate::common::{Common, MetricsFile, check_memory, check_outputs, print_json};
use anyhow::{Context, Result, bail};
use rbm::BinaryRbm;
use rbm::binary::ChainStart;
use rbm::data::{self, Binarize, Dataset, LoadOptions};
use rbm::train::{Momentum, Optimizer, TrainConfig, TrainParams, Trainer};
use rbm::walkthrough::{WalkthroughInput, walkthrough};
use rbm::{modelfile, picture};
use serde_json::json;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Where examples come from: a file or the shipped digits.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Data: an MNIST IDX file (gzipped or raw), a CSV of pixel rows, or `digits` (the shipped
    /// 5,000-digit MNIST subset).
    #[arg(long, default_value = "digits")]
    pub data: String,
    /// Only these rows (examples), e.g. `0..4000`.
    #[arg(long)]
    pub rows: Option<String>,
    /// Binarize: `none`, a threshold such as `0.5`, or `sample` (stochastic).
    #[arg(long)]
    pub binarize: Option<String>,
    /// Permute the examples with this seed before `--rows` slices them (for files sorted by
    /// class; the built-in digits are already mixed).
    #[arg(long)]
    pub shuffle: Option<u64>,
}

impl DataArgs {
    /// Loads the examples, with `default_binarize` when `--binarize` is absent.
    pub fn load(&self, default_binarize: Binarize, seed: u64) -> Result<Dataset> {
        let mut opts = LoadOptions::new();
        if let Some(r) = &self.rows {
            opts = opts.rows(data::parse_rows(r)?);
        }
        if let Some(seed) = self.shuffle {
            opts = opts.shuffle(seed);
        }
        let bin = match &self.binarize {
            Some(b) => b.parse::<Binarize>()?,
            None => default_binarize,
        };
        opts = opts.binarize(bin.with_seed(seed));
        data::load(&self.data, &opts).with_context(|| format!("cannot load data `{}`", self.data))
    }
}

/// `rbm train`: fit a binary RBM by CD-k or persistent CD.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Held-out data for the free-energy gap and held-out reconstruction error (same forms as
    /// `--data`); with `--heldout-rows` it may be the same file.
    #[arg(long)]
    heldout: Option<String>,
    /// Rows of the held-out data, e.g. `4000..5000`.
    #[arg(long)]
    heldout_rows: Option<String>,
    /// Hidden units.
    #[arg(long, default_value_t = 500)]
    hidden: usize,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Learning rate for W, b and c (override each with --lr-w, --lr-b, --lr-c).
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Learning rate for W (the first source's κ).
    #[arg(long)]
    lr_w: Option<f32>,
    /// Learning rate for the visible bias b (the first source's γ).
    #[arg(long)]
    lr_b: Option<f32>,
    /// Learning rate for the hidden bias c.
    #[arg(long)]
    lr_c: Option<f32>,
    /// Gibbs steps per update (CD-k, or PCD-k with --pcd).
    #[arg(long, default_value_t = 1)]
    cd: usize,
    /// Persistent CD: keep the negative chains across updates.
    #[arg(long)]
    pcd: bool,
    /// Constant momentum (default: the schedule 0.5 → 0.9 from epoch 5, Hinton's guide).
    #[arg(long, conflicts_with = "momentum_schedule")]
    momentum: Option<f32>,
    /// Momentum schedule `INITIAL,FINAL,SWITCH_EPOCH`, e.g. `0.5,0.9,5`.
    #[arg(long)]
    momentum_schedule: Option<String>,
    /// L2 weight decay on W.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Sparsity target for the hidden activations (Hinton's guide §11), e.g. 0.05.
    #[arg(long)]
    sparsity: Option<f32>,
    /// Cost of the sparsity penalty.
    #[arg(long, default_value_t = 0.01)]
    sparsity_cost: f32,
    /// Use Adam instead of SGD with momentum (learning rates become Adam step sizes).
    #[arg(long)]
    adam: bool,
    /// Decay the learning rates linearly to zero over the run (recommended with --pcd).
    #[arg(long)]
    lr_decay: bool,
    /// Sample the reconstruction's visible states instead of using probabilities.
    #[arg(long)]
    sample_visible: bool,
    /// Standard deviation of the initial weights.
    #[arg(long, default_value_t = 0.01)]
    init_std: f32,
    /// Random seed (initialization, shuffling, sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the model (safetensors).
    #[arg(long, default_value = "model.safetensors")]
    out: PathBuf,
    /// Per-epoch metrics as JSON lines, written as training goes so they can be followed; a run
    /// that fails (say, diverges) keeps the epochs it finished.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Also write the weight filters as a PNG.
    #[arg(long)]
    filters: Option<PathBuf>,
    /// Also write 100 samples (1,000 Gibbs steps from the data) as a PNG.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Also write the training curves as a PNG.
    #[arg(long)]
    curves: Option<PathBuf>,
    /// Every N epochs, estimate the held-out log-likelihood by a cheap AIS (32 runs, 1,000 βs;
    /// held-out data binarized at 0.5 if grey) and record it in the metrics and curves.
    /// Needs held-out data.
    #[arg(long)]
    ais_every: Option<usize>,
}

fn momentum_of(args: &TrainArgs) -> Result<Momentum> {
    if let Some(m) = args.momentum {
        return Ok(Momentum::constant(m));
    }
    match &args.momentum_schedule {
        None => Ok(TrainParams::new().check()?.momentum),
        Some(s) => {
            let parts: Vec<&str> = s.split(',').map(str::trim).collect();
            let [a, b, e] = parts.as_slice() else {
                bail!("--momentum-schedule wants INITIAL,FINAL,SWITCH_EPOCH, got `{s}`");
            };
            Ok(Momentum {
                initial: a
                    .parse()
                    .with_context(|| format!("bad initial momentum `{a}`"))?,
                final_value: b
                    .parse()
                    .with_context(|| format!("bad final momentum `{b}`"))?,
                switch_epoch: e
                    .parse()
                    .with_context(|| format!("bad switch epoch `{e}`"))?,
            })
        }
    }
}

/// Hyperparameters recorded in the model file's metadata.
fn hyper_metadata(
    args: &TrainArgs,
    cfg: &TrainConfig,
    epochs_run: usize,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("data", args.data.data.clone());
    if let Some(r) = &args.data.rows {
        put("rows", r.clone());
    }
    put("epochs", epochs_run.to_string());
    put("batch", args.batch.to_string());
    put("lr_w", args.lr_w.unwrap_or(args.lr).to_string());
    put("lr_b", args.lr_b.unwrap_or(args.lr).to_string());
    put("lr_c", args.lr_c.unwrap_or(args.lr).to_string());
    put("cd_k", args.cd.to_string());
    put("persistent", args.pcd.to_string());
    put("weight_decay", args.weight_decay.to_string());
    put(
        "optimizer",
        if args.adam { "adam" } else { "sgd" }.to_string(),
    );
    put("seed", args.seed.to_string());
    put("init_std", args.init_std.to_string());
    put("lr_decay", args.lr_decay.to_string());
    put("sample_visible", args.sample_visible.to_string());
    // As `--momentum-schedule` takes it: INITIAL,FINAL,SWITCH_EPOCH.
    let mo = &cfg.momentum;
    put(
        "momentum",
        format!("{},{},{}", mo.initial, mo.final_value, mo.switch_epoch),
    );
    if let Some(t) = args.sparsity {
        put("sparsity", t.to_string());
        put("sparsity_cost", args.sparsity_cost.to_string());
    }
    if let Some(b) = &args.data.binarize {
        put("binarize", b.clone());
    }
    if let Some(s) = args.data.shuffle {
        put("shuffle", s.to_string());
    }
    m
}

/// Runs `rbm train`.
pub fn train(args: TrainArgs, common: &Common) -> Result<()> {
    let mut params = TrainParams::new()
        .hidden(args.hidden)
        .epochs(args.epochs)
        .batch_size(args.batch)
        .lr_w(args.lr_w.unwrap_or(args.lr))
        .lr_b(args.lr_b.unwrap_or(args.lr))
        .lr_c(args.lr_c.unwrap_or(args.lr))
        .cd_k(args.cd)
        .persistent(args.pcd)
        .sample_visible(args.sample_visible)
        .momentum(momentum_of(&args)?)
        .weight_decay(args.weight_decay)
        .init_std(args.init_std)
        .seed(args.seed)
        .lr_decay(args.lr_decay)
        .sparsity(args.sparsity.map(|t| (t, args.sparsity_cost)));
    if args.adam {
        params = params.optimizer(Optimizer::adam());
    }
    let cfg = params.check()?;
    check_outputs(
        &[
            ("--out", Some(args.out.as_path())),
            ("--filters", args.filters.as_deref()),
            ("--samples", args.samples.as_deref()),
            ("--curves", args.curves.as_deref()),
            ("--metrics", args.metrics.as_deref()),
        ],
        &[Path::new(&args.data.data)]
            .into_iter()
            .chain(args.heldout.as_deref().map(Path::new))
            .collect::<Vec<_>>(),
    )?;
    if let Some(every) = args.ais_every
        && every > args.epochs
    {
        bail!(
            "--ais-every {every} is more than --epochs {}: the log-likelihood would never be estimated",
            args.epochs
        );
    }
    // Held-out rows of the training file must not be training rows too, or the free-energy
    // gap and held-out error would measure the training data.
    if args.heldout.as_ref().is_none_or(|h| *h == args.data.data)
        && let Some(hr) = &args.heldout_rows
    {
        let held = data::parse_rows(hr)?;
        let train = match &args.data.rows {
            Some(r) => data::parse_rows(r)?,
            None => 0..usize::MAX,
        };
        if held.start < train.end && train.start < held.end {
            bail!(
                "--heldout-rows {hr} overlap the training rows ({}) of the same data; pick \
                 disjoint ranges, e.g. --rows 0..4000 --heldout-rows 4000..5000",
                args.data
                    .rows
                    .as_deref()
                    .unwrap_or("all rows, as --rows is not given")
            );
        }
    }
    let train_set = args.data.load(Binarize::None, args.seed)?;
    // W, its velocity (or Adam's two moments) and the update's scratch: f32 each.
    let state = if args.adam { 4.0 } else { 3.0 };
    check_memory(
        &format!("a {} × {} model", train_set.dim(), args.hidden),
        4.0 * state * train_set.dim() as f64 * args.hidden as f64,
    )?;
    let heldout = match (&args.heldout, &args.heldout_rows) {
        (None, None) => None,
        (spec, rows) => Some(
            DataArgs {
                data: spec.clone().unwrap_or_else(|| args.data.data.clone()),
                rows: rows.clone(),
                binarize: args.data.binarize.clone(),
                shuffle: args.data.shuffle,
            }
            .load(Binarize::None, args.seed)
            .context("held-out data (--heldout, --heldout-rows)")?,
        ),
    };
    let ais = match (args.ais_every, &heldout) {
        (None, _) => None,
        (Some(0), _) => bail!("--ais-every must be at least 1"),
        (Some(_), None) => {
            bail!("--ais-every needs held-out data (--heldout and/or --heldout-rows)")
        }
        (Some(n), Some(h)) => {
            let mut binary = h.examples.clone();
            if !rbm::eval::is_binary(&binary) {
                Binarize::Threshold(0.5).apply(&mut binary, 0)?;
            }
            let base = train_set.examples.cols_range(0, train_set.len().min(1000));
            let params = rbm::eval::AisParams::monitoring().seed(args.seed).check()?;
            Some((n, binary, base, params))
        }
    };
    let mut curve_ll = Vec::new();
    let mut metrics = MetricsFile::create(args.metrics.as_deref())?;
    let progress = common.progress(cfg.epochs as u64, "train");
    let mut curve_recon = Vec::new();
    let mut curve_gap = Vec::new();
    let mut metrics_err = None;
    let result = common.in_pool(|| {
        Trainer::fit_new(
            cfg.clone(),
            &train_set.examples,
            heldout.as_ref().map(|h| &h.examples),
            &mut |s, model| {
                let mut ais_fields = (None, None, None);
                if let Some((every, heldout_bin, base, params)) = &ais
                    && s.epoch % every == 0
                {
                    match rbm::eval::ais_log_likelihood(model, base, heldout_bin, params) {
                        Ok((est, ll)) => {
                            ais_fields = (Some(est.log_z), Some(est.log_z_std), Some(ll));
                            curve_ll.push((s.epoch as f64, ll));
                        }
                        Err(e) => {
                            metrics_err =
                                Some(anyhow::Error::new(e).context("AIS during training"));
                            return ControlFlow::Break(());
                        }
                    }
                }
                let mut msg = format!(
                    "epoch {}/{}  recon {:.5}  {:.2}s  {:.0} ex/s",
                    s.epoch, s.epochs, s.recon_mse, s.seconds, s.examples_per_sec
                );
                if let Some(g) = s.free_energy_gap {
                    msg.push_str(&format!("  F-gap {g:.3}"));
                }
                if let Some(ll) = ais_fields.2 {
                    msg.push_str(&format!("  held-out LL(AIS) {ll:.2}"));
                }
                progress.step(&msg);
                curve_recon.push((s.epoch as f64, s.recon_mse));
                if let Some(g) = s.free_energy_gap {
                    curve_gap.push((s.epoch as f64, g));
                }
                if let Some(m) = metrics.as_mut()
                    && let Err(e) = m.write(&json!({
                        "epoch": s.epoch,
                        "recon_mse": s.recon_mse,
                        "train_free_energy": s.train_free_energy,
                        "free_energy_gap": s.free_energy_gap,
                        "heldout_recon_mse": s.heldout_recon_mse,
                        "seconds": s.seconds,
                        "monitor_seconds": s.monitor_seconds,
                        "examples_per_sec": s.examples_per_sec,
                        "momentum": s.momentum,
                        "ais_log_z": ais_fields.0,
                        "ais_log_z_std": ais_fields.1,
                        "heldout_log_likelihood_ais": ais_fields.2,
                    }))
                {
                    metrics_err = Some(e);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )
    })?;
    progress.finish();
    if let Some(e) = metrics_err {
        return Err(e);
    }
    let (model, summary) = result?;
    let (recon, heldout_recon) = common.in_pool(|| {
        (
            model.reconstruction_mse(&train_set.examples),
            heldout
                .as_ref()
                .map(|h| model.reconstruction_mse(&h.examples)),
        )
    })?;
    modelfile::save_binary(
        &args.out,
        &model,
        &hyper_metadata(&args, &cfg, summary.epochs),
    )?;
    let shape = train_set.image_shape;
    if let Some(p) = &args.filters {
        write_filters(p, &model, shape, None)?;
    }
    if let Some(p) = &args.samples {
        let start = train_set.examples.cols_range(0, train_set.len().min(100));
        let (probs, _) =
            common.in_pool(|| model.generate(100, 1000, ChainStart::Data(&start), args.seed))??;
        picture::grid_png(p, &probs, require_shape(shape, p)?, None)?;
    }
    if let Some(p) = &args.curves {
        let mut series = vec![("reconstruction MSE (train)", curve_recon)];
        if !curve_gap.is_empty() {
            series.push(("free-energy gap (held-out − train)", curve_gap));
        }
        if !curve_ll.is_empty() {
            series.push(("held-out log-likelihood (AIS, nats)", curve_ll));
        }
        picture::curves_png(p, &series, "training curves")?;
    }
    let per_epoch = summary.seconds / summary.epochs.max(1) as f64;
    if common.json {
        print_json(&json!({
            "recon_mse": recon,
            "heldout_recon_mse": heldout_recon,
            "free_energy_gap": summary.last.as_ref().and_then(|s| s.free_energy_gap),
            "seconds": summary.seconds,
            "seconds_per_epoch": per_epoch,
            "examples_per_sec": summary.examples_per_sec,
            "epochs": summary.epochs,
            "examples": train_set.len(),
            "visible": model.visible(),
            "hidden": model.hidden(),
            "threads": common.threads(),
            "model": args.out,
        }));
    } else {
        println!(
            "trained {}×{} on {} examples: {} epochs in {:.2}s ({:.3}s/epoch, {:.0} examples/s, {} threads)",
            model.visible(),
            model.hidden(),
            train_set.len(),
            summary.epochs,
            summary.seconds,
            per_epoch,
            summary.examples_per_sec,
            common.threads()
        );
        println!("mean-field reconstruction MSE (train): {recon:.5}");
        if let Some(h) = heldout_recon {
            println!("mean-field reconstruction MSE (held-out): {h:.5}");
        }
        println!("model written to {}", args.out.display());
        for p in [&args.filters, &args.samples, &args.curves]
            .into_iter()
            .flatten()
        {
            println!("picture written to {}", p.display());
        }
    }
    Ok(())
}

fn require_shape(shape: Option<(usize, usize)>, out: &Path) -> Result<(usize, usize)> {
    shape.with_context(|| {
        format!(
            "cannot draw {}: the image shape is unknown (give --shape ROWSxCOLS)",
            out.display()
        )
    })
}

fn write_filters(
    path: &Path,
    model: &BinaryRbm,
    shape: Option<(usize, usize)>,
    max_tiles: Option<usize>,
) -> Result<()> {
    let shape = shape.or_else(|| square_shape(model.visible()));
    picture::filters_png(path, model, require_shape(shape, path)?, max_tiles)?;
    Ok(())
}

/// `(s, s)` when `d` is a perfect square (images are usually square).
fn square_shape(d: usize) -> Option<(usize, usize)> {
    let s = (d as f64).sqrt().round() as usize;
    (s * s == d).then_some((s, s))
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--shape wants ROWSxCOLS, got `{s}`"))?;
    let dim = |t: &str| -> Result<usize> {
        t.trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--shape wants ROWSxCOLS with positive sizes, got `{s}`"))
    };
    Ok((dim(a)?, dim(b)?))
}

/// `rbm sample`: generate data by Gibbs sampling from a trained model.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// Number of samples.
    #[arg(long, short = 'n', default_value_t = 100)]
    n: usize,
    /// Gibbs steps per sample.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Chain start: `random` (each unit on with probability ½), `biases` (σ(b)) or `data`.
    #[arg(long, default_value = "random")]
    start: String,
    /// Start examples for `--start data`.
    #[command(flatten)]
    data: DataArgs,
    /// Image shape `ROWSxCOLS` (default: square).
    #[arg(long)]
    shape: Option<String>,
    /// Output PNG grid of the final visible probabilities.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the samples' probabilities as CSV rows.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `rbm sample`.
pub fn sample(args: SampleArgs, common: &Common) -> Result<()> {
    if args.n == 0 {
        bail!("-n must be at least 1 (the number of samples to draw)");
    }
    check_outputs(
        &[
            ("--out", Some(args.out.as_path())),
            ("--csv", args.csv.as_deref()),
        ],
        &[args.model.as_path(), Path::new(&args.data.data)],
    )?;
    let (model, _) = modelfile::load_binary(&args.model)?;
    let shape = match &args.shape {
        Some(s) => Some(parse_shape(s)?),
        None => square_shape(model.visible()),
    };
    let start_data;
    let start = match args.start.as_str() {
        "random" => ChainStart::Random,
        "biases" => ChainStart::Biases,
        "data" => {
            start_data = args.data.load(Binarize::None, args.seed)?;
            ChainStart::Data(&start_data.examples)
        }
        other => bail!("--start must be random, biases or data, got `{other}`"),
    };
    let (probs, _) = common.in_pool(|| model.generate(args.n, args.steps, start, args.seed))??;
    picture::grid_png(&args.out, &probs, require_shape(shape, &args.out)?, None)?;
    if let Some(csv) = &args.csv {
        data::write_csv(csv, &probs, None)?;
    }
    if common.json {
        print_json(
            &json!({"samples": args.n, "steps": args.steps, "out": args.out, "csv": args.csv}),
        );
    } else {
        println!(
            "{} samples after {} Gibbs steps written to {}",
            args.n,
            args.steps,
            args.out.display()
        );
    }
    Ok(())
}

/// `rbm transform`: hidden probabilities as features, one CSV row per example.
#[derive(clap::Args, Debug)]
pub struct TransformArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Output CSV (one row of hidden probabilities per example; the label last when known).
    #[arg(long, default_value = "features.csv")]
    out: PathBuf,
}

/// Runs `rbm transform`.
pub fn transform(args: TransformArgs, common: &Common) -> Result<()> {
    check_outputs(
        &[("--out", Some(args.out.as_path()))],
        &[args.model.as_path(), Path::new(&args.data.data)],
    )?;
    let (model, _) = modelfile::load_binary(&args.model)?;
    let set = args.data.load(Binarize::None, 0)?;
    if set.dim() != model.visible() {
        bail!(
            "{} has {} values per example but the model has {} visible units",
            args.data.data,
            set.dim(),
            model.visible()
        );
    }
    let mut feats = common.in_pool(|| model.transform(&set.examples))?;
    let mut header: Vec<String> = (0..model.hidden()).map(|j| format!("h{j}")).collect();
    if let Some(labels) = &set.labels {
        // Append the label as a last row so each output line ends with it.
        let m = model.hidden();
        let mut with = rbm::Matrix::zeros(m + 1, feats.cols());
        for (j, &l) in labels.iter().enumerate() {
            with.col_mut(j)[..m].copy_from_slice(feats.col(j));
            with.col_mut(j)[m] = f32::from(l);
        }
        feats = with;
        header.push("label".into());
    }
    data::write_csv(&args.out, &feats, Some(&header))?;
    if common.json {
        print_json(&json!({"examples": set.len(), "features": model.hidden(), "out": args.out}));
    } else {
        println!(
            "{} examples × {} features written to {}",
            set.len(),
            model.hidden(),
            args.out.display()
        );
    }
    Ok(())
}

/// `rbm filters`: the weight filters as a PNG grid.
#[derive(clap::Args, Debug)]
pub struct FiltersArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// Image shape `ROWSxCOLS` (default: square).
    #[arg(long)]
    shape: Option<String>,
    /// At most this many tiles (hidden units, in order).
    #[arg(long)]
    max_tiles: Option<usize>,
    /// Output PNG.
    #[arg(long, default_value = "filters.png")]
    out: PathBuf,
}

/// Runs `rbm filters`.
pub fn filters(args: FiltersArgs, common: &Common) -> Result<()> {
    check_outputs(
        &[("--out", Some(args.out.as_path()))],
        &[args.model.as_path()],
    )?;
    let (model, _) = modelfile::load_binary(&args.model)?;
    let shape = args.shape.as_deref().map(parse_shape).transpose()?;
    write_filters(&args.out, &model, shape, args.max_tiles)?;
    if common.json {
        print_json(
            &json!({"tiles": args.max_tiles.unwrap_or(model.hidden()).min(model.hidden()), "out": args.out}),
        );
    } else {
        println!("filters written to {}", args.out.display());
    }
    Ok(())
}

/// `rbm walkthrough`: one CD-1 step on a tiny RBM with every intermediate printed
/// (REFERENCE §1 steps 1–5). The defaults are the 2 × 2 example checked in the tests.
#[derive(clap::Args, Debug)]
pub struct WalkthroughArgs {
    /// Weights, rows separated by `;`, e.g. `0.5,-0.3;0.2,0.8` (row i = visible unit i).
    #[arg(long, default_value = "0.5,-0.3;0.2,0.8", allow_hyphen_values = true)]
    w: String,
    /// Visible bias b.
    #[arg(long, default_value = "0.1,-0.1", allow_hyphen_values = true)]
    b: String,
    /// Hidden bias c.
    #[arg(long, default_value = "0,0.2", allow_hyphen_values = true)]
    c: String,
    /// The data vector v⁰.
    #[arg(long, default_value = "1,0")]
    v: String,
    /// Learning rate for W, b and c.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// κ, the learning rate for W.
    #[arg(long)]
    lr_w: Option<f64>,
    /// γ, the learning rate for b.
    #[arg(long)]
    lr_b: Option<f64>,
    /// Learning rate for c.
    #[arg(long)]
    lr_c: Option<f64>,
    /// Uniform draws for sampling h⁰, one per hidden unit (`random` draws them from --seed).
    #[arg(long, default_value = "0.3,0.9")]
    hidden_draws: String,
    /// Uniform draws for sampling v¹, one per visible unit (`random` draws them from --seed).
    #[arg(long, default_value = "0.8,0.2")]
    visible_draws: String,
    /// Seed for draws given as `random`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_vec(s: &str, what: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .with_context(|| format!("{what}: `{}` is not a number", x.trim()))
        })
        .collect()
}

fn fmt_vec(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
    format!("[{}]", parts.join(", "))
}

fn fmt_mat(m: &[Vec<f64>]) -> String {
    let rows: Vec<String> = m.iter().map(|r| fmt_vec(r)).collect();
    format!("[{}]", rows.join(", "))
}

/// Runs `rbm walkthrough`.
pub fn walkthrough_cmd(args: WalkthroughArgs, common: &Common) -> Result<()> {
    let w: Vec<Vec<f64>> = args
        .w
        .split(';')
        .map(|r| parse_vec(r, "--w"))
        .collect::<Result<_>>()?;
    let draws = |s: &str, what: &str| -> Result<Option<Vec<f64>>> {
        if s == "random" {
            Ok(None)
        } else {
            parse_vec(s, what).map(Some)
        }
    };
    let input = WalkthroughInput {
        w,
        b: parse_vec(&args.b, "--b")?,
        c: parse_vec(&args.c, "--c")?,
        v0: parse_vec(&args.v, "--v")?,
        lr_w: args.lr_w.unwrap_or(args.lr),
        lr_b: args.lr_b.unwrap_or(args.lr),
        lr_c: args.lr_c.unwrap_or(args.lr),
        hidden_draws: draws(&args.hidden_draws, "--hidden-draws")?,
        visible_draws: draws(&args.visible_draws, "--visible-draws")?,
        seed: args.seed,
    };
    let t = walkthrough(&input)?;
    if common.json {
        print_json(&json!({
            "hidden_input0": t.hidden_input0, "p0": t.p0, "positive": t.positive,
            "hidden_draws": t.hidden_draws, "h0": t.h0,
            "visible_input": t.visible_input, "pv": t.pv, "visible_draws": t.visible_draws, "v1": t.v1,
            "hidden_input1": t.hidden_input1, "p1": t.p1, "negative": t.negative,
            "delta_w": t.delta_w, "delta_b": t.delta_b, "delta_c": t.delta_c,
            "new_w": t.new_w, "new_b": t.new_b, "new_c": t.new_c,
        }));
        return Ok(());
    }
    println!(
        "One CD-1 step (REFERENCE §1), κ = {}, γ = {}, rate_c = {}",
        input.lr_w, input.lr_b, input.lr_c
    );
    println!(
        "v⁰ = {}   W = {}   b = {}   c = {}",
        fmt_vec(&input.v0),
        fmt_mat(&input.w),
        fmt_vec(&input.b),
        fmt_vec(&input.c)
    );
    println!("1. recognition:  c + v⁰ᵀW = {}", fmt_vec(&t.hidden_input0));
    println!("                 p⁰ = σ(·) = {}", fmt_vec(&t.p0));
    println!("   positive statistics v⁰p⁰ᵀ = {}", fmt_mat(&t.positive));
    println!(
        "2. sample h⁰:    draws u = {}  (u < p ⇒ 1)  h⁰ = {}",
        fmt_vec(&t.hidden_draws),
        fmt_vec(&t.h0)
    );
    println!("3. generation:   b + Wh⁰ = {}", fmt_vec(&t.visible_input));
    println!("                 p(v|h⁰) = {}", fmt_vec(&t.pv));
    println!(
        "   sample v¹:    draws u = {}  v¹ = {}",
        fmt_vec(&t.visible_draws),
        fmt_vec(&t.v1)
    );
    println!("4. recognition 2: c + v¹ᵀW = {}", fmt_vec(&t.hidden_input1));
    println!(
        "                 p¹ = σ(·) = {}  (probabilities, not samples)",
        fmt_vec(&t.p1)
    );
    println!("   negative statistics v¹p¹ᵀ = {}", fmt_mat(&t.negative));
    println!(
        "5. updates:      ΔW = κ(v⁰p⁰ᵀ − v¹p¹ᵀ) = {}",
        fmt_mat(&t.delta_w)
    );
    println!("                 Δb = γ(v⁰ − v¹) = {}", fmt_vec(&t.delta_b));
    println!(
        "                 Δc = rate_c(p⁰ − p¹) = {}",
        fmt_vec(&t.delta_c)
    );
    println!("new parameters:  W = {}", fmt_mat(&t.new_w));
    println!("                 b = {}", fmt_vec(&t.new_b));
    println!("                 c = {}", fmt_vec(&t.new_c));
    Ok(())
}
