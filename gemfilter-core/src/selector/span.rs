//! Turning kept positions into whole spans so the kept text reads as passages.

use super::{Selection, TokenSelector, ranked_positions};
use crate::error::{CoreError, Result};
use crate::probe::Probe;

/// What a span around a high-scoring position is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanRule {
    /// `radius` positions either side.
    Radius(usize),
    /// The segment containing the position. `starts` are the first positions of the segments
    /// (sentences, lines: see `gemfilter_models::segments`), ascending, starting at 0. A segment
    /// longer than `max_len` is cut to the `max_len` positions nearest the scoring one.
    Segments {
        /// First position of every segment, ascending.
        starts: Vec<usize>,
        /// Longest span taken from one segment.
        max_len: usize,
    },
}

/// How spans are ranked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanRanking {
    /// By their best-scoring position: spans grow around the best positions, best first.
    BestPosition,
    /// By the mean score of their positions (segments only; a radius rule ranks by best
    /// position): a passage that is relevant throughout beats one with a single hot token.
    SegmentMean,
}

/// Ranks positions with `inner`, then fills the budget with spans around the best ones, best
/// first: the whole sentence (or line, or radius) a high-scoring token sits in is kept, not the
/// token alone. The last span is cut to the positions nearest its scoring token when the budget
/// runs out, so exactly `min(k, n)` positions are kept.
#[derive(Debug, Clone)]
pub struct SpanSelector<S> {
    /// The selector whose scores rank the positions.
    pub inner: S,
    /// What a span is.
    pub rule: SpanRule,
    /// How spans are ranked.
    pub ranking: SpanRanking,
    name: String,
}

impl<S: TokenSelector> SpanSelector<S> {
    /// Spans of `rule` around the positions `inner` ranks best.
    pub fn new(inner: S, rule: SpanRule) -> Self {
        let what = match &rule {
            SpanRule::Radius(r) => format!("radius{r}"),
            SpanRule::Segments { starts, max_len } => {
                format!("segments{}max{max_len}", starts.len())
            }
        };
        let name = format!("spans[{what}]({})", inner.name());
        Self {
            inner,
            rule,
            ranking: SpanRanking::BestPosition,
            name,
        }
    }

    /// The same selector ranking spans by `ranking`.
    pub fn with_ranking(mut self, ranking: SpanRanking) -> Self {
        if ranking == SpanRanking::SegmentMean {
            self.name = self.name.replacen("spans[", "spans[mean,", 1);
        }
        self.ranking = ranking;
        self
    }

    /// Positions `[start, end)` of the span around `position` in a prompt of `n` positions.
    fn span_around(&self, position: usize, n: usize) -> (usize, usize) {
        match &self.rule {
            SpanRule::Radius(radius) => (
                position.saturating_sub(*radius),
                (position + radius + 1).min(n),
            ),
            SpanRule::Segments { starts, max_len } => {
                let index = starts.partition_point(|&s| s <= position);
                let start = if index == 0 { 0 } else { starts[index - 1] };
                let end = starts.get(index).copied().unwrap_or(n).min(n);
                if end - start <= *max_len {
                    (start, end)
                } else {
                    // Centre a max_len window on the position, inside the segment.
                    let half = max_len / 2;
                    let lo = position.saturating_sub(half).max(start);
                    let lo = lo.min(end - max_len);
                    (lo, lo + max_len)
                }
            }
        }
    }

    fn check(&self, n: usize) -> Result<()> {
        let fail = |reason: String| {
            Err(CoreError::InvalidSelector {
                selector: self.name.clone(),
                reason,
            })
        };
        if let SpanRule::Segments { starts, max_len } = &self.rule {
            if *max_len == 0 {
                return fail("max_len must be at least 1".into());
            }
            if starts.windows(2).any(|w| w[0] >= w[1]) {
                return fail("segment starts are not strictly ascending".into());
            }
            if let Some(&last) = starts.last()
                && last >= n
            {
                return fail(format!(
                    "segment start {last} is outside the prompt of {n} positions (segments of another prompt?)"
                ));
            }
        }
        Ok(())
    }

    /// Fills `budget` with spans around positions taken in descending `scores` order, or with
    /// whole segments in descending mean score.
    fn fill(&self, scores: &[f32], budget: usize) -> Vec<usize> {
        if let (SpanRanking::SegmentMean, SpanRule::Segments { starts, .. }) =
            (self.ranking, &self.rule)
        {
            return self.fill_by_segment_mean(scores, budget, starts);
        }
        let n = scores.len();
        let budget = budget.min(n);
        self.grow(ranked_positions(scores), n, budget)
    }

    /// Adds the span around each anchor in turn (anchors already kept are skipped) until
    /// `budget` positions are kept; the last span is cut to the positions nearest its anchor.
    fn grow(
        &self,
        anchors: impl IntoIterator<Item = usize>,
        n: usize,
        budget: usize,
    ) -> Vec<usize> {
        let mut kept = vec![false; n];
        let mut remaining = budget;
        for anchor in anchors {
            if remaining == 0 {
                break;
            }
            if kept[anchor] {
                continue;
            }
            let (start, end) = self.span_around(anchor, n);
            let mut new: Vec<usize> = (start..end).filter(|&p| !kept[p]).collect();
            if new.len() > remaining {
                new.sort_by_key(|&p| (p.abs_diff(anchor), p));
                new.truncate(remaining);
            }
            remaining -= new.len();
            for p in new {
                kept[p] = true;
            }
        }
        (0..n).filter(|&p| kept[p]).collect()
    }
}

impl<S: TokenSelector> SpanSelector<S> {
    fn fill_by_segment_mean(&self, scores: &[f32], budget: usize, starts: &[usize]) -> Vec<usize> {
        let n = scores.len();
        let budget = budget.min(n);
        let finite = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
        // (mean, best position) of each segment.
        let mut segments: Vec<(f32, usize)> = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).copied().unwrap_or(n).min(n);
                let slice = &scores[start..end];
                let mean = slice.iter().map(|&s| finite(s)).sum::<f32>() / slice.len() as f32;
                let best = (start..end)
                    .max_by(|&a, &b| {
                        finite(scores[a])
                            .total_cmp(&finite(scores[b]))
                            .then(b.cmp(&a))
                    })
                    .expect("segments are not empty");
                (mean, best)
            })
            .collect();
        segments.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        self.grow(segments.into_iter().map(|(_, best)| best), n, budget)
    }
}

impl<S: TokenSelector> TokenSelector for SpanSelector<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn query_window(&self) -> usize {
        self.inner.query_window()
    }

    fn keeps_every_token_within_budget(&self) -> bool {
        self.inner.keeps_every_token_within_budget()
    }

    fn layers(&self, filter_layer: usize) -> Vec<usize> {
        self.inner.layers(filter_layer)
    }

    fn select(&self, probe: &Probe, budget: usize) -> Result<Selection> {
        self.select_layers(std::slice::from_ref(probe), budget)
    }

    /// Segments follow the kept positions: a kept position starts a segment where its prompt
    /// segment differs from the previous kept position's. A radius stays a radius of probe
    /// positions.
    fn restricted(&self, kept: &[usize]) -> Option<Box<dyn TokenSelector + '_>> {
        let SpanRule::Segments { starts, max_len } = &self.rule else {
            return None;
        };
        let segment_of = |position: usize| starts.partition_point(|&s| s <= position);
        let local_starts: Vec<usize> = (0..kept.len())
            .filter(|&i| i == 0 || segment_of(kept[i]) != segment_of(kept[i - 1]))
            .collect();
        let rule = SpanRule::Segments {
            starts: local_starts,
            max_len: *max_len,
        };
        let inner: &dyn TokenSelector = &self.inner;
        Some(Box::new(SpanSelector {
            inner,
            rule,
            ranking: self.ranking,
            name: self.name.clone(),
        }))
    }

    fn select_layers(&self, probes: &[Probe], budget: usize) -> Result<Selection> {
        if budget == 0 {
            return Err(CoreError::ZeroTopK);
        }
        let ranked = self.inner.select_layers(probes, budget)?;
        self.check(ranked.scores.len())?;
        let positions = self.fill(&ranked.scores, budget);
        Ok(Selection {
            positions,
            scores: ranked.scores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f32>);
    impl TokenSelector for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn select(&self, _probe: &Probe, _budget: usize) -> Result<Selection> {
            self.select_layers(&[], 0)
        }
        fn select_layers(&self, _probes: &[Probe], _budget: usize) -> Result<Selection> {
            Ok(Selection {
                positions: vec![],
                scores: self.0.clone(),
            })
        }
    }

    fn scores_with_peaks(n: usize, peaks: &[(usize, f32)]) -> Vec<f32> {
        let mut scores: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        for &(p, s) in peaks {
            scores[p] = s;
        }
        scores
    }

    #[test]
    fn whole_segments_around_the_best_tokens() {
        // Segments [0,10) [10,14) [14,30) [30,40); peaks in the second and fourth.
        let scores = scores_with_peaks(40, &[(12, 9.0), (35, 8.0)]);
        let selector = SpanSelector::new(
            Fixed(scores.clone()),
            SpanRule::Segments {
                starts: vec![0, 10, 14, 30],
                max_len: 64,
            },
        );
        let kept = selector.fill(&scores, 14);
        assert_eq!(kept, (10..14).chain(30..40).collect::<Vec<_>>());
    }

    #[test]
    fn the_budget_is_met_exactly_and_the_last_span_is_cut_near_its_token() {
        let scores = scores_with_peaks(50, &[(20, 9.0)]);
        let selector = SpanSelector::new(Fixed(scores.clone()), SpanRule::Radius(10));
        let kept = selector.fill(&scores, 5);
        assert_eq!(kept, vec![18, 19, 20, 21, 22]);
        assert_eq!(selector.fill(&scores, 500).len(), 50);
    }

    #[test]
    fn long_segments_are_capped_around_the_token() {
        let scores = scores_with_peaks(100, &[(90, 9.0)]);
        let selector = SpanSelector::new(
            Fixed(scores.clone()),
            SpanRule::Segments {
                starts: vec![0],
                max_len: 8,
            },
        );
        let kept = selector.fill(&scores, 8);
        assert_eq!(kept, (86..94).collect::<Vec<_>>());
    }

    #[test]
    fn segments_ranked_by_mean_prefer_passages_relevant_throughout() {
        // Segment [0,4) has one hot token; segment [4,8) is warm throughout.
        let scores = vec![0.0, 5.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1];
        let rule = SpanRule::Segments {
            starts: vec![0, 4, 8],
            max_len: 16,
        };
        let by_best = SpanSelector::new(Fixed(scores.clone()), rule.clone());
        assert_eq!(by_best.fill(&scores, 4), vec![0, 1, 2, 3]);
        let by_mean = by_best.with_ranking(SpanRanking::SegmentMean);
        assert_eq!(by_mean.fill(&scores, 4), vec![4, 5, 6, 7]);
        assert_eq!(by_mean.fill(&scores, 6), vec![0, 1, 4, 5, 6, 7]);
    }

    #[test]
    fn restricted_segments_follow_the_kept_positions() {
        // Prompt segments [0,10) [10,14) [14,30); a pass kept 2, 5, 11, 12, 20, 25: by segment
        // [2, 5] [11, 12] [20, 25], so the probe's segments start at 0, 2, 4.
        let scores = vec![0.0, 0.0, 0.0, 9.0, 0.0, 0.0];
        let selector = SpanSelector::new(
            Fixed(scores),
            SpanRule::Segments {
                starts: vec![0, 10, 14],
                max_len: 8,
            },
        );
        // Unrestricted, the prompt's segments do not fit a 6-position probe.
        assert!(selector.select_layers(&[], 2).is_err());
        let restricted = selector.restricted(&[2, 5, 11, 12, 20, 25]).unwrap();
        let kept = restricted.select_layers(&[], 2).unwrap();
        assert_eq!(kept.positions, vec![2, 3]);
        assert_eq!(restricted.name(), selector.name());
        let radius = SpanSelector::new(Fixed(vec![0.0; 6]), SpanRule::Radius(2));
        assert!(radius.restricted(&[1, 2]).is_none());
    }

    #[test]
    fn segments_of_another_prompt_are_refused() {
        let selector = SpanSelector::new(
            Fixed(vec![0.0; 10]),
            SpanRule::Segments {
                starts: vec![0, 20],
                max_len: 8,
            },
        );
        assert!(matches!(
            selector.check(10),
            Err(CoreError::InvalidSelector { .. })
        ));
    }
}
