//! Rotary-embedding settings from `config.json`, in both the published style
//! (`rope_theta` + `rope_scaling` with `rope_type` or the older `type`) and the transformers-5
//! style (`rope_parameters`).

use gemfilter_core::{RopeConfig, RopeScaling};

use super::json::JsonFile;
use crate::error::Result;

/// Rope types every LLaMA-style family here implements (others are refused, never approximated).
pub const SUPPORTED_ROPE_TYPES: &[&str] = &["default", "linear", "llama3"];

/// What a family assumes about its rotary embedding.
#[derive(Debug, Clone, Copy)]
pub struct RopeDefaults {
    /// Base when the file names none.
    pub theta: f64,
    /// The model's `max_position_embeddings` (longrope derives its attention factor from it).
    pub max_position_embeddings: usize,
    /// Whether "longrope" (and its older names "su", "yarn" in Phi-3 configs) is accepted.
    pub longrope: bool,
}

/// Reads the rotary settings of a config whose heads are `head_dim` wide.
pub fn parse_rope(
    config: &JsonFile,
    head_dim: usize,
    defaults: &RopeDefaults,
) -> Result<RopeConfig> {
    let default_theta = defaults.theta;
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
        "longrope" | "su" | "yarn" if defaults.longrope => {
            longrope(config, &params, prefix, rotary_dim, defaults)?
        }
        other => {
            let mut supported = SUPPORTED_ROPE_TYPES.join(", ");
            if defaults.longrope {
                supported.push_str(", longrope (su)");
            }
            return Err(config.invalid(
                &field("rope_type"),
                format!("is `{other}`, which is not supported (supported: {supported})"),
            ));
        }
    };
    Ok(RopeConfig {
        theta,
        rotary_dim,
        scaling,
    })
}

/// Phi-3's "longrope": per-frequency short and long divisors, the original context from the
/// top-level `original_max_position_embeddings` (as transformers prefers it) or the rope object,
/// and the attention factor transformers derives when the file gives none:
/// `sqrt(1 + ln(factor) / ln(original))` with `factor = max_position / original` (1 when ≤ 1).
fn longrope(
    config: &JsonFile,
    params: &JsonFile,
    prefix: &str,
    rotary_dim: usize,
    defaults: &RopeDefaults,
) -> Result<RopeScaling> {
    let field = |name: &str| format!("{prefix}.{name}");
    let factors = |name: &str| -> Result<Vec<f64>> {
        let values = params
            .opt_f64_list(name)?
            .ok_or_else(|| config.invalid(&field(name), "is required for longrope"))?;
        if values.len() != rotary_dim / 2 {
            return Err(config.invalid(
                &field(name),
                format!(
                    "has {} entries, expected rotary dimension / 2 = {}",
                    values.len(),
                    rotary_dim / 2
                ),
            ));
        }
        Ok(values)
    };
    let short_factor = factors("short_factor")?;
    let long_factor = factors("long_factor")?;
    let original = match config.opt_usize("original_max_position_embeddings")? {
        Some(o) => o,
        None => params
            .opt_usize("original_max_position_embeddings")?
            .unwrap_or(defaults.max_position_embeddings),
    };
    if original == 0 {
        return Err(config.invalid("original_max_position_embeddings", "must be positive"));
    }
    let attention_factor = match params.opt_f64("attention_factor")? {
        Some(f) => f,
        None => {
            let factor = params
                .opt_f64("factor")?
                .unwrap_or(defaults.max_position_embeddings as f64 / original as f64);
            if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (original as f64).ln()).sqrt()
            }
        }
    };
    Ok(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    })
}
