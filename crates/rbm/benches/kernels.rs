//! Criterion benchmarks of the kernels the binary training loop spends its time in.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::{Accum, Par};
use rbm::linalg::{self, Matrix};
use rbm::random::{Purpose, Stream};
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

criterion_group!(benches, kernels);
criterion_main!(benches);
