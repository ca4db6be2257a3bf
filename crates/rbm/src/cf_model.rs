//! Recommender built from rating RBMs: orientation (user-based or item-based), the implicit
//! "rated" sets of the conditional model, ensembles (averaged predictions of several RBMs), the
//! fallback to the bias baseline for users or items absent from training, and model files.

use crate::cf_eval::BiasBaseline;
use crate::error::Result;
use crate::modelfile::{TensorFile, check_format, read_tensors, write_tensors};
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

crate::error::spelled!(Orientation, "orientation", { User => "user", Item => "item" });

impl Orientation {
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

/// Scores every item for users, a chunk of users at a time ([`CfModel::item_scorer`]), as
/// [`CfModel::predict_with_extra`] would with no extra implicit pairs (pairs with an unknown
/// user or item get the baseline), except that a user's rated items score −∞. With
/// mean-field prediction the unrated pairs come from matrix products
/// ([`RatingRbm::mean_field_grid`]; the same ratings to rounding); exact prediction scores
/// pair by pair.
pub struct ItemScorer<'a> {
    model: &'a CfModel,
    train: &'a RatingMatrix,
    parts: Vec<ScorerPart>,
    /// Score pair by pair ([`CfModel::predict_with_extra`]).
    pairwise: bool,
    /// Every item id, in order (a user-based member's visible units).
    items: Vec<u32>,
    /// Whether each item has training ratings (unknown items get the baseline).
    item_known: Vec<bool>,
    /// An item-based member's ratings (items × users), kept from call to call: a fresh buffer
    /// of this size is mapped page by page by the system, each call.
    scratch: std::sync::Mutex<Vec<f32>>,
}

/// What an [`ItemScorer`] keeps per member.
struct ScorerPart {
    /// The conditional member's implicit sets (training ratings only).
    implicit: Option<Csr>,
    /// An item-based member's hidden probabilities of every item (mean field).
    item_ph: Option<Vec<f32>>,
}

impl ItemScorer<'_> {
    /// Predicted ratings of every item for each of `users`, into `out` (`users.len() ×
    /// n_items`, one user's items after another; its allocation is reused from call to call).
    /// Items a user rated in training score −∞, so they rank last and are never recommended
    /// ([`CfModel::predict`] predicts them from the user's other ratings; at Netflix scale
    /// that would cost more than all the rest).
    pub fn scores(&self, users: &[u32], out: &mut Vec<f32>) {
        let (m, train) = (self.model, self.train);
        let ni = train.n_items;
        let rated = |u: u32| train.by_user.row_or_empty(u as usize).0;
        let unrated = |u: u32| (0..ni as u32).filter(move |i| rated(u).binary_search(i).is_err());
        out.clear();
        let in_range = users.iter().all(|&u| (u as usize) < train.n_users);
        if self.pairwise || !in_range {
            out.resize(users.len() * ni, f32::NEG_INFINITY);
            let pairs: Vec<(u32, u32)> = users
                .iter()
                .flat_map(|&u| unrated(u).map(move |i| (u, i)))
                .collect();
            let mut pred = m.predict_with_extra(train, &pairs, &[]).ratings.into_iter();
            for (row, &u) in out.chunks_exact_mut(ni).zip(users) {
                for i in unrated(u) {
                    row[i as usize] = pred.next().unwrap_or(f32::NAN);
                }
            }
            return;
        }
        use rayon::prelude::*;
        let (items, item_known) = (&self.items, &self.item_known);
        let nu = users.len();
        // The members' ratings are summed in `out`, then turned into scores in place.
        out.resize(nu * ni, 0.0);
        for (mem, part) in m.members.iter().zip(&self.parts) {
            let (o, rbm) = (mem.orientation, &mem.rbm);
            match o {
                Orientation::User => {
                    let ph = rbm.case_hidden_probs(o.cases(train), part.implicit.as_ref(), users);
                    rbm.mean_field_grid(&ph, items, &m.values, m.readout, out);
                }
                Orientation::Item => {
                    // Cases are the items: a row per item, a column per listed user.
                    let ph = part.item_ph.as_deref().unwrap_or_default();
                    let mut grid = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
                    grid.clear();
                    grid.resize(ni * nu, 0.0);
                    rbm.mean_field_grid(ph, users, &m.values, m.readout, &mut grid);
                    out.par_chunks_mut(ni).enumerate().for_each(|(s, row)| {
                        for (i, r) in row.iter_mut().enumerate() {
                            *r += grid[i * nu + s];
                        }
                    });
                }
            }
        }
        // `known` in parts: the user once per row, the items once for the scorer.
        let nm = m.members.len() as f32;
        out.par_chunks_mut(ni).zip(users).for_each(|(row, &u)| {
            let user_known = train.by_user.has_entries(u as usize);
            for (i, r) in row.iter_mut().enumerate() {
                *r = if user_known && item_known[i] {
                    *r / nm
                } else {
                    m.baseline.predict(u, i as u32)
                };
            }
            for &i in rated(u) {
                row[i as usize] = f32::NEG_INFINITY;
            }
        });
    }
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
    train.by_user.has_entries(user as usize) && train.by_item.has_entries(item as usize)
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

    /// A scorer of every item for chunks of users (top-N lists), conditioning on `train`.
    pub fn item_scorer<'a>(&'a self, train: &'a RatingMatrix) -> ItemScorer<'a> {
        // Pair by pair: exact prediction, and members whose visible units are not the
        // training matrix's users or items (`predict_with_extra` decides what they give).
        let pairwise = self.predict == PredictMethod::Exact
            || self.members.is_empty()
            || self
                .members
                .iter()
                .any(|mem| mem.rbm.d != mem.orientation.visible(train));
        let items: Vec<u32> = (0..train.n_items as u32).collect();
        let parts = self
            .members
            .iter()
            .map(|mem| {
                let o = mem.orientation;
                let implicit = mem.rbm.dmat.is_some().then(|| implicit_sets(train, &[], o));
                // Item-based members' cases are the items: their hidden probabilities serve
                // every chunk of users.
                let item_ph = (o == Orientation::Item && !pairwise).then(|| {
                    mem.rbm
                        .case_hidden_probs(&train.by_item, implicit.as_ref(), &items)
                });
                ScorerPart { implicit, item_ph }
            })
            .collect();
        ItemScorer {
            model: self,
            train,
            parts,
            pairwise,
            item_known: (0..train.n_items)
                .map(|i| train.by_item.has_entries(i))
                .collect(),
            items,
            scratch: Default::default(),
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
        meta.insert("predict".into(), self.predict.name().into());
        meta.insert("readout".into(), self.readout.name().into());
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
    ///
    /// Everything read from the file is checked before it is used, so a damaged or hand-edited
    /// file is an [`RbmError::Format`](crate::error::RbmError::Format) naming the file and
    /// the field, never a panic or silently wrong predictions: the rating values (finite, strictly increasing, K of them, 2 ≤ K ≤ 255),
    /// the baseline's clamp range (finite, low ≤ high, within the values), every member's
    /// orientation, sizes and tensor shapes against the id maps (predictions index the weights by
    /// user or item id), every tensor value and the baseline mean (finite), and the option
    /// values (only those [`CfModel::save`] writes).
    pub fn load(path: &Path) -> Result<Self> {
        let mut f = read_tensors(path)?;
        check_format(&f, RATING_FORMAT, RATING_FORMAT_VERSION)?;

        let values: Vec<f32> = meta_json(&f, "values", "a JSON list of numbers")?;
        let k = values.len();
        if !(2..=255).contains(&k) {
            return Err(f.err(format!(
                "metadata `values` has {k} rating values; a model needs 2 to 255"
            )));
        }
        // Predictions read the values as an ordered scale (class k is the k-th smallest, as the
        // training ratings are classed): a reversed or non-finite one would invert them or make
        // them NaN.
        if !(values.iter().all(|v| v.is_finite()) && values.windows(2).all(|w| w[0] < w[1])) {
            return Err(f.err(format!(
                "metadata `values` {values:?} must be finite and strictly increasing"
            )));
        }
        let k_meta = f.meta_usize("K")?;
        if k_meta != k {
            return Err(f.err(format!(
                "metadata `K` = {k_meta} but `values` lists {k} rating values"
            )));
        }
        // The baseline clamps to the range (`f32::clamp` panics on low > high or NaN).
        let range: Vec<f32> = meta_json(&f, "range", "a JSON list of two numbers")?;
        let (lo, hi) = (values[0], values[k - 1]);
        match range[..] {
            [a, b] if a.is_finite() && b.is_finite() && lo <= a && a <= b && b <= hi => {}
            _ => {
                return Err(f.err(format!(
                    "metadata `range` {range:?} must be two finite values, low then high, \
                     within the rating values [{lo}, {hi}]"
                )));
            }
        }
        let users = id_map(&f, "users")?;
        let items = id_map(&f, "items")?;

        let nmem = f.meta_usize("members")?;
        if nmem == 0 {
            return Err(f.err("metadata `members` = 0: a rating model needs at least one RBM"));
        }
        // No allocation sized by `nmem`: a forged count fails at the first missing member.
        let mut members = Vec::new();
        for n in 0..nmem {
            let key = format!("m{n}.orientation");
            let orientation: Orientation = f.meta_choice(&key, "user or item")?;
            let m = f.meta_usize(&format!("m{n}.M"))?;
            let d = f.meta_usize(&format!("m{n}.D"))?;
            if m == 0 {
                return Err(f.err(format!("metadata `m{n}.M` = 0: an RBM needs hidden units")));
            }
            // The member's visible units are the items (user-based) or users (item-based) of
            // the id maps; predictions index W, b and D by those ids.
            let (visible, what) = match orientation {
                Orientation::User => (items.len(), "items"),
                Orientation::Item => (users.len(), "users"),
            };
            if d != visible {
                return Err(f.err(format!(
                    "member {n} is {}-based with {d} visible units, but the model has {visible} {what}",
                    orientation.name()
                )));
            }
            let w = f.take_finite(&format!("m{n}.W"), &[d, k, m])?;
            let b = f.take_finite(&format!("m{n}.b"), &[d, k])?;
            let c = f.take_finite(&format!("m{n}.c"), &[m])?;
            let dmat = if f.tensors.contains_key(&format!("m{n}.D")) {
                Some(f.take_finite(&format!("m{n}.D"), &[d, m])?)
            } else {
                None
            };
            let factors = if f.metadata.contains_key(&format!("m{n}.C")) {
                let cf = f.meta_usize(&format!("m{n}.C"))?;
                if cf == 0 {
                    return Err(f.err(format!(
                        "metadata `m{n}.C` = 0: a factored RBM needs at least one factor"
                    )));
                }
                let a = f.take_finite(&format!("m{n}.A"), &[d, k, cf])?;
                let bb = f.take_finite(&format!("m{n}.B"), &[cf, m])?;
                Some((cf, a, bb))
            } else {
                None
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
            rbm.validate()
                .map_err(|e| f.err(format!("member {n}: {e}")))?;
            members.push(CfMember { orientation, rbm });
        }
        let user_bias = f.take_finite("baseline_user", &[users.len()])?;
        let item_bias = f.take_finite("baseline_item", &[items.len()])?;
        let mean: f32 = f.meta_parse("baseline_mean")?;
        if !mean.is_finite() {
            return Err(f.err(format!("metadata `baseline_mean` = {mean}: must be finite")));
        }
        let predict: PredictMethod = f.meta_choice("predict", "exact or mean-field")?;
        let readout: RatingReadout = f.meta_choice("readout", "expected or argmax")?;
        let implicit_targets: bool = f.meta_choice("implicit_targets", "true or false")?;
        f.ensure_all_taken()?;
        Ok(CfModel {
            members,
            values,
            predict,
            readout,
            baseline: BiasBaseline {
                mean,
                user_bias,
                item_bias,
                range: (range[0], range[1]),
            },
            users,
            items,
            implicit_targets,
        })
    }
}

/// Metadata `key` of `f` parsed as JSON into a `T` (`what` describes it for the error).
fn meta_json<T: serde::de::DeserializeOwned>(f: &TensorFile, key: &str, what: &str) -> Result<T> {
    serde_json::from_str(f.meta(key)?)
        .map_err(|e| f.err(format!("metadata `{key}` is not {what}: {e}")))
}

/// The id map stored as metadata `key` (a JSON list of distinct strings).
fn id_map(f: &TensorFile, key: &str) -> Result<IdMap> {
    let tokens: Vec<String> = meta_json(f, key, "a JSON list of strings")?;
    IdMap::from_tokens(tokens).map_err(|e| f.err(format!("metadata `{key}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RbmError;
    use crate::rating::RatingRbmParams;
    use crate::rating::tests::planted;
    use crate::ratings::RatingScale;

    fn small_model() -> (CfModel, RatingMatrix) {
        let ratings = planted(40, 15, 2, 0.5, 7);
        let scale = RatingScale::infer(&ratings).unwrap();
        let train = RatingMatrix::from_ratings(41, 16, ratings, &scale).unwrap();
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
            baseline: BiasBaseline::fit_default(&train, &scale),
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

    /// A fresh directory for one test's files.
    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rbm-cf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Splits a safetensors file into its header (JSON) and its data bytes.
    fn split(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (
            serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
            &bytes[8 + n..],
        )
    }

    /// Writes `out`: the safetensors file `path` with its header rewritten by `edit` (the
    /// data bytes are kept).
    fn forge(path: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let bytes = std::fs::read(path).unwrap();
        let (mut header, data) = split(&bytes);
        edit(&mut header);
        let mut text = header.to_string().into_bytes();
        text.resize(text.len().next_multiple_of(8), b' ');
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend(text);
        file.extend(data);
        std::fs::write(out, file).unwrap();
    }

    /// Writes `out`: `path` with metadata `key` set to `value`.
    fn forge_meta(path: &Path, out: &Path, key: &str, value: &str) {
        forge(path, out, |h| {
            h["__metadata__"][key] = serde_json::json!(value)
        });
    }

    /// Writes `out`: `path` with value `index` of tensor `name` overwritten by `v` (header
    /// untouched); returns that value's byte offset in the file.
    fn poke(path: &Path, out: &Path, name: &str, index: usize, v: f32) -> u64 {
        let mut bytes = std::fs::read(path).unwrap();
        let (header, data) = split(&bytes);
        let start = bytes.len() - data.len()
            + header[name]["data_offsets"][0].as_u64().unwrap() as usize
            + 4 * index;
        bytes[start..start + 4].copy_from_slice(&v.to_le_bytes());
        std::fs::write(out, bytes).unwrap();
        start as u64
    }

    /// Asserts that loading `out` is a Format error naming `out` whose message contains every
    /// one of `needles`; returns the error's byte offset.
    fn refused(out: &Path, needles: &[&str]) -> u64 {
        match CfModel::load(out) {
            Err(e @ RbmError::Format { .. }) => {
                let text = e.to_string();
                for needle in needles {
                    assert!(text.contains(needle), "`{text}` lacks `{needle}`");
                }
                let RbmError::Format { path, offset, .. } = e else {
                    unreachable!()
                };
                assert_eq!(path, out);
                offset
            }
            Err(e) => panic!("expected a Format error naming {needles:?}, got {e:?}"),
            Ok(_) => panic!("a forged model ({needles:?}) loaded without error"),
        }
    }

    /// The small model saved in a fresh directory: (directory, file, model).
    fn saved(name: &str) -> (std::path::PathBuf, std::path::PathBuf, CfModel) {
        let (model, _) = small_model();
        let dir = tmpdir(name);
        let path = dir.join("m.safetensors");
        model.save(&path).unwrap();
        (dir, path, model)
    }

    #[test]
    fn valid_model_round_trips_bit_for_bit() {
        let (dir, path, model) = saved("bits");
        let back = CfModel::load(&path).unwrap();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(back.members.len(), model.members.len());
        for (a, b) in back.members.iter().zip(&model.members) {
            assert_eq!(a.orientation, b.orientation);
            let (ra, rb) = (&a.rbm, &b.rbm);
            assert_eq!((ra.d, ra.k, ra.m), (rb.d, rb.k, rb.m));
            assert_eq!(bits(&ra.w), bits(&rb.w));
            assert_eq!(bits(&ra.b), bits(&rb.b));
            assert_eq!(bits(&ra.c), bits(&rb.c));
            assert_eq!(ra.dmat.as_deref().map(bits), rb.dmat.as_deref().map(bits));
            assert_eq!(
                ra.factors.as_ref().map(|(c, x, y)| (*c, bits(x), bits(y))),
                rb.factors.as_ref().map(|(c, x, y)| (*c, bits(x), bits(y)))
            );
        }
        assert!(model.members[0].rbm.dmat.is_some() && model.members[1].rbm.factors.is_some());
        assert_eq!(bits(&back.values), bits(&model.values));
        let (bb, mb) = (&back.baseline, &model.baseline);
        assert_eq!(bb.mean.to_bits(), mb.mean.to_bits());
        assert_eq!(bits(&bb.user_bias), bits(&mb.user_bias));
        assert_eq!(bits(&bb.item_bias), bits(&mb.item_bias));
        assert_eq!(
            bits(&[bb.range.0, bb.range.1]),
            bits(&[mb.range.0, mb.range.1])
        );
        assert_eq!(back, model);
        // Saving what was loaded writes the same bytes.
        let again = dir.join("again.safetensors");
        back.save(&again).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&path).unwrap()
        );
        // The forging helpers change nothing by themselves: an untouched rewrite of the header
        // (keys reordered) and a value poked with itself both load as the original.
        let out = dir.join("same.safetensors");
        forge(&path, &out, |_| {});
        assert_eq!(CfModel::load(&out).unwrap(), model);
        poke(&path, &out, "m0.W", 3, model.members[0].rbm.w[3]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
        // Other option values and models without a baseline range of the full scale load too.
        let mut other = model.clone();
        other.predict = PredictMethod::MeanField;
        other.readout = RatingReadout::Argmax;
        other.implicit_targets = false;
        other.baseline.range = (2.0, 4.5);
        other.save(&out).unwrap();
        assert_eq!(CfModel::load(&out).unwrap(), other);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reversed_or_out_of_scale_range_is_refused() {
        // `range` = [5,1] made `cf predict` panic in `f32::clamp`.
        let (dir, path, _) = saved("range");
        let out = dir.join("forged.safetensors");
        for (range, needles) in [
            (
                "[5.0,1.0]",
                &["metadata `range` [5.0, 1.0]", "low then high"][..],
            ),
            ("[1.0,1e300]", &["metadata `range` [1.0, inf]", "finite"]),
            (
                "[0.0,5.0]",
                &["metadata `range`", "within the rating values [1, 5]"],
            ),
            (
                "[1.0,5.5]",
                &["metadata `range`", "within the rating values [1, 5]"],
            ),
            ("[3.0]", &["metadata `range` [3.0]", "two finite values"]),
            ("[1.0,2.0,5.0]", &["metadata `range`", "two finite values"]),
            (
                "NaN",
                &["metadata `range` is not a JSON list of two numbers"],
            ),
            (
                "[1,\"5\"]",
                &["metadata `range` is not a JSON list of two numbers"],
            ),
        ] {
            forge_meta(&path, &out, "range", range);
            refused(&out, needles);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unordered_or_inconsistent_values_are_refused() {
        // Decreasing values were accepted and silently inverted every prediction.
        let (dir, path, _) = saved("values");
        let out = dir.join("forged.safetensors");
        for (values, needles) in [
            (
                "[5.0,4.0,3.0,2.0,1.0]",
                &[
                    "metadata `values` [5.0, 4.0, 3.0, 2.0, 1.0] must be finite and strictly increasing",
                ][..],
            ),
            (
                "[1.0,2.0,2.0,4.0,5.0]",
                &["`values`", "strictly increasing"],
            ),
            ("[1.0,2.0,3.0,4.0,1e300]", &["`values`", "inf", "finite"]),
            (
                "[3.0]",
                &["metadata `values` has 1 rating values; a model needs 2 to 255"],
            ),
            ("[]", &["metadata `values` has 0 rating values"]),
            (
                "{\"a\":1}",
                &["metadata `values` is not a JSON list of numbers"],
            ),
        ] {
            forge_meta(&path, &out, "values", values);
            refused(&out, needles);
        }
        // K must agree with the values and the values with the tensors' K dimension.
        forge_meta(&path, &out, "K", "4");
        refused(
            &out,
            &["metadata `K` = 4 but `values` lists 5 rating values"],
        );
        forge_meta(&path, &out, "K", "five");
        refused(&out, &["metadata `K` = `five` is not a valid usize"]);
        forge(&path, &out, |h| {
            h["__metadata__"]["values"] = serde_json::json!("[1.0,2.0,3.0,4.0]");
            h["__metadata__"]["K"] = serde_json::json!("4");
            h["__metadata__"]["range"] = serde_json::json!("[1.0,4.0]");
        });
        refused(
            &out,
            &["tensor `m0.W` has shape [16, 5, 5], expected [16, 4, 5]"],
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_values_are_refused_naming_the_tensor() {
        // NaN weights printed NaN predictions and NaN scores ranked recommendations; an
        // infinite baseline bias was silently clamped.
        let (dir, path, model) = saved("finite");
        let out = dir.join("forged.safetensors");
        let r0 = &model.members[0].rbm;
        let r1 = &model.members[1].rbm;
        let cf = r1.factors.as_ref().unwrap().0;
        for (name, len) in [
            ("m0.W", r0.w.len()),
            ("m0.b", r0.b.len()),
            ("m0.c", r0.c.len()),
            ("m0.D", r0.d * r0.m),
            ("m1.W", r1.w.len()),
            ("m1.b", r1.b.len()),
            ("m1.c", r1.c.len()),
            ("m1.A", r1.d * r1.k * cf),
            ("m1.B", cf * r1.m),
            ("baseline_user", model.users.len()),
            ("baseline_item", model.items.len()),
        ] {
            for (index, v) in [
                (0, f32::NAN),
                (len / 2, f32::INFINITY),
                (len - 1, f32::NEG_INFINITY),
            ] {
                let at = poke(&path, &out, name, index, v);
                let offset = refused(
                    &out,
                    &[&format!(
                        "tensor `{name}` holds NaN or infinity (value {index} of {len} is {v})"
                    )],
                );
                assert_eq!(offset, at, "{name}[{index}]");
            }
        }
        for mean in ["NaN", "inf", "-inf", "1e39"] {
            forge_meta(&path, &out, "baseline_mean", mean);
            refused(&out, &["metadata `baseline_mean`", "must be finite"]);
        }
        forge_meta(&path, &out, "baseline_mean", "middle");
        refused(
            &out,
            &["metadata `baseline_mean` = `middle` is not a valid f32"],
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn member_shapes_are_checked_against_the_id_maps() {
        // A user-based member relabelled `item` made `cf predict` index W out of bounds.
        let (dir, path, _) = saved("orient");
        let out = dir.join("forged.safetensors");
        forge_meta(&path, &out, "m0.orientation", "item");
        refused(
            &out,
            &["member 0 is item-based with 16 visible units, but the model has 41 users"],
        );
        forge_meta(&path, &out, "m1.orientation", "user");
        refused(
            &out,
            &["member 1 is user-based with 41 visible units, but the model has 16 items"],
        );
        // Relabelled with its D to match: the tensors are then the wrong shape.
        forge(&path, &out, |h| {
            h["__metadata__"]["m0.orientation"] = serde_json::json!("item");
            h["__metadata__"]["m0.D"] = serde_json::json!("41");
        });
        refused(
            &out,
            &["tensor `m0.W` has shape [16, 5, 5], expected [41, 5, 5]"],
        );
        // Id maps that disagree with the members or the baseline.
        let mut tokens: Vec<String> = (0..41).map(|u| format!("u{u}")).collect();
        tokens.pop();
        forge_meta(&path, &out, "users", &serde_json::json!(tokens).to_string());
        refused(
            &out,
            &["member 1 is item-based with 41 visible units, but the model has 40 users"],
        );
        // Tensors reshaped by hand (same data): the conditional D with rows for the cases.
        forge(&path, &out, |h| {
            h["m0.D"]["shape"] = serde_json::json!([5, 16]);
        });
        refused(&out, &["tensor `m0.D` has shape [5, 16], expected [16, 5]"]);
        forge(&path, &out, |h| {
            h["m1.B"]["shape"] = serde_json::json!([4, 2]);
        });
        refused(&out, &["tensor `m1.B` has shape [4, 2], expected [2, 4]"]);
        forge(&path, &out, |h| {
            h["baseline_item"]["shape"] = serde_json::json!([4, 4]);
        });
        refused(
            &out,
            &["tensor `baseline_item` has shape [4, 4], expected [16]"],
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_and_options_from_the_file_are_checked() {
        let (dir, path, _) = saved("meta");
        let out = dir.join("forged.safetensors");
        for (key, value, needles) in [
            ("members", "0", &["metadata `members` = 0"][..]),
            // Too many members: no allocation of that size, an error at the first missing one.
            (
                "members",
                "18446744073709551615",
                &["metadata key `m2.orientation` is missing"],
            ),
            ("members", "1", &["unexpected tensors", "m1.W"]),
            (
                "m0.orientation",
                "sideways",
                &["metadata `m0.orientation` = `sideways`"],
            ),
            ("m0.M", "0", &["metadata `m0.M` = 0"]),
            (
                "m0.M",
                "-5",
                &["metadata `m0.M` = `-5` is not a valid usize"],
            ),
            ("m1.C", "0", &["metadata `m1.C` = 0"]),
            (
                "m1.C",
                "3",
                &["tensor `m1.A` has shape [41, 5, 2], expected [41, 5, 3]"],
            ),
            ("m0.C", "2", &["tensor `m0.A` is missing"]),
            ("predict", "bogus", &["metadata `predict` = `bogus`"]),
            ("readout", "median", &["metadata `readout` = `median`"]),
            (
                "implicit_targets",
                "yes",
                &["metadata `implicit_targets` = `yes`"],
            ),
            (
                "users",
                "[\"a\",\"a\"]",
                &["metadata `users`", "duplicate id token `a`"],
            ),
            (
                "items",
                "items",
                &["metadata `items` is not a JSON list of strings"],
            ),
        ] {
            forge_meta(&path, &out, key, value);
            refused(&out, needles);
        }
        for key in [
            "K",
            "members",
            "m1.orientation",
            "m1.D",
            "predict",
            "implicit_targets",
        ] {
            forge(&path, &out, |h| {
                h["__metadata__"].as_object_mut().unwrap().remove(key);
            });
            refused(&out, &[&format!("metadata key `{key}` is missing")]);
        }
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
    fn item_scorer_matches_pair_by_pair_prediction() {
        let (mut model, train) = small_model();
        // Larger weights than two epochs give, so that a wrong row or bias shows plainly.
        for mem in &mut model.members {
            mem.rbm.w.iter_mut().for_each(|w| *w *= 20.0);
        }
        // Unknown user 40, a repeated user, users out of order; item 15 is unknown.
        let users = [3u32, 0, 40, 17, 3, 39];
        let pairs: Vec<(u32, u32)> = users
            .iter()
            .flat_map(|&u| (0..16).map(move |i| (u, i)))
            .collect();
        let full = model.members.clone();
        for (members, method, readout) in [
            (
                vec![full[0].clone()],
                PredictMethod::MeanField,
                RatingReadout::Expected,
            ),
            (
                vec![full[1].clone()],
                PredictMethod::MeanField,
                RatingReadout::Expected,
            ),
            (
                full.clone(),
                PredictMethod::MeanField,
                RatingReadout::Expected,
            ),
            (
                vec![full[0].clone()],
                PredictMethod::MeanField,
                RatingReadout::Argmax,
            ),
            (full.clone(), PredictMethod::Exact, RatingReadout::Expected),
        ] {
            model.members = members;
            model.predict = method;
            model.readout = readout;
            let want = model.predict_with_extra(&train, &pairs, &[]).ratings;
            // The buffer is reused: a call for another set of users comes first.
            let scorer = model.item_scorer(&train);
            let mut got = vec![7.0f32; 3];
            scorer.scores(&users[1..2], &mut got);
            scorer.scores(&users, &mut got);
            assert_eq!(got.len(), want.len());
            let mut spread = 0.0f32;
            for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let (u, i) = pairs[n];
                let rated = (u as usize) < train.by_user.rows()
                    && train.by_user.row(u as usize).0.contains(&i);
                if rated {
                    assert_eq!(g, f32::NEG_INFINITY, "pair {u}, {i}");
                    continue;
                }
                if !known(&train, u, i) || method == PredictMethod::Exact {
                    // Pair by pair here too, or the baseline: the same bits.
                    assert_eq!(g.to_bits(), w.to_bits(), "pair {u}, {i}");
                } else {
                    assert!((g - w).abs() < 2e-5, "pair {u}, {i}: {g} against {w}");
                }
                spread = spread.max((w - want[0]).abs());
            }
            assert!(spread > 0.05, "predictions too alike to test anything");
            // The same bits on any number of threads.
            for threads in [1, 3] {
                let pool = crate::team::test_pool(threads);
                let mut again = Vec::new();
                pool.install(|| model.item_scorer(&train).scores(&users, &mut again));
                assert!(
                    again
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
        }
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
