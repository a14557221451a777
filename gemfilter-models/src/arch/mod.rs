//! One module per architecture: how its config and tensor names map onto `gemfilter-core`.
//! Architectures describe themselves (config fields, tensor names, the few real differences);
//! none forks the decoder or the GemFilter path.

pub mod llama;
pub mod mistral;
pub mod phi3;

use std::ops::Range;

use gemfilter_core::DecoderConfig;

use crate::error::{ModelError, Result};
use crate::hf::json::JsonFile;

/// A supported architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` and derivatives (LLaMA 2/3/3.1/3.2, SmolLM2, …).
    Llama,
    /// `MistralForCausalLM` (Mistral 7B v0.1–v0.3, Mistral Nemo).
    Mistral,
    /// `Phi3ForCausalLM` (Phi-3, Phi-3.5 mini).
    Phi3,
}

impl Architecture {
    /// Every supported `model_type`.
    pub const SUPPORTED: &'static [&'static str] =
        &[llama::MODEL_TYPE, mistral::MODEL_TYPE, phi3::MODEL_TYPE];

    /// The architecture a `config.json` declares (`model_type`, else `architectures`).
    pub fn detect(config: &JsonFile) -> Result<Self> {
        let declared = match config.opt_str("model_type")? {
            Some(t) => t.to_string(),
            None => match config
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
            {
                Some("LlamaForCausalLM") => llama::MODEL_TYPE.to_string(),
                Some("MistralForCausalLM") => mistral::MODEL_TYPE.to_string(),
                Some("Phi3ForCausalLM") => phi3::MODEL_TYPE.to_string(),
                Some(other) => other.to_string(),
                None => return Err(config.invalid("model_type", "is required but missing")),
            },
        };
        Self::from_model_type(&declared).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: config.path().to_path_buf(),
            found: format!("model_type `{declared}`"),
            supported: Self::SUPPORTED.join(", "),
        })
    }

    /// The architecture of a `model_type` name.
    pub fn from_model_type(name: &str) -> Option<Self> {
        match name {
            llama::MODEL_TYPE => Some(Architecture::Llama),
            mistral::MODEL_TYPE => Some(Architecture::Mistral),
            phi3::MODEL_TYPE => Some(Architecture::Phi3),
            _ => None,
        }
    }

    /// Name used in reports (`model_type`).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => llama::MODEL_TYPE,
            Architecture::Mistral => mistral::MODEL_TYPE,
            Architecture::Phi3 => phi3::MODEL_TYPE,
        }
    }

    /// The decoder description from `config.json`.
    pub fn decoder_config(self, config: &JsonFile) -> Result<DecoderConfig> {
        match self {
            Architecture::Llama => llama::decoder_config(config),
            Architecture::Mistral => mistral::decoder_config(config),
            Architecture::Phi3 => phi3::decoder_config(config),
        }
    }

    /// Tensors a checkpoint of this architecture must hold.
    pub fn tensor_manifest(self, config: &DecoderConfig) -> Vec<TensorSpec> {
        match self {
            Architecture::Llama | Architecture::Mistral => llama::tensor_manifest(config),
            Architecture::Phi3 => phi3::tensor_manifest(config),
        }
    }
}

/// Rows of a fused checkpoint tensor that hold one decoder parameter (Phi-3's `qkv_proj`,
/// `gate_up_proj`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedRows {
    /// Name of the fused tensor in the checkpoint.
    pub tensor: String,
    /// Its full shape.
    pub shape: Vec<usize>,
    /// The rows this parameter takes.
    pub rows: Range<usize>,
}

/// One tensor a checkpoint must provide: its name (Hugging Face style), its PyTorch-layout shape,
/// and, for parameters stored inside a fused tensor, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name of the parameter (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape of the parameter (`[out, in]` for projections).
    pub shape: Vec<usize>,
    /// Set when the checkpoint stores it as rows of a fused tensor.
    pub fused: Option<FusedRows>,
}

impl TensorSpec {
    /// A tensor stored under its own name.
    pub fn new<const R: usize>(name: impl Into<String>, shape: [usize; R]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            fused: None,
        }
    }

    /// A 2-D parameter stored as `rows` of the fused `[total_rows, cols]` tensor `fused`.
    pub fn rows_of(
        name: impl Into<String>,
        fused: impl Into<String>,
        total_rows: usize,
        rows: Range<usize>,
        cols: usize,
    ) -> Self {
        Self {
            name: name.into(),
            shape: vec![rows.len(), cols],
            fused: Some(FusedRows {
                tensor: fused.into(),
                shape: vec![total_rows, cols],
                rows,
            }),
        }
    }

    /// Name of the checkpoint tensor holding the data.
    pub fn source_name(&self) -> &str {
        self.fused.as_ref().map_or(&self.name, |f| &f.tensor)
    }

    /// Shape of the checkpoint tensor holding the data.
    pub fn source_shape(&self) -> &[usize] {
        self.fused.as_ref().map_or(&self.shape, |f| &f.shape)
    }

    /// Path of the matching parameter in [`gemfilter_core::DecoderWeights`] (the name without the
    /// `model.` prefix; burn-store's PyTorch adapter handles `weight`→`gamma` for norms and the
    /// `[out, in]`→`[in, out]` transpose for projections).
    pub fn module_path(&self) -> &str {
        self.name.strip_prefix("model.").unwrap_or(&self.name)
    }
}
