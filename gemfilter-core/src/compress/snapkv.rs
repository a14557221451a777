//! SnapKV (Li et al., 2024): the last `window` queries vote for the earlier keys.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Int, Tensor};

use super::{HeadSharing, KvCompressor, LayerState, rows_to_host};
use crate::error::Result;
use crate::selector::avg_pool1d_same;

/// How SnapKV smooths the window's votes before taking the top positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// PyTorch `avg_pool1d` (padding counted in the divisor), the reference default.
    #[default]
    Average,
    /// PyTorch `max_pool1d` (padding never wins).
    Max,
}

/// SnapKV as in its reference code: per layer and head, the softmax attention of the last
/// `window` queries (causal inside the window, scaled by 1/√d) over the keys before the window,
/// summed over the window, pooled with `kernel` (stride 1, same length), top `budget - window`
/// positions kept plus the window itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapKv {
    /// Cache entries kept per layer and head (`max_capacity_prompt`).
    pub budget: usize,
    /// Observation window (32 in the reference).
    pub window: usize,
    /// Pooling kernel (5 in the reference).
    pub kernel: usize,
    /// Pooling rule.
    pub pooling: Pooling,
    /// Which heads share kept positions.
    pub heads: HeadSharing,
}

impl SnapKv {
    /// The reference settings (window 32, kernel 5, average pooling, per query head) at `budget`.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            window: 32,
            kernel: 5,
            pooling: Pooling::Average,
            heads: HeadSharing::PerQueryHead,
        }
    }
}

/// PyTorch `max_pool1d(x, kernel, stride=1, padding=kernel/2)`.
fn max_pool1d_same(values: &[f32], kernel: usize) -> Vec<f32> {
    let half = kernel / 2;
    (0..values.len())
        .map(|center| {
            let lo = center.saturating_sub(half);
            let hi = (center + half + 1).min(values.len());
            values[lo..hi]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect()
}

impl KvCompressor for SnapKv {
    fn name(&self) -> String {
        "snapkv".into()
    }

    fn budget(&self) -> usize {
        self.budget
    }

    fn recent(&self) -> usize {
        self.window
    }

    fn head_sharing(&self) -> HeadSharing {
        self.heads
    }

    fn validate(&self) -> Result<()> {
        if self.window == 0 || self.kernel == 0 || self.kernel.is_multiple_of(2) {
            return Err(crate::error::CoreError::InvalidParameter(format!(
                "snapkv: the window must be at least 1 and the pooling kernel odd (got window {}, kernel {})",
                self.window, self.kernel
            )));
        }
        if self.budget <= self.window {
            return Err(crate::error::CoreError::InvalidParameter(format!(
                "snapkv: the budget ({}) must exceed the observation window ({})",
                self.budget, self.window
            )));
        }
        Ok(())
    }

    fn scores(&self, state: &LayerState<'_>) -> Result<Vec<Vec<f32>>> {
        let [batch, heads, n, head_dim] = state.queries.dims();
        let kv_heads = state.keys.dims()[1];
        let groups = heads / kv_heads;
        let window = self.window.min(n);
        let device = state.queries.device();
        let queries = state
            .queries
            .clone()
            .narrow(2, n - window, window)
            .reshape([batch, kv_heads, groups * window, head_dim]);
        let scores = queries
            .matmul(state.keys.clone().swap_dims(2, 3))
            .cast(DType::F32)
            .mul_scalar((head_dim as f64).powf(-0.5))
            .reshape([batch, kv_heads, groups, window, n]);
        // Query i of the window sits at n - window + i and sees keys up to there.
        let rows = Tensor::<1, Int>::arange((n - window) as i64..n as i64, &device)
            .reshape([window, 1])
            .expand([window, n]);
        let columns = Tensor::<1, Int>::arange(0..n as i64, &device)
            .reshape([1, n])
            .expand([window, n]);
        let future = columns
            .greater(rows)
            .unsqueeze::<5>()
            .expand([batch, kv_heads, groups, window, n]);
        let probabilities = softmax(scores.mask_fill(future, f32::NEG_INFINITY), 4);
        let votes = probabilities
            .sum_dim(3)
            .reshape([batch, heads, n])
            .narrow(2, 0, n - window);
        let pool = |row: Vec<f32>| match self.pooling {
            Pooling::Average => avg_pool1d_same(&row, self.kernel),
            Pooling::Max => max_pool1d_same(&row, self.kernel),
        };
        let rows = rows_to_host(votes);
        Ok(match self.heads {
            HeadSharing::PerQueryHead => rows.into_iter().map(pool).collect(),
            // Sum the group's votes, then pool (pooling is linear for averages).
            HeadSharing::PerKvHead => super::sum_groups(rows, groups)
                .into_iter()
                .map(pool)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pooling_pads_with_minus_infinity() {
        assert_eq!(
            max_pool1d_same(&[-1.0, -5.0, -2.0, -7.0, -3.0, -9.0], 3),
            vec![-1.0, -1.0, -2.0, -2.0, -3.0, -3.0]
        );
    }
}
