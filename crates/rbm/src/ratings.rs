//! Rating data for collaborative filtering: readers for the common MovieLens-style files, id maps
//! (arbitrary tokens → dense indices), the rating scale (values → K classes), sparse storage by
//! user and by item (compressed rows; never a dense users × items matrix) and the train/test
//! splits (random holdout, k-fold, validation carved from training).

use crate::error::{RbmError, Result};
use crate::random::{Purpose, Stream};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Maps arbitrary id tokens ("196", "tt0111161") to dense indices `0..len`, in order of first
/// appearance, so that files with sparse or non-numeric ids need no preprocessing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdMap {
    tokens: Vec<String>,
    lookup: HashMap<String, u32>,
}

impl IdMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map holding `tokens` in this order (as saved in a model file).
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self> {
        let mut lookup = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if lookup.insert(t.clone(), i as u32).is_some() {
                return Err(RbmError::param("ids", format!("duplicate id token `{t}`")));
            }
        }
        Ok(IdMap { tokens, lookup })
    }

    /// The index of `token`, adding it if new.
    pub fn intern(&mut self, token: &str) -> u32 {
        if let Some(&i) = self.lookup.get(token) {
            return i;
        }
        let i = self.tokens.len() as u32;
        self.tokens.push(token.to_string());
        self.lookup.insert(token.to_string(), i);
        i
    }

    /// The index of `token` if known.
    pub fn get(&self, token: &str) -> Option<u32> {
        self.lookup.get(token).copied()
    }

    /// The token of index `i`.
    pub fn token(&self, i: u32) -> &str {
        &self.tokens[i as usize]
    }

    /// All tokens in index order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when no id is known.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// One rating: dense user and item indices and the rating value as written in the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rating {
    /// Dense user index.
    pub user: u32,
    /// Dense item index.
    pub item: u32,
    /// The rating value (e.g. 1..5 or 0.5..5).
    pub value: f32,
}

/// How a rating file is laid out. `Auto` decides from the file name and the first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatingFormat {
    /// Guess: `.inter` → [`RatingFormat::Inter`]; a line with `::` → [`RatingFormat::Dat`];
    /// otherwise the delimiter is a tab, a comma or spaces, and a first line whose rating field
    /// is not a number is a header.
    Auto,
    /// RecBole atomic file: a header line (`user_id:token item_id:token rating:float ...`), tabs.
    Inter,
    /// MovieLens-100K `u.data`: `user item rating timestamp`, tab-separated, no header.
    UData,
    /// MovieLens-1M/10M `ratings.dat`: `user::item::rating::timestamp`, no header.
    Dat,
    /// `ratings.csv` or plain `user,item,rating[,...]`: commas, optional header line.
    Csv,
    /// Plain `user<TAB>item<TAB>rating[...]`, optional header line.
    Tsv,
}

impl std::str::FromStr for RatingFormat {
    type Err = RbmError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => RatingFormat::Auto,
            "inter" => RatingFormat::Inter,
            "udata" | "u.data" => RatingFormat::UData,
            "dat" => RatingFormat::Dat,
            "csv" => RatingFormat::Csv,
            "tsv" => RatingFormat::Tsv,
            _ => {
                return Err(RbmError::param(
                    "format",
                    format!("unknown rating format `{s}` (auto, inter, udata, dat, csv, tsv)"),
                ));
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Delim {
    Tab,
    Comma,
    DoubleColon,
    Space,
}

fn split_fields(line: &str, d: Delim) -> Vec<&str> {
    match d {
        Delim::Tab => line.split('\t').map(str::trim).collect(),
        Delim::Comma => line.split(',').map(str::trim).collect(),
        Delim::DoubleColon => line.split("::").map(str::trim).collect(),
        Delim::Space => line.split_whitespace().collect(),
    }
}

fn guess_delim(line: &str) -> Delim {
    if line.contains("::") {
        Delim::DoubleColon
    } else if line.contains('\t') {
        Delim::Tab
    } else if line.contains(',') {
        Delim::Comma
    } else {
        Delim::Space
    }
}

fn parse_value(s: &str) -> Option<f32> {
    s.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// Reads a rating file, interning user and item tokens into `users` and `items` (shared between a
/// training and a test file so both use the same indices). Blank lines are skipped; any other
/// line that does not hold a user, an item and a finite numeric rating is an error naming the
/// file and line. A binary rating file (see [`crate::synthetic`]) is recognised by its magic
/// whatever `format` says.
pub fn read_ratings(
    path: &Path,
    format: RatingFormat,
    users: &mut IdMap,
    items: &mut IdMap,
) -> Result<Vec<Rating>> {
    if crate::synthetic::is_binary_ratings(path) {
        return read_binary_as_ratings(path, users, items);
    }
    let file = std::fs::File::open(path).map_err(|e| RbmError::io(path, e))?;
    read_ratings_from(BufReader::new(file), path, format, users, items)
}

/// A binary (`RBMR`) rating file as rating records; its dense ids become the tokens `"0"`,
/// `"1"`, ... For large files prefer [`crate::synthetic::read_binary`], which keeps the compact
/// sparse form (5 bytes per rating instead of 12).
fn read_binary_as_ratings(
    path: &Path,
    users: &mut IdMap,
    items: &mut IdMap,
) -> Result<Vec<Rating>> {
    let set = crate::synthetic::read_binary(path)?;
    let uid: Vec<u32> = (0..set.n_users)
        .map(|u| users.intern(&u.to_string()))
        .collect();
    let iid: Vec<u32> = (0..set.n_items)
        .map(|i| items.intern(&i.to_string()))
        .collect();
    let c = &set.by_user;
    let mut out = Vec::with_capacity(c.nnz());
    for (u, &user) in uid.iter().enumerate() {
        let (its, cls) = c.row(u);
        out.extend(its.iter().zip(cls).map(|(&i, &k)| Rating {
            user,
            item: iid[i as usize],
            value: set.values[k as usize],
        }));
    }
    Ok(out)
}

/// [`read_ratings`] from any reader; `path` only names the source in errors.
pub fn read_ratings_from<R: BufRead>(
    reader: R,
    path: &Path,
    format: RatingFormat,
    users: &mut IdMap,
    items: &mut IdMap,
) -> Result<Vec<Rating>> {
    let mut format = format;
    if format == RatingFormat::Auto
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("inter"))
    {
        format = RatingFormat::Inter;
    }
    let mut delim = match format {
        RatingFormat::Inter | RatingFormat::UData | RatingFormat::Tsv => Some(Delim::Tab),
        RatingFormat::Dat => Some(Delim::DoubleColon),
        RatingFormat::Csv => Some(Delim::Comma),
        RatingFormat::Auto => None,
    };
    let header_allowed = matches!(
        format,
        RatingFormat::Auto | RatingFormat::Csv | RatingFormat::Tsv
    );
    let header_required = format == RatingFormat::Inter;
    let mut out = Vec::new();
    let mut first = true;
    // Positions of the user, item and rating fields.
    let mut cols = [0usize, 1, 2];
    for (n, line) in reader.lines().enumerate() {
        let lineno = n + 1;
        let line = line.map_err(|e| RbmError::io(path, e))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let d = *delim.get_or_insert_with(|| guess_delim(line));
        let is_first = std::mem::replace(&mut first, false);
        if is_first && header_required {
            // RecBole names its columns (`user_id:token`, `item_id:token`, `rating:float`);
            // other column orders are honoured.
            let names = split_fields(line, d);
            let find = |prefix: &str| names.iter().position(|n| n.starts_with(prefix));
            cols = match (find("user_id"), find("item_id"), find("rating")) {
                (Some(u), Some(i), Some(r)) => [u, i, r],
                _ => {
                    return Err(RbmError::parse(
                        path,
                        lineno,
                        "header must name user_id, item_id and rating columns",
                    ));
                }
            };
            continue;
        }
        let fields = split_fields(line, d);
        let need = cols.iter().max().copied().unwrap_or(2) + 1;
        if fields.len() < need {
            if is_first && header_allowed && fields.len() >= 2 {
                continue;
            }
            return Err(RbmError::parse(
                path,
                lineno,
                format!(
                    "expected user, item and rating ({need} fields), found {} field(s)",
                    fields.len()
                ),
            ));
        }
        let (fu, fi, fr) = (fields[cols[0]], fields[cols[1]], fields[cols[2]]);
        let value = match parse_value(fr) {
            Some(v) => v,
            None if is_first && header_allowed => continue,
            None => {
                return Err(RbmError::parse(
                    path,
                    lineno,
                    format!("rating `{fr}` is not a finite number"),
                ));
            }
        };
        if fu.is_empty() || fi.is_empty() {
            return Err(RbmError::parse(path, lineno, "empty user or item id"));
        }
        out.push(Rating {
            user: users.intern(fu),
            item: items.intern(fi),
            value,
        });
    }
    Ok(out)
}

/// Reads item titles from an item file (`ml-100k.item`: tab-separated with a header; MovieLens
/// `u.item`: `id|title|...`; `movies.dat`: `id::title::genres`; `movies.csv`: `id,title,...`).
/// Only items known to `items` are kept; lines that cannot be split are errors.
pub fn read_item_titles(path: &Path, items: &IdMap) -> Result<HashMap<u32, String>> {
    let file = std::fs::File::open(path).map_err(|e| RbmError::io(path, e))?;
    let mut out = HashMap::new();
    let mut delim: Option<&str> = None;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            // u.item is Latin-1: fall back to a lossy read of the whole file.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return read_item_titles_lossy(path, items);
            }
            Err(e) => return Err(RbmError::io(path, e)),
        };
        parse_title_line(&line, n + 1, path, &mut delim, items, &mut out)?;
    }
    Ok(out)
}

fn read_item_titles_lossy(path: &Path, items: &IdMap) -> Result<HashMap<u32, String>> {
    let bytes = std::fs::read(path).map_err(|e| RbmError::io(path, e))?;
    let text: String = bytes.iter().map(|&b| b as char).collect();
    let mut out = HashMap::new();
    let mut delim = None;
    for (n, line) in text.lines().enumerate() {
        parse_title_line(line, n + 1, path, &mut delim, items, &mut out)?;
    }
    Ok(out)
}

fn parse_title_line(
    line: &str,
    lineno: usize,
    path: &Path,
    delim: &mut Option<&'static str>,
    items: &IdMap,
    out: &mut HashMap<u32, String>,
) -> Result<()> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() {
        return Ok(());
    }
    let d = *delim.get_or_insert_with(|| {
        if line.contains("::") {
            "::"
        } else if line.contains('\t') {
            "\t"
        } else if line.contains('|') {
            "|"
        } else {
            ","
        }
    });
    let mut parts = line.splitn(3, d);
    let (Some(id), Some(title)) = (parts.next(), parts.next()) else {
        return Err(RbmError::parse(path, lineno, "expected `id<sep>title`"));
    };
    if let Some(i) = items.get(id.trim()) {
        out.insert(i, title.trim().trim_matches('"').to_string());
    }
    Ok(())
}

/// The rating scale: the sorted values that rating classes `0..K` stand for.
#[derive(Clone, Debug, PartialEq)]
pub struct RatingScale {
    values: Vec<f32>,
}

impl RatingScale {
    /// A scale from explicit values (sorted, distinct, at least 2, at most 255).
    pub fn from_values(mut values: Vec<f32>) -> Result<Self> {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(RbmError::param("scale", "rating values must be finite"));
        }
        values.sort_by(f32::total_cmp);
        values.dedup();
        if values.len() < 2 || values.len() > 255 {
            return Err(RbmError::param(
                "scale",
                format!("need 2 to 255 distinct rating values, got {}", values.len()),
            ));
        }
        Ok(RatingScale { values })
    }

    /// Infers the scale from data: integer ratings spanning at most 100 steps give every integer
    /// from the minimum to the maximum (so 1..5 is K=5 even if no one gave a 2); values on a
    /// half-star grid give every half step (0.5..5 → K=10); anything else gives the distinct
    /// values seen.
    pub fn infer(ratings: &[Rating]) -> Result<Self> {
        if ratings.is_empty() {
            return Err(RbmError::param(
                "ratings",
                "no ratings to infer a scale from",
            ));
        }
        let (lo, hi) = ratings
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |a, r| {
                (a.0.min(r.value), a.1.max(r.value))
            });
        let on_grid = |step: f32| {
            ratings
                .iter()
                .all(|r| ((r.value / step).round() * step - r.value).abs() < 1e-4)
        };
        for step in [1.0f32, 0.5] {
            if on_grid(step) && (hi - lo) / step <= 100.0 {
                let n = ((hi - lo) / step).round() as usize + 1;
                return Self::from_values((0..n).map(|k| lo + k as f32 * step).collect());
            }
        }
        Self::from_values(ratings.iter().map(|r| r.value).collect())
    }

    /// Number of classes K.
    pub fn k(&self) -> usize {
        self.values.len()
    }

    /// The values, class by class.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The class of `value`, if it is on the scale (within 1e-4).
    pub fn class_of(&self, value: f32) -> Option<u8> {
        self.values
            .iter()
            .position(|&v| (v - value).abs() < 1e-4)
            .map(|k| k as u8)
    }

    /// Smallest and largest value.
    pub fn range(&self) -> (f32, f32) {
        (
            self.values[0],
            *self.values.last().expect("scale is non-empty"),
        )
    }
}

/// Compressed sparse rows: row `r` holds the column indices and rating classes of
/// `offsets[r]..offsets[r+1]`, columns sorted ascending. Flat arrays so the training loop reads
/// each case's ratings contiguously.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Csr {
    /// Row starts, `rows + 1` entries.
    pub offsets: Vec<usize>,
    /// Column index of each entry.
    pub cols: Vec<u32>,
    /// Rating class of each entry.
    pub classes: Vec<u8>,
}

impl Csr {
    /// Builds from `(row, col, class)` triples; a repeated `(row, col)` keeps the last class.
    /// Memory: the output (5 bytes per entry) plus one row of scratch, so a Netflix-sized set
    /// (10⁸ ratings) builds in about 0.5 GB; the iterator is walked twice.
    pub fn from_triples(rows: usize, triples: impl Iterator<Item = (u32, u32, u8)> + Clone) -> Csr {
        let mut offsets = vec![0usize; rows + 1];
        for (r, _, _) in triples.clone() {
            offsets[r as usize + 1] += 1;
        }
        for r in 0..rows {
            offsets[r + 1] += offsets[r];
        }
        let nnz = offsets[rows];
        // Counting sort by row: stable, so each row keeps the input order.
        let mut fill = offsets.clone();
        let mut cols = vec![0u32; nnz];
        let mut classes = vec![0u8; nnz];
        for (r, c, k) in triples {
            let p = fill[r as usize];
            fill[r as usize] += 1;
            cols[p] = c;
            classes[p] = k;
        }
        drop(fill);
        // Sort each row by column (stable, so among duplicates the last input comes last), keep
        // the last of each duplicate run, and compact in place (the write position never passes
        // the start of the row being read).
        let mut scratch: Vec<(u32, u8)> = Vec::new();
        let mut out = 0usize;
        let mut start = 0usize;
        for r in 0..rows {
            let end = offsets[r + 1];
            let row = &cols[start..end];
            if row.windows(2).all(|w| w[0] < w[1]) {
                cols.copy_within(start..end, out);
                classes.copy_within(start..end, out);
                out += end - start;
            } else {
                scratch.clear();
                scratch.extend(
                    cols[start..end]
                        .iter()
                        .copied()
                        .zip(classes[start..end].iter().copied()),
                );
                scratch.sort_by_key(|e| e.0);
                for n in 0..scratch.len() {
                    if n + 1 < scratch.len() && scratch[n + 1].0 == scratch[n].0 {
                        continue;
                    }
                    cols[out] = scratch[n].0;
                    classes[out] = scratch[n].1;
                    out += 1;
                }
            }
            start = end;
            offsets[r + 1] = out;
        }
        cols.truncate(out);
        classes.truncate(out);
        cols.shrink_to_fit();
        classes.shrink_to_fit();
        Csr {
            offsets,
            cols,
            classes,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// Columns and classes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[u8]) {
        let (a, b) = (self.offsets[r], self.offsets[r + 1]);
        (&self.cols[a..b], &self.classes[a..b])
    }

    /// The transpose, as a matrix with `cols` rows (a counting sort: rows come out sorted).
    pub fn transpose(&self, cols: usize) -> Csr {
        let mut offsets = vec![0usize; cols + 1];
        for &c in &self.cols {
            offsets[c as usize + 1] += 1;
        }
        for c in 0..cols {
            offsets[c + 1] += offsets[c];
        }
        let mut fill = offsets.clone();
        let mut tcols = vec![0u32; self.nnz()];
        let mut tclasses = vec![0u8; self.nnz()];
        for r in 0..self.rows() {
            let (cs, ks) = self.row(r);
            for (&c, &k) in cs.iter().zip(ks) {
                let p = fill[c as usize];
                fill[c as usize] += 1;
                tcols[p] = r as u32;
                tclasses[p] = k;
            }
        }
        Csr {
            offsets,
            cols: tcols,
            classes: tclasses,
        }
    }
}

/// Training ratings stored both by user and by item, as rating classes.
#[derive(Clone, Debug, PartialEq)]
pub struct RatingMatrix {
    /// Number of users (rows of `by_user`).
    pub n_users: usize,
    /// Number of items (rows of `by_item`).
    pub n_items: usize,
    /// Users' ratings: row = user, column = item.
    pub by_user: Csr,
    /// Items' ratings: row = item, column = user.
    pub by_item: Csr,
}

impl RatingMatrix {
    /// Builds the sparse matrix; every value must lie on `scale` (an error names the first one
    /// that does not). Indices must be below `n_users` / `n_items`.
    pub fn from_ratings(
        n_users: usize,
        n_items: usize,
        ratings: &[Rating],
        scale: &RatingScale,
    ) -> Result<Self> {
        // Validate first, so the build below can stream the ratings twice without a copy.
        let mut classes = Vec::with_capacity(ratings.len());
        for r in ratings {
            let k = scale.class_of(r.value).ok_or_else(|| {
                RbmError::param(
                    "ratings",
                    format!(
                        "rating {} is not on the scale {:?}",
                        r.value,
                        scale.values()
                    ),
                )
            })?;
            if r.user as usize >= n_users || r.item as usize >= n_items {
                return Err(RbmError::Shape(format!(
                    "rating ({}, {}) outside {n_users} users × {n_items} items",
                    r.user, r.item
                )));
            }
            classes.push(k);
        }
        let by_user = Csr::from_triples(
            n_users,
            ratings
                .iter()
                .zip(&classes)
                .map(|(r, &k)| (r.user, r.item, k)),
        );
        drop(classes);
        let by_item = by_user.transpose(n_items);
        Ok(RatingMatrix {
            n_users,
            n_items,
            by_user,
            by_item,
        })
    }

    /// Items become users and users items (for item-based models).
    pub fn transposed(&self) -> RatingMatrix {
        RatingMatrix {
            n_users: self.n_items,
            n_items: self.n_users,
            by_user: self.by_item.clone(),
            by_item: self.by_user.clone(),
        }
    }
}

/// Splits off a random `fraction` of the ratings as a test set (deterministic for a seed).
/// Returns `(train, test)`; the test part has `round(fraction · n)` ratings.
pub fn holdout(ratings: &[Rating], fraction: f64, seed: u64) -> Result<(Vec<Rating>, Vec<Rating>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(RbmError::param(
            "test-fraction",
            format!("must be in (0, 1), got {fraction}"),
        ));
    }
    let n_test = (fraction * ratings.len() as f64).round() as usize;
    let stream = Stream::new(seed, Purpose::Data, 0, 0, 0);
    Ok(split_by_permutation(ratings, stream, 0..n_test))
}

/// Fold `fold` of a `k`-fold split: every rating is in exactly one fold's test part.
pub fn kfold(
    ratings: &[Rating],
    k: usize,
    fold: usize,
    seed: u64,
) -> Result<(Vec<Rating>, Vec<Rating>)> {
    if k < 2 || fold >= k {
        return Err(RbmError::param(
            "folds",
            format!("need k >= 2 and fold < k (k = {k}, fold = {fold})"),
        ));
    }
    let n = ratings.len();
    let stream = Stream::new(seed, Purpose::Data, 1, 0, 0);
    Ok(split_by_permutation(
        ratings,
        stream,
        fold * n / k..(fold + 1) * n / k,
    ))
}

/// Splits `ratings` into (training, test): the test part is places `test` of a permutation
/// drawn from `stream`, in permutation order; the training part is the rest, in file order
/// (found by marking the test part, one bit per rating, not by sorting a copy of the
/// training places). The permutation is held in `u32`s when it fits: at 10⁸ ratings, 0.4 GB
/// where `usize`s took 0.8 GB.
fn split_by_permutation(
    ratings: &[Rating],
    mut stream: Stream,
    test: std::ops::Range<usize>,
) -> (Vec<Rating>, Vec<Rating>) {
    let mut in_test = vec![0u64; ratings.len().div_ceil(64)];
    let mut take = |places: &mut dyn Iterator<Item = usize>| -> Vec<Rating> {
        places
            .map(|p| {
                in_test[p / 64] |= 1 << (p % 64);
                ratings[p]
            })
            .collect()
    };
    let test = match stream.permutation_u32(ratings.len()) {
        Some(perm) => take(&mut perm[test].iter().map(|&p| p as usize)),
        None => take(&mut stream.permutation(ratings.len())[test].iter().copied()),
    };
    let train = ratings
        .iter()
        .enumerate()
        .filter(|&(p, _)| in_test[p / 64] & (1 << (p % 64)) == 0)
        .map(|(_, &r)| r)
        .collect();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn read(text: &str, name: &str, fmt: RatingFormat) -> Result<(Vec<Rating>, IdMap, IdMap)> {
        let (mut u, mut i) = (IdMap::new(), IdMap::new());
        let r = read_ratings_from(Cursor::new(text), Path::new(name), fmt, &mut u, &mut i)?;
        Ok((r, u, i))
    }

    fn assert_parse_error(res: Result<(Vec<Rating>, IdMap, IdMap)>, name: &str, line: usize) {
        match res {
            Err(RbmError::Parse { path, line: l, .. }) => {
                assert_eq!(path, Path::new(name));
                assert_eq!(l, line);
            }
            other => panic!("expected a parse error at {name}:{line}, got {other:?}"),
        }
    }

    #[test]
    fn reads_every_format() {
        let (r, u, i) = read(
            "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t1\t5\t1\n",
            "u.data",
            RatingFormat::Auto,
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((u.len(), i.len()), (2, 3));
        assert_eq!(
            r[2],
            Rating {
                user: 0,
                item: 2,
                value: 5.0
            }
        );
        assert_eq!(u.token(1), "186");

        let inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t0\n2\t10\t1\t0\n";
        let (r, _, i) = read(inter, "ml.inter", RatingFormat::Auto).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(i.len(), 1);
        assert_eq!(r[1].value, 1.0);

        // Columns found by name in an .inter header.
        let inter2 = "rating:float\titem_id:token\tuser_id:token\n2\tA\tu1\n";
        let (r, u, i) = read(inter2, "x.inter", RatingFormat::Auto).unwrap();
        assert_eq!((r[0].value, u.token(0), i.token(0)), (2.0, "u1", "A"));

        let (r, _, _) = read(
            "1::1193::5::978300760\n1::661::3::978302109\n",
            "ratings.dat",
            RatingFormat::Auto,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].value, 3.0);

        let csv = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n\n";
        let (r, _, _) = read(csv, "ratings.csv", RatingFormat::Auto).unwrap();
        assert_eq!(
            r.iter().map(|x| x.value).collect::<Vec<_>>(),
            vec![2.5, 3.0]
        );

        let (r, u, _) = read("alice,x,4\nbob,y,2\n", "plain.csv", RatingFormat::Csv).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(u.get("bob"), Some(1));
        let (r, _, _) = read("a\tb\t1\n", "plain.tsv", RatingFormat::Tsv).unwrap();
        assert_eq!(r.len(), 1);
        let (r, _, _) = read("a b 1\nc d 2\n", "plain.txt", RatingFormat::Auto).unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        assert_parse_error(
            read("1\t2\t3\n1\t2\n", "u.data", RatingFormat::UData),
            "u.data",
            2,
        );
        assert_parse_error(
            read("1\t2\t3\n4\t5\tbad\n", "u.data", RatingFormat::UData),
            "u.data",
            2,
        );
        // u.data has no header: a non-numeric first line is an error.
        assert_parse_error(
            read("user\titem\trating\n", "u.data", RatingFormat::UData),
            "u.data",
            1,
        );
        let hdr = "user_id:token\titem_id:token\trating:float\n";
        assert_parse_error(
            read(&format!("{hdr}1\t2\tnan\n"), "x.inter", RatingFormat::Inter),
            "x.inter",
            2,
        );
        assert_parse_error(
            read("h\th\th\n1\t2\t3\n", "x.inter", RatingFormat::Inter),
            "x.inter",
            1,
        );
        assert_parse_error(
            read("1::2::5\n1::2\n", "ratings.dat", RatingFormat::Dat),
            "ratings.dat",
            2,
        );
        assert_parse_error(
            read("1::2::5\n::2::5\n", "ratings.dat", RatingFormat::Dat),
            "ratings.dat",
            2,
        );
        assert_parse_error(
            read("u,i,r\n1,2,3\n1,2,x\n", "r.csv", RatingFormat::Csv),
            "r.csv",
            3,
        );
        assert_parse_error(
            read("1,2,3\n\n1,2,inf\n", "r.csv", RatingFormat::Csv),
            "r.csv",
            3,
        );
        assert_parse_error(read("a\tb\t1\na\n", "t.tsv", RatingFormat::Tsv), "t.tsv", 2);
        let missing = read_ratings(
            Path::new("/nonexistent/r.csv"),
            RatingFormat::Auto,
            &mut IdMap::new(),
            &mut IdMap::new(),
        );
        assert!(matches!(missing, Err(RbmError::Io { .. })));
    }

    #[test]
    fn item_titles() {
        let dir = std::env::temp_dir().join(format!("rbm-titles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut items = IdMap::new();
        items.intern("1");
        items.intern("2");
        let a = dir.join("ml-100k.item");
        std::fs::write(
            &a,
            "item_id:token\tmovie_title:token_seq\n1\tToy Story\t1995\n3\tOther\n",
        )
        .unwrap();
        let t = read_item_titles(&a, &items).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[&0], "Toy Story");
        // u.item: `|`-separated, Latin-1.
        let b = dir.join("u.item");
        std::fs::write(
            &b,
            b"1|Toy Story (1995)|01-Jan-1995\n2|Caf\xe9 au lait (1994)|x\n",
        )
        .unwrap();
        let t = read_item_titles(&b, &items).unwrap();
        assert_eq!(t[&1], "Caf\u{e9} au lait (1994)");
        let c = dir.join("bad.item");
        std::fs::write(&c, "1|Toy\nno separator here\n").unwrap();
        match read_item_titles(&c, &items) {
            Err(RbmError::Parse { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a parse error, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scale_inference() {
        let mk = |vals: &[f32]| -> Vec<Rating> {
            vals.iter()
                .map(|&value| Rating {
                    user: 0,
                    item: 0,
                    value,
                })
                .collect()
        };
        let s = RatingScale::infer(&mk(&[1.0, 5.0, 3.0])).unwrap();
        assert_eq!(s.values(), &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let s = RatingScale::infer(&mk(&[0.5, 5.0, 3.5])).unwrap();
        assert_eq!(s.k(), 10);
        assert_eq!(s.class_of(3.5), Some(6));
        assert_eq!(s.class_of(3.25), None);
        let s = RatingScale::infer(&mk(&[0.1, 0.7, 0.1])).unwrap();
        assert_eq!(s.values(), &[0.1, 0.7]);
        assert!(RatingScale::infer(&mk(&[3.0])).is_err());
    }

    #[test]
    fn csr_and_transpose() {
        let ratings = vec![
            Rating {
                user: 1,
                item: 2,
                value: 5.0,
            },
            Rating {
                user: 0,
                item: 1,
                value: 1.0,
            },
            Rating {
                user: 1,
                item: 0,
                value: 3.0,
            },
            Rating {
                user: 1,
                item: 2,
                value: 4.0,
            }, // duplicate: the last wins
        ];
        let scale = RatingScale::from_values(vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let m = RatingMatrix::from_ratings(2, 3, &ratings, &scale).unwrap();
        assert_eq!(m.by_user.row(1), (&[0u32, 2][..], &[2u8, 3][..]));
        assert_eq!(m.by_user.row(0), (&[1u32][..], &[0u8][..]));
        assert_eq!(m.by_item.row(2), (&[1u32][..], &[3u8][..]));
        assert_eq!(m.by_item.row(0), (&[1u32][..], &[2u8][..]));
        let t = m.transposed();
        assert_eq!(t.transposed(), m);
        assert_eq!(m.by_user.nnz(), 3);
        let bad = [Rating {
            user: 0,
            item: 0,
            value: 2.5,
        }];
        assert!(RatingMatrix::from_ratings(1, 1, &bad, &scale).is_err());
    }

    #[test]
    fn csr_matches_a_map_with_last_wins() {
        let mut s = Stream::new(9, Purpose::Data, 0, 0, 0);
        let triples: Vec<(u32, u32, u8)> = (0..3000)
            .map(|_| (s.below(40) as u32, s.below(25) as u32, s.below(5) as u8))
            .collect();
        let mut want = std::collections::BTreeMap::new();
        for &(r, c, k) in &triples {
            want.insert((r, c), k);
        }
        let csr = Csr::from_triples(41, triples.iter().copied());
        let mut got = Vec::new();
        for r in 0..csr.rows() {
            let (cs, ks) = csr.row(r);
            got.extend(cs.iter().zip(ks).map(|(&c, &k)| ((r as u32, c), k)));
        }
        assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        let t = csr.transpose(25);
        assert_eq!(t.nnz(), csr.nnz());
        assert_eq!(t.transpose(41), csr);
    }

    #[test]
    fn splits_partition_the_ratings() {
        let ratings: Vec<Rating> = (0..1000)
            .map(|n| Rating {
                user: n % 37,
                item: n / 37,
                value: (n % 5) as f32,
            })
            .collect();
        let key = |r: &Rating| (r.user, r.item);
        let (tr, te) = holdout(&ratings, 0.1, 7).unwrap();
        assert_eq!((tr.len(), te.len()), (900, 100));
        // The training part keeps the file's order.
        let at = |r: &Rating| r.item * 37 + r.user;
        assert!(tr.windows(2).all(|w| at(&w[0]) < at(&w[1])));
        let mut all: Vec<_> = tr.iter().chain(&te).map(key).collect();
        all.sort_unstable();
        let mut want: Vec<_> = ratings.iter().map(key).collect();
        want.sort_unstable();
        assert_eq!(all, want);
        assert_eq!(holdout(&ratings, 0.1, 7).unwrap().1, te);
        assert_ne!(holdout(&ratings, 0.1, 8).unwrap().1, te);
        let mut seen = vec![0; 1000];
        for f in 0..5 {
            let (tr, te) = kfold(&ratings, 5, f, 3).unwrap();
            assert_eq!(tr.len() + te.len(), 1000);
            for r in te {
                seen[(r.item * 37 + r.user) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
        assert!(holdout(&ratings, 1.0, 0).is_err());
    }
}
