//! Criterion benchmarks of the kernels the binary training loop spends its time in, a rating
//! RBM epoch on MovieLens-100K-shaped synthetic data (no download, criterion's statistics: the
//! steady way to compare two builds of the rating kernels), and the fork-join cost that made
//! the training loops move from rayon to `rbm::team`; and rating prediction (`predict`).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use faer::{Accum, Par};
use rbm::linalg::{self, Matrix};
use rbm::random::{Purpose, Stream, StreamKey};
use rbm::rating::{CdSchedule, PredictMethod, RatingRbm, RatingRbmParams, TrainData};
use rbm::synthetic::{PlantedSpec, generate_planted};
use rbm::train::{Momentum, TrainParams, Trainer};
use std::hint::black_box;
use std::ops::ControlFlow;

fn kernels(c: &mut Criterion) {
    let (d, m, b) = (784, 500, 100);
    let mut g = c.benchmark_group("elementwise");
    g.throughput(Throughput::Elements((m * b) as u64));
    let bias = vec![0.1f32; m];
    let mut x: Vec<f32> = (0..m * b).map(|i| (i % 97) as f32 * 0.1 - 5.0).collect();
    g.bench_function("sigmoid_bias 500x100", |bench| {
        bench.iter(|| {
            for col in x.chunks_mut(m) {
                linalg::sigmoid_bias_in_place(black_box(col), &bias);
            }
        })
    });
    let bias_all = vec![0.1f32; m * b];
    g.bench_function("sigmoid_bias 50000 in one call", |bench| {
        bench.iter(|| linalg::sigmoid_bias_in_place(black_box(&mut x), &bias_all))
    });
    let mut s = Stream::new(0, Purpose::Sample, 0, 0, 0);
    let mut p = vec![0.3f32; m * b];
    g.bench_function("bernoulli 500x100", |bench| {
        bench.iter(|| {
            p.fill(0.3);
            s.bernoulli_in_place(black_box(&mut p));
        })
    });
    // As the Gibbs passes draw: one set of lanes per block of 63 rows, column after column.
    let mut lanes = StreamKey::new(0, Purpose::Sample, 0, 0).lanes(0);
    g.bench_function("bernoulli 500x100, lanes, 63-row blocks", |bench| {
        bench.iter(|| {
            p.fill(0.3);
            for col in p.chunks_mut(m) {
                for part in col.chunks_mut(m.div_ceil(8)) {
                    lanes.bernoulli_in_place(black_box(part));
                }
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("gemm");
    g.throughput(Throughput::Elements((2 * d * m * b) as u64));
    let wt = Matrix::from_fn(m, d, |i, j| ((i + j) % 7) as f32 * 0.01);
    let v = Matrix::from_fn(d, b, |i, j| ((i * j) % 2) as f32);
    let mut h = Matrix::zeros(m, b);
    for (name, par) in [("seq", Par::Seq), ("2 threads", linalg::par(2))] {
        g.bench_function(format!("Wt·V 500x784x100 {name}"), |bench| {
            bench.iter(|| linalg::gemm(h.view_mut(), Accum::Replace, wt.view(), v.view(), 1.0, par))
        });
    }
    g.bench_function("Wt·V 500x784x100 faer's own 2-thread kernel", |bench| {
        bench.iter(|| {
            faer::linalg::matmul::matmul(
                h.view_mut(),
                Accum::Replace,
                wt.view(),
                v.view(),
                1.0,
                linalg::par(2),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("train");
    g.sample_size(10);
    let data = Matrix::from_fn(d, 1000, |i, j| ((i * 31 + j * 17) % 5 == 0) as u8 as f32);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("CD-1 epoch 784→500, 1000 examples, batch 100", |bench| {
        bench.iter(|| {
            let cfg = TrainParams::new()
                .hidden(m)
                .epochs(1)
                .momentum(Momentum::constant(0.0))
                .monitor_examples(1)
                .check()
                .unwrap();
            Trainer::fit_new(cfg, &data, None, &mut |_, _| ControlFlow::Continue(())).unwrap()
        })
    });
    g.finish();
}

/// Five CD-1 epochs of the default rating RBM (M = 100, batch 100, momentum) on planted data of
/// MovieLens-100K's shape (943 users, 1,682 items, 100,000 ratings), user-based, on one and
/// two threads; the model's initialization is outside the timing, the first (cold) epoch's
/// buffers inside it. Planted item popularity is flatter than MovieLens's (54 % of the ratings
/// of a batch go 16 at a time across SIMD lanes, against 72 %), so its epochs run ~1.5× longer
/// than `rbm bench`'s.
fn rating(c: &mut Criterion) {
    let set = generate_planted(&PlantedSpec {
        users: 943,
        items: 1682,
        ratings: 100_000,
        rank: 8,
        seed: 0,
    })
    .unwrap();
    let params = RatingRbmParams::new()
        .hidden(100)
        .epochs(5)
        .batch_size(100)
        .cd(CdSchedule::constant(1))
        .check()
        .unwrap();
    let data = TrainData::new(&set.by_user, set.n_items, &set.values);
    let model = RatingRbm::init(&params, &set.by_user, set.n_items, set.values.len());
    let mut g = c.benchmark_group("rating");
    g.sample_size(20);
    g.throughput(Throughput::Elements(500_000));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let name = format!("5 CD-1 epochs, ML-100K shape, batch 100, {threads} thread(s)");
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || model.clone(),
                |m| pool.install(|| m.train(&params, &data, &mut |_| {}).unwrap()),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // Prediction (test and validation RMSE, top-N): 100,000 random (case, unit) pairs, user-
    // and item-based, on two threads.
    let mut g = c.benchmark_group("predict");
    g.sample_size(20);
    g.throughput(Throughput::Elements(100_000));
    let by_item = set.by_user.transpose(set.n_items);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (name, cases, d) in [
        ("user-based", &set.by_user, set.n_items),
        ("item-based", &by_item, set.n_users),
    ] {
        let model = RatingRbm::init(&params, cases, d, set.values.len());
        let mut s = Stream::new(1, Purpose::Data, 0, 0, 0);
        let pairs: Vec<(u32, u32)> = (0..100_000)
            .map(|_| (s.below(cases.rows()) as u32, s.below(d) as u32))
            .collect();
        g.bench_function(
            format!("100,000 pairs, ML-100K shape, {name}, mean field"),
            |b| {
                b.iter(|| {
                    pool.install(|| {
                        model.predict_pairs(cases, None, &pairs, PredictMethod::MeanField)
                    })
                })
            },
        );
    }
    g.finish();
}

/// Busy-waits `us` microseconds (a stand-in for a short parallel step).
fn spin(us: u64) {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// Two 50 µs tasks, and 50 + 150 µs, joined by rayon and by the training team (2 threads):
/// the time above 50 µs (150 µs) is the fork-join cost. On the 2-core VM: rayon +25 µs
/// (+100 µs), the team +2–5 µs.
fn fork_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("fork-join");
    g.sample_size(20);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (a, b) in [(50, 50), (50, 150)] {
        g.bench_function(format!("rayon::join {a} µs + {b} µs"), |bench| {
            pool.install(|| bench.iter(|| rayon::join(|| spin(a), || spin(b))))
        });
        rbm::team::with_team(2, |team| {
            g.bench_function(format!("Team::join {a} µs + {b} µs"), |bench| {
                bench.iter(|| team.join(|| spin(a), || spin(b)))
            });
        });
    }
    g.finish();
}

criterion_group!(benches, kernels, rating, fork_join);
criterion_main!(benches);
