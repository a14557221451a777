//! The linear maps of a decoder (attention's q/k/v/o, the MLP's gate/up/down, the LM head) behind
//! one type, so that how a weight is stored (dense today) is decided in one place.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// `y = x·W (+ b)` for one weight matrix, whatever its storage.
///
/// Every projection of the decoder is one of these; a new storage (packed quantised blocks, say)
/// is a new variant here and nowhere else. Loaders address the weight by the Hugging Face name of
/// the projection (`….q_proj.weight`): variant names never appear in parameter paths (burn-store
/// is asked to skip them).
#[derive(Module, Debug)]
pub enum Projection {
    /// Dense weights `[d_in, d_out]` in the compute dtype (Burn's `Linear`).
    Dense(Linear),
}

impl Projection {
    /// A dense projection `d_in → d_out`, initialised lazily (a loader replaces the weights
    /// before first use; untouched ones materialise with Burn's random initialiser).
    pub fn dense(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Self {
        Projection::Dense(LinearConfig::new(d_in, d_out).with_bias(bias).init(device))
    }

    /// Applies the map to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Projection::Dense(linear) => linear.forward(x),
        }
    }
}
