//! Scoring with the last `w` queries (the question), optionally normalised per head.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Int, Tensor};

use super::{Selection, TokenSelector, avg_pool1d_same, top_k_ascending};
use crate::error::{CoreError, Result};
use crate::probe::Probe;

/// How the per-head scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadNormalization {
    /// Raw `q · k` summed over heads and queries (the paper's rule when `w = 1`).
    Sum,
    /// `softmax(q · k / √d)` over positions, per head and query, then summed: every head and
    /// query has the same say, whatever the scale of its logits.
    Softmax,
    /// Raw `q · k` summed over the window, then the maximum over heads: one head that finds a
    /// position is enough.
    MaxOverHeads,
}

impl HeadNormalization {
    /// Name as used in selector specs (`sum`, `softmax`, `max`).
    pub fn name(self) -> &'static str {
        match self {
            HeadNormalization::Sum => "sum",
            HeadNormalization::Softmax => "softmax",
            HeadNormalization::MaxOverHeads => "max",
        }
    }
}

/// Scores every position with the last `window` queries of the prompt instead of the last one,
/// so the whole question (and the chat template after it) votes. Each query only sees the keys
/// up to its own position. Scores are pooled like GemFilter's (`avg_pool1d`, `kernel_size`) and
/// the top `k` kept in input order.
///
/// With `window: 1`, `Sum` and `kernel_size: 5` this is exactly [`GemFilterSelector`](super::GemFilterSelector).
#[derive(Debug, Clone)]
pub struct QuestionWindowSelector {
    /// Number of trailing queries that score (at least 1).
    pub window: usize,
    /// How heads (and queries) are combined.
    pub normalization: HeadNormalization,
    /// Width of the average pooling window (odd; 1 disables pooling).
    pub kernel_size: usize,
    name: String,
}

impl QuestionWindowSelector {
    /// A selector over the last `window` queries.
    pub fn new(window: usize, normalization: HeadNormalization) -> Self {
        Self {
            window,
            normalization,
            kernel_size: 5,
            name: format!("window{window}-{}", normalization.name()),
        }
    }

    /// The same selector with another pooling width (odd; 1 disables pooling).
    pub fn with_kernel_size(mut self, kernel_size: usize) -> Self {
        self.kernel_size = kernel_size;
        self
    }

    /// Pooled scores of every position (what the ranking uses).
    pub fn scores(&self, probe: &Probe) -> Result<Vec<f32>> {
        if self.window == 0 {
            return Err(CoreError::InvalidSelector {
                selector: self.name.clone(),
                reason: "the query window must hold at least one query".into(),
            });
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(CoreError::InvalidSelector {
                selector: self.name.clone(),
                reason: format!("the pooling kernel must be odd (got {})", self.kernel_size),
            });
        }
        let raw = window_scores(probe, self.window, self.normalization);
        Ok(avg_pool1d_same(&raw, self.kernel_size))
    }
}

impl TokenSelector for QuestionWindowSelector {
    fn name(&self) -> &str {
        &self.name
    }

    fn query_window(&self) -> usize {
        self.window
    }

    fn select(&self, probe: &Probe, budget: usize) -> Result<Selection> {
        if budget == 0 {
            return Err(CoreError::ZeroTopK);
        }
        let scores = self.scores(probe)?;
        let positions = top_k_ascending(&scores, budget);
        Ok(Selection { positions, scores })
    }
}

/// Combined scores of the last `window` queries (fewer if the probe holds fewer), on the probe's
/// device in f32, returned to the host.
fn window_scores(probe: &Probe, window: usize, normalization: HeadNormalization) -> Vec<f32> {
    let [heads, available, head_dim] = probe.queries.dims();
    let [kv_heads, n, _] = probe.keys.dims();
    let groups = heads / kv_heads;
    let window = window.min(available).min(n);
    let device = probe.keys.device();
    // Query head h reads key/value head h / groups (transformers' `repeat_kv` order).
    let queries = probe
        .queries
        .clone()
        .narrow(1, available - window, window)
        .reshape([kv_heads, groups * window, head_dim])
        .cast(DType::F32);
    let keys = probe.keys.clone().cast(DType::F32);
    let scores = queries
        .matmul(keys.swap_dims(1, 2))
        .reshape([kv_heads, groups, window, n]);

    // Query t of the window sits at position n - window + t and sees keys 0..=n - window + t.
    let future = (window > 1).then(|| {
        let rows = Tensor::<1, Int>::arange(0..window as i64, &device)
            .reshape([window, 1])
            .expand([window, n])
            .add_scalar((n - window) as i64);
        let columns = Tensor::<1, Int>::arange(0..n as i64, &device)
            .reshape([1, n])
            .expand([window, n]);
        let mask: Tensor<2, Bool> = columns.greater(rows);
        mask.unsqueeze::<4>().expand([kv_heads, groups, window, n])
    });

    let per_head: Tensor<3> = match normalization {
        HeadNormalization::Sum | HeadNormalization::MaxOverHeads => {
            let scores = match future {
                Some(mask) => scores.mask_fill(mask, 0.0),
                None => scores,
            };
            scores.sum_dim(2).reshape([kv_heads, groups, n])
        }
        HeadNormalization::Softmax => {
            let scores = scores.mul_scalar((head_dim as f64).powf(-0.5));
            let scores = match future {
                Some(mask) => scores.mask_fill(mask, f32::NEG_INFINITY),
                None => scores,
            };
            softmax(scores, 3).sum_dim(2).reshape([kv_heads, groups, n])
        }
    };
    let combined = match normalization {
        HeadNormalization::MaxOverHeads => per_head.reshape([heads, n]).max_dim(0),
        _ => per_head.sum_dim(1).sum_dim(0).reshape([1, n]),
    };
    combined
        .reshape([n])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 scores")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::GemFilterSelector;
    use burn::tensor::{Device, Distribution};

    fn probe(heads: usize, kv_heads: usize, window: usize, n: usize) -> Probe {
        let device = Device::flex();
        Probe::new(
            3,
            Tensor::random([heads, window, 16], Distribution::Normal(0.0, 1.0), &device),
            Tensor::random([kv_heads, n, 16], Distribution::Normal(0.0, 1.0), &device),
        )
    }

    #[test]
    fn one_query_summed_is_the_paper_selector() {
        let probe = probe(6, 2, 4, 300);
        let paper = GemFilterSelector::default().select(&probe, 40).unwrap();
        let ours = QuestionWindowSelector::new(1, HeadNormalization::Sum)
            .select(&probe, 40)
            .unwrap();
        assert_eq!(ours.positions, paper.positions);
        let error = ours
            .scores
            .iter()
            .zip(&paper.scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(error < 1e-5, "{error}");
    }

    #[test]
    fn each_query_sees_only_its_past() {
        // With a window of 3, the last key is seen by the last query only, the one before by
        // two queries: softmax weights summed over the window must reflect that.
        let probe = probe(2, 1, 3, 10);
        let selector = QuestionWindowSelector {
            kernel_size: 1,
            ..QuestionWindowSelector::new(3, HeadNormalization::Softmax)
        };
        let scores = selector.scores(&probe).unwrap();
        // Every (head, query) row of the softmax sums to 1: 2 heads × 3 queries.
        let total: f32 = scores.iter().sum();
        assert!((total - 6.0).abs() < 1e-4, "{total}");
        // The last key gets weight from one query per head: at most 2.
        assert!(scores[9] <= 2.0 + 1e-5);
    }

    #[test]
    fn max_over_heads_is_at_least_the_mean_head() {
        let probe = probe(4, 2, 2, 50);
        let plain = |norm| {
            QuestionWindowSelector {
                kernel_size: 1,
                ..QuestionWindowSelector::new(2, norm)
            }
            .scores(&probe)
            .unwrap()
        };
        let sum = plain(HeadNormalization::Sum);
        let max = plain(HeadNormalization::MaxOverHeads);
        for (s, m) in sum.iter().zip(&max) {
            assert!(*m >= s / 4.0 - 1e-4, "max {m} < mean {}", s / 4.0);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let probe = probe(2, 1, 1, 10);
        let zero = QuestionWindowSelector::new(0, HeadNormalization::Sum);
        assert!(matches!(
            zero.select(&probe, 3),
            Err(CoreError::InvalidSelector { .. })
        ));
        let even = QuestionWindowSelector {
            kernel_size: 4,
            ..QuestionWindowSelector::new(1, HeadNormalization::Sum)
        };
        assert!(matches!(
            even.select(&probe, 3),
            Err(CoreError::InvalidSelector { .. })
        ));
    }
}
