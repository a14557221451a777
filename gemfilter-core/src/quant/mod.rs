//! Packed quantised weights: llama.cpp's block formats, kept packed from the file to the matrix
//! product.
//!
//! - [`QuantFormat`] — `Q8_0`, `Q4_0`, `Q4_1`, byte-compatible with GGUF, quantised with ggml's
//!   reference rounding.
//! - [`PackedMatrix`] — a `[out, in]` matrix of blocks in host memory (owned, or borrowed from a
//!   memory-mapped file) with the CPU product `x · Wᵀ`: activations quantised to 8 bits per
//!   block, integer dot products, per-block scales, multithreaded, AVX-512 VNNI / AVX2 / portable.
//! - [`QuantizedLinear`], [`QuantizedEmbedding`] — what the decoder's
//!   [`Projection`](crate::nn::Projection) and token embedding become; on GPU devices the blocks
//!   become Burn's packed `QFloat` tensors.

mod format;
mod interleaved;
mod kernels;
mod linear;
mod matrix;

pub use format::{BLOCK, QuantFormat};
pub use interleaved::{GROUP_ROWS, InterleavedMatrix};
pub use kernels::{Kernel, QuantizedActivations};
pub use linear::{
    HostProducts, QuantizedEmbedding, QuantizedLinear, QuantizedWeight, uses_host_kernels,
};
pub use matrix::{PackedMatrix, SharedBytes};
