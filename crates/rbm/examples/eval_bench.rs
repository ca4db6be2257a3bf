//! Timing of the evaluation hot paths: exact log Z on a 784 × 20 model and AIS on 784 × 500.
//! `cargo run --release --example eval_bench [runs] [steps]`

use rbm::BinaryRbm;
use rbm::eval::{AisParams, BetaSchedule, ais_log_z, exact_log_z};
use rbm::linalg::Matrix;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(100);
    let steps = args.get(1).copied();
    // Data-like base: 13% of pixels on.
    let data = Matrix::from_fn(784, 200, |i, j| {
        f32::from(u8::from((i * 31 + j * 17) % 100 < 13))
    });
    let small = BinaryRbm::init(784, 20, 0.1, Some(&data), 1);
    let t = Instant::now();
    let z = exact_log_z(&small).unwrap();
    println!(
        "exact log Z 784×20: {z:.4} in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let big = BinaryRbm::init(784, 500, 0.05, Some(&data), 2);
    let schedule = match steps {
        Some(n) => BetaSchedule::SmShaped(n),
        None => BetaSchedule::SalakhutdinovMurray,
    };
    let p = AisParams::new()
        .runs(runs)
        .schedule(schedule)
        .check()
        .unwrap();
    let t = Instant::now();
    let est = ais_log_z(&big, &data, &p).unwrap();
    println!(
        "AIS 784×500, {runs} runs × {} βs: log Z {:.3} ± {:.3} in {:.2} s",
        est.betas,
        est.log_z,
        est.log_z_std,
        t.elapsed().as_secs_f64()
    );
}
