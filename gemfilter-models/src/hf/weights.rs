//! Safetensors checkpoints (single file or sharded with an index) loaded through burn-store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{
    ApplyError, ChainAdapter, FloatCastAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use gemfilter_core::DecoderWeights;

use super::json::JsonFile;
use crate::arch::TensorSpec;
use crate::checkpoint::{Offered, Resolved, resolve};
use crate::error::{ModelError, Result};

/// Single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// What a load found beyond the required tensors.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The weight files read.
    pub files: Vec<PathBuf>,
    /// Checkpoint tensors the architecture does not use (e.g. a tied `lm_head.weight`).
    pub unused: Vec<String>,
}

/// The weight files of a Hugging Face folder: the shards named by the index, or the single file.
pub fn weight_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let index_path = folder.join(INDEX_FILE);
    if index_path.is_file() {
        let index = JsonFile::read(&index_path, "safetensors index")?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| index.invalid("weight_map", "must be an object of tensor → file"))?;
        let mut files = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                index.invalid(&format!("weight_map.{tensor}"), "must be a file name")
            })?;
            files.insert(file.to_string());
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| folder.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(ModelError::NotFound {
                what: format!("weight shard listed in {INDEX_FILE}"),
                path: missing.clone(),
            });
        }
        return Ok(files);
    }
    let single = folder.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::NotFound {
        what: format!("weights ({SINGLE_FILE} or {INDEX_FILE})"),
        path: folder.to_path_buf(),
    })
}

/// Every tensor descriptor of `files` (data stays on disk until applied).
fn read_descriptors(files: &[PathBuf]) -> Result<BTreeMap<String, Offered>> {
    let mut all = BTreeMap::new();
    for file in files {
        let mut store = SafetensorsStore::from_file(file.clone());
        let tensors = store
            .get_all_tensors()
            .map_err(|e| ModelError::CorruptWeights {
                path: file.clone(),
                message: e.to_string(),
            })?;
        for (name, tensor) in tensors {
            all.insert(
                name.clone(),
                Offered {
                    tensor: tensor.clone(),
                    file: file.clone(),
                    file_name: name.clone(),
                    blocks: None,
                },
            );
        }
    }
    Ok(all)
}

/// Finds the tensors `manifest` names in the safetensors files of `folder` and checks each for
/// presence, element type and shape, so errors name the checkpoint tensor and file before any
/// memory is committed. The data stays on disk until applied.
pub fn read_checkpoint(
    folder: &Path,
    manifest: &[TensorSpec],
) -> Result<(Vec<Resolved>, LoadReport)> {
    let files = weight_files(folder)?;
    let offered = read_descriptors(&files)?;
    let (tensors, unused) = resolve(manifest, offered, folder, &|name| name.to_string())?;
    Ok((tensors, LoadReport { files, unused }))
}

/// Applies PyTorch-layout tensors named by module path to `weights`, cast to `dtype`, and turns
/// any leftover problem into an error naming the tensor.
pub fn apply_tensors(
    weights: &mut DecoderWeights,
    tensors: Vec<PackTensor>,
    dtype: DType,
    source: &Path,
) -> Result<()> {
    let adapter = ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(dtype));
    // Parameter paths never name a `Projection` variant (`q_proj.weight`, not
    // `q_proj.Dense.weight`): skip enum variants when matching.
    let result = weights.apply(tensors, None, Some(Box::new(adapter)), true);
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => ModelError::ShapeMismatch {
                path: source.to_path_buf(),
                name: path.clone(),
                expected: expected.iter().copied().collect(),
                found: found.iter().copied().collect(),
            },
            other => ModelError::CorruptWeights {
                path: source.to_path_buf(),
                message: other.to_string(),
            },
        });
    }
    if !result.missing.is_empty() {
        return Err(ModelError::MissingTensors {
            path: source.to_path_buf(),
            names: result.missing.into_iter().map(|(path, _)| path).collect(),
        });
    }
    Ok(())
}
