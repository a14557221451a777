//! # gemfilter-core
//!
//! A backend-generic decoder-only transformer with an early-exit hook, and the GemFilter
//! pipeline built on it (Shi et al., 2024, "Discovering the Gems in Early Layers",
//! arXiv:2409.17422).
//!
//! ```text
//! prompt ids ──Decoder::probe(r)──▶ Probe { queries, keys }      layers 0..r-1 full, layer r: q/k only
//! Probe ──TokenSelector::select(k)──▶ Selection { positions, scores }
//! ids[positions] ──Decoder::prefill──▶ KV cache + logits ──decode loop──▶ answer ids
//! ```
//!
//! Inside, every pass is one loop over [`nn::DecoderLayer::forward`] (norm → attention →
//! residual → norm → MLP → residual): a [`KvStore`] decides where each layer's keys and values go
//! and which keys its queries see (the plain [`KvCache`], [`NoCache`], the baselines'
//! [`CompressingStore`]); a [`LayerHook`] sees each layer before its attention and may stop the
//! pass (the early exit) or collect probes; weights sit behind [`nn::Projection`]. Per-call
//! settings come in [`RunOptions`]; a [`Decoder`] is immutable and shareable across threads.
//!
//! Beyond the rerun, [`Method::Propagate`] carries the kept tokens on from the filter layer
//! (FastKV / PromptDistill), and a selector's [stages](TokenSelector::stages) prune the prompt at
//! earlier layers so the selection pass itself gets cheaper ([`propagate`]).
//!
//! The baselines of the paper's comparison, SnapKV and H2O, compress the KV cache after a full
//! prefill instead ([`compress`], [`Method::KvCompressed`]); they share the decode loop.
//!
//! Tensors carry no backend type: the [`burn::tensor::Device`] the weights live on decides
//! where everything runs (flex or ndarray on the CPU, wgpu, CUDA), and nothing in this crate
//! branches on it. File formats, tokenizers and model names live in `gemfilter-models`.

pub mod compress;
pub mod config;
pub mod cpu;
pub mod decoder;
pub mod error;
pub mod generate;
pub mod hook;
pub mod kv;
pub mod layers;
pub mod nn;
pub mod options;
pub mod prefix;
pub mod probe;
pub mod profile;
pub mod propagate;
pub mod quant;
pub mod selector;

pub use compress::{
    CompressingStore, CompressionOutcome, H2o, HeadSharing, KvCompressor, Pooling,
    SharedPrefillStore, SnapKv,
};
pub use config::{Activation, DecoderConfig, RopeConfig, RopeScaling};
pub use decoder::{Decoder, DecoderWeights, Pass};
pub use error::{CoreError, Result};
pub use generate::{
    FinishReason, Generation, GenerationConfig, Method, PhaseTimings, Sampling, TokenControl,
    TokenEvent, generate, generate_shared_prefill, generate_streaming, select_tokens,
    select_tokens_reusing,
};
pub use hook::{Flow, LayerHook, LayerView, NoHook};
pub use kv::{KvCache, KvStore, NoCache};
pub use layers::selections_per_layer;
pub use options::{
    CancelFlag, DEFAULT_MAX_SCORES_PER_BLOCK, ForwardProgress, ProgressHook, RunOptions,
};
pub use prefix::{PrefixCache, PrefixCacheStats};
pub use probe::{LayerObserver, Probe};
pub use profile::Profile;
pub use propagate::{EarlyKv, StagedPass};
pub use quant::{PackedMatrix, QuantFormat};
pub use selector::{
    GemFilterSelector, HeadNormalization, LayerVoteSelector, QuestionWindowSelector, Selection,
    SelectionStage, SpanRanking, SpanRule, SpanSelector, StagedSelector, TokenSelector, VoteRule,
};

/// Re-export of the Burn version this crate is built on, so users name the same types.
pub use burn;
