//! Synthetic rating data at any scale (up to Netflix's 480,189 users × 17,770 items × 100,480,507
//! ratings) from a planted low-rank model, and a compact binary rating file (`RBMR`) that loads
//! 10⁸ ratings in seconds.
//!
//! The generator builds the user-major [`Csr`] directly (5 bytes per rating, never a list of
//! 12-byte records): per-user counts from a log-normal (heavy-tailed, like Netflix's mean 209 /
//! median 96), item popularity from a Zipf–Mandelbrot law `p(i) ∝ 1/(rank(i) + q)` (a few
//! blockbusters, a long tail), and each rating from `μ + a_u + β_i + ⟨U_u, V_i⟩ + noise` rounded
//! onto 1..5. Every user's draws come from a stream keyed by the user, so the output is identical
//! for any thread count.
//!
//! File layout (little-endian): `b"RBMR"`, version `u32` = 1, users `u64`, items `u64`, ratings
//! `u64`, classes K `u32`, K × `f32` rating values, (users + 1) × `u64` row offsets, ratings ×
//! `u32` item ids (ascending within a user), ratings × `u8` classes.

use crate::atomic::write_atomic;
use crate::error::{RbmError, Result};
use crate::random::{Purpose, Stream};
use crate::ratings::Csr;
use rayon::prelude::*;
use std::io::{Read, Write};
use std::path::Path;

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"RBMR";
const VERSION: u32 = 1;

/// Ratings by user with their scale: what the generator makes and the binary file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct RatingSet {
    /// Number of users (rows of `by_user`).
    pub n_users: usize,
    /// Number of items (columns).
    pub n_items: usize,
    /// The rating value of each class.
    pub values: Vec<f32>,
    /// Ratings by user: columns are item ids, classes index `values`.
    pub by_user: Csr,
}

/// Shape of a planted data set; [`PlantedSpec::netflix`] is the Netflix Prize's.
#[derive(Clone, Debug, PartialEq)]
pub struct PlantedSpec {
    /// Users.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Total ratings (at least `users`, at most `users × items`).
    pub ratings: u64,
    /// Rank of the planted user–item interaction.
    pub rank: usize,
    /// Seed of every random stream.
    pub seed: u64,
}

impl PlantedSpec {
    /// The Netflix Prize shape: 480,189 users, 17,770 items, 100,480,507 ratings.
    pub fn netflix(seed: u64) -> Self {
        PlantedSpec {
            users: 480_189,
            items: 17_770,
            ratings: 100_480_507,
            rank: 8,
            seed,
        }
    }
}

fn normal32(s: &mut Stream) -> f32 {
    s.normal() as f32
}

/// Per-user rating counts: log-normal draws scaled to sum exactly to `total`, each in 1..=items.
fn user_counts(spec: &PlantedSpec) -> Vec<u32> {
    let raw: Vec<f64> = (0..spec.users)
        .into_par_iter()
        .map(|u| {
            let mut s = Stream::new(spec.seed, Purpose::Data, 0x5EED_0001, 0, u as u64);
            (1.2 * s.normal()).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    let scale = spec.ratings as f64 / sum;
    let cap = spec.items as u64;
    let mut counts: Vec<u32> = raw
        .iter()
        .map(|&x| ((x * scale) as u64).clamp(1, cap) as u32)
        .collect();
    let mut have: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    // Fix the rounding and clamping difference one rating at a time, heaviest users first
    // when adding (they have room), sweeping until the total is exact.
    let mut order: Vec<usize> = (0..spec.users).collect();
    order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
    while have != spec.ratings {
        for &u in &order {
            if have < spec.ratings && u64::from(counts[u]) < cap {
                counts[u] += 1;
                have += 1;
            } else if have > spec.ratings && counts[u] > 1 {
                counts[u] -= 1;
                have -= 1;
            }
            if have == spec.ratings {
                break;
            }
        }
    }
    counts
}

/// Generates a planted rating set (values 1..5). Deterministic for a seed, for any thread count.
pub fn generate_planted(spec: &PlantedSpec) -> Result<RatingSet> {
    let (nu, ni) = (spec.users, spec.items);
    if nu == 0 || ni == 0 || ni > u32::MAX as usize {
        return Err(RbmError::param("users/items", "need at least one of each"));
    }
    if spec.ratings < nu as u64 || spec.ratings > nu as u64 * ni as u64 {
        return Err(RbmError::param(
            "ratings",
            format!(
                "must lie in [users, users × items] = [{nu}, {}]",
                nu as u64 * ni as u64
            ),
        ));
    }
    if spec.rank == 0 {
        return Err(RbmError::param("rank", "must be at least 1"));
    }
    let r = spec.rank;
    // Items: a popularity rank (a random permutation, so ids carry no popularity), a bias and
    // factors.
    let pop_rank = Stream::new(spec.seed, Purpose::Data, 0x5EED_0002, 0, 0).permutation(ni);
    let mut by_rank = vec![0u32; ni];
    for (i, &p) in pop_rank.iter().enumerate() {
        by_rank[p] = i as u32;
    }
    let inv_sqrt_r = 1.0 / (r as f32).sqrt();
    let item_par: Vec<f32> = (0..ni)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut s = Stream::new(spec.seed, Purpose::Data, 0x5EED_0003, 0, i as u64);
            let bias = 0.5 * normal32(&mut s);
            std::iter::once(bias).chain((0..r).map(move |_| normal32(&mut s)))
        })
        .collect();
    // Zipf–Mandelbrot offset: the most popular item draws ~0.2% of all ratings at Netflix
    // scale (≈ 40% of users), as in the real data.
    let q = (ni as f64 / 178.0).max(1.0);
    let log_span = ((ni as f64 + q) / q).ln();

    let counts = user_counts(spec);
    let mut offsets = Vec::with_capacity(nu + 1);
    offsets.push(0usize);
    for &c in &counts {
        offsets.push(offsets.last().unwrap() + c as usize);
    }
    let nnz = spec.ratings as usize;
    let mut cols = vec![0u32; nnz];
    let mut classes = vec![0u8; nnz];
    // Hand each block of users its own slices of the output.
    const BLOCK: usize = 2048;
    let mut jobs = Vec::with_capacity(nu.div_ceil(BLOCK));
    {
        let (mut rc, mut rk) = (&mut cols[..], &mut classes[..]);
        for b0 in (0..nu).step_by(BLOCK) {
            let b1 = (b0 + BLOCK).min(nu);
            let len = offsets[b1] - offsets[b0];
            let (c, rest_c) = std::mem::take(&mut rc).split_at_mut(len);
            let (k, rest_k) = std::mem::take(&mut rk).split_at_mut(len);
            rc = rest_c;
            rk = rest_k;
            jobs.push((b0, b1, c, k));
        }
    }
    jobs.into_par_iter().for_each_init(
        || {
            (
                vec![0u64; ni.div_ceil(64)],
                Vec::<u32>::new(),
                Vec::<(f32, u32)>::new(),
            )
        },
        |(seen, pick, keys), (b0, b1, c, k)| {
            let mut at = 0usize;
            for (u, &n) in counts.iter().enumerate().take(b1).skip(b0) {
                let n = n as usize;
                let mut s = Stream::new(spec.seed, Purpose::Data, 0x5EED_0004, 0, u as u64);
                let bias = 3.6 + 0.4 * normal32(&mut s);
                let uf: Vec<f32> = (0..r).map(|_| normal32(&mut s)).collect();
                pick.clear();
                if n <= ni / 4 {
                    // Rejection: the items already picked hold at most ~3/4 of the mass.
                    while pick.len() < n {
                        let x = q * (log_span * s.uniform64()).exp() - q;
                        let rank = (x as usize).min(ni - 1);
                        let i = by_rank[rank];
                        let (w, bit) = (i as usize / 64, 1u64 << (i % 64));
                        if seen[w] & bit == 0 {
                            seen[w] |= bit;
                            pick.push(i);
                        }
                    }
                    for &i in pick.iter() {
                        seen[i as usize / 64] &= !(1u64 << (i % 64));
                    }
                } else {
                    // Heavy users: weighted sampling without replacement by exponential keys
                    // (Efraimidis–Spirakis): keep the n smallest E_i / w_i.
                    keys.clear();
                    for (rank, &item) in by_rank.iter().enumerate() {
                        let e = -(1.0 - s.uniform64()).ln();
                        keys.push(((e * (rank as f64 + q)) as f32, item));
                    }
                    keys.select_nth_unstable_by(n - 1, |a, b| {
                        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
                    });
                    pick.extend(keys[..n].iter().map(|e| e.1));
                }
                pick.sort_unstable();
                for (o, &i) in pick.iter().enumerate() {
                    let ip = &item_par[i as usize * (r + 1)..(i as usize + 1) * (r + 1)];
                    let dotp: f32 = uf.iter().zip(&ip[1..]).map(|(a, b)| a * b).sum();
                    let v = bias + ip[0] + 0.9 * inv_sqrt_r * dotp + 0.6 * normal32(&mut s);
                    c[at + o] = i;
                    k[at + o] = (v.round().clamp(1.0, 5.0) - 1.0) as u8;
                }
                at += n;
            }
        },
    );
    Ok(RatingSet {
        n_users: nu,
        n_items: ni,
        values: vec![1.0, 2.0, 3.0, 4.0, 5.0],
        by_user: Csr {
            offsets,
            cols,
            classes,
        },
    })
}

/// True when `path` starts with the binary rating file's magic.
pub fn is_binary_ratings(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == MAGIC
}

const CHUNK: usize = 1 << 16;

/// Writes `set` as a binary rating file, atomically.
pub fn write_binary(path: &Path, set: &RatingSet) -> Result<()> {
    let c = &set.by_user;
    write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(set.n_users as u64).to_le_bytes())?;
        w.write_all(&(set.n_items as u64).to_le_bytes())?;
        w.write_all(&(c.nnz() as u64).to_le_bytes())?;
        w.write_all(&(set.values.len() as u32).to_le_bytes())?;
        for v in &set.values {
            w.write_all(&v.to_le_bytes())?;
        }
        let mut buf = Vec::with_capacity(CHUNK * 8);
        for ch in c.offsets.chunks(CHUNK) {
            buf.clear();
            buf.extend(ch.iter().flat_map(|&o| (o as u64).to_le_bytes()));
            w.write_all(&buf)?;
        }
        for ch in c.cols.chunks(CHUNK) {
            buf.clear();
            buf.extend(ch.iter().flat_map(|&o| o.to_le_bytes()));
            w.write_all(&buf)?;
        }
        w.write_all(&c.classes)
    })
}

/// Reads a file, remembering the byte offset for errors.
struct Reader<'a> {
    f: std::io::BufReader<std::fs::File>,
    path: &'a Path,
    at: u64,
    len: u64,
}

impl Reader<'_> {
    fn bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.at + buf.len() as u64 > self.len {
            return Err(RbmError::format(
                self.path,
                self.at,
                format!(
                    "truncated: need {} more bytes, the file ends at {}",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.f
            .read_exact(buf)
            .map_err(|e| RbmError::io(self.path, e))?;
        self.at += buf.len() as u64;
        Ok(())
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn err(&self, at: u64, reason: impl Into<String>) -> RbmError {
        RbmError::format(self.path, at, reason.into())
    }
}

/// Items that no rating names (ids above the highest one used) that a binary rating file may
/// declare even when it holds fewer ratings.
const SPARE_ITEMS: u64 = 1 << 16;

/// Reads a binary rating file, validating everything (sizes, monotone offsets, item ids in
/// range and ascending within each user, a plausible item count, classes below K); errors
/// name the byte offset.
pub fn read_binary(path: &Path) -> Result<RatingSet> {
    let f = std::fs::File::open(path).map_err(|e| RbmError::io(path, e))?;
    let len = f.metadata().map_err(|e| RbmError::io(path, e))?.len();
    let mut r = Reader {
        f: std::io::BufReader::with_capacity(1 << 20, f),
        path,
        at: 0,
        len,
    };
    let mut magic = [0u8; 4];
    r.bytes(&mut magic)?;
    if &magic != MAGIC {
        return Err(r.err(0, "not a binary rating file (magic is not RBMR)"));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(r.err(
            4,
            format!("unsupported version {version} (expected {VERSION})"),
        ));
    }
    let (nu, ni, nnz) = (r.u64()?, r.u64()?, r.u64()?);
    let kpos = r.at;
    let k = r.u32()?;
    if !(2..=255).contains(&k) {
        return Err(r.err(kpos, format!("need 2 to 255 rating classes, found {k}")));
    }
    if ni > u64::from(u32::MAX) + 1 {
        return Err(r.err(16, format!("{ni} items do not fit 32-bit ids")));
    }
    let expect = (nu.checked_add(1).and_then(|x| x.checked_mul(8)))
        .and_then(|x| nnz.checked_mul(5).and_then(|y| x.checked_add(y)))
        .and_then(|x| x.checked_add(r.at + 4 * u64::from(k)));
    if expect != Some(len) {
        return Err(r.err(
            len.min(r.at),
            format!(
                "size mismatch: {nu} users and {nnz} ratings need {} bytes, the file has {len}",
                expect.map_or("too many".to_string(), |e| e.to_string())
            ),
        ));
    }
    let mut values = Vec::with_capacity(k as usize);
    for _ in 0..k {
        let at = r.at;
        let v = f32::from_le_bytes(r.u32()?.to_le_bytes());
        if !v.is_finite() || values.last().is_some_and(|&p| v <= p) {
            return Err(r.err(at, "rating values must be finite and increasing"));
        }
        values.push(v);
    }
    let (nu, nnz) = (nu as usize, nnz as usize);
    let mut buf = vec![0u8; CHUNK * 8];
    let off_base = r.at;
    let mut offsets = Vec::with_capacity(nu + 1);
    while offsets.len() < nu + 1 {
        let n = (nu + 1 - offsets.len()).min(CHUNK);
        r.bytes(&mut buf[..n * 8])?;
        for ch in buf[..n * 8].chunks_exact(8) {
            let o = u64::from_le_bytes(ch.try_into().unwrap());
            let prev = offsets.last().copied().unwrap_or(0);
            if (offsets.is_empty() && o != 0) || (o as usize) < prev || o > nnz as u64 {
                return Err(r.err(
                    off_base + 8 * offsets.len() as u64,
                    format!("row offset {o} out of order (previous {prev}, ratings {nnz})"),
                ));
            }
            offsets.push(o as usize);
        }
    }
    if offsets[nu] != nnz {
        return Err(r.err(
            off_base + 8 * nu as u64,
            format!(
                "last row offset {} is not the rating count {nnz}",
                offsets[nu]
            ),
        ));
    }
    let col_base = r.at;
    let mut cols = Vec::with_capacity(nnz);
    while cols.len() < nnz {
        let n = (nnz - cols.len()).min(CHUNK * 2);
        r.bytes(&mut buf[..n * 4])?;
        cols.extend(
            buf[..n * 4]
                .chunks_exact(4)
                .map(|ch| u32::from_le_bytes(ch.try_into().unwrap())),
        );
    }
    // Validate ids in parallel, one row at a time.
    let bad = (0..nu)
        .into_par_iter()
        .filter_map(|u| {
            let row = &cols[offsets[u]..offsets[u + 1]];
            row.iter().enumerate().find_map(|(n, &i)| {
                ((i as u64) >= ni || (n > 0 && row[n - 1] >= i)).then_some(offsets[u] + n)
            })
        })
        .min();
    if let Some(p) = bad {
        return Err(r.err(
            col_base + 4 * p as u64,
            format!(
                "item id {} is out of range (< {ni}) or not ascending within its user",
                cols[p]
            ),
        ));
    }
    // The item count is only a header field (no per-item data), so a corrupt header could
    // declare billions of items and make the id maps and a model exhaust memory: a file may
    // declare items past the highest id its ratings use, but not more of them than it holds
    // ratings (or `SPARE_ITEMS`, whichever is larger). Ids ascend within each user (checked
    // above), so a row's last is its highest.
    let used = (0..nu)
        .filter(|&u| offsets[u] < offsets[u + 1])
        .map(|u| cols[offsets[u + 1] - 1])
        .max()
        .map_or(0, |i| u64::from(i) + 1);
    let spare = (nnz as u64).max(SPARE_ITEMS);
    if ni - used > spare {
        return Err(r.err(
            16,
            format!(
                "implausible item count {ni}: the {nnz} ratings use item ids below {used} only \
                 (a file may declare at most {spare} unrated items past those); is the header \
                 corrupt?"
            ),
        ));
    }
    let cls_base = r.at;
    let mut classes = vec![0u8; nnz];
    for ch in classes.chunks_mut(CHUNK * 8) {
        r.bytes(ch)?;
    }
    if let Some(p) = classes.par_iter().position_first(|&c| u32::from(c) >= k) {
        return Err(r.err(
            cls_base + p as u64,
            format!("class {} is not below K = {k}", classes[p]),
        ));
    }
    Ok(RatingSet {
        n_users: nu,
        n_items: ni as usize,
        values,
        by_user: Csr {
            offsets,
            cols,
            classes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> RatingSet {
        generate_planted(&PlantedSpec {
            users: 500,
            items: 300,
            ratings: 20_000,
            rank: 4,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn generated_sets_have_the_requested_shape_and_skew() {
        let s = small(1);
        let c = &s.by_user;
        assert_eq!((s.n_users, s.n_items, c.nnz()), (500, 300, 20_000));
        assert_eq!(c.rows(), 500);
        let mut per_item = vec![0usize; 300];
        for u in 0..500 {
            let (items, cls) = c.row(u);
            assert!(!items.is_empty(), "every user has a rating");
            assert!(items.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
            assert!(cls.iter().all(|&k| k < 5));
            for &i in items {
                per_item[i as usize] += 1;
            }
        }
        // Popularity skew: the top 10% of items hold far more than 10% of the ratings.
        per_item.sort_unstable_by(|a, b| b.cmp(a));
        let top: usize = per_item[..30].iter().sum();
        assert!(top > 20_000 / 4, "top-10% items hold {top} of 20000");
        // Heavy-tailed users: the largest user has several times the mean (40).
        let max_user = (0..500).map(|u| c.row(u).0.len()).max().unwrap();
        assert!(max_user > 120, "max user count {max_user}");
        // All five classes appear, the middle ones most.
        let mut hist = [0usize; 5];
        for &k in &c.classes {
            hist[k as usize] += 1;
        }
        assert!(hist.iter().all(|&h| h > 100), "{hist:?}");
        assert!(hist[3] > hist[0], "{hist:?}");
    }

    #[test]
    fn ratings_follow_the_planted_model() {
        // Users' ratings correlate across items: a user's mean on one half of their items
        // predicts their mean on the other half (planted user bias and factors).
        let s = small(3);
        let c = &s.by_user;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for u in 0..500 {
            let k = c.row(u).1;
            if k.len() >= 10 {
                let h = k.len() / 2;
                let m = |x: &[u8]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
                xs.push(m(&k[..h]));
                ys.push(m(&k[h..]));
            }
        }
        let n = xs.len() as f64;
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
        let corr = cov / (vx * vy).sqrt();
        assert!(corr > 0.3, "split-half correlation {corr}");
    }

    #[test]
    fn deterministic_for_a_seed_and_any_thread_count() {
        let a = small(7);
        let pool = crate::team::test_pool(1);
        let b = pool.install(|| small(7));
        assert_eq!(a, b);
        assert_ne!(a, small(8));
    }

    #[test]
    fn dense_corner_cases() {
        // Every user rates every item (the heavy-user path), and the minimum of one each.
        let full = generate_planted(&PlantedSpec {
            users: 20,
            items: 30,
            ratings: 600,
            rank: 2,
            seed: 0,
        })
        .unwrap();
        assert!((0..20).all(|u| full.by_user.row(u).0.len() == 30));
        let thin = generate_planted(&PlantedSpec {
            users: 20,
            items: 30,
            ratings: 20,
            rank: 2,
            seed: 0,
        })
        .unwrap();
        assert!((0..20).all(|u| thin.by_user.row(u).0.len() == 1));
        let bad = PlantedSpec {
            users: 20,
            items: 30,
            ratings: 601,
            rank: 2,
            seed: 0,
        };
        assert!(matches!(
            generate_planted(&bad),
            Err(RbmError::InvalidParam { .. })
        ));
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rbm-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn format_offset(p: &Path) -> u64 {
        match read_binary(p) {
            Err(RbmError::Format { offset, path, .. }) => {
                assert_eq!(path, p);
                offset
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn binary_round_trip_and_typed_errors() {
        let s = small(2);
        let p = tmp("r.rbmr");
        write_binary(&p, &s).unwrap();
        assert!(is_binary_ratings(&p));
        let back = read_binary(&p).unwrap();
        assert_eq!(back, s);
        let bytes = std::fs::read(&p).unwrap();
        let header = 36 + 4 * 5;
        assert_eq!(
            bytes.len(),
            header + 8 * 501 + 5 * 20_000,
            "compact: 5 bytes per rating"
        );

        let q = tmp("bad.rbmr");
        // Truncated.
        std::fs::write(&q, &bytes[..bytes.len() - 1]).unwrap();
        format_offset(&q);
        std::fs::write(&q, &bytes[..10]).unwrap();
        assert_eq!(format_offset(&q), 8);
        // Garbage magic.
        let mut g = bytes.clone();
        g[0] = b'X';
        std::fs::write(&q, &g).unwrap();
        assert_eq!(format_offset(&q), 0);
        assert!(!is_binary_ratings(&q));
        // Bad version.
        let mut g = bytes.clone();
        g[4] = 9;
        std::fs::write(&q, &g).unwrap();
        assert_eq!(format_offset(&q), 4);
        // An item id out of range, at rating 5.
        let cols_at = header + 8 * 501;
        let mut g = bytes.clone();
        g[cols_at + 4 * 5..cols_at + 4 * 6].copy_from_slice(&1000u32.to_le_bytes());
        std::fs::write(&q, &g).unwrap();
        assert_eq!(format_offset(&q), (cols_at + 20) as u64);
        // A class out of range, at rating 7.
        let cls_at = cols_at + 4 * 20_000;
        let mut g = bytes.clone();
        g[cls_at + 7] = 5;
        std::fs::write(&q, &g).unwrap();
        assert_eq!(format_offset(&q), (cls_at + 7) as u64);
        // A decreasing row offset (row 3).
        let mut g = bytes.clone();
        g[header + 24..header + 32].copy_from_slice(&0u64.to_le_bytes());
        std::fs::write(&q, &g).unwrap();
        assert_eq!(format_offset(&q), (header + 24) as u64);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}
