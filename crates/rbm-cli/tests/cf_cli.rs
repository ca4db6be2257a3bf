//! End-to-end checks of `rbm cf`: train with a test file (JSON keys), save, predict, recommend,
//! and a typed error for a malformed ratings file.

mod common;

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
    let v = common::json(&out);
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
    for key in ["precision", "recall", "ndcg", "map", "hit_rate"] {
        for prefix in ["", "baseline_"] {
            let x = v[format!("{prefix}{key}_at_10")].as_f64();
            assert!(
                x.is_some_and(|x| (0.0..=1.0).contains(&x)),
                "{prefix}{key} in {v}"
            );
        }
    }
    // A model told which pairs are held out (implicit targets) gets no ranking metrics.
    let out = rbm()
        .args(["--json", "cf", "train", "--hidden", "4", "--epochs", "2"])
        .args(["--conditional", "--implicit-targets", "--ratings"])
        .arg(dir.join("train.tsv"))
        .arg("--test")
        .arg(dir.join("test.tsv"))
        .arg("-o")
        .arg(dir.join("cond.safetensors"))
        .output()
        .unwrap();
    let c = common::json(&out);
    assert!(c["rmse"].as_f64().is_some(), "{c}");
    assert!(c.get("precision_at_10").is_none(), "{c}");
    assert!(c["topn_skipped"].as_str().is_some(), "{c}");
    assert!(
        v["rmse"].as_f64().unwrap() < v["baseline_rmse"].as_f64().unwrap(),
        "{v}"
    );

    // Without --json, the long steps are announced on stderr (read, prepared, evaluated);
    // --quiet silences them.
    let text = |quiet: bool| {
        let mut cmd = rbm();
        cmd.args(["cf", "train", "--hidden", "4", "--epochs", "1", "--no-topn"]);
        if quiet {
            cmd.arg("-q");
        }
        let out = cmd
            .arg("--ratings")
            .arg(dir.join("train.tsv"))
            .arg("--test")
            .arg(dir.join("test.tsv"))
            .arg("-o")
            .arg(dir.join("m2.safetensors"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = text(false);
    let n_train = std::fs::read_to_string(dir.join("train.tsv"))
        .unwrap()
        .lines()
        .count();
    for want in [
        format!("read {n_train} ratings (60 users, 30 items)"),
        format!("rating matrices and bias baseline for {n_train} training ratings"),
        "evaluating on ".to_string(),
    ] {
        assert!(err.contains(&want), "no `{want}` in {err}");
    }
    assert!(!text(true).contains("read "));

    let out = rbm()
        .args(["--json", "cf", "predict", "--model"])
        .arg(&model)
        .arg("--ratings")
        .arg(dir.join("train.tsv"))
        .args(["user0", "item3", "user1", "item3", "nobody", "item3"])
        .output()
        .unwrap();
    let v = common::json(&out);
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
    let v = common::json(&out);
    assert_eq!(v["recommendations"].as_array().unwrap().len(), 3);
    check_recommendations_for_many_users(&dir, &model);

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

/// `cf recommend --all-users --out` (and `--users FILE`) against `cf predict`: every listed
/// item is one the user did not rate in training, with the rating `cf predict` gives the pair,
/// best first, and no other candidate item of that user is predicted higher than the last one
/// listed.
fn check_recommendations_for_many_users(dir: &Path, model: &Path) {
    let train_p = dir.join("train.tsv");
    let train = std::fs::read_to_string(&train_p).unwrap();
    let rated = |u: &str, i: &str| train.lines().any(|l| l.starts_with(&format!("{u}\t{i}\t")));
    let recs = dir.join("recs.tsv");
    let out = rbm()
        .args([
            "--json",
            "cf",
            "recommend",
            "--all-users",
            "-n",
            "4",
            "--model",
        ])
        .arg(model)
        .arg("--ratings")
        .arg(&train_p)
        .arg("--out")
        .arg(&recs)
        .output()
        .unwrap();
    let v = common::json(&out);
    assert_eq!(
        (v["users"].as_u64(), v["rows"].as_u64()),
        (Some(60), Some(240))
    );
    let text = std::fs::read_to_string(&recs).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("user\trank\titem\tpredicted"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 240);
    // Predict every pair of two users' items in one call, to compare with their lists.
    let users = ["user0", "user7"];
    let items: Vec<String> = (0..30).map(|i| format!("item{i}")).collect();
    let mut args = Vec::new();
    for u in users {
        for i in &items {
            args.push(u.to_string());
            args.push(i.clone());
        }
    }
    let out = rbm()
        .args(["--json", "cf", "predict", "--model"])
        .arg(model)
        .arg("--ratings")
        .arg(&train_p)
        .args(&args)
        .output()
        .unwrap();
    let preds = common::json(&out)["predictions"]
        .as_array()
        .unwrap()
        .clone();
    for (k, u) in users.iter().enumerate() {
        let predicted = |i: &str| {
            preds[k * 30 + items.iter().position(|x| x == i).unwrap()]["rating"]
                .as_f64()
                .unwrap()
        };
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == *u).collect();
        assert_eq!(mine.len(), 4, "{u}");
        let mut last = f64::INFINITY;
        for (rank, r) in mine.iter().enumerate() {
            assert_eq!(r[1], (rank + 1).to_string());
            assert!(!rated(u, r[2]), "{u} rated {} in training", r[2]);
            let p: f64 = r[3].parse().unwrap();
            assert!((p - predicted(r[2])).abs() < 1e-4, "{u} {}: {p}", r[2]);
            assert!(p <= last + 1e-9, "{u}: not best first");
            last = p;
        }
        for i in &items {
            if !rated(u, i) && !mine.iter().any(|r| r[2] == i) {
                assert!(predicted(i) <= last + 1e-4, "{u}: {i} beats the list");
            }
        }
    }
    // The same lists for users named in a file (any order), and refusals.
    let list = dir.join("who.txt");
    let recommend_listed = |names: &[u8]| {
        std::fs::write(&list, names).unwrap();
        rbm()
            .args(["cf", "recommend", "-n", "4", "--model"])
            .arg(model)
            .arg("--ratings")
            .arg(&train_p)
            .arg("--users")
            .arg(&list)
            .output()
            .unwrap()
    };
    let out = recommend_listed(b"user7\n\nuser0\n");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let want: Vec<String> = ["user7", "user0"]
        .iter()
        .flat_map(|u| {
            rows.iter()
                .filter(move |r| r[0] == *u)
                .map(|r| r.join("\t"))
        })
        .collect();
    assert_eq!(printed.lines().skip(1).collect::<Vec<_>>(), want);
    // Refusals name the line: an unknown user, a long id (cut short), a byte that is not
    // UTF-8 (Latin-1 é).
    let long = format!("u{}", "9".repeat(500));
    for (names, needle) in [
        (
            b"user7\nstranger\n".to_vec(),
            "who.txt:2: user `stranger`".to_string(),
        ),
        (
            format!("user7\n{long}\n").into_bytes(),
            format!("who.txt:2: user `{}…` is not", &long[..60]),
        ),
        (
            b"user7\nuser\xe9\n".to_vec(),
            "who.txt:2: not UTF-8 text (byte 0xE9 at column 5)".to_string(),
        ),
    ] {
        let out = recommend_listed(&names);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&needle), "{err}");
    }
}

/// `--topn N --relevant R` reach the ranking metrics: precision, recall and hit rate at 3
/// with 3s and 5s relevant (the data has no 4s, so the default threshold would keep only the 5s),
/// recomputed from `cf recommend --all-users -n 3` lists and the test file.
#[test]
fn topn_length_and_relevance_threshold_are_honoured() {
    let dir = std::env::temp_dir().join(format!("rbm-cf-topn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_data(&dir);
    let (train, test, model) = (
        dir.join("train.tsv"),
        dir.join("test.tsv"),
        dir.join("m.st"),
    );
    // Only users with training ratings get `cf recommend` lists: drop the newcomer.
    let kept: String = std::fs::read_to_string(&test)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("newcomer"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&test, kept).unwrap();
    let out = rbm()
        .args(["--json", "cf", "train", "--hidden", "10", "--epochs", "20"])
        .args(["--topn", "3", "--relevant", "3", "--ratings"])
        .arg(&train)
        .arg("--test")
        .arg(&test)
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    let v = common::json(&out);
    assert!(v.get("precision_at_10").is_none(), "{v}");
    let recs = dir.join("recs.tsv");
    let out = rbm()
        .args(["cf", "recommend", "--all-users", "-n", "3", "--model"])
        .arg(&model)
        .arg("--ratings")
        .arg(&train)
        .arg("--out")
        .arg(&recs)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let lists = std::fs::read_to_string(&recs).unwrap();
    let tests = std::fs::read_to_string(&test).unwrap();
    let (mut users, mut precision, mut recall, mut hits) = (0.0, 0.0, 0.0, 0.0);
    let mut seen = std::collections::BTreeSet::new();
    let rel = |g: &[&str]| g[2].parse::<f32>().unwrap() >= 3.0;
    for line in tests.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if !rel(&f) || !seen.insert(f[0]) {
            continue;
        }
        let relevant: Vec<&str> = tests
            .lines()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|g| g[0] == f[0] && rel(g))
            .map(|g| g[1])
            .collect();
        let top: Vec<&str> = lists
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|g| g[0] == f[0])
            .map(|g| g[2])
            .collect();
        assert_eq!(top.len(), 3, "{}", f[0]);
        let h = top.iter().filter(|i| relevant.contains(i)).count();
        users += 1.0;
        precision += h as f64 / 3.0;
        recall += h as f64 / relevant.len() as f64;
        hits += f64::from(u8::from(h > 0));
    }
    assert!(users > 5.0);
    assert_eq!(v["topn_users"].as_f64(), Some(users));
    let close = |key: &str, want: f64| {
        let got = v[key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{key}: {got} against {want}");
    };
    close("precision_at_3", precision / users);
    close("recall_at_3", recall / users);
    close("hit_rate_at_3", hits / users);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generated_binary_ratings_feed_every_reader() {
    let dir = std::env::temp_dir().join(format!("rbm-cf-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("planted.rbmr");
    let out = rbm()
        .args([
            "--json", "cf", "generate", "--users", "200", "--items", "60",
        ])
        .args(["--ratings", "4000", "--seed", "3", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let j = common::json(&out);
    assert_eq!(j["ratings"], 4000);
    // Header 36 + 5 values × 4, 201 offsets × 8, 5 bytes per rating.
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(len, 56 + 201 * 8 + 5 * 4000);
    // `--ratings` reads the binary file like any text file; planted user and item biases make
    // the bias baseline clearly better than guessing (ratings spread over 1..5, sd ≈ 1.1).
    let out = rbm()
        .args(["--json", "--quiet", "cf", "eval", "--ratings"])
        .arg(&file)
        .args(["--split-seeds", "1", "--epochs", "15"])
        .output()
        .unwrap();
    let j = common::json(&out);
    let (rbm_rmse, base) = (
        j["mean_rmse"].as_f64().unwrap(),
        j["mean_baseline_rmse"].as_f64().unwrap(),
    );
    assert!(base < 1.05, "baseline RMSE {base}");
    assert!(
        rbm_rmse.is_finite() && rbm_rmse < 1.5,
        "RBM RMSE {rbm_rmse}"
    );
    // `rbm bench --netflix FILE` times the file's epochs and reports their median.
    let out = rbm()
        .args(["--json", "--quiet", "bench", "--skip-binary", "--netflix"])
        .arg(&file)
        .args(["--netflix-epochs", "3"])
        // An empty cache: the MovieLens-100K case is skipped with a note.
        .env("RBM_CACHE", dir.join("no-cache"))
        .output()
        .unwrap();
    let j = common::json(&out);
    let epochs = common::sorted_floats(&j["netflix_epochs"]);
    assert_eq!(epochs.len(), 3, "{j}");
    assert_eq!(j["netflix_epoch_seconds"].as_f64(), Some(epochs[1]), "{j}");
    assert_eq!(j["netflix_ratings"], 4000);
    // Prediction with the trained model: a tenth of the ratings as random pairs.
    assert_eq!(j["netflix_predict_pairs"], 400);
    let (ps, pr) = (
        j["netflix_predict_seconds"].as_f64().unwrap(),
        j["netflix_predict_pairs_per_sec"].as_f64().unwrap(),
    );
    assert!(ps > 0.0 && (pr * ps / 400.0 - 1.0).abs() < 1e-9, "{j}");
    // The epoch's peak memory is taken before prediction, so it is not above the later one.
    let (train_peak, predict_peak) = (
        j["netflix_peak_rss_bytes"].as_u64().unwrap(),
        j["netflix_predict_peak_rss_bytes"].as_u64().unwrap(),
    );
    assert!(train_peak > 0 && train_peak <= predict_peak, "{j}");
    let rate = j["netflix_ratings_per_sec"].as_f64().unwrap();
    assert!((rate * epochs[1] / 4000.0 - 1.0).abs() < 1e-9, "{j}");
    // Its work per epoch (KM + 6M per rating, 6(KM + K) per unit and mini-batch), GFLOP/s from
    // the median epoch, and the share of the GEMM peak, measured here although the binary cases
    // (which measure it otherwise) were skipped.
    let (units, batches) = (
        j["netflix_units"].as_f64().unwrap(),
        j["netflix_batches"].as_f64().unwrap(),
    );
    let flops = j["netflix_flops_per_epoch"].as_f64().unwrap();
    assert_eq!(flops, 4000.0 * 1100.0 + units * batches * 3030.0, "{j}");
    let gflops = j["netflix_gflops"].as_f64().unwrap();
    assert!((gflops * 1e9 * epochs[1] / flops - 1.0).abs() < 1e-9, "{j}");
    let peak = j["gemm_peak_gflops"].as_f64().unwrap();
    let fraction = j["netflix_peak_fraction"].as_f64().unwrap();
    assert!(
        peak > 0.0 && (fraction * peak / gflops - 1.0).abs() < 1e-9,
        "{j}"
    );
    // A truncated file is a typed error naming the byte offset.
    let bytes = std::fs::read(&file).unwrap();
    let bad = dir.join("bad.rbmr");
    std::fs::write(&bad, &bytes[..100]).unwrap();
    let out = rbm()
        .args(["cf", "eval", "--ratings"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.rbmr") && err.contains("offset"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_reports_the_rating_case_and_thread_speedups() {
    // The rating case on a small ratings file, with the 1-thread rerun: every reported figure
    // must be consistent with the others (ratings/s = ratings / epoch seconds; speed-up = the
    // ratio of the two epoch times).
    let dir = std::env::temp_dir().join(format!("rbm-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_data(&dir);
    let out = rbm()
        .args([
            "--threads",
            "2",
            "bench",
            "--json",
            "--skip-binary",
            "--skip-netflix",
        ])
        .args(["--cf-epochs", "3", "--scaling", "--sweep", "--ratings"])
        .arg(dir.join("train.tsv"))
        .output()
        .unwrap();
    let r = common::json(&out);
    let ml = &r["ml100k"];
    let ratings = ml["ratings"].as_f64().unwrap();
    let secs = r["ml100k_epoch_seconds"].as_f64().unwrap();
    assert!(ratings > 500.0 && secs > 0.0, "{r}");
    let rate = ml["ratings_per_sec"].as_f64().unwrap();
    assert!((rate * secs / ratings - 1.0).abs() < 1e-9, "{r}");
    let user = common::sorted_floats(&ml["user_epochs"]);
    assert_eq!(user.len(), 3);
    // The work counted per epoch, by hand for K = 5 and M = 100: KM + 6M = 1,100 per rating,
    // and 6(KM + K) = 3,030 per unit (the file's 30 items) in each of the epoch's mini-batches
    // (one: 60 users); GFLOP/s from the median epoch, and its share of the run's GEMM peak.
    assert_eq!(
        (ml["k"].as_u64(), ml["units"].as_u64()),
        (Some(5), Some(30))
    );
    assert_eq!(ml["batches"].as_u64(), Some(1), "{r}");
    let flops = ml["flops_per_epoch"].as_f64().unwrap();
    assert_eq!(flops, ratings * 1100.0 + 30.0 * 3030.0, "{r}");
    let gflops = r["ml100k_gflops"].as_f64().unwrap();
    assert!((gflops * 1e9 * secs / flops - 1.0).abs() < 1e-9, "{r}");
    let peak = r["gemm_peak_gflops"].as_f64().unwrap();
    let fraction = r["ml100k_peak_fraction"].as_f64().unwrap();
    assert!(
        peak > 0.0 && (fraction * peak / gflops - 1.0).abs() < 1e-9,
        "{r}"
    );
    // The like-for-like run at the dense reference's batch of 256: its median of three epochs.
    let b256 = common::sorted_floats(&ml["batch256_user_epochs"]);
    assert_eq!(
        r["ml100k_epoch_seconds_batch256"].as_f64(),
        Some(b256[1]),
        "{r}"
    );
    // Beside each median, the fastest of the same epochs.
    assert_eq!(
        r["ml100k_fastest_epoch_seconds_batch256"].as_f64(),
        Some(b256[0]),
        "{r}"
    );
    assert_eq!(r["ml100k_fastest_epoch_seconds"].as_f64(), Some(user[0]));
    let one = r["ml100k_epoch_seconds_1thread"].as_f64().unwrap();
    let speedup = r["speedup_over_1thread"]["ml100k"].as_f64().unwrap();
    assert!((speedup - one / secs).abs() < 1e-9, "{r}");
    // And from the fastest epochs of the two runs.
    let one_fastest = r["ml100k_fastest_epoch_seconds_1thread"].as_f64().unwrap();
    let fastest_speedup = r["speedup_over_1thread"]["ml100k_fastest"]
        .as_f64()
        .unwrap();
    assert!(
        (fastest_speedup - one_fastest / user[0]).abs() < 1e-9,
        "{r}"
    );
    assert!(one_fastest <= one, "{r}");
    assert!(r["netflix_epoch_seconds"].is_null());
    // The SIMD level the figures were taken at, as `RBM_SIMD` caps it.
    let simd = r["simd"].as_str().unwrap();
    assert!(["avx512", "avx2", "scalar"].contains(&simd), "{r}");
    if let Ok(cap @ ("avx2" | "scalar")) = std::env::var("RBM_SIMD").as_deref() {
        assert!(simd == cap || simd == "scalar", "{r}");
    }
    // `--sweep`: the user-based epoch by batch size (the 60 users of the file in ⌈60 / b⌉
    // mini-batches), and the least-squares line through the fastest epochs against the number
    // of mini-batches, recomputed here from the rows.
    let sweep = &ml["batch_sweep"];
    let runs = sweep["runs"].as_array().unwrap();
    let sizes: Vec<u64> = runs.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [25, 50, 100, 256, 500, 1000], "{sweep}");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for run in runs {
        let b = run["batch"].as_u64().unwrap();
        assert_eq!(run["batches"].as_u64(), Some(60u64.div_ceil(b)), "{sweep}");
        let fastest = run["fastest_epoch_seconds"].as_f64().unwrap();
        assert!(fastest > 0.0 && fastest <= run["epoch_seconds"].as_f64().unwrap());
        xs.push(run["batches"].as_f64().unwrap());
        ys.push(fastest);
    }
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let slope = sweep["per_batch_seconds"].as_f64().unwrap();
    let intercept = sweep["batch_independent_seconds"].as_f64().unwrap();
    assert!(
        (slope - cov / var).abs() <= 1e-9 * (cov / var).abs().max(1e-6),
        "{sweep}"
    );
    assert!((intercept - (my - cov / var * mx)).abs() <= 1e-9, "{sweep}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn numpy_split_takes_the_first_places_of_numpys_permutation() {
    // NumPy 2.4.6: `default_rng(7).permutation(10)` = [8, 0, 7, 1, 3, 6, 2, 4, 5, 9], so a 0.3
    // holdout of ten ratings tests lines 8, 0 and 7 (0-based), in that order, and trains on
    // the other seven in file order.
    let dir = std::env::temp_dir().join(format!("rbm-cf-numpy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = (0..10)
        .map(|n| format!("u{}\ti{}\t{}", n % 4, n, 1 + n % 5))
        .collect();
    std::fs::write(dir.join("r.tsv"), lines.join("\n") + "\n").unwrap();
    let (train, test) = (dir.join("train.tsv"), dir.join("test.tsv"));
    let out = rbm()
        .args(["cf", "split", "--seed", "numpy:7", "--test-fraction", "0.3"])
        .arg("--ratings")
        .arg(dir.join("r.tsv"))
        .arg("--out-train")
        .arg(&train)
        .arg("--out-test")
        .arg(&test)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let read = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let pick = |idx: &[usize]| -> Vec<String> { idx.iter().map(|&i| lines[i].clone()).collect() };
    assert_eq!(read(&test), pick(&[8, 0, 7]));
    assert_eq!(read(&train), pick(&[1, 2, 3, 4, 5, 6, 9]));
    // A malformed seed is refused with the flag's name.
    let out = rbm()
        .args(["cf", "split", "--seed", "numpy:x", "--ratings"])
        .arg(dir.join("r.tsv"))
        .arg("--out-train")
        .arg(&train)
        .arg("--out-test")
        .arg(&test)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("numpy:SEED"));
    std::fs::remove_dir_all(&dir).unwrap();
}
