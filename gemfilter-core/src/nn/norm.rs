//! Root-mean-square layer normalisation.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

/// RMSNorm as LLaMA defines it: statistics in f32, result cast back, then scaled.
///
/// The parameter is called `gamma` (Burn's name); burn-store's PyTorch adapter maps the
/// checkpoint's `weight` onto it.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-channel scale.
    pub gamma: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub epsilon: f64,
}

impl RmsNorm {
    /// A norm of width `size` with unit scale.
    pub fn new(size: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([size], device)),
            epsilon,
        }
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let variance = x32.clone().square().mean_dim(D - 1);
        let normed = x32 * (variance + self.epsilon).sqrt().recip();
        normed.cast(dtype) * self.gamma.val().unsqueeze()
    }
}
