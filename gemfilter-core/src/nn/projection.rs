//! The linear maps of a decoder (attention's q/k/v/o, the MLP's gate/up/down, the LM head) behind
//! one type, so that how a weight is stored (dense today) is decided in one place.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};

use std::sync::Arc;

use crate::error::Result;
use crate::quant::{BLOCK, InterleavedMatrix, PackedMatrix, QuantizedLinear, QuantizedWeight};

/// `y = x·W (+ b)` for one weight matrix, whatever its storage.
///
/// Every projection of the decoder is one of these; a new storage is a new variant here and
/// nowhere else. Loaders address a dense weight by the Hugging Face name of the projection
/// (`….q_proj.weight`): variant names never appear in parameter paths (burn-store is asked to skip
/// them); packed weights are placed whole with
/// [`Projection::pack`].
// One per weight matrix: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Projection {
    /// Dense weights `[d_in, d_out]` in the compute dtype (Burn's `Linear`).
    Dense(Linear),
    /// Weights packed in blocks (`Q8_0`, `Q4_0`, `Q4_1`).
    Quantized(QuantizedLinear),
}

impl Projection {
    /// A dense projection `d_in → d_out`, initialised lazily (a loader replaces the weights
    /// before first use; untouched ones materialise with Burn's random initialiser).
    pub fn dense(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Self {
        Projection::Dense(LinearConfig::new(d_in, d_out).with_bias(bias).init(device))
    }

    /// Stores the weight as `matrix` (`[d_out, d_in]` in blocks) on `device`, keeping the bias
    /// (and a bias a loader has yet to fill).
    pub fn pack(&mut self, matrix: Arc<PackedMatrix>, device: &Device) -> Result<()> {
        let bias = match self {
            Projection::Dense(linear) => linear.bias.take(),
            Projection::Quantized(linear) => linear.bias.take(),
        };
        let mut packed = QuantizedLinear::new(matrix, None, device)?;
        packed.bias = bias;
        *self = Projection::Quantized(packed);
        Ok(())
    }

    /// The same map with dense weights in `dtype`: packed weights dequantised (what the packed
    /// blocks stand for, to measure a kernel against plain arithmetic).
    pub fn dequantized(&self, dtype: DType, device: &Device) -> Projection {
        let linear = match self {
            Projection::Dense(linear) => return Projection::Dense(linear.clone()),
            Projection::Quantized(linear) => linear,
        };
        let weight = match &linear.weight {
            QuantizedWeight::Host(matrix) => {
                let (rows, cols) = (matrix.rows(), matrix.cols());
                Tensor::<2>::from_data(TensorData::new(matrix.dequantize(), [rows, cols]), device)
                    .transpose()
            }
            QuantizedWeight::Device {
                tensor, offsets, ..
            } => {
                let weight = tensor.clone().dequantize();
                match offsets {
                    // Each block's offset spread over its 32 input rows.
                    Some(offsets) => {
                        let [blocks, out] = offsets.dims();
                        weight
                            + offsets
                                .clone()
                                .unsqueeze_dim::<3>(1)
                                .expand([blocks, BLOCK, out])
                                .reshape([blocks * BLOCK, out])
                    }
                    None => weight,
                }
            }
        };
        Projection::Dense(Linear {
            weight: Param::from_tensor(weight.cast(dtype)),
            bias: linear.bias.clone(),
        })
    }

    /// Bytes of the weight (packed bytes, or dense elements × dtype size).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Projection::Dense(linear) => {
                linear.weight.shape().num_elements() * linear.weight.val().dtype().size()
            }
            Projection::Quantized(linear) => linear.weight_bytes(),
        }
    }

    /// The host matrix of a bias-free packed projection that runs on the host kernels.
    pub fn host_matrix(&self) -> Option<&InterleavedMatrix> {
        match self {
            Projection::Dense(_) => None,
            Projection::Quantized(linear) => linear.host_matrix(),
        }
    }

    /// Applies the map to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Projection::Dense(linear) => linear.forward(x),
            Projection::Quantized(linear) => linear.forward(x),
        }
    }
}
