//! Rotary position embeddings (rotate-half convention, as Hugging Face `transformers` applies them).

use std::sync::RwLock;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

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
        match &self.inv_freq_long {
            Some(long) if self.uses_long_factors(max_position) => long,
            _ => &self.inv_freq,
        }
    }

    /// Whether a pass whose largest position is `max_position` uses longrope's long factors.
    pub(crate) fn uses_long_factors(&self, max_position: usize) -> bool {
        match &self.config.scaling {
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => max_position + 1 > *original_max_position_embeddings,
            _ => false,
        }
    }

    /// Cosine and sine of every position `0..len` for `inv_freq` (each `[len, inv_freq.len()]`,
    /// row-major), scaled by the attention factor, in f32 arithmetic like the reference.
    fn host_tables(&self, inv_freq: &[f32], len: usize) -> (Vec<f32>, Vec<f32>) {
        let mut cos = Vec::with_capacity(len * inv_freq.len());
        let mut sin = Vec::with_capacity(len * inv_freq.len());
        for position in 0..len {
            let p = position as f32;
            for f in inv_freq {
                let angle = p * f;
                cos.push(angle.cos() * self.attention_factor);
                sin.push(angle.sin() * self.attention_factor);
            }
        }
        (cos, sin)
    }
}

/// The rotary tables of one model on one device: computed once per frequency set (longrope has
/// two: within and beyond the original context), grown on demand up to the longest pass seen,
/// and sliced per call, so no pass rebuilds or uploads them. Shareable across threads.
#[derive(Debug)]
pub struct RopeCache {
    embedding: RotaryEmbedding,
    device: Device,
    max_positions: usize,
    /// `[plain or short factors, long factors]`, each covering positions `0..rows`.
    tables: RwLock<[Option<RopeTables>; 2]>,
}

/// Fewest positions a table is built for, so short prompts followed by decoding do not regrow it.
const MIN_TABLE_POSITIONS: usize = 1024;

impl RopeCache {
    /// Tables for `config` on `device`, for positions below `max_positions`; nothing is
    /// computed before the first pass.
    pub fn new(config: &RopeConfig, max_positions: usize, device: &Device) -> Self {
        Self {
            embedding: RotaryEmbedding::new(config),
            device: device.clone(),
            max_positions,
            tables: RwLock::new([None, None]),
        }
    }

    /// The frequencies behind the tables.
    pub fn embedding(&self) -> &RotaryEmbedding {
        &self.embedding
    }

    /// Tables in `dtype` for the contiguous positions `start..start + len` (`len > 0`).
    pub fn tables(&self, start: usize, len: usize, dtype: DType) -> RopeTables {
        let end = start + len;
        self.full_table(end - 1, end, dtype).narrow(start, len)
    }

    /// Tables for arbitrary `positions` (non-empty), in the order given: what a pass over a
    /// subset of a prompt's tokens at their original positions rotates with.
    pub fn tables_at(&self, positions: &[usize], dtype: DType) -> RopeTables {
        let max = positions.iter().copied().max().unwrap_or(0);
        let table = self.full_table(max, max + 1, dtype);
        let rows: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let rows =
            Tensor::<1, Int>::from_data(TensorData::new(rows, [positions.len()]), &self.device);
        RopeTables {
            cos: table.cos.select(0, rows.clone()),
            sin: table.sin.select(0, rows),
            rotary_dim: table.rotary_dim,
        }
    }

    /// The table in `dtype` of the frequency set a pass reaching `max_position` uses, holding
    /// at least `rows` positions.
    fn full_table(&self, max_position: usize, rows: usize, dtype: DType) -> RopeTables {
        let slot = usize::from(self.embedding.uses_long_factors(max_position));
        let fits = |table: &RopeTables| table.cos.dims()[0] >= rows && table.cos.dtype() == dtype;
        {
            let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
            if let Some(table) = tables[slot].as_ref().filter(|t| fits(t)) {
                return table.clone();
            }
        }
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = tables[slot].as_ref().filter(|t| fits(t)) {
            return table.clone();
        }
        // Double (or more) so that a growing decode rebuilds the table O(log n) times.
        let held = tables[slot].as_ref().map_or(0, |t| t.cos.dims()[0]);
        let len = rows
            .max(2 * held)
            .max(MIN_TABLE_POSITIONS)
            .min(self.max_positions.max(rows));
        let inv_freq = self.embedding.inv_freq(max_position);
        let half = inv_freq.len();
        let (cos, sin) = self.embedding.host_tables(inv_freq, len);
        let to_tensor = |values: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(values, [len, half]), &self.device).cast(dtype)
        };
        let table = RopeTables {
            cos: to_tensor(cos),
            sin: to_tensor(sin),
            rotary_dim: self.embedding.config.rotary_dim,
        };
        tables[slot] = Some(table.clone());
        table
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn long_rope() -> RopeConfig {
        RopeConfig {
            theta: 10_000.0,
            rotary_dim: 4,
            scaling: RopeScaling::LongRope {
                short_factor: vec![1.0, 2.0],
                long_factor: vec![3.0, 4.0],
                original_max_position_embeddings: 8,
                attention_factor: 1.5,
            },
        }
    }

    /// Slices of the cached tables equal tables computed for exactly those positions, across
    /// growth of the table and for gathered positions.
    #[test]
    fn cached_tables_are_the_positions_own() {
        let device = Device::flex();
        let config = RopeConfig {
            theta: 10_000.0,
            rotary_dim: 8,
            scaling: RopeScaling::None,
        };
        let cache = RopeCache::new(&config, 5000, &device);
        let embedding = RotaryEmbedding::new(&config);
        let (cos, sin) = embedding.host_tables(embedding.inv_freq(0), 3000);
        let half = 4;
        for (start, len) in [(0, 7), (5, 1), (1500, 3), (2990, 10)] {
            let tables = cache.tables(start, len, DType::F32);
            assert_eq!(host(tables.cos), cos[start * half..(start + len) * half]);
            assert_eq!(host(tables.sin), sin[start * half..(start + len) * half]);
        }
        let positions = [3, 2999, 17, 17];
        let gathered = cache.tables_at(&positions, DType::F32);
        let expected: Vec<f32> = positions
            .iter()
            .flat_map(|&p| cos[p * half..(p + 1) * half].to_vec())
            .collect();
        assert_eq!(host(gathered.cos), expected);
    }

    /// Longrope keeps one table per factor set: a pass reaching past the original context uses
    /// the long factors for all its positions, a shorter one the short factors.
    #[test]
    fn longrope_switches_tables_at_the_original_context() {
        let device = Device::flex();
        let config = long_rope();
        let cache = RopeCache::new(&config, 64, &device);
        let embedding = RotaryEmbedding::new(&config);
        let (short, _) = embedding.host_tables(embedding.inv_freq(0), 16);
        let (long, _) = embedding.host_tables(embedding.inv_freq(63), 16);
        assert_ne!(short, long);
        assert_eq!(host(cache.tables(0, 8, DType::F32).cos), short[..16]);
        assert_eq!(host(cache.tables(0, 9, DType::F32).cos), long[..18]);
        assert_eq!(host(cache.tables(2, 3, DType::F32).cos), short[4..10]);
    }
}
