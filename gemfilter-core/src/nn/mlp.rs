//! Gated feed-forward block.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

/// `down(silu(gate(x)) * up(x))`, the SwiGLU MLP of LLaMA-style models.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden → intermediate, passed through the activation.
    pub gate_proj: Linear,
    /// Hidden → intermediate, multiplied with the activated gate.
    pub up_proj: Linear,
    /// Intermediate → hidden.
    pub down_proj: Linear,
}

impl Mlp {
    /// Uninitialised projections of the given shape.
    pub fn new(hidden: usize, intermediate: usize, bias: bool, device: &Device) -> Self {
        let linear = |d_in, d_out| LinearConfig::new(d_in, d_out).with_bias(bias).init(device);
        Self {
            gate_proj: linear(hidden, intermediate),
            up_proj: linear(hidden, intermediate),
            down_proj: linear(intermediate, hidden),
        }
    }

    /// Applies the block to `[batch, positions, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
