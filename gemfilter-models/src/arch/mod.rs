//! One module per architecture: how its config and tensor names map onto `gemfilter-core`.

pub mod llama;

use gemfilter_core::DecoderConfig;

use crate::error::{ModelError, Result};
use crate::hf::json::JsonFile;

/// A supported architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` and derivatives.
    Llama,
}

impl Architecture {
    /// Every supported `model_type`.
    pub const SUPPORTED: &'static [&'static str] = &[llama::MODEL_TYPE];

    /// The architecture a `config.json` declares (`model_type`, else `architectures`).
    pub fn detect(config: &JsonFile) -> Result<Self> {
        let model_type = config.opt_str("model_type")?.map(str::to_string);
        let declared = match model_type {
            Some(t) => t,
            None => match config
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
            {
                Some("LlamaForCausalLM") => llama::MODEL_TYPE.to_string(),
                Some(other) => other.to_string(),
                None => return Err(config.invalid("model_type", "is required but missing")),
            },
        };
        match declared.as_str() {
            llama::MODEL_TYPE => Ok(Architecture::Llama),
            other => Err(ModelError::UnsupportedArchitecture {
                path: config.path().to_path_buf(),
                found: format!("model_type `{other}`"),
                supported: Self::SUPPORTED.join(", "),
            }),
        }
    }

    /// Name used in reports (`model_type`).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => llama::MODEL_TYPE,
        }
    }

    /// The decoder description from `config.json`.
    pub fn decoder_config(self, config: &JsonFile) -> Result<DecoderConfig> {
        match self {
            Architecture::Llama => llama::decoder_config(config),
        }
    }

    /// Tensors a checkpoint of this architecture must hold.
    pub fn tensor_manifest(self, config: &DecoderConfig) -> Vec<TensorSpec> {
        match self {
            Architecture::Llama => llama::tensor_manifest(config),
        }
    }
}

/// One tensor a checkpoint must provide: its checkpoint name and PyTorch-layout shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the checkpoint (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape in the checkpoint (`[out, in]` for projections).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A required tensor.
    pub fn new<const R: usize>(name: impl Into<String>, shape: [usize; R]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// Path of the matching parameter in [`gemfilter_core::DecoderWeights`] (the checkpoint
    /// name without the `model.` prefix; burn-store's PyTorch adapter handles `weight`→`gamma`
    /// for norms and the `[out, in]`→`[in, out]` transpose for projections).
    pub fn module_path(&self) -> &str {
        self.name.strip_prefix("model.").unwrap_or(&self.name)
    }
}
