//! Where a pass keeps each layer's keys and values, and which keys its queries see.
//!
//! A [`KvStore`] is handed to every layer of a pass: it stores the layer's new keys and values
//! and runs attention over whatever it makes visible. [`KvCache`] is the plain cache of cached
//! decoding; [`NoCache`] keeps nothing (a one-shot pass); the compressing store of the SnapKV and
//! H2O baselines lives in [`compress`](crate::compress).

mod cache;

pub use cache::KvCache;

use burn::tensor::Tensor;

use crate::error::Result;
use crate::nn::{AttentionKernel, Qkv};

/// Storage strategy for the keys and values of a pass, layer by layer.
pub trait KvStore {
    /// Tokens processed before this pass: the rotary position of its first token.
    fn position(&self) -> usize;

    /// Fails, before any work, when `new_positions` more positions cannot be stored.
    fn check_room(&self, new_positions: usize) -> Result<()>;

    /// Stores `layer`'s keys and values of the pass's positions and returns the attention
    /// context of its queries over every key the store makes visible,
    /// `[1, heads, positions, head_dim]`.
    fn attend(&mut self, layer: usize, qkv: Qkv, kernel: &AttentionKernel) -> Result<Tensor<4>>;

    /// Marks the pass's `new_positions` as processed, once its layers have run (a pass stopped
    /// early leaves the layers it did not reach unwritten).
    fn commit(&mut self, new_positions: usize);
}

/// A pass that keeps nothing: queries attend over the pass's own keys (causal), from position 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

impl KvStore for NoCache {
    fn position(&self) -> usize {
        0
    }

    fn check_room(&self, _new_positions: usize) -> Result<()> {
        Ok(())
    }

    fn attend(&mut self, _layer: usize, qkv: Qkv, kernel: &AttentionKernel) -> Result<Tensor<4>> {
        let device = qkv.queries.device();
        Ok(kernel.time("attention", &device, || kernel.attend(qkv, 0, 0)))
    }

    fn commit(&mut self, _new_positions: usize) {}
}
