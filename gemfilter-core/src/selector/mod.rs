//! Choosing which input positions to keep from the probes of the selection pass.
//!
//! [`GemFilterSelector`] is the paper's rule, exact. The others are opt-in and compose:
//! [`QuestionWindowSelector`] scores with the last `w` queries (the question) and can normalise
//! per head, [`LayerVoteSelector`] combines several layers captured in the same pass, and
//! [`SpanSelector`] turns kept positions into whole spans (sentences, lines, a radius).

mod layer_vote;
mod question_window;
mod span;
mod staged;

pub use layer_vote::{LayerVoteSelector, VoteRule};
pub use question_window::{HeadNormalization, QuestionWindowSelector};
pub use span::{SpanRanking, SpanRule, SpanSelector};
pub use staged::{SelectionStage, StagedSelector};

use burn::tensor::{DType, Tensor};

use crate::error::{CoreError, Result};
use crate::probe::Probe;

/// The positions a selector keeps, and how it scored every position.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Kept input positions, strictly ascending.
    pub positions: Vec<usize>,
    /// One score per input position (higher = more relevant); what the ranking used. A staged
    /// selection scores `-inf` the positions an earlier stage dropped.
    pub scores: Vec<f32>,
}

impl Selection {
    /// Every one of `num_positions` positions, with zero scores: what any selector that
    /// [keeps every token within its budget](TokenSelector::keeps_every_token_within_budget)
    /// returns for a prompt no longer than the budget, without a selection pass.
    pub fn whole_prompt(num_positions: usize) -> Self {
        Self {
            positions: (0..num_positions).collect(),
            scores: vec![0.0; num_positions],
        }
    }

    /// Checks the contract every selector must honour: `min(budget, n)` positions at most,
    /// strictly ascending, in range, and one score per position.
    pub fn validate(&self, selector: &str, num_positions: usize, budget: usize) -> Result<()> {
        let fail = |reason: String| {
            Err(CoreError::InvalidSelection {
                selector: selector.to_string(),
                reason,
            })
        };
        if self.positions.is_empty() {
            return fail("no position kept".into());
        }
        if self.positions.len() > budget.min(num_positions) {
            return fail(format!(
                "{} positions kept, budget is {}",
                self.positions.len(),
                budget.min(num_positions)
            ));
        }
        if self.positions.windows(2).any(|w| w[0] >= w[1]) {
            return fail("positions are not strictly ascending".into());
        }
        if let Some(&last) = self.positions.last()
            && last >= num_positions
        {
            return fail(format!("position {last} is outside 0..{num_positions}"));
        }
        if self.scores.len() != num_positions {
            return fail(format!(
                "{} scores for {num_positions} positions",
                self.scores.len()
            ));
        }
        Ok(())
    }
}

/// Picks the input positions worth keeping from a layer's probe.
///
/// Implementations must return at most `min(budget, n)` strictly ascending positions and one
/// score per input position; [`generate`](crate::generate) checks this.
///
/// A selector that reads several layers overrides [`layers`](Self::layers) and
/// [`select_layers`](Self::select_layers); all of them come from the one selection pass, which
/// stops at the highest layer asked for (never above the filter layer).
pub trait TokenSelector: Send + Sync {
    /// Short name for reports.
    fn name(&self) -> &str;

    /// How many trailing query positions the probe must carry (1 for GemFilter).
    fn query_window(&self) -> usize {
        1
    }

    /// The layers whose probes this selector reads, given the filter layer `r` (default: `[r]`).
    fn layers(&self, filter_layer: usize) -> Vec<usize> {
        vec![filter_layer]
    }

    /// Scores one probe and keeps up to `budget` positions.
    fn select(&self, probe: &Probe, budget: usize) -> Result<Selection>;

    /// Whether a prompt of at most `budget` tokens is always kept whole. When true (the
    /// default, and true of every built-in selector) the pipeline skips the selection pass for
    /// such prompts: its result is known in advance. A selector that may drop tokens even when
    /// they fit must return false.
    fn keeps_every_token_within_budget(&self) -> bool {
        true
    }

    /// Pruning stages before the final selection (multi-stage selection, see
    /// [`StagedSelector`]): at each stage's layer this selector keeps `keep` of the positions
    /// still in the pass, and only those run on. Empty (the default): one selection at the
    /// filter layer.
    fn stages(&self) -> &[SelectionStage] {
        &[]
    }

    /// This selector for a pass that holds only the prompt positions `kept` (ascending; the
    /// probe's position `i` is prompt position `kept[i]`), when it depends on where positions
    /// sit in the prompt (sentence spans); `None` (the default) when it scores whatever probe
    /// it is given the same way.
    fn restricted(&self, kept: &[usize]) -> Option<Box<dyn TokenSelector + '_>> {
        let _ = kept;
        None
    }

    /// Scores the probes of [`layers`](Self::layers) (ascending layer order) and keeps up to
    /// `budget` positions. The default reads the last (highest) layer only.
    fn select_layers(&self, probes: &[Probe], budget: usize) -> Result<Selection> {
        match probes.last() {
            Some(probe) => self.select(probe, budget),
            None => Err(CoreError::InvalidSelection {
                selector: self.name().to_string(),
                reason: "no probe to select from".into(),
            }),
        }
    }
}

/// Forwards every method of [`TokenSelector`] through a pointer type.
macro_rules! forward_selector {
    ($($pointer:ty),*) => {$(
        impl<S: TokenSelector + ?Sized> TokenSelector for $pointer {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn query_window(&self) -> usize {
                (**self).query_window()
            }
            fn layers(&self, filter_layer: usize) -> Vec<usize> {
                (**self).layers(filter_layer)
            }
            fn keeps_every_token_within_budget(&self) -> bool {
                (**self).keeps_every_token_within_budget()
            }
            fn stages(&self) -> &[SelectionStage] {
                (**self).stages()
            }
            fn restricted(&self, kept: &[usize]) -> Option<Box<dyn TokenSelector + '_>> {
                (**self).restricted(kept)
            }
            fn select(&self, probe: &Probe, budget: usize) -> Result<Selection> {
                (**self).select(probe, budget)
            }
            fn select_layers(&self, probes: &[Probe], budget: usize) -> Result<Selection> {
                (**self).select_layers(probes, budget)
            }
        }
    )*};
}

forward_selector!(Box<S>, &S);

/// The selector of the GemFilter paper, reproducing its reference code exactly:
/// `q_last · Kᵀ` per head (keys repeated for grouped-query attention), no softmax and no
/// `1/√d`, summed over heads, smoothed by `avg_pool1d(kernel 5, padding 2, stride 1)` with the
/// zero padding counted in the divisor, then the `min(k, n)` best positions in input order.
#[derive(Debug, Clone, Copy)]
pub struct GemFilterSelector {
    /// Width of the average pooling window (5 in the paper; odd).
    pub kernel_size: usize,
}

impl Default for GemFilterSelector {
    fn default() -> Self {
        Self { kernel_size: 5 }
    }
}

impl TokenSelector for GemFilterSelector {
    fn name(&self) -> &str {
        "gemfilter"
    }

    fn select(&self, probe: &Probe, budget: usize) -> Result<Selection> {
        if budget == 0 {
            return Err(CoreError::ZeroTopK);
        }
        let raw = last_query_scores(probe);
        let scores = avg_pool1d_same(&raw, self.kernel_size);
        let positions = top_k_ascending(&scores, budget);
        Ok(Selection { positions, scores })
    }
}

/// `Σ_heads q_last · k_j` for every position `j`, computed on the probe's device in f32 and
/// returned to the host (`n` values).
pub fn last_query_scores(probe: &Probe) -> Vec<f32> {
    let [heads, window, head_dim] = probe.queries.dims();
    let [kv_heads, n, _] = probe.keys.dims();
    let groups = heads / kv_heads;
    // Query head h reads key/value head h / groups (transformers' `repeat_kv` order).
    let last = probe
        .queries
        .clone()
        .narrow(1, window - 1, 1)
        .reshape([kv_heads, groups, head_dim])
        .cast(DType::F32);
    let keys = probe.keys.clone().cast(DType::F32);
    let per_head: Tensor<3> = last.matmul(keys.swap_dims(1, 2)); // [kv_heads, groups, n]
    let summed = per_head.sum_dim(1).sum_dim(0).reshape([n]);
    summed
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 scores")
}

/// PyTorch's `avg_pool1d(x, kernel, stride=1, padding=kernel/2)` with `count_include_pad=True`:
/// every output is the window sum divided by `kernel`, zeros standing in past the ends.
pub fn avg_pool1d_same(values: &[f32], kernel: usize) -> Vec<f32> {
    let half = kernel / 2;
    let n = values.len() as isize;
    (0..n)
        .map(|center| {
            let mut sum = 0.0f32;
            for offset in -(half as isize)..=(half as isize) {
                let index = center + offset;
                if (0..n).contains(&index) {
                    sum += values[index as usize];
                }
            }
            sum / kernel as f32
        })
        .collect()
}

/// Orders positions best first: larger value first, ties to the earlier position, NaN last.
pub(crate) fn best_first(values: &[f32]) -> impl Fn(&usize, &usize) -> std::cmp::Ordering + '_ {
    move |&a, &b| {
        let (x, y) = (values[a], values[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.partial_cmp(&x).expect("not NaN").then(a.cmp(&b)),
        }
    }
}

/// Every position, best first (see [`top_k_ascending`] for the order).
pub fn ranked_positions(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(best_first(values));
    order
}

/// Indices of the `min(k, n)` largest values, returned in ascending index order. Ties rank the
/// earlier position first; NaN ranks last.
pub fn top_k_ascending(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    let mut order: Vec<usize> = (0..values.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k, best_first(values));
        order.truncate(k);
    }
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_counts_padding_in_the_divisor() {
        let pooled = avg_pool1d_same(&[5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0], 5);
        assert_eq!(pooled, vec![1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn top_k_keeps_the_largest_in_input_order() {
        let values = [0.1, 3.0, -1.0, 2.0, 2.5, f32::NAN];
        assert_eq!(top_k_ascending(&values, 3), vec![1, 3, 4]);
        assert_eq!(top_k_ascending(&values, 10), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(top_k_ascending(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }
}
