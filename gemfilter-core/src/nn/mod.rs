//! Decoder building blocks: normalisation, rotary embeddings, attention, MLP, layer.

pub mod attention;
pub mod layer;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use attention::{Attention, AttentionSpan};
pub use layer::DecoderLayer;
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use rope::{RopeTables, RotaryEmbedding};
