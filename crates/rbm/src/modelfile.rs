//! Model files: named f32 tensors plus string metadata in the safetensors format, written
//! atomically. (Local shim with the API agreed for the shared helper; the shared version
//! replaces this file when merged.)

use crate::atomic::write_bytes_atomic;
use crate::error::{RbmError, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A read model file: tensors by name (shape, values) and the metadata strings.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Tensors by name: shape and row-major values.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Metadata key → value.
    pub metadata: BTreeMap<String, String>,
    /// Where the file was read from (for error messages).
    pub path: PathBuf,
}

impl TensorFile {
    /// Removes and returns tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let (shape, data) = self
            .tensors
            .remove(name)
            .ok_or_else(|| RbmError::format(&self.path, 0, format!("missing tensor `{name}`")))?;
        if shape != expected_shape {
            return Err(RbmError::format(
                &self.path,
                0,
                format!("tensor `{name}` has shape {shape:?}, expected {expected_shape:?}"),
            ));
        }
        Ok(data)
    }

    /// The metadata value for `key`.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| RbmError::format(&self.path, 0, format!("missing metadata `{key}`")))
    }
}

/// Writes f32 tensors and metadata to `path` atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            if s.iter().product::<usize>() != d.len() {
                return Err(RbmError::Shape(format!(
                    "tensor `{n}`: shape {s:?} does not hold {} values",
                    d.len()
                )));
            }
            Ok((
                n.to_string(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                s.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| RbmError::Shape(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let out = safetensors::serialize(views, Some(meta))
        .map_err(|e| RbmError::format(path, 0, e.to_string()))?;
    write_bytes_atomic(path, &out)
}

/// Reads a file written by [`write_tensors`].
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| RbmError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| RbmError::format(path, 0, format!("not a safetensors file: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| RbmError::format(path, 0, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(RbmError::format(
                path,
                0,
                format!("tensor `{name}` is not f32"),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    Ok(TensorFile {
        tensors,
        metadata: meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        path: path.to_path_buf(),
    })
}
