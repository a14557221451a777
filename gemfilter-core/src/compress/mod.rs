//! KV-cache compression after a full prefill: the SnapKV and H2O baselines GemFilter is
//! compared against.
//!
//! Both run the whole prompt through every layer with standard attention, then keep, per layer
//! and head, `budget` cache entries: the most important earlier positions by a method-specific
//! score plus a window of the most recent positions. Decoding then proceeds on the compressed
//! cache, at the rotary positions the full prompt would have had. A [`KvCompressor`] supplies
//! the scores; [`CompressingStore`] keeps what they rank best, layer by layer, and
//! [`Decoder::prefill_compressed`](crate::Decoder::prefill_compressed) runs a prompt through it.

mod h2o;
mod snapkv;
mod store;

pub use h2o::H2o;
pub use snapkv::{Pooling, SnapKv};
pub use store::{CompressingStore, SharedPrefillStore};

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{CoreError, Result};
use crate::selector::top_k_ascending;

/// Which heads share a set of kept positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadSharing {
    /// Every query head keeps its own positions; keys and values are repeated to the query heads
    /// first, as SnapKV's and H2O's reference code do (`repeat_kv` before compressing). With
    /// grouped-query attention the cache then holds `heads / kv_heads` times more entries.
    #[default]
    PerQueryHead,
    /// Query heads sharing a key/value head sum their scores and keep one set of positions, so
    /// the cache stays at the model's KV heads (what a GQA-aware deployment would do).
    PerKvHead,
}

impl HeadSharing {
    /// Short name used in method labels (`heads=query` / `heads=kv`).
    pub fn label(self) -> &'static str {
        match self {
            HeadSharing::PerQueryHead => "query",
            HeadSharing::PerKvHead => "kv",
        }
    }
}

/// What a compressor sees of one layer after its attention ran over the whole prompt.
pub struct LayerState<'a> {
    /// Layer index.
    pub layer: usize,
    /// Post-RoPE queries of every prompt position, `[1, heads, n, head_dim]`.
    pub queries: &'a Tensor<4>,
    /// Post-RoPE keys of every prompt position, `[1, kv_heads, n, head_dim]`.
    pub keys: &'a Tensor<4>,
    /// For each query head and key, the softmax attention summed over every query,
    /// `[1, heads, n]` (f32), when [`KvCompressor::needs_column_sums`] asked for it.
    pub column_sums: Option<&'a Tensor<3>>,
}

/// A KV-cache compression rule: scores the earlier positions of each layer; the caller keeps the
/// best `budget - recent` of them per head plus the `recent` last positions.
pub trait KvCompressor: Send + Sync {
    /// Label used in reports, e.g. `snapkv` or `h2o`.
    fn name(&self) -> String;

    /// Cache entries kept per layer and head (the method's capacity, the paper's budget).
    fn budget(&self) -> usize;

    /// The most recent positions always kept (SnapKV's observation window, H2O's recent window).
    fn recent(&self) -> usize;

    /// Which heads share kept positions.
    fn head_sharing(&self) -> HeadSharing;

    /// Whether [`LayerState::column_sums`] is needed (it forces the blocked attention path).
    fn needs_column_sums(&self) -> bool {
        false
    }

    /// Importance of every position before the recent window (`n - recent` values per row;
    /// larger keeps), one row per query head, or per KV head under [`HeadSharing::PerKvHead`].
    fn scores(&self, state: &LayerState<'_>) -> Result<Vec<Vec<f32>>>;

    /// Checks the parameters (budget larger than the recent window, and so on).
    fn validate(&self) -> Result<()> {
        if self.budget() <= self.recent() {
            return Err(CoreError::InvalidParameter(format!(
                "{}: the budget ({}) must exceed the recent window ({})",
                self.name(),
                self.budget(),
                self.recent()
            )));
        }
        Ok(())
    }
}

/// The positions kept by a compressed prefill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionOutcome {
    /// Tokens of the prompt.
    pub prompt_positions: usize,
    /// Cache entries per layer and head after compression (`min(n, budget)`).
    pub entries: usize,
    /// Heads that kept their own positions (query heads or KV heads).
    pub heads: usize,
    /// `kept[layer][head]`: ascending prompt positions kept. Empty when the prompt fit the
    /// budget and nothing was dropped.
    pub kept: Vec<Vec<Vec<usize>>>,
}

impl CompressionOutcome {
    /// Whether any entry was dropped.
    pub fn compressed(&self) -> bool {
        self.entries < self.prompt_positions
    }

    /// Fraction of (layer, head) pairs that kept `position`; 1.0 when nothing was dropped.
    pub fn retention(&self, position: usize) -> f64 {
        if !self.compressed() {
            return 1.0;
        }
        let total: usize = self.kept.iter().map(Vec::len).sum();
        let hits = self
            .kept
            .iter()
            .flatten()
            .filter(|positions| positions.binary_search(&position).is_ok())
            .count();
        hits as f64 / total.max(1) as f64
    }
}

/// Sums rows of `scores` in groups of `groups` consecutive query heads (the heads sharing a KV
/// head, in `repeat_kv` order).
pub(crate) fn sum_groups(scores: Vec<Vec<f32>>, groups: usize) -> Vec<Vec<f32>> {
    scores
        .chunks(groups)
        .map(|group| {
            let mut total = group[0].clone();
            for row in &group[1..] {
                for (t, v) in total.iter_mut().zip(row) {
                    *t += v;
                }
            }
            total
        })
        .collect()
}

/// The positions kept per score row: the `budget - recent` best earlier positions (ascending)
/// followed by the `recent` last ones.
pub(crate) fn kept_positions(
    scores: &[Vec<f32>],
    num_positions: usize,
    budget: usize,
    recent: usize,
) -> Vec<Vec<usize>> {
    let tail = num_positions - recent;
    scores
        .iter()
        .map(|row| {
            let mut kept = top_k_ascending(&row[..tail], budget - recent);
            kept.extend(tail..num_positions);
            kept
        })
        .collect()
}

/// Gathers `kept[head]` positions from `tensor` (`[1, tensor_heads, n, d]`) into
/// `[1, kept.len(), entries, d]`. When `kept` has a row per query head and `tensor` one per KV
/// head, query head `h` reads KV head `h / groups` (`repeat_kv` order) without the tensor being
/// repeated first: one row selection over `[tensor_heads · n, d]`.
pub(crate) fn gather_kept(tensor: Tensor<4>, kept: &[Vec<usize>]) -> Tensor<4> {
    let [batch, tensor_heads, n, dim] = tensor.dims();
    let heads = kept.len();
    let entries = kept[0].len();
    let groups = heads / tensor_heads;
    let rows: Vec<i64> = kept
        .iter()
        .enumerate()
        .flat_map(|(head, positions)| {
            let base = (head / groups * n) as i64;
            positions.iter().map(move |&p| base + p as i64)
        })
        .collect();
    let indices =
        Tensor::<1, Int>::from_data(TensorData::new(rows, [heads * entries]), &tensor.device());
    tensor
        .reshape([batch * tensor_heads * n, dim])
        .select(0, indices)
        .reshape([batch, heads, entries, dim])
}

/// A tensor of f32 scores `[1, rows, n]` as host rows.
pub(crate) fn rows_to_host(scores: Tensor<3>) -> Vec<Vec<f32>> {
    let [_, rows, n] = scores.dims();
    let flat: Vec<f32> = scores
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 scores");
    flat.chunks(n.max(1))
        .take(rows)
        .map(<[f32]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_positions_take_the_best_then_the_recent_window() {
        let scores = vec![
            vec![0.1, 0.9, 0.3, 0.8, 0.0, 0.0],
            vec![1.0, 0.0, 0.5, 0.2, 0.0, 0.0],
        ];
        let kept = kept_positions(&scores, 8, 4, 2);
        assert_eq!(kept, vec![vec![1, 3, 6, 7], vec![0, 2, 6, 7]]);
    }

    #[test]
    fn groups_sum_consecutive_query_heads() {
        let rows = vec![
            vec![1.0, 2.0],
            vec![3.0, 4.0],
            vec![5.0, 6.0],
            vec![7.0, 8.0],
        ];
        assert_eq!(sum_groups(rows, 2), vec![vec![4.0, 6.0], vec![12.0, 14.0]]);
    }

    #[test]
    fn retention_counts_layer_heads_keeping_a_position() {
        let outcome = CompressionOutcome {
            prompt_positions: 10,
            entries: 2,
            heads: 2,
            kept: vec![vec![vec![1, 9], vec![3, 9]], vec![vec![1, 9], vec![1, 9]]],
        };
        assert_eq!(outcome.retention(1), 0.75);
        assert_eq!(outcome.retention(9), 1.0);
        assert_eq!(outcome.retention(4), 0.0);
    }
}
