//! Cross-check against scikit-learn: imports a BernoulliRBM saved as `components.npy`,
//! `intercept_visible.npy`, `intercept_hidden.npy` in DIR, and prints, one per line, our free
//! energy and pseudo-likelihood of each example of `test.npy` ([N, D]) with the unit flips of
//! `flips.npy` (the indices scikit-learn's `score_samples` drew, saved as floats), then exact log Z.
//! `cargo run --release -p rbm --example sklearn_check -- DIR`
use rbm::eval;
use rbm::linalg::Matrix;
use rbm::npy::{import_sklearn, read_npy};
use std::path::Path;

fn main() {
    let dir = std::env::args().nth(1).expect("DIR");
    let dir = Path::new(&dir);
    let model = import_sklearn(
        &dir.join("components.npy"),
        &dir.join("intercept_visible.npy"),
        &dir.join("intercept_hidden.npy"),
    )
    .unwrap();
    let test = read_npy(&dir.join("test.npy")).unwrap();
    let (n, d) = (test.shape[0], test.shape[1]);
    // Row-major [N, D] is column-major D × N: one example per column.
    let data = Matrix::from_vec(d, n, test.data).unwrap();
    let flips: Vec<usize> = read_npy(&dir.join("flips.npy"))
        .unwrap()
        .data
        .iter()
        .map(|&x| x as usize)
        .collect();
    let fe = eval::free_energies(&model, &data).unwrap();
    let pl = eval::pseudo_likelihood_at(&model, &data, &flips).unwrap();
    for (f, p) in fe.iter().zip(&pl) {
        println!("{f} {p}");
    }
    println!("{}", eval::exact_log_z(&model).unwrap());
}
