//! Quantised projections and embeddings, as the decoder uses them.
//!
//! Where a packed weight lives is decided once, when it is placed on a device: on CPU devices
//! (flex, ndarray) it stays a [`PackedMatrix`] in host memory and this crate's kernels multiply
//! it; on GPU devices (wgpu, CUDA) it becomes Burn's packed quantised tensor (`QFloat`, per-block
//! f16 scales) and the backend's quantised matmul reads it. The decoder never asks which.

use std::sync::Arc;

use rayon::prelude::*;

use burn::module::{Module, Param};
use burn::tensor::quantization::{QuantMode, QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::format::{BLOCK, QuantFormat};
use super::interleaved::InterleavedMatrix;
use super::kernels::{Kernel, QuantizedActivations, matmul_into};
use super::matrix::PackedMatrix;
use crate::error::{CoreError, Result};

/// Whether packed weights on `device` are multiplied by this crate's CPU kernels (host memory)
/// rather than the backend's quantised matmul.
pub fn uses_host_kernels(device: &Device) -> bool {
    crate::cpu::runs_on_host(device)
}

/// A packed weight where its device multiplies it.
// One per projection: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum QuantizedWeight {
    /// Packed blocks in host memory, interleaved for this crate's kernels.
    Host(Arc<InterleavedMatrix>),
    /// Burn's packed quantised tensor, `[in, out]` (a transposed view of the `[out, in]` blocks),
    /// symmetric; an asymmetric format (`Q4_1`) adds a per-block offset matrix.
    Device {
        /// The `QFloat` tensor.
        tensor: Tensor<2>,
        /// Per-block offsets `[in / 32, out]` (`Q4_1`: `m + 8·d`, since the packed values are
        /// `nibble − 8`): `x·Wᵀ` gains `blocksum(x) · offsets`.
        offsets: Option<Tensor<2>>,
        /// The format the blocks came from.
        source: QuantFormat,
        /// Bytes it holds on the device.
        bytes: usize,
    },
}

/// `y = x·Wᵀ (+ b)` with `W` packed in blocks (see the module documentation for where it runs).
#[derive(Module, Debug)]
pub struct QuantizedLinear {
    /// The packed weight.
    #[module(skip)]
    pub weight: QuantizedWeight,
    /// Optional bias `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl QuantizedLinear {
    /// Places `matrix` (`[out, in]`) on `device`: kept in host memory for CPU devices, converted
    /// to Burn's packed tensor for GPU devices (`Q4_1` as symmetric 4-bit values with per-block
    /// offsets, exactly).
    pub fn new(
        matrix: Arc<PackedMatrix>,
        bias: Option<Tensor<1>>,
        device: &Device,
    ) -> Result<Self> {
        let weight = if uses_host_kernels(device) {
            QuantizedWeight::Host(Arc::new(InterleavedMatrix::from_packed(&matrix)))
        } else {
            let (tensor, offsets, bytes) = burn_packed_tensor(&matrix, device)?;
            QuantizedWeight::Device {
                tensor: tensor.transpose(),
                offsets,
                source: matrix.format(),
                bytes,
            }
        };
        Ok(Self {
            weight,
            bias: bias.map(Param::from_tensor),
        })
    }

    /// Applies the map to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = match &self.weight {
            QuantizedWeight::Host(matrix) => host_matmul(matrix, x),
            QuantizedWeight::Device {
                tensor, offsets, ..
            } => {
                let y = x.clone().matmul(tensor.clone().unsqueeze());
                match offsets {
                    Some(offsets) => y + block_sums(x).matmul(offsets.clone().unsqueeze()),
                    None => y,
                }
            }
        };
        match &self.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        }
    }

    /// The host matrix, when this projection runs on the host kernels and has no bias.
    pub fn host_matrix(&self) -> Option<&InterleavedMatrix> {
        match (&self.weight, &self.bias) {
            (QuantizedWeight::Host(matrix), None) => Some(matrix),
            _ => None,
        }
    }

    /// Bytes the weight takes where it lives.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            QuantizedWeight::Host(matrix) => matrix.byte_len(),
            QuantizedWeight::Device { bytes, .. } => *bytes,
        }
    }
}

/// Sums of every block of 32 along the last dimension: `[.., k]` → `[.., k / 32]`.
fn block_sums<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let k = dims[D - 1];
    let m = dims.iter().product::<usize>() / k.max(1);
    let sums = x
        .reshape([m, k / BLOCK, BLOCK])
        .sum_dim(2)
        .reshape([m, k / BLOCK]);
    let mut shape = dims;
    shape[D - 1] = k / BLOCK;
    sums.reshape(shape)
}

/// Products of one input with several host matrices, on the host: `x` is quantised once for all.
pub struct HostProducts<const D: usize> {
    dims: [usize; D],
    device: Device,
    dtype: DType,
    /// `x · Wᵢᵀ` per matrix, row-major `m × rowsᵢ`.
    pub outputs: Vec<Vec<f32>>,
}

impl<const D: usize> HostProducts<D> {
    /// `x · Wᵀ` for every `W` of `weights` (all of `x`'s width).
    pub fn new(x: Tensor<D>, weights: &[&InterleavedMatrix]) -> Self {
        let dims = x.dims();
        let device = x.device();
        let dtype = x.dtype();
        let k = dims[D - 1];
        let m = dims.iter().product::<usize>() / k.max(1);
        let data = x.into_data().convert::<f32>();
        let values = data.as_slice::<f32>().expect("f32 activations");
        let quantized = QuantizedActivations::new(values, m, k);
        // Widths are checked against the weights when the model is built.
        let kernel = Kernel::detect();
        let outputs = weights
            .iter()
            .map(|weight| {
                assert_eq!(weight.cols(), k, "activation width");
                let mut out = vec![0.0f32; m * weight.rows()];
                matmul_into(weight, &quantized, &mut out, kernel);
                out
            })
            .collect();
        Self {
            dims,
            device,
            dtype,
            outputs,
        }
    }

    /// The single product, as a tensor on `x`'s device and dtype.
    pub fn single(mut self) -> Tensor<D> {
        let y = self.outputs.pop().expect("one product");
        self.tensor(y)
    }

    /// `act(gate) ⊙ up` from the first two products (a gated MLP's hidden layer), computed in one
    /// pass on the host, as a tensor on `x`'s device and dtype.
    pub fn gated(mut self, activation: impl Fn(f32) -> f32 + Sync) -> Tensor<D> {
        let up = self.outputs.pop().expect("two products");
        let mut gate = self.outputs.pop().expect("two products");
        const CHUNK: usize = 1 << 14;
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(|(g, u)| {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = activation(*g) * u;
                }
            });
        self.tensor(gate)
    }

    /// Host values with `x`'s leading dimensions back on `x`'s device, in `x`'s dtype.
    fn tensor(&self, values: Vec<f32>) -> Tensor<D> {
        let mut shape = self.dims;
        shape[D - 1] = values.len() / self.dims[..D - 1].iter().product::<usize>().max(1);
        let y = Tensor::<D>::from_data(TensorData::new(values, shape), &self.device);
        if self.dtype == DType::F32 {
            y
        } else {
            y.cast(self.dtype)
        }
    }
}

/// `x · Wᵀ` through the host kernels: `x` comes to the host (no copy on flex for a contiguous f32
/// tensor), the result goes back to `x`'s device and dtype.
fn host_matmul<const D: usize>(matrix: &InterleavedMatrix, x: Tensor<D>) -> Tensor<D> {
    HostProducts::new(x, &[matrix]).single()
}

/// Burn's packed form of `matrix` on `device`: `Q8_0` as signed 8-bit, `Q4_0` as full-range
/// signed 4-bit (`nibble − 8`, exact), `Q4_1` as the same 4-bit values with per-block offsets
/// `m + 8·d` (`[cols / 32, rows]`, f32); blocks of 32 along the row with f16 scales (f32 where the
/// device lacks f16). Returns the tensor, the offsets and the bytes held.
fn burn_packed_tensor(
    matrix: &PackedMatrix,
    device: &Device,
) -> Result<(Tensor<2>, Option<Tensor<2>>, usize)> {
    let (rows, cols) = (matrix.rows(), matrix.cols());
    let format = matrix.format();
    let value = match format {
        QuantFormat::Q8_0 => QuantValue::Q8S,
        _ => QuantValue::Q4F,
    };
    let half_scales = device.supports_dtype(DType::F16);
    let scale_dtype = if half_scales {
        ScaleDtype::F16
    } else {
        ScaleDtype::F32
    };
    let scheme = QuantScheme::default()
        .with_value(value)
        .with_mode(QuantMode::Symmetric)
        .with_store(QuantStore::PackedU32(0))
        .per_block([BLOCK as u8], scale_dtype);
    let blocks_per_row = cols / BLOCK;
    let blocks = rows * blocks_per_row;
    let value_bytes = match format {
        QuantFormat::Q8_0 => rows * cols,
        _ => rows * cols / 2,
    };
    let scale_bytes = blocks * if half_scales { 2 } else { 4 };
    let mut values = Vec::with_capacity(value_bytes + scale_bytes);
    let mut scales = Vec::with_capacity(scale_bytes);
    let mut offsets = (format == QuantFormat::Q4_1).then(|| vec![0.0f32; blocks]);
    for (index, block) in matrix.bytes().chunks(format.block_bytes()).enumerate() {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        if half_scales {
            scales.extend_from_slice(&block[..2]);
        } else {
            scales.extend_from_slice(&d.to_ne_bytes());
        }
        if let Some(offsets) = offsets.as_mut() {
            let m = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
            // Stored transposed, [block of the row, row], for `blocksum(x) · offsets`.
            let (row, b) = (index / blocks_per_row, index % blocks_per_row);
            offsets[b * rows + row] = m + 8.0 * d;
        }
        match format {
            // i8 values in element order are 4 per u32, element 0 in the low byte.
            QuantFormat::Q8_0 => values.extend_from_slice(&block[2..]),
            _ => {
                // Elements 0..15 are the low nibbles, 16..31 the high; Burn packs 8 consecutive
                // elements per u32, element e in bits 4e.., as 4-bit two's complement:
                // `nibble ^ 8` is `nibble − 8`.
                let q = if format == QuantFormat::Q4_0 {
                    &block[2..]
                } else {
                    &block[4..]
                };
                let element = |e: usize| -> u32 {
                    let nibble = if e < 16 { q[e] & 0x0F } else { q[e - 16] >> 4 };
                    (nibble ^ 0x08) as u32
                };
                for word in 0..BLOCK / 8 {
                    let packed = (0..8).fold(0u32, |acc, e| acc | element(word * 8 + e) << (4 * e));
                    values.extend_from_slice(&packed.to_ne_bytes());
                }
            }
        }
    }
    values.extend_from_slice(&scales);
    let mut bytes = values.len();
    let data = TensorData::from_bytes_vec(values, [rows, cols], DType::QFloat(scheme));
    let tensor = Tensor::<2>::from_data(data, device);
    if tensor.dims() != [rows, cols] {
        return Err(CoreError::Quantization(format!(
            "the device holds a {rows} × {cols} packed weight as {:?}",
            tensor.dims()
        )));
    }
    let offsets = offsets.map(|offsets| {
        bytes += offsets.len() * 4;
        Tensor::<2>::from_data(TensorData::new(offsets, [blocks_per_row, rows]), device)
    });
    Ok((tensor, offsets, bytes))
}

/// A token embedding table kept packed: looked up row by row on the host, the rows sent to the
/// device in the compute dtype.
#[derive(Module, Debug)]
pub struct QuantizedEmbedding {
    /// The `[vocab, hidden]` table.
    #[module(skip)]
    pub table: Arc<PackedMatrix>,
    /// Dtype of the rows handed to the decoder.
    #[module(skip)]
    pub dtype: DType,
}

impl QuantizedEmbedding {
    /// `[1, n, hidden]` embeddings of `ids` (already checked against the vocabulary).
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Tensor<3> {
        let rows: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
        let values = self.table.dequantize_rows(&rows);
        let hidden = self.table.cols();
        let tensor =
            Tensor::<3>::from_data(TensorData::new(values, [1, ids.len(), hidden]), device);
        if self.dtype == DType::F32 {
            tensor
        } else {
            tensor.cast(self.dtype)
        }
    }
}
