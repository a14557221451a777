//! Rotary position embeddings (rotate-half convention, as Hugging Face `transformers` applies them).

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::{RopeConfig, RopeScaling};

/// Cosine and sine tables for a contiguous run of positions, each `[positions, rotary_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor<2>,
    sin: Tensor<2>,
    rotary_dim: usize,
}

/// Precomputed inverse frequencies of one model.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    config: RopeConfig,
    /// Inverse frequencies used within the original context (or always, for non-longrope).
    inv_freq: Vec<f32>,
    /// Inverse frequencies for sequences longer than the original context (longrope only).
    inv_freq_long: Option<Vec<f32>>,
    attention_factor: f32,
}

impl RotaryEmbedding {
    /// Derives the frequencies once, in f32 arithmetic like the reference implementation.
    pub fn new(config: &RopeConfig) -> Self {
        let dim = config.rotary_dim;
        let base = config.theta as f32;
        let plain: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let mut inv_freq_long = None;
        let mut attention_factor = 1.0f32;
        let inv_freq = match &config.scaling {
            RopeScaling::None => plain,
            RopeScaling::Linear { factor } => plain.iter().map(|f| f / *factor as f32).collect(),
            RopeScaling::Frequencies { divisors } => plain
                .iter()
                .zip(divisors)
                .map(|(f, d)| f / *d as f32)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => llama3_inv_freq(
                &plain,
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *original_max_position_embeddings as f32,
            ),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                attention_factor: factor,
                ..
            } => {
                let scaled = |factors: &[f64]| -> Vec<f32> {
                    (0..dim / 2)
                        .map(|i| {
                            let exponent = (2 * i) as f32 / dim as f32;
                            1.0f32 / (factors[i] as f32 * base.powf(exponent))
                        })
                        .collect()
                };
                attention_factor = *factor as f32;
                inv_freq_long = Some(scaled(long_factor));
                scaled(short_factor)
            }
        };
        Self {
            config: config.clone(),
            inv_freq,
            inv_freq_long,
            attention_factor,
        }
    }

    /// The inverse frequencies in use for a forward pass whose largest position is
    /// `max_position` (longrope switches to its long factors past the original context).
    pub fn inv_freq(&self, max_position: usize) -> &[f32] {
        match (&self.config.scaling, &self.inv_freq_long) {
            (
                RopeScaling::LongRope {
                    original_max_position_embeddings,
                    ..
                },
                Some(long),
            ) if max_position + 1 > *original_max_position_embeddings => long,
            _ => &self.inv_freq,
        }
    }

    /// Tables for positions `start..start + len`, in `dtype`, on `device`.
    pub fn tables(&self, start: usize, len: usize, dtype: DType, device: &Device) -> RopeTables {
        let inv_freq = self.inv_freq(start + len - 1);
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for position in start..start + len {
            let p = position as f32;
            for f in inv_freq {
                let angle = p * f;
                cos.push(angle.cos() * self.attention_factor);
                sin.push(angle.sin() * self.attention_factor);
            }
        }
        let to_tensor = |values: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(values, [len, half]), device).cast(dtype)
        };
        RopeTables {
            cos: to_tensor(cos),
            sin: to_tensor(sin),
            rotary_dim: self.config.rotary_dim,
        }
    }
}

fn llama3_inv_freq(
    plain: &[f32],
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: f32,
) -> Vec<f32> {
    let low_freq_wavelen = original_context / low_freq_factor;
    let high_freq_wavelen = original_context / high_freq_factor;
    plain
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_freq_wavelen {
                f / factor
            } else {
                f
            };
            // Medium band: high_freq_wavelen <= wavelen <= low_freq_wavelen.
            let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            if is_medium {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

impl RopeTables {
    /// The tables of `len` positions starting `start` positions into this run.
    pub fn narrow(&self, start: usize, len: usize) -> RopeTables {
        RopeTables {
            cos: self.cos.clone().narrow(0, start, len),
            sin: self.sin.clone().narrow(0, start, len),
            rotary_dim: self.rotary_dim,
        }
    }

    /// Rotates `x` of shape `[batch, heads, positions, head_dim]`; dimensions past the rotary
    /// width pass through unchanged.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, head_dim] = x.dims();
        let half = self.rotary_dim / 2;
        let cos = self.cos.clone().unsqueeze::<4>();
        let sin = self.sin.clone().unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let first = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let second = x2 * cos + x1 * sin;
        if self.rotary_dim == head_dim {
            Tensor::cat(vec![first, second], 3)
        } else {
            let rest = x.narrow(3, self.rotary_dim, head_dim - self.rotary_dim);
            Tensor::cat(vec![first, second, rest], 3)
        }
    }
}
