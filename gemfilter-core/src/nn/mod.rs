//! Decoder building blocks: normalisation, rotary embeddings, projections, attention, MLP, layer.

pub mod attention;
pub mod embedding;
pub mod layer;
pub mod mlp;
pub mod norm;
pub mod projection;
pub mod rope;

pub use attention::{Attention, AttentionKernel, AttentionSpan, Qkv};
pub use embedding::TokenEmbedding;
pub use layer::{DecoderLayer, LayerContext, LayerOutput};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use projection::Projection;
pub use rope::{RopeCache, RopeTables, RotaryEmbedding};
