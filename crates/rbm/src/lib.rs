//! # rbm: Restricted Boltzmann Machines
//!
//! Binary (Bernoulli–Bernoulli) RBMs trained by CD-k and persistent CD, the rating RBM for
//! collaborative filtering (Salakhutdinov, Mnih & Hinton 2007), honest evaluation (exact and
//! AIS log-likelihood, pseudo-likelihood), and the file formats people use.
//!
//! Conventions: sets of examples are `D × N` [`linalg::Matrix`]es with one example per column;
//! all randomness comes from [`random::Stream`]s keyed by seed, so runs are reproducible.

#![warn(missing_docs)]

pub mod atomic;
pub mod binary;
pub mod cf_eval;
pub mod cf_model;
pub mod data;
pub mod error;
pub mod eval;
pub mod linalg;
pub mod modelfile;
pub mod npy;
pub mod picture;
pub mod random;
pub mod rating;
pub mod ratings;
pub mod synthetic;
pub mod team;
pub mod train;
pub mod walkthrough;

pub use binary::BinaryRbm;
pub use error::{RbmError, Result};
pub use linalg::Matrix;
