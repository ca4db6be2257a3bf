//! End-to-end checks of the `rbm` binary: outputs, determinism, and refusal of bad input with a
//! clear message, a non-zero exit and no output file.

mod common;

use common::{assert_refused, json, rbm, s, tmpdir};
use std::path::Path;

#[test]
fn train_reports_metrics_and_same_seed_gives_identical_bytes() {
    let d = tmpdir("determinism");
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let args = |out: &Path| {
        vec![
            "train",
            "--data",
            "digits",
            "--rows",
            "0..300",
            "--hidden",
            "24",
            "--epochs",
            "2",
            "--batch",
            "50",
            "--cd",
            "2",
            "--seed",
            "7",
            "--threads",
            "2",
            "--json",
            "--out",
        ]
        .into_iter()
        .map(String::from)
        .chain([s(out).to_string()])
        .collect::<Vec<_>>()
    };
    let run = |out: &Path| {
        let a = args(out);
        json(&rbm(&a.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let ja = run(&a);
    run(&b);
    for key in ["recon_mse", "seconds", "examples_per_sec", "epochs"] {
        assert!(ja[key].is_number(), "missing {key} in {ja}");
    }
    assert_eq!(ja["epochs"], 2);
    let mse = ja["recon_mse"].as_f64().unwrap();
    assert!(mse > 0.0 && mse < 0.2, "recon_mse {mse}");
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "same seed and threads, different model bytes"
    );
}

/// The `__metadata__` of a safetensors file (8-byte little-endian header length, JSON header).
fn safetensors_metadata(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"].clone()
}

#[test]
fn model_metadata_records_every_training_setting() {
    let d = tmpdir("metadata");
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    let base = [
        "train", "--rows", "0..200", "--hidden", "6", "--epochs", "2", "-q",
    ];
    let out = rbm(&[
        &base[..],
        &[
            "--lr-decay",
            "--momentum-schedule",
            "0.4,0.8,3",
            "--sparsity",
            "0.05",
            "--binarize",
            "0.5",
            "--init-std",
            "0.02",
            "--out",
            s(&a),
        ],
    ]
    .concat());
    common::assert_ok(&out);
    let m = safetensors_metadata(&a);
    for (key, want) in [
        ("momentum", "0.4,0.8,3"),
        ("lr_decay", "true"),
        ("sparsity", "0.05"),
        ("sparsity_cost", "0.01"),
        ("binarize", "0.5"),
        ("init_std", "0.02"),
        ("epochs", "2"),
    ] {
        assert_eq!(m[key], want, "{key} in {m}");
    }
    // Defaults are recorded too: Hinton's momentum schedule, no decay, no sparsity.
    let out = rbm(&[&base[..], &["--out", s(&b)]].concat());
    common::assert_ok(&out);
    let m = safetensors_metadata(&b);
    assert_eq!(m["momentum"], "0.5,0.9,5", "{m}");
    assert_eq!(m["lr_decay"], "false", "{m}");
    assert!(m.get("sparsity").is_none(), "{m}");
}

#[test]
fn walkthrough_json_matches_hand_computation() {
    let j = json(&rbm(&["walkthrough", "--json"]));
    let p0: Vec<f64> = serde_json::from_value(j["p0"].clone()).unwrap();
    assert!((p0[0] - 0.6224593).abs() < 1e-6 && (p0[1] - 0.4750208).abs() < 1e-6);
    assert_eq!(j["h0"], serde_json::json!([1.0, 0.0]));
    assert_eq!(j["v1"], serde_json::json!([0.0, 1.0]));
    let new_c: Vec<f64> = serde_json::from_value(j["new_c"].clone()).unwrap();
    assert!((new_c[0] - 0.00726253).abs() < 1e-6 && (new_c[1] - 0.17439622).abs() < 1e-6);
    let text = rbm(&["walkthrough"]);
    assert!(text.status.success());
    let out = String::from_utf8_lossy(&text.stdout);
    for step in [
        "1. recognition",
        "2. sample h⁰",
        "3. generation",
        "4. recognition 2",
        "5. updates",
    ] {
        assert!(out.contains(step), "missing `{step}` in\n{out}");
    }
}

#[test]
fn malformed_csv_is_refused_with_file_and_line() {
    let d = tmpdir("csv");
    let out = d.join("model.safetensors");
    // (file, content, what the message must name: the file and the bad line where there is one)
    let cases = [
        ("ragged.csv", "0,1,0,1\n1,1,0,1\n0,1,1\n", ":3"),
        ("text.csv", "0,1,0,1\n1,x,0,1\n", ":2"),
        ("empty.csv", "", ""),
    ];
    for (name, content, line) in cases {
        let path = d.join(name);
        std::fs::write(&path, content).unwrap();
        let r = rbm(&[
            "train",
            "--data",
            s(&path),
            "--hidden",
            "3",
            "--epochs",
            "1",
            "--out",
            s(&out),
        ]);
        assert_refused(&r, &[name, line], &out);
    }
}

#[test]
fn malformed_idx_is_refused_with_offset() {
    let d = tmpdir("idx");
    let out = d.join("model.safetensors");
    let mut idx = vec![0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 2];
    idx.extend([0u8; 15]); // 10 images of 2×2 need 40 bytes
    let trunc = d.join("trunc-idx3-ubyte");
    std::fs::write(&trunc, &idx).unwrap();
    let r = rbm(&[
        "train",
        "--data",
        s(&trunc),
        "--hidden",
        "3",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert_refused(&r, &["trunc-idx3-ubyte", "offset"], &out);
    idx[2] = 9; // not the unsigned-byte type code
    let magic = d.join("magic-idx3-ubyte");
    std::fs::write(&magic, &idx).unwrap();
    let r = rbm(&[
        "train",
        "--data",
        s(&magic),
        "--hidden",
        "3",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert_refused(&r, &["magic-idx3-ubyte"], &out);
}

#[test]
fn wrong_model_file_is_refused() {
    let d = tmpdir("model");
    let garbage = d.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    let png = d.join("samples.png");
    let r = rbm(&["sample", "--model", s(&garbage), "--out", s(&png)]);
    assert_refused(&r, &["garbage.safetensors"], &png);
    let csv = d.join("features.csv");
    let r = rbm(&[
        "transform",
        "--model",
        s(&d.join("missing.safetensors")),
        "--out",
        s(&csv),
    ]);
    assert_refused(&r, &["missing.safetensors"], &csv);
}

#[test]
fn sample_transform_and_filters_write_their_files() {
    let d = tmpdir("outputs");
    let model = d.join("m.safetensors");
    json(&rbm(&[
        "train",
        "--rows",
        "0..200",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--json",
        "--out",
        s(&model),
    ]));
    let png = d.join("samples.png");
    json(&rbm(&[
        "sample",
        "--model",
        s(&model),
        "-n",
        "9",
        "--steps",
        "5",
        "--out",
        s(&png),
        "--json",
    ]));
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    let csv = d.join("f.csv");
    json(&rbm(&[
        "transform",
        "--model",
        s(&model),
        "--rows",
        "0..10",
        "--out",
        s(&csv),
        "--json",
    ]));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11, "header + 10 rows");
    assert_eq!(lines[1].split(',').count(), 17, "16 features + label");
    let f = d.join("filters.png");
    json(&rbm(&[
        "filters",
        "--model",
        s(&model),
        "--out",
        s(&f),
        "--json",
    ]));
    assert_eq!(&std::fs::read(&f).unwrap()[1..4], b"PNG");
}

#[test]
fn ais_every_epoch_lands_in_the_metrics_file() {
    let d = tmpdir("ais-every");
    let (model, metrics) = (d.join("m.safetensors"), d.join("m.jsonl"));
    json(&rbm(&[
        "train",
        "--rows",
        "0..300",
        "--heldout-rows",
        "4000..4100",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--ais-every",
        "1",
        "--json",
        "--metrics",
        s(&metrics),
        "--out",
        s(&model),
    ]));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        // A log-likelihood of 784 binary pixels lies in (−784 ln 2, 0].
        let ll = l["heldout_log_likelihood_ais"]
            .as_f64()
            .expect("AIS figure each epoch");
        assert!(ll < 0.0 && ll > -784.0 * std::f64::consts::LN_2, "{ll}");
        assert!(l["free_energy_gap"].is_number());
    }
    let r = rbm(&[
        "train",
        "--rows",
        "0..100",
        "--ais-every",
        "1",
        "--out",
        s(&d.join("x.safetensors")),
    ]);
    assert_refused(&r, &["held-out"], &d.join("x.safetensors"));
}
