//! Multi-stage selection: prune the prompt at early layers before the final selection, so the
//! selection pass runs its later layers over fewer positions.

use super::{Selection, TokenSelector};
use crate::error::Result;
use crate::probe::Probe;

/// One pruning stage: at `layer`, keep `keep` of the positions still in the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SelectionStage {
    /// Layer whose probe ranks the positions (0-based).
    pub layer: usize,
    /// Positions kept (the last positions the selector's queries come from are always among
    /// them).
    pub keep: usize,
}

/// `inner`, preceded by pruning `stages`: the selection pass runs layers `0..stages[0].layer`
/// over the whole prompt, ranks it with `inner` at that layer's probe and keeps
/// `stages[0].keep` positions (always including the last `inner.query_window()`, whose queries
/// the later probes need), runs the next layers over those only (at their original rotary
/// positions), and so on; the final selection is `inner`'s at the filter layer over what is
/// left. Layers must increase and stay below the filter layer, and each stage must keep at least
/// as many positions as the next (and as the final budget): the pass checks this.
///
/// With no stages this is `inner` exactly.
#[derive(Debug, Clone)]
pub struct StagedSelector<S> {
    /// The selector of every stage.
    pub inner: S,
    stages: Vec<SelectionStage>,
    name: String,
}

impl<S: TokenSelector> StagedSelector<S> {
    /// `inner` with pruning `stages` before its final selection.
    pub fn new(inner: S, stages: Vec<SelectionStage>) -> Self {
        let name = if stages.is_empty() {
            inner.name().to_string()
        } else {
            let list: Vec<String> = stages
                .iter()
                .map(|s| format!("L{}:{}", s.layer, s.keep))
                .collect();
            format!("staged[{}]({})", list.join("+"), inner.name())
        };
        Self {
            inner,
            stages,
            name,
        }
    }
}

impl<S: TokenSelector> TokenSelector for StagedSelector<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn query_window(&self) -> usize {
        self.inner.query_window()
    }

    fn layers(&self, filter_layer: usize) -> Vec<usize> {
        self.inner.layers(filter_layer)
    }

    fn keeps_every_token_within_budget(&self) -> bool {
        // Every stage keeps at least the final budget (checked by the pass).
        self.inner.keeps_every_token_within_budget()
    }

    fn stages(&self) -> &[SelectionStage] {
        &self.stages
    }

    fn restricted(&self, kept: &[usize]) -> Option<Box<dyn TokenSelector + '_>> {
        self.inner.restricted(kept)
    }

    fn select(&self, probe: &Probe, budget: usize) -> Result<Selection> {
        self.inner.select(probe, budget)
    }

    fn select_layers(&self, probes: &[Probe], budget: usize) -> Result<Selection> {
        self.inner.select_layers(probes, budget)
    }
}
