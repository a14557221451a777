//! What the early-exit hook exposes at a layer: post-RoPE queries of the last positions and
//! post-RoPE keys of every position.

use burn::tensor::Tensor;

/// The view of one layer that token selectors score from.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Index of the layer (0-based).
    pub layer: usize,
    /// Post-RoPE queries of the last `w` positions, `[num_heads, w, head_dim]`.
    pub queries: Tensor<3>,
    /// Post-RoPE keys of all `n` positions, `[num_kv_heads, n, head_dim]`.
    pub keys: Tensor<3>,
}

impl Probe {
    /// Bundles a layer's probe.
    pub fn new(layer: usize, queries: Tensor<3>, keys: Tensor<3>) -> Self {
        Self {
            layer,
            queries,
            keys,
        }
    }

    /// Number of input positions `n`.
    pub fn num_positions(&self) -> usize {
        self.keys.dims()[1]
    }

    /// Number of query heads.
    pub fn num_heads(&self) -> usize {
        self.queries.dims()[0]
    }

    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.keys.dims()[0]
    }

    /// Number of trailing query positions held.
    pub fn query_window(&self) -> usize {
        self.queries.dims()[1]
    }
}

/// Receives probes during [`Decoder::observe`](crate::Decoder::observe).
pub trait LayerObserver {
    /// Whether the probe of `layer` is wanted (the stop layer's always is).
    fn wants(&self, layer: usize) -> bool;
    /// Takes one layer's probe.
    fn observe(&mut self, probe: Probe);
}
