//! Filter-layer calibration: how much of the answer-carrying text each layer's selection keeps.
//! One forward per probe prompt scores every layer with every selector as the pass goes by.

use gemfilter_core::{LayerObserver, Probe, RunOptions, TokenSelector};
use gemfilter_models::{Model, SelectorSpec};

use crate::error::{EvalError, Result};
use crate::needle::tokens_overlapping;

/// A probe prompt: token ids and the (ascending) positions of the tokens that carry the answer.
#[derive(Debug, Clone)]
pub struct EvidencePrompt {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Positions of the answer-carrying tokens (needles).
    pub evidence: Vec<usize>,
}

impl EvidencePrompt {
    /// Fraction of the evidence among `kept` (ascending).
    pub fn recall(&self, kept: &[usize]) -> f64 {
        crate::needle::recall(&self.evidence, kept)
    }

    /// The prompt of `text` (tokenised as the model reads it) with the tokens overlapping each
    /// of `pieces` as evidence. Fails when a piece is not in the text.
    pub fn from_text(
        model: &Model,
        text: &str,
        pieces: &[String],
        add_special: bool,
    ) -> Result<Self> {
        let encoded = model.tokenizer().encode_with_offsets(text, add_special)?;
        let mut evidence = Vec::new();
        for piece in pieces {
            let start = text.find(piece.as_str()).ok_or_else(|| {
                EvalError::InvalidParameter(format!("evidence `{piece}` is not in the prompt"))
            })?;
            evidence.extend(tokens_overlapping(
                &encoded.offsets,
                start..start + piece.len(),
            ));
        }
        evidence.sort_unstable();
        evidence.dedup();
        Ok(Self {
            ids: encoded.ids,
            evidence,
        })
    }
}

/// `recall[layer][selector]`: the evidence recall of each selector's top-`top_k` at every
/// layer of one forward over `prompt`.
pub fn recall_per_layer(
    model: &Model,
    prompt: &EvidencePrompt,
    specs: &[SelectorSpec],
    top_k: usize,
    run: &RunOptions,
) -> Result<Vec<Vec<f64>>> {
    if let Some(spec) = specs.iter().find(|s| !s.vote.is_empty()) {
        return Err(EvalError::InvalidParameter(format!(
            "selector {spec}: a voting selector reads fixed layers and cannot be calibrated per layer"
        )));
    }
    let selectors: Vec<Box<dyn TokenSelector>> = specs
        .iter()
        .map(|spec| spec.build(model.tokenizer(), &prompt.ids))
        .collect::<std::result::Result<_, _>>()?;
    let window = selectors
        .iter()
        .map(|s| s.query_window())
        .max()
        .unwrap_or(1);
    let layers = model.decoder().config().num_layers;
    let mut observer = RecallPerLayer {
        selectors: &selectors,
        prompt,
        top_k,
        recalls: Vec::new(),
    };
    model
        .decoder()
        .observe(&prompt.ids, layers - 1, window, &mut observer, run)?;
    observer
        .recalls
        .into_iter()
        .map(|r| r.map_err(EvalError::Core))
        .collect()
}

/// Scores every layer's probe with every selector as the pass goes by, keeping only recalls.
struct RecallPerLayer<'a> {
    selectors: &'a [Box<dyn TokenSelector>],
    prompt: &'a EvidencePrompt,
    top_k: usize,
    recalls: Vec<gemfilter_core::Result<Vec<f64>>>,
}

impl LayerObserver for RecallPerLayer<'_> {
    fn wants(&self, _layer: usize) -> bool {
        true
    }

    fn observe(&mut self, probe: Probe) {
        let n = self.prompt.ids.len();
        let recalls = self
            .selectors
            .iter()
            .map(|selector| {
                let selection = selector.select(&probe, self.top_k)?;
                selection.validate(selector.name(), n, self.top_k)?;
                Ok(self.prompt.recall(&selection.positions))
            })
            .collect();
        self.recalls.push(recalls);
    }
}
