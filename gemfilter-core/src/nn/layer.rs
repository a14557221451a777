//! One pre-norm decoder layer.

use burn::module::Module;
use burn::tensor::Device;

use super::{Attention, Mlp, RmsNorm};
use crate::config::DecoderConfig;

/// `h += attn(norm(h)); h += mlp(norm(h))`. Field names follow Hugging Face checkpoints.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// An uninitialised layer shaped by `config`.
    pub fn new(config: &DecoderConfig, device: &Device) -> Self {
        Self {
            input_layernorm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            self_attn: Attention::new(
                config.hidden_size,
                config.num_heads,
                config.num_kv_heads,
                config.head_dim,
                config.attention_bias,
                device,
            ),
            post_attention_layernorm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            mlp: Mlp::new(
                config.hidden_size,
                config.intermediate_size,
                config.mlp_bias,
                device,
            ),
        }
    }
}
