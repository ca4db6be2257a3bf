//! Recommender built from rating RBMs: orientation (user-based or item-based), the implicit
//! "rated" sets of the conditional model, ensembles (averaged predictions of several RBMs), the
//! fallback to the bias baseline for users or items absent from training, and model files.

use crate::cf_eval::BiasBaseline;
use crate::error::{RbmError, Result};
use crate::modelfile::{check_format, read_tensors, write_tensors};
use crate::rating::{
    EpochReport, FitSummary, PredictMethod, RatingRbm, RatingReadout, TrainData,
    ValidRatingRbmParams,
};
use crate::ratings::{Csr, IdMap, Rating, RatingMatrix};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` value of rating-RBM model files.
pub const RATING_FORMAT: &str = "rbm.rating";

/// The `format_version` this build writes and reads for rating-RBM model files.
pub const RATING_FORMAT_VERSION: &str = "1";

/// Which side of the rating matrix is the RBM's cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    /// Users are cases, items are visible units (the paper's model).
    User,
    /// Items are cases, users are visible units (I-RBM).
    Item,
}

impl Orientation {
    fn name(self) -> &'static str {
        match self {
            Orientation::User => "user",
            Orientation::Item => "item",
        }
    }

    /// `(case, visible)` for a `(user, item)` pair.
    pub fn case_visible(self, user: u32, item: u32) -> (u32, u32) {
        match self {
            Orientation::User => (user, item),
            Orientation::Item => (item, user),
        }
    }

    /// The training rows seen as cases.
    pub fn cases(self, train: &RatingMatrix) -> &Csr {
        match self {
            Orientation::User => &train.by_user,
            Orientation::Item => &train.by_item,
        }
    }

    /// Number of visible units for this orientation.
    pub fn visible(self, train: &RatingMatrix) -> usize {
        match self {
            Orientation::User => train.n_items,
            Orientation::Item => train.n_users,
        }
    }
}

impl std::str::FromStr for Orientation {
    type Err = RbmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Orientation::User),
            "item" => Ok(Orientation::Item),
            _ => Err(RbmError::param(
                "orientation",
                format!("`{s}`: expected user or item"),
            )),
        }
    }
}

/// The conditional model's implicit sets by case: the training ratings plus `extra` pairs
/// (e.g. the items to be predicted, as the paper used the qualifying set).
pub fn implicit_sets(train: &RatingMatrix, extra: &[(u32, u32)], o: Orientation) -> Csr {
    let cases = o.cases(train);
    let mut triples: Vec<(u32, u32, u8)> = Vec::with_capacity(cases.nnz() + extra.len());
    for r in 0..cases.rows() {
        triples.extend(cases.row(r).0.iter().map(|&v| (r as u32, v, 0)));
    }
    let nv = o.visible(train) as u32;
    for &(u, i) in extra {
        let (c, v) = o.case_visible(u, i);
        if (c as usize) < cases.rows() && v < nv {
            triples.push((c, v, 0));
        }
    }
    Csr::from_triples(cases.rows(), triples.into_iter())
}

/// One trained RBM with its orientation.
#[derive(Clone, Debug, PartialEq)]
pub struct CfMember {
    /// Cases are users or items.
    pub orientation: Orientation,
    /// The model.
    pub rbm: RatingRbm,
}

/// A recommender: one or more RBMs (predictions averaged), the rating scale, the bias
/// baseline for fallbacks, and the id maps of the training data.
#[derive(Clone, Debug, PartialEq)]
pub struct CfModel {
    /// The RBMs.
    pub members: Vec<CfMember>,
    /// Rating value of each class.
    pub values: Vec<f32>,
    /// Prediction method.
    pub predict: PredictMethod,
    /// Distribution → rating.
    pub readout: RatingReadout,
    /// Fallback for pairs the RBMs cannot score.
    pub baseline: BiasBaseline,
    /// User id tokens.
    pub users: IdMap,
    /// Item id tokens.
    pub items: IdMap,
    /// Whether the conditional members' implicit sets include the pairs being predicted.
    pub implicit_targets: bool,
}

/// Predictions plus how many fell back to the baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    /// One rating per pair.
    pub ratings: Vec<f32>,
    /// Pairs whose user or item had no training ratings (scored by the baseline).
    pub fallbacks: usize,
}

/// Trains one member. Validation ratings are used for monitoring/early stopping only.
pub fn train_member(
    params: &ValidRatingRbmParams,
    orientation: Orientation,
    train: &RatingMatrix,
    values: &[f32],
    validation: &[Rating],
    implicit_extra: &[(u32, u32)],
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<(CfMember, FitSummary)> {
    let implicit = params
        .conditional
        .then(|| implicit_sets(train, implicit_extra, orientation));
    let valid: Vec<(u32, u32, f32)> = validation
        .iter()
        .filter(|r| known(train, r.user, r.item))
        .map(|r| {
            let (c, v) = orientation.case_visible(r.user, r.item);
            (c, v, r.value)
        })
        .collect();
    let data = TrainData {
        cases: orientation.cases(train),
        d: orientation.visible(train),
        values,
        implicit: implicit.as_ref(),
        validation: &valid,
    };
    let (rbm, summary) = RatingRbm::fit(params, &data, progress)?;
    Ok((CfMember { orientation, rbm }, summary))
}

/// True when both the user and the item have training ratings.
pub fn known(train: &RatingMatrix, user: u32, item: u32) -> bool {
    let has = |c: &Csr, r: u32| {
        (r as usize) < c.rows() && c.offsets[r as usize + 1] > c.offsets[r as usize]
    };
    has(&train.by_user, user) && has(&train.by_item, item)
}

impl CfModel {
    /// Predicts `(user, item)` pairs, conditioning on `train` (the training ratings the model
    /// was fitted to). Pairs with an unknown user or item use the baseline.
    /// When `implicit_targets` is set, the conditional members' implicit sets include the
    /// predicted pairs themselves.
    pub fn predict(&self, train: &RatingMatrix, pairs: &[(u32, u32)]) -> Predictions {
        let extra: Vec<(u32, u32)> = if self.implicit_targets {
            pairs.to_vec()
        } else {
            Vec::new()
        };
        self.predict_with_extra(train, pairs, &extra)
    }

    /// [`CfModel::predict`] with explicit extra implicit pairs for conditional members.
    pub fn predict_with_extra(
        &self,
        train: &RatingMatrix,
        pairs: &[(u32, u32)],
        extra: &[(u32, u32)],
    ) -> Predictions {
        let ok: Vec<usize> = (0..pairs.len())
            .filter(|&n| known(train, pairs[n].0, pairs[n].1))
            .collect();
        let mut sum = vec![0.0f32; ok.len()];
        let k = self.values.len();
        for mem in &self.members {
            let o = mem.orientation;
            let implicit = mem
                .rbm
                .dmat
                .is_some()
                .then(|| implicit_sets(train, extra, o));
            let cv: Vec<(u32, u32)> = ok
                .iter()
                .map(|&n| o.case_visible(pairs[n].0, pairs[n].1))
                .collect();
            let dist = mem
                .rbm
                .predict_pairs(o.cases(train), implicit.as_ref(), &cv, self.predict);
            for (s, d) in sum.iter_mut().zip(dist.chunks_exact(k)) {
                *s += RatingRbm::readout(d, &self.values, self.readout);
            }
        }
        let mut ratings: Vec<f32> = pairs
            .iter()
            .map(|&(u, i)| self.baseline.predict(u, i))
            .collect();
        let nm = self.members.len() as f32;
        for (&n, s) in ok.iter().zip(sum) {
            ratings[n] = s / nm;
        }
        Predictions {
            fallbacks: pairs.len() - ok.len(),
            ratings,
        }
    }

    /// Saves the model (safetensors; metadata holds the scale, orientation and id maps).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = BTreeMap::new();
        let js = |v: serde_json::Value| v.to_string();
        meta.insert("format".into(), RATING_FORMAT.into());
        meta.insert("format_version".into(), RATING_FORMAT_VERSION.into());
        meta.insert("K".into(), self.values.len().to_string());
        meta.insert("values".into(), js(serde_json::json!(self.values)));
        meta.insert("members".into(), self.members.len().to_string());
        meta.insert(
            "predict".into(),
            match self.predict {
                PredictMethod::Exact => "exact",
                PredictMethod::MeanField => "mean-field",
            }
            .into(),
        );
        meta.insert(
            "readout".into(),
            match self.readout {
                RatingReadout::Expected => "expected",
                RatingReadout::Argmax => "argmax",
            }
            .into(),
        );
        meta.insert("implicit_targets".into(), self.implicit_targets.to_string());
        meta.insert("baseline_mean".into(), self.baseline.mean.to_string());
        meta.insert(
            "range".into(),
            js(serde_json::json!([
                self.baseline.range.0,
                self.baseline.range.1
            ])),
        );
        meta.insert("users".into(), js(serde_json::json!(self.users.tokens())));
        meta.insert("items".into(), js(serde_json::json!(self.items.tokens())));
        let mut names: Vec<String> = Vec::new();
        let mut tens: Vec<(usize, &str, Vec<usize>, &[f32])> = Vec::new();
        for (n, mem) in self.members.iter().enumerate() {
            let r = &mem.rbm;
            meta.insert(format!("m{n}.orientation"), mem.orientation.name().into());
            meta.insert(format!("m{n}.M"), r.m.to_string());
            meta.insert(format!("m{n}.D"), r.d.to_string());
            tens.push((n, "W", vec![r.d, r.k, r.m], &r.w));
            tens.push((n, "b", vec![r.d, r.k], &r.b));
            tens.push((n, "c", vec![r.m], &r.c));
            if let Some(dm) = &r.dmat {
                tens.push((n, "D", vec![r.d, r.m], dm));
            }
            if let Some((cf, a, b)) = &r.factors {
                meta.insert(format!("m{n}.C"), cf.to_string());
                tens.push((n, "A", vec![r.d, r.k, *cf], a));
                tens.push((n, "B", vec![*cf, r.m], b));
            }
        }
        for (n, name, _, _) in &tens {
            names.push(format!("m{n}.{name}"));
        }
        let mut list: Vec<(&str, Vec<usize>, &[f32])> = tens
            .iter()
            .zip(&names)
            .map(|((_, _, s, d), nm)| (nm.as_str(), s.clone(), *d))
            .collect();
        list.push((
            "baseline_user",
            vec![self.baseline.user_bias.len()],
            &self.baseline.user_bias,
        ));
        list.push((
            "baseline_item",
            vec![self.baseline.item_bias.len()],
            &self.baseline.item_bias,
        ));
        write_tensors(path, &list, &meta)
    }

    /// Loads a model written by [`CfModel::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let mut f = read_tensors(path)?;
        let bad = |reason: String| RbmError::format(path, 0, reason);
        check_format(&f, RATING_FORMAT, RATING_FORMAT_VERSION)?;
        let parse_json = |s: &str, what: &str| -> Result<serde_json::Value> {
            serde_json::from_str(s).map_err(|e| bad(format!("metadata `{what}`: {e}")))
        };
        let num = |s: &str, what: &str| -> Result<usize> {
            s.parse()
                .map_err(|_| bad(format!("metadata `{what}` is not a number")))
        };
        let values: Vec<f32> = serde_json::from_value(parse_json(f.meta("values")?, "values")?)
            .map_err(|e| bad(e.to_string()))?;
        let k = values.len();
        let tokens = |key: &str, f: &crate::modelfile::TensorFile| -> Result<IdMap> {
            let v: Vec<String> = serde_json::from_value(parse_json(f.meta(key)?, key)?)
                .map_err(|e| bad(e.to_string()))?;
            IdMap::from_tokens(v)
        };
        let users = tokens("users", &f)?;
        let items = tokens("items", &f)?;
        let range: Vec<f32> = serde_json::from_value(parse_json(f.meta("range")?, "range")?)
            .map_err(|e| bad(e.to_string()))?;
        if range.len() != 2 {
            return Err(bad("metadata `range` needs two values".into()));
        }
        let nmem = num(f.meta("members")?, "members")?;
        if nmem == 0 || values.len() < 2 {
            return Err(bad(
                "a rating model needs at least one RBM and two rating values".into(),
            ));
        }
        let mut members = Vec::with_capacity(nmem);
        for n in 0..nmem {
            let orientation: Orientation = f.meta(&format!("m{n}.orientation"))?.parse()?;
            let m = num(f.meta(&format!("m{n}.M"))?, "M")?;
            let d = num(f.meta(&format!("m{n}.D"))?, "D")?;
            let w = f.take(&format!("m{n}.W"), &[d, k, m])?;
            let b = f.take(&format!("m{n}.b"), &[d, k])?;
            let c = f.take(&format!("m{n}.c"), &[m])?;
            let dmat = if f.tensors.contains_key(&format!("m{n}.D")) {
                Some(f.take(&format!("m{n}.D"), &[d, m])?)
            } else {
                None
            };
            let factors = match f.metadata.get(&format!("m{n}.C")).cloned() {
                Some(cs) => {
                    let cf = num(&cs, "C")?;
                    let a = f.take(&format!("m{n}.A"), &[d, k, cf])?;
                    let bb = f.take(&format!("m{n}.B"), &[cf, m])?;
                    Some((cf, a, bb))
                }
                None => None,
            };
            let rbm = RatingRbm {
                d,
                k,
                m,
                w,
                b,
                c,
                dmat,
                factors,
            };
            rbm.validate()?;
            members.push(CfMember { orientation, rbm });
        }
        let ub = f.take("baseline_user", &[users.len()])?;
        let ib = f.take("baseline_item", &[items.len()])?;
        let mean: f32 = f
            .meta("baseline_mean")?
            .parse()
            .map_err(|_| bad("metadata `baseline_mean` is not a number".into()))?;
        let predict = match f.meta("predict")? {
            "exact" => PredictMethod::Exact,
            _ => PredictMethod::MeanField,
        };
        let readout = match f.meta("readout")? {
            "argmax" => RatingReadout::Argmax,
            _ => RatingReadout::Expected,
        };
        let implicit_targets = f.meta("implicit_targets")? == "true";
        f.ensure_all_taken()?;
        Ok(CfModel {
            members,
            values,
            predict,
            readout,
            baseline: BiasBaseline {
                mean,
                user_bias: ub,
                item_bias: ib,
                range: (range[0], range[1]),
            },
            users,
            items,
            implicit_targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::RatingRbmParams;
    use crate::rating::tests::planted;
    use crate::ratings::RatingScale;

    fn small_model() -> (CfModel, RatingMatrix) {
        let ratings = planted(40, 15, 2, 0.5, 7);
        let scale = RatingScale::infer(&ratings).unwrap();
        let train = RatingMatrix::from_ratings(41, 16, &ratings, &scale).unwrap();
        let mut members = Vec::new();
        for (o, p) in [
            (
                Orientation::User,
                RatingRbmParams::new().hidden(5).epochs(2).conditional(true),
            ),
            (
                Orientation::Item,
                RatingRbmParams::new().hidden(4).epochs(2).factors(Some(2)),
            ),
        ] {
            let (m, _) = train_member(
                &p.check().unwrap(),
                o,
                &train,
                scale.values(),
                &[],
                &[],
                &mut |_| {},
            )
            .unwrap();
            members.push(m);
        }
        let mut users = IdMap::new();
        let mut items = IdMap::new();
        for u in 0..41 {
            users.intern(&format!("u{u}"));
        }
        for i in 0..16 {
            items.intern(&format!("item {i}"));
        }
        let model = CfModel {
            members,
            values: scale.values().to_vec(),
            predict: PredictMethod::Exact,
            readout: RatingReadout::Expected,
            baseline: BiasBaseline::fit_default(41, 16, &ratings, scale.range()),
            users,
            items,
            implicit_targets: true,
        };
        (model, train)
    }

    #[test]
    fn save_load_round_trip() {
        let (model, train) = small_model();
        let dir = std::env::temp_dir().join(format!("rbm-cf-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        model.save(&path).unwrap();
        let back = CfModel::load(&path).unwrap();
        assert_eq!(back, model);
        let pairs = [(0u32, 3u32), (5, 7)];
        assert_eq!(back.predict(&train, &pairs), model.predict(&train, &pairs));
        std::fs::write(&path, b"not a model").unwrap();
        assert!(matches!(CfModel::load(&path), Err(RbmError::Format { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_users_and_items_fall_back_to_the_baseline() {
        let (model, train) = small_model();
        // User 40 and item 15 have no training ratings (the planted set has 40 × 15).
        let pairs = [(0u32, 1u32), (40, 1), (2, 15), (99, 99)];
        let p = model.predict(&train, &pairs);
        assert_eq!(p.fallbacks, 3);
        for (r, &(u, i)) in p.ratings.iter().zip(&pairs).skip(1) {
            assert_eq!(*r, model.baseline.predict(u, i));
        }
        let (lo, hi) = model.baseline.range;
        assert!(p.ratings[0] >= lo && p.ratings[0] <= hi);
    }

    #[test]
    fn implicit_sets_add_targets_per_orientation() {
        let (_, train) = small_model();
        let extra = [(0u32, 14u32)];
        let by_user = implicit_sets(&train, &extra, Orientation::User);
        assert!(by_user.row(0).0.contains(&14));
        assert_eq!(
            by_user.nnz(),
            train.by_user.nnz() + usize::from(!train.by_user.row(0).0.contains(&14))
        );
        let by_item = implicit_sets(&train, &extra, Orientation::Item);
        assert!(by_item.row(14).0.contains(&0));
    }
}
