//! `rbm`: train, sample, inspect and evaluate Restricted Boltzmann Machines from the command line.

mod cf;
mod common;

use anyhow::Result;
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
    match command {
        Command::Cf { cmd } => cf::run(cmd, &common),
    }
}
