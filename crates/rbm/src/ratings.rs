//! Rating data for collaborative filtering: readers for the common MovieLens-style files, id maps
//! (arbitrary tokens → dense indices), the rating scale (values → K classes), sparse storage by
//! user and by item (compressed rows; never a dense users × items matrix) and the train/test
//! splits (random holdout, k-fold, validation carved from training).

use crate::error::{RbmError, Result, shown};
use crate::random::{Purpose, Stream};
use rayon::prelude::*;
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
                return Err(RbmError::param(
                    "ids",
                    format!("duplicate id token `{}`", shown(t)),
                ));
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
    /// otherwise the delimiter is a tab, a comma or spaces, and a first line with no number in
    /// it is a header naming the columns (as for [`RatingFormat::Csv`]).
    Auto,
    /// RecBole atomic file: a header line (`user_id:token item_id:token rating:float ...`), tabs.
    Inter,
    /// MovieLens-100K `u.data`: `user item rating timestamp`, tab-separated, no header.
    UData,
    /// MovieLens-1M/10M `ratings.dat`: `user::item::rating::timestamp`, no header.
    Dat,
    /// `ratings.csv` or plain `user,item,rating[,...]`: commas, optional header line. A header
    /// (a first line with no number in it) places the columns by name, case-insensitively:
    /// `user`/`userId`/`user_id`, `item`/`itemId`/`item_id`/`movieId`/`movie_id`,
    /// `rating`/`score`; other columns are ignored.
    Csv,
    /// Plain `user<TAB>item<TAB>rating[...]`, optional header line (as for
    /// [`RatingFormat::Csv`]).
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

/// The UTF-8 byte-order mark some editors put at the start of a text file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line of a text file as UTF-8 without its line ending (`\n`, `\r\n`; trailing `\r`s are
/// dropped) and, on line 1, without a UTF-8 byte-order mark. Bytes that cannot be in a text
/// rating file are errors naming the line: invalid UTF-8 (a binary file), a UTF-16 byte-order
/// mark, a NUL (UTF-16 text without its mark), a CR inside the line (CR-only line endings,
/// which would otherwise read the whole file as one line).
fn text_line<'a>(bytes: &'a [u8], path: &Path, lineno: usize) -> Result<&'a str> {
    let mut b = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    while let Some(rest) = b.strip_suffix(b"\r") {
        b = rest;
    }
    if lineno == 1 {
        if b.starts_with(b"\xFF\xFE") || b.starts_with(b"\xFE\xFF") {
            return Err(RbmError::parse(
                path,
                lineno,
                "the file is UTF-16 text (it starts with a UTF-16 byte-order mark); \
                 save it as UTF-8",
            ));
        }
        b = b.strip_prefix(UTF8_BOM).unwrap_or(b);
    }
    let line = std::str::from_utf8(b).map_err(|e| {
        let at = e.valid_up_to();
        RbmError::parse(
            path,
            lineno,
            format!(
                "not UTF-8 text (byte 0x{:02X} at column {}): rating files are UTF-8 text \
                 or binary RBMR files; is this some other binary file?",
                b[at],
                at + 1
            ),
        )
    })?;
    if let Some(at) = line.find(['\r', '\0']) {
        let reason = if line.as_bytes()[at] == b'\r' {
            format!(
                "carriage return (\\r) inside the line at column {}: lines must end in LF or \
                 CRLF (CR-only line endings read the whole file as one line)",
                at + 1
            )
        } else {
            format!(
                "NUL byte at column {}: not a UTF-8 text file (UTF-16 text, or binary data?)",
                at + 1
            )
        };
        return Err(RbmError::parse(path, lineno, reason));
    }
    Ok(line)
}

/// True when `fields` look like a header line: none of them is a number. A first line with a
/// number in it is data, and an error if it is bad data (`1,2,x`), never a silently dropped
/// header.
fn looks_like_header(fields: &[&str]) -> bool {
    fields.iter().all(|f| f.parse::<f64>().is_err())
}

/// Column names accepted in a CSV / TSV header, compared ignoring case, `_`, `-`, spaces and
/// quotes, and a RecBole type suffix (`user_id:token`).
const USER_NAMES: &[&str] = &["user", "userid"];
const ITEM_NAMES: &[&str] = &["item", "itemid", "movie", "movieid"];
const RATING_NAMES: &[&str] = &["rating", "score"];

fn normalized_name(name: &str) -> String {
    let name = name.trim().trim_matches('"');
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Positions of the user, item and rating columns named by a header line; other columns
/// (a timestamp, tags) are ignored.
fn header_columns(names: &[&str]) -> std::result::Result<[usize; 3], String> {
    let roles = [
        ("user", USER_NAMES, "user, userId, user_id"),
        (
            "item",
            ITEM_NAMES,
            "item, itemId, item_id, movieId, movie_id",
        ),
        ("rating", RATING_NAMES, "rating, score"),
    ];
    let norm: Vec<String> = names.iter().map(|n| normalized_name(n)).collect();
    let mut cols = [0usize; 3];
    let mut missing = Vec::new();
    for (c, (role, accepted, spelled)) in cols.iter_mut().zip(roles) {
        let mut at = norm
            .iter()
            .enumerate()
            .filter(|(_, n)| accepted.contains(&n.as_str()))
            .map(|(p, _)| p);
        match (at.next(), at.next()) {
            (Some(p), None) => *c = p,
            (Some(a), Some(b)) => {
                return Err(format!(
                    "header names the {role} column twice (`{}` in column {} and `{}` in \
                     column {})",
                    shown(names[a]),
                    a + 1,
                    shown(names[b]),
                    b + 1
                ));
            }
            (None, _) => missing.push(format!("{role} ({spelled})")),
        }
    }
    if !missing.is_empty() {
        let got: Vec<String> = names.iter().map(|n| format!("`{}`", shown(n))).collect();
        return Err(format!(
            "the first line looks like a header ({}) but names no {} column; name the \
             columns, case-insensitively: {}",
            got.join(", "),
            roles
                .iter()
                .filter(|r| missing.iter().any(|m| m.starts_with(r.0)))
                .map(|r| r.0)
                .collect::<Vec<_>>()
                .join(" or "),
            missing.join("; ")
        ));
    }
    Ok(cols)
}

/// Maps the index of a rating read from a text file to its line, from the places where the
/// lines stop following the ratings one for one (a header, blank lines); a few words per skip.
#[derive(Default)]
struct LineIndex {
    /// `(rating index, line)` at the start of each run of consecutive lines.
    runs: Vec<(usize, usize)>,
}

impl LineIndex {
    fn note(&mut self, index: usize, line: usize) {
        if self
            .runs
            .last()
            .is_none_or(|&(i, l)| l + (index - i) != line)
        {
            self.runs.push((index, line));
        }
    }

    fn line(&self, index: usize) -> usize {
        let (i, l) = self.runs[self.runs.partition_point(|r| r.0 <= index) - 1];
        l + (index - i)
    }
}

/// Reads a rating file, interning user and item tokens into `users` and `items` (shared between a
/// training and a test file so both use the same indices). Blank lines are skipped; any other
/// line that does not hold a user, an item and a finite numeric rating is an error naming the
/// file and line, and so is a (user, item) pair rated twice in the file. A UTF-8 byte-order mark
/// is skipped. A binary rating file (see [`crate::synthetic`]) is recognised by its magic
/// whatever `format` says.
///
/// Where each distinct rating value first appeared is remembered on the calling thread, so that
/// [`RatingScale::infer`] and [`RatingMatrix::from_ratings`] can name the file and line of a
/// rating they reject.
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

/// Byte offset of the rating values in a binary rating file's header.
const RBMR_VALUES_AT: u64 = 36;

/// A binary (`RBMR`) rating file as rating records; its dense ids become the tokens `"0"`,
/// `"1"`, ... For large files prefer [`crate::synthetic::read_binary`], which keeps the compact
/// sparse form (5 bytes per rating instead of 12).
///
/// [`crate::synthetic::read_binary`] checks the file, including that its declared item count is
/// plausible.
fn read_binary_as_ratings(
    path: &Path,
    users: &mut IdMap,
    items: &mut IdMap,
) -> Result<Vec<Rating>> {
    let set = crate::synthetic::read_binary(path)?;
    let c = &set.by_user;
    let uid: Vec<u32> = (0..set.n_users)
        .map(|u| users.intern(&u.to_string()))
        .collect();
    let iid: Vec<u32> = (0..set.n_items)
        .map(|i| items.intern(&i.to_string()))
        .collect();
    let mut out = Vec::with_capacity(c.nnz());
    for (u, &user) in uid.iter().enumerate() {
        let (its, cls) = c.row(u);
        out.extend(its.iter().zip(cls).map(|(&i, &k)| Rating {
            user,
            item: iid[i as usize],
            value: set.values[k as usize],
        }));
    }
    let mut seen = FirstSeen::default();
    for (k, &v) in set.values.iter().enumerate() {
        seen.note(v, RBMR_VALUES_AT + 4 * k as u64);
    }
    remember_origins(path, seen, Place::Offset);
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
    read_text(reader, path, format, users, items).map(|(out, _)| out)
}

/// [`read_ratings_from`], with the line of each rating.
fn read_text<R: BufRead>(
    mut reader: R,
    path: &Path,
    format: RatingFormat,
    users: &mut IdMap,
    items: &mut IdMap,
) -> Result<(Vec<Rating>, LineIndex)> {
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
    let mut lines = LineIndex::default();
    let mut seen = FirstSeen::default();
    let mut first = true;
    // Positions of the user, item and rating fields.
    let mut cols = [0usize, 1, 2];
    let mut buf = Vec::new();
    let mut lineno = 0usize;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| RbmError::io(path, e))?
            == 0
        {
            break;
        }
        lineno += 1;
        let line = text_line(&buf, path, lineno)?;
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
        if is_first && header_allowed && looks_like_header(&fields) {
            cols = header_columns(&fields).map_err(|e| RbmError::parse(path, lineno, e))?;
            continue;
        }
        let need = cols.iter().max().copied().unwrap_or(2) + 1;
        if fields.len() < need {
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
        let Some(value) = parse_value(fr) else {
            return Err(RbmError::parse(
                path,
                lineno,
                format!("rating `{}` is not a finite number", shown(fr)),
            ));
        };
        if fu.is_empty() || fi.is_empty() {
            return Err(RbmError::parse(path, lineno, "empty user or item id"));
        }
        lines.note(out.len(), lineno);
        seen.note(value, lineno);
        out.push(Rating {
            user: users.intern(fu),
            item: items.intern(fi),
            value,
        });
    }
    if let Some((a, b)) = first_repeat(&[&out]) {
        let (ra, rb) = (out[a], out[b]);
        return Err(RbmError::parse(
            path,
            lines.line(b),
            format!(
                "user `{}` rated item `{}` again (first at line {}, rating {} there and {} \
                 here): each (user, item) pair may appear once",
                shown(users.token(rb.user)),
                shown(items.token(rb.item)),
                lines.line(a),
                ra.value,
                rb.value
            ),
        ));
    }
    remember_origins(path, seen, Place::Line);
    Ok((out, lines))
}

/// Refuses test ratings that share a (user, item) pair with the training ratings: the model
/// would be scored on a rating it was trained on, and its test figures would flatter it. The
/// error names the test file's line and the training file's line of the first such pair (in
/// test-file order). Each file on its own is free of repeats ([`read_ratings`] checks that);
/// linear time, as for those checks.
pub fn check_disjoint(
    (train_path, train): (&Path, &[Rating]),
    (test_path, test): (&Path, &[Rating]),
    format: RatingFormat,
    users: &IdMap,
    items: &IdMap,
) -> Result<()> {
    let Some((a, b)) = first_repeat(&[train, test]) else {
        return Ok(());
    };
    let (a, b) = if a < train.len() && b >= train.len() {
        (a, b - train.len())
    } else {
        // A repeat inside one file: the reader refuses those, so only a caller that built
        // the parts itself gets here.
        return Err(RbmError::param(
            "ratings",
            format!(
                "{} or {} repeats a (user, item) pair",
                train_path.display(),
                test_path.display()
            ),
        ));
    };
    let (ra, rb) = (train[a], test[b]);
    let reason = format!(
        "user `{}` rated item `{}` here (rating {}) and in the training ratings ({}, rating \
         {}): a test rating the model trains on flatters its test figures; give disjoint \
         files (`rbm cf split` writes them)",
        shown(users.token(rb.user)),
        shown(items.token(rb.item)),
        rb.value,
        place_of(train_path, format, a),
        ra.value
    );
    Err(match line_of(test_path, format, b) {
        Some(line) => RbmError::parse(test_path, line, reason),
        None => RbmError::param(
            "test",
            format!("{}: rating {}: {reason}", test_path.display(), b + 1),
        ),
    })
}

/// The line of the `index`-th rating of a text rating file, found by reading it again (for
/// errors only); `None` for a binary file or one that no longer reads.
fn line_of(path: &Path, format: RatingFormat, index: usize) -> Option<usize> {
    if crate::synthetic::is_binary_ratings(path) {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let (out, lines) = read_text(
        BufReader::new(file),
        path,
        format,
        &mut IdMap::new(),
        &mut IdMap::new(),
    )
    .ok()?;
    (index < out.len()).then(|| lines.line(index))
}

/// `file:line` of the `index`-th rating of a rating file, or `file, rating N` where the line
/// is not known.
fn place_of(path: &Path, format: RatingFormat, index: usize) -> String {
    match line_of(path, format, index) {
        Some(line) => format!("{}:{line}", path.display()),
        None => format!("{}, rating {}", path.display(), index + 1),
    }
}

/// The first (user, item) pair in `parts` (read as one list, part after part) that repeats
/// an earlier one, as the indices in that list of its first occurrence and of the repeat (the
/// smallest such repeat index), or `None`. Groups the items by user with a counting sort (4
/// bytes per rating of scratch) and checks each user's items against a stamp per item, blocks
/// of users in parallel: linear time. Only when some user has a repeat are the ratings
/// scanned again for the earliest one.
fn first_repeat(parts: &[&[Rating]]) -> Option<(usize, usize)> {
    use rayon::prelude::*;
    let all = || parts.iter().flat_map(|p| p.iter());
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len < 2 {
        return None;
    }
    let rows = all().map(|r| r.user).max()? as usize + 1;
    let n_items = all().map(|r| r.item).max()? as usize + 1;
    let mut start = vec![0usize; rows + 1];
    for r in all() {
        start[r.user as usize + 1] += 1;
    }
    for u in 0..rows {
        start[u + 1] += start[u];
    }
    // Stable: each user's items stay in list order.
    let mut fill = start[..rows].to_vec();
    let mut grouped = vec![0u32; len];
    for r in all() {
        let f = &mut fill[r.user as usize];
        grouped[*f] = r.item;
        *f += 1;
    }
    drop(fill);
    // Blocks of users share one stamp array (the user's place in the block + 1 per item
    // seen); each user with a repeat gives its first repeated pair, which is that user's
    // earliest repeat in the list.
    const BLOCK: usize = 4096;
    let repeated: std::collections::HashSet<(u32, u32)> = (0..rows.div_ceil(BLOCK))
        .into_par_iter()
        .flat_map_iter(|b| {
            let mut stamp = vec![0u32; n_items];
            let mut found = Vec::new();
            for u in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                let tag = (u - b * BLOCK) as u32 + 1;
                for &item in &grouped[start[u]..start[u + 1]] {
                    let s = &mut stamp[item as usize];
                    if *s == tag {
                        found.push((u as u32, item));
                        break;
                    }
                    *s = tag;
                }
            }
            found
        })
        .collect();
    if repeated.is_empty() {
        return None;
    }
    // The earliest repeat in the list is one of those.
    let mut first = HashMap::new();
    all().enumerate().find_map(|(p, r)| {
        let key = (r.user, r.item);
        if !repeated.contains(&key) {
            return None;
        }
        match first.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some((*e.get(), p)),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(p);
                None
            }
        }
    })
}

/// Where a rating value was read: a text file's line or a binary file's byte offset.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Line(usize),
    Offset(u64),
}

/// The map key of a rating value (`-0` and `0` are one value).
fn value_key(v: f32) -> u32 {
    (v + 0.0).to_bits()
}

/// A map from rating values (by [`value_key`]): a short list while there are few distinct
/// values (the usual 5 or 10, looked up in a few nanoseconds), a hash map beyond.
#[derive(Clone, Debug)]
struct ValueMap<V> {
    few: Vec<(u32, V)>,
    many: HashMap<u32, V>,
}

impl<V> Default for ValueMap<V> {
    fn default() -> Self {
        ValueMap {
            few: Vec::new(),
            many: HashMap::new(),
        }
    }
}

impl<V> ValueMap<V> {
    #[inline]
    fn get_mut(&mut self, key: u32) -> Option<&mut V> {
        if self.many.is_empty() {
            self.few.iter_mut().find(|e| e.0 == key).map(|e| &mut e.1)
        } else {
            self.many.get_mut(&key)
        }
    }

    /// Adds `key`, which must be absent.
    fn insert_new(&mut self, key: u32, v: V) {
        if self.many.is_empty() && self.few.len() < 32 {
            self.few.push((key, v));
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(key, v);
        }
    }

    fn len(&self) -> usize {
        self.few.len() + self.many.len()
    }

    fn into_iter(self) -> impl Iterator<Item = (u32, V)> {
        self.few.into_iter().chain(self.many)
    }
}

impl ValueMap<u64> {
    /// Adds `n` to the count of `key`; false when `key` is new and [`MAX_COUNTED`] values are
    /// already counted.
    #[inline]
    fn count(&mut self, key: u32, n: u64) -> bool {
        if let Some(c) = self.get_mut(key) {
            *c += n;
        } else if self.len() < MAX_COUNTED {
            self.insert_new(key, n);
        } else {
            return false;
        }
        true
    }
}

/// Distinct rating values whose first places are remembered, per file and per thread.
const MAX_ORIGINS: usize = 1 << 16;

/// The place where each distinct rating value first appears in one file (at most
/// [`MAX_ORIGINS`] values).
type FirstSeen<P> = ValueMap<P>;

impl<P> FirstSeen<P> {
    #[inline]
    fn note(&mut self, v: f32, place: P) {
        let key = value_key(v);
        if self.get_mut(key).is_none() && self.len() < MAX_ORIGINS {
            self.insert_new(key, place);
        }
    }
}

/// Files whose places are remembered per rating value.
const ORIGIN_FILES: usize = 4;

/// Rating value → the files it was read from, with the place in each.
type Origins = HashMap<u32, Vec<(std::rc::Rc<Path>, Place)>>;

thread_local! {
    /// Rating value → the files and places it was first read from on this thread (at most
    /// [`ORIGIN_FILES`], in reading order), for errors about ratings found after reading: off
    /// the inferred grid, or off a given scale.
    static ORIGINS: std::cell::RefCell<Origins> = std::cell::RefCell::new(HashMap::new());
}

fn remember_origins<P>(path: &Path, seen: FirstSeen<P>, place: impl Fn(P) -> Place) {
    let path: std::rc::Rc<Path> = path.into();
    ORIGINS.with_borrow_mut(|m| {
        for (key, p) in seen.into_iter() {
            if m.len() >= MAX_ORIGINS && !m.contains_key(&key) {
                continue;
            }
            let places = m.entry(key).or_default();
            if let Some(e) = places.iter_mut().find(|e| e.0 == path) {
                // The same file read again: its place now.
                e.1 = place(p);
            } else if places.len() < ORIGIN_FILES {
                places.push((path.clone(), place(p)));
            }
        }
    });
}

/// An error about rating `value`: at the file and line (or byte offset) it was first read
/// from on this thread, if known (with the other files it was read from).
fn rating_error(value: f32, reason: String) -> RbmError {
    let places = ORIGINS.with_borrow(|m| m.get(&value_key(value)).cloned().unwrap_or_default());
    let Some((path, place)) = places.first() else {
        return RbmError::param("ratings", reason);
    };
    let mut reason = reason;
    if places.len() > 1 {
        let also: Vec<String> = places[1..]
            .iter()
            .map(|(p, at)| match at {
                Place::Line(l) => format!("{}:{l}", p.display()),
                Place::Offset(o) => format!("{} (byte offset {o})", p.display()),
            })
            .collect();
        reason = format!(
            "{reason} (rating {value} was also read from {})",
            also.join(", ")
        );
    }
    match *place {
        Place::Line(line) => RbmError::parse(&**path, line, reason),
        Place::Offset(at) => RbmError::format(&**path, at, reason),
    }
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
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes);
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
    let mut line = line.trim_end_matches('\r');
    if lineno == 1 {
        line = line.strip_prefix('\u{feff}').unwrap_or(line);
    }
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
    /// values seen, which must then lie on one evenly spaced grid: every value a whole number
    /// of the smallest gap above the lowest (within 10⁻³ of a step; values within 10⁻⁴ count
    /// as one, as in [`RatingScale::class_of`]), at most 254 steps in all (so at most 255
    /// classes). A stray `1e9` or `3.7` among 1..5 is thus an error naming the rating (its file
    /// and line, when it was read by [`read_ratings`] on this thread), not a scale of strange
    /// classes; other scales can be given explicitly ([`RatingScale::from_values`]).
    pub fn infer(ratings: &[Rating]) -> Result<Self> {
        if ratings.is_empty() {
            return Err(RbmError::param(
                "ratings",
                "no ratings to infer a scale from",
            ));
        }
        let Some(counts) = distinct_counts(ratings) else {
            return Err(too_many_values(ratings));
        };
        if counts.iter().any(|c| !c.0.is_finite()) {
            return Err(RbmError::param("scale", "rating values must be finite"));
        }
        // Grid points: distinct values, those within class_of's tolerance of the point below
        // merged into it; (lowest value, ratings).
        let mut points: Vec<(f32, u64)> = Vec::with_capacity(counts.len());
        for &(v, n) in &counts {
            match points.last_mut() {
                Some(p) if v - p.0 < 1e-4 => p.1 += n,
                _ => points.push((v, n)),
            }
        }
        if points.len() > MAX_K {
            return Err(too_many_values(ratings));
        }
        let at: Vec<f64> = points.iter().map(|p| f64::from(p.0)).collect();
        if let Some(step) = fill_step(&at) {
            // Every step from the lowest rating to the highest, rated or not.
            let (lo, hi) = (counts[0].0, counts[counts.len() - 1].0);
            let n = ((hi - lo) / step).round() as usize + 1;
            return Self::from_values((0..n).map(|k| lo + k as f32 * step).collect());
        }
        if grid_steps(&at).is_none() {
            return Err(off_grid(&points));
        }
        Self::from_values(points.iter().map(|p| p.0).collect())
    }

    /// Number of classes K.
    pub fn k(&self) -> usize {
        self.values.len()
    }

    /// The values, class by class.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The class of `value`, if it is on the scale: the first value within 1e-4.
    pub fn class_of(&self, value: f32) -> Option<u8> {
        let near = |v: f32| (v - value).abs() < 1e-4;
        if self.values.len() > 16 {
            return self.values.iter().position(|&v| near(v)).map(|k| k as u8);
        }
        // Every value compared, last to first, without a branch: ratings come in no order,
        // and stopping at the match was a mispredicted branch per rating (0.66 s of building
        // a 10⁸-rating matrix).
        let mut first = u8::MAX;
        for (k, &v) in self.values.iter().enumerate().rev() {
            first = if near(v) { k as u8 } else { first };
        }
        (first != u8::MAX).then_some(first)
    }

    /// Smallest and largest value.
    pub fn range(&self) -> (f32, f32) {
        (
            self.values[0],
            *self.values.last().expect("scale is non-empty"),
        )
    }
}

/// Most classes a scale can have.
const MAX_K: usize = 255;

/// Most steps of the integer or half-star grids that [`RatingScale::infer`] fills in.
const FILL_STEPS: f32 = 100.0;

/// The step of the integer or half-star grid that the ratings at `at` (ascending, distinct)
/// lie on, at most [`FILL_STEPS`] steps from the lowest to the highest: the grid
/// [`RatingScale::infer`] fills in.
fn fill_step(at: &[f64]) -> Option<f32> {
    let (lo, hi) = (at[0], at[at.len() - 1]);
    [1.0f32, 0.5].into_iter().find(|&step| {
        let step = f64::from(step);
        (hi - lo) / step <= f64::from(FILL_STEPS)
            && at
                .iter()
                .all(|&v| ((v / step).round() * step - v).abs() < 1e-4)
    })
}

/// How the ratings at `at` (ascending, distinct) are an acceptable inferred scale: 0 on the
/// grid [`RatingScale::infer`] fills in, 1 on another evenly spaced grid, `None` not at all.
fn acceptable(at: &[f64]) -> Option<u8> {
    if fill_step(at).is_some() {
        Some(0)
    } else {
        grid_steps(at).map(|_| 1)
    }
}

/// Distinct values [`RatingScale::infer`] counts before giving up (more merge to at most
/// [`MAX_K`] only if nearly all are within 10⁻⁴ of another).
const MAX_COUNTED: usize = 4096;

/// The distinct rating values with their counts, ascending; `None` beyond [`MAX_COUNTED`]
/// values. Counted in parallel blocks (a few nanoseconds per rating when values are few).
fn distinct_counts(ratings: &[Rating]) -> Option<Vec<(f32, u64)>> {
    use rayon::prelude::*;
    let merged = ratings
        .par_chunks(1 << 16)
        .map(|block| {
            let mut m = ValueMap::<u64>::default();
            for r in block {
                let key = value_key(r.value);
                if !m.count(key, 1) {
                    return None;
                }
            }
            Some(m)
        })
        .try_reduce(ValueMap::default, |mut a, b| {
            for (key, n) in b.into_iter() {
                if !a.count(key, n) {
                    return None;
                }
            }
            Some(a)
        })?;
    let mut out: Vec<(f32, u64)> = merged
        .into_iter()
        .map(|(key, n)| (f32::from_bits(key), n))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(out)
}

/// The number of steps of the evenly spaced grid through `at` (ascending, distinct), or `None`
/// when a value is off it (by more than 10⁻³ of a step) or it has more than `MAX_K - 1` steps.
/// The step is the smallest gap, refined to divide the range evenly.
fn grid_steps(at: &[f64]) -> Option<usize> {
    if at.len() < 2 {
        return Some(0);
    }
    let (lo, hi) = (at[0], at[at.len() - 1]);
    let gap = at
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    let steps = ((hi - lo) / gap).round();
    if !(steps >= 1.0 && steps <= (MAX_K - 1) as f64) {
        return None;
    }
    let step = (hi - lo) / steps;
    at.iter()
        .all(|&v| {
            let m = (v - lo) / step;
            (m - m.round()).abs() <= 1e-3
        })
        .then_some(steps as usize)
}

/// Values for a message: all of them, or the first and last few.
fn value_list(values: &[f32]) -> String {
    let s = |v: &[f32]| {
        v.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if values.len() <= 12 {
        s(values)
    } else {
        format!("{}, …, {}", s(&values[..6]), s(&values[values.len() - 3..]))
    }
}

/// The error for grid `points` (value, ratings) that are not evenly spaced: it names the
/// rating most likely wrong: a value without which the rest are on the integer or half-star
/// grid, else on another evenly spaced grid, else any value; among those the rarest, then the
/// farthest from the median rating.
fn off_grid(points: &[(f32, u64)]) -> RbmError {
    let total: u64 = points.iter().map(|p| p.1).sum();
    let mut below = 0;
    let median = points
        .iter()
        .find(|p| {
            below += p.1;
            2 * below >= total
        })
        .map_or(0.0, |p| f64::from(p.0));
    let at: Vec<f64> = points.iter().map(|p| f64::from(p.0)).collect();
    // How well the rest fits without value n.
    let without = |n: usize| {
        let rest: Vec<f64> = at
            .iter()
            .enumerate()
            .filter(|&(m, _)| m != n)
            .map(|(_, &v)| v)
            .collect();
        acceptable(&rest)
    };
    let fits: Vec<Option<u8>> = (0..points.len()).map(without).collect();
    // Rank: leaving a common scale, then an evenly spaced one, then nothing; the rarest; the
    // farthest from the median.
    let rank = |n: &usize| {
        (
            fits[*n].unwrap_or(2),
            points[*n].1,
            std::cmp::Reverse((at[*n] - median).abs().to_bits()),
        )
    };
    let culprit = (0..points.len())
        .min_by_key(rank)
        .expect("at least two grid points");
    let v = points[culprit].0;
    let others: Vec<f32> = points.iter().filter(|p| p.0 != v).map(|p| p.0).collect();
    let all: Vec<f32> = points.iter().map(|p| p.0).collect();
    let scale = if all.len() <= 20 {
        all.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        "V1,V2,...".to_string()
    };
    rating_error(
        v,
        format!(
            "rating {v} ({} of the ratings) is off the evenly spaced grid of the other rating \
             values ({}): a rating scale is inferred only from values evenly spaced, at most \
             {} steps from the lowest to the highest. Correct or remove it, or if these values \
             are intended give the scale explicitly (rbm cf: --scale={scale})",
            points[culprit].1,
            value_list(&others),
            MAX_K - 1
        ),
    )
}

/// The error for more distinct rating values than a scale can have: it names the first rating
/// with the (`MAX_K` + 1)-th distinct value.
fn too_many_values(ratings: &[Rating]) -> RbmError {
    let mut seen = std::collections::HashSet::new();
    let r = ratings
        .iter()
        .find(|r| seen.insert(value_key(r.value)) && seen.len() > MAX_K)
        .unwrap_or(&ratings[0]);
    rating_error(
        r.value,
        format!(
            "more than {MAX_K} distinct rating values (the {}th is {}): these look like \
             continuous scores, not ratings on a scale of at most {MAX_K} values; if only some \
             values are valid ratings, give the scale explicitly (rbm cf: --scale=V1,V2,...)",
            MAX_K + 1,
            r.value
        ),
    )
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
    /// Memory: the output (5 bytes per entry), a count per row and one row of scratch per
    /// thread; the iterator is walked twice.
    pub fn from_triples(
        rows: usize,
        triples: impl Iterator<Item = (u32, u32, u8)> + Clone + Sync,
    ) -> Csr {
        let mut csr = counting_sort(rows, &OnePart(triples));
        csr.sort_rows();
        csr
    }

    /// Sorts each row by column (stable, so among duplicates the last input comes last) and
    /// keeps the last of each duplicate run. Rows are sorted in parallel, in parts of
    /// contiguous rows; only when a row had duplicates are the rows then moved together.
    fn sort_rows(&mut self) {
        let rows = self.rows();
        let cuts = row_cuts(&self.offsets, parts_for(self.nnz()));
        // Each part's rows as one slice of each array, split off in order.
        let (mut cols, mut classes) = (&mut self.cols[..], &mut self.classes[..]);
        let mut jobs = Vec::with_capacity(cuts.len() - 1);
        for w in cuts.windows(2) {
            let n = self.offsets[w[1]] - self.offsets[w[0]];
            let (c, rest_c) = cols.split_at_mut(n);
            let (k, rest_k) = classes.split_at_mut(n);
            (cols, classes) = (rest_c, rest_k);
            jobs.push((w[0]..w[1], c, k));
        }
        let offsets = &self.offsets;
        // The number of entries each row keeps (written at the row's start).
        let kept: Vec<Vec<usize>> = jobs
            .into_par_iter()
            .map(|(range, cols, classes)| {
                let base = offsets[range.start];
                let mut scratch: Vec<(u32, u8)> = Vec::new();
                range
                    .map(|r| {
                        let (a, b) = (offsets[r] - base, offsets[r + 1] - base);
                        if cols[a..b].windows(2).all(|w| w[0] < w[1]) {
                            return b - a;
                        }
                        scratch.clear();
                        scratch.extend(
                            cols[a..b]
                                .iter()
                                .copied()
                                .zip(classes[a..b].iter().copied()),
                        );
                        scratch.sort_by_key(|e| e.0);
                        let mut out = a;
                        for n in 0..scratch.len() {
                            if n + 1 < scratch.len() && scratch[n + 1].0 == scratch[n].0 {
                                continue;
                            }
                            (cols[out], classes[out]) = scratch[n];
                            out += 1;
                        }
                        out - a
                    })
                    .collect()
            })
            .collect();
        if kept.iter().flatten().sum::<usize>() == self.nnz() {
            return;
        }
        // Compact in place: the write position never passes the start of the row being read.
        let mut out = 0usize;
        for (r, &n) in kept.iter().flatten().enumerate() {
            let start = self.offsets[r];
            self.cols.copy_within(start..start + n, out);
            self.classes.copy_within(start..start + n, out);
            self.offsets[r] = out;
            out += n;
        }
        self.offsets[rows] = out;
        self.cols.truncate(out);
        self.classes.truncate(out);
        self.cols.shrink_to_fit();
        self.classes.shrink_to_fit();
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

    /// Row `r`, or an empty row past the last (a user or item absent from the data).
    #[inline]
    pub fn row_or_empty(&self, r: usize) -> (&[u32], &[u8]) {
        if r < self.rows() {
            self.row(r)
        } else {
            (&[], &[])
        }
    }

    /// Whether row `r` exists and holds at least one entry.
    #[inline]
    pub fn has_entries(&self, r: usize) -> bool {
        r < self.rows() && self.offsets[r + 1] > self.offsets[r]
    }

    /// The transpose, as a matrix with `cols` rows (a counting sort: rows come out sorted).
    pub fn transpose(&self, cols: usize) -> Csr {
        counting_sort(cols, &Transposed::new(self))
    }
}

/// Where a counting sort's `(row, col, class)` entries come from: `parts()` contiguous parts
/// of the input, each visited in input order, so that the parts are counted and placed in
/// parallel and the sort still keeps the input order within each row.
trait Entries: Sync {
    fn parts(&self) -> usize;
    fn visit(&self, part: usize, f: impl FnMut(u32, u32, u8));
}

/// All of an iterator's triples as one part.
struct OnePart<I>(I);

impl<I: Iterator<Item = (u32, u32, u8)> + Clone + Sync> Entries for OnePart<I> {
    fn parts(&self) -> usize {
        1
    }
    fn visit(&self, _: usize, mut f: impl FnMut(u32, u32, u8)) {
        for (r, c, k) in self.0.clone() {
            f(r, c, k);
        }
    }
}

/// A matrix's entries with rows and columns swapped, in parts of whole rows (`cuts`).
struct Transposed<'a> {
    csr: &'a Csr,
    cuts: Vec<usize>,
}

impl<'a> Transposed<'a> {
    fn new(csr: &'a Csr) -> Self {
        let cuts = row_cuts(&csr.offsets, parts_for(csr.nnz()));
        Transposed { csr, cuts }
    }
}

impl Entries for Transposed<'_> {
    fn parts(&self) -> usize {
        self.cuts.len() - 1
    }
    fn visit(&self, part: usize, mut f: impl FnMut(u32, u32, u8)) {
        for r in self.cuts[part]..self.cuts[part + 1] {
            let (cs, ks) = self.csr.row(r);
            for (&c, &k) in cs.iter().zip(ks) {
                f(c, r as u32, k);
            }
        }
    }
}

/// How many parts to cut `n` entries into: one per thread (at most 8: each part counts its
/// entries per row in a row-sized array), and one for small inputs.
fn parts_for(n: usize) -> usize {
    if n < 1 << 16 {
        1
    } else {
        rayon::current_num_threads().clamp(1, 8)
    }
}

/// Row boundaries cutting a matrix with these row `offsets` into up to `parts` parts of about
/// equal numbers of entries (first 0, last the row count, increasing).
fn row_cuts(offsets: &[usize], parts: usize) -> Vec<usize> {
    let (rows, nnz) = (offsets.len() - 1, offsets[offsets.len() - 1]);
    let mut cuts = vec![0];
    for p in 1..parts {
        let r = offsets.partition_point(|&o| o < p * nnz / parts).min(rows);
        if r > *cuts.last().unwrap() {
            cuts.push(r);
        }
    }
    if rows > *cuts.last().unwrap() || cuts.len() == 1 {
        cuts.push(rows);
    }
    cuts
}

/// Ratings as (user, item, class) entries, in `parts` parts of equal length.
struct RatingEntries<'a> {
    ratings: &'a [Rating],
    classes: &'a [u8],
    parts: usize,
}

impl Entries for RatingEntries<'_> {
    fn parts(&self) -> usize {
        self.parts
    }
    fn visit(&self, part: usize, mut f: impl FnMut(u32, u32, u8)) {
        let (n, parts) = (self.ratings.len(), self.parts);
        let range = part * n / parts..(part + 1) * n / parts;
        for (r, &k) in self.ratings[range.clone()].iter().zip(&self.classes[range]) {
            f(r.user, r.item, k);
        }
    }
}

/// Output arrays written at disjoint positions by the parts of [`counting_sort`].
struct Placed {
    cols: *mut u32,
    classes: *mut u8,
    len: usize,
}

// SAFETY: the parts write disjoint positions (see `counting_sort`), each below `len`.
unsafe impl Sync for Placed {}

/// A stable counting sort of `src`'s entries into `rows` rows (entries keep the input order
/// within a row): each part counts its entries per row, then places them from its own start
/// in each row, after the earlier parts'. The result is the same for any number of parts.
fn counting_sort(rows: usize, src: &impl Entries) -> Csr {
    let mut starts: Vec<Vec<usize>> = (0..src.parts())
        .into_par_iter()
        .map(|p| {
            let mut n = vec![0usize; rows];
            src.visit(p, |r, _, _| n[r as usize] += 1);
            n
        })
        .collect();
    let mut offsets = Vec::with_capacity(rows + 1);
    let mut at = 0usize;
    for r in 0..rows {
        offsets.push(at);
        for s in &mut starts {
            let n = s[r];
            s[r] = at;
            at += n;
        }
    }
    offsets.push(at);
    let (mut cols, mut classes) = (vec![0u32; at], vec![0u8; at]);
    let out = Placed {
        cols: cols.as_mut_ptr(),
        classes: classes.as_mut_ptr(),
        len: at,
    };
    starts.par_iter_mut().enumerate().for_each(|(p, start)| {
        let out = &out;
        src.visit(p, |r, c, k| {
            let at = start[r as usize];
            start[r as usize] += 1;
            // The positions of part p in row r run from its start up to the next part's: the
            // same entries are visited as when counting. Checked, so a mistake cannot write
            // out of bounds.
            assert!(at < out.len);
            // SAFETY: `at` is in bounds (checked) and no other part writes it (above).
            unsafe {
                *out.cols.add(at) = c;
                *out.classes.add(at) = k;
            }
        });
    });
    Csr {
        offsets,
        cols,
        classes,
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
    /// that does not). Indices must be below `n_users` / `n_items`. Takes the ratings by value
    /// and frees them before building the by-item rows: at 10⁸ ratings they are 1.2 GB, the
    /// matrix 1 GB.
    pub fn from_ratings(
        n_users: usize,
        n_items: usize,
        ratings: Vec<Rating>,
        scale: &RatingScale,
    ) -> Result<Self> {
        // Each rating's class, or `NO_CLASS` when it is off the scale or outside the matrix (a
        // scale has at most 255 values, so 255 is no class); the first such rating is the error.
        const NO_CLASS: u8 = u8::MAX;
        let classes: Vec<u8> = ratings
            .par_iter()
            .map(|r| match scale.class_of(r.value) {
                Some(k) if (r.user as usize) < n_users && (r.item as usize) < n_items => k,
                _ => NO_CLASS,
            })
            .collect();
        // In blocks: `position_first` element by element took 0.5 s at 10⁸ ratings.
        const BLOCK: usize = 1 << 16;
        let first_bad = classes
            .par_chunks(BLOCK)
            .position_first(|b| b.contains(&NO_CLASS))
            .map(|b| {
                let at = classes[b * BLOCK..].iter().position(|&k| k == NO_CLASS);
                b * BLOCK + at.expect("the block holds one")
            });
        if let Some(r) = first_bad.map(|n| ratings[n]) {
            if scale.class_of(r.value).is_none() {
                return Err(rating_error(
                    r.value,
                    format!(
                        "rating {} is not on the rating scale ({})",
                        r.value,
                        value_list(scale.values())
                    ),
                ));
            }
            return Err(RbmError::Shape(format!(
                "rating ({}, {}) outside {n_users} users × {n_items} items",
                r.user, r.item
            )));
        }
        let mut by_user = counting_sort(
            n_users,
            &RatingEntries {
                ratings: &ratings,
                classes: &classes,
                parts: parts_for(ratings.len()),
            },
        );
        by_user.sort_rows();
        drop((classes, ratings));
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
/// Returns `(train, test)`; the test part has `round(fraction · n)` ratings. The training
/// part is `ratings` itself with the test part taken out (no copy: at 10⁸ ratings that is
/// 1.2 GB); clone first to keep the whole set.
pub fn holdout(
    ratings: Vec<Rating>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<Rating>, Vec<Rating>)> {
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

/// Fold `fold` of a `k`-fold split: every rating is in exactly one fold's test part. Like
/// [`holdout`], the training part is `ratings` without the fold.
pub fn kfold(
    ratings: Vec<Rating>,
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
/// drawn from `stream`, in permutation order; the training part is the rest, in file order,
/// kept in place (the test part is marked, one bit per rating, and the rest retained). The
/// permutation is held in `u32`s when it fits: at 10⁸ ratings, 0.4 GB where `usize`s took
/// 0.8 GB.
fn split_by_permutation(
    ratings: Vec<Rating>,
    mut stream: Stream,
    test: std::ops::Range<usize>,
) -> (Vec<Rating>, Vec<Rating>) {
    let places: Vec<usize> = match stream.permutation_u32(ratings.len()) {
        Some(perm) => perm[test].iter().map(|&p| p as usize).collect(),
        None => stream.permutation(ratings.len())[test].to_vec(),
    };
    take_places(ratings, &places)
}

/// Moves the ratings at `places` (distinct indices) out of `ratings`, in the order given;
/// returns (the rest in their order, the ones taken).
pub fn take_places(mut ratings: Vec<Rating>, places: &[usize]) -> (Vec<Rating>, Vec<Rating>) {
    let mut in_test = vec![0u64; ratings.len().div_ceil(64)];
    let test = places
        .iter()
        .map(|&p| {
            in_test[p / 64] |= 1 << (p % 64);
            ratings[p]
        })
        .collect();
    let mut p = 0usize;
    ratings.retain(|_| {
        let keep = in_test[p / 64] & (1 << (p % 64)) == 0;
        p += 1;
        keep
    });
    (ratings, test)
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
            read(
                "user,item,rating\n1,2,3\n1,3,x\n",
                "r.csv",
                RatingFormat::Csv,
            ),
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
        let m = RatingMatrix::from_ratings(2, 3, ratings, &scale).unwrap();
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
        assert!(RatingMatrix::from_ratings(1, 1, bad.to_vec(), &scale).is_err());
    }

    /// Inputs big enough to be cut in parts: the matrices built at 1, 3 and 8 threads against
    /// a map with the last repeat winning, the transpose against the map's transpose, and the
    /// first rating that does not fit named whichever part it falls in.
    #[test]
    fn parallel_builds_equal_a_map_at_any_thread_count() {
        let mut s = Stream::new(4, Purpose::Data, 0, 0, 0);
        let (rows, cols) = (3000usize, 500usize);
        let triples: Vec<(u32, u32, u8)> = (0..200_000)
            .map(|_| (s.below(rows) as u32, s.below(cols) as u32, s.below(5) as u8))
            .collect();
        let mut want = std::collections::BTreeMap::new();
        for &(r, c, k) in &triples {
            want.insert((r, c), k);
        }
        let mut want_t: Vec<_> = want.iter().map(|(&(r, c), &k)| ((c, r), k)).collect();
        want_t.sort_unstable();
        let entries = |m: &Csr| -> Vec<((u32, u32), u8)> {
            (0..m.rows())
                .flat_map(|r| {
                    let (cs, ks) = m.row(r);
                    cs.iter().zip(ks).map(move |(&c, &k)| ((r as u32, c), k))
                })
                .collect()
        };
        let want: Vec<_> = want.into_iter().collect();
        // Without repeats, as ratings (a repeat is kept as the last one).
        let ratings: Vec<Rating> = want
            .iter()
            .map(|&((r, c), k)| Rating {
                user: r,
                item: c,
                value: f32::from(k) + 1.0,
            })
            .rev()
            .collect();
        let scale = RatingScale::from_values(vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let mut first: Option<RatingMatrix> = None;
        for threads in [1, 3, 8] {
            let pool = crate::team::test_pool(threads);
            let (csr, m) = pool.install(|| {
                (
                    Csr::from_triples(rows, triples.iter().copied()),
                    RatingMatrix::from_ratings(rows, cols, ratings.clone(), &scale).unwrap(),
                )
            });
            assert_eq!(entries(&csr), want, "{threads} threads");
            assert_eq!(entries(&pool.install(|| csr.transpose(cols))), want_t);
            assert_eq!(m.by_user, csr, "{threads} threads");
            match &first {
                Some(f) => assert_eq!(&m, f),
                None => first = Some(m),
            }
            // Two ratings that do not fit, in different parts: the first is the error.
            for (a, b, needle) in [
                (60_000, 150_000, "not on the rating scale"),
                (150_000, 60_000, "outside 3000 users"),
            ] {
                let mut bad = ratings.clone();
                bad[a].value = 2.5;
                bad[b].user = rows as u32;
                let err = pool
                    .install(|| RatingMatrix::from_ratings(rows, cols, bad, &scale))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(needle), "{err}");
            }
        }
    }

    /// `class_of` against the first value within 1e-4, on scales of 5, 16 and 40 values with
    /// neighbours closer than 2e-4 (so a value can be near two of them), at and between them.
    #[test]
    fn class_of_is_the_first_value_within_tolerance() {
        let mut s = Stream::new(2, Purpose::Data, 0, 0, 0);
        for k in [5usize, 16, 40] {
            let mut values: Vec<f32> = (0..k).map(|j| j as f32 * 0.5).collect();
            values[1] = values[0] + 1.5e-4;
            let scale = RatingScale::from_values(values.clone()).unwrap();
            let values = scale.values().to_vec();
            for _ in 0..5000 {
                let j = s.below(values.len());
                let x = values[j] + (s.uniform() - 0.5) * 4e-4;
                let want = values.iter().position(|&v| (v - x).abs() < 1e-4);
                assert_eq!(
                    scale.class_of(x).map(usize::from),
                    want,
                    "{x} on {k} values"
                );
            }
            assert_eq!(scale.class_of(values[0] + 8e-5), Some(0));
            assert_eq!(scale.class_of(f32::NAN), None);
        }
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
        // The training part is the given vector, the test part taken out (no copy).
        let given = ratings.clone();
        let at_given = given.as_ptr();
        let (tr, te) = holdout(given, 0.1, 7).unwrap();
        assert_eq!(tr.as_ptr(), at_given);
        assert_eq!((tr.len(), te.len()), (900, 100));
        // The training part keeps the file's order.
        let at = |r: &Rating| r.item * 37 + r.user;
        assert!(tr.windows(2).all(|w| at(&w[0]) < at(&w[1])));
        let mut all: Vec<_> = tr.iter().chain(&te).map(key).collect();
        all.sort_unstable();
        let mut want: Vec<_> = ratings.iter().map(key).collect();
        want.sort_unstable();
        assert_eq!(all, want);
        assert_eq!(holdout(ratings.clone(), 0.1, 7).unwrap().1, te);
        assert_ne!(holdout(ratings.clone(), 0.1, 8).unwrap().1, te);
        let mut seen = vec![0; 1000];
        for f in 0..5 {
            let (tr, te) = kfold(ratings.clone(), 5, f, 3).unwrap();
            assert_eq!(tr.len() + te.len(), 1000);
            for r in te {
                seen[(r.item * 37 + r.user) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
        assert!(holdout(ratings.clone(), 1.0, 0).is_err());
    }
    /// The parse error of `res`: its line and message (the message checked free of raw
    /// control characters).
    fn parse_error<T: std::fmt::Debug>(res: Result<T>, name: &str) -> (usize, String) {
        match res {
            Err(e @ RbmError::Parse { .. }) => {
                let msg = e.to_string();
                let RbmError::Parse { path, line, .. } = e else {
                    unreachable!()
                };
                assert_eq!(path, Path::new(name), "{msg}");
                assert!(!msg.chars().any(char::is_control), "raw control in {msg:?}");
                (line, msg)
            }
            other => panic!("expected a parse error in {name}, got {other:?}"),
        }
    }

    fn tmp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rbm-ratings-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let (r, u, i) = read("\u{feff}1,10,4\n1,11,3\n", "bom.csv", RatingFormat::Auto).unwrap();
        assert_eq!((r.len(), u.len(), i.len()), (2, 1, 2));
        assert_eq!(u.tokens(), ["1"]);
        // A BOM before a header: the header is still recognised.
        let csv = "\u{feff}userId,movieId,rating\n1,10,4\n";
        let (r, u, _) = read(csv, "ratings.csv", RatingFormat::Auto).unwrap();
        assert_eq!((r.len(), u.token(0)), (1, "1"));
        let inter = "\u{feff}user_id:token\titem_id:token\trating:float\n1\t10\t4\n";
        let (r, u, _) = read(inter, "x.inter", RatingFormat::Auto).unwrap();
        assert_eq!((r.len(), u.token(0)), (1, "1"));
        // Only at the start of the file.
        let (_, u, _) = read("1,10,4\n\u{feff}2,10,4\n", "b.csv", RatingFormat::Csv).unwrap();
        assert_eq!(u.token(1), "\u{feff}2");
        // Item titles too.
        let dir = tmp_dir("bom");
        let f = dir.join("u.item");
        std::fs::write(&f, "\u{feff}1|Toy Story (1995)|x\n").unwrap();
        let mut items = IdMap::new();
        items.intern("1");
        assert_eq!(
            read_item_titles(&f, &items).unwrap()[&0],
            "Toy Story (1995)"
        );
        std::fs::write(&f, b"\xEF\xBB\xBF1|Caf\xe9|x\n").unwrap();
        assert_eq!(read_item_titles(&f, &items).unwrap()[&0], "Caf\u{e9}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stray_control_bytes_are_errors_shown_escaped() {
        // CR-only line endings: one long line, which read the first rating only (the rest
        // hid in the ignored timestamp field).
        let (line, msg) = parse_error(
            read("1\t2\t3\t0\r4\t5\t1\t0\r", "mac.tsv", RatingFormat::Tsv),
            "mac.tsv",
        );
        assert_eq!(line, 1);
        assert!(msg.contains("carriage return"), "{msg}");
        let (line, msg) = parse_error(
            read("1,2,3\n1,3,4\0\n", "nul.csv", RatingFormat::Csv),
            "nul.csv",
        );
        assert_eq!(line, 2);
        assert!(msg.contains("NUL"), "{msg}");
        // UTF-16 (with or without its byte-order mark).
        let utf16: Vec<u8> = "1,2,3\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let mut bom = vec![0xFF, 0xFE];
        bom.extend(&utf16);
        for (bytes, what) in [(bom, "UTF-16"), (utf16, "NUL")] {
            let (mut u, mut i) = (IdMap::new(), IdMap::new());
            let res = read_ratings_from(
                Cursor::new(bytes),
                Path::new("w.csv"),
                RatingFormat::Auto,
                &mut u,
                &mut i,
            );
            let (line, msg) = parse_error(res, "w.csv");
            assert!(line <= 2 && msg.contains(what), "{msg}");
        }
        // Other control characters are shown escaped, and long fields cut short.
        let (_, msg) = parse_error(
            read("1,2,3\x1b[2J\n", "esc.csv", RatingFormat::Csv),
            "esc.csv",
        );
        assert!(msg.contains("3\\u{1b}[2J"), "{msg}");
        let long = format!("1,2,{}\n", "9x".repeat(500));
        let (_, msg) = parse_error(read(&long, "long.csv", RatingFormat::Csv), "long.csv");
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn binary_data_as_text_names_file_and_line() {
        let dir = tmp_dir("bin");
        let f = dir.join("model.csv");
        std::fs::write(
            &f,
            b"1,2,3\n1,3,4\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8",
        )
        .unwrap();
        let res = read_ratings(&f, RatingFormat::Auto, &mut IdMap::new(), &mut IdMap::new());
        let (line, msg) = parse_error(res, f.to_str().unwrap());
        assert_eq!(line, 3);
        assert!(msg.contains("not UTF-8") && msg.contains("0x89"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csv_header_columns_are_found_by_name() {
        let (r, u, i) = read(
            "item,user,rating\nA,u1,4\nB,u1,2\n",
            "r.csv",
            RatingFormat::Csv,
        )
        .unwrap();
        assert_eq!(
            (u.tokens(), i.tokens()),
            (
                &["u1".to_string()][..],
                &["A".to_string(), "B".to_string()][..]
            )
        );
        assert_eq!(r[1].value, 2.0);
        // MovieLens ratings.csv; other spellings, any case, extra columns, tabs.
        for (text, name) in [
            (
                "userId,movieId,rating,timestamp\n7,31,2.5,0\n",
                "ratings.csv",
            ),
            ("timestamp,Rating,MOVIE_ID,User_Id\n0,2.5,31,7\n", "r.csv"),
            ("score\titem_id\tuserid\n2.5\t31\t7\n", "r.tsv"),
            ("\"userId\",\"itemId\",\"rating\"\n7,31,2.5\n", "q.csv"),
            ("user item rating\n7 31 2.5\n", "r.txt"),
        ] {
            let (r, u, i) = read(text, name, RatingFormat::Auto).unwrap();
            assert_eq!(
                (u.token(0), i.token(0), r[0].value),
                ("7", "31", 2.5),
                "{text}"
            );
        }
        // Unknown or repeated names are errors at line 1.
        let (line, msg) = parse_error(read("a,b,c\n1,2,3\n", "r.csv", RatingFormat::Csv), "r.csv");
        assert_eq!(line, 1);
        assert!(msg.contains("userId") && msg.contains("`a`"), "{msg}");
        let (line, msg) = parse_error(
            read("user,item,stars\n1,2,3\n", "r.csv", RatingFormat::Auto),
            "r.csv",
        );
        assert!(line == 1 && msg.contains("no rating column"), "{msg}");
        let (line, msg) = parse_error(
            read(
                "user_id,userId,item,rating\n1,1,2,3\n",
                "r.csv",
                RatingFormat::Csv,
            ),
            "r.csv",
        );
        assert!(line == 1 && msg.contains("user column twice"), "{msg}");
    }

    #[test]
    fn a_bad_first_row_is_an_error_not_a_header() {
        // Read as data (a row with numbers in it), so the error is about the data itself.
        for fmt in [RatingFormat::Csv, RatingFormat::Auto] {
            let (line, msg) = parse_error(read("1,2,x\n1,3,4\n", "r.csv", fmt), "r.csv");
            assert!(
                line == 1 && msg.contains("rating `x` is not a finite number"),
                "{msg}"
            );
            let (line, msg) = parse_error(read("1,2\n1,3,4\n", "r.csv", fmt), "r.csv");
            assert!(line == 1 && msg.contains("found 2 field(s)"), "{msg}");
        }
        let (line, msg) = parse_error(read("1\t2\tx\n", "r.tsv", RatingFormat::Tsv), "r.tsv");
        assert!(line == 1 && msg.contains("rating `x`"), "{msg}");
        // Non-numeric ids with a numeric rating are data.
        let (r, _, _) = read("alice,x,4\n", "r.csv", RatingFormat::Csv).unwrap();
        assert_eq!(r.len(), 1);
    }

    /// Ratings with these values, one per line of a CSV file `name` (so the thread knows where
    /// each value was read), each by its own user.
    fn rated(values: &[&str], name: &str) -> Vec<Rating> {
        let text: String = values
            .iter()
            .enumerate()
            .map(|(n, v)| format!("u{n},i,{v}\n"))
            .collect();
        read(&text, name, RatingFormat::Csv).unwrap().0
    }

    #[test]
    fn inferred_scales_must_lie_on_one_grid() {
        let ok = |values: &[&str]| {
            RatingScale::infer(&rated(values, "ok.csv"))
                .unwrap()
                .values()
                .to_vec()
        };
        assert_eq!(ok(&["1", "5", "3"]), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(ok(&["1", "3", "4", "5"]), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(ok(&["0", "2", "5"]).len(), 6);
        assert_eq!(ok(&["0.5", "5", "2.5"]).len(), 10);
        assert_eq!(ok(&["0.1", "0.7"]), [0.1, 0.7]);
        assert_eq!(ok(&["0.1", "0.3", "0.4"]), [0.1, 0.3, 0.4]);
        assert_eq!(ok(&["-10", "10", "-9.75"]).len(), 3);
        let steps: Vec<String> = (0..=254).map(|k| format!("{}", k as f32 * 0.25)).collect();
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        assert_eq!(ok(&steps).len(), 255);

        // A stray value: the error names its file and line and suggests --scale. (Each case
        // on a fresh thread, as in a process reading one file.)
        for (values, line, shown) in [
            (&["1", "2", "3", "1e9", "4", "5", "3"][..], 4, "1000000000"),
            (&["1", "2", "3", "4", "5", "5", "3.7", "1"][..], 7, "3.7"),
            (&["1", "3.7", "5", "3.7", "5", "1"][..], 2, "3.7"),
            (&["0", "2", "5", "5", "0", "2", "3.3"][..], 7, "3.3"),
            (&["0.5", "1", "1.5", "1.5", "1.3"][..], 5, "1.3"),
            (&["1", "1", "2", "2", "-0.3"][..], 5, "-0.3"),
        ] {
            std::thread::spawn(move || {
                let res = RatingScale::infer(&rated(values, "stray.csv"));
                let (l, msg) = parse_error(res, "stray.csv");
                assert_eq!(l, line, "{msg}");
                assert!(
                    msg.contains(&format!("rating {shown} ")) && msg.contains("--scale"),
                    "{msg}"
                );
            })
            .join()
            .unwrap();
        }
        // Read from several files on one thread: the first is named, the others listed.
        rated(&["1", "2", "3.7"], "a.csv");
        let b = rated(&["3.7", "1", "5"], "b.csv");
        let (l, msg) = parse_error(RatingScale::infer(&b), "a.csv");
        assert!(l == 3 && msg.contains("also read from b.csv:1"), "{msg}");
        // Too many steps: 0..255 in quarters, and more distinct values than a scale holds.
        let steps: Vec<String> = (0..=255).map(|k| format!("{}", k as f32 * 0.25)).collect();
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        assert!(RatingScale::infer(&rated(&steps, "wide.csv")).is_err());
        let many: Vec<String> = (0..300)
            .map(|k| format!("{}", 1.0 + k as f32 / 299.0))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (l, msg) = parse_error(RatingScale::infer(&rated(&many, "many.csv")), "many.csv");
        assert!(l == 256 && msg.contains("more than 255"), "{msg}");
        // Ratings not read from a file (on this thread): the same error, without a place.
        std::thread::spawn(|| {
            let off = [1.0, 2.0, 3.0, 4.0, 5.0, 3.7].map(|value| Rating {
                user: 0,
                item: 0,
                value,
            });
            match RatingScale::infer(&off) {
                Err(RbmError::InvalidParam { reason, .. }) => {
                    assert!(reason.contains("3.7"), "{reason}")
                }
                other => panic!("expected an invalid-parameter error, got {other:?}"),
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn ratings_off_a_given_scale_name_file_and_line() {
        let r = rated(&["1", "2", "3.5", "3.5", "4"], "given.csv");
        let scale = RatingScale::from_values(vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let res = RatingMatrix::from_ratings(5, 1, r, &scale);
        let (line, msg) = parse_error(res, "given.csv");
        assert_eq!(line, 3);
        assert!(
            msg.contains("rating 3.5 is not on the rating scale (1, 2, 3, 4, 5)"),
            "{msg}"
        );
    }

    #[test]
    fn repeated_pairs_are_rejected_with_both_lines() {
        let text = "userId,movieId,rating\n1,10,3\n1,11,4\n\n2,10,1\n2,11,2\n1,10,5\n";
        let (line, msg) = parse_error(read(text, "ratings.csv", RatingFormat::Auto), "ratings.csv");
        assert_eq!(line, 7);
        assert!(
            msg.contains("first at line 2") && msg.contains("`1`") && msg.contains("`10`"),
            "{msg}"
        );
        // The earliest repeat in the file is named, whichever user comes first.
        let text = "a\tx\t1\nb\ty\t2\nb\tz\t3\nb\ty\t3\na\tx\t1\n";
        let (line, msg) = parse_error(read(text, "u.data", RatingFormat::UData), "u.data");
        assert_eq!(line, 4);
        assert!(msg.contains("first at line 2"), "{msg}");
        let (line, msg) = parse_error(
            read(
                "1::2::5::0\n1::2::5::0\n",
                "ratings.dat",
                RatingFormat::Auto,
            ),
            "ratings.dat",
        );
        assert!(line == 2 && msg.contains("first at line 1"), "{msg}");
        // Same item, other users; same user, other items: fine.
        let (r, _, _) = read("1,2,3\n2,2,3\n1,3,3\n", "ok.csv", RatingFormat::Csv).unwrap();
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn first_repeat_matches_a_scan_with_a_map() {
        let mut s = Stream::new(5, Purpose::Data, 0, 0, 0);
        for round in 0..200 {
            let n = 1 + s.below(300);
            let (nu, ni) = (1 + s.below(40), 1 + s.below(5000));
            let ratings: Vec<Rating> = (0..n)
                .map(|_| Rating {
                    user: s.below(nu) as u32,
                    item: s.below(ni) as u32,
                    value: 1.0,
                })
                .collect();
            let mut first = HashMap::new();
            let want = ratings
                .iter()
                .enumerate()
                .find_map(|(p, r)| first.insert((r.user, r.item), p).map(|q| (q, p)));
            assert_eq!(first_repeat(&[&ratings]), want, "round {round}");
            // The same list in two parts: the same indices.
            let cut = s.below(n + 1);
            let (a, b) = ratings.split_at(cut);
            assert_eq!(first_repeat(&[a, b]), want, "round {round}, cut {cut}");
        }
    }

    #[test]
    fn test_ratings_shared_with_training_are_refused_with_both_lines() {
        let dir = tmp_dir("disjoint");
        let (train_p, test_p) = (dir.join("u1.base"), dir.join("u1.test"));
        std::fs::write(&train_p, "1\t10\t3\n1\t11\t4\n\n2\t10\t1\n2\t12\t2\n").unwrap();
        let (mut users, mut items) = (IdMap::new(), IdMap::new());
        let train = read_ratings(&train_p, RatingFormat::UData, &mut users, &mut items).unwrap();
        let read_test = |text: &str, users: &mut IdMap, items: &mut IdMap| {
            std::fs::write(&test_p, text).unwrap();
            read_ratings(&test_p, RatingFormat::UData, users, items).unwrap()
        };
        let check = |test: &[Rating], users: &IdMap, items: &IdMap| {
            check_disjoint(
                (&train_p, &train),
                (&test_p, test),
                RatingFormat::UData,
                users,
                items,
            )
        };
        // Other items of the same users, other users of the same items: disjoint.
        let (mut u, mut i) = (users.clone(), items.clone());
        let test = read_test("1\t12\t5\n3\t10\t2\n2\t11\t4\n", &mut u, &mut i);
        check(&test, &u, &i).unwrap();
        // User 2's item 12 (training line 5) again, on the test file's line 3; a later shared
        // pair (1, 10) is not the one named.
        let (mut u, mut i) = (users.clone(), items.clone());
        let test = read_test("3\t10\t2\n\n2\t12\t5\n1\t10\t3\n", &mut u, &mut i);
        let (line, msg) = parse_error(check(&test, &u, &i), &test_p.display().to_string());
        assert_eq!(line, 3, "{msg}");
        assert!(
            msg.contains("`2`") && msg.contains("`12`") && msg.contains("u1.base:5"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binary_rating_files_are_checked() {
        let dir = tmp_dir("rbmr");
        // A 98-byte file declaring 1 user and 2^32 items (6 ratings, K = 4).
        let mut b = Vec::new();
        b.extend(b"RBMR");
        b.extend(1u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((1u64 << 32).to_le_bytes());
        b.extend(6u64.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend(v.to_le_bytes());
        }
        b.extend(0u64.to_le_bytes());
        b.extend(6u64.to_le_bytes());
        for i in 0..6u32 {
            b.extend(i.to_le_bytes());
        }
        b.extend([0u8, 1, 2, 3, 0, 1]);
        assert_eq!(b.len(), 98);
        let read_file =
            |f: &Path| read_ratings(f, RatingFormat::Auto, &mut IdMap::new(), &mut IdMap::new());
        // First 2^20 items (cheap to read if the check failed to reject them), then 2^32.
        let f = dir.join("huge.rbmr");
        let mut m = b.clone();
        m[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes());
        std::fs::write(&f, &m).unwrap();
        assert!(matches!(
            read_file(&f),
            Err(RbmError::Format { offset: 16, .. })
        ));
        std::fs::write(&f, &b).unwrap();
        match read_file(&f) {
            Err(e @ RbmError::Format { offset: 16, .. }) => {
                assert!(e.to_string().contains("4294967296"), "{e}")
            }
            other => panic!("expected a format error at byte 16, got {other:?}"),
        }
        // The compact reader (`rbm bench --netflix FILE` reads with it) refuses it too.
        assert!(matches!(
            crate::synthetic::read_binary(&f),
            Err(RbmError::Format { offset: 16, .. })
        ));
        // Items no rating names are fine in moderation (a generated file: 1 user, 1000 items,
        // 1 rating; a Netflix-shaped one has 17,770 items, all rated).
        let set = crate::synthetic::RatingSet {
            n_users: 2,
            n_items: 1000,
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0],
            by_user: Csr {
                offsets: vec![0, 1, 3],
                cols: vec![3, 0, 7],
                classes: vec![4, 0, 4],
            },
        };
        let g = dir.join("sparse.rbmr");
        crate::synthetic::write_binary(&g, &set).unwrap();
        let (mut u, mut i) = (IdMap::new(), IdMap::new());
        let r = read_ratings(&g, RatingFormat::Auto, &mut u, &mut i).unwrap();
        assert_eq!((r.len(), u.len(), i.len()), (3, 2, 1000));
        assert_eq!(
            r[2],
            Rating {
                user: 1,
                item: 7,
                value: 5.0
            }
        );
        // A rating off a given scale is placed at its value in the header.
        let scale = RatingScale::from_values(vec![1.0, 2.0, 3.0]).unwrap();
        match RatingMatrix::from_ratings(2, 1000, r, &scale) {
            Err(RbmError::Format { offset, path, .. }) => {
                assert_eq!((offset, &*path), (36 + 16, &*g))
            }
            other => panic!("expected a format error, got {other:?}"),
        }
        // A repeated item within a user is rejected by the reader (ids must ascend).
        let mut bytes = std::fs::read(&g).unwrap();
        let cols_at = 36 + 4 * 5 + 8 * 3;
        bytes[cols_at + 8..cols_at + 12].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&g, &bytes).unwrap();
        match read_file(&g) {
            Err(RbmError::Format { offset, .. }) => assert_eq!(offset, (cols_at + 8) as u64),
            other => panic!("expected a format error, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
