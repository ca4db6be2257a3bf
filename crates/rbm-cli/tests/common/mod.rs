//! Helpers shared by the end-to-end tests: run the binary, temporary folders, JSON output, and
//! the check that a refused command left no output behind.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn rbm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbm"))
        .args(args)
        .output()
        .expect("run rbm")
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rbm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A JSON array of numbers (a report's epoch times, say), sorted ascending.
pub fn sorted_floats(v: &serde_json::Value) -> Vec<f64> {
    let mut xs: Vec<f64> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs
}

/// Asserts a successful run, showing its stderr otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "rbm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn json(out: &Output) -> serde_json::Value {
    assert_ok(out);
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// Asserts a failed run: non-zero exit, the message mentions each needle, and `out` was not written.
pub fn assert_refused(out: &Output, needles: &[&str], not_written: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`: {err}");
    }
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(
        !not_written.exists(),
        "{} was written",
        not_written.display()
    );
}
