//! AIS against exact log Z on a model trained on the shipped digits (not random weights): a
//! 784 × 20 RBM, whose 2^20 hidden states can be enumerated exactly.

use rbm::data::{self, Binarize, LoadOptions};
use rbm::eval::{self, AisParams};
use rbm::train::Trainer;
use std::ops::ControlFlow;

#[test]
fn ais_is_within_one_nat_of_exact_log_z_on_a_trained_784x20_model() {
    // 1,000 digits (a shuffled slice: the file is sorted by label), binarized at 0.5.
    let opts = LoadOptions::new()
        .shuffle(0)
        .rows(0..1000)
        .binarize(Binarize::Threshold(0.5));
    let digits = data::load("digits", &opts).unwrap();
    let cfg = rbm::train::TrainParams::new()
        .hidden(20)
        .epochs(5)
        .batch_size(20)
        .lr(0.05)
        .check()
        .unwrap();
    let (model, _) = Trainer::fit_new(cfg, &digits.examples, None, &mut |_, _| {
        ControlFlow::Continue(())
    })
    .unwrap();
    // Training moved the model far from its initialization (weights of order 0.1–1, not 0.01).
    let max_w = model.weights().iter().fold(0.0f32, |a, &w| a.max(w.abs()));
    assert!(max_w > 0.3, "model barely trained: max |W| = {max_w}");

    let exact = eval::exact_log_z(&model).unwrap();
    let params = AisParams::new().runs(100).seed(1).check().unwrap();
    let est = eval::ais_log_z(&model, &digits.examples, &params).unwrap();
    assert!(
        (est.log_z - exact).abs() < 1.0,
        "AIS {:.3} (±{:.3}) vs exact {exact:.3}",
        est.log_z,
        est.log_z_std
    );
    // The likelihood of the data follows: a trained model must beat the base rates.
    let ll = eval::average_log_likelihood(&model, &digits.examples, exact).unwrap();
    let base = eval::base_rates(&digits.examples, 1e-3);
    let base_ll = {
        let mut s = 0.0;
        for v in digits.examples.cols_iter() {
            for (&x, &b) in v.iter().zip(&base) {
                let p = rbm::linalg::sigmoid64(f64::from(b));
                s += if x == 1.0 { p.ln() } else { (1.0 - p).ln() };
            }
        }
        s / digits.examples.cols() as f64
    };
    assert!(
        ll > base_ll,
        "model LL {ll:.2} not above independent-pixel LL {base_ll:.2}"
    );
    eprintln!(
        "784×20 trained: exact log Z {exact:.3}, AIS {:.3} ± {:.3}, LL {ll:.2} vs base {base_ll:.2}",
        est.log_z, est.log_z_std
    );
}
