//! The token embedding: dense, or a packed table looked up on the host.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::quant::{InterleavedMatrix, QuantizedEmbedding, QuantizedLinear, QuantizedWeight};

/// `[vocab, hidden]` token embedding. The parameter path is `embed_tokens.weight` whatever the
/// variant (burn-store skips variant names).
#[derive(Module, Debug)]
pub enum TokenEmbedding {
    /// Dense table in the compute dtype (Burn's `Embedding`).
    Dense(Embedding),
    /// Table packed in blocks, kept in host memory.
    Quantized(QuantizedEmbedding),
}

impl TokenEmbedding {
    /// A dense table, initialised lazily (a loader replaces it before first use).
    pub fn dense(vocab: usize, hidden: usize, device: &Device) -> Self {
        TokenEmbedding::Dense(EmbeddingConfig::new(vocab, hidden).init(device))
    }

    /// `[1, n, hidden]` embeddings of `ids` (already checked against the vocabulary).
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Tensor<3> {
        match self {
            TokenEmbedding::Dense(embedding) => {
                let tokens: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
                let tokens =
                    Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, ids.len()]), device);
                embedding.forward(tokens)
            }
            TokenEmbedding::Quantized(table) => table.lookup(ids, device),
        }
    }

    /// Floating-point type of the embeddings (the decoder's compute dtype).
    pub fn dtype(&self) -> DType {
        match self {
            TokenEmbedding::Dense(embedding) => embedding.weight.val().dtype(),
            TokenEmbedding::Quantized(table) => table.dtype,
        }
    }

    /// The same table dense in `dtype` (a packed table dequantised).
    pub fn dequantized(&self, device: &Device) -> TokenEmbedding {
        match self {
            TokenEmbedding::Dense(embedding) => TokenEmbedding::Dense(embedding.clone()),
            TokenEmbedding::Quantized(table) => {
                let (rows, cols) = (table.table.rows(), table.table.cols());
                let values = TensorData::new(table.table.dequantize(), [rows, cols]);
                TokenEmbedding::Dense(Embedding {
                    weight: Param::from_tensor(
                        Tensor::<2>::from_data(values, device).cast(table.dtype),
                    ),
                })
            }
        }
    }

    /// Logits `[vocab]` of `last` (`[1, 1, hidden]`, normed) with the table as the LM head (tied
    /// embeddings).
    pub fn tied_logits(&self, last: Tensor<3>) -> Tensor<1> {
        let hidden = last.dims()[2];
        match self {
            // E·hᵀ reads the [vocab, hidden] embedding as stored; h·Eᵀ would make backends
            // materialise the transpose of the whole embedding on every call.
            TokenEmbedding::Dense(embedding) => {
                let vocab = embedding.weight.dims()[0];
                embedding
                    .weight
                    .val()
                    .matmul(last.reshape([hidden, 1]))
                    .reshape([vocab])
            }
            // The packed table is already an `[out, in]` projection; loaders for GPU devices set
            // an explicit LM head instead, so this runs the host kernels.
            TokenEmbedding::Quantized(table) => {
                let vocab = table.table.rows();
                let head = QuantizedLinear {
                    weight: QuantizedWeight::Host(std::sync::Arc::new(
                        InterleavedMatrix::from_packed(&table.table),
                    )),
                    bias: None,
                };
                head.forward(last).reshape([vocab])
            }
        }
    }
}
