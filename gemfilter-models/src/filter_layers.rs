//! Which layer filters by default: the paper's hand-picked layers for the models it evaluated,
//! else a documented fallback.

use std::path::{Path, PathBuf};

use gemfilter_core::DecoderConfig;
use serde::{Deserialize, Serialize};

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
    // Calibrated here (`gemfilter calibrate`, k = 256): layer 14 is the earliest within 0.05 of the
    // best mean needle recall at 1K/2K tokens (0.665 vs 0.704 at layer 23) and at 2K/4K tokens
    // (0.596 vs 0.604 at layer 24). On real text (RULER's needle tasks on essays, the default probe of
    // `calibrate` since issue 15) the recommendation is layer 21 (paper selector recall 0.914 vs 0.318
    // at 14). The table keeps 14: the selection pass costs 15 ÷ 30 of a full prefill instead of 22 ÷ 30;
    // `gemfilter calibrate` writes the model's calibration file, which takes precedence.
    KnownFilterLayer {
        name: "SmolLM2-135M (Instruct)",
        model_type: "llama",
        num_layers: 30,
        hidden_size: 576,
        num_heads: 9,
        num_kv_heads: 3,
        vocab_size: 49_152,
        layer: 14,
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
    /// A calibration file written by `gemfilter calibrate` for this model.
    Calibration(PathBuf),
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

/// Mean needle recall of one layer in a calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecall {
    /// 0-based layer.
    pub layer: usize,
    /// Mean fraction of needle tokens kept over the probe prompts.
    pub mean_recall: f64,
}

/// What `gemfilter calibrate` writes and `generate` / `needle` read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Model file or folder calibrated.
    pub model: String,
    /// Shape signature the file applies to.
    pub signature: String,
    /// Recommended filter layer: the earliest within `tolerance` of the best mean recall.
    pub recommended_layer: usize,
    /// Layer with the best mean recall.
    pub best_layer: usize,
    /// Allowed shortfall from the best mean recall.
    pub tolerance: f64,
    /// Token budget used.
    pub top_k: usize,
    /// Prompt lengths (tokens) probed.
    pub lengths: Vec<usize>,
    /// Needle depths probed.
    pub depths: Vec<f64>,
    /// Mean recall per layer.
    pub per_layer: Vec<LayerRecall>,
    /// Selector spec the recall was measured with (`gemfilter`: the paper's).
    #[serde(default = "paper_selector")]
    pub selector: String,
}

fn paper_selector() -> String {
    "gemfilter".into()
}

impl Calibration {
    /// The earliest layer whose mean recall is within `tolerance` of the best, and the best.
    pub fn recommend(per_layer: &[LayerRecall], tolerance: f64) -> Option<(usize, usize)> {
        let best = per_layer.iter().max_by(|a, b| {
            a.mean_recall
                .total_cmp(&b.mean_recall)
                .then(b.layer.cmp(&a.layer))
        })?;
        let earliest = per_layer
            .iter()
            .filter(|l| l.mean_recall >= best.mean_recall - tolerance)
            .map(|l| l.layer)
            .min()?;
        Some((earliest, best.layer))
    }
}

/// Shape signature of a model: architecture and sizes.
pub fn signature(architecture: Architecture, config: &DecoderConfig) -> String {
    format!(
        "{}-{}l-{}h-{}q{}kv-{}v",
        architecture.name(),
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.vocab_size
    )
}

/// Where the calibration of the model at `model_path` is stored (in the cache folder).
pub fn calibration_path(
    model_path: &Path,
    architecture: Architecture,
    config: &DecoderConfig,
) -> PathBuf {
    let stem = model_path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    crate::demo_model::cache_dir()
        .join("calibration")
        .join(format!("{stem}--{}.json", signature(architecture, config)))
}

/// Reads a calibration file, `None` when absent or not for this model.
pub fn read_calibration(
    path: &Path,
    architecture: Architecture,
    config: &DecoderConfig,
) -> Option<Calibration> {
    let text = std::fs::read_to_string(path).ok()?;
    let calibration: Calibration = serde_json::from_str(&text).ok()?;
    (calibration.signature == signature(architecture, config)
        && calibration.recommended_layer < config.num_layers)
        .then_some(calibration)
}

/// The default filter layer of the model at `model_path`: its calibration file if one exists,
/// else the table of known models, else the fallback.
pub fn filter_layer_for(
    model_path: &Path,
    architecture: Architecture,
    config: &DecoderConfig,
) -> FilterLayerChoice {
    let path = calibration_path(model_path, architecture, config);
    match read_calibration(&path, architecture, config) {
        Some(calibration) => FilterLayerChoice {
            layer: calibration.recommended_layer,
            source: FilterLayerSource::Calibration(path),
        },
        None => default_filter_layer(architecture, config),
    }
}

/// The default filter layer of a model from the table of known models, else the fallback.
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
    fn recommends_the_earliest_layer_within_tolerance() {
        let per_layer: Vec<LayerRecall> = [0.1, 0.5, 0.86, 0.9, 0.7]
            .iter()
            .enumerate()
            .map(|(layer, &mean_recall)| LayerRecall { layer, mean_recall })
            .collect();
        assert_eq!(Calibration::recommend(&per_layer, 0.05), Some((2, 3)));
        assert_eq!(Calibration::recommend(&per_layer, 0.0), Some((3, 3)));
    }

    #[test]
    fn fallback_scales_llama_choice() {
        assert_eq!(fallback_filter_layer(32), 13);
        assert_eq!(fallback_filter_layer(30), 12);
        assert_eq!(fallback_filter_layer(4), 2);
        assert_eq!(fallback_filter_layer(1), 0);
    }
}
