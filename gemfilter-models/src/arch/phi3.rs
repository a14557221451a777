//! Phi-3 / Phi-3.5 (`Phi3ForCausalLM`). The real differences from LLaMA: fused `qkv_proj` and
//! `gate_up_proj` tensors (split here, as transformers splits them), "longrope" rope scaling
//! (`su` in older checkpoints) with short and long factors, optional partial rotary factor, and
//! the sliding window some checkpoints declare.

use gemfilter_core::DecoderConfig;

use super::TensorSpec;
use super::llama::{FamilyDefaults, global_tensors, llama_like_config};
use crate::error::Result;
use crate::hf::json::JsonFile;

/// `model_type` of this family in `config.json`.
pub const MODEL_TYPE: &str = "phi3";

/// `Phi3Config`'s defaults.
pub const DEFAULTS: FamilyDefaults = FamilyDefaults {
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-5,
    max_position_embeddings: 4096,
    sliding_window: Some(None),
    longrope: true,
};

/// Maps a Phi-3 `config.json` onto [`DecoderConfig`].
pub fn decoder_config(config: &JsonFile) -> Result<DecoderConfig> {
    llama_like_config(config, &DEFAULTS)
}

/// Phi-3's tensors: LLaMA's, with q/k/v as rows of `qkv_proj` (in that order) and gate/up as
/// the two halves of `gate_up_proj` (gate first, as `chunk(2)` reads it).
pub fn tensor_manifest(config: &DecoderConfig) -> Vec<TensorSpec> {
    let d = config.hidden_size;
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let ffn = config.intermediate_size;
    let mut specs = global_tensors(config);
    for i in 0..config.num_layers {
        let p = |name: &str| format!("model.layers.{i}.{name}");
        let qkv = p("self_attn.qkv_proj.weight");
        let gate_up = p("mlp.gate_up_proj.weight");
        specs.extend([
            TensorSpec::new(p("input_layernorm.weight"), [d]),
            TensorSpec::new(p("post_attention_layernorm.weight"), [d]),
            TensorSpec::rows_of(p("self_attn.q_proj.weight"), &qkv, q + 2 * kv, 0..q, d),
            TensorSpec::rows_of(p("self_attn.k_proj.weight"), &qkv, q + 2 * kv, q..q + kv, d),
            TensorSpec::rows_of(
                p("self_attn.v_proj.weight"),
                &qkv,
                q + 2 * kv,
                q + kv..q + 2 * kv,
                d,
            ),
            TensorSpec::new(p("self_attn.o_proj.weight"), [d, q]),
            TensorSpec::rows_of(p("mlp.gate_proj.weight"), &gate_up, 2 * ffn, 0..ffn, d),
            TensorSpec::rows_of(p("mlp.up_proj.weight"), &gate_up, 2 * ffn, ffn..2 * ffn, d),
            TensorSpec::new(p("mlp.down_proj.weight"), [d, ffn]),
        ]);
    }
    specs
}
