//! `rbm cf ...`: the rating RBM for collaborative filtering — train, evaluate (holdout or
//! k-fold), predict, recommend, write reproducible splits, and fetch MovieLens-100K.

use crate::common::{Common, MetricsFile, check_memory, check_outputs, print_json};
use anyhow::{Context, Result, bail};
use rbm::cf_eval::{BiasBaseline, TopN, best_n, mae, rmse, topn_chunked};
use rbm::cf_model::{CfMember, CfModel, Orientation, train_member};
use rbm::error::shown;
use rbm::rating::{
    CdSchedule, EpochReport, NegativePhase, Optimizer, PredictMethod, RatingRbmParams,
    RatingReadout,
};
use rbm::ratings::{
    IdMap, Rating, RatingFormat, RatingMatrix, RatingScale, check_disjoint, holdout, kfold,
    read_item_titles, read_ratings, take_places,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `cf` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CfCommand {
    /// Train a rating RBM (optionally evaluate on a test file or a holdout) and save it.
    Train(TrainArgs),
    /// Evaluate on random holdout splits or k folds, RBM beside the bias baseline.
    Eval(EvalArgs),
    /// Predict ratings for user-item pairs with a saved model.
    Predict(PredictArgs),
    /// Recommend the top-N unrated items for a user.
    Recommend(RecommendArgs),
    /// Write a reproducible random train/test split to two files.
    Split(SplitArgs),
    /// Download MovieLens-100K (via pip, from the recbole wheel) into the cache.
    Fetch(FetchArgs),
    /// Generate planted synthetic ratings (Netflix-shaped by default) into a binary file.
    Generate(GenerateArgs),
}

/// `rbm cf generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Users.
    #[arg(long, default_value_t = 480_189)]
    users: usize,
    /// Items.
    #[arg(long, default_value_t = 17_770)]
    items: usize,
    /// Total ratings.
    #[arg(long, default_value_t = 100_480_507)]
    ratings: u64,
    /// Rank of the planted model.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (binary `RBMR` format, accepted by every `--ratings`).
    #[arg(long)]
    out: PathBuf,
}

fn generate(a: GenerateArgs, common: &Common) -> Result<()> {
    let spec = rbm::synthetic::PlantedSpec {
        users: a.users,
        items: a.items,
        ratings: a.ratings,
        rank: a.rank,
        seed: a.seed,
    };
    let t = Instant::now();
    let set = common.in_pool(|| rbm::synthetic::generate_planted(&spec))??;
    let gen_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    rbm::synthetic::write_binary(&a.out, &set)?;
    let write_s = t.elapsed().as_secs_f64();
    if common.json {
        print_json(&json!({
            "out": a.out.display().to_string(), "users": a.users, "items": a.items,
            "ratings": a.ratings, "generate_seconds": gen_s, "write_seconds": write_s,
        }));
    } else {
        println!(
            "wrote {} ratings ({} users × {} items) to {} (generated in {gen_s:.2} s, written in {write_s:.2} s)",
            a.ratings,
            a.users,
            a.items,
            a.out.display()
        );
    }
    Ok(())
}

/// Where the ratings come from.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Ratings file (u.data, .inter, ratings.dat, ratings.csv, user,item,rating CSV/TSV),
    /// or `ml-100k` for the cached MovieLens-100K (fetched when missing).
    #[arg(long)]
    pub ratings: String,
    /// File format: auto, inter, udata, dat, csv, tsv.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Rating values, comma-separated (default: inferred from the training ratings).
    #[arg(long)]
    pub scale: Option<String>,
    /// Cache directory for `ml-100k` (default $RBM_CACHE or ~/.cache/rbm).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Model hyperparameters; unset values come from the preset.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Preset: `default` (one item-based RBM) or `best` (an ensemble of item- and user-based
    /// RBMs, the configuration that measured best on validation data; see docs/cf.md).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Hidden units M.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Cases per mini-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate for the weights.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learning rate for the biases b and c (default: same as --lr).
    #[arg(long, alias = "bias-lr")]
    pub lr_b: Option<f32>,
    /// Constant momentum (default: the schedule 0.5 → 0.9 from epoch 5, as for binary RBMs).
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Standard deviation of the initial weights.
    #[arg(long)]
    pub init_std: Option<f32>,
    /// Weight decay on W.
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// CD-T schedule: `1`, `paper` (1→3→5→9) or `epoch:T,...` such as `0:1,20:3`.
    #[arg(long)]
    pub cd: Option<String>,
    /// Use Adam instead of momentum SGD.
    #[arg(long)]
    pub adam: bool,
    /// Negative phase visible reconstruction: sample or mean-field.
    #[arg(long)]
    pub negative: Option<String>,
    /// Conditional RBM (implicit "which items were rated" input).
    #[arg(long)]
    pub conditional: bool,
    /// With --conditional: add the pairs to be predicted to the implicit sets (as the paper
    /// did with Netflix's qualifying set).
    #[arg(long)]
    pub implicit_targets: bool,
    /// Factored RBM with C factors.
    #[arg(long)]
    pub factors: Option<usize>,
    /// Orientation(s): user, item, or both (`user,item` trains one of each and averages).
    #[arg(long)]
    pub orientation: Option<String>,
    /// RBMs per orientation to average (different seeds).
    #[arg(long)]
    pub ensemble: Option<usize>,
    /// Prediction: exact or mean-field.
    #[arg(long)]
    pub predict: Option<String>,
    /// Predict the most probable rating instead of the expected value.
    #[arg(long)]
    pub argmax: bool,
    /// Fraction of the training ratings held out as validation (for monitoring and, with
    /// --patience, early stopping; never the test set).
    #[arg(long, default_value_t = 0.0)]
    pub validation: f64,
    /// Early-stopping patience in epochs (needs --validation).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-epoch metrics file (JSON lines), written as training goes so it can be followed;
    /// a run that fails keeps the epochs it finished.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
}

/// `rbm cf train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Explicit test file (same format rules as --ratings).
    #[arg(long)]
    test: Option<PathBuf>,
    /// Or hold out this fraction of --ratings as the test set.
    #[arg(long)]
    test_fraction: Option<f64>,
    /// Seed of the holdout split; `numpy:S` takes the first ratings of NumPy's
    /// `default_rng(S).permutation` instead (REFERENCE's split is `numpy:0` at 0.1).
    #[arg(long, default_value = "0")]
    split_seed: SplitSeed,
    /// Where to save the model (safetensors).
    #[arg(long, short, default_value = "model.safetensors")]
    out: PathBuf,
    #[command(flatten)]
    topn: TopnArgs,
}

/// The top-N evaluation's options (`cf train` with a test set, `cf eval`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct TopnArgs {
    /// Skip the top-N metrics.
    #[arg(long)]
    no_topn: bool,
    /// Length of the ranked lists the top-N metrics score (JSON keys `precision_at_N`, ...).
    #[arg(long, default_value_t = 10)]
    topn: usize,
    /// Test ratings at or above this value are the relevant items of the top-N metrics.
    #[arg(long, default_value_t = 4.0)]
    relevant: f32,
}

impl TopnArgs {
    /// Refuses lists of no items, and a relevance threshold that no rating of `scale` reaches
    /// (every user would drop out, leaving means over nobody).
    fn check(&self, scale: Option<&RatingScale>) -> Result<()> {
        if self.no_topn {
            return Ok(());
        }
        if self.topn == 0 {
            bail!("--topn must be at least 1 (the length of the ranked lists)");
        }
        if !self.relevant.is_finite() {
            bail!("--relevant must be a finite rating value");
        }
        if let Some(top) = scale.and_then(|s| s.values().last())
            && self.relevant > top + 1e-4
        {
            bail!(
                "--relevant {}: no rating reaches it (the highest rating value is {top}); \
                 pick a value on the scale or pass --no-topn",
                self.relevant
            );
        }
        Ok(())
    }
}

/// `rbm cf eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// k-fold cross-validation with this many folds (instead of holdouts).
    #[arg(long)]
    folds: Option<usize>,
    /// Holdout fraction for each split.
    #[arg(long, default_value_t = 0.1)]
    test_fraction: f64,
    /// Split seeds (comma-separated), one holdout per seed; `numpy:S` takes the first ratings
    /// of NumPy's `default_rng(S).permutation` (REFERENCE's split is `numpy:0`).
    #[arg(long, default_value = "0")]
    split_seeds: String,
    #[command(flatten)]
    topn: TopnArgs,
}

/// `rbm cf predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Saved model.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// File of `user item` pairs (whitespace, tab or comma separated), one per line.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Pairs on the command line: USER ITEM [USER ITEM ...].
    ids: Vec<String>,
}

/// `rbm cf recommend`.
#[derive(clap::Args, Debug)]
pub struct RecommendArgs {
    /// Saved model.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// User id (as in the ratings file); repeat it for several users.
    #[arg(long)]
    user: Vec<String>,
    /// File of user ids, one per line (its first field; blank lines skipped).
    #[arg(long)]
    users: Option<PathBuf>,
    /// Recommend for every user with ratings in the --ratings file.
    #[arg(long)]
    all_users: bool,
    /// How many items.
    #[arg(short, long, default_value_t = 10)]
    n: usize,
    /// Item file with titles (ml-100k.item, u.item, movies.dat, movies.csv).
    #[arg(long)]
    items: Option<PathBuf>,
    /// Write the lists to this file instead of printing them: tab-separated `user rank item
    /// predicted [title]` with a header line (what several users print too).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `rbm cf split`.
#[derive(clap::Args, Debug)]
pub struct SplitArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Seed; `numpy:S` takes the first ratings of NumPy's `default_rng(S).permutation`
    /// (REFERENCE's split is `numpy:0`).
    #[arg(long, default_value = "0")]
    seed: SplitSeed,
    /// Test fraction.
    #[arg(long, default_value_t = 0.1)]
    test_fraction: f64,
    /// Training part (user<TAB>item<TAB>rating).
    #[arg(long)]
    out_train: PathBuf,
    /// Test part.
    #[arg(long)]
    out_test: PathBuf,
}

/// `rbm cf fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Cache directory (default $RBM_CACHE or ~/.cache/rbm).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Runs a `cf` subcommand.
pub fn run(cmd: CfCommand, common: &Common) -> Result<()> {
    match cmd {
        CfCommand::Train(a) => train(a, common),
        CfCommand::Eval(a) => eval(a, common),
        CfCommand::Predict(a) => predict(a, common),
        CfCommand::Recommend(a) => recommend(a, common),
        CfCommand::Split(a) => split(a, common),
        CfCommand::Generate(a) => generate(a, common),
        CfCommand::Fetch(a) => {
            let dir = fetch(&cache_dir(a.cache.as_deref())?, common)?;
            if common.json {
                print_json(&json!({"dir": dir.display().to_string()}));
            } else {
                println!("MovieLens-100K is in {}", dir.display());
            }
            Ok(())
        }
    }
}

fn cache_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("RBM_CACHE") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("no $HOME: pass --cache or set RBM_CACHE")?;
    Ok(PathBuf::from(home).join(".cache").join("rbm"))
}

/// Downloads the recbole wheel with pip and extracts MovieLens-100K; returns its directory.
fn fetch(cache: &Path, common: &Common) -> Result<PathBuf> {
    let dir = cache.join("ml-100k");
    if dir.join("ml-100k.inter").is_file() && dir.join("ml-100k.item").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dl = cache.join("download");
    if !common.quiet && !common.json {
        eprintln!(
            "fetching MovieLens-100K with pip (recbole==1.2.1 wheel) into {}",
            dl.display()
        );
    }
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "recbole==1.2.1",
            "-d",
        ])
        .arg(&dl)
        .status()
        .context("could not run `python3 -m pip` (is Python with pip installed?)")?;
    if !status.success() {
        bail!(
            "`python3 -m pip download --no-deps recbole==1.2.1` failed ({status}); check network access or pass --ratings with a local file"
        );
    }
    let wheel = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("recbole-1.2.1")
                    && n.to_string_lossy().ends_with(".whl")
            })
        })
        .context("pip reported success but no recbole wheel was downloaded")?;
    let script = "import sys, zipfile, os\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        for n in ('ml-100k.inter', 'ml-100k.item'):\n\
        \x20   data = z.read('recbole/dataset_example/ml-100k/' + n)\n\
        \x20   tmp = os.path.join(sys.argv[2], '.' + n + '.tmp')\n\
        \x20   open(tmp, 'wb').write(data)\n\
        \x20   os.replace(tmp, os.path.join(sys.argv[2], n))\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(&dir)
        .status()
        .context("could not run python3 to unzip the wheel")?;
    if !status.success() {
        bail!("could not extract MovieLens-100K from {}", wheel.display());
    }
    Ok(dir)
}

fn resolve_ratings(d: &DataArgs, common: &Common) -> Result<PathBuf> {
    if d.ratings == "ml-100k" {
        let dir = fetch(&cache_dir(d.cache.as_deref())?, common)?;
        return Ok(dir.join("ml-100k.inter"));
    }
    Ok(PathBuf::from(&d.ratings))
}

fn format_of(d: &DataArgs) -> Result<RatingFormat> {
    Ok(d.format.parse()?)
}

fn parse_scale(d: &DataArgs, ratings: &[Rating]) -> Result<RatingScale> {
    match &d.scale {
        Some(s) => {
            let vals = s
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse::<f32>()
                        .with_context(|| format!("--scale: `{x}` is not a number"))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RatingScale::from_values(vals)?)
        }
        None => Ok(RatingScale::infer(ratings)?),
    }
}

/// A fully resolved model configuration.
struct Config {
    params: RatingRbmParams,
    orientations: Vec<Orientation>,
    ensemble: usize,
    implicit_targets: bool,
    predict: PredictMethod,
    readout: RatingReadout,
    validation: f64,
}

fn config(a: &ModelArgs) -> Result<Config> {
    let mut p = RatingRbmParams::new();
    let conditional = a.conditional;
    let implicit_targets = a.implicit_targets;
    // Presets were chosen on a validation split carved from the training part of
    // MovieLens-100K (see docs/cf.md): item-based RBMs beat user-based ones, and averaging
    // several (two item-based for each user-based, different seeds) helps most.
    let (mut orient, mut ensemble) = match a.preset.as_str() {
        "default" => ("item".to_string(), 1),
        "best" => ("item,user,item".to_string(), 3),
        other => bail!("unknown preset `{other}` (default, best)"),
    };
    if let Some(v) = a.hidden {
        p.hidden = v;
    }
    if let Some(v) = a.epochs {
        p.epochs = v;
    }
    if let Some(v) = a.batch_size {
        p.batch_size = v;
    }
    if let Some(v) = a.lr {
        p.learning_rate = v;
        p.bias_learning_rate = v;
    }
    if let Some(v) = a.lr_b {
        p.bias_learning_rate = v;
    }
    if let Some(v) = a.momentum {
        p.momentum = v;
        p.initial_momentum = v;
    }
    if let Some(v) = a.init_std {
        p.init_std = v;
    }
    if let Some(v) = a.weight_decay {
        p.weight_decay = v;
    }
    if let Some(s) = &a.cd {
        p.cd = CdSchedule::parse(s, p.epochs)?;
    }
    if a.adam {
        p.optimizer = Optimizer::Adam;
    }
    if let Some(s) = &a.negative {
        p.negative = match s.as_str() {
            "sample" => NegativePhase::Sample,
            "mean-field" => NegativePhase::MeanField,
            _ => bail!("--negative: expected sample or mean-field"),
        };
    }
    p.conditional = conditional;
    if a.factors.is_some() {
        p.factors = a.factors;
    }
    if let Some(o) = &a.orientation {
        orient = o.clone();
    }
    if let Some(e) = a.ensemble {
        ensemble = e;
    }
    if ensemble == 0 {
        bail!("--ensemble must be at least 1");
    }
    if implicit_targets && !conditional {
        bail!(
            "--implicit-targets adds to the conditional RBM's implicit sets: it needs --conditional"
        );
    }
    let predict = match a.predict.as_deref() {
        None => PredictMethod::MeanField,
        Some(s) => s.parse()?,
    };
    p.predict = predict;
    p.patience = a.patience;
    p.seed = a.seed;
    if a.patience.is_some() && a.validation <= 0.0 {
        bail!("--patience needs --validation FRACTION");
    }
    let orientations = orient
        .split(',')
        .map(|s| s.trim().parse::<Orientation>())
        .collect::<rbm::Result<Vec<_>>>()?;
    // Validate now so errors come before any data is read.
    p.clone().check()?;
    Ok(Config {
        params: p,
        orientations,
        ensemble,
        implicit_targets: implicit_targets && conditional,
        predict,
        readout: if a.argmax {
            RatingReadout::Argmax
        } else {
            RatingReadout::Expected
        },
        validation: a.validation,
    })
}

/// Training data in memory.
struct Data {
    users: IdMap,
    items: IdMap,
    train: Vec<Rating>,
    scale: RatingScale,
}

/// What a fit produced.
struct Fitted {
    model: CfModel,
    matrix: RatingMatrix,
    seconds_per_epoch: f64,
    epochs: usize,
    best_epoch: usize,
    /// Training ratings given, the validation part included.
    train_ratings: usize,
    validation_ratings: usize,
    valid_rmse: Option<f64>,
    valid_baseline_rmse: Option<f64>,
}

/// Fits the configured model on `data`, whose list of ratings is freed once the rating
/// matrices and the baseline are built (at 10⁸ ratings it is 1.1 GB, a quarter of the peak).
fn fit(
    cfg: &Config,
    data: Data,
    implicit_extra: &[(u32, u32)],
    common: &Common,
    metrics: &mut Option<MetricsFile>,
    label: &str,
) -> Result<Fitted> {
    let t0 = Instant::now();
    let Data {
        users,
        items,
        train: all,
        scale,
    } = data;
    let (nu, ni) = (users.len(), items.len());
    let train_ratings = all.len();
    let (train, valid) = if cfg.validation > 0.0 {
        let split = holdout(all, cfg.validation, cfg.params.seed ^ 0x5eed)?;
        check_parts("--validation", split.0.len(), split.1.len())?;
        split
    } else {
        (all, Vec::new())
    };
    // Every member's W is kept; the one in training also has its velocity (or two moments).
    let w_floats = |o: Orientation| {
        let visible = match o {
            Orientation::User => ni,
            Orientation::Item => nu,
        };
        (visible * scale.k()) as f64 * cfg.params.hidden as f64
    };
    let kept: f64 =
        cfg.orientations.iter().map(|&o| w_floats(o)).sum::<f64>() * cfg.ensemble as f64;
    let largest = cfg
        .orientations
        .iter()
        .map(|&o| w_floats(o))
        .fold(0.0, f64::max);
    check_memory(
        &format!("{label}the model ({} hidden units)", cfg.params.hidden),
        4.0 * (kept + 2.0 * largest),
    )?;
    // Validation pairs are "to be predicted" too: with implicit targets they join the sets.
    let mut implicit_extra = implicit_extra.to_vec();
    if cfg.implicit_targets {
        implicit_extra.extend(valid.iter().map(|r| (r.user, r.item)));
    }
    let n_train = train.len();
    // Consumes the ratings (freed before the by-item rows are built). On this thread, not in
    // `in_pool`: an error names the rating's file and line, which are known on the thread that
    // read them; the parallel parts use the global pool, which has --threads threads.
    let matrix = RatingMatrix::from_ratings(nu, ni, train, &scale)?;
    let baseline = BiasBaseline::fit_default(&matrix, &scale);
    common.status(format!(
        "{label}rating matrices and bias baseline for {n_train} training ratings in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let mut members = Vec::new();
    let mut secs = 0.0;
    let mut epochs = 0;
    let mut best_epoch = 0;
    let mut vr = None;
    let total = cfg.orientations.len() * cfg.ensemble;
    for (n, &o) in cfg.orientations.iter().enumerate() {
        for e in 0..cfg.ensemble {
            let mut params = cfg.params.clone();
            params.seed = cfg
                .params
                .seed
                .wrapping_add((n * cfg.ensemble + e) as u64 * 1000);
            let params = params.check()?;
            let bar = common.progress(params.epochs as u64, &format!("{label}{o:?}-RBM"));
            let mut cb = |r: &EpochReport| {
                let mut msg = format!(
                    "{label}{o:?}-RBM epoch {} T={} {:.2}s recon {:.4}",
                    r.epoch, r.t, r.seconds, r.recon_error
                );
                if let Some(v) = r.valid_rmse {
                    msg += &format!(" valid RMSE {v:.4}");
                }
                bar.step(&msg);
                if let Some(mf) = metrics.as_mut() {
                    let _ = mf.write(&json!({
                        "member": n * cfg.ensemble + e, "orientation": format!("{o:?}").to_lowercase(),
                        "epoch": r.epoch, "t": r.t, "seconds": r.seconds,
                        "recon_error": r.recon_error, "valid_rmse": r.valid_rmse,
                    }));
                }
            };
            let (member, summary): (CfMember, _) = common.in_pool(|| {
                train_member(
                    &params,
                    o,
                    &matrix,
                    scale.values(),
                    &valid,
                    &implicit_extra,
                    &mut cb,
                )
            })??;
            bar.finish();
            secs += summary.seconds_per_epoch;
            epochs = summary.epochs;
            best_epoch = summary.best_epoch;
            vr = summary.best_valid_rmse;
            members.push(member);
        }
    }
    let model = CfModel {
        members,
        values: scale.values().to_vec(),
        predict: cfg.predict,
        readout: cfg.readout,
        baseline,
        users,
        items,
        implicit_targets: cfg.implicit_targets,
    };
    // The whole model's (ensemble's) validation RMSE, beside the baseline's.
    let mut valid_baseline_rmse = None;
    if !valid.is_empty() {
        let pairs: Vec<(u32, u32)> = valid.iter().map(|r| (r.user, r.item)).collect();
        let truth: Vec<f32> = valid.iter().map(|r| r.value).collect();
        let pred = common.in_pool(|| model.predict(&matrix, &pairs))?;
        let base: Vec<f32> = pairs
            .iter()
            .map(|&(u, i)| model.baseline.predict(u, i))
            .collect();
        vr = Some(rmse(&pred.ratings, &truth));
        valid_baseline_rmse = Some(rmse(&base, &truth));
    }
    Ok(Fitted {
        model,
        matrix,
        seconds_per_epoch: secs / total as f64,
        epochs,
        best_epoch,
        train_ratings,
        validation_ratings: valid.len(),
        valid_rmse: vr,
        valid_baseline_rmse,
    })
}

/// Test metrics of a fitted model beside the baseline.
fn evaluate(
    f: &Fitted,
    test: &[Rating],
    topn: &TopnArgs,
    common: &Common,
) -> Result<serde_json::Value> {
    let pairs: Vec<(u32, u32)> = test.iter().map(|r| (r.user, r.item)).collect();
    let truth: Vec<f32> = test.iter().map(|r| r.value).collect();
    common.status(format!("evaluating on {} test ratings", pairs.len()));
    let pred = common.in_pool(|| f.model.predict(&f.matrix, &pairs))?;
    let base: Vec<f32> = pairs
        .iter()
        .map(|&(u, i)| f.model.baseline.predict(u, i))
        .collect();
    let mut out = json!({
        "rmse": rmse(&pred.ratings, &truth),
        "mae": mae(&pred.ratings, &truth),
        "baseline_rmse": rmse(&base, &truth),
        "baseline_mae": mae(&base, &truth),
        "fallback_predictions": pred.fallbacks,
        "test_ratings": test.len(),
    });
    if !topn.no_topn && f.model.implicit_targets {
        // The implicit sets held the test pairs in training and prediction. An item-based
        // member's case q then gets D_u exactly when (u, q) is held out, so a ranking would
        // be told which items are the answers.
        common.status(
            "top-N skipped: with --implicit-targets the model knows which pairs are held out",
        );
        out["topn_skipped"] = json!("implicit targets: the model knows which pairs are held out");
    } else if !topn.no_topn {
        let t0 = Instant::now();
        let (rbm_top, base_top) = common.in_pool(|| topn_metrics(f, test, topn))?;
        for (prefix, t) in [("", rbm_top), ("baseline_", base_top)] {
            for (name, value) in topn_figures(&t) {
                out[format!("{prefix}{name}_at_{}", topn.topn)] = json!(value);
            }
        }
        out["topn_users"] = json!(rbm_top.users);
        out["topn_seconds"] = json!(t0.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// The ranking figures by their JSON names (`{name}_at_N`), in the order reports print them.
fn topn_figures(t: &TopN) -> [(&'static str, f64); 5] {
    [
        ("precision", t.precision),
        ("recall", t.recall),
        ("ndcg", t.ndcg),
        ("map", t.map),
        ("hit_rate", t.hit_rate),
    ]
}

/// "precision … recall … NDCG … MAP … hit rate … (baseline a / b / c / d / e)" from a report
/// whose keys are `{prefix}{name}_at_{n}` and `{prefix}baseline_{name}_at_{n}`; `None` without
/// ranking figures.
fn topn_line(report: &serde_json::Value, prefix: &str, n: usize) -> Option<String> {
    let get = |base: &str, name: &str| report.get(format!("{prefix}{base}{name}_at_{n}"))?.as_f64();
    let names = topn_figures(&TopN::default()).map(|(n, _)| n);
    let labels = ["precision", "recall", "NDCG", "MAP", "hit rate"];
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for (name, label) in names.iter().zip(labels) {
        ours.push(format!("{label} {:.4}", get("", name)?));
        base.push(format!("{:.4}", get("baseline_", name)?));
    }
    Some(format!(
        "{}  (baseline {})",
        ours.join(" "),
        base.join(" / ")
    ))
}

/// Precision/recall/NDCG/MAP/hit rate at `topn.topn` (relevant: test ratings ≥
/// `topn.relevant`) for the model and the baseline. Every item is scored for a chunk of users
/// at a time (about [`TOPN_PAIRS`] pairs), so memory stays bounded on Netflix-sized data.
fn topn_metrics(f: &Fitted, test: &[Rating], topn: &TopnArgs) -> (TopN, TopN) {
    let ni = f.matrix.n_items;
    // Never told the test pairs (see `evaluate`): conditional members use training sets only.
    let scorer = f.model.item_scorer(&f.matrix);
    let rbm_score = |users: &[u32], _: &[Rating], out: &mut Vec<f32>| scorer.scores(users, out);
    let base_score = |users: &[u32], _: &[Rating], out: &mut Vec<f32>| {
        out.resize(users.len() * ni, 0.0);
        for (row, &u) in out.chunks_exact_mut(ni).zip(users) {
            f.model.baseline.predict_row(u, row);
        }
    };
    let per_chunk = (TOPN_PAIRS / ni.max(1)).max(1);
    let r = topn_chunked(
        &f.matrix.by_user,
        ni,
        test,
        topn.relevant,
        topn.topn,
        per_chunk,
        &[&rbm_score, &base_score],
    );
    (r[0], r[1])
}

/// (user, item) pairs scored at once by the top-N evaluation: about 80 MB of rating
/// distributions at K = 5.
const TOPN_PAIRS: usize = 4_000_000;

fn load_data(d: &DataArgs, common: &Common) -> Result<(PathBuf, IdMap, IdMap, Vec<Rating>)> {
    let path = resolve_ratings(d, common)?;
    let t0 = Instant::now();
    let (mut users, mut items) = (IdMap::new(), IdMap::new());
    let ratings = read_ratings(&path, format_of(d)?, &mut users, &mut items)?;
    if ratings.is_empty() {
        bail!("{}: no ratings", path.display());
    }
    common.status(format!(
        "read {} ratings ({} users, {} items) from {} in {:.1} s",
        ratings.len(),
        users.len(),
        items.len(),
        path.display(),
        t0.elapsed().as_secs_f64()
    ));
    Ok((path, users, items, ratings))
}

fn train(a: TrainArgs, common: &Common) -> Result<()> {
    let cfg = config(&a.model)?;
    a.topn.check(None)?;
    check_outputs(
        &[
            ("--out", Some(a.out.as_path())),
            ("--metrics", a.model.metrics.as_deref()),
        ],
        &[Some(Path::new(&a.data.ratings)), a.test.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
    )?;
    let (path, mut users, mut items, all) = load_data(&a.data, common)?;
    let (train, test) = match (&a.test, a.test_fraction) {
        (Some(_), Some(_)) => bail!("give --test or --test-fraction, not both"),
        (Some(t), None) => {
            let format = format_of(&a.data)?;
            let test = read_ratings(t, format, &mut users, &mut items)?;
            check_disjoint((&path, &all), (t, &test), format, &users, &items)?;
            (all, Some(test))
        }
        (None, Some(f)) => {
            // Split in place: at 10⁸ ratings a copy is 1.2 GB.
            let (tr, te) = a.split_seed.holdout(all, f)?;
            (tr, Some(te))
        }
        (None, None) => (all, None),
    };
    if let Some(test) = &test {
        let name = match &a.test {
            Some(t) => t.display().to_string(),
            None => "--test-fraction".to_string(),
        };
        check_parts(&name, train.len(), test.len())?;
    }
    let scale = parse_scale(&a.data, &train)?;
    if test.is_some() {
        a.topn.check(Some(&scale))?;
    }
    let data = Data {
        users,
        items,
        train,
        scale,
    };
    let extra: Vec<(u32, u32)> = match (&test, cfg.implicit_targets) {
        (Some(t), true) => t.iter().map(|r| (r.user, r.item)).collect(),
        _ => Vec::new(),
    };
    let mut metrics = MetricsFile::create(a.model.metrics.as_deref())?;
    let t0 = Instant::now();
    let fitted = fit(&cfg, data, &extra, common, &mut metrics, "")?;
    let train_secs = t0.elapsed().as_secs_f64();
    fitted.model.save(&a.out)?;
    let mut report = json!({
        "ratings": path.display().to_string(),
        "train_ratings": fitted.train_ratings,
        "users": fitted.model.users.len(),
        "items": fitted.model.items.len(),
        "K": fitted.model.values.len(),
        "members": fitted.model.members.len(),
        "epochs": fitted.epochs,
        "best_epoch": fitted.best_epoch,
        "validation_ratings": fitted.validation_ratings,
        "seconds_per_epoch": fitted.seconds_per_epoch,
        "train_seconds": train_secs,
        "valid_rmse": fitted.valid_rmse,
        "valid_baseline_rmse": fitted.valid_baseline_rmse,
        "model": a.out.display().to_string(),
    });
    if let Some(test) = &test {
        let ev = evaluate(&fitted, test, &a.topn, common)?;
        for (k, v) in ev.as_object().expect("object") {
            report[k] = v.clone();
        }
    }
    if let Some(mf) = metrics.as_mut() {
        mf.write(&json!({"final": report.clone()}))?;
    }
    if common.json {
        print_json(&report);
    } else {
        println!(
            "trained {} RBM(s) on {} ratings ({} users, {} items, K={}): {:.3} s/epoch, {:.1} s in all",
            fitted.model.members.len(),
            fitted.train_ratings - fitted.validation_ratings,
            fitted.model.users.len(),
            fitted.model.items.len(),
            fitted.model.values.len(),
            fitted.seconds_per_epoch,
            train_secs
        );
        if test.is_some() {
            println!(
                "test RMSE {:.4}  MAE {:.4}   (bias baseline RMSE {:.4}  MAE {:.4}); {} of {} predictions fell back to the baseline",
                report["rmse"].as_f64().unwrap_or(f64::NAN),
                report["mae"].as_f64().unwrap_or(f64::NAN),
                report["baseline_rmse"].as_f64().unwrap_or(f64::NAN),
                report["baseline_mae"].as_f64().unwrap_or(f64::NAN),
                report["fallback_predictions"],
                report["test_ratings"],
            );
            if let Some(line) = topn_line(&report, "", a.topn.topn) {
                println!(
                    "top-{} (ratings >= {} relevant): {line}",
                    a.topn.topn, a.topn.relevant
                );
            }
        }
        println!("model saved to {}", a.out.display());
    }
    Ok(())
}

/// Which random holdout: this crate's (a seed for its streams), or NumPy's `default_rng`
/// permutation, for splits published that way.
#[derive(Clone, Copy, Debug)]
pub enum SplitSeed {
    /// [`holdout`] with this seed.
    Rbm(u64),
    /// The first round(f·n) places of `numpy.random.default_rng(seed).permutation(n)` are the
    /// test part (in that order); the rest, in file order, the training part.
    Numpy(u64),
}

impl std::str::FromStr for SplitSeed {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .with_context(|| format!("`{s}`: expected a seed (e.g. 3) or numpy:SEED"))
        };
        match s.strip_prefix("numpy:") {
            Some(t) => Ok(SplitSeed::Numpy(num(t)?)),
            None => Ok(SplitSeed::Rbm(num(s)?)),
        }
    }
}

impl std::fmt::Display for SplitSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitSeed::Rbm(s) => write!(f, "{s}"),
            SplitSeed::Numpy(s) => write!(f, "numpy:{s}"),
        }
    }
}

impl SplitSeed {
    /// (training, test) parts of `all` with `fraction` of the ratings held out; the training
    /// part is `all` itself, the test part taken out.
    fn holdout(self, all: Vec<Rating>, fraction: f64) -> Result<(Vec<Rating>, Vec<Rating>)> {
        let seed = match self {
            SplitSeed::Rbm(seed) => return Ok(holdout(all, fraction, seed)?),
            SplitSeed::Numpy(seed) => seed,
        };
        if !(fraction > 0.0 && fraction < 1.0) {
            bail!("--test-fraction must be in (0, 1), got {fraction}");
        }
        let n_test = (fraction * all.len() as f64).round() as usize;
        let perm = rbm::random::numpy::permutation(all.len(), seed);
        Ok(take_places(all, &perm[..n_test]))
    }
}

/// A split with an empty part would report a mean over nothing (RMSE 0 or NaN) or train on
/// nothing; refuse it with the sizes.
fn check_parts(name: &str, train: usize, test: usize) -> Result<()> {
    if test == 0 {
        bail!("{name}: the test part is empty ({train} training ratings): use a larger fraction");
    }
    if train == 0 {
        bail!(
            "{name}: no training ratings are left ({test} in the test part): use a smaller fraction"
        );
    }
    Ok(())
}

fn eval(a: EvalArgs, common: &Common) -> Result<()> {
    let cfg = config(&a.model)?;
    a.topn.check(None)?;
    let (_, users, items, all) = load_data(&a.data, common)?;
    if let Some(k) = a.folds
        && !(2..=all.len()).contains(&k)
    {
        bail!(
            "--folds {k}: need at least 2 folds and at most one per rating ({} ratings)",
            all.len()
        );
    }
    let seeds: Vec<SplitSeed> = match a.folds {
        Some(_) => Vec::new(),
        None => a
            .split_seeds
            .split(',')
            .map(|s| s.parse().context("--split-seeds"))
            .collect::<Result<_>>()?,
    };
    let count = a.folds.unwrap_or(seeds.len());
    let mut all = all;
    // One split at a time: each is a copy of the ratings (1.2 GB at 10⁸), and the last takes
    // them. Every seed's parts have the same sizes, and k ≤ n folds are never empty, so if
    // `check_parts` refuses a split it refuses the first, before the metrics file is opened.
    let mut split = |n: usize| -> Result<(String, Vec<Rating>, Vec<Rating>)> {
        let src = if n + 1 == count {
            std::mem::take(&mut all)
        } else {
            all.clone()
        };
        let (name, (train, test)) = match a.folds {
            Some(k) => (format!("fold {n}"), kfold(src, k, n, a.model.seed)?),
            None => (
                format!("seed {}", seeds[n]),
                seeds[n].holdout(src, a.test_fraction)?,
            ),
        };
        check_parts(&name, train.len(), test.len())?;
        Ok((name, train, test))
    };
    let mut first = Some(split(0)?);
    let mut metrics = MetricsFile::create(a.model.metrics.as_deref())?;
    let mut rows = Vec::new();
    for n in 0..count {
        let (name, train, test) = match first.take() {
            Some(s) => s,
            None => split(n)?,
        };
        let scale = parse_scale(&a.data, &train)?;
        a.topn.check(Some(&scale))?;
        let data = Data {
            users: users.clone(),
            items: items.clone(),
            train,
            scale,
        };
        let extra: Vec<(u32, u32)> = if cfg.implicit_targets {
            test.iter().map(|r| (r.user, r.item)).collect()
        } else {
            Vec::new()
        };
        let fitted = fit(
            &cfg,
            data,
            &extra,
            common,
            &mut metrics,
            &format!("{name}: "),
        )?;
        let mut ev = evaluate(&fitted, &test, &a.topn, common)?;
        ev["split"] = json!(name);
        ev["seconds_per_epoch"] = json!(fitted.seconds_per_epoch);
        if !common.json {
            println!(
                "{name}: RMSE {:.4} MAE {:.4} | baseline RMSE {:.4} MAE {:.4} | {:.3} s/epoch | fallbacks {}",
                ev["rmse"].as_f64().unwrap_or(f64::NAN),
                ev["mae"].as_f64().unwrap_or(f64::NAN),
                ev["baseline_rmse"].as_f64().unwrap_or(f64::NAN),
                ev["baseline_mae"].as_f64().unwrap_or(f64::NAN),
                fitted.seconds_per_epoch,
                ev["fallback_predictions"]
            );
        }
        if let Some(mf) = metrics.as_mut() {
            mf.write(&json!({"split_result": ev.clone()}))?;
        }
        rows.push(ev);
    }
    let mean = |key: &str| -> Option<f64> {
        let v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
        (v.len() == rows.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut summary = json!({"splits": rows.len()});
    for key in [
        "rmse",
        "mae",
        "baseline_rmse",
        "baseline_mae",
        "seconds_per_epoch",
    ]
    .into_iter()
    .map(String::from)
    .chain(["", "baseline_"].iter().flat_map(|prefix| {
        topn_figures(&TopN::default()).map(|(name, _)| format!("{prefix}{name}_at_{}", a.topn.topn))
    })) {
        if let Some(m) = mean(&key) {
            summary[format!("mean_{key}")] = json!(m);
        }
    }
    summary["fallback_predictions"] = json!(
        rows.iter()
            .filter_map(|r| r["fallback_predictions"].as_u64())
            .sum::<u64>()
    );
    if common.json {
        summary["per_split"] = json!(rows);
        print_json(&summary);
    } else {
        println!(
            "mean over {} splits: RMSE {:.4} MAE {:.4} | baseline RMSE {:.4} MAE {:.4}",
            rows.len(),
            summary["mean_rmse"].as_f64().unwrap_or(f64::NAN),
            summary["mean_mae"].as_f64().unwrap_or(f64::NAN),
            summary["mean_baseline_rmse"].as_f64().unwrap_or(f64::NAN),
            summary["mean_baseline_mae"].as_f64().unwrap_or(f64::NAN),
        );
        if let Some(line) = topn_line(&summary, "mean_", a.topn.topn) {
            println!("top-{}: {line}", a.topn.topn);
        }
    }
    Ok(())
}

/// Loads a saved model and re-reads its training ratings with the model's id maps.
fn load_model(model: &Path, d: &DataArgs, common: &Common) -> Result<(CfModel, RatingMatrix)> {
    let m = CfModel::load(model)?;
    let matrix = training_matrix(&m, model, d, common)?;
    Ok((m, matrix))
}

/// The ratings the model `m` (read from `model`) conditions on, with its id maps and scale.
fn training_matrix(
    m: &CfModel,
    model: &Path,
    d: &DataArgs,
    common: &Common,
) -> Result<RatingMatrix> {
    if d.scale.is_some() && parse_scale(d, &[])?.values() != m.values.as_slice() {
        bail!(
            "--scale differs from the rating values {} was trained with ({}); leave it out",
            model.display(),
            m.values
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let path = resolve_ratings(d, common)?;
    let (mut users, mut items) = (m.users.clone(), m.items.clone());
    let ratings = read_ratings(&path, format_of(d)?, &mut users, &mut items)?;
    if users.len() != m.users.len() || items.len() != m.items.len() {
        bail!(
            "{} has users or items the model {} was not trained on; pass the model's training ratings",
            path.display(),
            model.display()
        );
    }
    let scale = RatingScale::from_values(m.values.clone())?;
    Ok(RatingMatrix::from_ratings(
        users.len(),
        items.len(),
        ratings,
        &scale,
    )?)
}

fn predict(a: PredictArgs, common: &Common) -> Result<()> {
    let (m, matrix) = load_model(&a.model, &a.data, common)?;
    let mut toks: Vec<(String, String)> = Vec::new();
    if let Some(p) = &a.pairs {
        for (line, f) in id_lines(p)? {
            match &f[..] {
                [u, i, ..] => toks.push((u.clone(), i.clone())),
                _ => bail!("{}:{line}: expected `user item`", p.display()),
            }
        }
    }
    if !a.ids.len().is_multiple_of(2) {
        bail!("pairs on the command line come as USER ITEM [USER ITEM ...]");
    }
    for c in a.ids.chunks(2) {
        toks.push((c[0].clone(), c[1].clone()));
    }
    if toks.is_empty() {
        bail!("no pairs to predict: give USER ITEM pairs or --pairs FILE");
    }
    // Unknown tokens map past the known ids so they fall back to the baseline.
    let unknown_u = m.users.len() as u32;
    let unknown_i = m.items.len() as u32;
    let pairs: Vec<(u32, u32)> = toks
        .iter()
        .map(|(u, i)| {
            (
                m.users.get(u).unwrap_or(unknown_u),
                m.items.get(i).unwrap_or(unknown_i),
            )
        })
        .collect();
    let pred = common.in_pool(|| m.predict(&matrix, &pairs))?;
    if common.json {
        let rows: Vec<_> = toks
            .iter()
            .zip(&pred.ratings)
            .map(|((u, i), r)| json!({"user": u, "item": i, "rating": r}))
            .collect();
        print_json(&json!({"predictions": rows, "fallback_predictions": pred.fallbacks}));
    } else {
        for ((u, i), r) in toks.iter().zip(&pred.ratings) {
            println!("{u}\t{i}\t{r:.4}");
        }
        if pred.fallbacks > 0 {
            eprintln!(
                "{} prediction(s) fell back to the bias baseline (user or item unseen in training)",
                pred.fallbacks
            );
        }
    }
    Ok(())
}

/// The lines of a file of ids (`cf predict --pairs`, `cf recommend --users`) that hold any,
/// with their line numbers: fields split at commas and whitespace, a byte-order mark (which
/// would join the first id) skipped.
fn id_lines(p: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut out = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|e| {
            let at = e.valid_up_to();
            anyhow::anyhow!(
                "{}:{}: not UTF-8 text (byte 0x{:02X} at column {})",
                p.display(),
                n + 1,
                line[at],
                at + 1
            )
        })?;
        let fields: Vec<String> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if !fields.is_empty() {
            out.push((n + 1, fields));
        }
    }
    Ok(out)
}

/// The users `cf recommend` was asked about, as the model's ids, in the order given.
fn recommend_users(a: &RecommendArgs, m: &CfModel, matrix: &RatingMatrix) -> Result<Vec<u32>> {
    let sources =
        usize::from(!a.user.is_empty()) + usize::from(a.users.is_some()) + usize::from(a.all_users);
    if sources != 1 {
        bail!("name the users with one of --user ID (repeatable), --users FILE or --all-users");
    }
    if a.all_users {
        // The model's id map also holds users seen only in a test file.
        return Ok((0..m.users.len() as u32)
            .filter(|&u| matrix.by_user.has_entries(u as usize))
            .collect());
    }
    let known = |tok: &str, place: String| {
        m.users.get(tok).with_context(|| {
            format!(
                "{place}user `{}` is not in the model's training data",
                shown(tok)
            )
        })
    };
    match &a.users {
        None => a.user.iter().map(|u| known(u, String::new())).collect(),
        Some(p) => {
            let out = id_lines(p)?
                .into_iter()
                .map(|(line, f)| known(&f[0], format!("{}:{line}: ", p.display())))
                .collect::<Result<Vec<_>>>()?;
            if out.is_empty() {
                bail!("{}: no user ids", p.display());
            }
            Ok(out)
        }
    }
}

/// Each user's `n` best unrated items (rated by someone in training) with their predicted
/// ratings, best first (ties by item id). Every candidate is scored for a chunk of users at a
/// time (about [`TOPN_PAIRS`] pairs), so memory stays bounded for `--all-users` at any scale.
fn top_items(m: &CfModel, matrix: &RatingMatrix, users: &[u32], n: usize) -> Vec<Vec<(u32, f32)>> {
    let rated: Vec<bool> = (0..matrix.n_items)
        .map(|i| matrix.by_item.has_entries(i))
        .collect();
    // Recommendations never see held-out pairs: conditional members use training sets only.
    let scorer = m.item_scorer(matrix);
    let ni = matrix.n_items;
    let per_chunk = (TOPN_PAIRS / ni.max(1)).max(1);
    let mut out = Vec::with_capacity(users.len());
    let mut scores = Vec::new();
    for chunk in users.chunks(per_chunk) {
        scorer.scores(chunk, &mut scores);
        for row in scores.chunks_exact(ni) {
            // The user's own items score −∞.
            let skip = |i: u32| !rated[i as usize] || row[i as usize] == f32::NEG_INFINITY;
            out.push(best_n(row, skip, n));
        }
    }
    out
}

fn recommend(a: RecommendArgs, common: &Common) -> Result<()> {
    if a.n == 0 {
        bail!("-n must be at least 1 (the number of items to recommend)");
    }
    if let Some(out) = &a.out {
        let inputs: Vec<&Path> = [
            Some(a.model.as_path()),
            Some(Path::new(&a.data.ratings)),
            a.users.as_deref(),
            a.items.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        check_outputs(&[("--out", Some(out.as_path()))], &inputs)?;
    }
    let m = CfModel::load(&a.model)?;
    let matrix = training_matrix(&m, &a.model, &a.data, common)?;
    let users = recommend_users(&a, &m, &matrix)?;
    let lists = common.in_pool(|| top_items(&m, &matrix, &users, a.n))?;
    let titles = match &a.items {
        Some(p) => read_item_titles(p, &m.items)?,
        None => Default::default(),
    };
    let title = |i: u32| titles.get(&i).cloned();
    let item_json =
        |&(i, r): &(u32, f32)| json!({"item": m.items.token(i), "title": title(i), "predicted": r});
    // One user on the terminal: a ranked list; several, or a file: one row per item.
    if a.out.is_none() && a.user.len() == 1 {
        let top = &lists[0];
        if common.json {
            let rows: Vec<_> = top.iter().map(item_json).collect();
            print_json(&json!({"user": a.user[0], "recommendations": rows}));
        } else {
            for (rank, &(i, r)) in top.iter().enumerate() {
                match title(i) {
                    Some(t) => println!("{:2}. {r:.3}  {}  {t}", rank + 1, m.items.token(i)),
                    None => println!("{:2}. {r:.3}  {}", rank + 1, m.items.token(i)),
                }
            }
        }
        return Ok(());
    }
    let write_rows = |w: &mut dyn std::io::Write| -> std::io::Result<()> {
        let with_titles = a.items.is_some();
        writeln!(
            w,
            "user\trank\titem\tpredicted{}",
            if with_titles { "\ttitle" } else { "" }
        )?;
        for (&u, top) in users.iter().zip(&lists) {
            for (rank, &(i, r)) in top.iter().enumerate() {
                write!(
                    w,
                    "{}\t{}\t{}\t{r:.4}",
                    m.users.token(u),
                    rank + 1,
                    m.items.token(i)
                )?;
                if with_titles {
                    write!(w, "\t{}", title(i).unwrap_or_default())?;
                }
                writeln!(w)?;
            }
        }
        Ok(())
    };
    match &a.out {
        Some(out) => {
            rbm::atomic::write_atomic(out, |w| write_rows(w))?;
            let rows: usize = lists.iter().map(Vec::len).sum();
            if common.json {
                print_json(
                    &json!({"out": out.display().to_string(), "users": users.len(), "rows": rows}),
                );
            } else {
                println!(
                    "{rows} recommendations for {} users written to {}",
                    users.len(),
                    out.display()
                );
            }
        }
        None if common.json => {
            let rows: Vec<_> = users
                .iter()
                .zip(&lists)
                .map(|(&u, top)| {
                    let items: Vec<_> = top.iter().map(item_json).collect();
                    json!({"user": m.users.token(u), "recommendations": items})
                })
                .collect();
            print_json(&json!({"users": rows}));
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            write_rows(&mut w)?;
            std::io::Write::flush(&mut w)?;
        }
    }
    Ok(())
}

fn split(a: SplitArgs, common: &Common) -> Result<()> {
    check_outputs(
        &[
            ("--out-train", Some(a.out_train.as_path())),
            ("--out-test", Some(a.out_test.as_path())),
        ],
        &[Path::new(&a.data.ratings)],
    )?;
    let (_, users, items, all) = load_data(&a.data, common)?;
    let (train, test) = a.seed.holdout(all, a.test_fraction)?;
    check_parts("the split", train.len(), test.len())?;
    let write = |path: &Path, rs: &[Rating]| -> Result<()> {
        rbm::atomic::write_atomic(path, |w| {
            use std::io::Write;
            for r in rs {
                writeln!(
                    w,
                    "{}\t{}\t{}",
                    users.token(r.user),
                    items.token(r.item),
                    r.value
                )?;
            }
            Ok(())
        })?;
        Ok(())
    };
    write(&a.out_train, &train)?;
    write(&a.out_test, &test)?;
    if common.json {
        print_json(&json!({"train": train.len(), "test": test.len()}));
    } else {
        println!(
            "{} training and {} test ratings written",
            train.len(),
            test.len()
        );
    }
    Ok(())
}
