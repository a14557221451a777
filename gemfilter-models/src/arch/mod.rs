//! One module per architecture: how its config and tensor names map onto `gemfilter-core`.
//! Architectures describe themselves (config fields, tensor names, how llama.cpp writes them,
//! the few real differences) by implementing [`Family`] — the LLaMA-shaped ones as data, a
//! [`llama::LlamaLike`] — and none forks the decoder or the GemFilter path. Adding a family is one
//! module and one line in [`Architecture::ALL`].

pub mod llama;
pub mod mistral;
pub mod phi3;

use std::ops::Range;

use gemfilter_core::DecoderConfig;
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Permute};
use crate::hf::json::JsonFile;

/// What a model family brings: how its files describe it and how they map onto the core.
pub trait Family: Send + Sync {
    /// `model_type` in `config.json`; also the family's name in reports.
    fn model_type(&self) -> &'static str;

    /// The transformers class `config.json` lists under `architectures`.
    fn class_name(&self) -> &'static str;

    /// The decoder description from `config.json` (or GGUF metadata presented as one).
    fn decoder_config(&self, config: &JsonFile) -> Result<DecoderConfig>;

    /// Tensors a checkpoint of this family must hold.
    fn tensor_manifest(&self, config: &DecoderConfig) -> Vec<TensorSpec>;

    /// How llama.cpp writes this family, when GGUF files declare it under a name of its own.
    fn gguf(&self) -> Option<&'static GgufLayout> {
        None
    }
}

/// How llama.cpp writes a family into GGUF files.
pub struct GgufLayout {
    /// `general.architecture`, also the prefix of the family's metadata keys.
    pub name: &'static str,
    /// Per-layer tensors: `(GGUF role, checkpoint role, RoPE row permutation to undo)`.
    pub layer_roles: &'static [(&'static str, &'static str, Permute)],
    /// Family-specific `config.json` fields read from the metadata (beyond the common ones).
    pub extra_config: Option<ExtraGgufConfig>,
}

/// Adds family-specific `config.json` fields read from a GGUF file's metadata.
pub type ExtraGgufConfig = fn(&GgufFile, &mut Map<String, Value>) -> Result<()>;

/// A supported architecture family: a handle on its [`Family`] description.
#[derive(Clone, Copy)]
pub struct Architecture(&'static dyn Family);

impl Architecture {
    /// `LlamaForCausalLM` and derivatives (LLaMA 2/3/3.1/3.2, SmolLM2, …).
    pub const LLAMA: Architecture = Architecture(&llama::LLAMA);
    /// `MistralForCausalLM` (Mistral 7B v0.1–v0.3, Mistral Nemo).
    pub const MISTRAL: Architecture = Architecture(&mistral::MISTRAL);
    /// `Phi3ForCausalLM` (Phi-3, Phi-3.5 mini).
    pub const PHI3: Architecture = Architecture(&phi3::PHI3);

    /// Every supported family: the registry loaders search.
    pub const ALL: &'static [Architecture] = &[Self::LLAMA, Self::MISTRAL, Self::PHI3];

    /// Every supported `model_type`, comma-separated (for error messages).
    pub fn supported() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
        names.join(", ")
    }

    /// The architecture a `config.json` declares (`model_type`, else `architectures`).
    pub fn detect(config: &JsonFile) -> Result<Self> {
        let declared = match config.opt_str("model_type")? {
            Some(t) => t.to_string(),
            None => match config
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
            {
                Some(class) => match Self::ALL.iter().find(|a| a.0.class_name() == class) {
                    Some(known) => known.name().to_string(),
                    None => class.to_string(),
                },
                None => return Err(config.invalid("model_type", "is required but missing")),
            },
        };
        Self::from_model_type(&declared).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: config.path().to_path_buf(),
            found: format!("model_type `{declared}`"),
            supported: Self::supported(),
        })
    }

    /// The architecture of a `model_type` name.
    pub fn from_model_type(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|a| a.name() == name)
    }

    /// The family a GGUF file's `general.architecture` names.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.gguf().is_some_and(|layout| layout.name == name))
    }

    /// Every `general.architecture` GGUF files of supported families use, comma-separated.
    pub fn supported_gguf() -> String {
        let names: Vec<&str> = Self::ALL
            .iter()
            .filter_map(|a| a.gguf().map(|layout| layout.name))
            .collect();
        names.join(", ")
    }

    /// Name used in reports (`model_type`).
    pub fn name(self) -> &'static str {
        self.0.model_type()
    }

    /// The decoder description from `config.json`.
    pub fn decoder_config(self, config: &JsonFile) -> Result<DecoderConfig> {
        self.0.decoder_config(config)
    }

    /// Tensors a checkpoint of this architecture must hold.
    pub fn tensor_manifest(self, config: &DecoderConfig) -> Vec<TensorSpec> {
        self.0.tensor_manifest(config)
    }

    /// How llama.cpp writes the family (`None`: no GGUF name of its own).
    pub fn gguf(self) -> Option<&'static GgufLayout> {
        self.0.gguf()
    }
}

impl PartialEq for Architecture {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Architecture {}

impl std::fmt::Debug for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Architecture({})", self.name())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_found() {
        for (i, a) in Architecture::ALL.iter().enumerate() {
            assert_eq!(Architecture::from_model_type(a.name()), Some(*a));
            for b in &Architecture::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
                assert_ne!(a.0.class_name(), b.0.class_name());
            }
        }
        assert_eq!(
            Architecture::from_gguf_name("llama"),
            Some(Architecture::LLAMA)
        );
        assert_eq!(
            Architecture::from_gguf_name("phi3"),
            Some(Architecture::PHI3)
        );
        assert_eq!(Architecture::from_gguf_name("mamba"), None);
        assert_eq!(Architecture::supported(), "llama, mistral, phi3");
    }
}
