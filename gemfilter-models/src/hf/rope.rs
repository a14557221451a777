//! Rotary-embedding settings from `config.json`, in both the published style
//! (`rope_theta` + `rope_scaling` with `rope_type` or the older `type`) and the transformers-5
//! style (`rope_parameters`).

use gemfilter_core::{RopeConfig, RopeScaling};

use super::json::JsonFile;
use crate::error::Result;

/// Rope types this crate implements (others are refused, never approximated).
pub const SUPPORTED_ROPE_TYPES: &[&str] = &["default", "linear", "llama3"];

/// Reads the rotary settings of a config whose heads are `head_dim` wide.
///
/// `default_theta` is the architecture's default base when the file names none.
pub fn parse_rope(config: &JsonFile, head_dim: usize, default_theta: f64) -> Result<RopeConfig> {
    // transformers 5 writes everything into `rope_parameters`; published checkpoints use
    // `rope_theta` plus an optional `rope_scaling` object.
    let (params, prefix) = match config.object("rope_parameters")? {
        Some(params) => (Some(params), "rope_parameters"),
        None => (config.object("rope_scaling")?, "rope_scaling"),
    };
    let field = |name: &str| format!("{prefix}.{name}");

    let theta = match params
        .as_ref()
        .map(|p| p.opt_f64("rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(theta) => theta,
        None => config.opt_f64("rope_theta")?.unwrap_or(default_theta),
    };
    let partial = match params
        .as_ref()
        .map(|p| p.opt_f64("partial_rotary_factor"))
        .transpose()?
        .flatten()
    {
        Some(f) => f,
        None => config.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
    };
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(config.invalid(
            "partial_rotary_factor",
            format!("must be in (0, 1], found {partial}"),
        ));
    }
    let rotary_dim = (head_dim as f64 * partial) as usize;

    let Some(params) = params else {
        return Ok(RopeConfig {
            theta,
            rotary_dim,
            scaling: RopeScaling::None,
        });
    };
    let rope_type = match (params.opt_str("rope_type")?, params.opt_str("type")?) {
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        (None, None) => "default".to_string(),
    };
    let factor = |params: &JsonFile| -> Result<f64> {
        params
            .opt_f64("factor")?
            .ok_or_else(|| config.invalid(&field("factor"), "is required for this rope type"))
    };
    let scaling = match rope_type.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor(&params)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor(&params)?,
            low_freq_factor: params.opt_f64("low_freq_factor")?.ok_or_else(|| {
                config.invalid(&field("low_freq_factor"), "is required for llama3 rope")
            })?,
            high_freq_factor: params.opt_f64("high_freq_factor")?.ok_or_else(|| {
                config.invalid(&field("high_freq_factor"), "is required for llama3 rope")
            })?,
            original_max_position_embeddings: params
                .opt_usize("original_max_position_embeddings")?
                .ok_or_else(|| {
                    config.invalid(
                        &field("original_max_position_embeddings"),
                        "is required for llama3 rope",
                    )
                })?,
        },
        other => {
            return Err(config.invalid(
                &field("rope_type"),
                format!(
                    "is `{other}`, which is not supported (supported: {})",
                    SUPPORTED_ROPE_TYPES.join(", ")
                ),
            ));
        }
    };
    Ok(RopeConfig {
        theta,
        rotary_dim,
        scaling,
    })
}
