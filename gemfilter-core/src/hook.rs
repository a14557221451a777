//! Hooks into a forward pass: what a caller may see of each layer, and whether the pass goes on.
//!
//! Every layer shows its [`LayerView`] (its normed input and post-RoPE keys, computed anyway) to
//! the pass's [`LayerHook`] before its attention runs. A hook can look (collect probes for
//! calibration or layer voting) or stop the pass there (GemFilter's early exit); the caller then
//! gets the hidden state entering that layer back, to resume from it or to drop it.

use burn::tensor::Tensor;

use crate::nn::{Attention, RopeTables};
use crate::probe::Probe;

/// Whether a pass goes on after a hook saw a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Run this layer and go on.
    Continue,
    /// Stop before this layer's attention: nothing of it or after it runs.
    Stop,
}

/// What a hook sees of one layer: its index, normed input and post-RoPE keys, and the means to
/// compute queries of any trailing positions (the probe) without running the layer.
pub struct LayerView<'a> {
    /// Index of the layer (0-based).
    pub layer: usize,
    /// The layer's input after its first norm, `[1, positions, hidden]`.
    pub normed: &'a Tensor<3>,
    /// Post-RoPE keys of the pass's positions, `[1, kv_heads, positions, head_dim]`.
    pub keys: &'a Tensor<4>,
    pub(crate) attention: &'a Attention,
    pub(crate) rope: &'a RopeTables,
}

impl LayerView<'_> {
    /// Number of positions the pass processes.
    pub fn positions(&self) -> usize {
        self.normed.dims()[1]
    }

    /// Post-RoPE queries of the last `window` positions (clamped to the pass),
    /// `[1, heads, window, head_dim]`.
    pub fn last_queries(&self, window: usize) -> Tensor<4> {
        let n = self.positions();
        let window = window.min(n);
        let tail = self.rope.narrow(n - window, window);
        self.attention
            .queries(self.normed.clone().narrow(1, n - window, window), &tail)
    }

    /// The layer's [`Probe`]: queries of the last `window` positions and keys of all.
    pub fn probe(&self, window: usize) -> Probe {
        Probe::new(
            self.layer,
            self.last_queries(window).squeeze_dim(0),
            self.keys.clone().squeeze_dim(0),
        )
    }
}

/// Sees every layer of a pass before its attention runs, and may stop the pass.
pub trait LayerHook {
    /// Called once per layer with its view; [`Flow::Stop`] ends the pass before this layer's
    /// attention.
    fn at_layer(&mut self, view: &LayerView<'_>) -> Flow;
}

/// The hook of an ordinary pass: looks at nothing, never stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl LayerHook for NoHook {
    fn at_layer(&mut self, _view: &LayerView<'_>) -> Flow {
        Flow::Continue
    }
}
