//! Combining the scores of several layers captured in the same selection pass.

use super::{Selection, TokenSelector, ranked_positions, top_k_ascending};
use crate::error::{CoreError, Result};
use crate::probe::Probe;

/// How the per-layer scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteRule {
    /// Each layer ranks the positions (0 = best); the combined score is minus the mean rank.
    /// Insensitive to the scale of each layer's scores.
    RankSum,
    /// Each layer's scores divided by their largest magnitude, then averaged.
    NormalizedSum,
}

impl VoteRule {
    /// Name as used in selector specs (`rank`, `norm`).
    pub fn name(self) -> &'static str {
        match self {
            VoteRule::RankSum => "rank",
            VoteRule::NormalizedSum => "norm",
        }
    }
}

/// Scores every probe of `layers` with `inner` and keeps the positions the layers agree on.
/// All layers come from one pass that stops at the highest of them, so voting costs no extra
/// forward; layers above the filter layer are refused.
#[derive(Debug, Clone)]
pub struct LayerVoteSelector<S> {
    /// Layers that vote (0-based).
    pub layers: Vec<usize>,
    /// How their scores are combined.
    pub rule: VoteRule,
    /// The single-layer scorer applied to each layer.
    pub inner: S,
    name: String,
}

impl<S: TokenSelector> LayerVoteSelector<S> {
    /// `inner` applied to each of `layers`, combined by `rule`.
    pub fn new(mut layers: Vec<usize>, rule: VoteRule, inner: S) -> Self {
        layers.sort_unstable();
        layers.dedup();
        let list = layers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("+");
        let name = format!("vote[{list}]-{}({})", rule.name(), inner.name());
        Self {
            layers,
            rule,
            inner,
            name,
        }
    }

    fn misconfigured(&self, reason: String) -> CoreError {
        CoreError::InvalidSelector {
            selector: self.name.clone(),
            reason,
        }
    }
}

impl<S: TokenSelector> TokenSelector for LayerVoteSelector<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn query_window(&self) -> usize {
        self.inner.query_window()
    }

    fn keeps_every_token_within_budget(&self) -> bool {
        self.inner.keeps_every_token_within_budget()
    }

    fn layers(&self, _filter_layer: usize) -> Vec<usize> {
        self.layers.clone()
    }

    fn select(&self, probe: &Probe, budget: usize) -> Result<Selection> {
        self.select_layers(std::slice::from_ref(probe), budget)
    }

    fn select_layers(&self, probes: &[Probe], budget: usize) -> Result<Selection> {
        if budget == 0 {
            return Err(CoreError::ZeroTopK);
        }
        if probes.is_empty() {
            return Err(self.misconfigured("no layer to vote".into()));
        }
        let n = probes[0].num_positions();
        let mut combined = vec![0.0f32; n];
        for probe in probes {
            let scores = self.inner.select(probe, n)?.scores;
            if scores.len() != n {
                return Err(self.misconfigured(format!(
                    "layer {} gave {} scores for {n} positions",
                    probe.layer,
                    scores.len()
                )));
            }
            match self.rule {
                VoteRule::RankSum => {
                    // Rank 0 = best, in top_k_ascending's order (ties: earlier first; NaN last).
                    for (rank, &position) in ranked_positions(&scores).iter().enumerate() {
                        combined[position] -= rank as f32;
                    }
                }
                VoteRule::NormalizedSum => {
                    let scale = scores.iter().fold(0.0f32, |m, s| m.max(s.abs()));
                    let scale = if scale > 0.0 { scale } else { 1.0 };
                    for (c, s) in combined.iter_mut().zip(&scores) {
                        *c += s / scale;
                    }
                }
            }
        }
        let voters = probes.len() as f32;
        combined.iter_mut().for_each(|c| *c /= voters);
        let positions = top_k_ascending(&combined, budget);
        Ok(Selection {
            positions,
            scores: combined,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::GemFilterSelector;
    use burn::tensor::{Device, Distribution, Tensor};

    fn probe(layer: usize, n: usize) -> Probe {
        let device = Device::flex();
        Probe::new(
            layer,
            Tensor::random([4, 1, 8], Distribution::Normal(0.0, 1.0), &device),
            Tensor::random([2, n, 8], Distribution::Normal(0.0, 1.0), &device),
        )
    }

    #[test]
    fn one_voter_keeps_what_it_would_keep_alone() {
        let p = probe(5, 120);
        let alone = GemFilterSelector::default().select(&p, 17).unwrap();
        for rule in [VoteRule::RankSum, VoteRule::NormalizedSum] {
            let vote = LayerVoteSelector::new(vec![5], rule, GemFilterSelector::default());
            assert_eq!(vote.select(&p, 17).unwrap().positions, alone.positions);
        }
    }

    #[test]
    fn agreement_wins_over_one_layer() {
        // Position 7 is second-best on both layers; 3 and 11 are best on one layer each but
        // last on the other. Rank-sum keeps 7.
        struct Fixed;
        impl TokenSelector for Fixed {
            fn name(&self) -> &str {
                "fixed"
            }
            fn select(&self, probe: &Probe, _budget: usize) -> Result<Selection> {
                let mut scores = vec![0.5f32; 16];
                scores[7] = 0.9;
                if probe.layer == 1 {
                    scores[3] = 1.0;
                    scores[11] = 0.0;
                } else {
                    scores[11] = 1.0;
                    scores[3] = 0.0;
                }
                Ok(Selection {
                    positions: vec![],
                    scores,
                })
            }
        }
        let vote = LayerVoteSelector::new(vec![2, 1], VoteRule::RankSum, Fixed);
        assert_eq!(vote.layers(9), vec![1, 2]);
        let selection = vote
            .select_layers(&[probe(1, 16), probe(2, 16)], 1)
            .unwrap();
        assert_eq!(selection.positions, vec![7]);
    }
}
