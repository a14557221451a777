//! Which layer filters by default: the paper's hand-picked layers for the models it evaluated,
//! else a documented fallback.

use gemfilter_core::DecoderConfig;
use serde::Serialize;

use crate::arch::Architecture;

/// A model whose filter layer is known, identified by its shape.
#[derive(Debug, Clone, Copy)]
pub struct KnownFilterLayer {
    /// Human-readable model name.
    pub name: &'static str,
    /// Architecture family (`model_type`).
    pub model_type: &'static str,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Filter layer (0-based index of the decoder layer whose attention selects).
    pub layer: usize,
}

/// The filter layers of the GemFilter paper and its official code (`select_layer_idx`).
pub const KNOWN_FILTER_LAYERS: &[KnownFilterLayer] = &[
    KnownFilterLayer {
        name: "LLaMA 3.1 8B (Instruct)",
        model_type: "llama",
        num_layers: 32,
        hidden_size: 4096,
        num_heads: 32,
        num_kv_heads: 8,
        vocab_size: 128_256,
        layer: 13,
    },
    KnownFilterLayer {
        name: "Mistral Nemo 12B (Instruct)",
        model_type: "mistral",
        num_layers: 40,
        hidden_size: 5120,
        num_heads: 32,
        num_kv_heads: 8,
        vocab_size: 131_072,
        layer: 19,
    },
    KnownFilterLayer {
        name: "Phi 3.5 mini (Instruct)",
        model_type: "phi3",
        num_layers: 32,
        hidden_size: 3072,
        num_heads: 32,
        num_kv_heads: 32,
        vocab_size: 32_064,
        layer: 19,
    },
];

/// Where a default filter layer came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum FilterLayerSource {
    /// The table of known models (the name of the match).
    Known(String),
    /// Nothing known: `round(num_layers × 13 / 32)`, LLaMA 3.1 8B's choice scaled to depth.
    Fallback,
}

/// A default filter layer and its provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterLayerChoice {
    /// 0-based layer index.
    pub layer: usize,
    /// Where it came from.
    pub source: FilterLayerSource,
}

/// The fallback for models not in the table: LLaMA 3.1 8B's 13-of-32 scaled to the depth.
pub fn fallback_filter_layer(num_layers: usize) -> usize {
    ((num_layers * 13 + 16) / 32).min(num_layers.saturating_sub(1))
}

/// The default filter layer of a model.
pub fn default_filter_layer(
    architecture: Architecture,
    config: &DecoderConfig,
) -> FilterLayerChoice {
    let known = KNOWN_FILTER_LAYERS.iter().find(|k| {
        k.model_type == architecture.name()
            && k.num_layers == config.num_layers
            && k.hidden_size == config.hidden_size
            && k.num_heads == config.num_heads
            && k.num_kv_heads == config.num_kv_heads
            && k.vocab_size == config.vocab_size
    });
    match known {
        Some(k) => FilterLayerChoice {
            layer: k.layer,
            source: FilterLayerSource::Known(k.name.to_string()),
        },
        None => FilterLayerChoice {
            layer: fallback_filter_layer(config.num_layers),
            source: FilterLayerSource::Fallback,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_scales_llama_choice() {
        assert_eq!(fallback_filter_layer(32), 13);
        assert_eq!(fallback_filter_layer(30), 12);
        assert_eq!(fallback_filter_layer(4), 2);
        assert_eq!(fallback_filter_layer(1), 0);
    }
}
