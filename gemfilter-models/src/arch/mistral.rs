//! Mistral family (`MistralForCausalLM`): Mistral 7B v0.1 (sliding window 4096), v0.2/v0.3 (no
//! window), Mistral Nemo (explicit `head_dim` 128, rope θ 1e6, tekken vocabulary). The tensors are
//! LLaMA's; the differences are the defaults and the sliding window, which the decoder applies in
//! the full prefill, the reduced rerun and cached decoding alike.

use gemfilter_core::DecoderConfig;

use super::llama::{FamilyDefaults, llama_like_config};
use crate::error::Result;
use crate::hf::json::JsonFile;

/// `model_type` of this family in `config.json`.
pub const MODEL_TYPE: &str = "mistral";

/// `MistralConfig`'s defaults: a key-less `sliding_window` means 4096 (v0.1), `null` none.
pub const DEFAULTS: FamilyDefaults = FamilyDefaults {
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-6,
    max_position_embeddings: 4096 * 32,
    sliding_window: Some(Some(4096)),
    longrope: false,
};

/// Maps a Mistral `config.json` onto [`DecoderConfig`].
pub fn decoder_config(config: &JsonFile) -> Result<DecoderConfig> {
    llama_like_config(config, &DEFAULTS)
}
