//! Model files in the safetensors format: a generic layer (named f32 tensors plus string
//! metadata, validated on the way in) and the binary RBM's file layout on top of it.
//!
//! safetensors is a JSON header followed by raw little-endian tensors, readable from Python
//! (`safetensors.numpy.load_file`) and by every major framework, with no code execution on load.
//!
//! Binary RBM layout: tensors `W` `[D, M]` (row-major, exactly [`BinaryRbm`]'s storage, numpy's C
//! order), `b` `[D]`, `c` `[M]`, all F32; metadata `format` = `rbm.binary`, `format_version` =
//! `1`, `visible` = D, `hidden` = M, plus the caller's hyperparameters.

use crate::atomic;
use crate::binary::BinaryRbm;
use crate::error::{RbmError, Result, shown};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Byte offset of the safetensors JSON header (after its 8-byte length): where tensor names,
/// dtypes, shapes and metadata are declared, so header-level problems are reported there.
const HEADER_OFFSET: u64 = 8;

/// The `format` value of binary RBM files.
pub const BINARY_FORMAT: &str = "rbm.binary";

/// The `format_version` this build writes and reads for binary RBM files.
pub const BINARY_FORMAT_VERSION: &str = "1";

/// Metadata keys [`save_binary`] writes itself; callers' hyperparameters may not use them.
const BINARY_RESERVED: [&str; 4] = ["format", "format_version", "visible", "hidden"];

/// The content of a safetensors file: its F32 tensors and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorFile {
    /// The file, for error messages.
    pub path: PathBuf,
    /// F32 tensors by name: (shape, values in row-major order).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Tensors of any other dtype, by name: (dtype name, shape). Kept so that [`TensorFile::take`]
    /// can say what it found instead of "missing".
    pub other_dtypes: BTreeMap<String, (String, Vec<usize>)>,
    /// The string-to-string metadata of the header.
    pub metadata: BTreeMap<String, String>,
    /// Byte offset in the file where each tensor's data starts (every dtype), so that a bad
    /// value can be reported where it lies.
    pub data_offsets: BTreeMap<String, u64>,
}

impl TensorFile {
    /// A [`RbmError::Format`] naming the file, at the header (where names, shapes and metadata
    /// are declared).
    pub(crate) fn err(&self, reason: impl Into<String>) -> RbmError {
        RbmError::format(&self.path, HEADER_OFFSET, reason)
    }

    /// [`TensorFile::take`], and also an error if any value is NaN or infinite, naming the tensor
    /// and reporting the byte offset of the first such value.
    pub fn take_finite(&mut self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let offset = self.data_offsets.get(name).copied();
        let values = self.take(name, expected_shape)?;
        if let Some(n) = values.iter().position(|x| !x.is_finite()) {
            let at = offset.map_or(HEADER_OFFSET, |o| o + 4 * n as u64);
            return Err(RbmError::format(
                &self.path,
                at,
                format!(
                    "tensor `{name}` holds NaN or infinity (value {n} of {} is {})",
                    values.len(),
                    values[n]
                ),
            ));
        }
        Ok(values)
    }

    /// Removes and returns tensor `name`, checking that it exists, is F32 and has exactly
    /// `expected_shape`.
    pub fn take(&mut self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        if let Some((dtype, shape)) = self.other_dtypes.get(name) {
            return Err(self.err(format!(
                "tensor `{name}` (shape {shape:?}) has dtype {dtype}; only F32 is supported"
            )));
        }
        let Some((shape, _)) = self.tensors.get(name) else {
            let have: Vec<&str> = self
                .tensors
                .keys()
                .chain(self.other_dtypes.keys())
                .map(String::as_str)
                .collect();
            return Err(self.err(format!(
                "tensor `{name}` is missing (the file has {have:?})"
            )));
        };
        if shape.as_slice() != expected_shape {
            return Err(self.err(format!(
                "tensor `{name}` has shape {shape:?}, expected {expected_shape:?}"
            )));
        }
        Ok(self.tensors.remove(name).expect("checked above").1)
    }

    /// An error if any tensor has not been taken, so unexpected content is never ignored.
    pub fn ensure_all_taken(&self) -> Result<()> {
        let left: Vec<&str> = self
            .tensors
            .keys()
            .chain(self.other_dtypes.keys())
            .map(String::as_str)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("unexpected tensors {left:?}")))
        }
    }

    /// Metadata value `key`, or an error naming the file and the key.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    /// Metadata value `key` parsed as a `T`.
    pub fn meta_parse<T: FromStr>(&self, key: &str) -> Result<T> {
        let v = self.meta(key)?;
        v.parse().map_err(|_| {
            self.err(format!(
                "metadata `{key}` = `{}` is not a valid {}",
                shown(v),
                std::any::type_name::<T>()
            ))
        })
    }

    /// Metadata value `key` as one of a few named values (`expected` lists them for the
    /// error), parsed by `T`'s `FromStr`.
    pub fn meta_choice<T: FromStr>(&self, key: &str, expected: &str) -> Result<T> {
        let v = self.meta(key)?;
        v.parse().map_err(|_| {
            self.err(format!(
                "metadata `{key}` = `{}`: expected {expected}",
                shown(v)
            ))
        })
    }

    /// Metadata value `key` as a count or size.
    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta_parse(key)
    }

    /// Metadata value `key` as a real number.
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.meta_parse(key)
    }
}

/// Writes named f32 tensors (little-endian, row-major) and string metadata to a safetensors
/// file, atomically. Each tensor's length must equal the product of its shape.
///
/// The bytes depend only on the content: tensors are laid out sorted by name and the JSON
/// header's keys are sorted. (`safetensors::serialize` takes the metadata as a `HashMap` and
/// writes it in hash order, which changes from run to run, so the header is built here in the
/// same layout — `u64` header length, JSON padded with spaces to a multiple of 8, then the data —
/// and checked by parsing it back with the safetensors crate before anything is written.)
pub fn write_tensors(
    path: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&k| tensors[k].0);
    if let Some(w) = order
        .windows(2)
        .find(|w| tensors[w[0]].0 == tensors[w[1]].0)
    {
        return Err(RbmError::param(
            "tensors",
            format!("tensor name `{}` appears twice", tensors[w[0]].0),
        ));
    }
    if let Some((name, _, _)) = tensors.iter().find(|t| t.0 == "__metadata__") {
        return Err(RbmError::param(
            "tensors",
            format!("`{name}` is reserved by the format"),
        ));
    }
    // The header as the safetensors crate lays it out: `__metadata__` first (here with sorted
    // keys), then the tensors in data order, each as {dtype, shape, data_offsets}.
    let quote = |x: &str| serde_json::to_string(x).expect("strings always encode");
    let mut entries: Vec<String> = Vec::with_capacity(tensors.len() + 1);
    if !metadata.is_empty() {
        let kv: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
            .collect();
        entries.push(format!("\"__metadata__\":{{{}}}", kv.join(",")));
    }
    let mut offset = 0usize;
    for &k in &order {
        let (name, shape, data) = &tensors[k];
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(RbmError::Shape(format!(
                "tensor `{name}` has {} values but shape {shape:?}",
                data.len()
            )));
        }
        let end = offset + 4 * data.len();
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            quote(name),
            dims.join(",")
        ));
        offset = end;
    }
    let mut json = format!("{{{}}}", entries.join(",")).into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut buf = Vec::with_capacity(8 + json.len() + offset);
    buf.extend_from_slice(&(json.len() as u64).to_le_bytes());
    buf.extend_from_slice(&json);
    for &k in &order {
        buf.extend(tensors[k].2.iter().flat_map(|x| x.to_le_bytes()));
    }
    SafeTensors::deserialize(&buf).map_err(|e| {
        RbmError::param(
            "tensors",
            format!("produced an invalid safetensors file: {e}"),
        )
    })?;
    atomic::write_bytes_atomic(path, &buf)
}

/// Reads a safetensors file. F32 tensors are decoded; others are listed in
/// [`TensorFile::other_dtypes`]. A file that is not safetensors is an [`RbmError::Format`].
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let buf = std::fs::read(path).map_err(|e| RbmError::io(path, e))?;
    let st = SafeTensors::deserialize(&buf).map_err(|e| {
        let offset = match e {
            SafeTensorError::HeaderTooSmall
            | SafeTensorError::HeaderTooLarge
            | SafeTensorError::InvalidHeaderLength => 0,
            SafeTensorError::MetadataIncompleteBuffer => buf.len() as u64,
            _ => HEADER_OFFSET,
        };
        RbmError::format(path, offset, format!("not a valid safetensors file: {e}"))
    })?;
    let (_, meta) = SafeTensors::read_metadata(&buf)
        .map_err(|e| RbmError::format(path, HEADER_OFFSET, e.to_string()))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    // Where the data starts: after the 8-byte length and the header it gives (both checked by
    // `deserialize` above).
    let data_start = HEADER_OFFSET + u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let data_offsets: BTreeMap<String, u64> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, data_start + info.data_offsets.0 as u64))
        .collect();
    let mut tensors = BTreeMap::new();
    let mut other_dtypes = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        if view.dtype() == Dtype::F32 {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(name, (shape, values));
        } else {
            other_dtypes.insert(name, (view.dtype().to_string(), shape));
        }
    }
    Ok(TensorFile {
        path: path.to_path_buf(),
        tensors,
        other_dtypes,
        metadata,
        data_offsets,
    })
}

/// Saves a binary RBM with its hyperparameters (any string pairs except the reserved keys
/// `format`, `format_version`, `visible`, `hidden`, which this function writes).
pub fn save_binary(
    path: &Path,
    rbm: &BinaryRbm,
    hyperparams: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(k) = BINARY_RESERVED
        .iter()
        .find(|k| hyperparams.contains_key(**k))
    {
        return Err(RbmError::param(
            "hyperparams",
            format!("`{k}` is reserved for the file format"),
        ));
    }
    let (d, m) = (rbm.visible(), rbm.hidden());
    let mut meta = hyperparams.clone();
    meta.insert("format".into(), BINARY_FORMAT.into());
    meta.insert("format_version".into(), BINARY_FORMAT_VERSION.into());
    meta.insert("visible".into(), d.to_string());
    meta.insert("hidden".into(), m.to_string());
    write_tensors(
        path,
        &[
            ("W", vec![d, m], rbm.weights()),
            ("b", vec![d], rbm.visible_bias()),
            ("c", vec![m], rbm.hidden_bias()),
        ],
        &meta,
    )
}

/// Checks the `format` and `format_version` metadata of a model file.
pub fn check_format(file: &TensorFile, format: &str, version: &str) -> Result<()> {
    let found = file.metadata.get("format").ok_or_else(|| {
        file.err(format!(
            "no `format` metadata: not a model file written by rbm (expected `{format}`)"
        ))
    })?;
    if found != format {
        return Err(file.err(format!(
            "this is a `{}` model file, not `{format}`",
            shown(found)
        )));
    }
    let v = file.meta("format_version")?;
    if v != version {
        return Err(file.err(format!(
            "`{format}` format_version `{}` is not supported (this build reads `{version}`)",
            shown(v)
        )));
    }
    Ok(())
}

/// Loads a binary RBM saved by [`save_binary`], returning it and its hyperparameters (the
/// metadata without the reserved keys). Every tensor's name, dtype and shape is checked against
/// the metadata and every value must be finite; a file of another kind (a rating RBM, say) is
/// refused.
pub fn load_binary(path: &Path) -> Result<(BinaryRbm, BTreeMap<String, String>)> {
    let mut f = read_tensors(path)?;
    check_format(&f, BINARY_FORMAT, BINARY_FORMAT_VERSION)?;
    let d = f.meta_usize("visible")?;
    let m = f.meta_usize("hidden")?;
    if d == 0 || m == 0 {
        return Err(f.err(format!(
            "metadata `visible` = {d}, `hidden` = {m}: a model needs at least one visible and \
             one hidden unit"
        )));
    }
    let w = f.take_finite("W", &[d, m])?;
    let b = f.take_finite("b", &[d])?;
    let c = f.take_finite("c", &[m])?;
    f.ensure_all_taken()?;
    let rbm = BinaryRbm::from_parts(d, m, w, b, c).map_err(|e| f.err(e.to_string()))?;
    let mut hyper = f.metadata;
    for k in BINARY_RESERVED {
        hyper.remove(k);
    }
    Ok((rbm, hyper))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use std::collections::HashMap;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rbm-mf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn model() -> BinaryRbm {
        let (d, m) = (5, 3);
        // Awkward values: signed zero, a subnormal, extremes, and ordinary numbers.
        let specials = [-0.0f32, 1e-40, f32::MAX, f32::MIN_POSITIVE, -3.25];
        let w: Vec<f32> = (0..d * m)
            .map(|k| specials.get(k).copied().unwrap_or((k as f32 * 0.37).sin()))
            .collect();
        let b = (0..d).map(|i| i as f32 / 7.0 - 0.3).collect();
        let c = (0..m).map(|j| -(j as f32) * 1.1).collect();
        BinaryRbm::from_parts(d, m, w, b, c).unwrap()
    }

    fn hyper() -> BTreeMap<String, String> {
        [("learning_rate", "0.05"), ("cd_k", "1"), ("seed", "42")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Asserts a Format error naming `path` whose reason contains `needle`.
    fn assert_format<T: std::fmt::Debug>(r: Result<T>, path: &Path, needle: &str) {
        match r {
            Err(RbmError::Format {
                path: p, reason, ..
            }) => {
                assert_eq!(p, path);
                assert!(reason.contains(needle), "`{reason}` lacks `{needle}`");
            }
            other => panic!("expected a Format error, got {other:?}"),
        }
    }

    /// The binary model metadata `save_binary` writes, for hand-made files.
    fn binary_meta(d: usize, m: usize) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), BINARY_FORMAT.to_string());
        meta.insert("format_version".to_string(), "1".to_string());
        meta.insert("visible".to_string(), d.to_string());
        meta.insert("hidden".to_string(), m.to_string());
        meta
    }

    #[test]
    fn binary_model_round_trips_bit_for_bit() {
        let dir = tmpdir("rt");
        let p = dir.join("m.safetensors");
        let rbm = model();
        save_binary(&p, &rbm, &hyper()).unwrap();
        let (back, h) = load_binary(&p).unwrap();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(back.weights()), bits(rbm.weights()));
        assert_eq!(bits(back.visible_bias()), bits(rbm.visible_bias()));
        assert_eq!(bits(back.hidden_bias()), bits(rbm.hidden_bias()));
        assert_eq!(h, hyper());
        // The raw file: W is stored row-major [D, M] exactly as the model holds it.
        let f = read_tensors(&p).unwrap();
        assert_eq!(f.tensors["W"].0, vec![5, 3]);
        assert_eq!(f.tensors["W"].1[3 + 2], rbm.weight(1, 2));
        assert_eq!(f.metadata["format"], "rbm.binary");
        assert_eq!(f.metadata["visible"], "5");
        assert_eq!(f.meta_f64("learning_rate").unwrap(), 0.05);
        // Reserved keys cannot be overridden by hyperparameters.
        let mut bad = hyper();
        bad.insert("hidden".into(), "9".into());
        assert!(matches!(
            save_binary(&dir.join("x"), &rbm, &bad),
            Err(RbmError::InvalidParam { .. })
        ));
        assert!(!dir.join("x").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_byte_identical_and_readable_by_the_safetensors_crate() {
        let dir = tmpdir("det");
        let (p, q) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        let mut h = hyper();
        for k in 0..20 {
            h.insert(format!("key{k}"), format!("value \"{k}\""));
        }
        save_binary(&p, &model(), &h).unwrap();
        save_binary(&q, &model(), &h).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes, std::fs::read(&q).unwrap());
        // Header padded to a multiple of 8; tensors in name order, contiguous.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n + 4 * (15 + 5 + 3));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("W").unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::F32, &[5usize, 3][..]));
        assert_eq!(
            &w.data()[4 * 14..4 * 15],
            &model().weights()[14].to_le_bytes()
        );
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["key7"], "value \"7\"");
        // The safetensors crate's own output (same tensors, no metadata) reads back the same.
        let raw: Vec<Vec<u8>> = [&[1.5f32, -2.0][..], &[0.25][..]]
            .iter()
            .map(|t| t.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = vec![
            ("x", TensorView::new(Dtype::F32, vec![2], &raw[0]).unwrap()),
            (
                "a",
                TensorView::new(Dtype::F32, vec![1, 1], &raw[1]).unwrap(),
            ),
        ];
        let theirs = safetensors::serialize(views, None).unwrap();
        write_tensors(
            &p,
            &[("x", vec![2], &[1.5, -2.0]), ("a", vec![1, 1], &[0.25])],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), theirs);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
        /// Any finite model and any metadata strings survive a save and load bit for bit.
        #[test]
        fn any_model_round_trips(
            d in 1usize..7,
            m in 1usize..5,
            vals in proptest::collection::vec(proptest::num::f32::NORMAL | proptest::num::f32::ZERO | proptest::num::f32::SUBNORMAL, 64),
            note in ".{0,12}",
        ) {
            let take = |n: usize, off: usize| (0..n).map(|k| vals[(k + off) % vals.len()]).collect::<Vec<f32>>();
            let rbm = BinaryRbm::from_parts(d, m, take(d * m, 0), take(d, 7), take(m, 13)).unwrap();
            let mut h = BTreeMap::new();
            h.insert("note".to_string(), note);
            let dir = tmpdir(&format!("prop{d}{m}"));
            let p = dir.join("m.safetensors");
            save_binary(&p, &rbm, &h).unwrap();
            let (back, h2) = load_binary(&p).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(back.weights()), bits(rbm.weights()));
            proptest::prop_assert_eq!(bits(back.visible_bias()), bits(rbm.visible_bias()));
            proptest::prop_assert_eq!(bits(back.hidden_bias()), bits(rbm.hidden_bias()));
            proptest::prop_assert_eq!(h2, h);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn wrong_dtype_is_named() {
        let dir = tmpdir("dtype");
        let p = dir.join("f64.safetensors");
        let (d, m) = (2, 2);
        let w: Vec<u8> = [0.5f64, 1.0, -1.0, 2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.0f32; 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            ("W", TensorView::new(Dtype::F64, vec![d, m], &w).unwrap()),
            ("b", TensorView::new(Dtype::F32, vec![d], &b).unwrap()),
            ("c", TensorView::new(Dtype::F32, vec![m], &b).unwrap()),
        ];
        let meta: HashMap<String, String> = binary_meta(d, m).into_iter().collect();
        std::fs::write(&p, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        assert_format(load_binary(&p), &p, "dtype F64");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_extra_and_misshapen_tensors_are_refused() {
        let dir = tmpdir("shape");
        let p = dir.join("m.safetensors");
        let (d, m) = (3, 2);
        let w = vec![0.1f32; 6];
        let b = vec![0.0f32; 3];
        let c = vec![0.0f32; 2];
        let meta = binary_meta(d, m);
        write_tensors(&p, &[("W", vec![3, 2], &w), ("b", vec![3], &b)], &meta).unwrap();
        assert_format(load_binary(&p), &p, "tensor `c` is missing");
        write_tensors(
            &p,
            &[
                ("W", vec![2, 3], &w),
                ("b", vec![3], &b),
                ("c", vec![2], &c),
            ],
            &meta,
        )
        .unwrap();
        assert_format(load_binary(&p), &p, "`W` has shape [2, 3], expected [3, 2]");
        write_tensors(
            &p,
            &[
                ("W", vec![3, 2], &w),
                ("b", vec![3], &b),
                ("c", vec![2], &c),
                ("extra", vec![2], &c),
            ],
            &meta,
        )
        .unwrap();
        assert_format(load_binary(&p), &p, "unexpected tensors [\"extra\"]");
        // Metadata that disagrees with the tensors.
        let mut meta4 = meta.clone();
        meta4.insert("hidden".into(), "4".into());
        write_tensors(
            &p,
            &[
                ("W", vec![3, 2], &w),
                ("b", vec![3], &b),
                ("c", vec![2], &c),
            ],
            &meta4,
        )
        .unwrap();
        assert_format(load_binary(&p), &p, "expected [3, 4]");
        meta4.insert("hidden".into(), "two".into());
        write_tensors(&p, &[("W", vec![3, 2], &w)], &meta4).unwrap();
        assert_format(load_binary(&p), &p, "`hidden` = `two` is not a valid usize");
        // Non-finite parameters are refused.
        let nan = vec![f32::NAN; 6];
        write_tensors(
            &p,
            &[
                ("W", vec![3, 2], &nan),
                ("b", vec![3], &b),
                ("c", vec![2], &c),
            ],
            &meta,
        )
        .unwrap();
        assert_format(load_binary(&p), &p, "NaN");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_binary_parameters_are_named_where_they_lie() {
        // Such values were refused, but as "shape mismatch: parameters contain NaN or infinity".
        let dir = tmpdir("finite");
        let p = dir.join("m.safetensors");
        save_binary(&p, &model(), &hyper()).unwrap();
        let good = std::fs::read(&p).unwrap();
        let data = 8 + u64::from_le_bytes(good[..8].try_into().unwrap());
        // Tensors are stored in name order: W (15 values), b (5), c (3).
        let g = dir.join("forged.safetensors");
        for (name, start, index, v) in [
            ("W", 0u64, 7usize, f32::NAN),
            ("W", 0, 14, f32::INFINITY),
            ("b", 15, 2, f32::NEG_INFINITY),
            ("c", 20, 0, f32::NAN),
        ] {
            let at = data + 4 * (start + index as u64);
            let mut bytes = good.clone();
            bytes[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
            std::fs::write(&g, &bytes).unwrap();
            let len = [("W", 15), ("b", 5), ("c", 3)]
                .iter()
                .find(|t| t.0 == name)
                .unwrap()
                .1;
            let needle =
                format!("tensor `{name}` holds NaN or infinity (value {index} of {len} is {v})");
            match load_binary(&g) {
                Err(RbmError::Format {
                    path,
                    offset,
                    reason,
                }) => {
                    assert_eq!(path, g);
                    assert_eq!(reason, needle);
                    assert_eq!(offset, at, "{name}[{index}]");
                }
                other => panic!("{name}[{index}] = {v}: {other:?}"),
            }
        }
        // No visible or no hidden units: said as such, not as a shape mismatch.
        let z: Vec<f32> = Vec::new();
        write_tensors(
            &g,
            &[
                ("W", vec![0, 2], &z),
                ("b", vec![0], &z),
                ("c", vec![2], &[0.0, 0.0]),
            ],
            &binary_meta(0, 2),
        )
        .unwrap();
        assert_format(
            load_binary(&g),
            &g,
            "metadata `visible` = 0, `hidden` = 2: a model needs at least one visible and one hidden unit",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_formats_and_garbage_are_refused() {
        let dir = tmpdir("garbage");
        let p = dir.join("m.safetensors");
        let mut meta = binary_meta(2, 2);
        meta.insert("format".into(), "rbm.rating".into());
        let z = vec![0.0f32; 4];
        write_tensors(&p, &[("W", vec![2, 2], &z)], &meta).unwrap();
        assert_format(
            load_binary(&p),
            &p,
            "this is a `rbm.rating` model file, not `rbm.binary`",
        );
        meta.remove("format");
        write_tensors(&p, &[("W", vec![2, 2], &z)], &meta).unwrap();
        assert_format(load_binary(&p), &p, "no `format` metadata");
        meta.insert("format".into(), "rbm.binary".into());
        meta.insert("format_version".into(), "2".into());
        write_tensors(&p, &[("W", vec![2, 2], &z)], &meta).unwrap();
        assert_format(load_binary(&p), &p, "format_version `2`");
        // Garbage bytes, an empty file, and a good file cut short.
        let g = dir.join("garbage.safetensors");
        std::fs::write(&g, b"this is not a model file at all, just text").unwrap();
        assert_format(load_binary(&g), &g, "not a valid safetensors file");
        std::fs::write(&g, b"").unwrap();
        assert_format(read_tensors(&g), &g, "not a valid safetensors file");
        save_binary(&p, &model(), &hyper()).unwrap();
        let full = std::fs::read(&p).unwrap();
        for cut in [4, 20, full.len() - 7] {
            std::fs::write(&g, &full[..cut]).unwrap();
            assert_format(load_binary(&g), &g, "not a valid safetensors file");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_writes_leave_no_file() {
        let dir = tmpdir("fail");
        let p = dir.join("m.safetensors");
        let z = vec![0.0f32; 5];
        // A shape that does not match the data.
        let r = write_tensors(&p, &[("W", vec![2, 2], &z)], &BTreeMap::new());
        assert!(matches!(r, Err(RbmError::Shape(_))));
        let r = write_tensors(
            &p,
            &[("a", vec![5], &z), ("a", vec![5], &z)],
            &BTreeMap::new(),
        );
        assert!(matches!(r, Err(RbmError::InvalidParam { .. })));
        // A destination that cannot be replaced (a directory): an I/O error naming it, and the
        // temporary file is cleaned up.
        let q = dir.join("taken");
        std::fs::create_dir(&q).unwrap();
        match save_binary(&q, &model(), &hyper()) {
            Err(RbmError::Io { path, .. }) => assert_eq!(path, q),
            other => panic!("{other:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("taken")]);
        assert_eq!(std::fs::read_dir(&q).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
