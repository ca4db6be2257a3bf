//! `rbm bench`: throughput of the training loops next to the machine's measured f32 GEMM peak,
//! so figures are comparable across machines and runs (the fraction of peak is the honest one).

use crate::common::{Common, print_json};
use anyhow::Result;
use faer::Accum;
use rbm::Matrix;
use rbm::linalg::{self, current_par};
use rbm::train::{Momentum, TrainParams, Trainer};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::time::Instant;

/// `rbm bench`: measure training throughput against the GEMM peak.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Epochs timed per binary case (the median epoch is reported).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Also sweep hidden sizes 100..4096 and batch sizes 10..1000 for CD-1.
    #[arg(long)]
    sweep: bool,
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

/// GFLOP/s of a large square f32 product with the same matrix library and thread pool.
fn gemm_peak() -> f64 {
    let n = 2048;
    let a = Matrix::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 17) as f32 * 0.01);
    let b = Matrix::from_fn(n, n, |i, j| ((i * 5 + j) % 13) as f32 * 0.01);
    let mut c = Matrix::zeros(n, n);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        linalg::gemm(
            c.view_mut(),
            Accum::Replace,
            a.view(),
            b.view(),
            1.0,
            current_par(),
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Times one binary configuration: median seconds per epoch over `epochs` epochs.
fn binary_case(
    data: &Matrix,
    hidden: usize,
    batch: usize,
    cd: usize,
    pcd: bool,
    epochs: usize,
) -> Result<(f64, f64)> {
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
    let per_epoch = median(secs);
    let (d, m, n) = (data.rows() as f64, hidden as f64, data.cols() as f64);
    // Per example: positive pass, k×(down + up) passes, and the fused gradient (2 products).
    let flops =
        2.0 * d * m * n * (1.0 + 2.0 * cd as f64 + 2.0) + if pcd { 2.0 * d * m * n } else { 0.0 };
    Ok((per_epoch, flops / per_epoch / 1e9))
}

/// Runs `rbm bench`.
pub fn bench(args: BenchArgs, common: &Common) -> Result<()> {
    let digits = rbm::data::digits()?;
    let report = common.in_pool(|| -> Result<Value> {
        let peak = gemm_peak();
        let data = &digits.examples;
        let n = data.cols() as f64;
        let mut cases = Vec::new();
        let mut add = |name: String, hidden, batch, cd, pcd| -> Result<(f64, f64)> {
            let (s, gf) = binary_case(data, hidden, batch, cd, pcd, args.epochs)?;
            cases.push(json!({
                "case": name, "hidden": hidden, "batch": batch, "cd_k": cd, "persistent": pcd,
                "seconds_per_epoch": s, "examples_per_sec": n / s, "gflops": gf, "peak_fraction": gf / peak,
            }));
            Ok((s, gf))
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
        Ok(json!({
            "threads": rayon::current_num_threads(),
            "gemm_peak_gflops": peak,
            "binary_examples_per_sec": n / s1,
            "binary_seconds_per_epoch": s1,
            "binary_gflops": gf1,
            "binary_peak_fraction": gf1 / peak,
            "peak_rss_bytes": peak_rss_bytes(),
            "cases": cases,
        }))
    })??;
    if common.json {
        print_json(&report);
    } else {
        println!(
            "threads {}   f32 GEMM peak (2048³, faer): {:.1} GFLOP/s",
            report["threads"],
            report["gemm_peak_gflops"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{:<36} {:>10} {:>12} {:>9} {:>7}",
            "case", "s/epoch", "examples/s", "GFLOP/s", "peak"
        );
        for c in report["cases"].as_array().into_iter().flatten() {
            println!(
                "{:<36} {:>10.4} {:>12.0} {:>9.1} {:>6.0}%",
                c["case"].as_str().unwrap_or(""),
                c["seconds_per_epoch"].as_f64().unwrap_or(0.0),
                c["examples_per_sec"].as_f64().unwrap_or(0.0),
                c["gflops"].as_f64().unwrap_or(0.0),
                100.0 * c["peak_fraction"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "peak memory: {:.1} MiB",
            report["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
    }
    Ok(())
}
