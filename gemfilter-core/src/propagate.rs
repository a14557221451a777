//! Selection in stages, and propagation: the kept tokens carry on from the filter layer instead
//! of being rerun from scratch.
//!
//! **Staged selection pass** ([`Decoder::staged_selection`]): layers run over the whole prompt up
//! to the first stage's layer, where the selector ranks the positions from that layer's probe and
//! keeps `keep` of them (always the last `query_window` ones, whose queries later probes need);
//! the hidden states of the kept positions run on through the next layers at their original
//! rotary positions, attending causally among themselves, up to the next stage, and so on to the
//! filter layer, whose selection is final. With no early stage this is GemFilter's selection
//! pass; each stage cuts the cost of the layers after it.
//!
//! **Propagation** ([`Method::Propagate`](crate::Method::Propagate)), the family of FastKV's
//! token-selective propagation (Jo et al., 2025) and PromptDistill (2025), written from the
//! papers: after the final selection at layer r, layers r..L-1 run over the kept positions'
//! hidden states (which attended over the whole prompt below r) at their original rotary
//! positions; the last position's logits give the first token and decoding continues at
//! position n. Choices made here, where the papers leave room or differ:
//! - layer r itself runs over the kept positions only (its full-prompt keys serve the scoring,
//!   as in GemFilter's probe; FastKV computes layer r's attention over the whole prompt first);
//! - the last prompt position is always kept, replacing the lowest-ranked kept one if the
//!   selector dropped it (the first token is predicted there; FastKV keeps its observation
//!   window for the same reason);
//! - the keys and values of layers below r that decoding sees are, per [`EarlyKv`], every
//!   position those layers computed, or only the finally kept ones.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData};

use crate::decoder::Decoder;
use crate::error::{CoreError, Result};
use crate::hook::NoHook;
use crate::kv::{KvCache, KvStore};
use crate::nn::{AttentionKernel, Qkv};
use crate::options::RunOptions;
use crate::probe::{Capture, ProbeHook};
use crate::selector::{Selection, SelectionStage, TokenSelector, best_first};

/// Which keys and values of the layers below the filter layer a propagated prompt decodes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EarlyKv {
    /// Every position each layer computed (the whole prompt below the first stage): decoding
    /// sees the whole prompt in the early layers, the kept tokens above.
    #[default]
    All,
    /// Only the finally kept positions, in every layer: the smallest cache.
    Kept,
}

impl EarlyKv {
    /// `all` or `kept`, for reports.
    pub fn name(self) -> &'static str {
        match self {
            EarlyKv::All => "all",
            EarlyKv::Kept => "kept",
        }
    }
}

/// A pass's store over a set of positions: queries attend causally within the pass (the
/// positions are ascending, so pass order is prompt order), and each layer's keys and values
/// are kept when asked.
struct CollectingStore {
    keep: bool,
    layers: Vec<(Tensor<4>, Tensor<4>)>,
}

impl KvStore for CollectingStore {
    fn position(&self) -> usize {
        0
    }

    fn check_room(&self, _new_positions: usize) -> Result<()> {
        Ok(())
    }

    fn attend(&mut self, _layer: usize, qkv: Qkv, kernel: &AttentionKernel) -> Result<Tensor<4>> {
        if self.keep {
            self.layers.push((qkv.keys.clone(), qkv.values.clone()));
        }
        let device = qkv.queries.device();
        Ok(kernel.time("attention", &device, || kernel.attend(qkv, 0, 0)))
    }

    fn commit(&mut self, _new_positions: usize) {}
}

/// One layer's keys and values from the staged pass, and the prompt positions they stand for.
struct LayerEntries {
    keys: Tensor<4>,
    values: Tensor<4>,
    positions: Arc<Vec<usize>>,
}

/// What a staged selection pass leaves: the final selection, the hidden states entering the
/// filter layer at the kept positions, and (when asked) the keys and values of every layer below.
pub struct StagedPass {
    /// The final selection (prompt positions; positions dropped at an earlier stage score
    /// `-inf`).
    pub selection: Selection,
    /// Hidden states entering the filter layer at the kept positions, `[1, k, hidden]`.
    hidden: Tensor<3>,
    filter_layer: usize,
    early: Vec<LayerEntries>,
    prompt_len: usize,
}

impl std::fmt::Debug for StagedPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedPass")
            .field("kept", &self.selection.positions.len())
            .field("filter_layer", &self.filter_layer)
            .field("prompt_len", &self.prompt_len)
            .finish()
    }
}

/// `tensor` restricted to `indices` along `dim`.
fn select_along<const D: usize>(tensor: Tensor<D>, dim: usize, indices: &[usize]) -> Tensor<D> {
    let device = tensor.device();
    let rows: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [indices.len()]), &device);
    tensor.select(dim, rows)
}

/// `kept` (ascending indices into `0..scores.len()`) with the last `tail` indices added, the
/// lowest-scored others dropped so that at most `keep` remain (never fewer than `tail`).
fn keep_tail(kept: Vec<usize>, scores: &[f32], keep: usize, tail: usize) -> Vec<usize> {
    let m = scores.len();
    let tail_start = m - tail.min(m);
    let mut others: Vec<usize> = kept.into_iter().filter(|&i| i < tail_start).collect();
    let room = keep.saturating_sub(m - tail_start);
    if others.len() > room {
        others.sort_by(best_first(scores));
        others.truncate(room);
        others.sort_unstable();
    }
    others.extend(tail_start..m);
    others
}

/// Indices in `positions` (ascending) of each of `kept` (ascending, a subset).
fn indices_within(positions: &[usize], kept: &[usize]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(kept.len());
    let mut at = 0;
    for &p in kept {
        while at < positions.len() && positions[at] < p {
            at += 1;
        }
        if positions.get(at) != Some(&p) {
            return Err(CoreError::InvalidParameter(format!(
                "kept position {p} was dropped at an earlier stage"
            )));
        }
        out.push(at);
    }
    Ok(out)
}

impl Decoder {
    /// Checks `selector`'s stages followed by the final `(filter_layer, top_k)` one for an
    /// `n`-position prompt.
    fn check_stages(
        &self,
        selector: &dyn TokenSelector,
        stages: &[SelectionStage],
        n: usize,
    ) -> Result<()> {
        let invalid = |reason: String| {
            Err(CoreError::InvalidSelector {
                selector: selector.name().to_string(),
                reason,
            })
        };
        let mut previous: Option<SelectionStage> = None;
        for (index, stage) in stages.iter().enumerate() {
            self.check_probe(stage.layer, selector.query_window())?;
            if stage.keep == 0 {
                return invalid(format!("the stage at layer {} keeps nothing", stage.layer));
            }
            let is_final = index + 1 == stages.len();
            if !is_final && stage.keep < selector.query_window() {
                return invalid(format!(
                    "the stage at layer {} keeps {} positions, fewer than the {} query positions \
                     the later stages score with",
                    stage.layer,
                    stage.keep,
                    selector.query_window()
                ));
            }
            if let Some(previous) = previous {
                if stage.layer <= previous.layer {
                    return invalid(format!(
                        "stage layers must increase up to the filter layer: {} then {}",
                        previous.layer, stage.layer
                    ));
                }
                if stage.keep > previous.keep {
                    return invalid(format!(
                        "a stage cannot keep more than the one before it: {} at layer {}, then {} at layer {}",
                        previous.keep, previous.layer, stage.keep, stage.layer
                    ));
                }
            }
            let low = previous.map_or(0, |p| p.layer);
            if let Some(&outside) = selector
                .layers(stage.layer)
                .iter()
                .find(|&&l| l < low || l > stage.layer)
            {
                return invalid(format!(
                    "at the stage of layer {} it reads layer {outside}, outside {low}..={}",
                    stage.layer, stage.layer
                ));
            }
            previous = Some(*stage);
        }
        if let Some(window) = self.config().sliding_window
            && n > window
            && stages.iter().any(|s| s.keep < n)
        {
            return invalid(format!(
                "a {window}-token sliding window cannot mask a pass over non-contiguous positions \
                 of a {n}-token prompt"
            ));
        }
        Ok(())
    }

    /// The selection pass of `selector` in stages (its [`stages`](TokenSelector::stages), then
    /// `top_k` at `filter_layer`; see the [module docs](self)). With no early stage the
    /// selection is [`select_tokens`](crate::select_tokens)'s.
    pub fn staged_selection(
        &self,
        ids: &[u32],
        filter_layer: usize,
        top_k: usize,
        selector: &dyn TokenSelector,
        options: &RunOptions,
    ) -> Result<Selection> {
        let pass = self.staged_pass(ids, filter_layer, top_k, selector, false, false, options)?;
        Ok(pass.selection)
    }

    /// Runs the staged selection pass; `keep_kv` keeps every layer's keys and values (for
    /// propagation), `keep_last` forces the last prompt position into the final selection.
    #[allow(clippy::too_many_arguments)]
    pub fn staged_pass(
        &self,
        ids: &[u32],
        filter_layer: usize,
        top_k: usize,
        selector: &dyn TokenSelector,
        keep_kv: bool,
        keep_last: bool,
        options: &RunOptions,
    ) -> Result<StagedPass> {
        if top_k == 0 {
            return Err(CoreError::ZeroTopK);
        }
        self.check_ids(ids, 0)?;
        let n = ids.len();
        let mut stages = selector.stages().to_vec();
        stages.push(SelectionStage {
            layer: filter_layer,
            keep: top_k,
        });
        self.check_stages(selector, &stages, n)?;
        let dtype = self.dtype();
        let mut hidden = self.embed(ids, 0)?;
        let mut positions: Vec<usize> = (0..n).collect();
        let mut scores = vec![f32::NEG_INFINITY; n];
        let mut early = Vec::new();
        let mut from = 0;
        for (index, stage) in stages.iter().enumerate() {
            let m = positions.len();
            let is_final = index + 1 == stages.len();
            let rope = if m == n {
                self.rope().tables(0, n, dtype)
            } else {
                self.rope().tables_at(&positions, dtype)
            };
            let restricted = if m < n {
                selector.restricted(&positions)
            } else {
                None
            };
            let stage_selector: &dyn TokenSelector = restricted.as_deref().unwrap_or(selector);
            let mut wanted = stage_selector.layers(stage.layer);
            wanted.sort_unstable();
            wanted.dedup();
            let query_window = stage_selector.query_window().clamp(1, m);
            let mut capture = Capture {
                layers: &wanted,
                probes: Vec::with_capacity(wanted.len()),
            };
            let mut hook = ProbeHook {
                observer: &mut capture,
                stop_layer: stage.layer,
                query_window,
            };
            let mut store = CollectingStore {
                keep: keep_kv,
                layers: Vec::new(),
            };
            let pass = self.run_layers(
                hidden,
                &rope,
                from..stage.layer + 1,
                &mut store,
                &mut hook,
                options,
            )?;
            if pass.next_layer != stage.layer {
                return Err(CoreError::InvalidParameter(format!(
                    "the selection pass did not stop at layer {}",
                    stage.layer
                )));
            }
            let shared = Arc::new(positions.clone());
            early.extend(store.layers.into_iter().map(|(keys, values)| LayerEntries {
                keys,
                values,
                positions: shared.clone(),
            }));
            let mut probes = capture.probes;
            probes.sort_by_key(|p| p.layer);
            let local = stage_selector.select_layers(&probes, stage.keep)?;
            local.validate(stage_selector.name(), m, stage.keep)?;
            let tail = match (is_final, keep_last) {
                (false, _) => query_window,
                (true, true) => 1,
                (true, false) => 0,
            };
            let kept = keep_tail(local.positions, &local.scores, stage.keep, tail);
            if is_final {
                for (j, &p) in positions.iter().enumerate() {
                    scores[p] = local.scores[j];
                }
            }
            hidden = if kept.len() == m {
                pass.hidden
            } else {
                select_along(pass.hidden, 1, &kept)
            };
            positions = kept.iter().map(|&j| positions[j]).collect();
            from = stage.layer;
        }
        Ok(StagedPass {
            selection: Selection { positions, scores },
            hidden,
            filter_layer,
            early,
            prompt_len: n,
        })
    }

    /// Propagation after a staged pass run with `keep_kv`: layers `filter_layer..L` over the
    /// kept positions' hidden states at their rotary positions. Returns the last position's
    /// logits and the cache decoding continues from (at position n), with the early layers'
    /// entries chosen by `early_kv` and room for `room` new tokens.
    pub fn propagate(
        &self,
        pass: StagedPass,
        early_kv: EarlyKv,
        room: usize,
        options: &RunOptions,
    ) -> Result<(Tensor<1>, KvCache)> {
        let StagedPass {
            selection,
            hidden,
            filter_layer,
            early,
            prompt_len,
        } = pass;
        if early.len() != filter_layer {
            return Err(CoreError::InvalidParameter(format!(
                "propagation needs the keys and values of the {filter_layer} layers below the \
                 filter layer, the pass kept {}",
                early.len()
            )));
        }
        let kept = &selection.positions;
        let num_layers = self.config().num_layers;
        let rope = self.rope().tables_at(kept, self.dtype());
        let mut store = CollectingStore {
            keep: true,
            layers: Vec::with_capacity(num_layers - filter_layer),
        };
        let pass = self.run_layers(
            hidden,
            &rope,
            filter_layer..num_layers,
            &mut store,
            &mut NoHook,
            options,
        )?;
        let logits = self.logits(pass.hidden);
        let mut layers = Vec::with_capacity(num_layers);
        for entries in early {
            match early_kv {
                EarlyKv::All => layers.push((entries.keys, entries.values)),
                EarlyKv::Kept => {
                    let at = indices_within(&entries.positions, kept)?;
                    let keys = select_along(entries.keys, 2, &at);
                    let values = select_along(entries.values, 2, &at);
                    layers.push((keys, values));
                }
            }
        }
        layers.extend(store.layers);
        let cache = KvCache::from_layers(
            layers,
            prompt_len,
            room,
            self.config().head_dim,
            self.dtype(),
            self.device(),
        )?;
        Ok((logits, cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_always_kept_within_the_budget() {
        let scores = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0];
        assert_eq!(keep_tail(vec![0, 1, 2], &scores, 3, 0), vec![0, 1, 2]);
        assert_eq!(keep_tail(vec![0, 1, 2], &scores, 3, 1), vec![0, 1, 5]);
        assert_eq!(keep_tail(vec![0, 1, 2], &scores, 3, 2), vec![0, 4, 5]);
        assert_eq!(keep_tail(vec![0, 5], &scores, 3, 1), vec![0, 5]);
        assert_eq!(keep_tail(vec![0], &scores, 1, 2), vec![4, 5]);
    }

    #[test]
    fn kept_positions_are_found_within_a_stage() {
        assert_eq!(indices_within(&[2, 5, 7, 9], &[5, 9]).unwrap(), vec![1, 3]);
        assert!(indices_within(&[2, 5], &[3]).is_err());
    }
}
