//! Phi-3 / Phi-3.5 (`Phi3ForCausalLM`). The real differences from LLaMA: fused `qkv_proj` and
//! `gate_up_proj` tensors (split here, as transformers splits them), "longrope" rope scaling
//! (`su` in older checkpoints) with short and long factors, optional partial rotary factor, and
//! the sliding window some checkpoints declare.

use gemfilter_core::DecoderConfig;
use serde_json::{Map, Value, json};

use super::llama::{FamilyDefaults, LlamaLike, global_tensors};
use super::{GgufLayout, TensorSpec};
use crate::error::Result;
use crate::gguf::{self, GgufFile, MetaValue, Permute};

/// `Phi3ForCausalLM`.
pub const PHI3: LlamaLike = LlamaLike {
    model_type: "phi3",
    class_name: "Phi3ForCausalLM",
    defaults: DEFAULTS,
    manifest: tensor_manifest,
    gguf: Some(&GGUF),
};

/// llama.cpp's `phi3` layout: fused q/k/v and gate/up tensors, NeoX rotation (no permutation).
pub const GGUF: GgufLayout = GgufLayout {
    name: "phi3",
    layer_roles: &[
        ("attn_norm", "input_layernorm", Permute::None),
        ("ffn_norm", "post_attention_layernorm", Permute::None),
        ("attn_qkv", "self_attn.qkv_proj", Permute::None),
        ("attn_output", "self_attn.o_proj", Permute::None),
        ("ffn_up", "mlp.gate_up_proj", Permute::None),
        ("ffn_down", "mlp.down_proj", Permute::None),
    ],
    extra_config: Some(gguf_config),
};

/// `Phi3Config`'s defaults.
pub const DEFAULTS: FamilyDefaults = FamilyDefaults {
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-5,
    max_position_embeddings: 4096,
    sliding_window: Some(None),
    longrope: true,
};

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

/// Phi-3 extras: sliding window, and longrope from the `rope_factors_{short,long}` tensors.
fn gguf_config(file: &GgufFile, config: &mut Map<String, Value>) -> Result<()> {
    let window = file
        .get("phi3.attention.sliding_window")
        .and_then(MetaValue::as_u64);
    config.insert("sliding_window".into(), json!(window));
    if let Some(original) = file
        .get("phi3.rope.scaling.original_context_length")
        .and_then(MetaValue::as_u64)
    {
        config.insert("original_max_position_embeddings".into(), json!(original));
    }
    let factors = |name: &str| -> Result<Option<Vec<f32>>> {
        file.tensor(name)
            .map(|info| gguf::dequantize_checked(file, info))
            .transpose()
    };
    match (
        factors("rope_factors_short.weight")?,
        factors("rope_factors_long.weight")?,
    ) {
        (Some(short), Some(long)) => {
            let mut rope =
                json!({"rope_type": "longrope", "short_factor": short, "long_factor": long});
            if let Some(attention) = file
                .get("phi3.rope.scaling.attn_factor")
                .and_then(MetaValue::as_f64)
            {
                rope["attention_factor"] = json!(attention);
            }
            config.insert("rope_scaling".into(), rope);
        }
        (None, None) => {}
        _ => {
            return Err(gguf::corrupt(
                file,
                "only one of rope_factors_short.weight and rope_factors_long.weight is present",
            ));
        }
    }
    Ok(())
}
