//! End-to-end checks of `rbm cf`: train with a test file (JSON keys), save, predict, recommend,
//! and a typed error for a malformed ratings file.

use std::path::Path;
use std::process::Command;

fn rbm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbm"))
}

/// Two taste groups over 30 items; the rating depends on group and item (deterministic).
fn write_data(dir: &Path) {
    let mut train = String::new();
    let mut test = String::new();
    for u in 0..60u32 {
        for i in 0..30u32 {
            if (u * 7 + i * 3) % 5 < 2 {
                continue;
            }
            let r = if (u % 2 == 0) == (i % 3 == 0) {
                5
            } else {
                1 + (i % 3)
            };
            let line = format!("user{u}\titem{i}\t{r}\n");
            if (u + i) % 10 == 0 {
                test.push_str(&line);
            } else {
                train.push_str(&line);
            }
        }
    }
    test.push_str("newcomer\titem1\t3\n");
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("test.tsv"), test).unwrap();
}

#[test]
fn train_predict_recommend() {
    let dir = std::env::temp_dir().join(format!("rbm-cf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_data(&dir);
    let model = dir.join("m.safetensors");
    let out = rbm()
        .args([
            "--threads",
            "2",
            "--json",
            "cf",
            "train",
            "--hidden",
            "10",
            "--epochs",
            "50",
        ])
        .arg("--ratings")
        .arg(dir.join("train.tsv"))
        .arg("--test")
        .arg(dir.join("test.tsv"))
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "rmse",
        "mae",
        "baseline_rmse",
        "seconds_per_epoch",
        "fallback_predictions",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["fallback_predictions"], 1, "the newcomer falls back");
    assert!(
        v["rmse"].as_f64().unwrap() < v["baseline_rmse"].as_f64().unwrap(),
        "{v}"
    );

    let out = rbm()
        .args(["--json", "cf", "predict", "--model"])
        .arg(&model)
        .arg("--ratings")
        .arg(dir.join("train.tsv"))
        .args(["user0", "item3", "user1", "item3", "nobody", "item3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert_eq!(v["fallback_predictions"], 1);
    // Group taste: user0 (even) rates item3 (i % 3 == 0) 5, user1 rates it 1.
    assert!(preds[0]["rating"].as_f64().unwrap() > preds[1]["rating"].as_f64().unwrap());

    let out = rbm()
        .args([
            "--json",
            "cf",
            "recommend",
            "--user",
            "user0",
            "-n",
            "3",
            "--model",
        ])
        .arg(&model)
        .arg("--ratings")
        .arg(dir.join("train.tsv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recommendations"].as_array().unwrap().len(), 3);

    std::fs::write(dir.join("bad.tsv"), "a\tb\t3\nc\td\tx\n").unwrap();
    let out = rbm()
        .args(["cf", "train", "--ratings"])
        .arg(dir.join("bad.tsv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.tsv:2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
