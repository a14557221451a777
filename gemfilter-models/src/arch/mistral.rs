//! Mistral family (`MistralForCausalLM`): Mistral 7B v0.1 (sliding window 4096), v0.2/v0.3 (no
//! window), Mistral Nemo (explicit `head_dim` 128, rope θ 1e6, tekken vocabulary). The tensors are
//! LLaMA's; the differences are the defaults and the sliding window, which the decoder applies in
//! the full prefill, the reduced rerun and cached decoding alike.

use super::llama::{FamilyDefaults, LlamaLike, tensor_manifest};

/// `MistralForCausalLM`: LLaMA's tensors; llama.cpp writes its GGUF files as `llama`, which the
/// LLaMA family reads.
pub const MISTRAL: LlamaLike = LlamaLike {
    model_type: "mistral",
    class_name: "MistralForCausalLM",
    defaults: DEFAULTS,
    manifest: tensor_manifest,
    gguf: None,
};

/// `MistralConfig`'s defaults: a key-less `sliding_window` means 4096 (v0.1), `null` none.
pub const DEFAULTS: FamilyDefaults = FamilyDefaults {
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-6,
    max_position_embeddings: 4096 * 32,
    sliding_window: Some(Some(4096)),
    longrope: false,
};
