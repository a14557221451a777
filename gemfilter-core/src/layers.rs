//! Selections at every layer from one forward pass (filter-layer calibration, multi-layer
//! selectors).

use crate::decoder::Decoder;
use crate::error::{CoreError, Result};
use crate::options::RunOptions;
use crate::probe::{LayerObserver, Probe};
use crate::selector::{Selection, TokenSelector};

/// Runs one forward over `prompt` up to `last_layer` and applies `selector` (budget `top_k`) to
/// the probe of every layer `0..=last_layer` as it passes; probes are dropped right after
/// scoring, so memory stays that of one probe.
pub fn selections_per_layer(
    decoder: &Decoder,
    prompt: &[u32],
    top_k: usize,
    selector: &dyn TokenSelector,
    last_layer: usize,
    options: &RunOptions,
) -> Result<Vec<Selection>> {
    if top_k == 0 {
        return Err(CoreError::ZeroTopK);
    }
    struct PerLayer<'a> {
        selector: &'a dyn TokenSelector,
        top_k: usize,
        positions: usize,
        selections: Vec<Result<Selection>>,
    }
    impl LayerObserver for PerLayer<'_> {
        fn wants(&self, _layer: usize) -> bool {
            true
        }
        fn observe(&mut self, probe: Probe) {
            let selection = self.selector.select(&probe, self.top_k).and_then(|s| {
                s.validate(self.selector.name(), self.positions, self.top_k)?;
                Ok(s)
            });
            self.selections.push(selection);
        }
    }
    let mut observer = PerLayer {
        selector,
        top_k,
        positions: prompt.len(),
        selections: Vec::new(),
    };
    decoder.observe(
        prompt,
        last_layer,
        selector.query_window(),
        &mut observer,
        options,
    )?;
    observer.selections.into_iter().collect()
}
