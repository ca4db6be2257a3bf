//! NumPy `.npy` files (read, and a minimal writer) and importing scikit-learn's `BernoulliRBM`.
//!
//! scikit-learn stores a fitted `BernoulliRBM` as `components_` (`[M, D]`: one row per hidden
//! unit), `intercept_visible_` (`[D]`) and `intercept_hidden_` (`[M]`). Saved with `np.save` (one
//! file each) or in one safetensors file under those names, they become a [`BinaryRbm`] with
//! `W = components_ᵀ` (our row-major `D × M`), `b = intercept_visible_`, `c = intercept_hidden_`,
//! so scikit-learn's models can be evaluated with this crate's exact log Z and AIS.
//!
//! The reader handles format versions 1–3, little- and big-endian `f4`/`f8`, C and Fortran order,
//! 1-D and 2-D arrays; anything else is a typed error naming the file and the byte offset.

use crate::atomic::write_atomic;
use crate::binary::BinaryRbm;
use crate::error::{RbmError, Result};
use std::io::Write;
use std::path::Path;

/// A 1-D or 2-D float array read from a `.npy` file, converted to f32 and stored in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape, one or two dimensions.
    pub shape: Vec<usize>,
    /// The values in C order.
    pub data: Vec<f32>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| RbmError::io(path, e))?;
    parse_npy(&bytes, path)
}

/// Parses the bytes of a `.npy` file; `path` is only used in error messages.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let err = |offset: usize, reason: String| RbmError::format(path, offset as u64, reason);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err(0, "not a .npy file (missing \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_start, header_len) = match major {
        1 => (10, usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err(8, "truncated header length".into()));
            }
            (
                12,
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            )
        }
        v => return Err(err(6, format!("unsupported .npy format version {v}"))),
    };
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err(err(
            header_start,
            format!(
                "header of {header_len} bytes runs past the end of the file ({} bytes)",
                bytes.len()
            ),
        ));
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| err(header_start, "header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .and_then(quoted)
        .ok_or_else(|| err(header_start, "header has no 'descr'".into()))?;
    let fortran = match dict_value(header, "fortran_order") {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        _ => return Err(err(header_start, "header has no 'fortran_order'".into())),
    };
    let shape = dict_value(header, "shape")
        .and_then(parse_shape)
        .ok_or_else(|| err(header_start, "header has no readable 'shape' tuple".into()))?;
    let (size, big_endian) = match descr {
        "<f4" | "=f4" => (4, false),
        ">f4" => (4, true),
        "<f8" | "=f8" => (8, false),
        ">f8" => (8, true),
        other => {
            return Err(err(
                header_start,
                format!("dtype '{other}' is not supported (need float32 '<f4' or float64 '<f8')"),
            ));
        }
    };
    if shape.is_empty() || shape.len() > 2 {
        return Err(err(
            header_start,
            format!("{}-D array; expected 1-D or 2-D", shape.len()),
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| err(header_start, "shape overflows".into()))?;
    let want = count
        .checked_mul(size)
        .ok_or_else(|| err(header_start, "shape overflows".into()))?;
    let have = bytes.len() - data_start;
    if have != want {
        return Err(err(
            data_start,
            format!("shape {shape:?} of {descr} needs {want} bytes of data, the file has {have}"),
        ));
    }
    let raw = &bytes[data_start..];
    let mut data: Vec<f32> = if size == 4 {
        raw.chunks_exact(4)
            .map(|c| {
                let a = [c[0], c[1], c[2], c[3]];
                if big_endian {
                    f32::from_be_bytes(a)
                } else {
                    f32::from_le_bytes(a)
                }
            })
            .collect()
    } else {
        raw.chunks_exact(8)
            .map(|c| {
                let a = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                (if big_endian {
                    f64::from_be_bytes(a)
                } else {
                    f64::from_le_bytes(a)
                }) as f32
            })
            .collect()
    };
    if let Some(k) = data.iter().position(|x| !x.is_finite()) {
        return Err(err(
            data_start + k * size,
            format!("element {k} is not finite"),
        ));
    }
    if fortran && shape.len() == 2 {
        // Column-major [r, c] → row-major.
        let (r, c) = (shape[0], shape[1]);
        let mut out = vec![0.0f32; r * c];
        for j in 0..c {
            for i in 0..r {
                out[i * c + j] = data[j * r + i];
            }
        }
        data = out;
    }
    Ok(NpyArray { shape, data })
}

/// The text after `'key':` in a Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let colon = rest.find(':')?;
    Some(rest[colon + 1..].trim_start())
}

/// The content of a leading quoted string.
fn quoted(s: &str) -> Option<&str> {
    let q = s.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let end = s[1..].find(q)?;
    Some(&s[1..1 + end])
}

/// `(3, 4)`, `(5,)` or `()` → dimensions.
fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let s = s.strip_prefix('(')?;
    let inner = &s[..s.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse().ok())
        .collect()
}

/// Writes a little-endian f32 `.npy` file (format 1.0, C order) atomically.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(RbmError::Shape(format!(
            "shape {shape:?} does not hold {} values",
            data.len()
        )));
    }
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Pad so the data starts on a 64-byte boundary; the header ends with a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len())
        .map_err(|_| RbmError::Shape("header too long for .npy format 1.0".into()))?;
    write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&[1, 0])?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for x in data {
            w.write_all(&x.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Builds the model from scikit-learn's three arrays; the names are used in error messages.
pub fn sklearn_from_arrays(
    components: &NpyArray,
    intercept_visible: &NpyArray,
    intercept_hidden: &NpyArray,
    names: [&str; 3],
) -> Result<BinaryRbm> {
    let [m, d] = components.shape[..] else {
        return Err(RbmError::Shape(format!(
            "{}: components_ must be 2-D [n_components, n_features], got shape {:?}",
            names[0], components.shape
        )));
    };
    if intercept_visible.shape != [d] {
        return Err(RbmError::Shape(format!(
            "{}: intercept_visible_ has shape {:?}, expected [{d}] (components_ is [{m}, {d}])",
            names[1], intercept_visible.shape
        )));
    }
    if intercept_hidden.shape != [m] {
        return Err(RbmError::Shape(format!(
            "{}: intercept_hidden_ has shape {:?}, expected [{m}] (components_ is [{m}, {d}])",
            names[2], intercept_hidden.shape
        )));
    }
    // components_[j, i] (row-major [M, D]) → W[i, j] (row-major [D, M]).
    let mut w = vec![0.0f32; d * m];
    for j in 0..m {
        for i in 0..d {
            w[i * m + j] = components.data[j * d + i];
        }
    }
    BinaryRbm::from_parts(
        d,
        m,
        w,
        intercept_visible.data.clone(),
        intercept_hidden.data.clone(),
    )
}

/// Imports a scikit-learn `BernoulliRBM` saved as three `.npy` files (`np.save` of
/// `components_`, `intercept_visible_`, `intercept_hidden_`).
pub fn import_sklearn(
    components: &Path,
    intercept_visible: &Path,
    intercept_hidden: &Path,
) -> Result<BinaryRbm> {
    let names = [components, intercept_visible, intercept_hidden].map(|p| p.display().to_string());
    sklearn_from_arrays(
        &read_npy(components)?,
        &read_npy(intercept_visible)?,
        &read_npy(intercept_hidden)?,
        [&names[0], &names[1], &names[2]],
    )
}

/// Imports a scikit-learn `BernoulliRBM` from one safetensors file holding tensors named
/// `components_`, `intercept_visible_` and `intercept_hidden_` (f32 or f64; the trailing
/// underscore may be omitted).
pub fn import_sklearn_safetensors(path: &Path) -> Result<BinaryRbm> {
    let bytes = std::fs::read(path).map_err(|e| RbmError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| RbmError::format(path, 0, format!("not a safetensors file: {e}")))?;
    let get = |name: &str| -> Result<NpyArray> {
        let view = st
            .tensor(name)
            .or_else(|_| st.tensor(name.trim_end_matches('_')))
            .map_err(|_| {
                RbmError::format(
                    path,
                    0,
                    format!("no tensor `{name}` (found: {})", st.names().join(", ")),
                )
            })?;
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            other => {
                return Err(RbmError::format(
                    path,
                    0,
                    format!("tensor `{name}` has dtype {other:?}; need F32 or F64"),
                ));
            }
        };
        if data.iter().any(|x| !x.is_finite()) {
            return Err(RbmError::format(
                path,
                0,
                format!("tensor `{name}` has non-finite values"),
            ));
        }
        Ok(NpyArray {
            shape: view.shape().to_vec(),
            data,
        })
    };
    let name = path.display().to_string();
    sklearn_from_arrays(
        &get("components_")?,
        &get("intercept_visible_")?,
        &get("intercept_hidden_")?,
        [&name, &name, &name],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rbm-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// A .npy file as numpy writes it, built by hand.
    fn npy_bytes(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((header.len() as u16).to_le_bytes());
        } else {
            out.extend((header.len() as u32).to_le_bytes());
        }
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_c_and_fortran_order_f4_and_f8() {
        let p = Path::new("x.npy");
        let le4: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = parse_npy(
            &npy_bytes(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }   \n",
                &le4,
            ),
            p,
        )
        .unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Fortran order: the same bytes are columns, so row 0 is (1, 3, 5).
        let f = parse_npy(
            &npy_bytes(
                1,
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
                &le4,
            ),
            p,
        )
        .unwrap();
        assert_eq!(f.data, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        // Version 2 header, big-endian f8, 1-D.
        let be8: Vec<u8> = [0.5f64, -1.25, 3.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let g = parse_npy(
            &npy_bytes(
                2,
                "{'descr': '>f8', 'fortran_order': False, 'shape': (3,), }\n",
                &be8,
            ),
            p,
        )
        .unwrap();
        assert_eq!((g.shape.clone(), g.data), (vec![3], vec![0.5, -1.25, 3.0]));
    }

    #[test]
    fn bad_files_give_offsets_and_reasons() {
        let p = Path::new("bad.npy");
        let msg = |b: &[u8]| parse_npy(b, p).unwrap_err().to_string();
        assert!(msg(b"PK\x03\x04 zip file").contains("byte offset 0"));
        let m = msg(&npy_bytes(
            1,
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 8],
        ));
        assert!(m.contains("'<i8'") && m.contains("offset 10"), "{m}");
        let m = msg(&npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n",
            &[0; 8],
        ));
        assert!(m.contains("needs 12 bytes") && m.contains("has 8"), "{m}");
        let m = msg(&npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1), }\n",
            &[0; 4],
        ));
        assert!(m.contains("3-D"), "{m}");
        let nan = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
            &[0, 0, 0, 0, 0, 0, 0xc0, 0x7f],
        );
        let header_end = nan.len() - 8;
        let m = msg(&nan);
        assert!(
            m.contains(&format!("offset {}", header_end + 4)) && m.contains("element 1"),
            "{m}"
        );
        let m = msg(&npy_bytes(9, "{}", &[]));
        assert!(m.contains("version 9"), "{m}");
    }

    #[test]
    fn write_then_read_round_trips() {
        let path = tmp("rt.npy");
        let data: Vec<f32> = (0..12).map(|x| x as f32 * 0.1 - 0.3).collect();
        write_npy(&path, &[3, 4], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes.len() - 48) % 16, 0);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]) as usize % 64, 54);
        let a = read_npy(&path).unwrap();
        assert_eq!((a.shape, a.data), (vec![3, 4], data));
        let e = read_npy(&tmp("missing.npy")).unwrap_err().to_string();
        assert!(e.contains("missing.npy"), "{e}");
    }

    /// Parameters with awkward bit patterns: subnormals, negative zero, large and tiny values.
    fn sklearn_params(m: usize, d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let odd = [1e-40f32, -0.0, 3.0e38, -1.17e-38, 0.1, -7.25];
        let comp = (0..m * d)
            .map(|k| odd[k % odd.len()] * if k % 4 == 0 { 1.0 } else { 0.5 })
            .collect();
        let iv = (0..d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let ih = (0..m).map(|j| -(j as f32) * 0.7 + 0.11).collect();
        (comp, iv, ih)
    }

    fn assert_exact(rbm: &BinaryRbm, comp: &[f32], iv: &[f32], ih: &[f32], m: usize, d: usize) {
        assert_eq!((rbm.visible(), rbm.hidden()), (d, m));
        for j in 0..m {
            for i in 0..d {
                assert_eq!(rbm.weight(i, j).to_bits(), comp[j * d + i].to_bits());
            }
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(rbm.visible_bias()), bits(iv));
        assert_eq!(bits(rbm.hidden_bias()), bits(ih));
    }

    #[test]
    fn sklearn_import_from_npy_reproduces_parameters_exactly() {
        let (m, d) = (5, 7);
        let (comp, iv, ih) = sklearn_params(m, d);
        let (pc, pv, ph) = (tmp("c.npy"), tmp("v.npy"), tmp("h.npy"));
        write_npy(&pc, &[m, d], &comp).unwrap();
        write_npy(&pv, &[d], &iv).unwrap();
        write_npy(&ph, &[m], &ih).unwrap();
        let rbm = import_sklearn(&pc, &pv, &ph).unwrap();
        assert_exact(&rbm, &comp, &iv, &ih, m, d);
        // Swapped files are caught by their shapes.
        let e = import_sklearn(&pc, &ph, &pv).unwrap_err().to_string();
        assert!(
            e.contains("intercept_visible_") && e.contains("h.npy"),
            "{e}"
        );
    }

    #[test]
    fn sklearn_import_from_safetensors_reproduces_parameters_exactly() {
        let (m, d) = (4, 6);
        let (comp, iv, ih) = sklearn_params(m, d);
        let as_bytes = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let (bc, bv) = (as_bytes(&comp), as_bytes(&iv));
        // intercept_hidden_ as f64 (values exactly representable in f32, so still exact).
        let bh: Vec<u8> = ih
            .iter()
            .flat_map(|&v| f64::from(v).to_le_bytes())
            .collect();
        use safetensors::{Dtype, tensor::TensorView};
        let tensors = vec![
            (
                "components_",
                TensorView::new(Dtype::F32, vec![m, d], &bc).unwrap(),
            ),
            (
                "intercept_visible_",
                TensorView::new(Dtype::F32, vec![d], &bv).unwrap(),
            ),
            (
                "intercept_hidden_",
                TensorView::new(Dtype::F64, vec![m], &bh).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let path = tmp("sk.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let rbm = import_sklearn_safetensors(&path).unwrap();
        assert_exact(&rbm, &comp, &iv, &ih, m, d);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(import_sklearn_safetensors(&path).is_err());
    }
}
