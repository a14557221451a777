//! Gated feed-forward block.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::AttentionKernel;
use super::projection::Projection;
use crate::config::Activation;

/// `down(act(gate(x)) * up(x))`: the gated MLP of LLaMA-style models (SwiGLU with SiLU).
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden → intermediate, passed through the activation.
    pub gate_proj: Projection,
    /// Hidden → intermediate, multiplied with the activated gate.
    pub up_proj: Projection,
    /// Intermediate → hidden.
    pub down_proj: Projection,
    /// The gate's activation, as the configuration names it.
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// Uninitialised projections of the given shape.
    pub fn new(
        hidden: usize,
        intermediate: usize,
        bias: bool,
        activation: Activation,
        device: &Device,
    ) -> Self {
        let projection = |d_in, d_out| Projection::dense(d_in, d_out, bias, device);
        Self {
            gate_proj: projection(hidden, intermediate),
            up_proj: projection(hidden, intermediate),
            down_proj: projection(intermediate, hidden),
            activation,
        }
    }

    /// Applies the block to `[batch, positions, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.activation.apply(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }

    /// [`forward`](Self::forward) with its projections and activation timed as `kernel`'s profile
    /// sections.
    pub fn forward_timed(
        &self,
        x: Tensor<3>,
        kernel: &AttentionKernel,
        device: &Device,
    ) -> Tensor<3> {
        let (gate, up) = kernel.time("projections", device, || {
            (self.gate_proj.forward(x.clone()), self.up_proj.forward(x))
        });
        let gated = kernel.time("activation", device, || self.activation.apply(gate) * up);
        kernel.time("projections", device, || self.down_proj.forward(gated))
    }
}
