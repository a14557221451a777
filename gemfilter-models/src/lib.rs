//! # gemfilter-models
//!
//! Turns the files people have into ready [`gemfilter_core::Decoder`]s: Hugging Face model
//! folders (`config.json`, safetensors weights — single or sharded, f32/f16/bf16 —,
//! `tokenizer.json`, chat template). One small module per architecture maps its config and
//! tensor names onto the architecture-neutral core; none forks the decoder.
//!
//! ```no_run
//! use gemfilter_models::{Model, Request};
//! use gemfilter_models::burn::tensor::Device;
//!
//! # fn main() -> Result<(), gemfilter_models::ModelError> {
//! let model = Model::load("Llama-3.1-8B-Instruct", &Device::default())?;
//! let answer = model.generate("…a long document… What is the code?", &Request::gemfilter(1024))?;
//! println!("{}", answer.text);
//! println!("kept: {}", model.kept_text(&answer)?);
//! # Ok(()) }
//! ```

pub mod arch;
pub mod checkpoint;
pub mod demo_model;
pub mod engine;
pub mod error;
pub mod filter_layers;
pub mod gguf;
pub mod hf;
pub mod model;
pub mod packing;
pub mod pypi;
pub mod segments;
pub mod selector_spec;
pub mod synthetic;

pub use arch::{Architecture, Family, GgufLayout, TensorSpec};
pub use engine::{Engine, EngineConfig, EngineEvent, EngineStats, SubmitError};
pub use error::{ModelError, Result};
pub use filter_layers::{
    Calibration, FilterLayerChoice, FilterLayerSource, LayerRecall, default_filter_layer,
    filter_layer_for,
};
pub use hf::chat::{ChatMessage, ChatTemplate};
pub use hf::tokenizer::TextTokenizer;
pub use model::{
    Answer, GAP_MARKER, KeptSpan, KvMethod, LoadOptions, Mode, Model, ModelFormat, ModelInfo,
    Request, TextDelta,
};
pub use packing::{WeightFormat, WeightSummary};
pub use segments::{Segmentation, segment_starts};
pub use selector_spec::{SelectorSpec, SpanSpec};

pub use gemfilter_core;
pub use gemfilter_core::burn;
