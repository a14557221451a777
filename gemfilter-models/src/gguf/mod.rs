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

use std::path::Path;
use std::sync::Arc;

use burn::tensor::TensorData;
use burn_store::bridge;
use burn_store::burn_pack::Error as PackError;
use burn_store::burn_pack::Tensor as PackTensor;
use gemfilter_core::{DecoderConfig, RopeScaling};
use serde_json::{Map, Value, json};

pub use dtype::GgmlType;
pub use reader::{GgufFile, MetaValue, TensorInfo};
pub use tokenizer::tokenizer_from_gguf;

use crate::arch::{Architecture, TensorSpec};
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

fn corrupt(file: &GgufFile, message: impl Into<String>) -> ModelError {
    ModelError::CorruptWeights {
        path: file.path().to_path_buf(),
        message: message.into(),
    }
}

/// The architecture a GGUF file declares (`general.architecture`).
pub fn architecture(file: &GgufFile) -> Result<Architecture> {
    let name = file
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| corrupt(file, "metadata `general.architecture` is missing"))?;
    match name {
        "llama" => Ok(Architecture::Llama),
        other => Err(ModelError::UnsupportedArchitecture {
            path: file.path().to_path_buf(),
            found: format!("general.architecture `{other}`"),
            supported: Architecture::SUPPORTED.join(", "),
        }),
    }
}

/// A Hugging Face `config.json` equivalent of the GGUF metadata, so the architecture module
/// reads both formats the same way. Missing required keys are reported with their GGUF names.
pub fn hf_config(file: &GgufFile, architecture: Architecture) -> Result<JsonFile> {
    let arch = architecture.name();
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
    config.insert("model_type".into(), json!(arch));
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

/// The Hugging Face name of a LLaMA GGUF tensor, and the head count whose RoPE row
/// permutation must be undone (`attn_q`: heads, `attn_k`: KV heads).
fn llama_name(name: &str, config: &DecoderConfig) -> Option<(String, Option<usize>)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(hf) = fixed {
        return Some((hf.to_string(), None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (role, param) = rest.rsplit_once('.')?;
    let (hf, permute) = match role {
        "attn_norm" => ("input_layernorm", None),
        "ffn_norm" => ("post_attention_layernorm", None),
        "attn_q" => ("self_attn.q_proj", Some(config.num_heads)),
        "attn_k" => ("self_attn.k_proj", Some(config.num_kv_heads)),
        "attn_v" => ("self_attn.v_proj", None),
        "attn_output" => ("self_attn.o_proj", None),
        "ffn_gate" => ("mlp.gate_proj", None),
        "ffn_up" => ("mlp.up_proj", None),
        "ffn_down" => ("mlp.down_proj", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{param}"), permute))
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

/// The tensors of a GGUF file, ready for [`crate::hf::weights::apply_tensors`].
pub struct CheckpointTensors {
    /// f32 tensors named by module path in PyTorch layout, dequantised when applied.
    pub tensors: Vec<PackTensor>,
    /// Per-frequency RoPE divisors of a `rope_freqs.weight` tensor (LLaMA 3.1 files).
    pub rope_factors: Option<Vec<f64>>,
    /// GGUF tensors the architecture does not use.
    pub unused: Vec<String>,
}

/// Maps the tensors of a GGUF file onto `manifest` (checking presence, type and shape) as f32
/// checkpoint tensors with Hugging Face names in PyTorch layout, dequantised lazily.
pub fn checkpoint_tensors(
    file: &GgufFile,
    manifest: &[TensorSpec],
    config: &DecoderConfig,
) -> Result<CheckpointTensors> {
    let mut by_hf_name = std::collections::HashMap::new();
    let mut unused = Vec::new();
    let mut rope_factors = None;
    for info in file.tensors() {
        if info.name == "rope_freqs.weight" {
            let values = dequantize_checked(file, info)?;
            rope_factors = Some(values.iter().map(|&v| v as f64).collect());
            continue;
        }
        match llama_name(&info.name, config) {
            Some((hf, permute)) => {
                by_hf_name.insert(hf, (info.clone(), permute));
            }
            None => unused.push(info.name.clone()),
        }
    }
    let missing: Vec<String> = manifest
        .iter()
        .filter(|spec| !by_hf_name.contains_key(&spec.name))
        .map(|spec| gguf_name_of(&spec.name))
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::MissingTensors {
            path: file.path().to_path_buf(),
            names: missing,
        });
    }
    let bytes = file.shared_bytes();
    let mut tensors = Vec::with_capacity(manifest.len());
    for spec in manifest {
        let (info, permute) = by_hf_name.remove(&spec.name).expect("checked above");
        if let GgmlType::Unsupported(_, type_name) = info.ggml_type {
            return Err(ModelError::UnsupportedDType {
                path: file.path().to_path_buf(),
                name: info.name.clone(),
                dtype: format!(
                    "{type_name} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"
                ),
            });
        }
        let shape = info.shape();
        if shape != spec.shape {
            return Err(ModelError::ShapeMismatch {
                path: file.path().to_path_buf(),
                name: info.name.clone(),
                expected: spec.shape.clone(),
                found: shape,
            });
        }
        let bytes = Arc::clone(&bytes);
        let name = spec.module_path().to_string();
        let provider_shape = shape.clone();
        tensors.push(bridge::deferred(
            name,
            burn::tensor::DType::F32,
            shape.into(),
            None,
            move || {
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
        ));
    }
    unused.extend(by_hf_name.into_values().map(|(info, _)| info.name));
    Ok(CheckpointTensors {
        tensors,
        rope_factors,
        unused,
    })
}

fn dequantize_checked(file: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>> {
    dtype::dequantize(
        info.ggml_type,
        file.tensor_bytes(info),
        info.num_elements() as usize,
    )
    .map_err(|e| corrupt(file, format!("tensor `{}`: {e}", info.name)))
}

/// The GGUF name of a LLaMA checkpoint tensor (for error messages).
fn gguf_name_of(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let roles = [
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    if let Some(rest) = hf.strip_prefix("model.layers.")
        && let Some((layer, rest)) = rest.split_once('.')
        && let Some((role, param)) = rest.rsplit_once('.')
        && let Some((_, g)) = roles.iter().find(|(h, _)| *h == role)
    {
        return format!("blk.{layer}.{g}.{param}");
    }
    hf.to_string()
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
