//! Evaluation for collaborative filtering: the regularized bias baseline (global mean + user and
//! item biases fitted by alternating least squares, as Surprise's `BaselineOnly`), RMSE and MAE,
//! and top-N ranking metrics (precision, recall and NDCG at N with a relevance threshold).

use crate::ratings::{Csr, Rating, RatingMatrix, RatingScale};
use rayon::prelude::*;

/// r̂(u,i) = μ + b_u + b_i, with biases shrunk toward 0 by `reg_user` / `reg_item`.
#[derive(Clone, Debug, PartialEq)]
pub struct BiasBaseline {
    /// Global mean rating.
    pub mean: f32,
    /// User biases (0 for users without training ratings).
    pub user_bias: Vec<f32>,
    /// Item biases (0 for items without training ratings).
    pub item_bias: Vec<f32>,
    /// Predictions are clipped to this range.
    pub range: (f32, f32),
}

impl BiasBaseline {
    /// Fits by alternating least squares on the training matrix, Surprise's defaults:
    /// `reg_item` = 10, `reg_user` = 15, 10 sweeps (item biases first). Each bias is one row's
    /// sum, in row order, so the rows run in parallel and the result does not depend on the
    /// thread count (at 10⁸ ratings, 0.6 s on two threads where a pass over the rating list,
    /// scattering into per-user sums, took 5.4 s).
    pub fn fit(
        train: &RatingMatrix,
        scale: &RatingScale,
        reg_user: f32,
        reg_item: f32,
        sweeps: usize,
    ) -> Self {
        let range = scale.range();
        let value: Vec<f64> = scale.values().iter().map(|&v| f64::from(v)).collect();
        let nnz = train.by_user.nnz();
        let mean = if nnz == 0 {
            (range.0 + range.1) / 2.0
        } else {
            let rows: Vec<f64> = (0..train.by_user.rows())
                .into_par_iter()
                .map(|u| {
                    let (_, ks) = train.by_user.row(u);
                    ks.iter().map(|&k| value[k as usize]).sum::<f64>()
                })
                .collect();
            (rows.iter().sum::<f64>() / nnz as f64) as f32
        };
        let mu = f64::from(mean);
        // b[r] = Σ over row r of (value − μ − other[col]), shrunk by reg + the row's length.
        let sweep = |rows: &Csr, other: &[f64], reg: f32, b: &mut [f64]| {
            b.par_iter_mut().enumerate().for_each(|(r, b)| {
                let (cs, ks) = rows.row_or_empty(r);
                let s: f64 = cs
                    .iter()
                    .zip(ks)
                    .map(|(&c, &k)| value[k as usize] - mu - other[c as usize])
                    .sum();
                *b = s / (f64::from(reg) + cs.len() as f64);
            });
        };
        let mut bu = vec![0.0f64; train.n_users];
        let mut bi = vec![0.0f64; train.n_items];
        for _ in 0..sweeps {
            sweep(&train.by_item, &bu, reg_item, &mut bi);
            sweep(&train.by_user, &bi, reg_user, &mut bu);
        }
        BiasBaseline {
            mean,
            user_bias: bu.iter().map(|&x| x as f32).collect(),
            item_bias: bi.iter().map(|&x| x as f32).collect(),
            range,
        }
    }

    /// Surprise's defaults (`reg_u` = 15, `reg_i` = 10, 10 sweeps).
    pub fn fit_default(train: &RatingMatrix, scale: &RatingScale) -> Self {
        Self::fit(train, scale, 15.0, 10.0, 10)
    }

    /// The predictions of items `0..out.len()` for `user`, as [`Self::predict`] gives them (the
    /// same additions), in one pass a compiler can vectorise.
    pub fn predict_row(&self, user: u32, out: &mut [f32]) {
        let bu = self.user_bias.get(user as usize).copied().unwrap_or(0.0);
        let (lo, hi) = self.range;
        let (known, rest) = out.split_at_mut(self.item_bias.len().min(out.len()));
        for (o, &bi) in known.iter_mut().zip(&self.item_bias) {
            *o = (self.mean + bu + bi).clamp(lo, hi);
        }
        rest.fill((self.mean + bu + 0.0).clamp(lo, hi));
    }

    /// The prediction; unknown users or items contribute no bias.
    pub fn predict(&self, user: u32, item: u32) -> f32 {
        let bu = self.user_bias.get(user as usize).copied().unwrap_or(0.0);
        let bi = self.item_bias.get(item as usize).copied().unwrap_or(0.0);
        (self.mean + bu + bi).clamp(self.range.0, self.range.1)
    }
}

/// Root mean squared error of `pred` against `truth`.
pub fn rmse(pred: &[f32], truth: &[f32]) -> f64 {
    let se: f64 = pred
        .iter()
        .zip(truth)
        .map(|(&p, &t)| f64::from(p - t).powi(2))
        .sum();
    (se / pred.len().max(1) as f64).sqrt()
}

/// Mean absolute error of `pred` against `truth`.
pub fn mae(pred: &[f32], truth: &[f32]) -> f64 {
    let ae: f64 = pred
        .iter()
        .zip(truth)
        .map(|(&p, &t)| f64::from(p - t).abs())
        .sum();
    ae / pred.len().max(1) as f64
}

/// Top-N ranking quality, averaged over the users with at least one relevant test item.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TopN {
    /// Mean precision@N.
    pub precision: f64,
    /// Mean recall@N.
    pub recall: f64,
    /// Mean NDCG@N (binary relevance).
    pub ndcg: f64,
    /// Mean average precision@N: per user, the precision at each hit's rank, summed and
    /// divided by min(relevant items, N).
    pub map: f64,
    /// Share of users with at least one relevant item in their top N.
    pub hit_rate: f64,
    /// Users averaged over.
    pub users: usize,
}

impl TopN {
    /// Adds `other`'s figures weighted by its users (see [`TopN::mean`]).
    fn add(&mut self, other: &TopN) {
        let w = other.users as f64;
        self.precision += other.precision * w;
        self.recall += other.recall * w;
        self.ndcg += other.ndcg * w;
        self.map += other.map * w;
        self.hit_rate += other.hit_rate * w;
        self.users += other.users;
    }

    /// The sums collected by [`TopN::add`] divided by the users.
    fn mean(mut self) -> TopN {
        let users = self.users.max(1) as f64;
        for x in [
            &mut self.precision,
            &mut self.recall,
            &mut self.ndcg,
            &mut self.map,
            &mut self.hit_rate,
        ] {
            *x /= users;
        }
        self
    }
}

/// Ranking metrics for one user: `ranked` is the recommended list (best first, only items the
/// user had not rated in training), `relevant` the held-out items rated at or above the
/// threshold. A user with no relevant item counts for nothing (`users` 0).
pub fn topn_user(ranked: &[u32], relevant: &[u32], n: usize) -> TopN {
    if relevant.is_empty() || n == 0 {
        return TopN::default();
    }
    let (mut hits, mut dcg, mut ap) = (0usize, 0.0, 0.0);
    for (pos, it) in ranked.iter().take(n).enumerate() {
        if relevant.contains(it) {
            hits += 1;
            dcg += 1.0 / ((pos + 2) as f64).log2();
            ap += hits as f64 / (pos + 1) as f64;
        }
    }
    let ideal: f64 = (0..relevant.len().min(n))
        .map(|p| 1.0 / ((p + 2) as f64).log2())
        .sum();
    TopN {
        precision: hits as f64 / n as f64,
        recall: hits as f64 / relevant.len() as f64,
        ndcg: dcg / ideal,
        map: ap / relevant.len().min(n) as f64,
        hit_rate: f64::from(u8::from(hits > 0)),
        users: 1,
    }
}

/// The `n` best-scored items of `scores` (item `i` scores `scores[i]`) that `skip` does not
/// rule out, as `(item, score)`, best first; equal scores go by item id, so the list is
/// deterministic: the same list as sorting everything (by `f32::total_cmp`). A short list is
/// kept sorted while the items stream past in id order: once it is full, a block of 16
/// scores none of which beats its last is turned away at once (a later item needs a higher
/// score, its id being larger), and `skip` is asked, in increasing id order, only about items
/// that would enter. A long list comes from a partial selection.
pub fn best_n(scores: &[f32], mut skip: impl FnMut(u32) -> bool, n: usize) -> Vec<(u32, f32)> {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if n == 0 {
        return Vec::new();
    }
    if n > 32 {
        let mut all: Vec<(u32, f32)> = (0..scores.len() as u32)
            .filter(|&i| !skip(i))
            .map(|i| (i, scores[i as usize]))
            .collect();
        let n = n.min(all.len());
        if n > 0 {
            all.select_nth_unstable_by(n - 1, cmp);
            all.truncate(n);
            all.sort_unstable_by(cmp);
        }
        return all;
    }
    // `total_cmp`'s order as integers, so a block is compared without a branch per score.
    let key = |x: f32| {
        let b = x.to_bits() as i32;
        b ^ (((b >> 31) as u32) >> 1) as i32
    };
    const BLOCK: usize = 16;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (b, blk) in scores.chunks(BLOCK).enumerate() {
        if top.len() == n {
            let last = key(top[n - 1].1);
            if !blk.iter().fold(false, |any, &x| any | (key(x) > last)) {
                continue;
            }
        }
        for (j, &x) in blk.iter().enumerate() {
            let p = ((b * BLOCK + j) as u32, x);
            if top.len() == n && cmp(&p, &top[n - 1]).is_gt() || skip(p.0) {
                continue;
            }
            let at = top.partition_point(|q| cmp(q, &p).is_lt());
            top.insert(at, p);
            top.truncate(n);
        }
    }
    top
}

/// Ranks every item not in the user's training row by its score (`scores(user)`: the user's
/// scores of all `n_items` items) and averages [`topn_user`] over the test users with at least
/// one rating ≥ `threshold`. `train` is by user.
pub fn topn<'s>(
    train: &Csr,
    n_items: usize,
    test: &[Rating],
    threshold: f32,
    n: usize,
    scores: &(dyn Fn(u32) -> &'s [f32] + Sync),
) -> TopN {
    use rayon::prelude::*;
    let mut rel: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for r in test {
        if r.value >= threshold - 1e-4 {
            rel.entry(r.user).or_default().push(r.item);
        }
    }
    let users: Vec<(u32, Vec<u32>)> = rel.into_iter().collect();
    let per_user: Vec<TopN> = users
        .par_iter()
        .map(|(u, relevant)| {
            let row = &scores(*u)[..n_items];
            // Items in the (ascending) training row are skipped, by one walk along it.
            let seen = train.row_or_empty(*u as usize).0;
            let mut at = 0;
            let skip = |i: u32| {
                at += seen[at..].partition_point(|&s| s < i);
                seen.get(at) == Some(&i)
            };
            let ranked: Vec<u32> = best_n(row, skip, n).into_iter().map(|p| p.0).collect();
            topn_user(&ranked, relevant, n)
        })
        .collect();
    let mut total = TopN::default();
    for t in &per_user {
        total.add(t);
    }
    total.mean()
}

/// A scorer for [`topn_chunked`]: given a chunk of users and their test ratings, the scores of
/// every item for each of those users (`users.len() × n_items`, one user's items after
/// another), written over the buffer given (the same one for every chunk, so its pages are
/// mapped once).
pub type ChunkScorer<'a> = &'a (dyn Fn(&[u32], &[Rating], &mut Vec<f32>) + Sync);

/// [`topn`] for several scorers, scoring every item for `users_per_chunk` users at a time, so
/// memory stays bounded however many users and items there are (Netflix-sized data would need
/// tens of GB at once). The chunks' averages are combined by their user counts, which gives the
/// same figures as a single pass. One [`TopN`] per scorer, in order.
pub fn topn_chunked(
    train: &Csr,
    n_items: usize,
    test: &[Rating],
    threshold: f32,
    n: usize,
    users_per_chunk: usize,
    scorers: &[ChunkScorer<'_>],
) -> Vec<TopN> {
    // Test ratings grouped by user, so each chunk of users owns one contiguous slice.
    let mut by_user = test.to_vec();
    by_user.sort_by_key(|r| r.user);
    let mut users: Vec<u32> = by_user
        .iter()
        .filter(|r| r.value >= threshold - 1e-4)
        .map(|r| r.user)
        .collect();
    users.dedup();
    let mut totals = vec![TopN::default(); scorers.len()];
    let mut scores = Vec::new();
    for chunk in users.chunks(users_per_chunk.max(1)) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        let sub = &by_user[by_user.partition_point(|r| r.user < first)
            ..by_user.partition_point(|r| r.user <= last)];
        for (total, scorer) in totals.iter_mut().zip(scorers) {
            scorer(chunk, sub, &mut scores);
            let scores = &scores;
            let row = |u: u32| {
                let at = chunk.binary_search(&u).expect("user of this chunk") * n_items;
                &scores[at..at + n_items]
            };
            total.add(&topn(train, n_items, sub, threshold, n, &row));
        }
    }
    totals.into_iter().map(TopN::mean).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_by_hand() {
        let p = [3.0, 4.0, 5.0];
        let t = [2.0, 4.0, 3.0];
        assert!((rmse(&p, &t) - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((mae(&p, &t) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn topn_by_hand() {
        // Hits at positions 1 and 3 of 3; 4 relevant items.
        let t = topn_user(&[5, 1, 7], &[5, 7, 8, 9], 3);
        assert!((t.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((t.recall - 0.5).abs() < 1e-12);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((t.ndcg - dcg / idcg).abs() < 1e-12);
        // AP@3: precisions 1/1 and 2/3 at the hits, over min(4, 3) = 3.
        assert!((t.map - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!((t.hit_rate, t.users), (1.0, 1));
        // One hit at rank 2 of 4, two relevant: AP = (1/2) / 2; no hit: all zero but counted.
        let t = topn_user(&[3, 9, 4, 6], &[9, 5], 4);
        assert!((t.map - 0.25).abs() < 1e-12 && t.hit_rate == 1.0);
        let t = topn_user(&[3, 4], &[9], 2);
        assert_eq!(
            (t.map, t.hit_rate, t.precision, t.users),
            (0.0, 0.0, 0.0, 1)
        );
        assert_eq!(topn_user(&[3, 4], &[], 2).users, 0);
    }

    #[test]
    fn best_n_equals_sorting_everything() {
        let mut st = crate::random::Stream::new(3, crate::random::Purpose::Data, 0, 0, 0);
        for round in 0..600 {
            let len = st.below(90);
            // Few distinct scores, so ties are common; now and then −∞ or NaN; some skipped.
            let scores: Vec<f32> = (0..len)
                .map(|_| match st.below(40) {
                    0 => f32::NEG_INFINITY,
                    1 => f32::NAN,
                    _ => st.below(5) as f32 * 0.5,
                })
                .collect();
            let skipped: Vec<bool> = (0..len).map(|_| st.below(4) == 0).collect();
            let n = st.below(len + 3);
            let mut all: Vec<(u32, f32)> = (0..len as u32)
                .filter(|&i| !skipped[i as usize])
                .map(|i| (i, scores[i as usize]))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(n);
            let got = best_n(&scores, |i| skipped[i as usize], n);
            let bits = |v: &[(u32, f32)]| -> Vec<(u32, u32)> {
                v.iter().map(|&(i, s)| (i, s.to_bits())).collect()
            };
            assert_eq!(bits(&got), bits(&all), "round {round}");
        }
    }

    #[test]
    fn chunked_topn_equals_one_pass() {
        // 40 users × 25 items; a deterministic pseudo-random score; chunks of 1, 3 and all users
        // must give the figures of `topn` over everyone at once.
        use crate::ratings::{RatingMatrix, RatingScale};
        let (nu, ni) = (40u32, 25u32);
        let h = |u: u32, i: u32| (u.wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503)) % 97;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for u in 0..nu {
            for i in 0..ni {
                let value = (1 + h(u, i) % 5) as f32;
                match h(i, u) % 4 {
                    0 => test.push(Rating {
                        user: u,
                        item: i,
                        value,
                    }),
                    1 | 2 => train.push(Rating {
                        user: u,
                        item: i,
                        value,
                    }),
                    _ => {}
                }
            }
        }
        let scale = RatingScale::from_values(vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let m = RatingMatrix::from_ratings(nu as usize, ni as usize, train, &scale).unwrap();
        let score = |u: u32, i: u32| h(u + 7, i * 3) as f32;
        let every: Vec<f32> = (0..nu)
            .flat_map(|u| (0..ni).map(move |i| score(u, i)))
            .collect();
        let row = |u: u32| &every[u as usize * ni as usize..(u as usize + 1) * ni as usize];
        let one = topn(&m.by_user, ni as usize, &test, 4.0, 5, &row);
        assert!(one.users > 20 && one.precision > 0.0, "{one:?}");
        let chunk_scorer = |users: &[u32], _: &[Rating], out: &mut Vec<f32>| {
            out.clear();
            out.extend(
                users
                    .iter()
                    .flat_map(|&u| (0..ni).map(move |i| score(u, i))),
            );
        };
        let flipped = |users: &[u32], _: &[Rating], out: &mut Vec<f32>| {
            out.clear();
            out.extend(
                users
                    .iter()
                    .flat_map(|&u| (0..ni).map(move |i| -score(u, i))),
            );
        };
        for per in [1, 3, 1000] {
            let got = topn_chunked(
                &m.by_user,
                ni as usize,
                &test,
                4.0,
                5,
                per,
                &[&chunk_scorer, &flipped],
            );
            assert_eq!(got[0].users, one.users);
            for (a, b) in [
                (got[0].precision, one.precision),
                (got[0].recall, one.recall),
                (got[0].ndcg, one.ndcg),
                (got[0].map, one.map),
                (got[0].hit_rate, one.hit_rate),
            ] {
                assert!((a - b).abs() < 1e-12, "chunks of {per}: {a} vs {b}");
            }
            // The second scorer ranks in reverse, so it is scored separately (not a copy).
            assert_ne!(got[1].ndcg, got[0].ndcg);
        }
    }

    #[test]
    fn baseline_matches_closed_form_on_one_sweep() {
        // One sweep from zero user biases: b_i = Σ(r − μ)/(reg_i + n_i), then
        // b_u = Σ(r − μ − b_i)/(reg_u + n_u).
        let rs = vec![
            Rating {
                user: 0,
                item: 0,
                value: 5.0,
            },
            Rating {
                user: 0,
                item: 1,
                value: 3.0,
            },
            Rating {
                user: 1,
                item: 0,
                value: 4.0,
            },
        ];
        let scale = RatingScale::from_values(vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let b = BiasBaseline::fit(
            &RatingMatrix::from_ratings(2, 2, rs, &scale).unwrap(),
            &scale,
            2.0,
            1.0,
            1,
        );
        let mu = 4.0f64;
        let bi0 = (1.0 + 0.0) / (1.0 + 2.0);
        let bi1 = -1.0 / (1.0 + 1.0);
        let bu0 = ((5.0 - mu - bi0) + (3.0 - mu - bi1)) / (2.0 + 2.0);
        assert!((f64::from(b.mean) - mu).abs() < 1e-6);
        assert!((f64::from(b.item_bias[0]) - bi0).abs() < 1e-6);
        assert!((f64::from(b.item_bias[1]) - bi1).abs() < 1e-6);
        assert!((f64::from(b.user_bias[0]) - bu0).abs() < 1e-6);
        assert_eq!(b.predict(9, 9), 4.0);
    }

    /// The row-parallel fit against alternating least squares written over the rating list
    /// (sums scattered in list order), over ten sweeps on planted data with users and items
    /// that have no ratings; and the same bits at 1 and 3 threads.
    #[test]
    fn baseline_from_rows_equals_sweeps_over_the_list() {
        let ratings = crate::rating::tests::planted(70, 30, 3, 0.3, 5);
        let scale = RatingScale::infer(&ratings).unwrap();
        let (nu, ni) = (73, 32);
        let m = RatingMatrix::from_ratings(nu, ni, ratings.clone(), &scale).unwrap();
        let fit = |threads: usize| {
            crate::team::test_pool(threads)
                .install(|| BiasBaseline::fit(&m, &scale, 15.0, 10.0, 10))
        };
        let b = fit(1);
        assert_eq!(fit(3), b);
        let mu = ratings.iter().map(|r| f64::from(r.value)).sum::<f64>() / ratings.len() as f64;
        // Half a sweep over the list: b[row] = Σ (r − μ − other[col]) / (reg + count).
        let half = |row: fn(&Rating) -> usize,
                    col: fn(&Rating) -> usize,
                    other: &[f64],
                    reg: f64,
                    n: usize| {
            let (mut sum, mut count) = (vec![0.0f64; n], vec![0.0f64; n]);
            for r in &ratings {
                sum[row(r)] += f64::from(r.value) - mu - other[col(r)];
                count[row(r)] += 1.0;
            }
            sum.iter()
                .zip(&count)
                .map(|(s, c)| s / (reg + c))
                .collect::<Vec<f64>>()
        };
        let (mut bu, mut bi) = (vec![0.0f64; nu], vec![0.0f64; ni]);
        for _ in 0..10 {
            bi = half(|r| r.item as usize, |r| r.user as usize, &bu, 10.0, ni);
            bu = half(|r| r.user as usize, |r| r.item as usize, &bi, 15.0, nu);
        }
        assert!((f64::from(b.mean) - mu).abs() < 1e-6);
        assert!(bi.iter().any(|&x| x.abs() > 0.05) && bu.iter().any(|&x| x.abs() > 0.05));
        for (got, want) in b
            .item_bias
            .iter()
            .zip(&bi)
            .chain(b.user_bias.iter().zip(&bu))
        {
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "{got} against {want}"
            );
        }
        assert_eq!(&b.user_bias[70..], &[0.0; 3]);
        assert_eq!(&b.item_bias[30..], &[0.0; 2]);
        // A row of predictions, past the known users and items too, bit for bit.
        let mut row = vec![0.0f32; ni + 3];
        for u in 0..nu as u32 + 2 {
            b.predict_row(u, &mut row);
            for (i, &p) in row.iter().enumerate() {
                assert_eq!(p.to_bits(), b.predict(u, i as u32).to_bits(), "{u} {i}");
            }
        }
    }
}
