//! Token selectors described by a short text spec, as the CLI takes them (`--selector`).
//!
//! A spec is `gemfilter` (the paper's rule, exact) or comma-separated `key=value` settings:
//!
//! | key | values | default | piece |
//! |---|---|---|---|
//! | `window` | queries that score (≥ 1) | 1 | [`QuestionWindowSelector`] |
//! | `norm` | `sum`, `softmax`, `max` | `sum` | per-head normalisation |
//! | `pool` | odd pooling width | 5 | |
//! | `vote` | layers joined by `+`, e.g. `8+11+14` | the filter layer | [`LayerVoteSelector`] |
//! | `rule` | `rank`, `norm` | `rank` | how the layers combine |
//! | `spans` | `sentence`, `line`, `radius:R` | none | [`SpanSelector`] |
//! | `maxspan` | longest span from one segment | 48 | |
//! | `rank` | `token` (best position), `mean` (segment mean) | `token` | how spans compete |
//! | `stages` | pruning stages `layer:keep` joined by `+`, e.g. `4:2048+10:1024` | none | [`StagedSelector`] |
//!
//! Example: `window=32,norm=softmax,spans=sentence`; with a cheaper selection pass that keeps
//! 2048 positions at layer 4 before the final selection: `window=32,spans=sentence,stages=4:2048`.

use std::fmt;
use std::str::FromStr;

use gemfilter_core::{
    GemFilterSelector, HeadNormalization, LayerVoteSelector, QuestionWindowSelector,
    SelectionStage, SpanRanking, SpanRule, SpanSelector, StagedSelector, TokenSelector, VoteRule,
};

use crate::error::{ModelError, Result};
use crate::hf::tokenizer::TextTokenizer;
use crate::segments::{Segmentation, segment_starts};

/// How spans are formed around kept tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanSpec {
    /// Whole sentences.
    Sentence,
    /// Whole lines.
    Line,
    /// A fixed radius of positions.
    Radius(usize),
}

/// A parsed selector spec; [`build`](Self::build) turns it into a selector for one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorSpec {
    /// Trailing queries that score.
    pub window: usize,
    /// Per-head normalisation.
    pub norm: HeadNormalization,
    /// Pooling width.
    pub pool: usize,
    /// Voting layers (empty: the filter layer alone).
    pub vote: Vec<usize>,
    /// How voting layers combine.
    pub rule: VoteRule,
    /// Span expansion.
    pub spans: Option<SpanSpec>,
    /// Longest span taken from one segment.
    pub max_span: usize,
    /// Rank segments by their mean score instead of their best position.
    pub rank_by_mean: bool,
    /// Pruning stages before the final selection (multi-stage selection; empty: one stage).
    pub stages: Vec<SelectionStage>,
}

impl Default for SelectorSpec {
    /// The paper's selector.
    fn default() -> Self {
        Self {
            window: 1,
            norm: HeadNormalization::Sum,
            pool: 5,
            vote: Vec::new(),
            rule: VoteRule::RankSum,
            spans: None,
            max_span: 48,
            rank_by_mean: false,
            stages: Vec::new(),
        }
    }
}

impl SelectorSpec {
    /// Whether this is exactly the paper's selector.
    pub fn is_paper(&self) -> bool {
        *self == Self::default()
    }

    /// The selector for one prompt (`ids`, needed for sentence and line spans), with its
    /// pruning stages when it has any.
    pub fn build(&self, tokenizer: &TextTokenizer, ids: &[u32]) -> Result<Box<dyn TokenSelector>> {
        self.build_with(|segmentation| segment_starts(tokenizer, ids, segmentation))
    }

    /// The selector for prompts without text (random token ids in benchmarks): sentence and
    /// line spans are refused.
    pub fn build_without_text(&self) -> Result<Box<dyn TokenSelector>> {
        self.build_with(|_| {
            Err(ModelError::SelectorSpec {
                spec: self.to_string(),
                problem: "sentence and line spans need the prompt's text".into(),
            })
        })
    }

    /// The selector, with segment starts from `segments` when spans need them.
    fn build_with(
        &self,
        segments: impl FnOnce(Segmentation) -> Result<Vec<usize>>,
    ) -> Result<Box<dyn TokenSelector>> {
        let selector = self.build_one_stage(segments)?;
        if self.stages.is_empty() {
            return Ok(selector);
        }
        Ok(Box::new(StagedSelector::new(selector, self.stages.clone())))
    }

    /// The selector without its stages.
    fn build_one_stage(
        &self,
        segments: impl FnOnce(Segmentation) -> Result<Vec<usize>>,
    ) -> Result<Box<dyn TokenSelector>> {
        let base: Box<dyn TokenSelector> =
            if self.window == 1 && self.norm == HeadNormalization::Sum && self.pool == 5 {
                Box::new(GemFilterSelector::default())
            } else {
                Box::new(
                    QuestionWindowSelector::new(self.window, self.norm).with_kernel_size(self.pool),
                )
            };
        let voted: Box<dyn TokenSelector> = if self.vote.is_empty() {
            base
        } else {
            Box::new(LayerVoteSelector::new(self.vote.clone(), self.rule, base))
        };
        let rule = match self.spans {
            None => return Ok(voted),
            Some(SpanSpec::Radius(radius)) => SpanRule::Radius(radius),
            Some(SpanSpec::Sentence) => SpanRule::Segments {
                starts: segments(Segmentation::Sentences)?,
                max_len: self.max_span,
            },
            Some(SpanSpec::Line) => SpanRule::Segments {
                starts: segments(Segmentation::Lines)?,
                max_len: self.max_span,
            },
        };
        let ranking = if self.rank_by_mean {
            SpanRanking::SegmentMean
        } else {
            SpanRanking::BestPosition
        };
        Ok(Box::new(
            SpanSelector::new(voted, rule).with_ranking(ranking),
        ))
    }
}

impl FromStr for SelectorSpec {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self> {
        let fail = |problem: String| ModelError::SelectorSpec {
            spec: text.to_string(),
            problem,
        };
        let mut spec = SelectorSpec::default();
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "gemfilter" {
            return Ok(spec);
        }
        let number = |key: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| fail(format!("`{key}` takes a whole number, got `{value}`")))
        };
        for setting in trimmed.split(',') {
            let Some((key, value)) = setting.split_once('=') else {
                return Err(fail(format!(
                    "`{setting}` is not key=value (keys: window, norm, pool, vote, rule, spans, maxspan, rank, stages)"
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "window" => spec.window = number(key, value)?,
                "norm" => {
                    spec.norm = match value {
                        "sum" => HeadNormalization::Sum,
                        "softmax" => HeadNormalization::Softmax,
                        "max" => HeadNormalization::MaxOverHeads,
                        _ => return Err(fail(format!("norm `{value}` (sum, softmax, max)"))),
                    }
                }
                "pool" => spec.pool = number(key, value)?,
                "vote" => {
                    spec.vote = value
                        .split('+')
                        .map(|layer| number(key, layer.trim()))
                        .collect::<Result<_>>()?
                }
                "rule" => {
                    spec.rule = match value {
                        "rank" => VoteRule::RankSum,
                        "norm" => VoteRule::NormalizedSum,
                        _ => return Err(fail(format!("rule `{value}` (rank, norm)"))),
                    }
                }
                "spans" => {
                    spec.spans = Some(match value {
                        "sentence" => SpanSpec::Sentence,
                        "line" => SpanSpec::Line,
                        _ => match value.strip_prefix("radius:") {
                            Some(r) => SpanSpec::Radius(number(key, r)?),
                            None => {
                                return Err(fail(format!(
                                    "spans `{value}` (sentence, line, radius:R)"
                                )));
                            }
                        },
                    })
                }
                "maxspan" => spec.max_span = number(key, value)?,
                "stages" => {
                    spec.stages = value
                        .split('+')
                        .map(|stage| {
                            let (layer, keep) = stage.split_once(':').ok_or_else(|| {
                                fail(format!("stage `{stage}` is not layer:keep"))
                            })?;
                            Ok(SelectionStage {
                                layer: number(key, layer.trim())?,
                                keep: number(key, keep.trim())?,
                            })
                        })
                        .collect::<Result<_>>()?
                }
                "rank" => {
                    spec.rank_by_mean = match value {
                        "token" => false,
                        "mean" => true,
                        _ => return Err(fail(format!("rank `{value}` (token, mean)"))),
                    }
                }
                _ => {
                    return Err(fail(format!(
                        "unknown key `{key}` (window, norm, pool, vote, rule, spans, maxspan, rank, stages)"
                    )));
                }
            }
        }
        if spec.window == 0 {
            return Err(fail("window must be at least 1".into()));
        }
        if spec.pool.is_multiple_of(2) {
            return Err(fail(format!("pool must be odd, got {}", spec.pool)));
        }
        if spec.max_span == 0 {
            return Err(fail("maxspan must be at least 1".into()));
        }
        if spec.vote.is_empty() && trimmed.contains("vote=") {
            return Err(fail("vote needs at least one layer".into()));
        }
        if spec.stages.iter().any(|s| s.keep == 0) {
            return Err(fail("a stage must keep at least one position".into()));
        }
        if spec.stages.windows(2).any(|w| w[0].layer >= w[1].layer) {
            return Err(fail("stage layers must increase".into()));
        }
        Ok(spec)
    }
}

impl fmt::Display for SelectorSpec {
    /// The canonical spec: `gemfilter` for the paper's rule, else the settings that differ from
    /// the defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_paper() {
            return write!(f, "gemfilter");
        }
        let default = SelectorSpec::default();
        let mut parts = Vec::new();
        if self.window != default.window {
            parts.push(format!("window={}", self.window));
        }
        if self.norm != default.norm {
            parts.push(format!("norm={}", self.norm.name()));
        }
        if self.pool != default.pool {
            parts.push(format!("pool={}", self.pool));
        }
        if !self.vote.is_empty() {
            let layers: Vec<String> = self.vote.iter().map(ToString::to_string).collect();
            parts.push(format!("vote={}", layers.join("+")));
            if self.rule != default.rule {
                parts.push(format!("rule={}", self.rule.name()));
            }
        }
        if let Some(spans) = self.spans {
            parts.push(match spans {
                SpanSpec::Sentence => "spans=sentence".into(),
                SpanSpec::Line => "spans=line".into(),
                SpanSpec::Radius(r) => format!("spans=radius:{r}"),
            });
            if self.max_span != default.max_span {
                parts.push(format!("maxspan={}", self.max_span));
            }
            if self.rank_by_mean {
                parts.push("rank=mean".into());
            }
        }
        if !self.stages.is_empty() {
            let stages: Vec<String> = self
                .stages
                .iter()
                .map(|s| format!("{}:{}", s.layer, s.keep))
                .collect();
            parts.push(format!("stages={}", stages.join("+")));
        }
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for text in [
            "gemfilter",
            "window=32,norm=softmax",
            "vote=8+11+14,rule=norm",
            "window=16,spans=sentence,maxspan=64",
            "window=32,norm=softmax,spans=sentence,rank=mean",
            "spans=radius:6",
            "stages=4:2048",
            "window=32,norm=max,spans=sentence,stages=4:2048+10:1024",
        ] {
            let spec: SelectorSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert!("".parse::<SelectorSpec>().unwrap().is_paper());
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (text, needle) in [
            ("window=0", "window must be at least 1"),
            ("norm=l2", "norm `l2`"),
            ("pool=4", "pool must be odd"),
            ("vote=8+x", "`vote` takes a whole number"),
            ("spans=paragraph", "spans `paragraph`"),
            ("depth=3", "unknown key `depth`"),
            ("window", "not key=value"),
            ("stages=4", "not layer:keep"),
            ("stages=4:0", "at least one position"),
            ("stages=8:1024+4:512", "layers must increase"),
        ] {
            let error = text.parse::<SelectorSpec>().unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
