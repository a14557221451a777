//! GGUF files (llama.cpp's format): reader, dequantisation, the LLaMA tensor mapping, the model
//! config and the tokenizer from metadata.
//!
//! A GGUF model is turned into the same pieces a Hugging Face folder gives: a `config.json`-like
//! description (checked against the architecture's rules), tensors renamed to Hugging Face names
//! and dequantised to f32 on demand, and a tokenizer. The architecture module (`arch::llama`)
//! then applies unchanged.

pub mod dtype;
pub mod reader;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::TensorData;
use burn_store::bridge;
use burn_store::burn_pack::Error as PackError;
use gemfilter_core::quant::SharedBytes;
use gemfilter_core::{DecoderConfig, RopeScaling};
use serde_json::{Map, Value, json};

pub use dtype::GgmlType;
pub use reader::{GgufFile, MetaValue, TensorInfo};
pub use tokenizer::tokenizer_from_gguf;

use crate::arch::{Architecture, GgufLayout, TensorSpec};
use crate::checkpoint::{Offered, RawBlocks, Resolved, resolve};
use crate::error::{ModelError, Result};
use crate::hf::json::JsonFile;

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
}

pub(crate) fn corrupt(file: &GgufFile, message: impl Into<String>) -> ModelError {
    ModelError::CorruptWeights {
        path: file.path().to_path_buf(),
        message: message.into(),
    }
}

/// The architecture a GGUF file declares (`general.architecture`; llama.cpp writes Mistral
/// models as `llama`).
pub fn architecture(file: &GgufFile) -> Result<Architecture> {
    let name = file
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| corrupt(file, "metadata `general.architecture` is missing"))?;
    Architecture::from_gguf_name(name).ok_or_else(|| ModelError::UnsupportedArchitecture {
        path: file.path().to_path_buf(),
        found: format!("general.architecture `{name}`"),
        supported: format!(
            "{} (llama also covers Mistral)",
            Architecture::supported_gguf()
        ),
    })
}

/// How llama.cpp wrote `architecture`; families read from GGUF always have one.
fn layout(file: &GgufFile, architecture: Architecture) -> Result<&'static GgufLayout> {
    architecture
        .gguf()
        .ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: file.path().to_path_buf(),
            found: format!("{} (no GGUF layout)", architecture.name()),
            supported: Architecture::supported_gguf(),
        })
}

/// A Hugging Face `config.json` equivalent of the GGUF metadata, so the architecture module
/// reads both formats the same way. Missing required keys are reported with their GGUF names.
pub fn hf_config(file: &GgufFile, architecture: Architecture) -> Result<JsonFile> {
    let layout = layout(file, architecture)?;
    let arch = layout.name;
    let key = |name: &str| format!("{arch}.{name}");
    let required = |name: &str| -> Result<u64> {
        let k = key(name);
        file.get(&k)
            .and_then(MetaValue::as_u64)
            .ok_or_else(|| corrupt(file, format!("metadata `{k}` is missing or not an integer")))
    };
    let optional_u64 = |name: &str| file.get(&key(name)).and_then(MetaValue::as_u64);
    let optional_f64 = |name: &str| file.get(&key(name)).and_then(MetaValue::as_f64);

    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let vocab = match optional_u64("vocab_size") {
        Some(v) => v,
        None => match file
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
        {
            Some(tokens) => tokens.len() as u64,
            None => file
                .tensor("token_embd.weight")
                .map(|t| t.dims[t.dims.len() - 1])
                .ok_or_else(|| {
                    corrupt(
                        file,
                        "cannot tell the vocabulary size (no `vocab_size`, tokens or token_embd)",
                    )
                })?,
        },
    };
    let mut config = Map::new();
    config.insert("model_type".into(), json!(architecture.name()));
    config.insert("vocab_size".into(), json!(vocab));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(required("feed_forward_length")?),
    );
    config.insert("num_hidden_layers".into(), json!(required("block_count")?));
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert(
        "num_key_value_heads".into(),
        json!(optional_u64("attention.head_count_kv").unwrap_or(heads)),
    );
    config.insert(
        "max_position_embeddings".into(),
        json!(optional_u64("context_length").unwrap_or(2048)),
    );
    config.insert(
        "rms_norm_eps".into(),
        json!(optional_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5)),
    );
    config.insert(
        "rope_theta".into(),
        json!(optional_f64("rope.freq_base").unwrap_or(10_000.0)),
    );
    let head_dim =
        optional_u64("attention.key_length").unwrap_or(hidden.checked_div(heads).unwrap_or(0));
    config.insert("head_dim".into(), json!(head_dim));
    if let Some(rotary) = optional_u64("rope.dimension_count")
        && head_dim > 0
        && rotary != head_dim
    {
        config.insert(
            "partial_rotary_factor".into(),
            json!(rotary as f64 / head_dim as f64),
        );
    }
    match file
        .get(&key("rope.scaling.type"))
        .and_then(MetaValue::as_str)
    {
        None | Some("none") => {}
        Some("linear") => {
            let factor = optional_f64("rope.scaling.factor").ok_or_else(|| {
                corrupt(
                    file,
                    format!("metadata `{}` is missing", key("rope.scaling.factor")),
                )
            })?;
            config.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        Some(other) => {
            return Err(corrupt(
                file,
                format!(
                    "metadata `{}` is `{other}`, which is not supported (supported: none, linear)",
                    key("rope.scaling.type")
                ),
            ));
        }
    }
    config.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_none()),
    );
    if let Some(extra) = layout.extra_config {
        extra(file, &mut config)?;
    }
    JsonFile::from_value(file.path(), Value::Object(config))
}

/// EOS ids: llama.cpp stops at every end-of-generation token the file names.
pub fn eos_token_ids(file: &GgufFile) -> Vec<u32> {
    let mut ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = file.get(key).and_then(MetaValue::as_u64)
            && !ids.contains(&(id as u32))
        {
            ids.push(id as u32);
        }
    }
    ids
}

/// Whose heads' RoPE row interleave must be undone when a per-layer GGUF tensor becomes a
/// checkpoint tensor (llama.cpp permutes LLaMA's q/k rows; Phi-3 uses NeoX rotation, which needs
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permute {
    /// Stored as the checkpoint stores it.
    None,
    /// Rows interleaved per query head.
    Heads,
    /// Rows interleaved per key/value head.
    KvHeads,
}

/// Tensors outside the layers, common to every architecture here.
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The checkpoint name of a GGUF tensor, with the head count of its RoPE permutation.
fn checkpoint_name(
    layout: &GgufLayout,
    name: &str,
    config: &DecoderConfig,
) -> Option<(String, Option<usize>)> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == name) {
        return Some((hf.to_string(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (role, param) = rest.rsplit_once('.')?;
    let (_, hf, permute) = layout.layer_roles.iter().find(|(g, _, _)| *g == role)?;
    let heads = match permute {
        Permute::None => None,
        Permute::Heads => Some(config.num_heads),
        Permute::KvHeads => Some(config.num_kv_heads),
    };
    Some((format!("model.layers.{layer}.{hf}.{param}"), heads))
}

/// The GGUF name of a checkpoint tensor (for error messages).
fn gguf_name(layout: &GgufLayout, hf: &str) -> String {
    if let Some((g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == hf) {
        return g.to_string();
    }
    if let Some(rest) = hf.strip_prefix("model.layers.")
        && let Some((layer, rest)) = rest.split_once('.')
        && let Some((role, param)) = rest.rsplit_once('.')
        && let Some((g, _, _)) = layout.layer_roles.iter().find(|(_, h, _)| *h == role)
    {
        return format!("blk.{layer}.{g}.{param}");
    }
    hf.to_string()
}

/// The tensors of a GGUF file, ready to be packed or applied.
pub struct CheckpointTensors {
    /// Tensors named by module path in PyTorch layout: f32 dequantised when drawn, with their
    /// raw blocks.
    pub tensors: Vec<Resolved>,
    /// Per-frequency RoPE divisors of a `rope_freqs.weight` tensor (LLaMA 3.1 files).
    pub rope_factors: Option<Vec<f64>>,
    /// GGUF tensors the architecture does not use.
    pub unused: Vec<String>,
}

/// Maps the tensors of a GGUF file onto `manifest` (checking presence, type and shape) as f32
/// checkpoint tensors with Hugging Face names in PyTorch layout, dequantised lazily.
pub fn checkpoint_tensors(
    file: &GgufFile,
    architecture: Architecture,
    manifest: &[TensorSpec],
    config: &DecoderConfig,
) -> Result<CheckpointTensors> {
    let layout = layout(file, architecture)?;
    let mut offered = BTreeMap::new();
    let mut unused = Vec::new();
    let mut rope_factors = None;
    let bytes = file.shared_bytes();
    for info in file.tensors() {
        match info.name.as_str() {
            "rope_freqs.weight" => {
                let values = dequantize_checked(file, info)?;
                rope_factors = Some(values.iter().map(|&v| v as f64).collect());
                continue;
            }
            // Read into the config already (Phi-3 longrope).
            "rope_factors_short.weight" | "rope_factors_long.weight" => continue,
            _ => {}
        }
        let Some((hf, permute)) = checkpoint_name(layout, &info.name, config) else {
            unused.push(info.name.clone());
            continue;
        };
        if let GgmlType::Unsupported(_, type_name) = info.ggml_type {
            return Err(ModelError::UnsupportedDType {
                path: file.path().to_path_buf(),
                name: info.name.clone(),
                dtype: format!(
                    "{type_name} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
                ),
            });
        }
        let shape = info.shape();
        let blocks = match (info.ggml_type, shape.as_slice()) {
            (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16, _) => None,
            (ggml_type, &[rows, cols]) => Some(RawBlocks {
                ggml_type,
                bytes: SharedBytes::new(
                    Arc::clone(&bytes) as Arc<dyn AsRef<[u8]> + Send + Sync>,
                    info.offset as usize..(info.offset + info.byte_len) as usize,
                )
                .map_err(|e| corrupt(file, format!("tensor `{}`: {e}", info.name)))?,
                rows,
                cols,
                permuted_heads: permute,
                mapping: Some((
                    Arc::clone(&bytes),
                    info.offset as usize..(info.offset + info.byte_len) as usize,
                )),
            }),
            _ => None,
        };
        let provider_shape = shape.clone();
        let bytes = Arc::clone(&bytes);
        let tensor_info = info.clone();
        let tensor = bridge::deferred(
            hf.clone(),
            burn::tensor::DType::F32,
            shape.into(),
            None,
            move || {
                let info = &tensor_info;
                let raw = &bytes[info.offset as usize..(info.offset + info.byte_len) as usize];
                let values =
                    dtype::dequantize(info.ggml_type, raw, info.num_elements() as usize)
                        .map_err(|e| PackError::ValidationError(format!("{}: {e}", info.name)))?;
                let values = match permute {
                    Some(heads) => unpermute_rows(&values, provider_shape[0], heads),
                    None => values,
                };
                Ok(TensorData::new(values, provider_shape.clone()))
            },
        );
        offered.insert(
            hf,
            Offered {
                tensor,
                file: file.path().to_path_buf(),
                file_name: info.name.clone(),
                blocks,
            },
        );
    }
    let (tensors, mut not_needed) =
        resolve(manifest, offered, file.path(), &|hf| gguf_name(layout, hf))?;
    unused.append(&mut not_needed);
    Ok(CheckpointTensors {
        tensors,
        rope_factors,
        unused,
    })
}

/// Undoes llama.cpp's interleaving of the two rotary halves of each head's rows:
/// row `2b + a` of a head in the file is row `a·half + b` in the checkpoint.
pub fn unpermute_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut out = vec![0.0f32; values.len()];
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..half {
                let src = h * head_rows + 2 * b + a;
                let dst = h * head_rows + a * half + b;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub(crate) fn dequantize_checked(file: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>> {
    dtype::dequantize(
        info.ggml_type,
        file.tensor_bytes(info),
        info.num_elements() as usize,
    )
    .map_err(|e| corrupt(file, format!("tensor `{}`: {e}", info.name)))
}

/// Applies a `rope_freqs.weight` tensor: llama.cpp stores LLaMA 3.1's scaled frequencies as
/// per-frequency divisors of the plain ones.
pub fn apply_rope_factors(config: &mut DecoderConfig, factors: Option<Vec<f64>>) {
    if let Some(factors) = factors {
        config.rope.scaling = RopeScaling::Frequencies { divisors: factors };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // 2 heads × 4 rows, 1 column; llama.cpp's permute maps checkpoint rows [0 1 2 3] of a
        // head to file rows [0 2 1 3].
        let file = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        assert_eq!(
            unpermute_rows(&file, 8, 2),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        );
    }
}
