//! `rbm eval` (reconstruction error, pseudo-likelihood, free energies, exact or AIS log-likelihood,
//! the intractability timing) and `rbm import-sklearn` (scikit-learn BernoulliRBM → model file).

use crate::binary_cmd::DataArgs;
use crate::common::{Common, check_outputs, print_json};
use anyhow::{Context, Result, bail};
use rbm::data::Binarize;
use rbm::eval::{self, AisParams, BetaSchedule};
use rbm::{modelfile, npy};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// How `rbm eval` gets log Z.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogZMethod {
    /// Exact when the smaller layer has at most `--exact-limit` units, AIS otherwise.
    Auto,
    /// Enumerate the smaller layer (refused above `--exact-limit` units).
    Exact,
    /// Annealed importance sampling.
    Ais,
    /// Skip log Z and the log-likelihood.
    None,
}

/// `rbm eval`: evaluate a binary RBM on a data set.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model file (from `rbm train` or `rbm import-sklearn`).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// A second data set (e.g. the training set) for the free-energy gap
    /// `mean F(data) − mean F(reference)`; AIS then fits its base rates to it.
    #[arg(long)]
    reference: Option<String>,
    /// Rows of the reference data, e.g. `0..4000`.
    #[arg(long)]
    reference_rows: Option<String>,
    /// How to get log Z.
    #[arg(long, value_enum, default_value_t = LogZMethod::Auto)]
    log_z: LogZMethod,
    /// Largest smaller layer enumerated exactly (2^N states).
    #[arg(long, default_value_t = eval::DEFAULT_EXACT_LIMIT)]
    exact_limit: usize,
    /// AIS runs.
    #[arg(long, default_value_t = 100)]
    ais_runs: usize,
    /// AIS β schedule: `sm` (Salakhutdinov & Murray, 14,500 steps), `sm:N`, `linear:N`, `geometric:N`.
    #[arg(long, default_value = "sm")]
    ais_schedule: String,
    /// Seed for AIS, the pseudo-likelihood's bit flips and stochastic binarization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time the naive sum over all (v, h) and the smaller-layer enumeration, and extrapolate
    /// how long each would take in full (the second source's intractability exercise).
    #[arg(long)]
    time_enumeration: bool,
    /// Pairs of the naive sum to time with `--time-enumeration`.
    #[arg(long, default_value_t = 1000)]
    timing_pairs: u64,
}

fn describe_binarize(b: &Option<String>) -> String {
    match b.as_deref() {
        None => "threshold 0.5 (default; --binarize none|T|sample to change)".into(),
        Some(s) => match s.parse::<Binarize>() {
            Ok(Binarize::None) => "none".into(),
            Ok(Binarize::Threshold(t)) => format!("threshold {t}"),
            Ok(Binarize::Sample { .. }) => "stochastic (sample)".into(),
            Err(_) => s.to_string(),
        },
    }
}

/// Runs `rbm eval`.
pub fn run_eval(args: EvalArgs, common: &Common) -> Result<()> {
    let (model, _meta) = modelfile::load_binary(&args.model)?;
    let schedule = BetaSchedule::parse(&args.ais_schedule)?;
    let ais_params = AisParams::new()
        .runs(args.ais_runs)
        .schedule(schedule)
        .seed(args.seed)
        .check()?;
    let data = args.data.load(Binarize::Threshold(0.5), args.seed)?;
    if data.dim() != model.visible() {
        bail!(
            "the data `{}` has {} values per example, the model {} has {} visible units",
            args.data.data,
            data.dim(),
            args.model.display(),
            model.visible()
        );
    }
    if data.is_empty() {
        bail!("the data `{}` has no examples", args.data.data);
    }
    let reference = match (&args.reference, &args.reference_rows) {
        (None, None) => None,
        (spec, rows) => {
            let r = DataArgs {
                data: spec.clone().unwrap_or_else(|| args.data.data.clone()),
                rows: rows.clone(),
                binarize: args.data.binarize.clone(),
                shuffle: args.data.shuffle,
            }
            .load(Binarize::Threshold(0.5), args.seed)?;
            if r.dim() != model.visible() || r.is_empty() {
                bail!(
                    "the reference data has {} examples of {} values; the model needs {} values",
                    r.len(),
                    r.dim(),
                    model.visible()
                );
            }
            Some(r)
        }
    };
    let binarize = describe_binarize(&args.data.binarize);
    let binary = eval::is_binary(&data.examples);
    let k = model.visible().min(model.hidden());
    let method = match args.log_z {
        LogZMethod::Auto if k <= args.exact_limit => LogZMethod::Exact,
        LogZMethod::Auto => LogZMethod::Ais,
        m => m,
    };
    if method == LogZMethod::Exact && k > args.exact_limit {
        // Refuse before any other computation (this returns the TooLarge error at once).
        eval::exact_log_z_with_limit(&model, args.exact_limit)?;
    }

    let report = common.in_pool(|| -> Result<Value> {
        let t0 = Instant::now();
        let recon = model.reconstruction_mse(&data.examples);
        let pl = eval::pseudo_likelihood(&model, &data.examples, args.seed)?;
        let pl_mean = pl.iter().sum::<f64>() / pl.len() as f64;
        let fe = eval::free_energy_stats(&model, &data.examples)?;
        let gap = match &reference {
            Some(r) => Some(fe.mean - eval::free_energy_stats(&model, &r.examples)?.mean),
            None => None,
        };
        let mut out = json!({
            "model": args.model,
            "visible": model.visible(),
            "hidden": model.hidden(),
            "data": args.data.data,
            "rows": args.data.rows,
            "examples": data.len(),
            "binarize": binarize,
            "data_binary": binary,
            "recon_mse": recon,
            "pseudo_likelihood": pl_mean,
            "free_energy": {"mean": fe.mean, "std": fe.std, "min": fe.min, "max": fe.max},
            "free_energy_gap": gap,
        });
        let lz_start = Instant::now();
        let log_z = match method {
            LogZMethod::Exact => {
                let z = eval::exact_log_z_with_limit(&model, args.exact_limit)?;
                out["log_z"] = json!(z);
                out["log_z_method"] = json!("exact");
                out["log_z_std"] = json!(0.0);
                out["log_z_lo"] = json!(z);
                out["log_z_hi"] = json!(z);
                Some(z)
            }
            LogZMethod::Ais => {
                let base = reference.as_ref().map_or(&data.examples, |r| &r.examples);
                let est = eval::ais_log_z(&model, base, &ais_params)?;
                out["log_z"] = json!(est.log_z);
                out["log_z_method"] = json!("ais");
                out["log_z_std"] = json!(est.log_z_std);
                // -inf (3σ above Ẑ) has no JSON number: null.
                out["log_z_lo"] = if est.log_z_lo.is_finite() {
                    json!(est.log_z_lo)
                } else {
                    Value::Null
                };
                out["log_z_hi"] = json!(est.log_z_hi);
                out["ais_runs"] = json!(est.runs);
                out["ais_betas"] = json!(est.betas);
                out["ais_schedule"] = json!(args.ais_schedule);
                out["ais_effective_runs"] = json!(est.effective_runs());
                out["ais_seed"] = json!(args.seed);
                Some(est.log_z)
            }
            LogZMethod::None | LogZMethod::Auto => {
                out["log_z"] = Value::Null;
                out["log_z_method"] = Value::Null;
                out["log_z_std"] = Value::Null;
                None
            }
        };
        out["log_z_seconds"] = json!(lz_start.elapsed().as_secs_f64());
        out["log_likelihood"] = match log_z {
            Some(z) if binary => json!(eval::average_log_likelihood(&model, &data.examples, z)?),
            _ => Value::Null,
        };
        if let (Some(z), Some(lo), Some(hi)) =
            (log_z, out["log_z_lo"].as_f64(), out["log_z_hi"].as_f64())
            && let Some(ll) = out["log_likelihood"].as_f64()
        {
            // A larger Z means a smaller likelihood: the interval flips.
            out["log_likelihood_lo"] = json!(ll - (hi - z));
            out["log_likelihood_hi"] = json!(ll + (z - lo));
        }
        if args.time_enumeration {
            let t = eval::time_enumeration(&model, args.timing_pairs, 1 << 16);
            out["enumeration_timing"] = json!({
                "naive_pairs_timed": t.naive_pairs_timed,
                "naive_seconds": t.naive_seconds,
                "naive_log10_pairs": t.naive_log10_pairs,
                "naive_log10_seconds": t.naive_log10_seconds,
                "naive_extrapolated": eval::describe_duration(t.naive_log10_seconds),
                "smart_units": t.smart_units,
                "smart_states_timed": t.smart_states_timed,
                "smart_seconds": t.smart_seconds,
                "smart_log10_seconds": t.smart_log10_seconds,
                "smart_extrapolated": eval::describe_duration(t.smart_log10_seconds),
            });
            out["enumeration_timing_text"] = json!(t.to_string());
        }
        out["seconds"] = json!(t0.elapsed().as_secs_f64());
        out["threads"] = json!(common.threads());
        Ok(out)
    })??;
    if common.json {
        print_json(&report);
    } else {
        print_table(&report, binary);
    }
    Ok(())
}

fn print_table(r: &Value, binary: bool) {
    let f = |k: &str| r[k].as_f64();
    println!(
        "model {} ({} visible × {} hidden) on {} examples of `{}`{}",
        r["model"].as_str().unwrap_or("?"),
        r["visible"],
        r["hidden"],
        r["examples"],
        r["data"].as_str().unwrap_or("?"),
        r["rows"]
            .as_str()
            .map(|s| format!(" rows {s}"))
            .unwrap_or_default()
    );
    println!("binarized: {}", r["binarize"].as_str().unwrap_or("?"));
    let row = |name: &str, value: String| println!("  {name:<34} {value}");
    row(
        "reconstruction MSE",
        format!("{:.5}", f("recon_mse").unwrap_or(f64::NAN)),
    );
    row(
        "pseudo-likelihood (sklearn)",
        format!("{:.3}", f("pseudo_likelihood").unwrap_or(f64::NAN)),
    );
    let fe = &r["free_energy"];
    row(
        "free energy mean ± std",
        format!(
            "{:.3} ± {:.3}  [min {:.3}, max {:.3}]",
            fe["mean"].as_f64().unwrap_or(f64::NAN),
            fe["std"].as_f64().unwrap_or(f64::NAN),
            fe["min"].as_f64().unwrap_or(f64::NAN),
            fe["max"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    if let Some(g) = f("free_energy_gap") {
        row("free-energy gap (data − reference)", format!("{g:.3}"));
    }
    match r["log_z_method"].as_str() {
        Some("exact") => row(
            "log Z (exact)",
            format!("{:.4}", f("log_z").unwrap_or(f64::NAN)),
        ),
        Some("ais") => row(
            "log Z (AIS)",
            format!(
                "{:.4} ± {:.4}  (±3σ: [{}, {:.4}]; {} runs × {} βs, ESS {:.1})",
                f("log_z").unwrap_or(f64::NAN),
                f("log_z_std").unwrap_or(f64::NAN),
                f("log_z_lo").map_or("-inf".to_string(), |x| format!("{x:.4}")),
                f("log_z_hi").unwrap_or(f64::NAN),
                r["ais_runs"],
                r["ais_betas"],
                f("ais_effective_runs").unwrap_or(f64::NAN)
            ),
        ),
        _ => row("log Z", "skipped".into()),
    }
    match f("log_likelihood") {
        Some(ll) => {
            let interval = match (f("log_likelihood_lo"), f("log_likelihood_hi")) {
                (Some(lo), Some(hi)) if lo != hi => format!("  (±3σ: [{lo:.3}, {hi:.3}])"),
                _ => String::new(),
            };
            row(
                "average log-likelihood (nats)",
                format!("{ll:.3}{interval}"),
            );
        }
        None if !binary => row(
            "average log-likelihood",
            "skipped: the data are not binary (use --binarize)".into(),
        ),
        None => {}
    }
    row(
        "time",
        format!(
            "{:.2} s (log Z {:.2} s, {} threads)",
            f("seconds").unwrap_or(f64::NAN),
            f("log_z_seconds").unwrap_or(f64::NAN),
            r["threads"]
        ),
    );
    if let Some(t) = r["enumeration_timing_text"].as_str() {
        println!("\n{t}");
    }
}

/// `rbm import-sklearn`: convert a scikit-learn BernoulliRBM into a model file.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// `components_` saved with `np.save` (shape [n_components, n_features]).
    #[arg(long, requires_all = ["intercept_visible", "intercept_hidden"], conflicts_with = "safetensors")]
    components: Option<PathBuf>,
    /// `intercept_visible_` saved with `np.save` (shape [n_features]).
    #[arg(long)]
    intercept_visible: Option<PathBuf>,
    /// `intercept_hidden_` saved with `np.save` (shape [n_components]).
    #[arg(long)]
    intercept_hidden: Option<PathBuf>,
    /// One safetensors file with tensors `components_`, `intercept_visible_`, `intercept_hidden_`.
    #[arg(long)]
    safetensors: Option<PathBuf>,
    /// Where to write the model.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `rbm import-sklearn`.
pub fn run_import(args: ImportArgs, common: &Common) -> Result<()> {
    check_outputs(
        &[("--out", Some(args.out.as_path()))],
        &[
            &args.components,
            &args.intercept_visible,
            &args.intercept_hidden,
            &args.safetensors,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect::<Vec<_>>(),
    )?;
    let (model, source) = match (&args.safetensors, &args.components) {
        (Some(st), None) => (
            npy::import_sklearn_safetensors(st)?,
            st.display().to_string(),
        ),
        (None, Some(c)) => {
            let (v, h) = match (&args.intercept_visible, &args.intercept_hidden) {
                (Some(v), Some(h)) => (v, h),
                _ => bail!("--components needs --intercept-visible and --intercept-hidden"),
            };
            (npy::import_sklearn(c, v, h)?, c.display().to_string())
        }
        _ => bail!(
            "give either --safetensors FILE or --components/--intercept-visible/--intercept-hidden"
        ),
    };
    let mut meta = BTreeMap::new();
    meta.insert(
        "imported_from".to_string(),
        "scikit-learn BernoulliRBM".to_string(),
    );
    meta.insert("source".to_string(), source);
    modelfile::save_binary(&args.out, &model, &meta)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if common.json {
        print_json(&json!({
            "visible": model.visible(),
            "hidden": model.hidden(),
            "out": args.out,
        }));
    } else {
        println!(
            "imported a {} × {} scikit-learn BernoulliRBM into {}",
            model.visible(),
            model.hidden(),
            args.out.display()
        );
    }
    Ok(())
}
