//! End-to-end checks of `rbm eval` and `rbm import-sklearn`.

mod common;

use common::{json, rbm, s, tmpdir};
use std::path::{Path, PathBuf};

/// A small model trained on 300 digits.
fn train_small(dir: &Path, hidden: &str) -> PathBuf {
    let model = dir.join("m.safetensors");
    let out = rbm(&[
        "train",
        "--data",
        "digits",
        "--rows",
        "0..300",
        "--hidden",
        hidden,
        "--epochs",
        "2",
        "--batch",
        "20",
        "--quiet",
        "--out",
        s(&model),
    ]);
    common::assert_ok(&out);
    model
}

#[test]
fn eval_reports_exact_and_ais_log_likelihood_consistently() {
    let d = tmpdir("exact-ais");
    let model = train_small(&d, "12");
    let exact = json(&rbm(&[
        "eval",
        "--model",
        s(&model),
        "--rows",
        "300..500",
        "--json",
    ]));
    for key in [
        "recon_mse",
        "pseudo_likelihood",
        "log_likelihood",
        "log_z",
        "log_z_std",
    ] {
        assert!(exact[key].as_f64().unwrap().is_finite(), "{key}: {exact}");
    }
    assert_eq!(exact["log_z_method"], "exact");
    assert_eq!(exact["log_z_std"], 0.0);
    assert!(exact["binarize"].as_str().unwrap().contains("0.5"));
    assert_eq!(exact["examples"], 200);
    // log p(v) = −F(v) − log Z on average.
    let ll = exact["log_likelihood"].as_f64().unwrap();
    let fe = exact["free_energy"]["mean"].as_f64().unwrap();
    let lz = exact["log_z"].as_f64().unwrap();
    assert!((ll - (-fe - lz)).abs() < 1e-9, "{ll} vs {}", -fe - lz);
    assert!(ll < 0.0 && exact["recon_mse"].as_f64().unwrap() < 0.25);

    let ais = json(&rbm(&[
        "eval",
        "--model",
        s(&model),
        "--rows",
        "300..500",
        "--log-z",
        "ais",
        "--ais-schedule",
        "sm:3000",
        "--ais-runs",
        "50",
        "--json",
    ]));
    assert_eq!(ais["log_z_method"], "ais");
    assert_eq!(
        (ais["ais_runs"].as_u64(), ais["ais_betas"].as_u64()),
        (Some(50), Some(3001))
    );
    let z = ais["log_z"].as_f64().unwrap();
    assert!((z - lz).abs() < 0.5, "AIS {z} vs exact {lz}");
    assert!(ais["log_z_std"].as_f64().unwrap() > 0.0);
    // Same seed, same estimate.
    let again = json(&rbm(&[
        "eval",
        "--model",
        s(&model),
        "--rows",
        "300..500",
        "--log-z",
        "ais",
        "--ais-schedule",
        "sm:3000",
        "--ais-runs",
        "50",
        "--json",
    ]));
    assert_eq!(again["log_z"], ais["log_z"]);

    // The human table names the method and the binarization.
    let out = rbm(&["eval", "--model", s(&model), "--rows", "300..400"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("log Z (exact)")
            && text.contains("binarized: threshold 0.5"),
        "{text}"
    );
}

#[test]
fn eval_refuses_exact_above_the_limit_and_skips_ll_of_grey_data() {
    let d = tmpdir("refuse");
    let model = train_small(&d, "12");
    let out = rbm(&[
        "eval",
        "--model",
        s(&model),
        "--rows",
        "0..50",
        "--log-z",
        "exact",
        "--exact-limit",
        "8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("2^12") && err.contains("AIS"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    let grey = json(&rbm(&[
        "eval",
        "--model",
        s(&model),
        "--rows",
        "0..50",
        "--binarize",
        "none",
        "--json",
    ]));
    assert_eq!(grey["data_binary"], false);
    assert!(grey["log_likelihood"].is_null());
    assert!(grey["pseudo_likelihood"].as_f64().unwrap().is_finite());
    let out = rbm(&["eval", "--model", s(&d.join("missing.safetensors"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.safetensors"),
        "{err}"
    );
}

#[test]
fn import_sklearn_reproduces_parameters_and_evaluates() {
    let d = tmpdir("import");
    let (m, dim) = (6usize, 784usize);
    // components_ [M, D] with distinct values, saved as numpy would.
    let comp: Vec<f32> = (0..m * dim)
        .map(|k| ((k * 37 % 101) as f32 - 50.0) * 0.013)
        .collect();
    let iv: Vec<f32> = (0..dim).map(|i| (i % 13) as f32 * -0.2).collect();
    let ih: Vec<f32> = (0..m).map(|j| j as f32 * 0.3 - 0.9).collect();
    let (pc, pv, ph) = (d.join("c.npy"), d.join("v.npy"), d.join("h.npy"));
    rbm::npy::write_npy(&pc, &[m, dim], &comp).unwrap();
    rbm::npy::write_npy(&pv, &[dim], &iv).unwrap();
    rbm::npy::write_npy(&ph, &[m], &ih).unwrap();
    let out_model = d.join("sk.safetensors");
    let r = json(&rbm(&[
        "import-sklearn",
        "--components",
        s(&pc),
        "--intercept-visible",
        s(&pv),
        "--intercept-hidden",
        s(&ph),
        "--out",
        s(&out_model),
        "--json",
    ]));
    assert_eq!(
        (r["visible"].as_u64(), r["hidden"].as_u64()),
        (Some(784), Some(6))
    );
    let (model, _) = rbm::modelfile::load_binary(&out_model).unwrap();
    for j in 0..m {
        for i in 0..dim {
            assert_eq!(model.weight(i, j).to_bits(), comp[j * dim + i].to_bits());
        }
    }
    assert_eq!(model.visible_bias(), &iv[..]);
    assert_eq!(model.hidden_bias(), &ih[..]);
    let e = json(&rbm(&[
        "eval",
        "--model",
        s(&out_model),
        "--rows",
        "0..100",
        "--json",
    ]));
    assert_eq!(e["log_z_method"], "exact");
    // Swapped intercepts: refused, naming the file, nothing written.
    let bad = d.join("bad.safetensors");
    let out = rbm(&[
        "import-sklearn",
        "--components",
        s(&pc),
        "--intercept-visible",
        s(&ph),
        "--intercept-hidden",
        s(&pv),
        "--out",
        s(&bad),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("h.npy") && err.contains("intercept_visible_"),
        "{err}"
    );
    assert!(!bad.exists());
}
