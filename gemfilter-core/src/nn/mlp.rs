//! Gated feed-forward block.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::AttentionKernel;
use super::projection::Projection;
use crate::config::Activation;
use crate::quant::{HostProducts, InterleavedMatrix};

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
        if let Some((gate, up)) = self.host_gate_up() {
            let activation = self.activation;
            let gated = HostProducts::new(x, &[gate, up]).gated(|v| activation.apply_scalar(v));
            return self.down_proj.forward(gated);
        }
        let gate = self.activation.apply(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }

    /// Gate and up as host matrices, when both run on the host kernels: then the input is
    /// quantised once for both, and the activation and product run in one pass on the host
    /// instead of three tensor operations.
    fn host_gate_up(&self) -> Option<(&InterleavedMatrix, &InterleavedMatrix)> {
        Some((self.gate_proj.host_matrix()?, self.up_proj.host_matrix()?))
    }

    /// [`forward`](Self::forward) with its projections and activation timed as `kernel`'s profile
    /// sections.
    pub fn forward_timed(
        &self,
        x: Tensor<3>,
        kernel: &AttentionKernel,
        device: &Device,
    ) -> Tensor<3> {
        if let Some((gate, up)) = self.host_gate_up() {
            let products = kernel.time("projections", device, || HostProducts::new(x, &[gate, up]));
            let activation = self.activation;
            let gated = kernel.time("activation", device, || {
                products.gated(|v| activation.apply_scalar(v))
            });
            return kernel.time("projections", device, || self.down_proj.forward(gated));
        }
        let (gate, up) = kernel.time("projections", device, || {
            (self.gate_proj.forward(x.clone()), self.up_proj.forward(x))
        });
        let gated = kernel.time("activation", device, || self.activation.apply(gate) * up);
        kernel.time("projections", device, || self.down_proj.forward(gated))
    }
}
