//! `rbm`: train, sample, inspect and evaluate Restricted Boltzmann Machines from the command line.

mod bench;
mod binary_cmd;
mod cf;
mod common;
mod eval_cmd;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use common::Common;

/// Restricted Boltzmann Machines: binary RBMs on images, rating RBMs for recommendation.
#[derive(Parser, Debug)]
#[command(name = "rbm", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a binary RBM (CD-k or persistent CD) and save it.
    Train(binary_cmd::TrainArgs),
    /// Generate data by Gibbs sampling from a model.
    Sample(binary_cmd::SampleArgs),
    /// Hidden probabilities of each example as features (CSV).
    Transform(binary_cmd::TransformArgs),
    /// Draw a model's weight filters as a PNG grid.
    Filters(binary_cmd::FiltersArgs),
    /// One CD-1 step on a tiny RBM with every intermediate printed.
    Walkthrough(binary_cmd::WalkthroughArgs),
    /// Measure training throughput against the machine's GEMM peak.
    Bench(bench::BenchArgs),
    /// Evaluate a model: reconstruction error, pseudo-likelihood, free energies, log-likelihood
    /// (exact log Z or AIS).
    Eval(eval_cmd::EvalArgs),
    /// Convert a scikit-learn BernoulliRBM (`.npy` files or safetensors) into a model file.
    ImportSklearn(eval_cmd::ImportArgs),
    /// Rating RBMs for collaborative filtering (recommendation).
    Cf {
        #[command(subcommand)]
        cmd: cf::CfCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let Cli { common, command } = cli;
    // Work outside `Common::in_pool` (building rating matrices, scoring) uses the global pool:
    // --threads sizes it too.
    rayon::ThreadPoolBuilder::new()
        .num_threads(common.threads())
        .build_global()
        .context("could not start the thread pool")?;
    match command {
        Command::Train(a) => binary_cmd::train(a, &common),
        Command::Sample(a) => binary_cmd::sample(a, &common),
        Command::Transform(a) => binary_cmd::transform(a, &common),
        Command::Filters(a) => binary_cmd::filters(a, &common),
        Command::Walkthrough(a) => binary_cmd::walkthrough_cmd(a, &common),
        Command::Bench(a) => bench::bench(a, &common),
        Command::Eval(a) => eval_cmd::run_eval(a, &common),
        Command::ImportSklearn(a) => eval_cmd::run_import(a, &common),
        Command::Cf { cmd } => cf::run(cmd, &common),
    }
}
