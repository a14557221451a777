//! Matching the tensors a file holds with the tensors an architecture needs, for every format:
//! presence, element type and shape are checked (errors name the tensor as the file names it),
//! fused tensors are split, and nothing is read from disk until the weights are applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use burn_store::bridge;
use burn_store::burn_pack::Error as PackError;
use burn_store::burn_pack::Tensor as PackTensor;
use gemfilter_core::quant::SharedBytes;

use crate::arch::TensorSpec;
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;

/// A tensor a file offers, under its Hugging Face-style name.
#[derive(Debug, Clone)]
pub struct Offered {
    /// The tensor (data read or dequantised lazily).
    pub tensor: PackTensor,
    /// The file holding it.
    pub file: PathBuf,
    /// Its name in that file (a GGUF name for GGUF files), for error messages.
    pub file_name: String,
    /// The tensor's raw blocks, when the file stores it in a ggml block type (GGUF), so it can
    /// stay packed.
    pub blocks: Option<RawBlocks>,
}

/// A `rows × cols` tensor as a file stores it in a ggml type, before any conversion.
#[derive(Debug, Clone)]
pub struct RawBlocks {
    /// The ggml type.
    pub ggml_type: GgmlType,
    /// The tensor's bytes (a window of the memory-mapped file).
    pub bytes: SharedBytes,
    /// Rows (`[out, in]` layout: output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// llama.cpp interleaved each head's rotary halves in these rows (q/k of LLaMA): the head
    /// count to undo it with.
    pub permuted_heads: Option<usize>,
    /// The read-only file mapping the bytes live in, and their range there, so that the pages
    /// can be dropped from resident memory once the tensor is repacked.
    pub mapping: Option<(Arc<memmap2::Mmap>, std::ops::Range<usize>)>,
}

impl RawBlocks {
    /// Drops the tensor's file pages from this process's resident memory (`MADV_DONTNEED`):
    /// call once the tensor is copied into the model. A later read refaults them from the
    /// file with the same contents, so nothing depends on it.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Some((map, range)) = &self.mapping {
            // SAFETY: the map is read-only and file-backed: DONTNEED discards no data.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
    }
}

/// One parameter of an architecture's manifest, found in a file.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The parameter as a float tensor named by module path, read only when drawn.
    pub tensor: PackTensor,
    /// What the manifest asked for.
    pub spec: TensorSpec,
    /// The file's raw blocks of the tensor holding it (the whole tensor, before any fused-row
    /// split), when it has them.
    pub blocks: Option<RawBlocks>,
    /// The file holding it.
    pub file: PathBuf,
    /// Its name in that file.
    pub file_name: String,
}

/// The parameters of `manifest` built from `offered`, named by module path, and the offered
/// tensors nothing used (by their file names).
///
/// `file_name_of` turns a Hugging Face-style name into the file's own naming, for reporting
/// tensors that are missing.
pub fn resolve(
    manifest: &[TensorSpec],
    offered: BTreeMap<String, Offered>,
    origin: &Path,
    file_name_of: &dyn Fn(&str) -> String,
) -> Result<(Vec<Resolved>, Vec<String>)> {
    let mut missing: Vec<String> = Vec::new();
    for spec in manifest {
        let source = spec.source_name();
        if !offered.contains_key(source) {
            let name = file_name_of(source);
            if !missing.contains(&name) {
                missing.push(name);
            }
        }
    }
    if !missing.is_empty() {
        return Err(ModelError::MissingTensors {
            path: origin.to_path_buf(),
            names: missing,
        });
    }
    let mut used = BTreeSet::new();
    let mut tensors = Vec::with_capacity(manifest.len());
    for spec in manifest {
        let source = &offered[spec.source_name()];
        used.insert(spec.source_name().to_string());
        if !matches!(source.tensor.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::UnsupportedDType {
                path: source.file.clone(),
                name: source.file_name.clone(),
                dtype: format!("{:?}", source.tensor.dtype),
            });
        }
        let found: Vec<usize> = source.tensor.shape.iter().copied().collect();
        if found != spec.source_shape() {
            return Err(ModelError::ShapeMismatch {
                path: source.file.clone(),
                name: source.file_name.clone(),
                expected: spec.source_shape().to_vec(),
                found,
            });
        }
        let name = spec.module_path().to_string();
        let tensor = match &spec.fused {
            None => {
                let mut tensor = source.tensor.clone();
                tensor.name = name;
                tensor
            }
            Some(fused) => slice_rows(&source.tensor, fused.rows.clone(), name),
        };
        tensors.push(Resolved {
            tensor,
            spec: spec.clone(),
            blocks: source.blocks.clone(),
            file: source.file.clone(),
            file_name: source.file_name.clone(),
        });
    }
    let unused = offered
        .into_iter()
        .filter(|(name, _)| !used.contains(name))
        .map(|(_, o)| o.file_name)
        .collect();
    Ok((tensors, unused))
}

/// Rows `rows` of a row-major tensor, produced from its bytes when drawn.
fn slice_rows(tensor: &PackTensor, rows: std::ops::Range<usize>, name: String) -> PackTensor {
    let source = tensor.clone();
    let dtype = source.dtype;
    let row_len: usize = source.shape.iter().skip(1).product();
    let mut shape: Vec<usize> = source.shape.iter().copied().collect();
    shape[0] = rows.len();
    let element = dtype.size();
    let provider_shape = shape.clone();
    bridge::deferred(name, dtype, shape.into(), None, move || {
        let bytes = source.to_bytes()?;
        let (start, end) = (rows.start * row_len * element, rows.end * row_len * element);
        if end > bytes.len() {
            return Err(PackError::ValidationError(format!(
                "rows {rows:?} are outside the {} bytes of `{}`",
                bytes.len(),
                source.name
            )));
        }
        Ok(TensorData::from_bytes_vec(
            bytes[start..end].to_vec(),
            provider_shape.clone(),
            dtype,
        ))
    })
}
