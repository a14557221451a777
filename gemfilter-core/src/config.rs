//! Architecture-neutral description of a decoder-only transformer.
//!
//! Model crates translate their file formats (Hugging Face `config.json`, GGUF metadata) into a
//! [`DecoderConfig`]; nothing in this crate knows model names.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// How rotary position embeddings derive their inverse frequencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/d)`.
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// Interpolation factor (> 0).
        factor: f64,
    },
    /// LLaMA 3.1 frequency-dependent scaling (`rope_type: "llama3"`).
    Llama3 {
        /// Scale applied to low frequencies.
        factor: f64,
        /// Wavelength threshold (as a divisor of the original context) below which frequencies
        /// are scaled fully.
        low_freq_factor: f64,
        /// Wavelength threshold above which frequencies are left unchanged.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
    /// Explicit per-frequency divisors of the plain inverse frequencies (llama.cpp's
    /// `rope_freqs.weight`, how GGUF files carry LLaMA 3.1 scaling).
    Frequencies {
        /// One divisor per rotary frequency (`rotary_dim / 2` of them).
        divisors: Vec<f64>,
    },
    /// Phi-3 "longrope" (older checkpoints: "su"): per-frequency factors, the long set used once
    /// the sequence exceeds the original context, and a constant attention scaling of cos/sin.
    LongRope {
        /// Per-frequency divisors used for sequences within the original context.
        short_factor: Vec<f64>,
        /// Per-frequency divisors used for sequences longer than the original context.
        long_factor: Vec<f64>,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
        /// Multiplier applied to cos and sin.
        attention_factor: f64,
    },
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Base of the geometric frequency progression (`rope_theta`).
    pub theta: f64,
    /// Number of leading dimensions of each head that rotate (`head_dim` unless partial rotary).
    pub rotary_dim: usize,
    /// Frequency scaling scheme.
    pub scaling: RopeScaling,
}

/// Activation used inside the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)` (LLaMA, Mistral, Phi-3).
    #[default]
    Silu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn apply<const D: usize>(self, x: burn::tensor::Tensor<D>) -> burn::tensor::Tensor<D> {
        match self {
            Activation::Silu => burn::tensor::activation::silu(x),
        }
    }

    /// The activation of one value, as the host kernels apply it.
    #[inline(always)]
    pub fn apply_scalar(self, x: f32) -> f32 {
        match self {
            Activation::Silu => crate::cpu::silu(x),
        }
    }
}

/// Everything the decoder needs to know about an architecture's shapes and numerics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of each attention head; may differ from `hidden_size / num_heads`.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Rotary embedding parameters.
    pub rope: RopeConfig,
    /// Longest sequence (in positions) the model accepts.
    pub max_position_embeddings: usize,
    /// Keys further than this many positions behind a query are invisible to it (Mistral).
    pub sliding_window: Option<usize>,
    /// Whether the LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether the q/k/v projections carry a bias.
    pub attention_bias: bool,
    /// Whether the MLP projections carry a bias.
    pub mlp_bias: bool,
    /// Gated MLP activation.
    pub activation: Activation,
}

impl DecoderConfig {
    /// Floating-point operations (multiply + add = 2) of one decoder layer over `n` new positions
    /// after `past` cached ones: the four projections, the MLP, and attention over the visible
    /// keys (causal, within the sliding window if any).
    pub fn layer_flops(&self, n: usize, past: usize) -> f64 {
        let (n_f, hidden) = (n as f64, self.hidden_size as f64);
        let q_out = (self.num_heads * self.head_dim) as f64;
        let kv_out = (self.num_kv_heads * self.head_dim) as f64;
        let projections = 2.0 * n_f * hidden * (2.0 * q_out + 2.0 * kv_out);
        let mlp = 2.0 * n_f * hidden * self.intermediate_size as f64 * 3.0;
        let visible: f64 = (past..past + n)
            .map(|q| match self.sliding_window {
                Some(w) => (q + 1).min(w) as f64,
                None => (q + 1) as f64,
            })
            .sum();
        // q·k and p·v per query head.
        let attention = 2.0 * 2.0 * (self.num_heads * self.head_dim) as f64 * visible;
        projections + mlp + attention
    }

    /// Floating-point operations of a full prefill of `n` positions from an empty cache: every
    /// layer, and the LM head on the last position only.
    pub fn prefill_flops(&self, n: usize) -> f64 {
        self.num_layers as f64 * self.layer_flops(n, 0)
            + 2.0 * (self.hidden_size * self.vocab_size) as f64
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Checks the invariants the decoder relies on, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(CoreError::InvalidConfig(format!(
                    "`{name}` must be positive"
                )));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(CoreError::InvalidConfig(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.rope.rotary_dim == 0
            || self.rope.rotary_dim > self.head_dim
            || !self.rope.rotary_dim.is_multiple_of(2)
        {
            return Err(CoreError::InvalidConfig(format!(
                "rotary dimension {} must be even and within head_dim {}",
                self.rope.rotary_dim, self.head_dim
            )));
        }
        if !(self.rope.theta.is_finite() && self.rope.theta > 0.0) {
            return Err(CoreError::InvalidConfig(format!(
                "`rope_theta` must be a positive number, got {}",
                self.rope.theta
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(CoreError::InvalidConfig(format!(
                "`rms_norm_eps` must be a non-negative number, got {}",
                self.rms_norm_eps
            )));
        }
        if self.sliding_window == Some(0) {
            return Err(CoreError::InvalidConfig(
                "`sliding_window` must be positive when set".into(),
            ));
        }
        match &self.rope.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => check_factor("rope_scaling.factor", *factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                check_factor("rope_scaling.factor", *factor)?;
                check_factor("rope_scaling.low_freq_factor", *low_freq_factor)?;
                check_factor("rope_scaling.high_freq_factor", *high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(CoreError::InvalidConfig(format!(
                        "`rope_scaling.high_freq_factor` ({high_freq_factor}) must exceed `low_freq_factor` ({low_freq_factor})"
                    )));
                }
                if *original_max_position_embeddings == 0 {
                    return Err(CoreError::InvalidConfig(
                        "`rope_scaling.original_max_position_embeddings` must be positive".into(),
                    ));
                }
            }
            RopeScaling::Frequencies { divisors } => {
                if divisors.len() != self.rope.rotary_dim / 2 {
                    return Err(CoreError::InvalidConfig(format!(
                        "{} RoPE frequency divisors for rotary_dim / 2 = {} frequencies",
                        divisors.len(),
                        self.rope.rotary_dim / 2
                    )));
                }
                for d in divisors {
                    check_factor("rope frequency divisor", *d)?;
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                let half = self.rope.rotary_dim / 2;
                for (name, factors) in [
                    ("rope_scaling.short_factor", short_factor),
                    ("rope_scaling.long_factor", long_factor),
                ] {
                    if factors.len() != half {
                        return Err(CoreError::InvalidConfig(format!(
                            "`{name}` has {} entries, expected rotary_dim / 2 = {half}",
                            factors.len()
                        )));
                    }
                    for f in factors {
                        check_factor(name, *f)?;
                    }
                }
                check_factor("rope_scaling.attention_factor", *attention_factor)?;
                if *original_max_position_embeddings == 0 {
                    return Err(CoreError::InvalidConfig(
                        "`original_max_position_embeddings` must be positive".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_factor(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(CoreError::InvalidConfig(format!(
            "`{name}` must be a positive number, got {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(window: Option<usize>) -> DecoderConfig {
        DecoderConfig {
            vocab_size: 10,
            hidden_size: 4,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 2,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: 10_000.0,
                rotary_dim: 2,
                scaling: RopeScaling::None,
            },
            max_position_embeddings: 16,
            sliding_window: window,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            activation: Activation::Silu,
        }
    }

    #[test]
    fn flops_count_projections_mlp_and_visible_keys() {
        // 3 positions: projections 2·3·4·(2·4 + 2·2) = 288, MLP 2·3·4·8·3 = 576,
        // attention 2·2·(2·2)·(1 + 2 + 3) = 96; head 2·4·10 = 80.
        assert_eq!(tiny(None).layer_flops(3, 0), 960.0);
        assert_eq!(tiny(None).prefill_flops(3), 1040.0);
        // A window of 2 caps the third query at 2 keys.
        assert_eq!(tiny(Some(2)).layer_flops(3, 0), 944.0);
        // One new position after 3 cached sees 4 keys.
        assert_eq!(
            tiny(None).layer_flops(1, 3),
            2.0 * 4.0 * 12.0 + 2.0 * 4.0 * 24.0 + 16.0 * 4.0
        );
    }
}
