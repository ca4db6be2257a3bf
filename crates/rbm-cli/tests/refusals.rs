//! Commands refuse bad requests before doing any work: outputs that collide with each other, an
//! input or a directory; empty or degenerate evaluation sets; counts of zero; non-finite numbers.
//! Each refusal must exit non-zero with a message naming the problem and write nothing.

mod common;

use common::{assert_refused, rbm, s, tmpdir};

/// A small tab-separated rating file: 30 users × 12 items, ratings 1–5.
fn ratings(dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = String::new();
    for u in 0..30u32 {
        for i in 0..12u32 {
            if (u + 2 * i) % 3 != 0 {
                text.push_str(&format!("u{u}\ti{i}\t{}\n", 1 + (u * i) % 5));
            }
        }
    }
    let p = dir.join("r.tsv");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn colliding_or_directory_outputs_are_refused_before_training() {
    let dir = tmpdir("refuse-outputs");
    let model = dir.join("m.safetensors");
    let base = [
        "train", "--rows", "0..200", "--hidden", "8", "--epochs", "1",
    ];
    // Two outputs naming one file (the second spelled through `./`).
    let same = dir.join(".").join("m.safetensors");
    let out = rbm(&[&base[..], &["--out", s(&model), "--filters", s(&same)]].concat());
    assert_refused(&out, &["--filters", "--out", "both name"], &model);
    // An output that is a directory: refused before the model is written.
    let out = rbm(&[&base[..], &["--out", s(&model), "--curves", s(&dir)]].concat());
    assert_refused(&out, &["--curves", "is a directory"], &model);
    // An output that is the input data.
    let csv = dir.join("d.csv");
    std::fs::write(&csv, "0,1,0,1\n1,0,1,0\n").unwrap();
    let out = rbm(&[
        "train",
        "--data",
        s(&csv),
        "--hidden",
        "2",
        "--out",
        s(&csv),
    ]);
    assert_refused(&out, &["would overwrite the input"], &model);
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "0,1,0,1\n1,0,1,0\n");
    // `sample` with its PNG and CSV on one path.
    let png = dir.join("s.png");
    let out = rbm(&[
        "sample",
        "--model",
        s(&model),
        "--out",
        s(&png),
        "--csv",
        s(&png),
    ]);
    assert_refused(&out, &["both name"], &png);
    // `cf split` with both parts on one path.
    let r = ratings(&dir);
    let part = dir.join("part.tsv");
    let out = rbm(&[
        "cf",
        "split",
        "--ratings",
        s(&r),
        "--out-train",
        s(&part),
        "--out-test",
        s(&part),
    ]);
    assert_refused(&out, &["both name"], &part);
}

#[test]
fn zero_counts_and_overlapping_rows_are_refused() {
    let dir = tmpdir("refuse-counts");
    let model = dir.join("m.safetensors");
    let out = rbm(&["train", "--epochs", "0", "--out", s(&model)]);
    assert_refused(&out, &["epochs", "at least 1"], &model);
    // Held-out rows inside the training rows (all rows when --rows is absent).
    let out = rbm(&["train", "--heldout-rows", "0..10", "--out", s(&model)]);
    assert_refused(&out, &["--heldout-rows 0..10 overlap"], &model);
    let out = rbm(&[
        "train",
        "--rows",
        "0..100",
        "--heldout-rows",
        "50..150",
        "--out",
        s(&model),
    ]);
    assert_refused(&out, &["overlap"], &model);
    let out = rbm(&[
        "train",
        "--rows",
        "0..100",
        "--heldout-rows",
        "100..120",
        "--ais-every",
        "5",
        "--epochs",
        "2",
        "--out",
        s(&model),
    ]);
    assert_refused(&out, &["--ais-every 5", "never"], &model);
    let nothing = dir.join("nothing");
    for args in [
        &["bench", "--epochs", "0", "--skip-netflix"][..],
        &[
            "bench",
            "--cf-epochs",
            "0",
            "--skip-binary",
            "--skip-netflix",
        ],
        &["bench", "--netflix-epochs", "0", "--skip-binary"],
    ] {
        assert_refused(&rbm(args), &["at least 1"], &nothing);
    }
    let out = rbm(&["--threads", "0", "walkthrough"]);
    assert_refused(&out, &["thread count from 1"], &nothing);
    // A model that cannot fit in memory: refused up front, not an allocation abort.
    let out = rbm(&[
        "train",
        "--rows",
        "0..10",
        "--hidden",
        "4000000000",
        "--out",
        s(&model),
    ]);
    assert_refused(&out, &["784 × 4000000000", "GiB"], &model);
    let missing = dir.join("missing.inter");
    let out = rbm(&[
        "bench",
        "--ratings",
        s(&missing),
        "--skip-binary",
        "--skip-netflix",
    ]);
    assert_refused(&out, &["missing.inter", "no such file"], &nothing);
}

#[test]
fn degenerate_rating_evaluations_are_refused() {
    let dir = tmpdir("refuse-cf");
    let r = ratings(&dir);
    let model = dir.join("m.safetensors");
    let small = ["--hidden", "4", "--epochs", "1", "--no-topn"];
    for (folds, needle) in [("0", "--folds 0"), ("100000", "at most one per rating")] {
        let out = rbm(&[
            &["cf", "eval", "--ratings", s(&r), "--folds", folds][..],
            &small,
        ]
        .concat());
        assert_refused(&out, &[needle], &model);
    }
    // A rating off a given scale, named by file and line (u1 rates i2 3 on line 10), by the
    // commands that build a rating matrix from the file.
    for cmd in [&["train", "-o", s(&model)][..], &["eval"]] {
        let out = rbm(&[
            &["cf"][..],
            cmd,
            &["--ratings", s(&r), "--scale", "1,2,4,5"],
            &small,
        ]
        .concat());
        assert_refused(
            &out,
            &["r.tsv:10: rating 3 is not on the rating scale (1, 2, 4, 5)"],
            &model,
        );
    }
    // Ranked lists of no items; a relevance threshold above every rating (the scale is 1–5).
    for (flag, value, needle) in [
        ("--topn", "0", "--topn must be at least 1"),
        ("--relevant", "5.5", "no rating reaches it"),
    ] {
        let out = rbm(&[
            &[
                "cf",
                "eval",
                "--ratings",
                s(&r),
                "--hidden",
                "4",
                "--epochs",
                "1",
            ][..],
            &[flag, value],
        ]
        .concat());
        assert_refused(&out, &[flag, needle], &model);
    }
    // A test fraction that leaves no test ratings (refused at the first of two splits, before
    // the metrics file is opened), and one that leaves no training ratings.
    let metrics = dir.join("eval.jsonl");
    let out = rbm(&[
        &[
            "cf",
            "eval",
            "--ratings",
            s(&r),
            "--test-fraction",
            "0.0001",
            "--split-seeds",
            "0,numpy:1",
            "--metrics",
            s(&metrics),
        ][..],
        &small,
    ]
    .concat());
    assert_refused(&out, &["seed 0: the test part is empty"], &metrics);
    let train = dir.join("train.tsv");
    let out = rbm(&[
        "cf",
        "split",
        "--ratings",
        s(&r),
        "--test-fraction",
        "0.0001",
        "--out-train",
        s(&train),
        "--out-test",
        s(&dir.join("test.tsv")),
    ]);
    assert_refused(&out, &["test part is empty"], &train);
    // An empty test file; a test file that repeats a training rating (u1 rated i0 on the
    // training file's line 9, after u0's eight items; u0 never rated i0).
    for (name, text, needles) in [
        ("empty.tsv", "", &["empty.tsv", "test part is empty"][..]),
        (
            "leak.tsv",
            "u0\ti0\t3\nu1\ti0\t2\n",
            &["leak.tsv:2", "`u1`", "`i0`", "r.tsv:9", "disjoint"],
        ),
    ] {
        let test = dir.join(name);
        std::fs::write(&test, text).unwrap();
        let out = rbm(&[
            &["cf", "train", "--ratings", s(&r), "--test", s(&test)][..],
            &["-o", s(&model)],
            &small,
        ]
        .concat());
        assert_refused(&out, needles, &model);
    }
    let out = rbm(&[
        &[
            "cf",
            "train",
            "--ratings",
            s(&r),
            "--validation",
            "0.9999",
            "-o",
            s(&model),
        ][..],
        &small,
    ]
    .concat());
    assert_refused(&out, &["--validation", "no training ratings"], &model);
    let out = rbm(&[
        &[
            "cf",
            "train",
            "--ratings",
            s(&r),
            "--hidden",
            "65536",
            "--ensemble",
            "10000000",
            "-o",
            s(&model),
        ][..],
        &small[2..],
    ]
    .concat());
    assert_refused(&out, &["65536 hidden units", "GiB"], &model);
    let out = rbm(&[
        &[
            "cf",
            "train",
            "--ratings",
            s(&r),
            "--implicit-targets",
            "-o",
            s(&model),
        ][..],
        &small,
    ]
    .concat());
    assert_refused(&out, &["needs --conditional"], &model);
    // Predicting nothing, recommending nothing.
    let ok = rbm(&[
        &["cf", "train", "--ratings", s(&r), "-o", s(&model)][..],
        &small,
    ]
    .concat());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let nothing = dir.join("nothing");
    let out = rbm(&["cf", "predict", "--model", s(&model), "--ratings", s(&r)]);
    assert_refused(&out, &["no pairs"], &nothing);
    let out = rbm(&[
        "cf",
        "recommend",
        "--model",
        s(&model),
        "--ratings",
        s(&r),
        "--user",
        "u1",
        "-n",
        "0",
    ]);
    assert_refused(&out, &["-n must be at least 1"], &nothing);
}

#[test]
fn walkthrough_refuses_non_finite_or_out_of_range_numbers() {
    let nothing = std::env::temp_dir().join("rbm-walkthrough-nothing");
    for (args, needle) in [
        (&["walkthrough", "--lr", "nan"][..], "lr-w"),
        (&["walkthrough", "--lr-b=-1"], "lr-b"),
        (&["walkthrough", "--w", "nan,1;1,1"], "`w`"),
        (&["walkthrough", "--c", "inf,0"], "`c`"),
        (&["walkthrough", "--v", "2,0"], "[0, 1]"),
    ] {
        assert_refused(&rbm(args), &[needle], &nothing);
    }
}
