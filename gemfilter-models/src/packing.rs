//! Weight formats: which parameters stay packed in blocks, and how they get there.
//!
//! The projections (attention's q/k/v/o, the MLP's gate/up/down, the LM head) and the token
//! embedding can be stored packed ([`QuantFormat`]); norms and biases always stay dense. Packing
//! runs one tensor at a time straight from the file: a GGUF tensor already in the format is used
//! in place (a window of the memory-mapped file, no copy); anything else is converted block by
//! block, never as a whole model in f32.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{DType, Device, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use gemfilter_core::DecoderWeights;
use gemfilter_core::nn::{Projection, TokenEmbedding};
use gemfilter_core::quant::{
    PackedMatrix, QuantFormat, QuantizedEmbedding, QuantizedLinear, SharedBytes, uses_host_kernels,
};
use serde::Serialize;

use crate::checkpoint::{RawBlocks, Resolved};
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::gguf::dtype::{dequantize, q4_k_to_q4_1};

/// How weights are stored once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// What the file holds: GGUF `Q8_0`, `Q4_0` and `Q4_1` tensors stay packed as they are;
    /// `Q4_K` becomes `Q4_1` (each 32-value sub-block keeps its 4-bit values; only its scale and
    /// offset are rounded to f16); `Q5_0`, `Q5_1`, `Q5_K` and `Q6_K` become `Q8_0`; float tensors
    /// (and every tensor of a Hugging Face folder) stay dense in the compute dtype.
    #[default]
    Native,
    /// Every projection and the embedding packed in this format, from any source.
    Packed(QuantFormat),
    /// Everything dequantised to the compute dtype.
    Dense,
}

impl WeightFormat {
    /// Every name [`parse`](Self::parse) accepts.
    pub const NAMES: &'static [&'static str] = &["native", "q8_0", "q4_0", "q4_1", "dense"];

    /// `native`, `q8_0`, `q4_0`, `q4_1` or `dense`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "native" => Some(WeightFormat::Native),
            "dense" => Some(WeightFormat::Dense),
            other => QuantFormat::from_name(other).map(WeightFormat::Packed),
        }
    }

    /// The name [`parse`](Self::parse) reads.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Native => "native",
            WeightFormat::Dense => "dense",
            WeightFormat::Packed(format) => format.name(),
        }
    }

    /// The packed format of a tensor stored as `blocks` (`None`: a float tensor), or `None` when
    /// it stays dense.
    pub fn target(self, blocks: Option<&RawBlocks>) -> Option<QuantFormat> {
        match self {
            WeightFormat::Dense => None,
            WeightFormat::Packed(format) => Some(format),
            WeightFormat::Native => match blocks?.ggml_type {
                GgmlType::Q8_0 => Some(QuantFormat::Q8_0),
                GgmlType::Q4_0 => Some(QuantFormat::Q4_0),
                GgmlType::Q4_1 | GgmlType::Q4K => Some(QuantFormat::Q4_1),
                GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K | GgmlType::Q6K => {
                    Some(QuantFormat::Q8_0)
                }
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a loaded model's weights are stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WeightSummary {
    /// Packed tensors per format: how many, and the bytes they hold.
    pub packed: BTreeMap<String, (usize, usize)>,
    /// Tensors kept dense.
    pub dense_tensors: usize,
    /// Bytes of the dense tensors in the compute dtype.
    pub dense_bytes: usize,
}

impl WeightSummary {
    /// Bytes of every weight.
    pub fn total_bytes(&self) -> usize {
        self.dense_bytes + self.packed.values().map(|(_, bytes)| bytes).sum::<usize>()
    }

    /// `q4_1: 210 tensors, 81.2 MiB; q8_0: 1, 28.3 MiB; dense: 61, 0.3 MiB`.
    pub fn describe(&self) -> String {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let mut parts: Vec<String> = self
            .packed
            .iter()
            .map(|(format, (count, bytes))| {
                format!("{format}: {count} tensors, {:.1} MiB", mib(*bytes))
            })
            .collect();
        parts.push(format!(
            "dense: {} tensors, {:.1} MiB",
            self.dense_tensors,
            mib(self.dense_bytes)
        ));
        parts.join("; ")
    }
}

/// Whether a parameter (module path) may be packed: a projection or the token embedding.
fn packable(module_path: &str) -> bool {
    module_path == "embed_tokens.weight"
        || module_path == "lm_head.weight"
        || (module_path.starts_with("layers.") && module_path.ends_with("_proj.weight"))
}

/// Bytes `resolved` takes once loaded with `format` in the compute `dtype`.
pub fn estimate_bytes(resolved: &[Resolved], format: WeightFormat, dtype: DType) -> u64 {
    resolved
        .iter()
        .map(|r| {
            let elements: usize = r.spec.shape.iter().product();
            match (packable(r.spec.module_path()), r.spec.shape.as_slice()) {
                (true, &[rows, cols]) if cols.is_multiple_of(32) => {
                    match format.target(r.blocks.as_ref()) {
                        Some(target) => PackedMatrix::byte_len_of(target, rows, cols) as u64,
                        None => (elements * dtype.size()) as u64,
                    }
                }
                _ => (elements * dtype.size()) as u64,
            }
        })
        .sum()
}

/// Refuses, before anything is allocated, weights that would not fit in the memory available
/// (`MemAvailable` less 512 MiB for everything else) of a CPU device. GPU devices and systems
/// without `/proc/meminfo` are not checked.
pub fn check_memory(
    resolved: &[Resolved],
    format: WeightFormat,
    dtype: DType,
    device: &Device,
    path: &Path,
) -> Result<()> {
    if !uses_host_kernels(device) {
        return Ok(());
    }
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let headroom = 512u64 << 20;
    let needed = estimate_bytes(resolved, format, dtype);
    if needed + headroom <= available {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let fits: Vec<String> = [
        WeightFormat::Native,
        WeightFormat::Packed(QuantFormat::Q8_0),
        WeightFormat::Packed(QuantFormat::Q4_1),
        WeightFormat::Packed(QuantFormat::Q4_0),
    ]
    .into_iter()
    .filter(|&f| f != format)
    .map(|f| (f, estimate_bytes(resolved, f, dtype)))
    .filter(|&(_, bytes)| bytes + headroom <= available)
    .map(|(f, bytes)| format!("--weights {f} (~{:.1} GiB)", gib(bytes)))
    .collect();
    let hint = if fits.is_empty() {
        String::new()
    } else {
        format!("; it fits with {}", fits.join(" or "))
    };
    Err(ModelError::NotEnoughMemory {
        path: path.to_path_buf(),
        format: format.to_string(),
        needed_gib: gib(needed),
        available_gib: gib(available),
        hint,
    })
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Packs into `weights` every parameter `format` says to pack, and returns the tensors left for
/// dense loading with a summary. A tied LM head shares the packed embedding table.
pub fn pack_weights(
    weights: &mut DecoderWeights,
    resolved: Vec<Resolved>,
    format: WeightFormat,
    tied: bool,
    dtype: DType,
    device: &Device,
    path: &Path,
) -> Result<(Vec<PackTensor>, WeightSummary)> {
    let mut dense = Vec::new();
    let mut summary = WeightSummary::default();
    let mut fused_sources: HashMap<String, Arc<PackedMatrix>> = HashMap::new();
    let mut embedding_table = None;
    for item in resolved {
        let module_path = item.spec.module_path().to_string();
        let target = if packable(&module_path) {
            format.target(item.blocks.as_ref())
        } else {
            None
        };
        let Some(target) = target else {
            let elements: usize = item.spec.shape.iter().product();
            summary.dense_tensors += 1;
            summary.dense_bytes += elements * dtype.size();
            dense.push(item.tensor);
            continue;
        };
        let cannot = |reason: String| ModelError::CannotPack {
            path: item.file.clone(),
            name: item.file_name.clone(),
            format: target.to_string(),
            reason,
        };
        let matrix = packed_matrix(&item, target, &mut fused_sources).map_err(|e| match e {
            ModelError::Core(core) => cannot(core.to_string()),
            other => other,
        })?;
        let entry = summary.packed.entry(target.to_string()).or_default();
        entry.0 += 1;
        entry.1 += matrix.byte_len();
        let matrix = Arc::new(matrix);
        let module = module_path.strip_suffix(".weight").unwrap_or(&module_path);
        if module == "embed_tokens" {
            weights.embed_tokens = TokenEmbedding::Quantized(QuantizedEmbedding {
                table: Arc::clone(&matrix),
                dtype,
            });
            embedding_table = Some(matrix);
        } else {
            weights
                .projection_mut(module)?
                .pack(matrix, device)
                .map_err(|e| cannot(e.to_string()))?;
            // The projection holds its own (interleaved or device) copy now: the file's pages
            // would otherwise stay resident next to it, doubling the peak while loading.
            if let Some(blocks) = &item.blocks {
                blocks.release_pages();
            }
        }
    }
    if tied && let Some(table) = embedding_table {
        // The packed table is also the LM head: shared in host memory, or placed on the device.
        weights.lm_head = Some(Projection::Quantized(QuantizedLinear::new(
            table, None, device,
        )?));
    }
    let _ = path;
    Ok((dense, summary))
}

/// The parameter `item` packed in `target`, with its rows in checkpoint order.
fn packed_matrix(
    item: &Resolved,
    target: QuantFormat,
    fused_sources: &mut HashMap<String, Arc<PackedMatrix>>,
) -> Result<PackedMatrix> {
    let (rows, cols) = match item.spec.shape.as_slice() {
        &[rows, cols] => (rows, cols),
        other => {
            return Err(ModelError::CannotPack {
                path: item.file.clone(),
                name: item.file_name.clone(),
                format: target.to_string(),
                reason: format!("a {}-dimensional tensor is not a matrix", other.len()),
            });
        }
    };
    let Some(blocks) = &item.blocks else {
        // A float tensor (already the parameter's rows): read, convert, pack.
        let data = item
            .tensor
            .to_bytes()
            .map_err(|e| ModelError::CorruptWeights {
                path: item.file.clone(),
                message: format!("tensor `{}`: {e}", item.file_name),
            })?;
        let values = TensorData::from_bytes(data, [rows, cols], item.tensor.dtype)
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::CorruptWeights {
                path: item.file.clone(),
                message: format!("tensor `{}`: {e:?}", item.file_name),
            })?;
        return Ok(PackedMatrix::quantize(&values, rows, cols, target)?);
    };
    let source = match fused_sources.get(&item.file_name) {
        Some(source) => Arc::clone(source),
        None => {
            let source = Arc::new(convert_blocks(blocks, target).map_err(|reason| {
                ModelError::CannotPack {
                    path: item.file.clone(),
                    name: item.file_name.clone(),
                    format: target.to_string(),
                    reason,
                }
            })?);
            if item.spec.fused.is_some() {
                fused_sources.insert(item.file_name.clone(), Arc::clone(&source));
            }
            source
        }
    };
    // Checkpoint row order: llama.cpp's per-head interleave undone, then the fused slice.
    let mut order: Vec<usize> = match blocks.permuted_heads {
        Some(heads) => {
            let head_rows = blocks.rows / heads;
            let half = head_rows / 2;
            (0..blocks.rows)
                .map(|dst| {
                    let (head, within) = (dst / head_rows, dst % head_rows);
                    let (a, b) = (within / half, within % half);
                    head * head_rows + 2 * b + a
                })
                .collect()
        }
        None => (0..blocks.rows).collect(),
    };
    if let Some(fused) = &item.spec.fused {
        order = order[fused.rows.clone()].to_vec();
    }
    let matrix = if order.len() == source.rows() && order.iter().enumerate().all(|(i, &r)| i == r) {
        (*source).clone()
    } else {
        source.select_rows(&order)?
    };
    if (matrix.rows(), matrix.cols()) != (rows, cols) {
        return Err(ModelError::ShapeMismatch {
            path: item.file.clone(),
            name: item.file_name.clone(),
            expected: vec![rows, cols],
            found: vec![matrix.rows(), matrix.cols()],
        });
    }
    Ok(matrix)
}

/// Rows of a ggml tensor converted per row group (never the whole tensor in f32) into `target`;
/// used in place when it already is `target`.
fn convert_blocks(
    blocks: &RawBlocks,
    target: QuantFormat,
) -> std::result::Result<PackedMatrix, String> {
    let (rows, cols) = (blocks.rows, blocks.cols);
    let raw = blocks.bytes.as_slice();
    let same = matches!(
        (blocks.ggml_type, target),
        (GgmlType::Q8_0, QuantFormat::Q8_0)
            | (GgmlType::Q4_0, QuantFormat::Q4_0)
            | (GgmlType::Q4_1, QuantFormat::Q4_1)
    );
    if same {
        return PackedMatrix::from_bytes(target, rows, cols, blocks.bytes.clone())
            .map_err(|e| e.to_string());
    }
    if blocks.ggml_type == GgmlType::Q4K && target == QuantFormat::Q4_1 {
        let converted = q4_k_to_q4_1(raw);
        return PackedMatrix::from_bytes(target, rows, cols, SharedBytes::owned(converted))
            .map_err(|e| e.to_string());
    }
    let row_bytes = raw.len() / rows.max(1);
    let group = (1usize << 20).div_ceil(cols.max(1)).max(1);
    let mut packed = Vec::with_capacity(PackedMatrix::byte_len_of(target, rows, cols));
    for first in (0..rows).step_by(group) {
        let count = group.min(rows - first);
        let bytes = &raw[first * row_bytes..(first + count) * row_bytes];
        let values = dequantize(blocks.ggml_type, bytes, count * cols)?;
        let part =
            PackedMatrix::quantize(&values, count, cols, target).map_err(|e| e.to_string())?;
        packed.extend_from_slice(part.bytes());
    }
    PackedMatrix::from_bytes(target, rows, cols, SharedBytes::owned(packed))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        for name in WeightFormat::NAMES {
            assert_eq!(WeightFormat::parse(name).unwrap().name(), *name);
        }
        assert_eq!(
            WeightFormat::parse("Q4_0"),
            Some(WeightFormat::Packed(QuantFormat::Q4_0))
        );
        assert_eq!(WeightFormat::parse("f16"), None);
    }

    #[test]
    fn only_projections_and_the_embedding_pack() {
        assert!(packable("layers.3.self_attn.q_proj.weight"));
        assert!(packable("layers.0.mlp.down_proj.weight"));
        assert!(packable("embed_tokens.weight"));
        assert!(packable("lm_head.weight"));
        assert!(!packable("layers.0.self_attn.q_proj.bias"));
        assert!(!packable("layers.0.input_layernorm.weight"));
        assert!(!packable("norm.weight"));
    }
}
