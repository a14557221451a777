//! Published model shapes with random weights, for benchmarks where the checkpoint is not at
//! hand (e.g. a GPU check of LLaMA 3.1 8B's shape at 128K tokens).

use gemfilter_core::{Activation, DecoderConfig, RopeConfig, RopeScaling};

/// LLaMA 3.1 8B's shape: 32 layers, hidden 4096, 32 query / 8 KV heads, MLP 14336, vocabulary
/// 128256, llama3 rope (θ 500000, factor 8, original context 8192), 131072 positions.
pub fn llama31_8b() -> DecoderConfig {
    DecoderConfig {
        vocab_size: 128_256,
        hidden_size: 4096,
        intermediate_size: 14_336,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope: RopeConfig {
            theta: 500_000.0,
            rotary_dim: 128,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        },
        max_position_embeddings: 131_072,
        sliding_window: None,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        activation: Activation::Silu,
    }
}

/// SmolLM2-135M's LLaMA shape (30 layers, hidden 576, 9 query / 3 KV heads, MLP 1536, vocabulary
/// 49152, θ 100000, tied embeddings) with its position range extended to 32768: a LLaMA-shaped
/// model small enough to run a 32K-token prompt on a CPU, where one layer's naive attention
/// scores alone (9 × 32768² f32 = 36 GiB) would not fit in memory.
pub fn smollm2_135m_32k() -> DecoderConfig {
    DecoderConfig {
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope: RopeConfig {
            theta: 100_000.0,
            rotary_dim: 64,
            scaling: RopeScaling::None,
        },
        max_position_embeddings: 32_768,
        sliding_window: None,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        activation: Activation::Silu,
    }
}

/// Shapes available by name.
pub const SHAPES: &[&str] = &["llama-3.1-8b", "smollm2-135m-32k"];

/// The shape called `name`.
pub fn shape(name: &str) -> Option<DecoderConfig> {
    match name {
        "llama-3.1-8b" => Some(llama31_8b()),
        "smollm2-135m-32k" => Some(smollm2_135m_32k()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shapes_are_valid() {
        for name in super::SHAPES {
            super::shape(name).unwrap().validate().unwrap();
        }
    }
}
