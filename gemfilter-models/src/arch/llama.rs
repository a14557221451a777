//! LLaMA family (`LlamaForCausalLM`: LLaMA 2 / 3 / 3.1 / 3.2 and derivatives such as SmolLM2).

use gemfilter_core::{Activation, DecoderConfig};

use super::{Family, GgufLayout, TensorSpec};
use crate::error::{ModelError, Result};
use crate::gguf::Permute;
use crate::hf::json::JsonFile;
use crate::hf::rope::{RopeDefaults, parse_rope};

/// A family laid out like LLaMA (pre-norm layers, separate or fused q/k/v, gated MLP),
/// described by data: its names, its `config.json` defaults, its tensors and its GGUF layout.
#[derive(Clone, Copy)]
pub struct LlamaLike {
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// The transformers class.
    pub class_name: &'static str,
    /// Values of fields `config.json` may omit.
    pub defaults: FamilyDefaults,
    /// The tensors a checkpoint holds.
    pub manifest: fn(&DecoderConfig) -> Vec<TensorSpec>,
    /// How llama.cpp writes it, when under a name of its own.
    pub gguf: Option<&'static GgufLayout>,
}

impl Family for LlamaLike {
    fn model_type(&self) -> &'static str {
        self.model_type
    }

    fn class_name(&self) -> &'static str {
        self.class_name
    }

    fn decoder_config(&self, config: &JsonFile) -> Result<DecoderConfig> {
        llama_like_config(config, &self.defaults)
    }

    fn tensor_manifest(&self, config: &DecoderConfig) -> Vec<TensorSpec> {
        (self.manifest)(config)
    }

    fn gguf(&self) -> Option<&'static GgufLayout> {
        self.gguf
    }
}

/// `LlamaForCausalLM`.
pub const LLAMA: LlamaLike = LlamaLike {
    model_type: "llama",
    class_name: "LlamaForCausalLM",
    defaults: DEFAULTS,
    manifest: tensor_manifest,
    gguf: Some(&GGUF),
};

/// llama.cpp's `llama` layout (Mistral files use it too): q/k rows interleaved per head.
pub const GGUF: GgufLayout = GgufLayout {
    name: "llama",
    layer_roles: &[
        ("attn_norm", "input_layernorm", Permute::None),
        ("ffn_norm", "post_attention_layernorm", Permute::None),
        ("attn_q", "self_attn.q_proj", Permute::Heads),
        ("attn_k", "self_attn.k_proj", Permute::KvHeads),
        ("attn_v", "self_attn.v_proj", Permute::None),
        ("attn_output", "self_attn.o_proj", Permute::None),
        ("ffn_gate", "mlp.gate_proj", Permute::None),
        ("ffn_up", "mlp.up_proj", Permute::None),
        ("ffn_down", "mlp.down_proj", Permute::None),
    ],
    extra_config: None,
};

/// Defaults of a LLaMA-style family for fields a `config.json` may omit (transformers' values).
#[derive(Debug, Clone, Copy)]
pub struct FamilyDefaults {
    /// `rope_theta` when absent.
    pub rope_theta: f64,
    /// `rms_norm_eps` when absent.
    pub rms_norm_eps: f64,
    /// `max_position_embeddings` when absent.
    pub max_position_embeddings: usize,
    /// `sliding_window` when the key is absent (`null` always means none); `None` when the
    /// family has no sliding window at all.
    pub sliding_window: Option<Option<usize>>,
    /// Whether "longrope" (Phi-3) rope scaling is part of the family.
    pub longrope: bool,
}

/// LLaMA's defaults (`LlamaConfig`).
pub const DEFAULTS: FamilyDefaults = FamilyDefaults {
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-6,
    max_position_embeddings: 2048,
    sliding_window: None,
    longrope: false,
};

/// The config mapping shared by the LLaMA-style families (LLaMA, Mistral, Phi-3).
pub fn llama_like_config(config: &JsonFile, defaults: &FamilyDefaults) -> Result<DecoderConfig> {
    let hidden_size = config.usize("hidden_size")?;
    let num_heads = config.usize("num_attention_heads")?;
    if num_heads == 0 {
        return Err(config.invalid("num_attention_heads", "must be positive"));
    }
    let num_kv_heads = config
        .opt_usize("num_key_value_heads")?
        .unwrap_or(num_heads);
    let head_dim = config
        .opt_usize("head_dim")?
        .unwrap_or(hidden_size / num_heads);
    if let Some(act) = config.opt_str("hidden_act")?
        && act != "silu"
    {
        return Err(config.invalid(
            "hidden_act",
            format!("is `{act}`; only `silu` is supported"),
        ));
    }
    let max_position_embeddings = config
        .opt_usize("max_position_embeddings")?
        .unwrap_or(defaults.max_position_embeddings);
    let sliding_window = match defaults.sliding_window {
        None => None,
        Some(when_absent) if !config.has("sliding_window") => when_absent,
        Some(_) => config.opt_usize("sliding_window")?,
    };
    let rope = parse_rope(
        config,
        head_dim,
        &RopeDefaults {
            theta: defaults.rope_theta,
            max_position_embeddings,
            longrope: defaults.longrope,
        },
    )?;
    let decoder = DecoderConfig {
        vocab_size: config.usize("vocab_size")?,
        hidden_size,
        intermediate_size: config.usize("intermediate_size")?,
        num_layers: config.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: config
            .opt_f64("rms_norm_eps")?
            .unwrap_or(defaults.rms_norm_eps),
        rope,
        max_position_embeddings,
        sliding_window,
        tie_word_embeddings: config.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: config.opt_bool("attention_bias")?.unwrap_or(false),
        mlp_bias: config.opt_bool("mlp_bias")?.unwrap_or(false),
        activation: Activation::Silu,
    };
    decoder
        .validate()
        .map_err(|e| ModelError::InconsistentConfig {
            path: config.path().to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(decoder)
}

/// The tensors outside the layers: embedding, final norm and (untied) LM head.
pub fn global_tensors(config: &DecoderConfig) -> Vec<TensorSpec> {
    let d = config.hidden_size;
    let mut specs = vec![
        TensorSpec::new("model.embed_tokens.weight", [config.vocab_size, d]),
        TensorSpec::new("model.norm.weight", [d]),
    ];
    if !config.tie_word_embeddings {
        specs.push(TensorSpec::new("lm_head.weight", [config.vocab_size, d]));
    }
    specs
}

/// Every tensor a LLaMA checkpoint must hold, with its shape in PyTorch layout
/// (`[out, in]` for projections). Names are the Hugging Face ones.
pub fn tensor_manifest(config: &DecoderConfig) -> Vec<TensorSpec> {
    let d = config.hidden_size;
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let ffn = config.intermediate_size;
    let mut specs = global_tensors(config);
    for i in 0..config.num_layers {
        let p = |name: &str| format!("model.layers.{i}.{name}");
        specs.extend([
            TensorSpec::new(p("input_layernorm.weight"), [d]),
            TensorSpec::new(p("post_attention_layernorm.weight"), [d]),
            TensorSpec::new(p("self_attn.q_proj.weight"), [q, d]),
            TensorSpec::new(p("self_attn.k_proj.weight"), [kv, d]),
            TensorSpec::new(p("self_attn.v_proj.weight"), [kv, d]),
            TensorSpec::new(p("self_attn.o_proj.weight"), [d, q]),
            TensorSpec::new(p("mlp.gate_proj.weight"), [ffn, d]),
            TensorSpec::new(p("mlp.up_proj.weight"), [ffn, d]),
            TensorSpec::new(p("mlp.down_proj.weight"), [d, ffn]),
        ]);
        if config.attention_bias {
            specs.extend([
                TensorSpec::new(p("self_attn.q_proj.bias"), [q]),
                TensorSpec::new(p("self_attn.k_proj.bias"), [kv]),
                TensorSpec::new(p("self_attn.v_proj.bias"), [kv]),
                TensorSpec::new(p("self_attn.o_proj.bias"), [d]),
            ]);
        }
        if config.mlp_bias {
            specs.extend([
                TensorSpec::new(p("mlp.gate_proj.bias"), [ffn]),
                TensorSpec::new(p("mlp.up_proj.bias"), [ffn]),
                TensorSpec::new(p("mlp.down_proj.bias"), [d]),
            ]);
        }
    }
    specs
}
