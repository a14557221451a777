//! Published model shapes with random weights, for benchmarks where the checkpoint is not at
//! hand (e.g. a GPU check of LLaMA 3.1 8B's shape at 128K tokens).

use std::sync::Arc;

use burn::tensor::{DType, Device};
use gemfilter_core::nn::{Projection, TokenEmbedding};
use gemfilter_core::quant::{
    PackedMatrix, QuantFormat, QuantizedEmbedding, QuantizedLinear, SharedBytes,
};
use gemfilter_core::{Activation, Decoder, DecoderConfig, DecoderWeights, RopeConfig, RopeScaling};

use crate::error::Result;

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

/// A decoder of `config`'s shape whose projections and embedding are random blocks in `format`
/// (f16 scales giving weights of standard deviation ≈ 0.02, like trained LLaMA layers; norms one;
/// activations in `dtype`): what `bench --synthetic … --weights q4_0` measures, built directly in
/// packed form so that no f32 copy of the model ever exists. Deterministic in `seed`.
pub fn random_packed_decoder(
    config: DecoderConfig,
    format: QuantFormat,
    dtype: DType,
    seed: u64,
    device: &Device,
) -> Result<Decoder> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut random_matrix = |rows: usize, cols: usize| -> Result<Arc<PackedMatrix>> {
        let mut bytes = vec![0u8; PackedMatrix::byte_len_of(format, rows, cols)];
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = state.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        // A uniform 4-bit value has a standard deviation of about 4.6, an 8-bit one about 74.
        let spread = match format {
            QuantFormat::Q8_0 => 74.0,
            _ => 4.6,
        };
        for (i, block) in bytes.chunks_mut(format.block_bytes()).enumerate() {
            let jitter = 0.5 + (i % 97) as f32 / 97.0;
            block[..2].copy_from_slice(&half::f16::from_f32(0.02 / spread * jitter).to_le_bytes());
            if format == QuantFormat::Q4_1 {
                block[2..4].copy_from_slice(&half::f16::from_f32(-0.16 * jitter).to_le_bytes());
            }
        }
        Ok(Arc::new(PackedMatrix::from_bytes(
            format,
            rows,
            cols,
            SharedBytes::owned(bytes),
        )?))
    };
    let (hidden, vocab) = (config.hidden_size, config.vocab_size);
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let ffn = config.intermediate_size;
    config.validate()?;
    let mut weights = DecoderWeights::new(&config, device);
    let table = random_matrix(vocab, hidden)?;
    weights.embed_tokens = TokenEmbedding::Quantized(QuantizedEmbedding {
        table: Arc::clone(&table),
        dtype,
    });
    let head = if config.tie_word_embeddings {
        table
    } else {
        random_matrix(vocab, hidden)?
    };
    weights.lm_head = Some(Projection::Quantized(QuantizedLinear::new(
        head, None, device,
    )?));
    for layer in 0..config.num_layers {
        for (name, rows, cols) in [
            ("self_attn.q_proj", q, hidden),
            ("self_attn.k_proj", kv, hidden),
            ("self_attn.v_proj", kv, hidden),
            ("self_attn.o_proj", hidden, q),
            ("mlp.gate_proj", ffn, hidden),
            ("mlp.up_proj", ffn, hidden),
            ("mlp.down_proj", hidden, ffn),
        ] {
            let matrix = random_matrix(rows, cols)?;
            weights
                .projection_mut(&format!("layers.{layer}.{name}"))?
                .pack(matrix, device)?;
        }
    }
    // Norms follow the compute dtype; packed parameters are not touched by the cast.
    Ok(Decoder::from_parts(config, weights.cast(dtype), device))
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
