//! The first source's worked example, runnable: one CD-1 step on a tiny RBM computed in f64 with
//! every intermediate of REFERENCE §1 steps 1–5 kept, so each number can be checked by hand.

use crate::error::{RbmError, Result};
use crate::linalg::sigmoid64;
use crate::random::{Purpose, Stream};

/// The inputs of one worked CD-1 step.
#[derive(Clone, Debug, PartialEq)]
pub struct WalkthroughInput {
    /// Weights, `w[i][j]` connecting visible `i` to hidden `j`.
    pub w: Vec<Vec<f64>>,
    /// Visible bias.
    pub b: Vec<f64>,
    /// Hidden bias.
    pub c: Vec<f64>,
    /// The data vector v⁰ (binary).
    pub v0: Vec<f64>,
    /// Learning rate κ for W.
    pub lr_w: f64,
    /// Learning rate γ for b.
    pub lr_b: f64,
    /// Learning rate for c.
    pub lr_c: f64,
    /// Uniform draws for sampling h⁰ (one per hidden unit); drawn from `seed` when absent.
    pub hidden_draws: Option<Vec<f64>>,
    /// Uniform draws for sampling v¹ (one per visible unit); drawn from `seed` when absent.
    pub visible_draws: Option<Vec<f64>>,
    /// Seed for draws not given.
    pub seed: u64,
}

/// Every intermediate of the step, in the order REFERENCE §1 lists them.
#[derive(Clone, Debug, PartialEq)]
pub struct WalkthroughTrace {
    /// Step 1: hidden pre-activations c + v⁰ᵀW.
    pub hidden_input0: Vec<f64>,
    /// Step 1: p⁰ = σ(hidden_input0).
    pub p0: Vec<f64>,
    /// Step 1: positive statistics v⁰p⁰ᵀ (D × M).
    pub positive: Vec<Vec<f64>>,
    /// Step 2: the uniform draws used for h⁰.
    pub hidden_draws: Vec<f64>,
    /// Step 2: h⁰ (u < p ⇒ 1).
    pub h0: Vec<f64>,
    /// Step 3: visible pre-activations b + Wh⁰.
    pub visible_input: Vec<f64>,
    /// Step 3: p(v = 1 | h⁰).
    pub pv: Vec<f64>,
    /// Step 3: the uniform draws used for v¹.
    pub visible_draws: Vec<f64>,
    /// Step 3: the sampled reconstruction v¹.
    pub v1: Vec<f64>,
    /// Step 4: hidden pre-activations c + v¹ᵀW.
    pub hidden_input1: Vec<f64>,
    /// Step 4: p¹ = σ(hidden_input1) (probabilities, not samples).
    pub p1: Vec<f64>,
    /// Step 4: negative statistics v¹p¹ᵀ.
    pub negative: Vec<Vec<f64>>,
    /// Step 5: ΔW = κ(v⁰p⁰ᵀ − v¹p¹ᵀ).
    pub delta_w: Vec<Vec<f64>>,
    /// Step 5: Δb = γ(v⁰ − v¹).
    pub delta_b: Vec<f64>,
    /// Step 5: Δc = rate_c (p⁰ − p¹).
    pub delta_c: Vec<f64>,
    /// Updated W.
    pub new_w: Vec<Vec<f64>>,
    /// Updated b.
    pub new_b: Vec<f64>,
    /// Updated c.
    pub new_c: Vec<f64>,
}

fn outer(a: &[f64], b: &[f64]) -> Vec<Vec<f64>> {
    a.iter()
        .map(|&x| b.iter().map(|&y| x * y).collect())
        .collect()
}

fn draws(
    given: &Option<Vec<f64>>,
    n: usize,
    seed: u64,
    which: u64,
    name: &'static str,
) -> Result<Vec<f64>> {
    match given {
        Some(d) if d.len() != n => Err(RbmError::param(
            name,
            format!("needs {n} draws, got {}", d.len()),
        )),
        Some(d) if d.iter().any(|u| !(0.0..1.0).contains(u)) => {
            Err(RbmError::param(name, "draws must lie in [0, 1)"))
        }
        Some(d) => Ok(d.clone()),
        None => {
            let mut s = Stream::new(seed, Purpose::Sample, 0, which, 0);
            Ok((0..n).map(|_| s.uniform64()).collect())
        }
    }
}

/// Performs the step, validating shapes.
pub fn walkthrough(input: &WalkthroughInput) -> Result<WalkthroughTrace> {
    let (d, m) = (input.b.len(), input.c.len());
    if d == 0 || m == 0 {
        return Err(RbmError::param(
            "b/c",
            "need at least one visible and one hidden unit",
        ));
    }
    if input.w.len() != d || input.w.iter().any(|r| r.len() != m) {
        return Err(RbmError::param(
            "w",
            format!("must be {d} rows of {m} weights"),
        ));
    }
    if input.v0.len() != d {
        return Err(RbmError::param("v", format!("must have {d} values")));
    }
    for (name, values) in [
        ("w", input.w.concat()),
        ("b", input.b.clone()),
        ("c", input.c.clone()),
    ] {
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(RbmError::param(name, format!("must be finite, got {v}")));
        }
    }
    // v⁰ is data: binary states or grey values used as probabilities.
    if let Some(v) = input.v0.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(RbmError::param(
            "v",
            format!("values must lie in [0, 1], got {v}"),
        ));
    }
    for (name, lr) in [
        ("lr-w", input.lr_w),
        ("lr-b", input.lr_b),
        ("lr-c", input.lr_c),
    ] {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(RbmError::param(
                name,
                format!("must be finite and > 0, got {lr}"),
            ));
        }
    }
    let w = &input.w;
    let up = |v: &[f64]| -> Vec<f64> {
        (0..m)
            .map(|j| input.c[j] + (0..d).map(|i| v[i] * w[i][j]).sum::<f64>())
            .collect()
    };
    let sample = |p: &[f64], u: &[f64]| -> Vec<f64> {
        p.iter()
            .zip(u)
            .map(|(&p, &u)| if u < p { 1.0 } else { 0.0 })
            .collect()
    };
    let hidden_input0 = up(&input.v0);
    let p0: Vec<f64> = hidden_input0.iter().map(|&x| sigmoid64(x)).collect();
    let positive = outer(&input.v0, &p0);
    let hidden_draws = draws(&input.hidden_draws, m, input.seed, 0, "hidden-draws")?;
    let h0 = sample(&p0, &hidden_draws);
    let visible_input: Vec<f64> = (0..d)
        .map(|i| input.b[i] + (0..m).map(|j| w[i][j] * h0[j]).sum::<f64>())
        .collect();
    let pv: Vec<f64> = visible_input.iter().map(|&x| sigmoid64(x)).collect();
    let visible_draws = draws(&input.visible_draws, d, input.seed, 1, "visible-draws")?;
    let v1 = sample(&pv, &visible_draws);
    let hidden_input1 = up(&v1);
    let p1: Vec<f64> = hidden_input1.iter().map(|&x| sigmoid64(x)).collect();
    let negative = outer(&v1, &p1);
    let delta_w: Vec<Vec<f64>> = (0..d)
        .map(|i| {
            (0..m)
                .map(|j| input.lr_w * (positive[i][j] - negative[i][j]))
                .collect()
        })
        .collect();
    let delta_b: Vec<f64> = (0..d).map(|i| input.lr_b * (input.v0[i] - v1[i])).collect();
    let delta_c: Vec<f64> = (0..m).map(|j| input.lr_c * (p0[j] - p1[j])).collect();
    let new_w = (0..d)
        .map(|i| (0..m).map(|j| w[i][j] + delta_w[i][j]).collect())
        .collect();
    let new_b = (0..d).map(|i| input.b[i] + delta_b[i]).collect();
    let new_c = (0..m).map(|j| input.c[j] + delta_c[j]).collect();
    Ok(WalkthroughTrace {
        hidden_input0,
        p0,
        positive,
        hidden_draws,
        h0,
        visible_input,
        pv,
        visible_draws,
        v1,
        hidden_input1,
        p1,
        negative,
        delta_w,
        delta_b,
        delta_c,
        new_w,
        new_b,
        new_c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_by_two_step_matches_hand_computation() {
        // v⁰ = (1, 0), W = [[0.5, −0.3], [0.2, 0.8]], b = (0.1, −0.1), c = (0, 0.2), all rates 0.1,
        // draws for h⁰ (0.3, 0.9) and for v¹ (0.8, 0.2). By hand:
        //   c + v⁰ᵀW = (0.5, −0.1); p⁰ = (σ(0.5), σ(−0.1)) = (0.6224593, 0.4750208)
        //   h⁰ = (0.3 < 0.622 → 1, 0.9 < 0.475 → 0) = (1, 0)
        //   b + Wh⁰ = (0.6, 0.1); p(v|h⁰) = (0.6456563, 0.5249792); v¹ = (0, 1)
        //   c + v¹ᵀW = (0.2, 1.0); p¹ = (0.5498340, 0.7310586)
        //   ΔW = 0.1 [[p⁰₁, p⁰₂], [−p¹₁, −p¹₂]]; Δb = (0.1, −0.1); Δc = 0.1 (p⁰ − p¹)
        let t = walkthrough(&WalkthroughInput {
            w: vec![vec![0.5, -0.3], vec![0.2, 0.8]],
            b: vec![0.1, -0.1],
            c: vec![0.0, 0.2],
            v0: vec![1.0, 0.0],
            lr_w: 0.1,
            lr_b: 0.1,
            lr_c: 0.1,
            hidden_draws: Some(vec![0.3, 0.9]),
            visible_draws: Some(vec![0.8, 0.2]),
            seed: 0,
        })
        .unwrap();
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
        };
        assert!(close(&t.hidden_input0, &[0.5, -0.1]));
        assert!(close(&t.p0, &[0.6224593, 0.4750208]));
        assert!(
            close(&t.positive[0], &[0.6224593, 0.4750208]) && close(&t.positive[1], &[0.0, 0.0])
        );
        assert_eq!(t.h0, vec![1.0, 0.0]);
        assert!(close(&t.visible_input, &[0.6, 0.1]));
        assert!(close(&t.pv, &[0.6456563, 0.5249792]));
        assert_eq!(t.v1, vec![0.0, 1.0]);
        assert!(close(&t.hidden_input1, &[0.2, 1.0]));
        assert!(close(&t.p1, &[0.5498340, 0.7310586]));
        assert!(
            close(&t.negative[0], &[0.0, 0.0]) && close(&t.negative[1], &[0.5498340, 0.7310586])
        );
        assert!(close(&t.delta_w[0], &[0.06224593, 0.04750208]));
        assert!(close(&t.delta_w[1], &[-0.05498340, -0.07310586]));
        assert!(close(&t.new_w[0], &[0.5622459, -0.2524979]));
        assert!(close(&t.new_w[1], &[0.1450166, 0.7268941]));
        assert!(close(&t.delta_b, &[0.1, -0.1]) && close(&t.new_b, &[0.2, -0.2]));
        assert!(close(&t.delta_c, &[0.00726253, -0.02560378]));
        assert!(close(&t.new_c, &[0.00726253, 0.17439622]));
    }

    #[test]
    fn bad_shapes_and_draws_are_rejected() {
        let base = WalkthroughInput {
            w: vec![vec![0.0, 0.0], vec![0.0, 0.0]],
            b: vec![0.0, 0.0],
            c: vec![0.0, 0.0],
            v0: vec![1.0, 0.0],
            lr_w: 0.1,
            lr_b: 0.1,
            lr_c: 0.1,
            hidden_draws: None,
            visible_draws: None,
            seed: 0,
        };
        assert!(
            walkthrough(&WalkthroughInput {
                v0: vec![1.0],
                ..base.clone()
            })
            .is_err()
        );
        assert!(
            walkthrough(&WalkthroughInput {
                hidden_draws: Some(vec![0.5]),
                ..base.clone()
            })
            .is_err()
        );
        assert!(
            walkthrough(&WalkthroughInput {
                visible_draws: Some(vec![0.5, 1.5]),
                ..base.clone()
            })
            .is_err()
        );
        let bad = [
            WalkthroughInput {
                w: vec![vec![0.0, f64::NAN], vec![0.0, 0.0]],
                ..base.clone()
            },
            WalkthroughInput {
                b: vec![f64::INFINITY, 0.0],
                ..base.clone()
            },
            WalkthroughInput {
                c: vec![0.0, f64::NAN],
                ..base.clone()
            },
            WalkthroughInput {
                v0: vec![2.0, 0.0],
                ..base.clone()
            },
            WalkthroughInput {
                v0: vec![f64::NAN, 0.0],
                ..base.clone()
            },
            WalkthroughInput {
                lr_w: -1.0,
                ..base.clone()
            },
            WalkthroughInput {
                lr_b: f64::NAN,
                ..base.clone()
            },
            WalkthroughInput {
                lr_c: f64::INFINITY,
                ..base.clone()
            },
        ];
        for (n, input) in bad.iter().enumerate() {
            assert!(
                matches!(walkthrough(input), Err(RbmError::InvalidParam { .. })),
                "case {n}"
            );
        }
        let t = walkthrough(&base).unwrap();
        assert!(t.hidden_draws.iter().all(|u| (0.0..1.0).contains(u)));
    }
}
